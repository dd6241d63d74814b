"""Reports of a claims run: results.json, report.md, a self-contained report.html and PNG figures.

`write_report(outcomes, meta)` writes `reports/<run-id>/` and points `reports/latest` at it;
`rebuild(run_dir)` renders the same files again from `results.json` alone (no training). Both
render from the JSON as read back from disk, so a rebuild reproduces a fresh report byte for byte.

Non-finite numbers (NaN, inf) are written as `null`, so results.json is strict JSON. Every figure
and table is drawn only from the data that is present: an outcome without `measured` (a diverged
run) gets its verdict row and section but no figure. Figures are drawn on `matplotlib.figure.Figure`
objects directly (Agg canvas), so neither pyplot nor the global backend is touched.

Verdicts: PASS green, FAIL red, INCONCLUSIVE amber; INCONCLUSIVE is always spelled out and never
shown as a pass.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import html
import importlib.resources
import json
import math
import os
import platform
import re
import subprocess
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jsonschema

from . import __version__
from . import thresholds as T

PASS, FAIL, INCONCLUSIVE = "PASS", "FAIL", "INCONCLUSIVE"
VERDICTS = (PASS, FAIL, INCONCLUSIVE)
RESULTS_FILE = "results.json"
FIGURES_DIR = "figures"
LATEST = "latest"


class ReportWarning(UserWarning):
    """Something in the report could not be drawn or does not match RESULTS_SCHEMA (the report is still written)."""


# ------------------------------------------------------------------------------------------ schema

# The schema is package data (lth_checks/results.schema.json), so other tools can validate a
# results.json without importing this module; jsonschema checks it (Draft 2020-12).
SCHEMA_FILE = "results.schema.json"
RESULTS_SCHEMA: dict = json.loads(importlib.resources.files(__package__).joinpath(SCHEMA_FILE)
                                  .read_text(encoding="utf-8"))


@functools.cache
def _validator(schema_text: str) -> jsonschema.Draft202012Validator:
    schema = json.loads(schema_text)
    jsonschema.Draft202012Validator.check_schema(schema)  # a broken schema is a bug: SchemaError, not a warning
    return jsonschema.Draft202012Validator(schema)


def validate_results(doc: dict, schema: dict = RESULTS_SCHEMA) -> list[str]:
    """Errors of `doc` against the results schema, one readable line each: '$.outcomes[0].verdict: ...'."""
    validator = _validator(json.dumps(schema, sort_keys=True))
    errors = sorted(validator.iter_errors(doc), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    return [f"{e.json_path}: {e.message}" for e in errors]


# --------------------------------------------------------------------------------------- metadata

def _git(*args: str) -> str | None:
    try:
        res = subprocess.run(["git", *args], cwd=os.getcwd(), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def run_metadata(*, scale: str, options: dict, device: str, wall_time_s: float, started_at: str) -> dict:
    """Versions, platform, device and the git commit of the working directory (no host name)."""
    torch_version = cuda_name = None
    try:
        import torch

        torch_version = torch.__version__
        dev = str(device)
        if (dev.startswith("cuda") or dev == "auto") and torch.cuda.is_available():
            index = torch.device("cuda" if dev == "auto" else dev).index
            cuda_name = torch.cuda.get_device_name(torch.cuda.current_device() if index is None else index)
    except Exception:  # noqa: BLE001 - metadata must never break a report
        pass
    try:
        import numpy

        numpy_version = numpy.__version__
    except ImportError:
        numpy_version = None
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {
        "lth_checks_version": __version__,
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "torch_version": torch_version,
        "numpy_version": numpy_version,
        "platform": platform.platform(),  # OS, release and machine; platform.node() (the host) is left out
        "device": str(device),
        "cuda_device_name": cuda_name,
        "git_commit": commit,
        "git_dirty": None if status is None else bool(status),
        "scale": scale,
        "options": dict(options),
        "wall_time_s": wall_time_s,
        "started_at": started_at,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else None,
    }


# ---------------------------------------------------------------------------------- JSON and files

def to_jsonable(obj: Any) -> Any:
    """Plain JSON values: str keys, lists for tuples, Python numbers for numpy ones, None for NaN/inf."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return [to_jsonable(v) for v in sorted(obj, key=str)]
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if hasattr(obj, "tolist"):  # numpy scalars and arrays, torch tensors
        return to_jsonable(obj.tolist())
    if hasattr(obj, "item"):
        return to_jsonable(obj.item())
    return str(obj)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def summarize(outcomes: Sequence[dict]) -> dict:
    """Counts per verdict (PASS, FAIL, INCONCLUSIVE always present; anything else under its own name)."""
    counts = {v: 0 for v in VERDICTS}
    for o in outcomes:
        v = str(o.get("verdict", "UNKNOWN"))
        counts[v] = counts.get(v, 0) + 1
    counts["total"] = len(outcomes)
    return counts


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("._") or "x"


