"""What every claim shares: the run's options and cache access, the scale's premise, and the outcome record.

A `ClaimContext` says which recipes, rewinds, replicates and levels a run uses (`PLANS` per
`--scale`); each claim (`lth_checks.claim.Claim`, one module per claim) requests the experiments it
needs through it (so claims share lineages and branches). The premise of the scale (`check_premise`)
gates every verdict; `base_outcome`, `decided` and `finish` build the JSON-ready outcome record; the
small helpers below turn per-example correctness into errors and intervals.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from . import stats
from . import thresholds as T
from . import verdicts as V
from .archive import encode
from .config import override
from .imp import Experiment, run_together
from .measure import suite
from .measure.branches import train_together
from .measure.connectivity import PathSettings, barrier, instability
from .recipes import get_recipe, recipe_config
from .store import Store

SCALES = ("smoke", "cpu", "small", "paper")

# The regime the claims are about (Frankle et al., LMC, ICML 2020): trained from its initialisation
# (k = 0) the network is unstable to SGD noise, rewound to the late rewind point it is stable.
REGIME_PREMISE = "instability at k = 0, stability at the late rewind"


@dataclass(frozen=True)
class ScalePlan:
    """What one `--scale` runs: recipes, replicates, levels, and the levels branches start from."""

    recipes: tuple[str, ...]
    replicates: int
    levels: int  # last IMP level
    branch_levels: tuple[int, ...]  # levels that get perturbation / one-shot branches and Hessians
    path_points: int
    hessian_k: int | None = None  # per-scale measurement settings; None: MeasureSettings' default
    density_probes: int | None = None  # SLQ probes of the Hessian's bulk; None: MeasureSettings' default
    hessian_examples: int | None = None  # training examples of the Hessian; None: MeasureSettings' default
    # The paper's premise this scale meets (text; the "cpu" scale states and checks instability at
    # initialisation here). Empty: the scale does not meet it, and `regime` says what it tests instead.
    premise: str = ""
    premise_replicates: int = 0  # replicates of the premise check when more than `replicates` (0: the same)
    # False: claim 2 perturbs only the late rewind, the one its rule reads; earlier rewinds keep their
    # SGD-noise twins, the control in which CLAIMS.md expects barriers at k = 0 (ours, to afford a
    # second branch level on 2 CPU cores).
    perturb_early_rewinds: bool = True
    regime: str = ""  # one line shown above the verdicts in the report and the terminal summary

    def regime_line(self) -> str:
        """The line above the verdicts: what this scale can and cannot test."""
        if self.regime:
            return self.regime
        return f"premise: {self.premise}" if self.premise else ""


SMOKE_REGIME = ("smoke (digits MLP) is stable to SGD noise from k = 0: it tests the pipeline and the instruments, "
                "not the paper's regime (instability at initialisation)")


PLANS = {
    "smoke": ScalePlan(("smoke",), replicates=2, levels=15, branch_levels=(0, 4, 8, 12), path_points=11,
                       regime=SMOKE_REGIME),
    # Sized to finish from a cold cache in under an hour on 2 CPU cores with `-n 2` (issue 13), by the
    # plan with the measured CPU throughput (`plan.MEASURED_CPU_RESNET8`: 42 CPU-s per 936-iteration
    # training, ~8 CPU-s per 11-point path). Levels 0-15: this small network's error *falls* with pruning
    # down to ~10% of the weights, and both rewinds stop matching only at ~4% (levels 13-14), so claim 1
    # needs IMP this deep for a non-matching class. Level 9 (13.4%) is the one-shot claim's fixed target
    # density and the second branch level: claim 2 needs 3 cases with c <= 1, and one level gives 2. To
    # afford it, claim 2 perturbs the late rewind only (the one its rule reads; k = 0 keeps its SGD-noise
    # twins). The flatness claim's 3a-3c need 3-5 branch levels and are not measured
    # (`too_few_branch_levels`; a cold levels-0-9 run that measured them took ~68 minutes).
    # The premise takes 5 replicates: the k = 0 barrier varies a lot between seeds (pilot: 17.7, 7.9, 6.6 pp,
    # interval [-4.3, 25.8] over 3 with t = 4.3; with 7.0 and 7.3 pp more: [3.4, 15.2]); 2 more seeds cost 8
    # trainings of level 0.
    # hessian_k / hessian_examples apply where a run adds branch levels: the Hessian at 4,096 examples and
    # top 100 costs ~20 CPU-minutes per solution here; 1,024 examples and the top 20 (ours; CLAIMS.md: 4,096).
    "cpu": ScalePlan(("cpu",), replicates=3, levels=15, branch_levels=(0, 9), path_points=11,
                     premise=REGIME_PREMISE, premise_replicates=5, hessian_k=20, hessian_examples=1024,
                     perturb_early_rewinds=False),
    # sized to one 8-minute H100 command by `lth-checks plan` (issue 10; README "The small scale")
    "small": ScalePlan(("small",), replicates=2, levels=8, branch_levels=(1, 3, 5, 7), path_points=11,
                       hessian_k=10, hessian_examples=2048, premise=REGIME_PREMISE),
    "paper": ScalePlan(("cifar10_resnet20",), replicates=3, levels=16,
                       branch_levels=(0, 2, 4, 6, 8, 10, 12, 14), path_points=30, premise=REGIME_PREMISE),
}


@dataclass
class ClaimContext:
    """Options of one claims run (from the pytest command line) and access to the cache."""

    scale: str = "smoke"
    recipes: tuple[str, ...] = ()
    rewinds: tuple[int, ...] = ()  # empty: each recipe's default rewinds
    replicates: int | None = None
    levels: int | None = None
    overrides: tuple[str, ...] = ()  # `section.field=value` settings applied to every recipe
    device: str = "auto"
    data_root: str | None = None
    cache_dir: str | None = None
    cache_only: bool = False
    log: Callable[[str], None] = field(default=lambda msg: None)
    _experiments: dict = field(default_factory=dict, repr=False, compare=False)
    _premises: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def plan(self) -> ScalePlan:
        return PLANS[self.scale]

    def recipe_names(self) -> tuple[str, ...]:
        return self.recipes or self.plan.recipes

    def rewinds_for(self, recipe: str) -> tuple[int, ...]:
        return self.rewinds or get_recipe(recipe).default_rewinds

    def late_rewind(self, recipe: str) -> int:
        return max(self.rewinds_for(recipe))

    def perturbs(self, recipe: str, rewind: int) -> bool:
        """Whether claim 2 perturbs this rewind's lineages (always the late rewind; see `ScalePlan`)."""
        return self.plan.perturb_early_rewinds or rewind == self.late_rewind(recipe)

    def n_replicates(self) -> int:
        return self.replicates or self.plan.replicates

    def required_replicates(self, recipe: str) -> int:
        """CLAIMS.md: at least 3 seeds at paper scale (and for the published recipes at any scale)."""
        if self.scale == "paper" or get_recipe(recipe).source != "(ours)":
            return int(T.MIN_REPLICATES_PAPER.value)
        return int(T.MIN_REPLICATES.value)

    def last_level(self) -> int:
        return self.levels if self.levels is not None else self.plan.levels

    def branch_levels(self) -> tuple[int, ...]:
        last = self.last_level()
        return tuple(level for level in self.plan.branch_levels if level < last)

    @property
    def settings(self) -> suite.MeasureSettings:
        names = ("hessian_k", "density_probes", "hessian_examples")
        extra = {k: v for k in names if (v := getattr(self.plan, k)) is not None}
        return suite.MeasureSettings(path=PathSettings(points=self.plan.path_points), **extra)

    def experiment(self, recipe: str, rewind: int, seed: int) -> Experiment:
        """One handle per lineage and session, so its loaded dataset and lock are reused."""
        key = (recipe, rewind, seed)
        if key not in self._experiments:
            cfg = override(recipe_config(recipe, rewind_iteration=rewind, seed=seed, levels=self.last_level()),
                           self.overrides)
            self._experiments[key] = Experiment(cfg, store=Store(self.cache_dir), device=self.device,
                                                data_root=self.data_root, log=self.log,
                                                allow_training=not self.cache_only)
        return self._experiments[key]

    def premise_replicates(self) -> int:
        return max(self.n_replicates(), self.plan.premise_replicates)

    def premise(self, recipe: str) -> dict:
        """The scale's premise checked on `recipe` (cached per run): SGD-noise barriers at level 0."""
        if recipe not in self._premises:
            self._premises[recipe] = check_premise(self, recipe)
        return self._premises[recipe]

    def premise_gate(self, outcome: dict, tau_pp: float | None = None) -> V.Verdict | None:
        """INCONCLUSIVE "premise not met" when the scale's premise fails at `tau_pp` (default tau), else
        None: claim functions call it before deciding (`ctx.premise_gate(outcome, tau) or rule(tau)`), and
        it records the check in the outcome."""
        if not self.plan.premise:
            return None
        tau = float(T.BARRIER_TAU_PP.value) if tau_pp is None else float(tau_pp)
        check = self.premise(outcome["recipe"])
        if "premise" not in outcome:  # shown in the report with the run's other choices
            outcome.setdefault("choices", []).append(
                f"premise of the {self.scale} scale ({self.plan.premise}, at tau = "
                f"{float(T.BARRIER_TAU_PP.value):g} pp): {premise_summary(check)} (ours: {check['method']})")
        outcome["premise"] = check
        met = premise_met(check, tau)
        if met is True:
            return None
        why = "undetermined: an interval straddles tau" if met is None else "a barrier is on the wrong side of tau"
        return V.Verdict(V.INCONCLUSIVE, f"premise not met ({self.plan.premise}) at tau = {tau:g} pp: {why}; "
                                         f"{premise_summary(check)}")

    def lineages(self, recipe: str, rewind: int) -> list[Experiment]:
        """The replicates of one recipe and rewind, trained side by side where the cache lacks them."""
        exps = [self.experiment(recipe, rewind, seed) for seed in range(self.n_replicates())]
        if not self.cache_only:
            run_together(exps, self.last_level())
        return exps


