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


@dataclass(frozen=True)
class LevelPair:
    """Claim 1 datum: successive levels L -> L+1 of one rewind, with paired-bootstrap intervals.

    excess: E(w_{L+1}) - E(dense) in pp; barrier: error barrier of the path w_L -> w_{L+1} in pp.
    """

    rewind: int
    level: int
    next_density: float
    excess: Interval
    eps_pp: float
    barrier: Interval

    @property
    def matching(self) -> bool | None:
        return self.excess.below(self.eps_pp)

    def connected(self, tau_pp: float) -> bool | None:
        return self.barrier.below(tau_pp)


def claim1(pairs: Sequence[LevelPair], tau_pp: float, replicates: int, diverged: bool = False,
           required: int | None = None) -> Verdict:
    """matching(L+1) agrees with (barrier <= tau) in >= 90% of the determined high-sparsity pairs.

    Only pairs whose matching call and barrier call are both determined (interval clear of the
    threshold) count; at least 3 in each matching class (CLAIMS.md). PASS: agreement >= 90% and the
    2x2 table shows an association (Fisher's exact test, one-sided). FAIL: agreement significantly
    below 90% (exact binomial test). Otherwise INCONCLUSIVE. The balanced share (mean agreement
    within each class) is reported beside the plain one.
    """
    if diverged:
        return Verdict(INCONCLUSIVE, "a training run diverged; see the report for which")
    alpha = float(T.SIGNIFICANCE.value)
    need = int(T.MIN_DETERMINED_PER_CLASS.value)
    pool = [p for p in pairs if p.next_density <= T.HIGH_SPARSITY_DENSITY.value + 1e-12]
    if not pool:
        return Verdict(INCONCLUSIVE, f"no level pair at or below {T.HIGH_SPARSITY_DENSITY.value:.0%} density")
    calls = [(p.matching, p.connected(tau_pp)) for p in pool]
    det = [(m, c) for m, c in calls if m is not None and c is not None]
    table = [[sum(1 for m, c in det if m == mm and c == cc) for cc in (True, False)] for mm in (True, False)]
    n_match, n_non = sum(table[0]), sum(table[1])
    agree = table[0][0] + table[1][1]
    effect: dict = {"tau_pp": tau_pp, "pairs": len(pool), "determined_pairs": len(det),
                    "undetermined_matching": sum(m is None for m, _ in calls),
                    "undetermined_barrier": sum(c is None for _, c in calls),
                    "table": {"matching_connected": table[0][0], "matching_barrier": table[0][1],
                              "non_matching_connected": table[1][0], "non_matching_barrier": table[1][1]},
                    "matching_pairs": n_match, "non_matching_pairs": n_non}
    power = _power(effect, [("matching (E(L+1) - E(dense) vs eps)", [p.excess for p in pool], pool[0].eps_pp),
                            ("barrier vs tau", [p.barrier for p in pool], tau_pp)])
    if det:
        effect["agreement"] = agree / len(det)
    if n_match and n_non:
        effect["balanced_agreement"] = 0.5 * (table[0][0] / n_match + table[1][1] / n_non)
        effect["fisher_p_one_sided"] = float(stats.fisher_exact(table, alternative="greater").pvalue)
    note = replicates_note(replicates, required)
    if note:
        return Verdict(INCONCLUSIVE, note, effect)
    counts = (f"{len(det)}/{len(pool)} pairs determined ({n_match} matching, {n_non} non-matching; "
              f"{need} of each needed)")
    if n_match < need or n_non < need:
        return Verdict(INCONCLUSIVE, f"{power}; {counts}" if power else counts, effect)
    rate = agree / len(det)
    fisher = effect["fisher_p_one_sided"]
    below = float(stats.binomtest(agree, len(det), float(T.AGREEMENT_RATE.value), alternative="less").pvalue)
    effect["agreement_below_rate_p"] = below
    text = (f"matching agrees with barrier <= {tau_pp:g} pp in {agree}/{len(det)} determined pairs "
            f"({rate:.0%}, balanced {effect['balanced_agreement']:.0%}; Fisher p = {fisher:.3f}; "
            f"{len(pool) - len(det)} undetermined)")
    if rate >= T.AGREEMENT_RATE.value and fisher < alpha:
        return Verdict(PASS, text, effect)
    if below < alpha:
        return Verdict(FAIL, text + f"; significantly below {T.AGREEMENT_RATE.value:.0%} (p = {below:.3f})", effect)
    return Verdict(INCONCLUSIVE, text + "; neither established", effect)


