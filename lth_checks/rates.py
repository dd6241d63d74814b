"""Measured error rates of every verdict rule on synthetic evidence (issue 9).

For each claim, evidence of the same shape a run produces is drawn from three models: one where the
claim holds, one where it is false, and pure noise (every compared quantity sits exactly at its
threshold, so the data carry no information about the call). The evidence goes through the same
`evidence.decide` as a real run (paired bootstrap, determined calls, the rule), and the share of PASS
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

from . import thresholds as T

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


def _eps_pp() -> float:
    return float(T.MATCHING_EPS_FLOOR_PP.value)


def claim1_evidence(model: str, size: str, rng: np.random.Generator) -> dict:
    cfg = SIZES[size]
    w = World(rng, cfg["examples"], cfg["seeds"])
    tau, eps = float(T.BARRIER_TAU_PP.value), _eps_pp()
    dense = w.net()
    levels = []
    for i in range(cfg["pairs"]):
        if model == "noise":
            excess, bar = eps, tau
        else:
            matching = i % 2 == 0
            excess = 0.0 if matching else 4.0
            connected = matching if model == "holds" else rng.random() < 0.5
            bar = 0.0 if connected else 6.0
        prev, nxt = w.net(), w.net(excess)
        levels.append({"level": i, "density": 0.4, "next_density": 0.32, "next": nxt,
                       "path": w.path(prev, nxt, bar), "path_train": w.path(prev, nxt, bar)})
    return {"claim": "1", "replicates": cfg["seeds"], "required": 2, "alphas": ALPHAS,
            "rewinds": [{"rewind": 0, "dense": dense, "levels": levels}]}


def claim2_evidence(model: str, size: str, rng: np.random.Generator) -> dict:
    cfg = SIZES[size]
    w = World(rng, cfg["examples"], cfg["seeds"])
    tau = float(T.BARRIER_TAU_PP.value)
    bar = {"holds": 0.0, "false": 6.0, "noise": tau}[model]
    early = {"holds": 6.0, "false": 6.0, "noise": tau}[model]

    def rewind(k: int, b: float, noise_b: float) -> dict:
        dense = w.net()
        levels = []
        for level in range(cfg["levels"]):
            sol = w.net()
            levels.append({"level": level, "density": 0.8 ** level, "correct": sol,
                           "sgd_noise": w.path(sol, w.net(), noise_b), "real_pair": w.path(sol, w.net(), b),
                           "perturb": {f"{c:g}": {"path": w.path(sol, w.net(), b if c <= 1 else early),
                                                  "r_L": [1.0] * cfg["seeds"]}
                                       for c in T.PERTURBATION_SIZES.value}})
        return {"rewind": k, "dense": dense, "levels": levels}

    return {"claim": "2", "replicates": cfg["seeds"], "required": 2, "alphas": ALPHAS, "late_rewind": 20,
            "rewinds": [rewind(0, early, early), rewind(20, bar, 0.0 if model != "noise" else tau)]}


def claim3d_evidence(model: str, size: str, rng: np.random.Generator) -> dict:
    cfg = SIZES[size]
    w = World(rng, cfg["examples"], cfg["seeds"])
    eps = _eps_pp()
    imp_x, shot_x = {"holds": (0.0, 4.0), "false": (0.0, 0.0), "noise": (eps, eps)}[model]
    return {"claim": "3d", "replicates": cfg["seeds"], "required": 2, "target_level": 9, "density": 0.134,
            "target_density": 0.134, "dense": w.net(), "imp": w.net(imp_x), "oneshot": w.net(shot_x)}


def claim4_evidence(model: str, size: str, rng: np.random.Generator) -> dict:
    cfg = SIZES[size]
    w = World(rng, cfg["examples"], cfg["seeds"])
    margin = float(T.CHAIN_ERROR_MARGIN_PP.value)
    excess = {"holds": 5.0, "false": 0.0, "noise": margin}[model]
    imp_slope = {"holds": 0.0, "false": 0.3, "noise": 0.15}[model]
    chain_slope = {"holds": 0.3, "false": 0.0, "noise": 0.15}[model]

    def lengths(slope: float) -> list[float]:
        return list(0.1 * np.exp(slope * np.arange(4) + rng.normal(0, 0.05, 4)))

    return {"claim": "4", "replicates": cfg["seeds"], "required": 2, "rewind": 20, "start_level": 1, "steps": 4,
            "imp_stats": [[{"level": lv, "relative_projection_length": x, "histogram_abs_w": {}}
                           for lv, x in enumerate([0.1, *lengths(imp_slope), 0.1])] for _ in range(cfg["seeds"])],
            "chain_rows": [[{"step": i + 1, "relative_projection_length": x}
                            for i, x in enumerate(lengths(chain_slope))] for _ in range(cfg["seeds"])],
            "imp_projected": w.net(), "chain": w.net(excess)}


def claim3_rows(part: str, model: str, size: str, rng: np.random.Generator, seeds: int | None = None,
                levels: int | None = None) -> dict:
    """Rows of claims 3a / 3c: per (seed, level) sharpness and p_max, or Rayleigh quotients."""
    cfg = SIZES[size]
    seeds = seeds or cfg["seeds"]
    grid = T.ONESHOT_GRID.value
    sign = {"holds": -1.0, "false": 1.0, "noise": 0.0}[model]
    rows = []
    for level in range(levels or cfg["levels"]):
        for seed in range(seeds):
            sharp = rng.normal()
            latent = 0.5 + 0.25 * sign * sharp + 0.05 * rng.normal() - 0.05 * level
            p = [g for g in grid if g <= latent]
            pmax = max(p, default=0.0)
            ray_random = 1.0
            ray_mag = {"holds": 0.5, "false": 1.5, "noise": 1.0}[model] * np.exp(0.3 * rng.normal())
            sweep = [{"p": g, "matching": g <= latent, "barrier_pp": 0.0, "test_error_pp": 0.0} for g in grid]
            rows.append({"seed": seed, "level": level, "density": 0.8 ** (4 * level),
                         "top_eigenvalue": float(np.exp(sharp + level)), "p_max_magnitude": pmax,
                         "p_max_random": pmax, "p_star_random": 0.9, "sweep_magnitude": sweep,
                         "sweep_random": sweep, "rayleigh_magnitude": float(ray_mag),
                         "rayleigh_random": ray_random})
    return {"claim": f"3{part}", "part": part, "rows": rows, "rewind": 20, "replicates": seeds, "required": 2}


GENERATORS = {"1": claim1_evidence, "2": claim2_evidence, "3d": claim3d_evidence, "4": claim4_evidence,
              "3a": lambda m, s, r: claim3_rows("a", m, s, r), "3c": lambda m, s, r: claim3_rows("c", m, s, r),
              "3a (5 seeds)": lambda m, s, r: claim3_rows("a", m, s, r, seeds=5),
              "3c (6 levels)": lambda m, s, r: claim3_rows("c", m, s, r, levels=6)}


def rates(claim: str, size: str, trials: int, seed: int = 0) -> dict:
    """Share of PASS and FAIL per model over `trials` synthetic runs."""
    from .evidence import decide

    out: dict = {"claim": claim, "size": size, "trials": trials}
    for m_i, model in enumerate(MODELS):
        rng = np.random.default_rng([seed, m_i, zlib.crc32(claim.encode()) % 10_000, len(size)])
        verdicts = [decide(GENERATORS[claim](model, size, rng))[0].verdict for _ in range(trials)]
        out[model] = {v: verdicts.count(v) / trials for v in ("PASS", "FAIL", "INCONCLUSIVE")}
    return out


SMALL_TRIALS = {"1": 0.2, "2": 0.2}  # share of the trials at small size (a trial there costs ~2 s); else 0.4


def measure_all(trials: int = 100) -> dict:
    rows = [rates(c, s, trials if s == "smoke" else max(1, round(SMALL_TRIALS.get(c, 0.4) * trials)))
            for c in GENERATORS for s in SIZES if not (c.startswith("3") and s == "small" and c != "3d")]
    sizes = ", ".join(f"{k}: {v['examples']} test examples, {v['seeds']} seeds" for k, v in SIZES.items())
    return {"trials": trials, "rows": rows,
            "description": f"claims 1, 2, 3d, 4 through the paired bootstrap on synthetic per-example correctness "
                           f"({sizes}); 3a and 3c on synthetic (seed, level) rows of 4 levels (3a also with 5 "
                           "seeds); claim 3b is rated by its own test"}


if __name__ == "__main__":
    import sys

    doc = measure_all(int(sys.argv[1]) if len(sys.argv) > 1 else 100)
    path = Path(__file__).with_name("verdict_rates.json")
    path.write_text(json.dumps(doc, indent=1) + "\n")
    for r in doc["rows"]:
        print(r["claim"], r["size"], {m: r[m] for m in MODELS})