def _new_run_dir(root: Path, run_id: str | None, scale: str) -> Path:
    if run_id is None:
        run_id = f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{_safe_name(scale)}"
    elif run_id != _safe_name(run_id) or run_id == LATEST:
        raise ValueError(f"run id {run_id!r} must be a plain name of letters, digits, '_', '.' and '-'")
    root.mkdir(parents=True, exist_ok=True)
    candidate, n = run_id, 1
    while True:
        try:
            (root / candidate).mkdir()
            return root / candidate
        except FileExistsError:
            n += 1
            candidate = f"{run_id}-{n}"


def _update_latest(root: Path, run_dir: Path) -> None:
    """`root/latest` -> the run dir (relative symlink, replaced atomically); a text file where links fail."""
    latest = root / LATEST
    tmp = root / f".{LATEST}.tmp-{os.getpid()}"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(run_dir.name, tmp, target_is_directory=True)
        os.replace(tmp, latest)
        return
    except (OSError, NotImplementedError):
        if tmp.is_symlink():
            tmp.unlink()
    try:
        if latest.is_symlink():
            latest.unlink()
        _atomic_write(latest, (run_dir.name + "\n").encode())
    except OSError as e:
        warnings.warn(f"could not update {latest}: {e}", ReportWarning, stacklevel=3)


def resolve_run_dir(run_dir: str | Path) -> Path:
    """A run folder, its results.json, or `latest` (a symlink or the text-file fallback holding the run id)."""
    p = Path(run_dir)
    if p.is_symlink():  # `latest`: keep the run's own name (it titles the report)
        p = p.parent / os.readlink(p)
    if p.is_file() and p.name == RESULTS_FILE:
        return p.parent
    if p.is_file():  # the `latest` fallback
        name = p.read_text(encoding="utf-8").strip()
        if name and name == _safe_name(name) and (p.parent / name).is_dir():
            return p.parent / name
        raise FileNotFoundError(f"{p} names no run folder next to it")
    return p


def load_results(run_dir: str | Path) -> dict:
    """results.json of a run (a run folder, its results.json, or `reports/latest`)."""
    path = resolve_run_dir(run_dir) / RESULTS_FILE
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _dumps(doc: dict) -> str:
    return json.dumps(doc, indent=1, ensure_ascii=False, allow_nan=False) + "\n"


def write_report(outcomes: list[dict], meta: dict, report_root: str | Path = "reports",
                 run_id: str | None = None) -> Path:
    """Write report_root/<run_id>/ (results.json, report.md, report.html, figures/) and point `latest` at it.

    run_id defaults to the UTC time and the scale, e.g. 20261125-193000-smoke; an existing name gets
    a suffix (-2, -3, ...). Returns the run folder.
    """
    root = Path(report_root)
    evidence = list(outcomes) if any(o.get("evidence") is not None for o in outcomes) else []
    outcomes = [{k: v for k, v in o.items() if k != "evidence"} for o in outcomes]  # bits go to the archive
    doc = to_jsonable({"meta": meta, "thresholds": T.as_dict(), "outcomes": list(outcomes),
                       "summary": summarize(outcomes)})
    errors = validate_results(doc)
    if errors:
        warnings.warn(f"results do not match RESULTS_SCHEMA: {'; '.join(errors[:5])}", ReportWarning, stacklevel=2)
    run_dir = _new_run_dir(root, run_id, str(meta.get("scale") or "run"))
    _atomic_write(run_dir / RESULTS_FILE, _dumps(doc).encode("utf-8"))
    if evidence:  # per-example evidence, to re-decide without weights (lth-checks report --from-evidence)
        from .archive import ARCHIVE_FILE, write_archive

        write_archive(run_dir / ARCHIVE_FILE, meta, evidence)
    _render(run_dir, load_results(run_dir))
    _update_latest(root, run_dir)
    return run_dir