@dataclass(frozen=True)
class PerturbationCase:
    """Claim 2 datum: barrier between the level-L solution and its perturbed twin (interval over seeds
    and test examples)."""

    level: int
    c: float
    barrier: Interval
    level_matching: bool | None


def claim2(cases: Sequence[PerturbationCase], sgd_noise: Sequence[Interval], tau_pp: float,
           replicates: int, diverged: bool = False, all_barriers: Sequence[Interval] = (),
           required: int | None = None) -> Verdict:
    """For the late rewind: at matching levels, barriers stay <= tau for every c <= 1.

    Decided on determined barriers only. PASS: at least 3 determined cases, >= 90% of them connected.
    FAIL: the share of determined barriers is significantly above 10% (exact binomial test).
    `all_barriers` holds every barrier the run measured (all rewinds, all c, the controls): if none
    is established above tau, the instrument never showed a barrier, and robustness cannot be told
    apart from insensitivity (INCONCLUSIVE). A control (SGD noise) with an established barrier means
    the premise is not met (INCONCLUSIVE).
    """
    if diverged:
        return Verdict(INCONCLUSIVE, "a training run diverged; see the report for which")
    alpha = float(T.SIGNIFICANCE.value)
    need = int(T.MIN_DETERMINED_PER_CLASS.value)
    c_max = float(T.ROBUST_UP_TO_C.value)
    pool = [x for x in cases if x.level_matching and x.c <= c_max + 1e-12]
    effect: dict = {"tau_pp": tau_pp, "cases": len(pool)}
    if not pool:
        return Verdict(INCONCLUSIVE, "no level of the late rewind is established as matching to perturb", effect)
    calls = [x.barrier.below(tau_pp) for x in pool]
    det = [c for c in calls if c is not None]
    robust = sum(det)
    effect.update(determined=len(det), connected=robust, barriers=len(det) - robust,
                  max_barrier_pp=max(x.barrier.mean for x in pool),
                  sgd_noise_max_pp=max((i.mean for i in sgd_noise), default=float("nan")))
    power = _power(effect, [("barrier vs tau", [x.barrier for x in pool], tau_pp)])
    note = replicates_note(replicates, required)
    if note:
        return Verdict(INCONCLUSIVE, note, effect)
    if all_barriers and not any(b.below(tau_pp) is False for b in all_barriers):
        return Verdict(INCONCLUSIVE, f"no barrier anywhere in the run is established above {tau_pp:g} pp (not even "
                       "c = 4 or k = 0): the perturbations cannot discriminate", effect)
    unstable = [i for i in sgd_noise if i.below(tau_pp) is False]
    if unstable:
        return Verdict(INCONCLUSIVE, f"the late rewind is not even stable to SGD noise ({len(unstable)} control "
                       f"barrier(s) established above {tau_pp:g} pp): premise of the claim not met", effect)
    text = (f"{robust}/{len(det)} determined perturbations with c <= {c_max:g} stay within {tau_pp:g} pp "
            f"({len(pool) - len(det)} undetermined; max {effect['max_barrier_pp']:.2f} pp)")
    if det:
        p_fail = float(stats.binomtest(len(det) - robust, len(det), 1 - float(T.ROBUST_SHARE.value),
                                       alternative="greater").pvalue)
        effect["barrier_share_above_p"] = p_fail
        if p_fail < alpha:
            return Verdict(FAIL, text + f"; barriers significantly more often than {1 - T.ROBUST_SHARE.value:.0%} "
                           f"(p = {p_fail:.3f})", effect)
    if len(det) < need:
        return Verdict(INCONCLUSIVE, (f"{power}; " if power else "") + text + f"; {need} determined cases needed",
                       effect)
    if robust / len(det) >= T.ROBUST_SHARE.value:
        return Verdict(PASS, text, effect)
    return Verdict(INCONCLUSIVE, text + "; neither established", effect)


