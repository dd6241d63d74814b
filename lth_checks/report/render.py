"""report.md and report.html of a run, rendered from its results.json through two Jinja2 templates
(lth_checks/report/templates/), and the figures they show.

The page leads with the answer: the verdict table with one plain-words sentence per claim
(`Claim.headline`), the regime line (the scale, and whether its premise was met) and the figure
that carries each verdict, small; then the verdict details, one section per outcome (tables and
figures from the claim's module, through the registry of lth_checks.claim), the method, every
threshold, and last the run's metadata (folded in HTML). Both templates render the same context of
plain data, built here; nothing in this package knows a particular claim.

Figures are drawn on `matplotlib.figure.Figure` objects directly (Agg canvas), so neither pyplot nor
the global backend is touched; one that fails is listed in the report instead of losing it.
Verdicts: PASS green, FAIL red, INCONCLUSIVE amber, always spelled out and never shown as a pass.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2

from . import tables as RT
from .results import FIGURES_DIR, INCONCLUSIVE, VERDICTS, ReportWarning, atomic_write, safe_name, summarize
from .tables import Figure, Table, fmt, fmt_wall

INTRO = ("Re-verification of the claims of \"Unmasking the Lottery Ticket Hypothesis\" (Paul et al., ICLR 2023) "
         "by iterative magnitude pruning experiments.")
VERDICT_NOTE = ("PASS: the prediction held. FAIL: it was contradicted. INCONCLUSIVE: the run could not discriminate "
                "(too few replicates, one class absent, a divergence, a saturated grid); INCONCLUSIVE is not a pass.")
META_FIELDS = (("scale", "scale"), ("started_at", "started (UTC)"), ("wall_time_s", "wall time"),
               ("device", "device"), ("cuda_device_name", "CUDA device"), ("lth_checks_version", "lth-checks"),
               ("torch_version", "torch"), ("numpy_version", "numpy"), ("python_version", "Python"),
               ("platform", "platform"), ("git_commit", "git commit"), ("git_dirty", "uncommitted changes"),
               ("command", "command"))


def _claims() -> dict:
    """The registered claims by id (lth_checks.claim): each gives its sentence, tables and figures."""
    from ..claim import registry

    return registry()


# ---------------------------------------------------------------------------------------- figures

def _save(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fig.savefig(tmp, format="png", metadata={"Software": None})
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def make_figures(doc: dict, figdir: Path) -> tuple[dict[int, list[tuple[Figure, bool]]], list[str]]:
    """Draw every figure the data allow: {outcome index: [(Figure, lead)]} and the errors of failed ones."""
    outcomes = [o if isinstance(o, dict) else {} for o in doc.get("outcomes") or []]
    figures: dict[int, list[tuple[Figure, bool]]] = {}
    errors: list[str] = []
    used: set[str] = set()

    def name_for(stem: str, recipe: str) -> str:
        base = f"{stem}_{safe_name(recipe)}"
        name, n = base, 1
        while name in used:
            n += 1
            name = f"{base}-{n}"
        used.add(name)
        return f"{name}.png"

    def draw(stem: str, caption: str, recipe: str, owners: list[int], make: Callable[[], Any], lead: bool) -> None:
        try:
            fig = make()
        except Exception as e:  # noqa: BLE001 - one bad figure must not lose the report
            msg = f"{stem} ({recipe}): {type(e).__name__}: {e}"
            errors.append(msg)
            warnings.warn(f"figure not drawn: {msg}", ReportWarning, stacklevel=4)
            return
        if fig is None:
            return
        figdir.mkdir(parents=True, exist_ok=True)
        fname = name_for(stem, recipe)
        _save(fig, figdir / fname)
        for i in owners:
            figures.setdefault(i, []).append((Figure(f"{FIGURES_DIR}/{fname}", f"{caption} ({recipe})"), lead))

    claims = _claims()
    for i, o in enumerate(outcomes):
        spec = claims.get(str(o.get("claim")))
        if spec is not None and isinstance(o.get("measured"), dict):
            for f in spec.figures(doc, o):
                draw(f.stem, f.caption, str(o.get("recipe", "?")), [i], f.draw, f.lead)
    for spec in claims.values():  # figures drawn from several outcomes (claim parts shown together)
        for f, recipe, owners in spec.shared_figures(doc, outcomes):
            draw(f.stem, f.caption, recipe, owners, f.draw, f.lead)
    return figures, errors


# ---------------------------------------------------------------------------------------- context

def _anchor(i: int, o: dict) -> str:
    return f"outcome-{i}-claim-{safe_name(o.get('claim', '?'))}-{safe_name(o.get('recipe', '?'))}"


def _recipe_label(o: dict) -> str:
    src = o.get("recipe_source")
    return f"{o.get('recipe', '?')} {src}" if src else str(o.get("recipe", "?"))


def _tau_sweep(o: dict) -> list[tuple[str, str]]:
    """[(tau in pp, verdict)] of the outcome's tau sweep, by increasing tau."""
    sweep = o.get("tau_sensitivity") or {}
    if not isinstance(sweep, dict):
        return []
    return [(k, str(sweep[k])) for k in sorted(sweep, key=lambda k: (RT.num(RT.float_or_none(k)) or 0.0, k))]


