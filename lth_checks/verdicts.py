"""Verdict rules of CLAIMS.md as pure functions of measured numbers (tested on planted results).

PASS: the prediction held (with its effect size). FAIL: it was contradicted. INCONCLUSIVE: the
run could not discriminate (too few replicates, one class absent, a divergence, a saturated grid).
Errors and barriers enter in percentage points.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats

from . import thresholds as T

PASS, FAIL, INCONCLUSIVE = "PASS", "FAIL", "INCONCLUSIVE"


@dataclass
class Verdict:
    verdict: str
    summary: str  # one line: why
    effect: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> dict:
    """Mean with a Student-t interval (None bounds for a single value)."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if x.size == 0:
        return {"mean": float("nan"), "lo": None, "hi": None, "n": 0, "std": None}
    mean = float(x.mean())
    if x.size < 2:
        return {"mean": mean, "lo": None, "hi": None, "n": 1, "std": None}
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, x.size - 1) * std / math.sqrt(x.size))
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": int(x.size), "std": std}


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


@dataclass(frozen=True)
class LevelPair:
    """Claim 1 datum: successive levels L -> L+1 of one rewind (means over replicates)."""

    rewind: int
    level: int
    next_density: float
    matching: bool
    barrier_pp: float


def claim1(pairs: Sequence[LevelPair], tau_pp: float, replicates: int, diverged: bool = False,
           required: int | None = None) -> Verdict:
    """matching(L+1) agrees with (barrier <= tau) in >= 90% of the high-sparsity pairs, both classes present.

    Agreement is balanced over the two matching classes (the mean of the agreement within matching
    and within non-matching pairs), so a lopsided pool cannot reach 90% on its larger class alone.
    """
    if diverged:
        return Verdict(INCONCLUSIVE, "a training run diverged; see the report for which")
    pool = [p for p in pairs if p.next_density <= T.HIGH_SPARSITY_DENSITY.value + 1e-12]
    if not pool:
        return Verdict(INCONCLUSIVE, f"no level pair at or below {T.HIGH_SPARSITY_DENSITY.value:.0%} density")
    agree = [p.matching == (p.barrier_pp <= tau_pp) for p in pool]
    n_match = sum(p.matching for p in pool)
    rate = sum(agree) / len(agree)
    effect = {"agreement": rate, "pairs": len(pool), "matching_pairs": n_match,
              "non_matching_pairs": len(pool) - n_match, "tau_pp": tau_pp}
    note = replicates_note(replicates, required)
    if note:
        return Verdict(INCONCLUSIVE, note, effect)
    if n_match in (0, len(pool)):
        which = "matching" if n_match else "non-matching"
        return Verdict(INCONCLUSIVE, f"all {len(pool)} high-sparsity pairs are {which}: only one class present", effect)
    within = [sum(a for a, p in zip(agree, pool) if p.matching == cls) / sum(p.matching == cls for p in pool)
              for cls in (True, False)]
    balanced = sum(within) / 2
    effect.update(balanced_agreement=balanced, agreement_matching=within[0], agreement_non_matching=within[1])
    verdict = PASS if balanced >= T.AGREEMENT_RATE.value else FAIL
    return Verdict(verdict, f"matching agrees with barrier <= {tau_pp:g} pp in {sum(agree)}/{len(agree)} pairs "
                   f"(balanced {balanced:.0%}: {within[0]:.0%} of matching, {within[1]:.0%} of non-matching; "
                   f"needed {T.AGREEMENT_RATE.value:.0%})", effect)


@dataclass(frozen=True)
class PerturbationCase:
    """Claim 2 datum: barrier between the level-L solution and its perturbed twin (mean over replicates)."""

    level: int
    c: float
    barrier_pp: float
    level_matching: bool