# ------------------------------------------------------------------------------------- premise

def barrier_interval_pp(wrong_paths: np.ndarray, alphas, confidence: float = 0.95) -> dict:
    """Mean SGD-noise error barrier (pp) over replicates with its interval, from per-example errors
    along each replicate's path ((seeds, points, examples) bool).

    CLAIMS.md's rule for every comparison a verdict hinges on: the paired bootstrap over the test
    examples combined with the spread over seeds (`stats.path_barrier`: two-stage with 3 or more
    seeds). The premise gates every claim of a scale, so its interval is the hull of that bootstrap
    interval and the Student-t interval over the replicates' barriers: with the premise's 5 seeds a
    percentile bootstrap over seeds covers less than its nominal 95% (it cannot reach beyond the
    observed seeds), and the t interval is the conservative one there; with many seeds both agree.
    Bounds are None with fewer than two replicates (nothing about the seeds is resolved).
    """
    iv = stats.path_barrier(wrong_paths, alphas, confidence=confidence)
    t = V.mean_ci(list(iv.per_seed), confidence)
    both = t["lo"] is not None
    return {**iv.to_dict(), "lo": min(iv.lo, t["lo"]) if both else None, "hi": max(iv.hi, t["hi"]) if both else None,
            "bootstrap": [iv.lo, iv.hi], "student_t": [t["lo"], t["hi"]], "values": list(iv.per_seed),
            "resolution_pp": 100.0 / iv.n_examples, "method": PREMISE_METHOD}


