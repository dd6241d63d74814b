"""Claim 1: at higher sparsities, successive IMP levels are linearly connected iff the next level is matching.

Evidence: per rewind, the per-example test correctness of the dense networks, of every level and of
every successive path w_L -> w_{L+1} (and the path's training-subset curve). Rule: matching(L+1)
agrees with (barrier <= tau) in >= 90% of the determined high-sparsity pairs (CLAIMS.md). Report:
the per-pair table, the reference values of the paper's setting, error and barrier vs sparsity.
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
from ..plotting import COLORS, by, density_axis, errorbar, new_figure
from ..report import tables as RT
from ..report.tables import Column, Table, fmt, fmt_ci, fmt_pct
from ..stats import Interval
from ..verdicts import INCONCLUSIVE, Verdict, _power, replicates_note
from . import _reference as REF

FAIL, PASS = V.FAIL, V.PASS


# ---------------------------------------------------------------------------------------- the rule

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


def rule(pairs: Sequence[LevelPair], tau_pp: float, replicates: int, diverged: bool = False,
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


# ------------------------------------------------------------------------------------ the evidence

def measure(ctx: ClaimContext, recipe: str) -> tuple[dict, list[Experiment]]:
    """Per rewind: the dense networks' and every level's per-example correctness and every successive path's."""
    out: dict = {"claim": "1", "replicates": ctx.n_replicates(), "required": ctx.required_replicates(recipe),
                 "alphas": ctx.settings.path.alphas, "rewinds": []}
    exps_all: list[Experiment] = []
    for rewind in ctx.rewinds_for(recipe):
        exps = ctx.lineages(recipe, rewind)
        exps_all += exps
        for e in exps:
            e.run()
        levels = []
        for level in range(ctx.last_level()):
            paths = [suite.successive_path_correct(e, level, ctx.settings) for e in exps]
            levels.append({"level": level, "density": exps[0].result(level).density,
                           "next_density": exps[0].result(level + 1).density,
                           "next": E.stack([suite.level_correct(e, level + 1)["test"] for e in exps]),
                           "path": E.stack([p["test"] for p in paths]),
                           "path_train": E.stack([p["train"] for p in paths])})
        out["rewinds"].append({"rewind": rewind,
                               "dense": E.stack([suite.level_correct(e, 0)["test"] for e in exps]),
                               "levels": levels})
    return out, exps_all


def decide(ev: dict) -> tuple[V.Verdict, dict[str, str], dict]:
    """Claim 1's verdict, tau sweep and table rows from its evidence alone."""
    rows, pairs = [], []
    alphas = ev["alphas"]
    test = S.Paired({**{f"{i}/dense": E.wrong(rw["dense"]) for i, rw in enumerate(ev["rewinds"])},
                         **{f"{i}/{j}/{k}": E.wrong(lv[k]) for i, rw in enumerate(ev["rewinds"])
                            for j, lv in enumerate(rw["levels"]) for k in ("next", "path")}})
    train = S.Paired({f"{i}/{j}": E.wrong(lv["path_train"]) for i, rw in enumerate(ev["rewinds"])
                          for j, lv in enumerate(rw["levels"])})
    for i, rw in enumerate(ev["rewinds"]):
        dense, eps, std = E.eps_of(rw["dense"])
        for j, lv in enumerate(rw["levels"]):
            excess = test.difference(f"{i}/{j}/next", f"{i}/dense")
            bar = test.barrier(f"{i}/{j}/path", alphas)
            bar_train = train.barrier(f"{i}/{j}", alphas)
            curves = E.curve_stats(lv["path"], alphas)
            pair = LevelPair(rw["rewind"], lv["level"], lv["next_density"], excess, eps, bar)
            pairs.append(pair)
            rows.append({"rewind": rw["rewind"], "level": lv["level"], "density": lv["density"],
                         "next_density": lv["next_density"], "dense_error_pp": dense, "eps_pp": eps,
                         "dense_std_pp": std, "next_error_pp": V.mean_ci(E.errors_pp(lv["next"])),
                         "excess_pp": excess.to_dict(), "matching": pair.matching,
                         "barrier_pp": bar.to_dict(), "barrier_train_pp": bar_train.to_dict(),
                         "connected": pair.connected(float(T.BARRIER_TAU_PP.value)),
                         "instability_test_pp": V.mean_ci(curves["instability"])})

    def at_tau(tau: float) -> V.Verdict:
        return rule(pairs, tau, ev["replicates"], required=ev["required"])

    return at_tau(float(T.BARRIER_TAU_PP.value)), V.tau_sweep(at_tau), {"rows": rows}


# -------------------------------------------------------------------------------------- the report