def p_max(results: Sequence[tuple[float, bool, float]], tau_pp: float) -> float:
    """Largest p such that the one-shot result is matching and linearly connected at p and at every
    smaller p of the grid; 0 when the smallest fails.

    `results`: (p, matching, barrier_pp to w_L) for each grid point.
    """
    best = 0.0
    for p, matching, barrier in sorted(results):
        if not (matching and barrier <= tau_pp):
            break
        best = p
    return best


PERMUTATION_EXACT_MAX = 50_000
PERMUTATION_SAMPLES = 20_000


def _residual_maker(z: np.ndarray) -> np.ndarray:
    """Matrix that removes the least-squares fit on the ranks of z (and an intercept) from a vector."""
    rz = stats.rankdata(z)
    design = np.column_stack([np.ones_like(rz), rz])
    return np.eye(z.size) - design @ np.linalg.pinv(design)


def partial_spearman(x: np.ndarray, y: np.ndarray, z: np.ndarray, seed: int = 0) -> dict:
    """Partial rank correlation of x and y given z, with a permutation test that permutes x only
    among points of equal z (so the confound z is held fixed).

    Exact enumeration when the number of within-stratum orderings is small, else Monte Carlo.
    Ranks commute with permutations, so every permuted statistic is one row of a matrix product.
    Returns rho, one-sided p-values (less, greater) and the smallest p-value the design can reach.
    """
    x, y, z = (np.asarray(a, float) for a in (x, y, z))
    resid = _residual_maker(z)
    ry = resid @ stats.rankdata(y)
    rank_x = stats.rankdata(x)

    def corr(rx_rows: np.ndarray) -> np.ndarray:
        rx = rx_rows @ resid.T
        num = rx @ ry
        den = np.sqrt((rx ** 2).sum(-1) * (ry ** 2).sum())
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 1e-12, num / np.where(den > 1e-12, den, 1), np.nan)

    rho = float(corr(rank_x[None, :])[0])
    strata = [np.flatnonzero(z == v) for v in np.unique(z)]
    total = math.prod(math.factorial(len(s)) for s in strata)
    if total <= PERMUTATION_EXACT_MAX:
        per = [list(itertools.permutations(s)) for s in strata]
        perms = []
        for combo in itertools.product(*per):
            idx = np.arange(x.size)
            for s, order in zip(strata, combo):
                idx[s] = order
            perms.append(idx)
        perms_arr = np.asarray(perms)
        exact = True
    else:
        rng = np.random.default_rng(seed)
        perms_arr = np.tile(np.arange(x.size), (PERMUTATION_SAMPLES, 1))
        for s in strata:
            perms_arr[:, s] = rng.permuted(np.tile(s, (PERMUTATION_SAMPLES, 1)), axis=1)
        exact = False
    null = corr(rank_x[perms_arr])
    null = np.where(np.isnan(null), 0.0, null)
    tol = 1e-12
    extra = 0 if exact else 1  # Monte Carlo: count the observed ordering too, so p is never 0

    def pval(hits: np.ndarray) -> float:
        return float((hits.sum() + extra) / (hits.size + extra))

    p_less = pval(null <= rho + tol) if math.isfinite(rho) else 1.0
    p_greater = pval(null >= rho - tol) if math.isfinite(rho) else 1.0
    p_min = float(min(np.mean(null <= null.min() + tol), np.mean(null >= null.max() - tol)))
    return {"rho": rho, "p_less": p_less, "p_greater": p_greater, "p_min": p_min,
            "orderings": int(total), "exact": exact}


