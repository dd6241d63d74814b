"""Claim 2: SGD from a late rewind point is robust to perturbations as large as r_L, the distance
between successive pruned rewind points.

Evidence: per rewind and branch level, the per-example test correctness of the level, of its SGD-noise
twin's path, of the real pair L -> L+1 and of a path to a perturbed twin for every c (an independent
Gaussian direction per c, replicate and level). Rule: at matching levels of the late rewind, barriers
stay <= tau for every c <= 1 (CLAIMS.md). Report: the per-case table and barrier vs c.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from .. import evidence as E
from .. import rates as RATES
from .. import stats as S
from .. import thresholds as T
from .. import verdicts as V
from ..claim import Claim, FigureSpec, register
from ..evidence import ClaimContext
from ..imp import Experiment
from ..measure import suite
from ..measure.branches import Branch, BranchSpec, train_together
from ..plotting import COLORS, errorbar, new_figure
from ..report import tables as RT
from ..report.tables import Column, fmt_ci, fmt_pct
from ..stats import Interval
from ..verdicts import FAIL, INCONCLUSIVE, PASS, Verdict, _power, replicates_note

# ---------------------------------------------------------------------------------------- the rule

@dataclass(frozen=True)
class PerturbationCase:
    """Claim 2 datum: barrier between the level-L solution and its perturbed twin (interval over seeds
    and test examples)."""

    level: int
    c: float
    barrier: Interval
    level_matching: bool | None


def rule(cases: Sequence[PerturbationCase], sgd_noise: Sequence[Interval], tau_pp: float,
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


# ------------------------------------------------------------------------------------ the evidence

def perturbation_sizes(ctx: ClaimContext, recipe: str, rewind: int) -> tuple[float, ...]:
    """The c values claim 2 perturbs this rewind's lineages with (none where the scale perturbs only the late one)."""
    return tuple(T.PERTURBATION_SIZES.value) if ctx.perturbs(recipe, rewind) else ()


def branch_specs(ctx: ClaimContext, exp: Experiment) -> list[BranchSpec]:
    """The SGD-noise twins and perturbations claim 2 trains from one lineage (also read by `plan`)."""
    s = ctx.settings
    sizes = perturbation_sizes(ctx, exp.config.recipe, exp.config.rewind_iteration)
    return [spec for level in ctx.branch_levels() for spec in
            [suite.sgd_noise_spec(exp, level, s)] + [suite.perturb_spec(level, c, s) for c in sizes]]


def measure(ctx: ClaimContext, recipe: str) -> tuple[dict, list[Experiment]]:
    """Per rewind and branch level: the level's, the SGD-noise path's, the real pair's and every
    perturbation path's per-example correctness (an independent direction per c and replicate)."""
    s = ctx.settings
    out: dict = {"claim": "2", "replicates": ctx.n_replicates(), "required": ctx.required_replicates(recipe),
                 "alphas": s.path.alphas, "late_rewind": ctx.late_rewind(recipe), "rewinds": []}
    exps_all: list[Experiment] = []
    for rewind in ctx.rewinds_for(recipe):
        exps = ctx.lineages(recipe, rewind)
        exps_all += exps
        for e in exps:
            e.run()
        for e in exps:  # several branches at once where the cache lacks them (replica training)
            train_together(e, branch_specs(ctx, e))
        levels = []
        for level in ctx.branch_levels():
            perturb = {}
            for c in perturbation_sizes(ctx, recipe, rewind):
                specs = [suite.perturb_spec(level, c, s) for _ in exps]
                perturb[f"{c:g}"] = {"path": E.stack([suite.branch_path_correct(e, sp, s)["test"]
                                                     for e, sp in zip(exps, specs)]),
                                     "r_L": [Branch(e, sp).result().scale_r for e, sp in zip(exps, specs)]}
            levels.append({"level": level, "density": exps[0].result(level).density,
                           "correct": E.stack([suite.level_correct(e, level)["test"] for e in exps]),
                           "sgd_noise": E.stack([suite.branch_path_correct(e, suite.sgd_noise_spec(e, level, s),
                                                                          s)["test"] for e in exps]),
                           "real_pair": E.stack([suite.successive_path_correct(e, level, s)["test"] for e in exps]),
                           "perturb": perturb})
        out["rewinds"].append({"rewind": rewind, "dense": E.stack([suite.level_correct(e, 0)["test"] for e in exps]),
                               "levels": levels})
    return out, exps_all