def tables(doc: dict, o: dict, m: dict) -> list[Table]:
    tau = RT.threshold(doc, o)
    floor = RT.threshold(doc, o, "HIGH_SPARSITY_DENSITY", None)

    def agrees(r: dict) -> str:
        b = RT.ci(r.get("barrier_pp"))
        if b is None or not isinstance(r.get("matching"), bool):
            return "–"
        lo, hi = b[1], b[2]
        if lo is not None and hi is not None:  # a paired-bootstrap interval: only determined calls agree or not
            connected = True if hi <= tau else False if lo > tau else None
            return "undetermined" if connected is None else fmt(r["matching"] == connected)
        return fmt(r["matching"] == (b[0] <= tau))

    def pooled(r: dict) -> str:
        d = RT.num(r.get("next_density"))
        return "–" if d is None or floor is None else fmt(d <= floor + 1e-12)

    def dense(r: dict) -> str:
        d, e = RT.num(r.get("dense_error_pp")), RT.num(r.get("eps_pp"))
        return "–" if d is None else (f"{d:.3g} + {e:.3g}" if e is not None else f"{d:.3g}")

    cols: list[Column] = [
        ("rewind k", RT.get("rewind")),
        ("L → L+1", lambda r: f"{r.get('level')} → {r['level'] + 1}" if isinstance(r.get("level"), int) else "–"),
        ("alive L", RT.get("density", fmt_pct)), ("alive L+1", RT.get("next_density", fmt_pct)),
        ("error L (%)", RT.get("error_pp", fmt_ci)), ("error L+1 (%)", RT.get("next_error_pp", fmt_ci)),
        ("dense + ε (%)", dense), ("E(L+1) − dense (pp)", RT.get("excess_pp", fmt_ci)),
        ("L+1 matching", RT.get("matching", RT.call)),
        ("barrier test (pp)", RT.get("barrier_pp", fmt_ci)), ("barrier train (pp)", RT.get("barrier_train_pp", fmt_ci)),
        (f"barrier ≤ τ={tau:g} agrees", agrees), ("in high-sparsity pool", pooled)]
    return [RT.table(RT.rows(o), cols, note="Errors in percent (mean over replicates, with a t-interval only from 3 "
                     "replicates); E(L+1) − dense and barriers in percentage points with 95% paired-bootstrap "
                     "intervals, which decide the calls: 'undetermined' where the interval straddles ε or τ."),
            *reference_blocks(o)]


def reference_blocks(o: dict) -> list[Table]:
    """Ours beside the reference values of the paper's setting (dense error, how sparse each rewind stays
    matching), for the recipes where they apply (`_reference.label`)."""
    header = REF.label(o.get("recipe"))
    rows = RT.rows(o)
    if header is None or not rows:
        return []
    out = []
    for k, rs in by(rows, "rewind").items():
        dense = next((RT.num(r.get("dense_error_pp")) for r in rs if RT.num(r.get("dense_error_pp")) is not None), None)
        out.append([f"dense test error (%), k = {k}", fmt(dense, 3), f"≈ {REF.DENSE_ERROR_PP:g}", REF.LMC])
        matching = [d for r in rs if r.get("matching") is True and (d := RT.num(r.get("next_density"))) is not None]
        ref = (f"≈ {100 * REF.MATCHING_DOWN_TO:g}%" if isinstance(k, int) and k >= REF.LATE_REWIND
               else "not matching at high sparsity" if k == 0 else "–")
        out.append([f"lowest alive fraction with L+1 established matching, k = {k}",
                    fmt_pct(min(matching)) if matching else "none", ref, REF.LMC])
    return [Table(["quantity", "ours", header, "source"], out, title="Reference values of the sources beside ours")]


