"""Claim 4: retraining exists to create new small weights, so that IMP's next projection stays short.

Evidence: per replicate of the late rewind, weight statistics of every level (relative projection
length, threshold, refill below it, the share of new small weights, |w| histograms), the chain of
successive 20% cuts of the level-1 solution without retraining, and the per-example test correctness of
the chain's end and of IMP's projection at the same density. Rule: at equal density the chain's
projected error exceeds IMP's by more than the margin, and its log projection length grows faster.
Report: both tables beside the authors' chain, |w| histograms and projection length and error vs density.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

from .. import evidence as E
from .. import rates as RATES
from .. import stats as S
from .. import thresholds as T
from .. import verdicts as V
from ..claim import Claim, FigureSpec, NotDecidable, register
from ..evidence import ClaimContext
from ..imp import Experiment
from ..measure import suite
from ..plotting import COLORS, density_axis, new_figure
from ..report import tables as RT
from ..report.tables import Column, Table, fmt, fmt_err, fmt_pct
from ..stats import Interval
from ..verdicts import FAIL, INCONCLUSIVE, PASS, Verdict, _power
from . import _reference as REF

# ---------------------------------------------------------------------------------------- the rule

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


def rule(excess: Interval, chain_lengths: Sequence[Sequence[float]],
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


# ------------------------------------------------------------------------------------ the evidence

def _log_slope(values: list[float]) -> float:
    """Least-squares slope of log(value) per step."""
    v = np.log(np.asarray(values, dtype=float))
    return float(np.polyfit(np.arange(v.size), v, 1)[0])


def measure(ctx: ClaimContext, recipe: str) -> tuple[dict, list[Experiment]]:
    """Weight statistics of every level, the no-retraining chain from level 1, and the correctness of the
    chain's end and of IMP's projection at the same density, per replicate of the late rewind."""
    steps = int(T.CHAIN_STEPS.value)
    start_level = 1
    exps = ctx.lineages(recipe, ctx.late_rewind(recipe))
    if ctx.last_level() < start_level + steps + 1:
        # IMP must reach the chain's final sparsity, or the two are compared at unequal sparsity
        raise NotDecidable(f"needs at least {start_level + steps + 1} levels to compare with a {steps}-step chain; "
                           f"run with --levels {start_level + steps + 1} or more", exps)
    last = start_level + steps - 1  # P(w_last) has the chain's final density
    per_level, chain_rows = [], []
    for e in exps:
        e.run()
        per_level.append([{k: v for k, v in suite.weight_statistics(e, level).items()}
                          for level in range(0, ctx.last_level() - 1)])
        chain_rows.append(suite.no_retraining(e, start_level, steps))
    ev = {"claim": "4", "replicates": ctx.n_replicates(), "required": ctx.required_replicates(recipe),
          "rewind": ctx.late_rewind(recipe), "start_level": start_level, "steps": steps,
          "imp_stats": per_level, "chain_rows": chain_rows,
          "chain": E.stack([suite.chain_correct(e, start_level, steps)["test"] for e in exps]),
          "imp_projected": E.stack([suite.projected_correct(e, last)["test"] for e in exps])}
    return ev, exps


def decide(ev: dict) -> tuple[V.Verdict, None, dict]:
    start, steps = ev["start_level"], ev["steps"]
    excess = S.difference(E.wrong(ev["chain"]), E.wrong(ev["imp_projected"]))
    chain_lengths = [[r["relative_projection_length"] for r in chain] for chain in ev["chain_rows"]]
    imp_lengths = [[s["relative_projection_length"] for s in st if start <= s["level"] < start + steps]
                   for st in ev["imp_stats"]]
    chain_slopes, imp_slopes = [_log_slope(x) for x in chain_lengths], [_log_slope(x) for x in imp_lengths]
    verdict = V.with_replicates(rule(excess, chain_lengths, imp_lengths), ev["replicates"], ev["required"])
    strip = [[{k: v for k, v in s.items() if k != "histogram_abs_w"} for s in st] for st in ev["imp_stats"]]
    measured = {
        "rewind": ev["rewind"], "start_level": start, "steps": steps,
        "chain_minus_imp_projected_error_pp": excess.to_dict(),
        "imp": strip[0], "imp_replicates": strip,
        "histograms": {s["level"]: s["histogram_abs_w"] for s in ev["imp_stats"][0]},
        "chain": ev["chain_rows"][0], "chain_replicates": ev["chain_rows"],
        "per_replicate": [{"chain_log_length_slope": c, "imp_log_length_slope": i, "chain_minus_imp_error_pp": x}
                          for c, i, x in zip(chain_slopes, imp_slopes, excess.per_seed)]}
    return verdict, None, measured


# -------------------------------------------------------------------------------------- the report

def tables(doc: dict, o: dict, m: dict) -> list[Table]:
    out: list[Table] = []
    scalars = [[k, fmt(v)] for k, v in m.items() if RT.is_scalar(v)]
    if scalars:
        out.append(Table(["quantity", "value"], scalars))
    imp_cols: list[Column] = [
        ("level L", RT.get("level")), ("alive L", RT.get("density", fmt_pct)),
        ("‖w_L − P(w_L)‖ / ‖w_L‖", RT.get("relative_projection_length")), ("threshold t_L", RT.get("threshold")),
        ("error w_L (%)", RT.get("solution_test_error", fmt_err)),
        ("error P(w_L) (%)", RT.get("projected_test_error", fmt_err)),
        ("refill below t_L", RT.get("refill_fraction_below_threshold")),
        ("new small-weight share", RT.get("new_small_weight_share"))]
    if RT.rows(o, "imp"):
        out.append(RT.table(RT.rows(o, "imp"), imp_cols, title="With retraining (IMP, first replicate)"))
    chain_cols: list[Column] = [
        ("step", RT.get("step")), ("alive", RT.get("density", fmt_pct)),
        ("relative projection length", RT.get("relative_projection_length")),
        ("error projected (%)", RT.get("projected_test_error", fmt_err)),
        ("train error projected (%)", RT.get("projected_train_error", fmt_err))]
    header = REF.label(o.get("recipe"))
    if header is not None:  # the authors' chain beside ours at the same alive fraction
        chain_cols.append((f"error projected (%), {header}",
                           lambda r: fmt(REF.chain_error_pp(RT.num(r.get("density"))))))
    if RT.rows(o, "chain"):
        note = ""
        if header is not None:
            note = (f"{header.capitalize()}: {REF.AUTHORS_CHAIN} went "
                    + " → ".join(f"{a:g}%" for a in REF.CHAIN_ACCURACY_PCT)
                    + " test accuracy after each 20% cut of the 80% solution, read as at "
                    + ", ".join(f"{100 * REF.CHAIN_START_DENSITY ** (i + 2):.2g}%"
                                for i in range(len(REF.CHAIN_ACCURACY_PCT)))
                    + " alive (the source does not say whether its first point is before the first cut).")
        out.append(RT.table(RT.rows(o, "chain"), chain_cols, title="Without retraining (chain, first replicate)",
                            note=note))
    if RT.rows(o, "per_replicate"):
        out.append(RT.generic_table(RT.rows(o, "per_replicate"), title="Verdict inputs per replicate"))
    return out


def fig_small_weights(doc: dict, o: dict):
    m = o.get("measured") or {}
    hists = m.get("histograms") if isinstance(m.get("histograms"), dict) else {}
    good = {}
    for key, h in hists.items():
        lvl = RT.float_or_none(key)
        if isinstance(h, dict) and isinstance(h.get("edges"), list) and len(h["edges"]) >= 2 and lvl is not None:
            good[int(lvl)] = h
    imp = [r for r in RT.rows(o, "imp") if RT.num(r.get("density"))]
    chain = [r for r in RT.rows(o, "chain") if RT.num(r.get("density"))]
    if not good and not imp and not chain:
        return None
    import numpy as np

    shown = sorted(good)
    if len(shown) > 4:
        shown = [shown[int(round(j))] for j in np.linspace(0, len(shown) - 1, 4)]
    fig = new_figure(13.0, 8.0 if shown and (imp or chain) else 4.6)
    rows_n = (1 if shown else 0) + (1 if imp or chain else 0)
    grid = fig.add_gridspec(rows_n, max(len(shown), 2) * 2)
    by_level = {r.get("level"): r for r in imp}
    width = max(len(shown), 2) * 2
    if shown:
        span = width // len(shown)
        for j, level in enumerate(shown):
            ax = fig.add_subplot(grid[0, j * span:(j + 1) * span])
            h = good[level]
            edges = np.asarray([e if RT.num(e) is not None else 0.0 for e in h["edges"]], float)
            for key, color, label in (("projected", COLORS[0], "P(w_L): projection survivors"),
                                      ("retrained", COLORS[3], "w_{L+1}: after retraining")):
                counts = h.get(key)
                if isinstance(counts, list) and len(counts) == len(edges) - 1:
                    ax.stairs([c or 0 for c in counts], edges, color=color, lw=1.4, label=label,
                              fill=key == "projected", alpha=0.35 if key == "projected" else 1.0)
            t = RT.num((by_level.get(level) or {}).get("threshold"))
            if t is not None:
                ax.axvline(t, color="black", ls="--", lw=1, label="threshold t_L")
            d = RT.num((by_level.get(level) or {}).get("density"))
            ax.set_title(f"level {level} → {level + 1}" + (f" ({fmt_pct(d)} alive at L)" if d else ""), fontsize=9)
            ax.set_xlabel("|w|")
            if j == 0:
                ax.set_ylabel("number of weights")
                ax.legend(fontsize=7, loc="best")
            ax.grid(True, alpha=0.3)
    if imp or chain:
        r = 1 if shown else 0
        half = width // 2
        ax_len = fig.add_subplot(grid[r, :half])
        ax_err = fig.add_subplot(grid[r, half:])
        ratio = (imp[1]["density"] / imp[0]["density"]) if len(imp) >= 2 else None

        def after(i: int, row: dict) -> float | None:  # IMP's projection lands on the next level's density
            if i + 1 < len(imp):
                return imp[i + 1]["density"]
            return row["density"] * ratio if ratio else None

        imp_x = [(after(i, row), row) for i, row in enumerate(imp)]
        imp_x = [(x, row) for x, row in imp_x if x]
        chain_x = [(row["density"], row) for row in chain]
        densities = [x for x, _ in imp_x + chain_x]
        for data, label, color, marker in ((imp_x, "with retraining (IMP)", COLORS[2], "o"),
                                           (chain_x, "without retraining (chain)", COLORS[1], "s")):
            pts = [(x, RT.num(row.get("relative_projection_length"))) for x, row in data]
            pts = [p for p in pts if p[1] is not None]
            if pts:
                ax_len.plot(*zip(*pts), marker=marker, color=color, label=label)
            pts = [(x, 100 * RT.num(row.get("projected_test_error"))) for x, row in data
                   if RT.num(row.get("projected_test_error")) is not None]
            if pts:
                ax_err.plot(*zip(*pts), marker=marker, color=color, label=f"projected, {label}")
        sol = [(x, 100 * RT.num(row.get("solution_test_error"))) for x, row in imp_x
               if RT.num(row.get("solution_test_error")) is not None]
        if sol:
            ax_err.plot(*zip(*sol), marker="o", ls=":", color=COLORS[2], mfc="white",
                        label="IMP solution w_L before its projection")
        for ax in (ax_len, ax_err):
            density_axis(ax, densities)
            ax.set_xlabel("alive fraction after the projection (log scale; sparser to the right)")
            ax.legend(fontsize=8)
        ax_len.set_ylabel("relative projection length ‖w − P(w)‖ / ‖w‖")
        ax_len.set_title("projection length per 20% cut", fontsize=10)
        ax_err.set_ylabel("test error (%)")
        ax_err.set_title("error of the projected network (before any retraining)", fontsize=10)
    fig.suptitle(f"Claim 4 ({o.get('recipe')}): retraining creates new small weights")
    return fig


# ------------------------------------------------------------------------------------- the claim

class SmallWeights(Claim):
    id = "4"
    title = "retraining exists to create new small weights"
    statement = ("without retraining, each further cut removes more of the weights' norm and raises the error faster "
                 "than with it (retraining creates new small weights)")
    thresholds = ("CHAIN_STEPS", "CHAIN_ERROR_MARGIN_PP", "CONFIDENCE", "MIN_REPLICATES")
    test_file = "test_claim4_small_weights.py"
    tabulated = frozenset({"imp", "chain", "per_replicate"})

    def choices(self, ctx: ClaimContext) -> list[str]:
        return [
            "new small weights: share of the weights IMP prunes at L+1 that re-pruning w_L would have kept (ours)",
            "no-retraining chain starts from the level-1 solution (80% density), as the authors' ResNet-20 chain",
            "projected errors keep the batch-norm statistics of the solution being pruned (no re-estimation)",
            "like with like: the chain after s cuts of w_1 vs IMP's projection P(w_s), both at density 0.8^(s+1), "
            "paired over test examples; slopes of log relative projection length per cut (ours)"]

    def headline(self, outcome: dict) -> str:
        """When the error rises as predicted but the projection lengths do not separate, say both halves."""
        e = outcome.get("effect") or {}
        excess, slope = e.get("excess_pp") or {}, e.get("slope_difference") or {}
        if not str(outcome.get("summary") or "").startswith("error as predicted") or "mean" not in excess:
            return super().headline(outcome)
        return self.said(outcome, (
            f"without retraining the error rises {excess['mean']:+.1f} pp "
            f"[{excess['lo']:+.1f}, {excess['hi']:+.1f}] beyond IMP's, as predicted, but the projection length "
            f"does not grow measurably faster than along IMP (log slope {slope.get('mean', float('nan')):+.3f} "
            f"[{slope.get('lo', float('nan')):+.3f}, {slope.get('hi', float('nan')):+.3f}] per cut)"))

    def plan(self, b, recipe: str) -> None:
        """Weight statistics of levels 0..last-2, the no-retraining chain from level 1, and the correctness
        of the chain's end and of IMP's projection at the same density."""
        ctx, tag = b.ctx, self.tag
        steps, start, last = int(T.CHAIN_STEPS.value), 1, ctx.last_level()
        if last < start + steps + 1:
            return
        for seed in range(ctx.n_replicates()):
            exp = ctx.experiment(recipe, ctx.late_rewind(recipe), seed)
            images = b.eval_images(exp)
            for level in range(last - 1):
                b.measure(exp, "weights", suite.weight_statistics, (level,), tag,
                          [b.level_id(exp, level), b.level_id(exp, level + 1)], f"weight statistics level {level}",
                          images=images)
            b.measure(exp, "chain", suite.no_retraining, (start, steps), tag, [b.level_id(exp, start)],
                      f"no-retraining chain from level {start}", images=steps * images)
            b.measure(exp, "correct", suite.chain_correct, (start, steps), tag, [b.level_id(exp, start)],
                      f"correctness of the chain's end from level {start}", images=images)
            end = start + steps - 1
            b.measure(exp, "correct", suite.projected_correct, (end,), tag,
                      [b.level_id(exp, end), b.level_id(exp, end + 1)], f"correctness of P(w_{end})", images=images)

    def evidence(self, ctx: ClaimContext, recipe: str, outcome: dict) -> tuple[dict, list[Experiment]]:
        return measure(ctx, recipe)

    def decide(self, ev: dict) -> tuple[Verdict, dict[str, str] | None, dict]:
        return decide(ev)

    def tables(self, doc: dict, outcome: dict, measured: dict) -> list:
        return tables(doc, outcome, measured)

    def figures(self, doc: dict, outcome: dict) -> list[FigureSpec]:
        return [FigureSpec("fig5_small_weights",
                           "Figure 5: |w| histograms before and after retraining; projection length and projected "
                           "error with and without retraining", lambda: fig_small_weights(doc, outcome), lead=True)]

    def synthetic(self) -> dict:
        return {"4": synthetic}


CLAIM = register(SmallWeights())


# ------------------------------------------------------------------ synthetic evidence (error rates)

def synthetic(model: str, size: str, rng: np.random.Generator) -> dict:
    cfg = RATES.SIZES[size]
    w = RATES.World(rng, cfg["examples"], cfg["seeds"])
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