def claim2(cases: Sequence[PerturbationCase], sgd_noise_barriers_pp: Sequence[float], tau_pp: float,
           replicates: int, diverged: bool = False, all_barriers_pp: Sequence[float] = (),
           required: int | None = None) -> Verdict:
    """For the late rewind: at matching levels, barriers stay <= tau for every c <= 1.

    `all_barriers_pp` holds every barrier the run measured (all rewinds, all c, the controls): if
    none exceeds tau, the instrument never showed a barrier, and robustness cannot be told apart
    from insensitivity.
    """
    if diverged:
        return Verdict(INCONCLUSIVE, "a training run diverged; see the report for which")
    c_max = float(T.ROBUST_UP_TO_C.value)
    pool = [x for x in cases if x.level_matching and x.c <= c_max + 1e-12]
    effect: dict = {"tau_pp": tau_pp, "cases": len(pool)}
    if not pool:
        return Verdict(INCONCLUSIVE, "no matching level of the late rewind to perturb", effect)
    unstable_noise = [b for b in sgd_noise_barriers_pp if b > tau_pp]
    robust = [x.barrier_pp <= tau_pp for x in pool]
    share = sum(robust) / len(robust)
    effect.update(robust_share=share, max_barrier_pp=max(x.barrier_pp for x in pool),
                  sgd_noise_max_pp=max(sgd_noise_barriers_pp, default=float("nan")))
    note = replicates_note(replicates, required)
    if note:
        return Verdict(INCONCLUSIVE, note, effect)
    if all_barriers_pp and max(all_barriers_pp) <= tau_pp:
        return Verdict(INCONCLUSIVE, f"no barrier anywhere in the run exceeds {tau_pp:g} pp (not even c = 4 or k = 0): "
                       "the perturbations cannot discriminate", effect)
    if unstable_noise:
        return Verdict(INCONCLUSIVE, f"the late rewind is not even stable to SGD noise ({len(unstable_noise)} "
                       f"control barrier(s) > {tau_pp:g} pp): premise of the claim not met", effect)
    verdict = PASS if share >= T.ROBUST_SHARE.value else FAIL
    return Verdict(verdict, f"{sum(robust)}/{len(robust)} perturbations with c <= {c_max:g} stay within "
                   f"{tau_pp:g} pp (max {effect['max_barrier_pp']:.2f} pp)", effect)


def p_max(results: Sequence[tuple[float, bool, float]], tau_pp: float) -> float:
    """Largest p whose one-shot result is matching and linearly connected; 0 when none.

    `results`: (p, matching, barrier_pp to w_L) for each grid point.
    """
    ok = [p for p, matching, barrier in results if matching and barrier <= tau_pp]
    return max(ok, default=0.0)


EXACT_PERMUTATION_MAX_N = 8  # 8! = 40,320 orderings: cheap to enumerate