def claim3a(top_eigenvalues: Sequence[float], p_max_values: Sequence[float],
            densities: Sequence[float] | None = None) -> Verdict:
    """Sharper solutions have smaller p_max, with the density confound held fixed.

    Sharpness and p_max both move with density along IMP, so a raw rank correlation over levels
    mostly measures density. The statistic is the partial rank correlation of (top eigenvalue,
    p_max) given density over the (seed, level) points; its p-value comes from permuting the
    eigenvalues among points of equal density only. PASS: rho < 0, one-sided p < alpha. FAIL: rho
    > 0, one-sided p < alpha (significantly the other way). When the smallest p-value the design can
    reach is not below alpha (too few points per density), INCONCLUSIVE and the report says so.
    Without densities every point is its own stratum... so they are required to vary within a level.
    """
    x, y = np.asarray(top_eigenvalues, float), np.asarray(p_max_values, float)
    z = np.zeros_like(x) if densities is None else np.asarray(densities, float)
    alpha = float(T.SIGNIFICANCE.value)
    effect: dict = {"points": int(x.size), "significance": alpha}
    if x.size < 3:
        return Verdict(INCONCLUSIVE, f"only {x.size} points measured; 3 needed for a rank correlation", effect)
    if np.unique(y).size < 2 or np.unique(x).size < 2:
        return Verdict(INCONCLUSIVE, f"p_max does not vary (all {y[0]:g}): the grid cannot discriminate", effect)
    res = partial_spearman(x, y, z)
    raw = stats.spearmanr(x, y)
    effect.update(partial_spearman_rho=res["rho"], p_value_less=res["p_less"], p_value_greater=res["p_greater"],
                  smallest_reachable_p=res["p_min"], orderings=res["orderings"], exact_permutation=res["exact"],
                  raw_spearman_rho=float(raw.statistic), spearman_rho=res["rho"],
                  p_value_one_sided=res["p_less"])
    rho = res["rho"]
    half = alpha / 2  # two-sided: PASS and FAIL each get half of the level, so noise gives each <= alpha / 2
    if not math.isfinite(rho):
        return Verdict(INCONCLUSIVE, "p_max or sharpness does not vary at equal density: the partial correlation "
                       "is undefined", effect)
    if res["p_min"] >= half:
        strata = np.unique(z).size
        per = next(r for r in range(2, 50) if math.factorial(r) ** strata * half > 1)  # untied orderings needed
        return Verdict(INCONCLUSIVE, f"underpowered: with {x.size} points in {strata} density strata the "
                       f"smallest reachable p-value is {res['p_min']:.3f} >= {half:g} (two-sided {alpha:g}); needs "
                       f"about {per} replicates per level (measured partial rho {rho:+.2f})", effect)
    if rho < 0 and res["p_less"] < half:
        return Verdict(PASS, f"partial rank correlation given density {rho:+.2f} (one-sided p = {res['p_less']:.3f} "
                       f"< {half:g})", effect)
    if rho > 0 and res["p_greater"] < half:
        return Verdict(FAIL, f"partial rank correlation given density {rho:+.2f} is significantly positive "
                       f"(p = {res['p_greater']:.3f} < {half:g})", effect)
    return Verdict(INCONCLUSIVE, f"partial rank correlation given density {rho:+.2f} is not significant "
                   f"(p = {min(res['p_less'], res['p_greater']):.2f}, two-sided level {alpha:g})", effect)


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


