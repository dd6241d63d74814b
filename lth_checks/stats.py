"""Paired evidence: per-example correctness as packed bits, and intervals from a paired bootstrap.

Every comparison a verdict hinges on (a level's error vs the dense error, one-shot vs IMP, a path's
barrier vs tau) is a function of the error rates of several networks evaluated on the *same* test
examples. Resampling the examples once and applying that resample to every network and every path
point keeps the pairing (the shared difficulty of the test set cancels in a difference), so the
interval reflects only what separates the networks. Where 3 or more replicates exist the seeds are
resampled too (a two-stage bootstrap), so the spread over seeds enters the interval; with fewer
seeds there is no estimate of that spread and the interval is the test-set one alone (said so in
the report).

The resampling is vectorised by hand rather than through `scipy.stats.bootstrap`: the statistic
(a barrier is a maximum over path points of a curve minus its chord) needs every network's error
under the *same* resample, and the two-stage seed resample is outside what scipy's paired mode
does. One resample is a vector of multiplicities over the examples, so the error rates of all
networks under all resamples are one matrix product.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 20230501
CONFIDENCE = 0.95


def pack(correct: np.ndarray) -> np.ndarray:
    """Bool array (..., n) -> uint8 array (..., ceil(n / 8)) (numpy.packbits along the last axis)."""
    return np.packbits(np.asarray(correct, dtype=bool), axis=-1)


def unpack(bits: np.ndarray, n: int) -> np.ndarray:
    return np.unpackbits(np.asarray(bits, dtype=np.uint8), axis=-1, count=n).astype(bool)


_COUNTS: dict[tuple[int, int, int], np.ndarray] = {}


def resample_counts(n: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """(resamples, n) multiplicities of each example: the same resample for every network of a run."""
    key = (n, resamples, seed)
    if key not in _COUNTS:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, n, size=(resamples, n))
        flat = (idx + n * np.arange(resamples)[:, None]).ravel()
        counts = np.bincount(flat, minlength=resamples * n).reshape(resamples, n).astype(np.float32)
        _COUNTS[key] = counts
    return _COUNTS[key]


@dataclass(frozen=True)
class Interval:
    """Point estimate (mean over seeds) with a 95% paired-bootstrap interval, in percentage points."""

    mean: float
    lo: float
    hi: float
    se: float  # standard deviation of the bootstrap distribution
    n_examples: int
    n_seeds: int
    seeds_resampled: bool
    per_seed: tuple[float, ...] = ()

    @property
    def half_width(self) -> float:
        return 0.5 * (self.hi - self.lo)

    def below(self, threshold: float) -> bool | None:
        """True: established <= threshold; False: established > threshold; None: undetermined."""
        if self.hi <= threshold:
            return True
        if self.lo > threshold:
            return False
        return None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["per_seed"] = list(self.per_seed)
        d["std"] = float(np.std(self.per_seed, ddof=1)) if len(self.per_seed) >= 2 else None
        d["n"] = self.n_seeds
        return d


class Paired:
    """Every network of one decision under one shared resample of the examples.

    arrays: name -> wrong, (seeds, examples) for a network or (seeds, points, examples) for a path
    (all with the same seeds and the same examples). The error rates of all of them under all
    resamples are computed in one product; `interval` then applies a statistic to any of them, so
    every comparison of a decision sees the same resample (and the work is done once).
    """

    def __init__(self, arrays: dict[str, np.ndarray], resamples: int = BOOTSTRAP_RESAMPLES,
                 seed: int = BOOTSTRAP_SEED, confidence: float = CONFIDENCE):
        names = list(arrays)
        blocks = [np.asarray(arrays[k], dtype=np.float32) for k in names]
        blocks = [x[:, None, :] if x.ndim == 2 else x for x in blocks]
        s, n = blocks[0].shape[0], blocks[0].shape[-1]
        if any(x.shape[0] != s or x.shape[-1] != n for x in blocks):
            raise ValueError("every array of a paired decision needs the same seeds and examples")
        widths = [x.shape[1] for x in blocks]
        w = np.concatenate(blocks, axis=1)  # (s, m, n)
        m = w.shape[1]
        counts = resample_counts(n, resamples, seed)
        point = 100.0 * w.mean(axis=2, dtype=np.float64)  # (s, m), exact
        boot = (100.0 / n) * (counts @ w.reshape(s * m, n).T).reshape(-1, s, m)  # (b, s, m): one BLAS product
        edges = np.cumsum([0, *widths])
        self._point = {k: point[:, edges[i]:edges[i + 1]] for i, k in enumerate(names)}
        self._boot = {k: boot[:, :, edges[i]:edges[i + 1]] for i, k in enumerate(names)}
        self.n, self.seeds, self.resamples, self.seed, self.confidence = n, s, resamples, seed, confidence
        self._pick = (np.random.default_rng(seed + 1).integers(0, s, size=(resamples, s)) if s >= 3 else None)

    def interval(self, statistic: Callable[..., np.ndarray], *names: str) -> Interval:
        """Interval of the mean over seeds of statistic(errors of `names`, each (..., seeds, k))."""
        per_seed = np.asarray(statistic(*[self._point[k] for k in names]), dtype=float)  # (s,)
        boot_per_seed = np.asarray(statistic(*[self._boot[k] for k in names]), dtype=float)  # (b, s)
        if self._pick is not None:  # >= 3 seeds: resample them too (two-stage bootstrap)
            boot = np.take_along_axis(boot_per_seed, self._pick, axis=1).mean(axis=1)
        else:
            boot = boot_per_seed.mean(axis=1)
        alpha = 1 - self.confidence
        lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
        return Interval(float(per_seed.mean()), float(lo), float(hi), float(boot.std(ddof=1)), self.n, self.seeds,
                        self._pick is not None, tuple(float(x) for x in per_seed))

    def difference(self, a: str, b: str) -> Interval:
        """E(a) - E(b) in pp (two networks)."""
        return self.interval(lambda x, y: x[..., 0] - y[..., 0], a, b)

    def error(self, a: str) -> Interval:
        return self.interval(lambda x: x[..., 0], a)

    def barrier(self, path: str, alphas) -> Interval:
        """Error barrier in pp of a path: max over points of the curve above its chord, floored at 0 like
        `connectivity.barrier`."""
        al = np.asarray(alphas, dtype=float)

        def stat(e: np.ndarray) -> np.ndarray:
            chord = (1 - al) * e[..., :1] + al * e[..., -1:]
            return np.maximum(0.0, (e - chord).max(axis=-1))

        return self.interval(stat, path)


def difference(wrong_a: np.ndarray, wrong_b: np.ndarray, **kw) -> Interval:
    """E(a) - E(b) in pp, paired over examples (both (seeds, examples) bool)."""
    return Paired({"a": wrong_a, "b": wrong_b}, **kw).difference("a", "b")


def error(wrong: np.ndarray, **kw) -> Interval:
    """E in pp of one network per seed ((seeds, examples) bool)."""
    return Paired({"a": wrong}, **kw).error("a")


def path_barrier(wrong_path: np.ndarray, alphas, **kw) -> Interval:
    """Error barrier in pp of a path per seed ((seeds, points, examples) bool)."""
    return Paired({"p": wrong_path}, **kw).barrier("p", alphas)


def needed(interval: Interval, threshold: float) -> dict:
    """Sample size that would bring the interval's half-width down to `threshold`.

    Half-widths shrink as 1/sqrt(size): examples when the test set is the only source of noise in
    the interval, replicates too when the seeds were resampled.
    """
    h = interval.half_width
    if threshold <= 0 or h <= threshold:
        return {}
    factor = (h / threshold) ** 2
    out = {"examples": int(math.ceil(interval.n_examples * factor))}
    if interval.seeds_resampled:
        out["replicates"] = int(math.ceil(interval.n_seeds * factor))
    return out


def underpowered_note(interval: Interval, threshold: float, what: str) -> str | None:
    """'underpowered: ...' when the interval's half-width exceeds the threshold it is compared with."""
    need = needed(interval, threshold)
    if not need:
        return None
    more = f"about {need['examples']:,} test examples"
    if "replicates" in need:
        more += f" or {need['replicates']} replicates"
    return (f"underpowered: the typical {what} interval is +-{interval.half_width:.2f} pp against a threshold of "
            f"{threshold:.3g} pp; needs {more}")