def decide(ev: dict) -> tuple[V.Verdict, dict[str, str], dict]:
    alphas, late = ev["alphas"], ev["late_rewind"]
    rows, cases, noise, everything = [], [], [], []
    contrast: dict = {}
    tau0 = float(T.BARRIER_TAU_PP.value)
    arrays: dict[str, np.ndarray] = {}
    for i, rw in enumerate(ev["rewinds"]):
        arrays[f"{i}/dense"] = E.wrong(rw["dense"])
        for j, lv in enumerate(rw["levels"]):
            arrays[f"{i}/{j}"] = E.wrong(lv["correct"])
            for kind in ("sgd_noise", "real_pair"):
                arrays[f"{i}/{j}/{kind}"] = E.wrong(lv[kind])
            for c, x in lv["perturb"].items():
                arrays[f"{i}/{j}/perturb/{c}"] = E.wrong(x["path"])
    test = S.Paired(arrays)
    for i, rw in enumerate(ev["rewinds"]):
        dense, eps, _ = E.eps_of(rw["dense"])
        for j, lv in enumerate(rw["levels"]):
            excess = test.difference(f"{i}/{j}", f"{i}/dense")
            matching = excess.below(eps)
            base = {"rewind": rw["rewind"], "level": lv["level"], "density": lv["density"],
                    "level_matching": matching, "level_excess_pp": excess.to_dict(),
                    "level_error_pp": V.mean_ci(E.errors_pp(lv["correct"]))}
            entries = [("sgd_noise", 0.0, lv["sgd_noise"], None, f"{i}/{j}/sgd_noise"),
                       ("real_pair", 1.0, lv["real_pair"], None, f"{i}/{j}/real_pair")]
            entries += [("perturb", float(c), x["path"], x["r_L"], f"{i}/{j}/perturb/{c}")
                        for c, x in lv["perturb"].items()]
            for kind, c, path, r_l, name in entries:
                bar = test.barrier(name, alphas)
                everything.append(bar)
                row = {**base, "kind": kind, "c": c, "barrier_pp": bar.to_dict(),
                       "connected": bar.below(tau0),
                       "instability_test_pp": V.mean_ci(E.curve_stats(path, alphas)["instability"])}
                if r_l is not None:
                    row["r_L"] = V.mean_ci(r_l)
                rows.append(row)
                if rw["rewind"] == late and kind == "perturb":
                    cases.append(PerturbationCase(lv["level"], c, bar, matching))
                if rw["rewind"] == late and kind == "sgd_noise" and matching:
                    noise.append(bar)
                if kind == "sgd_noise" or (kind == "perturb" and c <= T.ROBUST_UP_TO_C.value + 1e-12):
                    key = "late" if rw["rewind"] == late else f"k={rw['rewind']}"
                    calls = contrast.setdefault(key, {"rewind": rw["rewind"], "established_barriers": 0,
                                                      "established_connected": 0, "undetermined": 0})
                    call = bar.below(tau0)
                    calls["established_connected" if call else "established_barriers" if call is False
                          else "undetermined"] += 1

    def at_tau(tau: float) -> V.Verdict:
        return rule(cases, noise, tau, ev["replicates"], all_barriers=everything, required=ev["required"])

    verdict = at_tau(tau0)
    verdict.effect["early_vs_late"] = contrast  # CLAIMS.md expects barriers at k = 0 (SGD noise, c <= 1) only
    return verdict, V.tau_sweep(at_tau), {"rows": rows, "late_rewind": late, "early_vs_late": contrast}


# -------------------------------------------------------------------------------------- the report

_KIND = {"sgd_noise": "SGD noise (control)", "real_pair": "real pair L → L+1", "perturb": "perturbed"}