def claim3c(magnitude_rayleigh: Sequence[float], random_rayleigh: Sequence[float],
            levels: Sequence[int] | None = None) -> Verdict:
    """The magnitude-pruning direction is flatter than a random pruning direction of the same fraction.

    Levels of one lineage are the independent units (seeds at one level are averaged first; rows
    of the same level are not counted as separate evidence). PASS: flatter at >= 90% of levels and
    a one-sided sign test (exact binomial) p < alpha. FAIL: sharper significantly often. When the
    number of levels cannot reach alpha, INCONCLUSIVE.
    """
    m, r = np.asarray(magnitude_rayleigh, float), np.asarray(random_rayleigh, float)
    if m.size == 0:
        return Verdict(INCONCLUSIVE, "no level measured")
    lv = np.arange(m.size) if levels is None else np.asarray(levels)
    units = np.unique(lv)
    diff = np.array([np.mean(m[lv == u] - r[lv == u]) for u in units])
    ratio = m / np.where(r == 0, np.nan, r)  # reported effect size only: a negative r would flip it
    flatter = int((diff < 0).sum())
    alpha = float(T.SIGNIFICANCE.value)
    p_greater = float(stats.binomtest(flatter, units.size, 0.5, alternative="greater").pvalue)
    p_less = float(stats.binomtest(flatter, units.size, 0.5, alternative="less").pvalue)
    p_min = 0.5 ** units.size
    effect = {"median_ratio": float(np.nanmedian(ratio)), "flatter_share": flatter / units.size,
              "levels": int(units.size), "rows": int(m.size), "sign_test_p": p_greater,
              "smallest_reachable_p": p_min, "flatter_share_rows": float(np.mean(m < r))}
    text = (f"magnitude direction flatter than random at {flatter}/{units.size} levels (seeds averaged; "
            f"median curvature ratio {effect['median_ratio']:.2f}; sign test p = {p_greater:.3f})")
    if p_min >= alpha:
        return Verdict(INCONCLUSIVE, f"underpowered: {units.size} levels give a smallest reachable p-value of "
                       f"{p_min:.3f} >= {alpha:g}; needs at least {math.ceil(math.log(alpha) / math.log(0.5)) + 0} "
                       f"levels; measured: {text}", effect)
    if flatter / units.size >= T.AGREEMENT_RATE.value and p_greater < alpha:
        return Verdict(PASS, text, effect)
    if p_less < alpha:
        return Verdict(FAIL, text + " (significantly sharper)", effect)
    return Verdict(INCONCLUSIVE, text + "; neither established", effect)


def claim3d(imp_excess: Interval, oneshot_excess: Interval, eps_pp: float, discordant: tuple[int, int],
            density: float) -> Verdict:
    """One-shot pruning straight to a high sparsity fails where 20% steps succeed.

    imp_excess / oneshot_excess: E - E(dense) in pp (paired bootstrap). discordant: (test images
    IMP gets right and one-shot wrong, the reverse), summed over seeds: the exact McNemar test is a
    binomial test of the first count against half of their sum. PASS: IMP established matching,
    one-shot established non-matching, and one-shot significantly worse than IMP (McNemar). FAIL:
    one-shot established matching where IMP is established matching. INCONCLUSIVE otherwise.
    """
    alpha = float(T.SIGNIFICANCE.value)
    b, c = discordant
    mcnemar = float(stats.binomtest(b, b + c, 0.5, alternative="greater").pvalue) if b + c else 1.0
    imp, shot = imp_excess.below(eps_pp), oneshot_excess.below(eps_pp)
    word = {True: "matching", False: "not matching", None: "undetermined"}
    effect: dict = {"density": density, "imp_matching": word[imp], "oneshot_matching": word[shot], "eps_pp": eps_pp,
                    "imp_excess_pp": imp_excess.to_dict(), "oneshot_excess_pp": oneshot_excess.to_dict(),
                    "discordant_imp_right": b, "discordant_oneshot_right": c, "mcnemar_p_one_sided": mcnemar}
    power = _power(effect, [("error - dense vs eps", [imp_excess, oneshot_excess], eps_pp)])
    calls = (f"IMP {imp_excess.mean:+.2f} [{imp_excess.lo:+.2f}, {imp_excess.hi:+.2f}] pp, one-shot "
             f"{oneshot_excess.mean:+.2f} [{oneshot_excess.lo:+.2f}, {oneshot_excess.hi:+.2f}] pp vs dense + "
             f"{eps_pp:.2f} at {density:.1%} density; McNemar {b} vs {c} images (p = {mcnemar:.2g})")
    if imp is True and shot is True:
        return Verdict(FAIL, f"one-shot pruning is established matching where IMP is: {calls}", effect)
    if imp is True and shot is False and mcnemar < alpha:
        return Verdict(PASS, f"IMP matches, one-shot does not: {calls}", effect)
    if imp is False:
        return Verdict(INCONCLUSIVE, f"IMP itself is established non-matching here (premise not met): {calls}", effect)
    why = power or "the matching calls are not both determined"
    return Verdict(INCONCLUSIVE, f"{why}; {calls}", effect)