def spearman_less(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Spearman rho and the one-sided p-value for rho < 0.

    For a handful of levels scipy's t approximation is far too optimistic (4 perfectly ordered
    points give p ~ 0 instead of 1/24), so small samples get the exact permutation p-value,
    enumerated here because scipy.stats.permutation_test would call spearmanr 40,320 times.
    """
    res = stats.spearmanr(x, y, alternative="less")
    rho = float(res.statistic)
    if x.size > EXACT_PERMUTATION_MAX_N:
        return rho, float(res.pvalue)
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    perms = np.array(list(itertools.permutations(range(x.size))))
    ry_all = ry[perms]
    cx = rx - rx.mean()
    cy = ry_all - ry_all.mean(axis=1, keepdims=True)
    rhos = (cy @ cx) / (np.sqrt((cy ** 2).sum(axis=1)) * np.sqrt((cx ** 2).sum()))
    return rho, float(np.mean(rhos <= rho + 1e-12))


def claim3a(top_eigenvalues: Sequence[float], p_max_values: Sequence[float]) -> Verdict:
    """Sharper solutions have smaller p_max: Spearman rho < 0, one-sided p < 0.05."""
    x, y = np.asarray(top_eigenvalues, float), np.asarray(p_max_values, float)
    if x.size < 3:
        return Verdict(INCONCLUSIVE, f"only {x.size} levels measured; 3 needed for a rank correlation")
    if np.unique(y).size < 2 or np.unique(x).size < 2:
        return Verdict(INCONCLUSIVE, f"p_max does not vary across levels (all {y[0]:g}): the grid cannot discriminate",
                       {"points": int(x.size)})
    rho, pval = spearman_less(x, y)
    effect = {"spearman_rho": rho, "p_value_one_sided": pval, "points": int(x.size)}
    if rho >= 0:
        return Verdict(FAIL, f"rank correlation of sharpness and p_max is {rho:+.2f} (>= 0)", effect)
    if pval < T.SIGNIFICANCE.value:
        return Verdict(PASS, f"rank correlation {rho:+.2f} (one-sided p = {pval:.3f})", effect)
    return Verdict(INCONCLUSIVE, f"rank correlation {rho:+.2f} is negative but not significant (p = {pval:.2f})",
                   effect)


@dataclass(frozen=True)
class PStarCase:
    """Claim 3b datum: one (replicate, level) of the late rewind, random pruning.

    `predicted` is the theory's p* on the grid; `predicted_low`/`predicted_high` the p* with the
    bulk's d* moved by two standard errors (equal when the spectrum is exact); `resolved` False
    when the bulk's quadrature cannot resolve d* at some grid point; `measured` is p_max.
    """

    level: int
    seed: int
    predicted: float
    measured: float
    predicted_low: float | None = None
    predicted_high: float | None = None
    resolved: bool = True


def _p_star_call(case: PStarCase, tol: float, top: float) -> str:
    """One replicate: 'agree' when every p* in its range is within tol of p_max, 'disagree_above' /
    'disagree_below' when none is (p_max above / below), 'censored' when prediction and measurement
    both sit at the grid's end, else 'undetermined'."""
    if not case.resolved:
        return "undetermined"
    lo = case.predicted if case.predicted_low is None else min(case.predicted_low, case.predicted)
    hi = case.predicted if case.predicted_high is None else max(case.predicted_high, case.predicted)
    if lo >= top - 1e-12 and case.measured >= top - 1e-12:
        return "censored"
    nearest = 0.0 if lo <= case.measured <= hi else min(abs(case.measured - lo), abs(case.measured - hi))
    farthest = max(abs(case.measured - lo), abs(case.measured - hi))
    if farthest <= tol + 1e-12:
        return "agree"
    if nearest > tol + 1e-12:
        return "disagree_above" if case.measured > hi else "disagree_below"
    return "undetermined"


def claim3b(cases: Sequence[PStarCase], grid: Sequence[float]) -> Verdict:
    """Predicted p* and measured p_max (random pruning) agree within the tolerance.

    The unit of evidence is the level (replicates of one level are not independent evidence):
    a level agrees when every replicate agrees, disagrees when every replicate disagrees on the
    same side (each by more than the tolerance, the whole of p*'s uncertainty range included), and is otherwise
    undetermined, as is a replicate whose d* the spectral density does not resolve. A level
    where prediction and measurement both sit at the grid's end says only "both at least the
    last grid point": it is reported, not counted. PASS: at least P_STAR_MIN_LEVELS determined
    levels and at least AGREEMENT_RATE of them agree; FAIL: at least P_STAR_MIN_LEVELS
    determined levels and fewer agree; else INCONCLUSIVE.
    """
    if not cases:
        return Verdict(INCONCLUSIVE, "no level measured")
    tol, top = float(T.P_STAR_TOLERANCE.value), max(grid)
    need = int(T.P_STAR_MIN_LEVELS.value)
    levels = sorted({c.level for c in cases})
    calls: dict[int, str] = {}
    for level in levels:
        per = {_p_star_call(c, tol, top) for c in cases if c.level == level}
        call = per.pop() if len(per) == 1 else "undetermined"
        calls[level] = "disagree" if call.startswith("disagree") else call
    count = {k: sum(v == k for v in calls.values()) for k in ("agree", "disagree", "undetermined", "censored")}
    determined = count["agree"] + count["disagree"]
    diffs = [abs(c.predicted - c.measured) for c in cases]
    at_end = sum(c.predicted >= top - 1e-12 for c in cases)
    effect = {"levels": len(levels), "determined_levels": determined, "agreeing_levels": count["agree"],
              "disagreeing_levels": count["disagree"], "undetermined_levels": count["undetermined"],
              "censored_levels": count["censored"], "level_calls": {str(k): v for k, v in calls.items()},
              "mean_abs_difference": float(np.mean(diffs)), "tolerance": tol,
              "predictions_at_grid_end": at_end, "unresolved_predictions": sum(not c.resolved for c in cases)}
    detail = (f"{count['agree']} agree, {count['disagree']} disagree by more than {tol:g}, "
              f"{count['undetermined']} undetermined, {count['censored']} with p* and p_max both at the grid's end "
              f"({top:g}) of {len(levels)} levels; predictions at the grid's end: {at_end}/{len(cases)}; "
              f"mean |p* - p_max| {np.mean(diffs):.2f}")
    if determined < need:
        return Verdict(INCONCLUSIVE, f"only {determined} determined level(s), {need} needed: {detail}", effect)
    share = count["agree"] / determined
    effect["agreeing_share"] = share
    verdict = PASS if share >= T.AGREEMENT_RATE.value else FAIL
    return Verdict(verdict, f"|p* - p_max| <= {tol:g} at {share:.0%} of {determined} determined levels "
                   f"(needed {T.AGREEMENT_RATE.value:.0%}): {detail}", effect)