def tables(doc: dict, o: dict, m: dict) -> list[RT.Table]:
    cols: list[Column] = [
        ("rewind k", RT.get("rewind")), ("level L", RT.get("level")), ("alive", RT.get("density", fmt_pct)),
        ("L matching", RT.get("level_matching", RT.call)), ("error L (%)", RT.get("level_error_pp", fmt_ci)),
        ("kind", lambda r: _KIND.get(r.get("kind"), str(r.get("kind", "–")))), ("c (× r_L)", RT.get("c")),
        ("barrier test (pp)", RT.get("barrier_pp", fmt_ci)), ("r_L", RT.get("r_L", fmt_ci))]
    late = m.get("late_rewind")
    lead = [f"Late rewind used for the verdict: k = {late}."] if late is not None else []
    contrast = m.get("early_vs_late")
    if isinstance(contrast, dict) and contrast:
        unperturbed = sorted({r.get("rewind") for r in RT.rows(o)}
                             - {r.get("rewind") for r in RT.rows(o) if r.get("kind") == "perturb"}, key=str)
        only_noise = (f" (k = {', '.join(map(str, unperturbed))}: SGD noise only, not perturbed at this scale)"
                      if unperturbed else "")
        lead.append("Early vs late rewind (SGD noise and c ≤ 1, at τ = 2 pp; CLAIMS.md expects barriers at "
                    f"k = 0 only){only_noise}: " + "; ".join(
                             f"k = {c.get('rewind')}: {c.get('established_barriers')} established barriers, "
                             f"{c.get('established_connected')} established connected, {c.get('undetermined')} "
                             "undetermined" for c in contrast.values() if isinstance(c, dict)) + ".")
    return [RT.table(RT.rows(o), cols, note=" ".join(lead))]


def fig_barrier_vs_c(doc: dict, o: dict):
    from matplotlib.lines import Line2D

    rows = [r for r in RT.rows(o) if RT.ci(r.get("barrier_pp")) and RT.num(r.get("c")) is not None]
    if not rows:
        return None
    m = o.get("measured") or {}
    rewinds = sorted({r.get("rewind") for r in rows if isinstance(r.get("rewind"), int)})
    late = m.get("late_rewind") if m.get("late_rewind") in rewinds else (max(rewinds) if rewinds else None)
    others = [k for k in rewinds if k != late]
    styles = {late: "-", **{k: s for k, s in zip(others, ("--", "-.", ":", (0, (5, 1, 1, 1))))}}
    levels = sorted({r.get("level") for r in rows if isinstance(r.get("level"), int)})
    if not levels:
        return None
    density = {r["level"]: RT.num(r.get("density")) for r in rows if isinstance(r.get("level"), int)}
    fig = new_figure(8.0, 5.8)
    ax = fig.add_subplot()
    for i, level in enumerate(levels):
        color = COLORS[i % len(COLORS)]
        for k in [late, *others]:
            sel = [r for r in rows if r.get("level") == level and r.get("rewind") == k]
            pert = sorted((r for r in sel if r.get("kind") == "perturb"), key=lambda r: r["c"])
            if pert:
                errorbar(ax, [r["c"] for r in pert], [RT.ci(r["barrier_pp"]) for r in pert], fmt="o",
                          ls=styles.get(k, "--"), color=color, ms=4)
            face = color if k == late else "white"
            for kind, marker in (("sgd_noise", "s"), ("real_pair", "*")):
                for r in sel:
                    if r.get("kind") == kind:
                        ax.scatter([r["c"]], [RT.ci(r["barrier_pp"])[0]], marker=marker, s=90 if marker == "*" else 45,
                                   facecolors=face, edgecolors=color, zorder=4, linewidths=1.2)
    tau = RT.threshold(doc, o)
    ax.axhline(tau, color="black", ls="--", lw=1.2)
    handles = [Line2D([], [], color=COLORS[i % len(COLORS)], marker="o", ms=4,
                      label=f"level {L}" + (f" ({fmt_pct(density.get(L))} alive)" if density.get(L) else ""))
               for i, L in enumerate(levels)]
    handles += [Line2D([], [], color="grey", ls=styles[late], label=f"perturbed, rewind k = {late} (late)")]
    perturbed = {r.get("rewind") for r in rows if r.get("kind") == "perturb"}
    handles += [Line2D([], [], color="grey", ls=styles[k], label=f"perturbed, rewind k = {k}") for k in others
                if k in perturbed]
    handles += [Line2D([], [], color="grey", marker="s", ls="", label="control: SGD noise only (c = 0)"),
                Line2D([], [], color="grey", marker="*", ms=10, ls="", label="control: real pair L → L+1 (c = 1)"),
                Line2D([], [], color="black", ls="--", label=f"τ = {tau:g} pp")]
    if others:
        handles.append(Line2D([], [], color="grey", marker="s", mfc="white", ls="",
                              label="open markers: rewind k = " + ", ".join(map(str, others))))
    # below the axes: inside, it hid the k = 0 SGD-noise control, the highest point at c = 0
    ax.legend(handles=handles, fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3)
    ax.set_xlabel("perturbation size c (units of r_L = ‖(m_L − m_{L+1}) ⊙ w_k‖)")
    ax.set_ylabel("error barrier to the unperturbed w_L (pp)")
    ax.set_title(f"Claim 2 ({o.get('recipe')}): barrier vs perturbation size")
    ax.grid(True, alpha=0.3)
    return fig