def rebuild(run_dir: str | Path) -> Path:
    """Render report.md, report.html and the figures again from the run's results.json (no training)."""
    run_dir = resolve_run_dir(run_dir)
    doc = load_results(run_dir)
    figdir = run_dir / FIGURES_DIR
    if figdir.is_dir():
        for old in figdir.glob("fig*.png"):
            old.unlink()
    _render(run_dir, doc)
    return run_dir


# ------------------------------------------------------------------------------------- formatting

def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def _ci(x: Any) -> tuple[float, float | None, float | None] | None:
    """(mean, lo, hi) of a mean_ci dict (or a bare number); None when there is no finite mean."""
    if isinstance(x, dict):
        m = _num(x.get("mean"))
        return None if m is None else (m, _num(x.get("lo")), _num(x.get("hi")))
    m = _num(x)
    return None if m is None else (m, None, None)


def fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return f"{x:.{digits}g}" if math.isfinite(x) else str(x)
    if isinstance(x, dict) and "mean" in x:
        return fmt_ci(x)
    if isinstance(x, (list, tuple)):
        return ", ".join(fmt(v, digits) for v in x)
    return str(x)


def fmt_ci(x: Any, scale: float = 1.0) -> str:
    c = _ci(x)
    if c is None:
        return "–"
    m, lo, hi = (None if v is None else v * scale for v in c)
    text = f"{m:.3g}"
    if lo is not None and hi is not None:
        text += f" [{lo:.3g}, {hi:.3g}]"
    return text


def fmt_pct(x: Any) -> str:
    v = _num(x)
    return "–" if v is None else f"{100 * v:.3g}%"


def fmt_err(x: Any) -> str:
    """An error given as a fraction, printed in percent."""
    v = _num(x)
    return "–" if v is None else f"{100 * v:.3g}"


def _wall(x: Any) -> str:
    v = _num(x)
    if v is None:
        return "–"
    return f"{v:.1f} s" if v < 120 else f"{v / 60:.1f} min"


# ------------------------------------------------------------------------------- document blocks

@dataclass(frozen=True)
class Badge:
    verdict: str


@dataclass(frozen=True)
class Link:
    text: str
    href: str


Inline = str | Badge | Link | list  # a list is a sequence of inlines


@dataclass
class Heading:
    level: int
    text: str
    anchor: str | None = None


@dataclass
class Para:
    content: Inline
    note: bool = False


@dataclass
class Table:
    headers: list[str]
    rows: list[list[Inline]]
    row_attrs: list[dict] | None = None
    css: str = ""


@dataclass
class Bullets:
    items: list[Inline]


@dataclass
class Fig:
    path: str  # relative to the run folder
    caption: str


_MD_BADGE = {PASS: "✅ **PASS**", FAIL: "❌ **FAIL**", INCONCLUSIVE: "⚠️ **INCONCLUSIVE**"}
_CSS_CLASS = {PASS: "v-pass", FAIL: "v-fail", INCONCLUSIVE: "v-inconclusive"}
_BADGE_TITLE = {PASS: "the prediction held", FAIL: "the prediction was contradicted",
                INCONCLUSIVE: "the run could not discriminate: NOT a pass"}