PREMISE_METHOD = ("95% interval: the hull of the paired bootstrap over test examples and seeds (CLAIMS.md) and the "
                  "Student-t interval over the replicates (conservative with few seeds)")


def premise_row(ctx: ClaimContext, recipe: str, rewind: int) -> dict:
    """The SGD-noise barrier at level 0 from w_k (k = `rewind`) over the replicates, with its interval:
    each replicate's level-0 solution against a copy trained from the same w_k with another data order
    (LMC's instability test; the same branches and per-example path the perturbation claim uses)."""
    s = ctx.settings
    exps = [ctx.experiment(recipe, rewind, seed) for seed in range(ctx.premise_replicates())]
    if not ctx.cache_only:
        run_together(exps, 0)
        for e in exps:
            train_together(e, [suite.sgd_noise_spec(e, 0, s)])
    paths = stack([suite.branch_path_correct(e, suite.sgd_noise_spec(e, 0, s), s)["test"] for e in exps])
    return {"rewind": rewind, "level": 0, "barrier_pp": barrier_interval_pp(wrong(paths), s.path.alphas)}


def check_premise(ctx: ClaimContext, recipe: str) -> dict:
    """The scale's premise on `recipe`: SGD-noise barriers at level 0 for rewind 0 and the late rewind."""
    late = ctx.late_rewind(recipe)
    return {"premise": ctx.plan.premise, "unstable_rewind": 0, "stable_rewind": late, "method": PREMISE_METHOD,
            "barriers": {str(k): premise_row(ctx, recipe, k) for k in sorted({0, late})}}


def premise_met(check: dict, tau_pp: float) -> bool | None:
    """True when the k = 0 interval lies above tau and the late rewind's below it, False when either
    mean is on the wrong side, None (undetermined) otherwise."""
    unstable = check["barriers"][str(check["unstable_rewind"])]["barrier_pp"]
    stable = check["barriers"][str(check["stable_rewind"])]["barrier_pp"]
    if unstable["mean"] <= tau_pp or stable["mean"] >= tau_pp:
        return False
    if unstable["lo"] is None or stable["hi"] is None:
        return None
    return True if unstable["lo"] > tau_pp and stable["hi"] < tau_pp else None