def _resolution(o: dict) -> str:
    """'0.28 pp (360 examples); eps: 1.8 ex, median distance 2.1 ex, ...' from the verdict's effect."""
    e = o.get("effect") or {}
    res = RT.num(e.get("resolution_pp"))
    if res is None:
        return "–"
    parts = [f"{res:.3g} pp ({e.get('examples', '?')} examples)"]
    for name, d in (e.get("distance_to_thresholds") or {}).items():
        if isinstance(d, dict):
            parts.append(f"{name}: {fmt(RT.num(d.get('threshold_examples')), 3)} ex, median distance "
                         f"{fmt(RT.num(d.get('median_distance_examples')), 3)} ex, typical ± "
                         f"{fmt(RT.num(d.get('typical_half_width_pp')), 3)} pp")
    return "; ".join(parts)


def _headline(o: dict) -> str:
    from ..claim import headline

    spec = _claims().get(str(o.get("claim")))
    try:
        return spec.headline(o) if spec is not None else headline(str(o.get("title") or "claim"), o)
    except Exception as e:  # noqa: BLE001 - a claim's sentence must not lose the report
        warnings.warn(f"no sentence for claim {o.get('claim')}: {type(e).__name__}: {e}", ReportWarning, stacklevel=3)
        return headline(str(o.get("title") or "claim"), o)


def _regime(doc: dict, outcomes: list[dict]) -> list[str]:
    """Sentences of the regime line: the scale and its recipes, what the scale can test, and per recipe
    whether the scale's premise (the paper's regime) was met in this run."""
    from ..evidence import premise_met, premise_summary

    meta = doc.get("meta") or {}
    plan = (meta.get("options") or {}).get("plan") or {}
    recipes = list(dict.fromkeys(_recipe_label(o) for o in outcomes))
    out = [f"Scale {meta.get('scale') or '?'}" + (f", recipe {', '.join(recipes)}" if recipes else "") + "."]
    line = meta.get("regime") or plan.get("regime") or ""
    premise = plan.get("premise") or ""
    if line and not (premise and line == f"premise: {premise}"):
        out.append(line[:1].upper() + line[1:] + ".")
    if not premise:
        return out
    tau = RT.threshold(doc, {}, "BARRIER_TAU_PP")
    checks = {}
    for o in outcomes:
        if isinstance(o.get("premise"), dict):
            checks.setdefault(str(o.get("recipe", "?")), o["premise"])
    if not checks:
        out.append(f"The paper's regime ({premise}) is this scale's premise; no outcome of this report carries a "
                   "record of its check.")
    sources = {str(o.get("recipe", "?")): str(o.get("recipe_source") or "") for o in outcomes}
    for recipe, check in checks.items():
        try:
            met, summary = premise_met(check, float(tau)), premise_summary(check)
        except (KeyError, TypeError, ValueError) as e:
            out.append(f"Premise on {recipe} ({premise}): its record is unreadable ({type(e).__name__}: {e}).")
            continue
        word = {True: "met", False: "NOT met", None: "undetermined (an interval straddles τ)"}[met]
        then = {True: "these verdicts are in the paper's regime", False: "the claims are INCONCLUSIVE here",
                None: "the claims are INCONCLUSIVE here"}[met]
        if met and "(ours)" in sources.get(recipe, ""):
            then += " on a reduced recipe of this project (ours), not the paper's recipe"
        out.append(f"Premise of the paper's regime ({premise}) on {recipe}: {word} at τ = {tau:g} pp "
                   f"({summary}), so {then}.")
    return out


