"""Measured error rates of every verdict rule on synthetic evidence (issue 9).

For each claim, evidence of the same shape a run produces is drawn from three models: one where the
claim holds, one where it is false, and pure noise (every compared quantity sits exactly at its
threshold, so the data carry no information about the call). The evidence goes through the same
`claim.decide` as a real run (paired bootstrap, determined calls, the rule), and the share of PASS
and FAIL verdicts is counted. Required: FAIL <= 5% where the claim holds, PASS <= 5% where it is
false, each <= 5% on noise. `python -m lth_checks.rates` writes lth_checks/verdict_rates.json for
the report's method section; tests/test_verdict_rates.py asserts the rates.

Synthetic networks: each seed has a set of hard test examples that every network of that seed
gets wrong (the shared difficulty that pairing cancels) plus its own independent errors; a network
"extra_pp" worse than another has that many more examples wrong. A path's middle point is its
endpoints' errors plus the barrier.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SIZES = {"smoke": {"examples": 360, "seeds": 2, "pairs": 24, "levels": 4},
         "small": {"examples": 10_000, "seeds": 2, "pairs": 14, "levels": 4}}
MODELS = ("holds", "false", "noise")
BASE_ERROR_PP = 3.0
OWN_ERROR_PP = 1.0  # independent per-network errors on top of the seed's shared hard examples
ALPHAS = [0.0, 0.5, 1.0]


@dataclass
class World:
    """Draws per-seed correctness arrays (True = correct)."""

    rng: np.random.Generator
    n: int
    seeds: int

    def __post_init__(self) -> None:
        k = round(BASE_ERROR_PP / 100 * self.n)
        self.hard = [self.rng.choice(self.n, k, replace=False) for _ in range(self.seeds)]

    def net(self, extra_pp: float = 0.0) -> np.ndarray:
        """(seeds, n): shared hard examples wrong, own errors, and `extra_pp` more examples wrong."""
        out = np.ones((self.seeds, self.n), dtype=bool)
        for s in range(self.seeds):
            out[s, self.hard[s]] = False
            k = self.rng.binomial(self.n, OWN_ERROR_PP / 100 + max(extra_pp, 0.0) / 100)
            out[s, self.rng.choice(self.n, k, replace=False)] = False
        return out

    def path(self, a: np.ndarray, b: np.ndarray, barrier_pp: float) -> np.ndarray:
        """(seeds, 3, n): a, a middle point `barrier_pp` above the chord, b."""
        mid = a & b  # wrong where either endpoint is: about the chord plus their disagreements
        out = mid.copy()
        for s in range(self.seeds):
            chord = 0.5 * ((~a[s]).mean() + (~b[s]).mean())
            target = chord + barrier_pp / 100
            k = int(round((target - (~mid[s]).mean()) * self.n))
            right = np.flatnonzero(mid[s])
            if k > 0:
                out[s, self.rng.choice(right, min(k, right.size), replace=False)] = False
            elif k < 0:
                wrong = np.flatnonzero(~mid[s] & (a[s] | b[s]))
                out[s, self.rng.choice(wrong, min(-k, wrong.size), replace=False)] = True
        return np.stack([a, out, b], axis=1)


def generators() -> dict:
    """Every registered claim's synthetic evidence generators by name: (model, size, rng) -> evidence. Each
    claim module holds its own (`Claim.synthetic`), drawn with `World`."""
    from .claim import registry

    out: dict = {}
    for claim in registry().values():
        out.update(claim.synthetic())
    return out


def __getattr__(name: str):
    if name == "GENERATORS":  # built on first use: the claim modules import this one
        return generators()
    raise AttributeError(name)


def rates(claim: str, size: str, trials: int, seed: int = 0) -> dict:
    """Share of PASS and FAIL per model over `trials` synthetic runs."""
    from .claim import decide

    out: dict = {"claim": claim, "size": size, "trials": trials}
    for m_i, model in enumerate(MODELS):
        rng = np.random.default_rng([seed, m_i, zlib.crc32(claim.encode()) % 10_000, len(size)])
        make = generators()[claim]
        verdicts = [decide(make(model, size, rng))[0].verdict for _ in range(trials)]
        out[model] = {v: verdicts.count(v) / trials for v in ("PASS", "FAIL", "INCONCLUSIVE")}
    return out


SMALL_TRIALS = {"1": 0.2, "2": 0.2}  # share of the trials at small size (a trial there costs ~2 s); else 0.4


def measure_all(trials: int = 100) -> dict:
    rows = [rates(c, s, trials if s == "smoke" else max(1, round(SMALL_TRIALS.get(c, 0.4) * trials)))
            for c in generators() for s in SIZES if not (c.startswith("3") and s == "small" and c != "3d")]
    sizes = ", ".join(f"{k}: {v['examples']} test examples, {v['seeds']} seeds" for k, v in SIZES.items())
    return {"trials": trials, "rows": rows,
            "description": f"claims 1, 2, 3d, 4 through the paired bootstrap on synthetic per-example correctness "
                           f"({sizes}); 3a and 3c on synthetic (seed, level) rows of 4 levels (3a also with 5 "
                           "seeds); 3b is rated by its own test"}


if __name__ == "__main__":
    import sys

    doc = measure_all(int(sys.argv[1]) if len(sys.argv) > 1 else 100)
    path = Path(__file__).with_name("verdict_rates.json")
    path.write_text(json.dumps(doc, indent=1) + "\n")
    for r in doc["rows"]:
        print(r["claim"], r["size"], {m: r[m] for m in MODELS})