def _md_inline(x: Inline, cell: bool = False) -> str:
    if isinstance(x, Badge):
        return _MD_BADGE.get(x.verdict, f"❔ **{x.verdict}**")
    if isinstance(x, Link):
        return f"[{_md_inline(x.text, cell)}]({x.href})"
    if isinstance(x, list):
        return "".join(_md_inline(v, cell) for v in x)
    text = str(x)
    return text.replace("|", "\\|").replace("\n", " ") if cell else text


def _html_inline(x: Inline) -> str:
    if isinstance(x, Badge):
        cls = _CSS_CLASS.get(x.verdict, "v-unknown")
        title = _BADGE_TITLE.get(x.verdict, "unknown verdict")
        return (f'<span class="verdict {cls}" title="{html.escape(title)}">{html.escape(x.verdict)}</span>')
    if isinstance(x, Link):
        return f'<a href="{html.escape(x.href)}">{_html_inline(x.text)}</a>'
    if isinstance(x, list):
        return "".join(_html_inline(v) for v in x)
    return html.escape(str(x))


def _to_markdown(blocks: list) -> str:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            if b.anchor:
                out.append(f'<a id="{html.escape(b.anchor)}"></a>\n')
            out.append(f"{'#' * b.level} {b.text}\n")
        elif isinstance(b, Para):
            text = _md_inline(b.content)
            out.append(("> " + text if b.note else text) + "\n")
        elif isinstance(b, Table):
            if not b.rows:
                continue
            out.append("| " + " | ".join(_md_inline(h, True) for h in b.headers) + " |")
            out.append("|" + "---|" * len(b.headers))
            out += ["| " + " | ".join(_md_inline(c, True) for c in row) + " |" for row in b.rows]
            out.append("")
        elif isinstance(b, Bullets):
            out += [f"- {_md_inline(item)}" for item in b.items]
            out.append("")
        elif isinstance(b, Fig):
            out.append(f"![{b.caption}]({b.path})\n")
            out.append(f"*{b.caption}* ([{b.path}]({b.path}))\n")
    return "\n".join(out).rstrip() + "\n"


_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 2rem auto;
       max-width: 1250px; padding: 0 1rem; color: #1d1d1f; line-height: 1.45; }