def fig_error_vs_density(doc: dict, o: dict):
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    rows = [r for r in RT.rows(o) if isinstance(r.get("level"), int)]
    fig = new_figure()
    ax = fig.add_subplot()
    densities, plotted = [], False
    for i, (k, rs) in enumerate(by(rows, "rewind").items()):
        color = COLORS[i % len(COLORS)]
        pts: dict[int, tuple[float, tuple]] = {}
        for r in rs:
            d, c = RT.num(r.get("density")), RT.ci(r.get("error_pp"))
            if d and c:
                pts.setdefault(r["level"], (d, c))
            d, c = RT.num(r.get("next_density")), RT.ci(r.get("next_error_pp"))
            if d and c:
                pts.setdefault(r["level"] + 1, (d, c))
        if not pts:
            continue
        levels = sorted(pts)
        xs = [pts[L][0] for L in levels]
        errorbar(ax, xs, [pts[L][1] for L in levels], fmt="o-", color=color, ms=4, label=f"rewind k = {k}")
        densities += xs
        plotted = True
        base = next(((RT.num(r.get("dense_error_pp")), RT.num(r.get("eps_pp"))) for r in rs
                     if RT.num(r.get("dense_error_pp")) is not None), (None, None))
        if base[0] is not None:
            eps = base[1] or 0.0
            ax.axhspan(base[0], base[0] + eps, color=color, alpha=0.12, lw=0)
            ax.axhline(base[0] + eps, color=color, ls="--", lw=1)
    if not plotted:
        return None
    density_axis(ax, densities)
    floor = RT.threshold(doc, o, "HIGH_SPARSITY_DENSITY", None)
    handles, _ = ax.get_legend_handles_labels()
    handles += [Patch(color="grey", alpha=0.25, label="dense error to dense + ε (matching band)"),
                Line2D([], [], color="grey", ls="--", lw=1, label="dense + ε: matching at or below")]
    if floor is not None and min(densities) <= floor:
        ax.axvline(floor, color="black", ls=":", lw=1)
        handles.append(Line2D([], [], color="black", ls=":", lw=1, label=f"claim-1 pool: ≤ {100 * floor:.3g}% alive"))
    ax.legend(handles=handles, fontsize=8, loc="upper left")
    ax.set_ylabel("test error (%), mean with 95% interval")
    ax.set_title(f"Claim 1 ({o.get('recipe')}): IMP test error vs sparsity")
    return fig


def fig_barrier_vs_density(doc: dict, o: dict):
    from matplotlib.lines import Line2D

    rows = [r for r in RT.rows(o) if RT.num(r.get("next_density")) and RT.ci(r.get("barrier_pp"))]
    if not rows:
        return None
    tau = RT.threshold(doc, o)
    fig = new_figure()
    ax = fig.add_subplot()
    densities = []
    for i, (k, rs) in enumerate(by(rows, "rewind").items()):
        color = COLORS[i % len(COLORS)]
        rs = sorted(rs, key=lambda r: -r["next_density"])
        xs = [r["next_density"] for r in rs]
        densities += xs
        cis = [RT.ci(r["barrier_pp"]) for r in rs]
        errorbar(ax, xs, cis, fmt="-", color=color, label=f"rewind k = {k} (test)")
        for match, face in ((True, color), (False, "white")):
            sel = [(x, c[0]) for x, c, r in zip(xs, cis, rs) if r.get("matching") is match]
            if sel:
                ax.scatter(*zip(*sel), s=36, facecolors=face, edgecolors=color, zorder=3, linewidths=1.4)
        train = [(x, RT.ci(r.get("barrier_train_pp"))) for x, r in zip(xs, rs) if RT.ci(r.get("barrier_train_pp"))]
        if train:
            ax.plot([t[0] for t in train], [t[1][0] for t in train], ls=":", marker="x", ms=4, color=color, lw=1,
                    label=f"rewind k = {k} (training subset)")
    density_axis(ax, densities)
    ax.set_xlabel("alive fraction of level L+1 (log scale; sparser to the right)")
    ax.axhline(tau, color="black", ls="--", lw=1.2)
    handles, labels = ax.get_legend_handles_labels()
    handles = [h for h, lab in zip(handles, labels) if "(test)" in lab] + \
        [h for h, lab in zip(handles, labels) if "(test)" not in lab]
    handles += [Line2D([], [], color="black", ls="--", label=f"τ = {tau:g} pp (linearly connected below)"),
                Line2D([], [], color="grey", marker="o", ls="", label="level L+1 matching"),
                Line2D([], [], color="grey", marker="o", mfc="white", ls="", label="level L+1 not matching")]
    ax.legend(handles=handles, fontsize=8, loc="upper left")
    ax.set_ylabel("error barrier between w_L and w_{L+1} (pp)")
    ax.set_title(f"Claim 1 ({o.get('recipe')}): successive-level barrier vs sparsity")
    return fig


# ------------------------------------------------------------------------------------- the claim