def _outcome(doc: dict, i: int, o: dict, figures: list[Figure]) -> dict:
    claim = str(o.get("claim", "?"))
    info = [("recipe", _recipe_label(o), None), ("scale", fmt(o.get("scale")), None),
            ("replicates", fmt(o.get("replicates")), None), ("rewinds k", fmt(o.get("rewinds")), None),
            ("wall time", fmt_wall(o.get("wall_time_s")), None),
            ("τ sensitivity (1 / 2 / 3 pp)", "–", _tau_sweep(o) or None),
            ("config hashes", ", ".join(str(h)[:12] for h in o.get("config_hashes") or []) or "–", None)]
    effect = o.get("effect") or {}
    th = o.get("thresholds") or {}
    m = o.get("measured")
    tables: list[Table] = []
    also: list[str] = []
    if isinstance(m, dict) and m:
        spec = _claims().get(claim)
        tables = spec.tables(doc, o, m) if spec is not None else RT.measured_generic(m)
        shown = spec.tabulated if spec is not None else None
        if shown is not None:
            also = [k for k in m if k not in shown and not RT.is_scalar(m[k])]
    return {
        "anchor": _anchor(i, o), "claim": claim, "title": str(o.get("title", "")), "recipe": str(o.get("recipe", "?")),
        "verdict": str(o.get("verdict", "UNKNOWN")), "summary": str(o.get("summary", "")),
        "info": info, "ours": "(ours)" in str(o.get("recipe_source", "")),
        "effect": [(k, fmt(v)) for k, v in effect.items()] if isinstance(effect, dict) else [],
        "thresholds": _threshold_rows(th), "choices": [str(c) for c in o.get("choices") or []],
        "measured": isinstance(m, dict) and bool(m), "tables": tables, "also": also, "figures": figures}


def _threshold_rows(th: Any) -> list[list[str]]:
    if not isinstance(th, dict):
        return []
    return [[n, fmt(t.get("value")), str(t.get("unit", "")), str(t.get("source", "")), str(t.get("meaning", ""))]
            for n, t in th.items() if isinstance(t, dict)]


def _method() -> dict:
    """How verdicts are decided, with the measured error rates of every rule (lth_checks/verdict_rates.json)."""
    from ..stats import BOOTSTRAP_RESAMPLES

    text = (f"Every comparison a verdict hinges on (a level's error vs dense + ε, one-shot vs IMP, a path's barrier "
            f"vs τ, the chain vs IMP) gets a 95% interval from a paired bootstrap over the test examples "
            f"({BOOTSTRAP_RESAMPLES:,} resamples, the same resample for every network and every path point); with 3 "
            "or more replicates the seeds are resampled as well, with fewer the interval holds the test-set noise "
            "only. A call is determined when its interval lies on one side of its threshold, and verdicts rest on "
            "determined calls only. A verdict whose typical interval is wider than its threshold is INCONCLUSIVE "
            "('underpowered') with the number of test examples (or replicates) that would resolve it, scaled from "
            "the measured interval width. The per-example correctness behind every interval is in evidence.json.gz; "
            "`lth-checks report --from-evidence` re-decides a run from it.")
    path = Path(__file__).resolve().parents[1] / "verdict_rates.json"
    rates = None
    if path.exists():
        data = json.loads(path.read_text())

        def cell(r: dict, w: str) -> str:
            return f"{100 * r[w]['PASS']:.1f}% / {100 * r[w]['FAIL']:.1f}%"

        rates = Table(["claim", "sample size", "trials", "holds: PASS / FAIL", "false: PASS / FAIL",
                       "noise: PASS / FAIL"],
                      [[str(r["claim"]), str(r["size"]), str(r.get("trials", "")),
                        *[cell(r, w) for w in ("holds", "false", "noise")]] for r in data.get("rows", [])],
                      note=f"Measured error rates of each rule on synthetic data (trials per cell in the table; "
                           f"{data.get('description', '')}). Required: FAIL ≤ 5% where the claim holds, PASS ≤ 5% "
                           "where it is false, each ≤ 5% on pure noise.")
    return {"text": text, "rates": rates}