h1 { border-bottom: 2px solid #ccc; padding-bottom: .3rem; }
h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
h3 { margin-top: 1.4rem; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .85rem; }
th, td { border: 1px solid #d0d0d0; padding: .25rem .5rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
tr:nth-child(even) td { background: #fafafa; }
.wide { display: block; overflow-x: auto; }
.verdict { display: inline-block; padding: .05rem .45rem; border-radius: .3rem; font-weight: 700;
           font-size: .85rem; letter-spacing: .02em; white-space: nowrap; }
.v-pass { background: #1e8e3e; color: #fff; }
.v-fail { background: #c5221f; color: #fff; }
.v-inconclusive { background: #f9ab00; color: #202124; }
.v-unknown { background: #80868b; color: #fff; }
tr.outcome.row-pass td:first-child { border-left: 5px solid #1e8e3e; }
tr.outcome.row-fail td:first-child { border-left: 5px solid #c5221f; }
tr.outcome.row-inconclusive td:first-child { border-left: 5px solid #f9ab00; }
.note { background: #fff8e1; border-left: 4px solid #f9ab00; padding: .4rem .8rem; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: .85rem; color: #555; }
code { background: #f3f3f3; padding: 0 .2rem; }
"""


def _to_html(blocks: list, title: str, run_dir: Path) -> str:
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{html.escape(title)}</title>", f"<style>{_STYLE}</style>", "</head>", "<body>"]
    for b in blocks:
        if isinstance(b, Heading):
            anchor = f' id="{html.escape(b.anchor)}"' if b.anchor else ""
            out.append(f"<h{b.level}{anchor}>{html.escape(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            cls = ' class="note"' if b.note else ""
            out.append(f"<p{cls}>{_html_inline(b.content)}</p>")
        elif isinstance(b, Table):
            if not b.rows:
                continue
            cls = f' class="{b.css}"' if b.css else ""
            out.append(f"<table{cls}><thead><tr>" + "".join(f"<th>{_html_inline(h)}</th>" for h in b.headers)
                       + "</tr></thead><tbody>")
            for i, row in enumerate(b.rows):
                attrs = b.row_attrs[i] if b.row_attrs else {}
                attr = "".join(f' {k}="{html.escape(str(v))}"' for k, v in attrs.items())
                out.append(f"<tr{attr}>" + "".join(f"<td>{_html_inline(c)}</td>" for c in row) + "</tr>")
            out.append("</tbody></table>")
        elif isinstance(b, Bullets):
            out.append("<ul>" + "".join(f"<li>{_html_inline(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Fig):
            data = base64.b64encode((run_dir / b.path).read_bytes()).decode("ascii")
            src, cap = html.escape(b.path), html.escape(b.caption)
            out.append(f'<figure><a href="{src}"><img src="data:image/png;base64,{data}" alt="{cap}" '
                       f'data-file="{src}"></a><figcaption>{cap} (file: <a href="{src}">{src}</a>)</figcaption>'
                       "</figure>")
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------ report body

def _claims() -> dict:
    """The registered claims by id (lth_checks.claim): each renders its own tables and figures."""
    from .claim import registry

    return registry()


def _anchor(i: int, o: dict) -> str:
    return f"outcome-{i}-claim-{_safe_name(o.get('claim', '?'))}-{_safe_name(o.get('recipe', '?'))}"


def _tau_cell(o: dict) -> Inline:
    sweep = o.get("tau_sensitivity") or {}
    if not isinstance(sweep, dict) or not sweep:
        return "–"
    parts: list = []
    for key in sorted(sweep, key=lambda k: (_num(_float_or_none(k)) or 0.0, k)):
        if parts:
            parts.append(" · ")
        parts += [f"{key} pp: ", Badge(str(sweep[key]))]
    return parts


def _float_or_none(s: Any) -> float | None:
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


def _recipe_label(o: dict) -> str:
    src = o.get("recipe_source")
    return f"{o.get('recipe', '?')} {src}" if src else str(o.get("recipe", "?"))


def _tau(doc: dict, o: dict, name: str = "BARRIER_TAU_PP", default: float | None = 2.0) -> float | None:
    for src in (o.get("thresholds"), doc.get("thresholds")):
        if isinstance(src, dict) and isinstance(src.get(name), dict):
            v = _num(src[name].get("value"))
            if v is not None:
                return v
    return default


def _rows(o: dict, key: str = "rows") -> list[dict]:
    m = o.get("measured")
    rows = m.get(key) if isinstance(m, dict) else None
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


Column = tuple[str, Callable[[dict], Inline]]


def _table(rows: list[dict], columns: list[Column], css: str = "wide") -> Table:
    """Rows as a table; columns that are empty in every row are dropped."""
    cells = [[get(r) for _, get in columns] for r in rows]
    keep = [j for j in range(len(columns)) if any(row[j] not in ("–", None, "") for row in cells)]
    return Table([columns[j][0] for j in keep], [[row[j] for j in keep] for row in cells], css=css)


def _call(x: Any) -> str:
    """A three-way call: True / False / None (undetermined: the interval straddles the threshold)."""
    return "undetermined" if x is None else fmt(x)


def _g(key: str, f: Callable[[Any], str] = fmt) -> Callable[[dict], str]:
    return lambda r: f(r.get(key))


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool)) or (isinstance(v, dict) and "mean" in v)


def _generic_table(rows: list[dict]) -> Table:
    keys: list[str] = []
    for r in rows:
        keys += [k for k, v in r.items() if k not in keys and _is_scalar(v)]
    return _table(rows, [(k, _g(k)) for k in keys])


def _measured_generic(doc: dict, o: dict, m: dict) -> list:
    out: list = []
    scalars = [[k, fmt(v)] for k, v in m.items() if _is_scalar(v)]
    if scalars:
        out.append(Table(["quantity", "value"], scalars))
    for k, v in m.items():
        if isinstance(v, list) and v and all(isinstance(r, dict) for r in v):
            out += [Heading(4, k), _generic_table(v)]
    return out


def _outcome_section(doc: dict, i: int, o: dict, figures: list[Fig]) -> list:
    claim, verdict = str(o.get("claim", "?")), str(o.get("verdict", "UNKNOWN"))
    blocks: list = [Heading(3, f"Claim {claim} — {o.get('title', '')} ({o.get('recipe', '?')})", _anchor(i, o)),
                    Para(["Verdict: ", Badge(verdict), f" — {o.get('summary', '')}"])]
    if verdict == INCONCLUSIVE:
        blocks.append(Para("INCONCLUSIVE: this run could not discriminate; it is not a pass.", note=True))
    info = [["recipe", _recipe_label(o)], ["scale", fmt(o.get("scale"))], ["replicates", fmt(o.get("replicates"))],
            ["rewinds k", fmt(o.get("rewinds"))], ["wall time", _wall(o.get("wall_time_s"))],
            ["τ sensitivity (1 / 2 / 3 pp)", _tau_cell(o)],
            ["config hashes", ", ".join(str(h)[:12] for h in o.get("config_hashes") or []) or "–"]]
    blocks.append(Table(["field", "value"], info))
    if "(ours)" in str(o.get("recipe_source", "")):
        blocks.append(Para(f"The recipe {o.get('recipe')} is this project's own choice (ours), not the paper's.",
                           note=True))
    effect = o.get("effect") or {}
    if isinstance(effect, dict) and effect:
        blocks += [Heading(4, "Effect sizes"), Table(["effect", "value"], [[k, fmt(v)] for k, v in effect.items()])]
    th = o.get("thresholds") or {}
    if isinstance(th, dict) and th:
        rows = [[name, fmt(t.get("value")), str(t.get("unit", "")), str(t.get("source", "")), str(t.get("meaning", ""))]
                for name, t in th.items() if isinstance(t, dict)]
        blocks += [Heading(4, "Thresholds used"), Table(["threshold", "value", "unit", "source", "meaning"], rows)]
    choices = o.get("choices") or []
    if choices:
        blocks += [Heading(4, "Choices (ours unless a source is named)"), Bullets([str(c) for c in choices])]
    m = o.get("measured")
    blocks.append(Heading(4, "Measured"))
    if not isinstance(m, dict) or not m:
        blocks.append(Para("No measurements recorded for this outcome (e.g. a training run diverged); "
                           "no figure is drawn.", note=True))
    else:
        spec = _claims().get(claim)
        blocks += spec.tables(doc, o, m) if spec is not None else _measured_generic(doc, o, m)
        shown = spec.tabulated if spec is not None else None
        if shown is not None:
            rest = [k for k in m if k not in shown and not _is_scalar(m[k])]
            if rest:
                blocks.append(Para(f"Also in results.json (not tabulated here): {', '.join(rest)}."))
    if figures:
        blocks.append(Heading(4, "Figures"))
        blocks += figures
    return blocks


def _build(doc: dict, run_id: str, figures: dict[int, list[Fig]], figure_errors: list[str]) -> list:
    meta = doc.get("meta") or {}
    outcomes = doc.get("outcomes") or []
    summary = doc.get("summary") or summarize(outcomes)
    blocks: list = [Heading(1, f"lth-checks report: {run_id}"),
                    Para("Re-verification of the claims of \"Unmasking the Lottery Ticket Hypothesis\" "
                         "(Paul et al., ICLR 2023) by iterative magnitude pruning experiments.")]
    meta_keys = [("scale", "scale"), ("started_at", "started (UTC)"), ("wall_time_s", "wall time"),
                 ("device", "device"), ("cuda_device_name", "CUDA device"), ("lth_checks_version", "lth-checks"),
                 ("torch_version", "torch"), ("numpy_version", "numpy"), ("python_version", "Python"),
                 ("platform", "platform"), ("git_commit", "git commit"), ("git_dirty", "uncommitted changes"),
                 ("command", "command")]
    rows = [[label, _wall(meta.get(k)) if k == "wall_time_s" else fmt(meta.get(k))] for k, label in meta_keys
            if k in meta]
    rows += [[f"option {k}", json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v]
             for k, v in (meta.get("options") or {}).items()]
    blocks += [Heading(2, "Run"), Table(["field", "value"], rows)]
    counts: list = []
    for v in (*VERDICTS, *[k for k in summary if k not in VERDICTS and k != "total"]):
        if counts:
            counts.append(" · ")
        counts += [Badge(v), f" {summary.get(v, 0)}"]
    regime = meta.get("regime") or ((meta.get("options") or {}).get("plan") or {}).get("regime")
    blocks.append(Heading(2, "Verdicts"))
    if regime:
        blocks.append(Para(f"Regime: {regime}."))
    blocks += [Para(["Outcomes: ", *counts, f" (total {summary.get('total', len(outcomes))})"]),
               Para("PASS: the prediction held. FAIL: it was contradicted. INCONCLUSIVE: the run could not "
                    "discriminate (too few replicates, one class absent, a divergence, a saturated grid); "
                    "INCONCLUSIVE is not a pass.", note=True)]
    order_of = {c: n for n, c in enumerate(_claims())}

    def sort_key(i: int) -> tuple:
        claim = str(outcomes[i].get("claim"))
        return order_of.get(claim, len(order_of)), claim, str(outcomes[i].get("recipe")), i

    order = sorted(range(len(outcomes)), key=sort_key)
    vt_rows, attrs = [], []
    for i in order:
        o = outcomes[i]
        v = str(o.get("verdict", "UNKNOWN"))
        vt_rows.append([Link(str(o.get("claim", "?")), f"#{_anchor(i, o)}"), _recipe_label(o), Badge(v),
                        str(o.get("summary", "")), _resolution_cell(o), _tau_cell(o), _wall(o.get("wall_time_s"))])
        attrs.append({"class": f"outcome row-{v.lower()}", "data-claim": o.get("claim", "?"),
                      "data-recipe": o.get("recipe", "?"), "data-verdict": v})
    blocks.append(Table(["claim", "recipe", "verdict", "summary", "resolution: 1 example; threshold and distance "
                         "to it in examples", "τ = 1 / 2 / 3 pp", "wall time"], vt_rows, attrs))
    if figure_errors:
        blocks += [Heading(3, "Figures that could not be drawn"), Bullets(figure_errors)]
    blocks.append(Heading(2, "Outcomes"))
    for i in order:
        blocks += _outcome_section(doc, i, outcomes[i], figures.get(i, []))
    blocks += _method_section()
    th = doc.get("thresholds") or {}
    if th:
        blocks += [Heading(2, "All thresholds"),
                   Table(["threshold", "value", "unit", "source", "meaning"],
                         [[n, fmt(t.get("value")), str(t.get("unit", "")), str(t.get("source", "")),
                           str(t.get("meaning", ""))] for n, t in th.items() if isinstance(t, dict)])]
    return blocks


def _resolution_cell(o: dict) -> str:
    """'0.28 pp; eps 0.5 pp = 1.8 ex, median distance 2.1 ex; ...' from the verdict's effect."""
    e = o.get("effect") or {}
    res = _num(e.get("resolution_pp"))
    if res is None:
        return "–"
    parts = [f"{res:.3g} pp ({e.get('examples', '?')} examples)"]
    for name, d in (e.get("distance_to_thresholds") or {}).items():
        if isinstance(d, dict):
            parts.append(f"{name}: {fmt(_num(d.get('threshold_examples')), 3)} ex, median distance "
                         f"{fmt(_num(d.get('median_distance_examples')), 3)} ex, typical ± "
                         f"{fmt(_num(d.get('typical_half_width_pp')), 3)} pp")
    return "; ".join(parts)


def _method_section() -> list:
    """How verdicts are decided, with the measured error rates of every rule (lth_checks/verdict_rates.json)."""
    from .stats import BOOTSTRAP_RESAMPLES

    blocks: list = [Heading(2, "Method: intervals, power and measured error rates of the rules"),
                    Para(f"Every comparison a verdict hinges on (a level's error vs dense + ε, one-shot vs IMP, a "
                         f"path's barrier vs τ, the chain vs IMP) gets a 95% interval from a paired bootstrap over "
                         f"the test examples ({BOOTSTRAP_RESAMPLES:,} resamples, the same resample for every network "
                         "and every path point); with 3 or more replicates the seeds are resampled as well, with "
                         "fewer the interval holds the test-set noise only. A call is determined when its interval "
                         "lies on one side of its threshold, and verdicts rest on determined calls only. A verdict "
                         "whose typical interval is wider than its threshold is INCONCLUSIVE ('underpowered') with "
                         "the number of test examples (or replicates) that would resolve it, scaled from the "
                         "measured interval width. The per-example correctness behind every interval is in "
                         "evidence.json.gz; `lth-checks report --from-evidence` re-decides a run from it.")]
    path = Path(__file__).with_name("verdict_rates.json")
    if path.exists():
        rates = json.loads(path.read_text())
        blocks.append(Para(f"Measured error rates of each rule on synthetic data (trials per cell in the table; "
                           f"{rates.get('description', '')}). Required: FAIL ≤ 5% where the claim holds, PASS "
                           "≤ 5% where it is false, each ≤ 5% on pure noise."))
        def cell(r: dict, w: str) -> str:
            return f"{100 * r[w]['PASS']:.1f}% / {100 * r[w]['FAIL']:.1f}%"

        blocks.append(Table(["claim", "sample size", "trials", "holds: PASS / FAIL", "false: PASS / FAIL",
                             "noise: PASS / FAIL"],
                            [[r["claim"], r["size"], str(r.get("trials", "")),
                              *[cell(r, w) for w in ("holds", "false", "noise")]] for r in rates.get("rows", [])]))
    return blocks


def _render(run_dir: Path, doc: dict) -> None:
    figures, errors = _make_figures(doc, run_dir / FIGURES_DIR)
    blocks = _build(doc, run_dir.name, figures, errors)
    _atomic_write(run_dir / "report.md", _to_markdown(blocks).encode("utf-8"))
    _atomic_write(run_dir / "report.html",
                  _to_html(blocks, f"lth-checks report {run_dir.name}", run_dir).encode("utf-8"))


# ---------------------------------------------------------------------------------------- figures


def _save(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fig.savefig(tmp, format="png", metadata={"Software": None})
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _make_figures(doc: dict, figdir: Path) -> tuple[dict[int, list[Fig]], list[str]]:
    """Draw every figure the data allows; returns {outcome index: [Fig]} and the errors of failed ones."""
    outcomes = [o if isinstance(o, dict) else {} for o in doc.get("outcomes") or []]
    figures: dict[int, list[Fig]] = {}
    errors: list[str] = []
    used: set[str] = set()

    def name_for(stem: str, recipe: str) -> str:
        base = f"{stem}_{_safe_name(recipe)}"
        name, n = base, 1
        while name in used:
            n += 1
            name = f"{base}-{n}"
        used.add(name)
        return f"{name}.png"

    def draw(stem: str, caption: str, recipe: str, owners: list[int], make: Callable[[], Any]) -> None:
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
            figures.setdefault(i, []).append(Fig(f"{FIGURES_DIR}/{fname}", f"{caption} ({recipe})"))

    claims = _claims()
    for i, o in enumerate(outcomes):
        spec = claims.get(str(o.get("claim")))
        if spec is not None and isinstance(o.get("measured"), dict):
            for f in spec.figures(doc, o):
                draw(f.stem, f.caption, str(o.get("recipe", "?")), [i], f.draw)
    for spec in claims.values():  # figures drawn from several outcomes (claim parts shown together)
        for f, recipe, owners in spec.shared_figures(doc, outcomes):
            draw(f.stem, f.caption, recipe, owners, f.draw)
    return figures, errors
