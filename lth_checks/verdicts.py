"""What every verdict rule shares: the verdict record, descriptive intervals, the tau sweep, replicate
and power checks. The rules themselves live with their claims (lth_checks/paper/), as pure functions
of measured numbers (tested on planted results).

PASS: the prediction held (with its effect size). FAIL: it was contradicted. INCONCLUSIVE: the
run could not discriminate (too few replicates, one class absent, a divergence, a saturated grid).
Errors and barriers enter in percentage points.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats

from . import stats as S
from . import thresholds as T
from .stats import Interval

PASS, FAIL, INCONCLUSIVE = "PASS", "FAIL", "INCONCLUSIVE"


@dataclass
class Verdict:
    verdict: str
    summary: str  # one line: why
    effect: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> dict:
    """Descriptive mean over replicates: with 3 or more a Student-t interval; with fewer only the mean,
    the standard deviation and the range (a 2-replicate t-interval is 12.7 standard errors wide, and
    zero-wide when the two tie: no interval rather than a misleading one). Decisions never use this:
    they use the paired bootstrap of `stats`."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if x.size == 0:
        return {"mean": float("nan"), "lo": None, "hi": None, "n": 0, "std": None}
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if x.size >= 2 else None
    out = {"mean": mean, "lo": None, "hi": None, "n": int(x.size), "std": std,
           "min": float(x.min()), "max": float(x.max())}
    if x.size >= 3:
        half = float(stats.t.ppf(0.5 + confidence / 2, x.size - 1) * std / math.sqrt(x.size))
        out.update(lo=mean - half, hi=mean + half)
    return out


def matching_eps_pp(dense_errors_pp: Sequence[float]) -> tuple[float, float | None]:
    """(eps, std): eps = max(std of dense error over replicates, 0.5 pp) (CLAIMS.md default)."""
    std = float(np.std(dense_errors_pp, ddof=1)) if len(dense_errors_pp) >= 2 else None
    return max(std or 0.0, float(T.MATCHING_EPS_FLOOR_PP.value)), std


def tau_sweep(rule: Callable[[float], Verdict]) -> dict[str, str]:
    """The verdict re-evaluated at every tau of CLAIMS.md's sweep."""
    return {f"{tau:g}": rule(tau).verdict for tau in T.TAU_SWEEP_PP.value}


def replicates_note(replicates: int, required: int | None = None) -> str | None:
    required = int(T.MIN_REPLICATES.value) if required is None else required
    if replicates < required:
        return f"only {replicates} replicate(s), {required} required"
    return None


def with_replicates(verdict: Verdict, replicates: int, required: int | None = None) -> Verdict:
    """Demote a PASS or FAIL to INCONCLUSIVE when too few replicates stand behind it."""
    note = replicates_note(replicates, required)
    if note and verdict.verdict != INCONCLUSIVE:
        return Verdict(INCONCLUSIVE, f"{note}; measured: {verdict.summary}", verdict.effect)
    return verdict




def resolution(n_examples: int) -> float:
    """One test example in percentage points."""
    return 100.0 / n_examples if n_examples else float("nan")


def _median_interval(intervals: Sequence[Interval]) -> Interval | None:
    """The interval of median half-width: the 'typical' resolution of a set of comparisons."""
    if not intervals:
        return None
    return sorted(intervals, key=lambda i: i.half_width)[len(intervals) // 2]


def _power(effect: dict, checks: Sequence[tuple[str, Sequence[Interval], float]]) -> str | None:
    """Resolution, distance to each threshold in examples, and the first 'underpowered' note.

    checks: (name, intervals compared with the threshold, threshold in pp).
    """
    notes, dist = [], {}
    for name, intervals, threshold in checks:
        typical = _median_interval(intervals)
        if typical is None:
            continue
        res = resolution(typical.n_examples)
        effect.setdefault("resolution_pp", res)
        effect.setdefault("examples", typical.n_examples)
        gaps = sorted(abs(i.mean - threshold) / res for i in intervals)
        dist[name] = {"threshold_pp": threshold, "threshold_examples": threshold / res,
                      "median_distance_examples": gaps[len(gaps) // 2],
                      "typical_half_width_pp": typical.half_width}
        note = S.underpowered_note(typical, threshold, name)
        if note:
            notes.append(note)
    effect["distance_to_thresholds"] = dist
    return notes[0] if notes else None