def context(doc: dict, run_id: str, figures: dict[int, list[tuple[Figure, bool]]], figure_errors: list[str]) -> dict:
    """Everything both templates show, as plain data."""
    meta = doc.get("meta") or {}
    outcomes = [o if isinstance(o, dict) else {} for o in doc.get("outcomes") or []]
    summary = doc.get("summary") or summarize(outcomes)
    order_of = {c: n for n, c in enumerate(_claims())}
    order = sorted(range(len(outcomes)), key=lambda i: (order_of.get(str(outcomes[i].get("claim")), len(order_of)),
                                                         str(outcomes[i].get("claim")),
                                                         str(outcomes[i].get("recipe")), i))
    verdicts = [{"claim": str(outcomes[i].get("claim", "?")), "anchor": _anchor(i, outcomes[i]),
                 "recipe": _recipe_label(outcomes[i]), "recipe_name": str(outcomes[i].get("recipe", "?")),
                 "verdict": str(outcomes[i].get("verdict", "UNKNOWN")),
                 "headline": _headline(outcomes[i]), "summary": str(outcomes[i].get("summary", "")),
                 "resolution": _resolution(outcomes[i]), "tau": _tau_sweep(outcomes[i]),
                 "wall": fmt_wall(outcomes[i].get("wall_time_s"))} for i in order]
    lead: dict[str, dict] = {}  # one figure per claim that carries its verdict, in claim order, each drawn once
    for i in order:
        for fig, is_lead in figures.get(i, []):
            if is_lead:
                entry = lead.setdefault(fig.path, {"figure": fig, "claims": []})
                if str(outcomes[i].get("claim")) not in entry["claims"]:
                    entry["claims"].append(str(outcomes[i].get("claim")))
    counts = [(v, summary.get(v, 0)) for v in (*VERDICTS, *[k for k in summary if k not in VERDICTS and k != "total"])]
    meta_rows = [[label, fmt_wall(meta.get(k)) if k == "wall_time_s" else fmt(meta.get(k))]
                 for k, label in META_FIELDS if k in meta]
    meta_rows += [[f"option {k}", json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v]
                  for k, v in (meta.get("options") or {}).items()]
    return {"title": f"lth-checks report: {run_id}", "run_id": run_id, "intro": INTRO, "verdict_note": VERDICT_NOTE,
            "counts": counts, "total": summary.get("total", len(outcomes)), "verdicts": verdicts,
            "regime": _regime(doc, outcomes), "lead": list(lead.values()), "figure_errors": figure_errors,
            "outcomes": [_outcome(doc, i, outcomes[i], [f for f, _ in figures.get(i, [])]) for i in order],
            "method": _method(), "thresholds": _threshold_rows(doc.get("thresholds") or {}), "meta": meta_rows,
            "INCONCLUSIVE": INCONCLUSIVE}


# ---------------------------------------------------------------------------------------- templates

MD_BADGE = {"PASS": "✅ **PASS**", "FAIL": "❌ **FAIL**", "INCONCLUSIVE": "⚠️ **INCONCLUSIVE**"}
CSS_CLASS = {"PASS": "v-pass", "FAIL": "v-fail", "INCONCLUSIVE": "v-inconclusive"}
BADGE_TITLE = {"PASS": "the prediction held", "FAIL": "the prediction was contradicted",
               "INCONCLUSIVE": "the run could not discriminate: NOT a pass"}


def _md_cell(x: Any) -> str:
    """Text that stays inside one Markdown table cell."""
    return str(x).replace("|", "\\|").replace("\n", " ")


@functools.cache
def _environment() -> jinja2.Environment:
    # Autoescape on for the HTML template (every value is text from results.json), off for Markdown.
    env = jinja2.Environment(loader=jinja2.PackageLoader("lth_checks.report", "templates"),
                             autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",),
                                                                 default_for_string=False),
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["cell"] = _md_cell
    env.globals.update(md_badge=lambda v: MD_BADGE.get(v, f"❔ **{v}**"),
                       css_class=lambda v: CSS_CLASS.get(v, "v-unknown"),
                       badge_title=lambda v: BADGE_TITLE.get(v, "unknown verdict"))
    return env


def _data_uri(run_dir: Path, path: str) -> str:
    return "data:image/png;base64," + base64.b64encode((run_dir / path).read_bytes()).decode("ascii")


def render(run_dir: Path, doc: dict) -> None:
    """Draw the figures and write report.md and report.html of `doc` into `run_dir`."""
    figures, errors = make_figures(doc, run_dir / FIGURES_DIR)
    ctx = context(doc, run_dir.name, figures, errors)
    env = _environment()
    md = env.get_template("report.md.j2").render(ctx)
    while "\n\n\n" in md:  # blocks are separated by one blank line, whatever the template's conditionals left
        md = md.replace("\n\n\n", "\n\n")
    atomic_write(run_dir / "report.md", (md.strip() + "\n").encode("utf-8"))
    html = env.get_template("report.html.j2").render(ctx, data_uri=lambda p: _data_uri(run_dir, p))
    atomic_write(run_dir / "report.html", html.encode("utf-8"))