def claim3c(magnitude_rayleigh: Sequence[float], random_rayleigh: Sequence[float]) -> Verdict:
    """The magnitude-pruning direction is flatter than a random pruning direction of the same fraction."""
    m, r = np.asarray(magnitude_rayleigh, float), np.asarray(random_rayleigh, float)
    if m.size == 0:
        return Verdict(INCONCLUSIVE, "no level measured")
    ratio = m / np.where(r == 0, np.nan, r)  # reported effect size only: a negative r would flip it
    flatter = float(np.mean(m < r))
    effect = {"median_ratio": float(np.nanmedian(ratio)), "flatter_share": flatter, "levels": int(m.size)}
    verdict = PASS if flatter >= T.AGREEMENT_RATE.value else FAIL
    return Verdict(verdict, f"magnitude direction flatter than random at {flatter:.0%} of levels "
                   f"(median curvature ratio {effect['median_ratio']:.2f})", effect)


def claim3d(imp_matching: bool, oneshot_matching: bool, density: float) -> Verdict:
    """One-shot pruning straight to a high sparsity fails where 20% steps succeed."""
    effect = {"density": density, "imp_matching": imp_matching, "oneshot_matching": oneshot_matching}
    if not imp_matching:
        return Verdict(INCONCLUSIVE, f"IMP itself is not matching at {density:.1%} density", effect)
    if oneshot_matching:
        return Verdict(FAIL, f"one-shot pruning to {density:.1%} is matching too", effect)
    return Verdict(PASS, f"IMP matches at {density:.1%} density, one-shot pruning there does not", effect)


def claim4(chain_error_rise_pp: float, imp_error_gap_pp: float, chain_length_growth: float,
           imp_length_growth: float) -> Verdict:
    """Without retraining, projected error and projection length grow faster than with IMP's retraining."""
    margin = float(T.CHAIN_ERROR_MARGIN_PP.value)
    excess = chain_error_rise_pp - imp_error_gap_pp
    effect = {"chain_error_rise_pp": chain_error_rise_pp, "imp_error_gap_pp": imp_error_gap_pp,
              "excess_pp": excess, "chain_length_growth": chain_length_growth,
              "imp_length_growth": imp_length_growth}
    if excess < 0 or chain_length_growth <= imp_length_growth:
        what = "error" if excess < 0 else "projection length"
        return Verdict(FAIL, f"without retraining the projected {what} grows no faster than with IMP", effect)
    if excess >= margin:
        return Verdict(PASS, f"without retraining the projected error rises {excess:.2f} pp more than IMP's "
                       f"and the projection length grows x{chain_length_growth:.2f} vs x{imp_length_growth:.2f}",
                       effect)
    return Verdict(INCONCLUSIVE, f"the chain's extra error rise {excess:.2f} pp is below the {margin:g} pp margin",
                   effect)