def slope_difference(chain_lengths: Sequence[Sequence[float]], imp_lengths: Sequence[Sequence[float]],
                     confidence: float = 0.95) -> dict:
    """Chain minus IMP slope of log relative projection length per cut, mean over seeds, with an interval.

    Per seed each slope has the standard error of its least-squares fit (scipy.stats.linregress);
    with 3 or more seeds the spread of the per-seed differences is used where it is larger.
    """
    diffs, variances, df = [], [], 0
    for c, i in zip(chain_lengths, imp_lengths):
        fc = stats.linregress(np.arange(len(c)), np.log(np.asarray(c, float)))
        fi = stats.linregress(np.arange(len(i)), np.log(np.asarray(i, float)))
        diffs.append(fc.slope - fi.slope)
        variances.append(fc.stderr ** 2 + fi.stderr ** 2)
        df += len(c) + len(i) - 4
    d = np.asarray(diffs)
    se = math.sqrt(sum(variances)) / d.size
    if d.size >= 3:
        se, df = max(se, float(d.std(ddof=1)) / math.sqrt(d.size)), min(df, d.size - 1)
    half = float(stats.t.ppf(0.5 + confidence / 2, max(df, 1))) * se
    mean = float(d.mean())
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "per_seed": d.tolist(), "se": se, "df": df}


def claim4(excess: Interval, chain_lengths: Sequence[Sequence[float]],
           imp_lengths: Sequence[Sequence[float]]) -> Verdict:
    """Without retraining, the projected error and the projection length grow faster than with IMP.

    excess: E(chain after s cuts of w_1) - E(P(w_s)) in pp, both networks at the same density and
    both just projected (like with like), paired over test examples. chain_lengths / imp_lengths:
    per seed, the relative projection length at each cut; IMP's "stays roughly flat" is tested as
    its log-slope against the chain's (`slope_difference`). PASS: excess established above the
    margin and the chain's slope established above IMP's. FAIL only on a significant deficit: the
    excess established below the margin. INCONCLUSIVE otherwise (also when the error rises as
    predicted but the slopes do not separate, or separate the wrong way: said in the summary).
    """
    margin = float(T.CHAIN_ERROR_MARGIN_PP.value)
    slope = slope_difference(chain_lengths, imp_lengths)
    steeper = sum(x > 0 for x in slope["per_seed"])
    effect: dict = {"excess_pp": excess.to_dict(), "margin_pp": margin, "slope_difference": slope,
                    "seeds_chain_steeper": steeper, "seeds": len(slope["per_seed"]),
                    "chain_error_rise_pp": excess.mean}
    power = _power(effect, [("chain - IMP projected error vs margin", [excess], margin)])
    text = (f"at equal density the chain's projected error exceeds IMP's by {excess.mean:+.2f} "
            f"[{excess.lo:+.2f}, {excess.hi:+.2f}] pp (margin {margin:g} pp); log projection length per cut grows "
            f"{slope['mean']:+.3f} [{slope['lo']:+.3f}, {slope['hi']:+.3f}] faster along the chain than along IMP "
            f"(chain steeper in {steeper}/{len(slope['per_seed'])} seeds)")
    err = excess.below(margin)
    if err is True:
        return Verdict(FAIL, f"significant deficit: {text}", effect)
    if err is False and slope["lo"] > 0:
        return Verdict(PASS, text, effect)
    if err is False:
        why = "the projection lengths grow the other way" if slope["hi"] < 0 else "the slopes do not separate"
        return Verdict(INCONCLUSIVE, f"error as predicted but {why}: {text}", effect)
    return Verdict(INCONCLUSIVE, (f"{power}; " if power else "") + text, effect)