# ------------------------------------------------------------------------------------- the claim

class Perturbation(Claim):
    id = "2"
    title = "SGD is robust to perturbations as large as the distance between pruned rewind points"
    statement = ("training from a pruned rewind point is robust to perturbations as large as the distance between "
                 "successive IMP levels")
    thresholds = ("PERTURBATION_SIZES", "ROBUST_UP_TO_C", "ROBUST_SHARE", "BARRIER_TAU_PP", "TAU_SWEEP_PP",
                  "MATCHING_EPS_FLOOR_PP", "MIN_DETERMINED_PER_CLASS", "CONFIDENCE", "SIGNIFICANCE",
                  "MIN_REPLICATES")
    test_file = "test_claim2_perturbation.py"
    tabulated = frozenset({"rows", "late_rewind"})

    def choices(self, ctx: ClaimContext) -> list[str]:
        out = ["perturbation: Gaussian on the alive coordinates of m_L, norm c * r_L, an independent direction "
               "for every (c, replicate, level) (ours)"]
        if not ctx.plan.perturb_early_rewinds:
            out.append("perturbed: only the late rewind, which the rule reads; earlier rewinds get their SGD-noise "
                       "control only (ours: the cpu scale spends the time on a second branch level)")
        return out

    def plan(self, b, recipe: str) -> None:
        """SGD-noise twins and perturbations at the branch levels of every rewind, read as per-example
        correctness along their paths."""
        ctx = b.ctx
        for rewind in ctx.rewinds_for(recipe):
            for seed in range(ctx.n_replicates()):
                exp = ctx.experiment(recipe, rewind, seed)
                specs = branch_specs(ctx, exp)
                b.branches(exp, specs, self.tag, f"claim {self.id} branches")
                for spec in specs:
                    b.branch_path_correct(exp, spec, self.tag)

    def evidence(self, ctx: ClaimContext, recipe: str, outcome: dict) -> tuple[dict, list[Experiment]]:
        return measure(ctx, recipe)

    def decide(self, ev: dict) -> tuple[Verdict, dict[str, str] | None, dict]:
        return decide(ev)

    def tables(self, doc: dict, outcome: dict, measured: dict) -> list:
        return tables(doc, outcome, measured)

    def figures(self, doc: dict, outcome: dict) -> list[FigureSpec]:
        return [FigureSpec("fig3_barrier_vs_perturbation",
                           "Figure 3: barrier vs perturbation size c per level, with SGD-noise and real-pair controls",
                           lambda: fig_barrier_vs_c(doc, outcome), lead=True)]

    def headline(self, outcome: dict) -> str:
        """The sentence in counts of determined perturbations (the rule's wording is for the details)."""
        e, verdict = outcome.get("effect") or {}, outcome.get("verdict")
        det, kept = RT.num(e.get("determined")), RT.num(e.get("connected"))
        summary = str(outcome.get("summary") or "")
        if det is None or kept is None or summary.startswith(("underpowered", "premise", "diverged", "no ")):
            return super().headline(outcome)
        c_max, tau, need = float(T.ROBUST_UP_TO_C.value), e.get("tau_pp", 2), int(T.MIN_DETERMINED_PER_CLASS.value)
        found = (f"{kept:g} of {det:g} determined perturbations up to c = {c_max:g} leave a barrier below "
                 f"{tau:g} pp")
        if verdict == PASS:
            return self.said(outcome, found)
        if verdict == FAIL:
            return self.said(outcome, f"{found}, significantly fewer than the claim needs")
        short = f"; {need} determined cases needed" if det < need else ""
        return self.said(outcome, found + short)

    def synthetic(self) -> dict:
        return {"2": synthetic}


CLAIM = register(Perturbation())


# ------------------------------------------------------------------ synthetic evidence (error rates)

def synthetic(model: str, size: str, rng: np.random.Generator) -> dict:
    cfg = RATES.SIZES[size]
    w = RATES.World(rng, cfg["examples"], cfg["seeds"])
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

    return {"claim": "2", "replicates": cfg["seeds"], "required": 2, "alphas": RATES.ALPHAS, "late_rewind": 20,
            "rewinds": [rewind(0, early, early), rewind(20, bar, 0.0 if model != "noise" else tau)]}