def premise_summary(check: dict) -> str:
    def fmt(row: dict) -> str:
        b = row["barrier_pp"]
        ci = "" if b["lo"] is None else f" [{b['lo']:.2f}, {b['hi']:.2f}]"
        return f"k = {row['rewind']}: {b['mean']:.2f} pp{ci}"

    return "SGD-noise barrier " + ", ".join(fmt(r) for r in check["barriers"].values())



def base_outcome(claim, recipe: str, ctx: ClaimContext) -> dict:
    """The outcome record of one (claim, recipe) before it is decided: what it is, the run's settings,
    its thresholds with their sources and every choice the verdict rests on."""
    r = get_recipe(recipe)
    return {"claim": claim.id, "title": claim.title, "recipe": recipe, "recipe_source": r.source,
            "scale": ctx.scale, "replicates": ctx.n_replicates(), "rewinds": list(ctx.rewinds_for(recipe)),
            "thresholds": claim.threshold_table(),
            "required_replicates": ctx.required_replicates(recipe),
            "choices": ["batch norm along paths (models that have it): re-estimated on a fixed training subset (ours)",
                        "dense reference: level 0 of each rewind's own lineage (trained from w_k with a fresh "
                        "optimiser), averaged over replicates",
                        f"path grid: {ctx.plan.path_points} points",
                        "error barrier and LMC instability both on the test split and a fixed training subset"]
            + [f"setting overridden for this run: {o}" for o in ctx.overrides] + list(claim.choices(ctx))}


def finish(outcome: dict, verdict: V.Verdict, sweep: dict[str, str] | None, started: float,
           experiments: list[Experiment]) -> dict:
    outcome.update(verdict=verdict.verdict, summary=verdict.summary, effect=verdict.effect,
                   tau_sensitivity=sweep or {}, wall_time_s=round(time.perf_counter() - started, 2),
                   config_hashes=sorted({e.key for e in experiments}))
    return outcome


def decided(outcome: dict, ev: dict, started: float, exps: list[Experiment], ctx: ClaimContext) -> dict:
    """Decide from the evidence alone, then let the scale's premise gate the verdict: where the premise
    fails (or is undetermined) at a tau, the claim is INCONCLUSIVE "premise not met" at that tau."""
    from .claim import decide

    verdict, sweep, measured = decide(ev)
    gate = ctx.premise_gate(outcome)
    if gate is not None:
        verdict = V.Verdict(gate.verdict, f"{gate.summary}; measured: {verdict.summary}", verdict.effect)
    if sweep:
        sweep = {tau: V.INCONCLUSIVE if ctx.premise_gate(outcome, float(tau)) else v for tau, v in sweep.items()}
    outcome["measured"] = measured
    outcome["evidence"] = encode(ev)  # packed bits; kept out of results.json, written to evidence.json.gz
    return finish(outcome, verdict, sweep, started, exps)


# ---------------------------------------------------------------------- per-example correctness

def pp(x: float) -> float:
    return 100.0 * x


def dense_eps(exps: list[Experiment]) -> tuple[float, float, float | None]:
    """(mean dense error pp, eps pp, std pp) of level 0 over replicates."""
    errs = [pp(e.result(0).test_error) for e in exps]
    eps, std = V.matching_eps_pp(errs)
    return float(np.mean(errs)), eps, std


def stack(arrays: list[np.ndarray]) -> np.ndarray:
    return np.stack([np.asarray(a, dtype=bool) for a in arrays])


def wrong(correct: np.ndarray) -> np.ndarray:
    return ~np.asarray(correct, dtype=bool)


def errors_pp(correct: np.ndarray) -> list[float]:
    """Per-seed error in pp of (seeds, examples) correctness."""
    return [float(x) for x in 100.0 * wrong(correct).mean(axis=-1)]


def eps_of(dense: np.ndarray) -> tuple[float, float, float | None]:
    """(mean dense error pp, eps pp, std pp) from the dense networks' correctness (seeds, examples)."""
    errs = errors_pp(dense)
    eps, std = V.matching_eps_pp(errs)
    return float(np.mean(errs)), eps, std


def curve_stats(path: np.ndarray, alphas) -> dict:
    """Descriptive per-seed barrier and LMC instability (pp) of (seeds, points, examples) correctness."""
    curves = 100.0 * wrong(path).mean(axis=-1)  # (seeds, points)
    bars = [barrier(c, alphas) for c in curves]
    inst = [instability(c) for c in curves]
    return {"barrier": bars, "instability": inst}
