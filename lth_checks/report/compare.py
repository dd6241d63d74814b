"""What changed between two claims runs: `lth-checks report --compare RUN_A RUN_B`.

For every (claim, recipe) it puts side by side the verdict of each run (and its tau sweep), the
numbers the verdict hinges on with their 95% intervals, and the run settings that differ (torch,
device, scale, replicates, levels, git commit, ...), so a reader sees whether a new torch version, a
new GPU or more replicates moved anything. Everything is read from the two runs' results.json:

- headline numbers: every interval ({mean, lo, hi}) and every scalar in the outcome's `effect`
  (what the verdict rule reported it decided on: effect sizes, counts of determined calls, p-values);
- row numbers: every interval in `measured.rows` (per rewind, level, seed, perturbation), compared
  only where both runs hold the same row (same rewind, level, ...);
- the premise barriers (SGD-noise barrier at level 0 per rewind), where the scale has a premise.

`compare(doc_a, doc_b)` builds a JSON-able dict, `render_text` / `render_markdown` turn it into
the terminal table and compare.md, and `write_comparison` writes compare.md and compare.json to
`<report-dir>/compare-<A>-vs-<B>/`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from scipy import stats

from ..errors import LthError
from .results import RESULTS_FILE, resolve_run_dir, validate_results

FORMAT = "lth-checks-compare/1"
ROW_KEYS = ("rewind", "level", "seed", "kind", "c", "step")  # what identifies a row of measured.rows
# Run settings listed first when they differ (then every other differing metadata key, sorted); the
# first few are also named as "unchanged" when equal, because that is what a reader asks first.
META_FIRST = ("torch_version", "device", "cuda_device_name", "scale", "options.replicates", "options.levels",
              "options.rewinds", "options.recipes", "options.overrides", "git_commit", "git_dirty",
              "lth_checks_version", "python_version", "numpy_version", "platform")
# Different in every run, or repeating another key (options.plan.* repeats options.*, regime is meta.regime).
META_SKIP = {"started_at", "command", "options.cache_dir", "options.scale", "options.plan.recipes",
             "options.plan.replicates", "options.plan.levels", "options.plan.regime"}
CONFIDENCE = 0.95
WITHIN, OUTSIDE, NO_INTERVAL = "within", "outside", "no interval"


class CompareError(LthError):
    """Two runs that cannot be compared (a missing run, an unreadable results.json, different claims)."""


# ------------------------------------------------------------------------------------------ input

def load_run(spec: str | Path, report_dir: str | Path = "reports") -> tuple[Path, dict]:
    """A run folder (or its results.json, or `latest`/a run id under report_dir) and its validated results."""
    candidates = [Path(spec)]
    if not Path(spec).is_absolute():
        candidates.append(Path(report_dir) / spec)
    for cand in candidates:
        if cand.exists() or cand.is_symlink():
            try:
                run = resolve_run_dir(cand)
            except FileNotFoundError as e:
                raise CompareError(f"{e}; give a run folder, its results.json or `latest`") from None
            break
    else:
        raise CompareError(f"no run {spec!r} (looked for {' and '.join(map(str, candidates))}); "
                           "give a run folder, its results.json, or `latest` under --report-dir")
    path = run / RESULTS_FILE
    if not path.is_file():
        raise CompareError(f"{run} has no {RESULTS_FILE}: not a claims run folder (reports/<run-id>/)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CompareError(f"{path} is not readable JSON ({e}); re-run the claims or restore the file") from None
    errors = validate_results(doc) if isinstance(doc, dict) else ["$: not a JSON object"]
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise CompareError(f"{path} does not match the results schema: {errors[0]}{more}")
    return run, doc


# ------------------------------------------------------------------------------------ statistics

def _is_interval(x: Any) -> bool:
    return isinstance(x, dict) and all(_finite(x.get(k)) for k in ("mean", "lo", "hi"))


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _se_df(iv: dict) -> tuple[float, float] | None:
    """Standard error of an interval's mean and its degrees of freedom, where the interval says how it was made.

    Paired-bootstrap intervals carry `se` (normal, df = inf); Student-t intervals over replicates carry
    `std` and `n` (se = std / sqrt(n), df = n - 1).
    """
    if _finite(iv.get("se")):
        return float(iv["se"]), math.inf
    n = iv.get("n")
    if _finite(iv.get("std")) and isinstance(n, int) and n >= 2:
        return float(iv["std"]) / math.sqrt(n), float(n - 1)
    return None


def compare_intervals(a: dict, b: dict) -> dict:
    """Is B's value different from A's beyond the runs' own uncertainty?

    Where both intervals give a standard error, the difference B - A gets its own 95% interval
    (Welch: the two runs taken as independent samples, Welch-Satterthwaite degrees of freedom) and the
    change is "outside" when that interval excludes 0. This is sharper than asking whether the two
    95% intervals overlap (two intervals can overlap while their difference is resolved) and still
    conservative where the runs share seeds, data and test set: then their errors are positively
    correlated and the true spread of the difference is smaller than the independent one used here.
    Where a standard error is missing, the fallback is the overlap of the two intervals (disjoint =
    "outside"), which is conservative too.
    """
    diff = float(b["mean"]) - float(a["mean"])
    sa, sb = _se_df(a), _se_df(b)
    if sa is None or sb is None:
        outside = float(b["lo"]) > float(a["hi"]) or float(a["lo"]) > float(b["hi"])
        return {"difference": diff, "lo": None, "hi": None, "method": "overlap of the two 95% intervals",
                "call": OUTSIDE if outside else WITHIN}
    (se_a, df_a), (se_b, df_b) = sa, sb
    var = se_a ** 2 + se_b ** 2
    if var == 0.0:  # both exact (e.g. a level compared with itself): any difference is a change
        return {"difference": diff, "lo": diff, "hi": diff, "method": "exact", "call": OUTSIDE if diff else WITHIN}
    terms = [s ** 4 / d for s, d in ((se_a, df_a), (se_b, df_b)) if math.isfinite(d) and s > 0]
    df = var ** 2 / sum(terms) if terms else math.inf
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, df)) * math.sqrt(var)
    lo, hi = diff - half, diff + half
    return {"difference": diff, "lo": lo, "hi": hi, "method": "Welch interval of the difference",
            "call": OUTSIDE if lo > 0 or hi < 0 else WITHIN}


# ---------------------------------------------------------------------------------- extraction

def _flatten(obj: Any, prefix: str = "") -> tuple[dict[str, dict], dict[str, Any]]:
    """Intervals and scalars (numbers, strings, booleans) of a nested dict, by dotted name; lists are skipped."""
    intervals: dict[str, dict] = {}
    scalars: dict[str, Any] = {}
    if not isinstance(obj, dict):
        return intervals, scalars
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if _is_interval(value):
            intervals[name] = {k: value[k] for k in ("mean", "lo", "hi", "se", "std", "n") if k in value}
        elif isinstance(value, dict):
            sub_i, sub_s = _flatten(value, f"{name}.")
            intervals.update(sub_i)
            scalars.update(sub_s)
        elif isinstance(value, (bool, int, float, str)) or value is None:
            scalars[name] = value
    return intervals, scalars


def _row_label(row: dict) -> str:
    return " ".join(f"{k}={row[k]}" for k in ROW_KEYS if k in row)


def _row_intervals(outcome: dict) -> dict[str, dict]:
    rows = (outcome.get("measured") or {}).get("rows")
    found: dict[str, dict] = {}
    for row in rows if isinstance(rows, list) else []:
        if not isinstance(row, dict):
            continue
        label = _row_label(row)
        for key, value in row.items():
            if _is_interval(value):
                found[f"{key} @ {label}"] = {k: value[k] for k in ("mean", "lo", "hi", "se", "std", "n") if k in value}
    return found


def _premise_intervals(doc: dict) -> dict[str, dict]:
    for o in doc["outcomes"]:
        barriers = (o.get("premise") or {}).get("barriers")
        if isinstance(barriers, dict):
            return {f"SGD-noise barrier (pp) at rewind {r}": b["barrier_pp"] for r, b in barriers.items()
                    if isinstance(b, dict) and _is_interval(b.get("barrier_pp"))}
    return {}


def _compare_numbers(ia: dict[str, dict], ib: dict[str, dict]) -> list[dict]:
    return [{"name": name, "a": ia[name], "b": ib[name], **compare_intervals(ia[name], ib[name])}
            for name in ia if name in ib]


def _meta_flat(meta: dict) -> dict[str, Any]:
    flat: dict[str, Any] = {}

    def walk(obj: Any, prefix: str) -> None:
        for key, value in obj.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict) and value:
                walk(value, f"{name}.")
            elif name not in META_SKIP:
                flat[name] = value

    walk(meta, "")
    return flat


def _meta_diff(a: dict, b: dict) -> tuple[list[dict], list[str]]:
    fa, fb = _meta_flat(a), _meta_flat(b)
    keys = [k for k in META_FIRST if k in fa or k in fb] + sorted((fa.keys() | fb.keys()) - set(META_FIRST))
    changed = [{"key": k, "a": fa.get(k), "b": fb.get(k)} for k in keys if fa.get(k) != fb.get(k)]
    same = [f"{k} {fa[k]}" for k in META_FIRST[:6] if k in fa and fa.get(k) == fb.get(k) and fa[k] is not None]
    return changed, same


def _pair(doc_a: dict, doc_b: dict) -> tuple[list[tuple[dict, dict]], str | None]:
    """Outcomes of A and B side by side: by (claim, recipe), or by claim where each run has one recipe."""
    claims_a = {o["claim"] for o in doc_a["outcomes"]}
    claims_b = {o["claim"] for o in doc_b["outcomes"]}
    if claims_a != claims_b:
        raise CompareError(f"the runs check different claims: only in A {_names(claims_a - claims_b)}, "
                           f"only in B {_names(claims_b - claims_a)}; compare runs of the same claims "
                           "(pytest -k selects claims)")
    key = lambda o: (o["claim"], o["recipe"])  # noqa: E731
    by_a = {key(o): o for o in doc_a["outcomes"]}
    by_b = {key(o): o for o in doc_b["outcomes"]}
    order = sorted(by_a, key=lambda k: (_claim_order(k[0]), k[1]))
    if by_a.keys() == by_b.keys():
        return [(by_a[k], by_b[k]) for k in order], None
    recipes_a = {o["recipe"] for o in doc_a["outcomes"]}
    recipes_b = {o["recipe"] for o in doc_b["outcomes"]}
    if len(recipes_a) == 1 and len(recipes_b) == 1 and len(by_a) == len(claims_a) and len(by_b) == len(claims_b):
        one_a = {o["claim"]: o for o in doc_a["outcomes"]}
        one_b = {o["claim"]: o for o in doc_b["outcomes"]}
        note = (f"the runs use different recipes ({next(iter(recipes_a))} in A, {next(iter(recipes_b))} in B): "
                "they are different experiments, so a change says how the recipes differ, not what moved a result")
        return [(one_a[c], one_b[c]) for c, _ in order], note
    only_a = sorted(f"{c}/{r}" for c, r in by_a.keys() - by_b.keys())
    only_b = sorted(f"{c}/{r}" for c, r in by_b.keys() - by_a.keys())
    raise CompareError(f"the runs check different (claim, recipe) pairs: only in A {_names(only_a)}, "
                       f"only in B {_names(only_b)}; compare runs of the same recipes (--recipe)")


def _names(items: Any) -> str:
    return ", ".join(sorted(items)) or "none"


def _claim_order(claim: str) -> tuple[int, str]:
    digits = "".join(ch for ch in claim if ch.isdigit())
    return (int(digits) if digits else 0, claim)


def compare(doc_a: dict, doc_b: dict, name_a: str = "A", name_b: str = "B") -> dict:
    """The comparison of two results.json documents as a JSON-able dict (compare.json)."""
    pairs, recipe_note = _pair(doc_a, doc_b)
    meta_changed, meta_same = _meta_diff(doc_a["meta"], doc_b["meta"])
    outcomes = []
    for oa, ob in pairs:
        ia, sa = _flatten(oa.get("effect") or {})
        ib, sb = _flatten(ob.get("effect") or {})
        names = sorted(sa.keys() | sb.keys(), key=lambda k: ("." in k, k))  # top-level values first
        scalars = [{"name": k, "a": sa.get(k), "b": sb.get(k)} for k in names if sa.get(k) != sb.get(k)]
        outcomes.append({
            "claim": oa["claim"], "title": oa.get("title") or ob.get("title") or "",
            "recipe_a": oa["recipe"], "recipe_b": ob["recipe"],
            "verdict_a": oa["verdict"], "verdict_b": ob["verdict"], "verdict_changed": oa["verdict"] != ob["verdict"],
            "tau_a": oa.get("tau_sensitivity") or {}, "tau_b": ob.get("tau_sensitivity") or {},
            "summary_a": oa.get("summary", ""), "summary_b": ob.get("summary", ""),
            "replicates_a": oa.get("replicates"), "replicates_b": ob.get("replicates"),
            "rewinds_a": oa.get("rewinds"), "rewinds_b": ob.get("rewinds"),
            "same_experiments": bool(oa.get("config_hashes")) and oa.get("config_hashes") == ob.get("config_hashes"),
            "numbers": _compare_numbers(ia, ib),
            "only_a": sorted(ia.keys() - ib.keys()), "only_b": sorted(ib.keys() - ia.keys()),
            "scalars_changed": scalars,
            "rows": _compare_numbers(_row_intervals(oa), _row_intervals(ob)),
        })
    premise = _compare_numbers(_premise_intervals(doc_a), _premise_intervals(doc_b))
    pa, pb = _premise_intervals(doc_a), _premise_intervals(doc_b)
    return {
        "format": FORMAT,
        "a": _run_info(doc_a, name_a), "b": _run_info(doc_b, name_b),
        "recipe_note": recipe_note,
        "meta_changed": meta_changed, "meta_same": meta_same,
        "outcomes": outcomes,
        "premise": premise,
        "premise_only_a": sorted(pa.keys() - pb.keys()), "premise_only_b": sorted(pb.keys() - pa.keys()),
        "method": f"{int(CONFIDENCE * 100)}% intervals. A number is 'outside' when the interval of the difference "
                  "B - A excludes 0 (Welch, the runs taken as independent: conservative where they share seeds "
                  "and test set), or, where an interval gives no standard error, when the two intervals do not "
                  "overlap; 'within' otherwise. Among many numbers about 5% fall 'outside' by chance alone.",
    }


def _run_info(doc: dict, name: str) -> dict:
    m = doc["meta"]
    return {"run": name, "scale": m.get("scale"), "started_at": m.get("started_at"), "summary": doc.get("summary")}


# ------------------------------------------------------------------------------------- rendering

def _n(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if not math.isfinite(x):
            return str(x)
        if x == 0:
            return "0"
        return f"{x:.3g}" if abs(x) < 0.01 or abs(x) >= 1000 else f"{x:.2f}" if abs(x) >= 1 else f"{x:.3f}"
    return str(x)


def _short(text: str, width: int = 44) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def _iv(iv: dict) -> str:
    return f"{_n(iv['mean'])} [{_n(iv['lo'])}, {_n(iv['hi'])}]"


def _delta(num: dict) -> str:
    d = f"{num['difference']:+.3g}"
    return d if num["lo"] is None else f"{d} [{num['lo']:+.3g}, {num['hi']:+.3g}]"


def _sweep(tau: dict) -> str:
    return " ".join(f"{k}:{v[0]}" for k, v in sorted(tau.items(), key=lambda kv: float(kv[0]))) or "–"


def _when(info: dict) -> str:
    return (info.get("started_at") or "?").replace("T", " ")[:16]


def _counts(info: dict) -> str:
    s = info.get("summary") or {}
    return ", ".join(f"{s.get(v, 0)} {v}" for v in ("PASS", "FAIL", "INCONCLUSIVE"))


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def _tally(cmp: dict) -> tuple[int, int]:
    nums = [n for o in cmp["outcomes"] for n in o["numbers"] + o["rows"]] + cmp["premise"]
    return len(nums), sum(n["call"] == OUTSIDE for n in nums)


def render_text(cmp: dict, scalars_shown: int = 4, rows_shown: int = 3) -> str:
    """The terminal view: settings that differ, verdicts, then the numbers, changes first."""
    a, b = cmp["a"], cmp["b"]
    out = [f"A  {a['run']}  ({a['scale']}, {_when(a)}; {_counts(a)})",
           f"B  {b['run']}  ({b['scale']}, {_when(b)}; {_counts(b)})", ""]
    if cmp["recipe_note"]:
        out += [f"Note: {cmp['recipe_note']}.", ""]
    out += ["Verdicts (tau sweep 1/2/3 pp: P pass, F fail, I inconclusive)"]
    rows = [["claim", "recipe", "A", "B", ""]]
    for o in cmp["outcomes"]:
        recipe = o["recipe_a"] if o["recipe_a"] == o["recipe_b"] else f"{o['recipe_a']}->{o['recipe_b']}"
        rows.append([o["claim"], recipe, f"{o['verdict_a']} ({_sweep(o['tau_a'])})",
                     f"{o['verdict_b']} ({_sweep(o['tau_b'])})", "CHANGED" if o["verdict_changed"] else ""])
    out += _table(rows)
    out += ["", "Run settings that differ (A -> B):" if cmp["meta_changed"] else "Run settings: no difference"]
    if cmp["meta_changed"]:
        out += _table([[m["key"], _short(_n(m["a"])), "->", _short(_n(m["b"]))] for m in cmp["meta_changed"]])
    if cmp["meta_same"]:
        out.append("  unchanged: " + ", ".join(cmp["meta_same"]))
    out += ["", "Numbers the verdicts hinge on: A -> B, difference B - A [95%], within/outside the runs' uncertainty"]
    for o in cmp["outcomes"]:
        lines = [[f"  {n['name']}", _iv(n["a"]), "->", _iv(n["b"]), _delta(n), n["call"]] for n in o["numbers"]]
        shown = [r for r in o["rows"] if r["call"] == OUTSIDE][:rows_shown]
        lines += [[f"  {n['name']}", _iv(n["a"]), "->", _iv(n["b"]), _delta(n), n["call"]] for n in shown]
        out.append(f"claim {o['claim']}: {o['verdict_a']} -> {o['verdict_b']}"
                   + ("" if not o["same_experiments"] else "  (same experiments: same cache keys)"))
        if lines:
            out += _table(lines, indent="  ")
        if o["rows"]:
            n_out = sum(r["call"] == OUTSIDE for r in o["rows"])
            more = f", {n_out - len(shown)} more in compare.md" if n_out > len(shown) else ""
            out.append(f"    per-row intervals in both runs: {len(o['rows'])}, outside: {n_out}{more}")
        if o["scalars_changed"]:
            sc = o["scalars_changed"]
            text = ", ".join(f"{s['name']} {_n(s['a'])}->{_n(s['b'])}" for s in sc[:scalars_shown])
            out.append(f"    other values (no interval): {text}"
                       + (f" (+{len(sc) - scalars_shown} in compare.md)" if len(sc) > scalars_shown else ""))
    if cmp["premise"] or cmp["premise_only_a"] or cmp["premise_only_b"]:
        out += ["", "Premise (SGD-noise barrier at level 0):"]
        out += _table([[n["name"], _iv(n["a"]), "->", _iv(n["b"]), _delta(n), n["call"]] for n in cmp["premise"]]
                      or [["none in both runs"]])
        for side, names in (("A", cmp["premise_only_a"]), ("B", cmp["premise_only_b"])):
            if names:
                out.append(f"  only in {side}: " + "; ".join(names))
    total, outside = _tally(cmp)
    out += ["", f"{outside} of {total} numbers compared lie outside the runs' uncertainty "
                f"(about {0.05 * total:.1f} would by chance alone if nothing had changed)."]
    return "\n".join(out) + "\n"


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def render_markdown(cmp: dict) -> str:
    """compare.md: the same as the terminal, with every changed value and every row-level number."""
    a, b = cmp["a"], cmp["b"]
    out = [f"# Compare {a['run']} (A) with {b['run']} (B)", "",
           f"- A: `{a['run']}`, scale {a['scale']}, started {_when(a)} UTC; {_counts(a)}",
           f"- B: `{b['run']}`, scale {b['scale']}, started {_when(b)} UTC; {_counts(b)}", ""]
    if cmp["recipe_note"]:
        out += [f"**Note:** {cmp['recipe_note']}.", ""]
    out += ["## Verdicts", "", _md_row(["claim", "title", "recipe A", "recipe B", "A", "B", "tau 1/2/3 A",
                                        "tau 1/2/3 B", "changed"]), _md_row(["---"] * 9)]
    for o in cmp["outcomes"]:
        out.append(_md_row([o["claim"], o["title"], o["recipe_a"], o["recipe_b"], o["verdict_a"], o["verdict_b"],
                            _sweep(o["tau_a"]), _sweep(o["tau_b"]), "**yes**" if o["verdict_changed"] else "no"]))
    out += ["", "## Run settings that differ", ""]
    if cmp["meta_changed"]:
        out += [_md_row(["setting", "A", "B"]), _md_row(["---"] * 3)]
        out += [_md_row([f"`{m['key']}`", _n(m["a"]), _n(m["b"])]) for m in cmp["meta_changed"]]
    else:
        out.append("None.")
    if cmp["meta_same"]:
        out += ["", "Unchanged: " + ", ".join(cmp["meta_same"]) + "."]
    out += ["", "## Numbers the verdicts hinge on", "", cmp["method"], ""]
    head = [_md_row(["number", "A", "B", "B - A [95%]", "call"]), _md_row(["---"] * 5)]
    for o in cmp["outcomes"]:
        out += [f"### Claim {o['claim']} ({o['recipe_a']} / {o['recipe_b']}): {o['verdict_a']} → {o['verdict_b']}", "",
                f"- A: {o['summary_a']}", f"- B: {o['summary_b']}",
                f"- replicates {_n(o['replicates_a'])} / {_n(o['replicates_b'])}, rewinds {o['rewinds_a']} / "
                f"{o['rewinds_b']}; " + ("same experiments (same cache keys)" if o["same_experiments"]
                                         else "different experiments (cache keys differ)"), ""]
        if o["numbers"]:
            out += head + [_md_row([f"`{n['name']}`", _iv(n["a"]), _iv(n["b"]), _delta(n), n["call"]])
                           for n in o["numbers"]] + [""]
        for side, names in (("A", o["only_a"]), ("B", o["only_b"])):
            if names:
                out += [f"Only in {side}: " + ", ".join(f"`{x}`" for x in names), ""]
        if o["rows"]:
            n_out = sum(r["call"] == OUTSIDE for r in o["rows"])
            out += [f"Per-row numbers present in both runs: {len(o['rows'])}, {n_out} outside.", ""]
            changed = [r for r in o["rows"] if r["call"] == OUTSIDE]
            if changed:
                out += head + [_md_row([f"`{n['name']}`", _iv(n["a"]), _iv(n["b"]), _delta(n), n["call"]])
                               for n in changed] + [""]
        elif (o["recipe_a"], o["rewinds_a"]) != (o["recipe_b"], o["rewinds_b"]):
            out += ["No per-row numbers in common (the runs' rewinds or levels differ).", ""]
        if o["scalars_changed"]:
            out += [_md_row(["other value (no interval)", "A", "B"]), _md_row(["---"] * 3)]
            out += [_md_row([f"`{s['name']}`", _n(s["a"]), _n(s["b"])]) for s in o["scalars_changed"]] + [""]
    out += ["## Premise (SGD-noise barrier at level 0)", ""]
    if cmp["premise"]:
        out += head + [_md_row([n["name"], _iv(n["a"]), _iv(n["b"]), _delta(n), n["call"]]) for n in cmp["premise"]]
    for side, names in (("A", cmp["premise_only_a"]), ("B", cmp["premise_only_b"])):
        if names:
            out.append(f"Only in {side}: " + "; ".join(names))
    if not (cmp["premise"] or cmp["premise_only_a"] or cmp["premise_only_b"]):
        out.append("Neither run has a premise check.")
    total, outside = _tally(cmp)
    out += ["", f"{outside} of {total} numbers compared lie outside the runs' uncertainty "
                f"(about {0.05 * total:.1f} would by chance alone if nothing had changed).", ""]
    return "\n".join(out)


def write_comparison(cmp: dict, report_dir: str | Path = "reports") -> Path:
    """Write compare.md and compare.json to <report_dir>/compare-<A>-vs-<B>/ and return that folder."""
    out = Path(report_dir) / f"compare-{cmp['a']['run']}-vs-{cmp['b']['run']}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(render_markdown(cmp), encoding="utf-8")
    (out / "compare.json").write_text(json.dumps(cmp, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    return out


def compare_runs(run_a: str | Path, run_b: str | Path, report_dir: str | Path = "reports") -> tuple[dict, Path]:
    """Load, compare and write two runs; returns the comparison and the folder it was written to."""
    (dir_a, doc_a), (dir_b, doc_b) = load_run(run_a, report_dir), load_run(run_b, report_dir)
    cmp = compare(doc_a, doc_b, dir_a.name, dir_b.name)
    return cmp, write_comparison(cmp, report_dir)