class Connectivity(Claim):
    id = "1"
    title = "successive levels are linearly connected iff matching"
    statement = "successive IMP levels are linearly connected exactly when the next level is matching"
    thresholds = ("MATCHING_EPS_FLOOR_PP", "BARRIER_TAU_PP", "TAU_SWEEP_PP", "AGREEMENT_RATE",
                  "HIGH_SPARSITY_DENSITY", "MIN_DETERMINED_PER_CLASS", "CONFIDENCE", "SIGNIFICANCE",
                  "MIN_REPLICATES")
    test_file = "test_claim1_connectivity.py"
    tabulated = frozenset({"rows"})

    def plan(self, b, recipe: str) -> None:
        """Every lineage; per-example correctness of every level and of the successive path at every level
        (the protocol test of the same file reads the same lineages)."""
        ctx = b.ctx
        for rewind in ctx.rewinds_for(recipe):
            for seed in range(ctx.n_replicates()):
                exp = ctx.experiment(recipe, rewind, seed)
                b.lineage(exp, self.tag)
                for level in range(ctx.last_level() + 1):
                    b.level_correct(exp, level, self.tag)
                for level in range(ctx.last_level()):
                    b.successive_correct(exp, level, self.tag)

    def evidence(self, ctx: ClaimContext, recipe: str, outcome: dict) -> tuple[dict, list[Experiment]]:
        return measure(ctx, recipe)

    def decide(self, ev: dict) -> tuple[Verdict, dict[str, str] | None, dict]:
        return decide(ev)

    def tables(self, doc: dict, outcome: dict, measured: dict) -> list:
        return tables(doc, outcome, measured)

    def figures(self, doc: dict, outcome: dict) -> list[FigureSpec]:
        return [FigureSpec("fig1_error_vs_density",
                           "Figure 1: test error vs alive fraction per rewind, matching band and 95% intervals",
                           lambda: fig_error_vs_density(doc, outcome)),
                FigureSpec("fig2_barrier_vs_density",
                           "Figure 2: successive-level error barrier vs alive fraction, with τ",
                           lambda: fig_barrier_vs_density(doc, outcome), lead=True)]

    def headline(self, outcome: dict) -> str:
        """The default sentence, with the pair counts when a matching class is short of determined pairs
        (the 'only if' half cannot be tested without non-matching pairs)."""
        text = super().headline(outcome)
        e = outcome.get("effect") or {}
        table = e.get("table")
        summary = str(outcome.get("summary") or "")
        # both classes were large enough for the rule to test, and nothing overrode it (a premise not met
        # or a divergence keeps the effect but is the reason, said by the default sentence)
        if (isinstance(table, dict) and "agreement_below_rate_p" in e
                and not summary.startswith(("premise", "diverged", "underpowered", "a training run"))):
            verdict, tau = outcome.get("verdict"), e.get("tau_pp", 2)
            mc, mb = int(table.get("matching_connected", 0)), int(table.get("matching_barrier", 0))
            nc, nb = int(table.get("non_matching_connected", 0)), int(table.get("non_matching_barrier", 0))
            found = (f"{nb} of {nb + nc} determined non-matching pairs show a barrier above {tau:g} pp and "
                     f"{mc} of {mc + mb} matching pairs are connected (agreement {e.get('agreement', 0):.0%}")
            rate, fisher = float(T.AGREEMENT_RATE.value), e.get("fisher_p_one_sided", float("nan"))
            if verdict == PASS:
                why = f"{found})"
            elif verdict == FAIL:
                why = f"{found}, significantly below {rate:.0%})"
            elif e.get("agreement", 0) >= rate:
                why = f"{found}, but no significant association: Fisher p = {fisher:.2f})"
            else:
                why = f"{found}, not significantly below {rate:.0%}: p = {e['agreement_below_rate_p']:.2f})"
            return self.said(outcome, why)
        need = RT.threshold({}, outcome, "MIN_DETERMINED_PER_CLASS", float(T.MIN_DETERMINED_PER_CLASS.value))
        n_match, n_non = RT.num(e.get("matching_pairs")), RT.num(e.get("non_matching_pairs"))
        if (outcome.get("verdict") != INCONCLUSIVE or n_match is None or n_non is None or need is None
                or min(n_match, n_non) >= need):
            return text
        short = [f"{n:g} {kind} pairs ({need:g} needed)" for n, kind in ((n_match, "matching"),
                                                                         (n_non, "non-matching")) if n < need]
        return f"{text}; too few determined level pairs: {', '.join(short)}"

    def synthetic(self) -> dict:
        return {"1": synthetic}


CLAIM = register(Connectivity())


# ------------------------------------------------------------------ synthetic evidence (error rates)

def synthetic(model: str, size: str, rng: np.random.Generator) -> dict:
    cfg = RATES.SIZES[size]
    w = RATES.World(rng, cfg["examples"], cfg["seeds"])
    tau, eps = float(T.BARRIER_TAU_PP.value), float(T.MATCHING_EPS_FLOOR_PP.value)
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
    return {"claim": "1", "replicates": cfg["seeds"], "required": 2, "alphas": RATES.ALPHAS,
            "rewinds": [{"rewind": 0, "dense": dense, "levels": levels}]}
