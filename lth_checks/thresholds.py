"""Every threshold a verdict depends on, in one place, each with its source.

Sources: (paper) Paul et al. ICLR 2023; (LMC) Frankle et al. ICML 2020; (ours) a choice of this
project, written into every report next to the verdicts that depend on it. Nothing here may be
changed to make a claim pass; a change needs a reason and a source in this file and in the report.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Threshold:
    value: float | tuple
    unit: str
    source: str
    meaning: str

    def to_dict(self) -> dict:
        return {"value": self.value, "unit": self.unit, "source": self.source, "meaning": self.meaning}


MATCHING_EPS_FLOOR_PP = Threshold(0.5, "pp", "(paper) authors' plots; (ours) eps = max(std, floor)",
                                  "matching: E(w_L) <= E(dense) + max(std of dense error over replicates, 0.5 pp)")
BARRIER_TAU_PP = Threshold(2.0, "pp", "(LMC) stable when the barrier is below 2 pp; (ours) default",
                           "linearly connected: error barrier <= tau")
TAU_SWEEP_PP = Threshold((1.0, 2.0, 3.0), "pp", "(ours) CLAIMS.md asks every verdict to report tau in {1, 2, 3}",
                         "tau values each verdict is re-evaluated at")
AGREEMENT_RATE = Threshold(0.9, "fraction", "(ours) CLAIMS.md Claim 1 test",
                           "matching(L+1) agrees with (barrier <= tau) in at least this share of (k, L) pairs")
HIGH_SPARSITY_DENSITY = Threshold(0.5, "fraction of weights", "(ours) CLAIMS.md: error rises from ~50% remaining",
                                  "Claim 1 pools the pairs whose level L+1 keeps at most this fraction")
PERTURBATION_SIZES = Threshold((0.5, 1.0, 2.0, 4.0), "units of r_L", "(ours) CLAIMS.md Claim 2 construction",
                               "perturbation norms c * r_L")
ROBUST_UP_TO_C = Threshold(1.0, "units of r_L", "(paper) 'as large as the distance between successive pruned "
                           "rewind points'", "Claim 2 holds when barriers stay <= tau for every c up to this")
ROBUST_SHARE = Threshold(0.9, "fraction", "(ours) same agreement rate as Claim 1",
                         "Claim 2: share of (level, c <= 1) cases of the late rewind that must stay <= tau")
ONESHOT_GRID = Threshold((0.2, 0.4, 0.6, 0.8, 0.9), "fraction", "(ours) CLAIMS.md Claim 3 grid",
                         "one-shot prune fractions for the measured p_max")
P_STAR_TOLERANCE = Threshold(0.2, "fraction", "(ours) one grid step of the p grid",
                             "Claim 3b: |predicted p* - measured p_max| allowed for random pruning")
P_STAR_MIN_LEVELS = Threshold(3, "levels", "(ours) as claim 3a's rank correlation; rates: tests/test_claim3b_rates.py",
                              "Claim 3b decides only with at least this many levels where every replicate agrees "
                              "or every replicate disagrees")
THEORY_EPS_LOSS = Threshold(0.1, "nats", "(ours) loss tolerance of the sublevel set in the quadratic model",
                            "eps of d*(eps, R) in Claim 3's prune-limit theory")
SIGNIFICANCE = Threshold(0.05, "p-value", "(ours) conventional level (one-sided; 3a splits it over its two "
                         "directions)",
                         "every test a verdict rests on (Fisher 2x2 of claim 1, binomial share tests, the partial "
                         "rank correlation of 3a both ways, the sign test of 3c, McNemar of 3d); a FAIL needs a "
                         "significant result against the prediction (issue 9: 3a used to FAIL on rho >= 0, "
                         "55% of the time on pure noise)")
MIN_DETERMINED_PER_CLASS = Threshold(3, "pairs", "CLAIMS.md Claim 1 (at least 3 determined pairs in each class)",
                                     "Claim 1: determined pairs needed per matching class; Claim 2: determined "
                                     "cases needed")
CONFIDENCE = Threshold(0.95, "coverage", "CLAIMS.md (95% intervals)",
                       "paired bootstrap over test examples (2,000 resamples; seeds resampled too where >= 3): a "
                       "call is determined when its interval lies on one side of its threshold")
ONESHOT_TARGET_DENSITY = Threshold(0.134, "fraction of weights",
                                   "(LMC) late-rewind ResNet-20 stays matching down to about 13% of weights; "
                                   "(ours) the same target for every recipe, fixed before the run",
                                   "Claim 3d: the IMP level whose density is nearest (0.8^9 = 13.4%) is compared "
                                   "with a one-shot prune of the dense solution to that density (issue 9: choosing "
                                   "the deepest level that passed favoured levels that passed by chance)")
CHAIN_STEPS = Threshold(4, "steps", "(paper) the authors' chain of four successive 20% cuts",
                        "Claim 4: no-retraining chain length")
CHAIN_ERROR_MARGIN_PP = Threshold(1.0, "pp", "(ours) the authors' chain lost 5 pp in 4 cuts",
                                  "Claim 4: at equal density, the chain's projected error minus IMP's projected "
                                  "error must be established above this (FAIL when established below)")
MIN_REPLICATES = Threshold(2, "seeds", "(ours) a standard deviation needs two; CLAIMS.md asks 3 at paper scale",
                           "fewer replicates than this give INCONCLUSIVE")
MIN_REPLICATES_PAPER = Threshold(3, "seeds", "CLAIMS.md", "replicates required at paper scale")

ALL = {name: value for name, value in globals().items() if isinstance(value, Threshold)}


def as_dict() -> dict[str, dict]:
    return {name: t.to_dict() for name, t in ALL.items()}
