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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np

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

CLAIM_ORDER = {"1": 0, "2": 1, "3a": 2, "3b": 3, "3c": 4, "3d": 5, "4": 6}


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


def _measured_claim1(doc: dict, o: dict, m: dict) -> list:
    tau = _tau(doc, o)
    floor = _tau(doc, o, "HIGH_SPARSITY_DENSITY", None)

    def agrees(r: dict) -> str:
        b = _ci(r.get("barrier_pp"))
        if b is None or not isinstance(r.get("matching"), bool):
            return "–"
        lo, hi = b[1], b[2]
        if lo is not None and hi is not None:  # a paired-bootstrap interval: only determined calls agree or not
            connected = True if hi <= tau else False if lo > tau else None
            return "undetermined" if connected is None else fmt(r["matching"] == connected)
        return fmt(r["matching"] == (b[0] <= tau))

    def pooled(r: dict) -> str:
        d = _num(r.get("next_density"))
        return "–" if d is None or floor is None else fmt(d <= floor + 1e-12)

    def dense(r: dict) -> str:
        d, e = _num(r.get("dense_error_pp")), _num(r.get("eps_pp"))
        return "–" if d is None else (f"{d:.3g} + {e:.3g}" if e is not None else f"{d:.3g}")

    cols: list[Column] = [
        ("rewind k", _g("rewind")),
        ("L → L+1", lambda r: f"{r.get('level')} → {r['level'] + 1}" if isinstance(r.get("level"), int) else "–"),
        ("alive L", _g("density", fmt_pct)), ("alive L+1", _g("next_density", fmt_pct)),
        ("error L (%)", _g("error_pp", fmt_ci)), ("error L+1 (%)", _g("next_error_pp", fmt_ci)),
        ("dense + ε (%)", dense), ("E(L+1) − dense (pp)", _g("excess_pp", fmt_ci)),
        ("L+1 matching", _g("matching", _call)),
        ("barrier test (pp)", _g("barrier_pp", fmt_ci)), ("barrier train (pp)", _g("barrier_train_pp", fmt_ci)),
        (f"barrier ≤ τ={tau:g} agrees", agrees), ("in high-sparsity pool", pooled)]
    return [Para("Errors in percent (mean over replicates, with a t-interval only from 3 replicates); "
                 "E(L+1) − dense and barriers in percentage points with 95% paired-bootstrap intervals, which "
                 "decide the calls: 'undetermined' where the interval straddles ε or τ."), _table(_rows(o), cols)]


_KIND = {"sgd_noise": "SGD noise (control)", "real_pair": "real pair L → L+1", "perturb": "perturbed"}


def _measured_claim2(doc: dict, o: dict, m: dict) -> list:
    cols: list[Column] = [
        ("rewind k", _g("rewind")), ("level L", _g("level")), ("alive", _g("density", fmt_pct)),
        ("L matching", _g("level_matching", _call)), ("error L (%)", _g("level_error_pp", fmt_ci)),
        ("kind", lambda r: _KIND.get(r.get("kind"), str(r.get("kind", "–")))), ("c (× r_L)", _g("c")),
        ("barrier test (pp)", _g("barrier_pp", fmt_ci)), ("r_L", _g("r_L", fmt_ci))]
    late = m.get("late_rewind")
    lead = [Para(f"Late rewind used for the verdict: k = {late}.")] if late is not None else []
    contrast = m.get("early_vs_late")
    if isinstance(contrast, dict) and contrast:
        lead.append(Para("Early vs late rewind (SGD noise and c ≤ 1, at τ = 2 pp; CLAIMS.md expects barriers at "
                         "k = 0 only): " + "; ".join(
                             f"k = {c.get('rewind')}: {c.get('established_barriers')} established barriers, "
                             f"{c.get('established_connected')} established connected, {c.get('undetermined')} "
                             "undetermined" for c in contrast.values() if isinstance(c, dict)) + "."))
    return lead + [_table(_rows(o), cols)]


def _measured_claim3(doc: dict, o: dict, m: dict) -> list:
    rows = _rows(o)
    cols: list[Column] = [
        ("seed", _g("seed")), ("level", _g("level")), ("alive", _g("density", fmt_pct)),
        ("λ_max", _g("top_eigenvalue")), ("Hessian trace", _g("trace")),
        ("p_max magnitude", _g("p_max_magnitude")), ("p_max random", _g("p_max_random")),
        ("p* magnitude", _g("p_star_magnitude")), ("p* random", _g("p_star_random")),
        ("p* random (top k only)", _g("p_star_random_top_k_only")),
        ("p* magnitude (trace tail)", _g("p_star_magnitude_trace_tail")),
        ("p* random (trace tail)", _g("p_star_random_trace_tail")),
        ("Rayleigh magnitude", _g("rayleigh_magnitude")), ("Rayleigh random", _g("rayleigh_random")),
        ("Rayleigh Gaussian", _g("rayleigh_gaussian"))]
    out: list = []
    if m.get("rewind") is not None:
        out.append(Para(f"Rewind k = {m['rewind']}; one row per (replicate seed, level)."))
    out.append(_table(rows, cols))
    tau = _tau(doc, o)
    sweeps = []
    ps: list[float] = []
    for r in rows:
        for strategy in ("magnitude", "random"):
            sweep = r.get(f"sweep_{strategy}")
            if isinstance(sweep, list):
                sweeps.append((r, strategy, {_num(x.get("p")): x for x in sweep if isinstance(x, dict)}))
                ps += [p for p in sweeps[-1][2] if p is not None and p not in ps]
    if sweeps:
        ps.sort()

        def cell(x: dict | None) -> str:
            if not x:
                return "–"
            b = _num(x.get("barrier_pp"))
            ok = x.get("matching") is True and b is not None and b <= tau
            text = f"{fmt(_num(x.get('test_error_pp')), 3)} / {fmt(_num(x.get('barrier_pp')), 3)}"
            return text + (" ✓" if ok else "")

        out.append(Para(f"One-shot sweeps: test error (%) / barrier to w_L (pp) per prune fraction p; ✓ marks "
                        f"matching and barrier ≤ τ = {tau:g} pp."))
        out.append(Table(["seed", "level", "strategy", *[f"p = {p:g}" for p in ps]],
                         [[fmt(r.get("seed")), fmt(r.get("level")), s, *[cell(by_p.get(p)) for p in ps]]
                          for r, s, by_p in sweeps], css="wide"))
    out += _theory_detail(rows)
    return out


def _theory_detail(rows: list[dict]) -> list:
    """Claim 3b's prediction per (seed, level): free dimensions d = (1 - p) * alive against d* ± its
    standard error at every p, the p* range, and whether the spectral density resolves d*."""
    theory = [(r, r["theory_random"]) for r in rows if isinstance(r.get("theory_random"), dict)]
    if not theory:
        return []
    ps = sorted({_num(pt.get("p")) for _, t in theory for pt in t.get("points", []) if _num(pt.get("p")) is not None})

    def cell(t: dict, p: float) -> str:
        pt = next((x for x in t.get("points", []) if _num(x.get("p")) == p), None)
        if pt is None:
            return "–"
        return f"{fmt(_num(pt.get('d')), 4)} / {fmt(_num(pt.get('d_star')), 4)} ± {fmt(_num(pt.get('d_star_se')), 2)}"

    return [Para("Theory (random pruning): free dimensions d = (1 − p)·alive / predicted d* ± SE (top-k exact, "
                 "bulk by stochastic Lanczos quadrature); p* is the largest p with d ≥ d*; its range moves d* by "
                 "2 SE; 'resolved' says whether the density's quadrature resolves d* at every p."),
            Table(["seed", "level", "alive", "p* [range]", "p_max", "resolved", *[f"p = {p:g}" for p in ps]],
                  [[fmt(r.get("seed")), fmt(r.get("level")), fmt(t.get("alive")),
                    f"{fmt(r.get('p_star_random'))} [{fmt(t.get('p_star_low'))}, {fmt(t.get('p_star_high'))}]",
                    fmt(r.get("p_max_random")), "yes" if t.get("resolved") else "no", *[cell(t, p) for p in ps]]
                   for r, t in theory], css="wide")]


def _measured_claim3d(doc: dict, o: dict, m: dict) -> list:
    labels = {"target_level": "target level", "density": "alive fraction", "dense_error_pp": "dense error (%)",
              "eps_pp": "ε (pp)", "imp_error_pp": "IMP error at target (%)",
              "oneshot_error_pp": "one-shot error at target (%)"}
    rows = [[labels.get(k, k), fmt_pct(v) if k == "density" else fmt(v)] for k, v in m.items() if _is_scalar(v)]
    return [Table(["quantity", "value"], rows)]


def _measured_claim4(doc: dict, o: dict, m: dict) -> list:
    out: list = []
    scalars = [[k, fmt(v)] for k, v in m.items() if _is_scalar(v)]
    if scalars:
        out.append(Table(["quantity", "value"], scalars))
    imp_cols: list[Column] = [
        ("level L", _g("level")), ("alive L", _g("density", fmt_pct)),
        ("‖w_L − P(w_L)‖ / ‖w_L‖", _g("relative_projection_length")), ("threshold t_L", _g("threshold")),
        ("error w_L (%)", _g("solution_test_error", fmt_err)),
        ("error P(w_L) (%)", _g("projected_test_error", fmt_err)),
        ("refill below t_L", _g("refill_fraction_below_threshold")),
        ("new small-weight share", _g("new_small_weight_share"))]
    if _rows(o, "imp"):
        out += [Heading(4, "With retraining (IMP, first replicate)"), _table(_rows(o, "imp"), imp_cols)]
    chain_cols: list[Column] = [
        ("step", _g("step")), ("alive", _g("density", fmt_pct)),
        ("relative projection length", _g("relative_projection_length")),
        ("error projected (%)", _g("projected_test_error", fmt_err)),
        ("train error projected (%)", _g("projected_train_error", fmt_err))]
    if _rows(o, "chain"):
        out += [Heading(4, "Without retraining (chain, first replicate)"), _table(_rows(o, "chain"), chain_cols)]
    if _rows(o, "per_replicate"):
        out += [Heading(4, "Verdict inputs per replicate"), _generic_table(_rows(o, "per_replicate"))]
    return out


def _measured_generic(doc: dict, o: dict, m: dict) -> list:
    out: list = []
    scalars = [[k, fmt(v)] for k, v in m.items() if _is_scalar(v)]
    if scalars:
        out.append(Table(["quantity", "value"], scalars))
    for k, v in m.items():
        if isinstance(v, list) and v and all(isinstance(r, dict) for r in v):
            out += [Heading(4, k), _generic_table(v)]
    return out


_MEASURED = {"1": _measured_claim1, "2": _measured_claim2, "3a": _measured_claim3, "3b": _measured_claim3,
             "3c": _measured_claim3, "3d": _measured_claim3d, "4": _measured_claim4}
_SHOWN = {"1": {"rows"}, "2": {"rows", "late_rewind"}, "3a": {"rows", "rewind"}, "3b": {"rows", "rewind"},
          "3c": {"rows", "rewind"}, "4": {"imp", "chain", "per_replicate"}}


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
        render = _MEASURED.get(claim, _measured_generic)
        blocks += render(doc, o, m)
        shown = _SHOWN.get(claim)
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
    def sort_key(i: int) -> tuple:
        claim = str(outcomes[i].get("claim"))
        return CLAIM_ORDER.get(claim, 99), claim, str(outcomes[i].get("recipe")), i

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

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def _new_figure(width: float = 7.5, height: float = 4.8):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _density_axis(ax, densities: Iterable[float]) -> None:
    """Log x of alive fraction, decreasing to the right, ticks at the measured densities in percent."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ds = sorted({round(d, 12) for d in densities if d and d > 0}, reverse=True)
    ax.set_xscale("log")
    if ds:
        step = max(1, math.ceil(len(ds) / 9))
        ax.xaxis.set_major_locator(FixedLocator(ds[::step]))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlim(max(ds) * 1.12, min(ds) / 1.12)  # decreasing density left to right
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:.3g}%"))
    ax.set_xlabel("alive fraction of prunable weights (log scale; sparser to the right)")
    ax.grid(True, alpha=0.3)


def _errorbar(ax, xs, cis, **kw):
    ys = [c[0] for c in cis]
    lo = [c[0] - c[1] if c[1] is not None else 0.0 for c in cis]
    hi = [c[2] - c[0] if c[2] is not None else 0.0 for c in cis]
    return ax.errorbar(xs, ys, yerr=[lo, hi], capsize=3, **kw)


def _by(rows: list[dict], key: str) -> dict:
    out: dict = {}
    for r in rows:
        out.setdefault(r.get(key), []).append(r)
    return dict(sorted(out.items(), key=lambda kv: (kv[0] is None, kv[0] if isinstance(kv[0], (int, float)) else 0)))


def _fig_error_vs_density(doc: dict, o: dict):
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    rows = [r for r in _rows(o) if isinstance(r.get("level"), int)]
    fig = _new_figure()
    ax = fig.add_subplot()
    densities, plotted = [], False
    for i, (k, rs) in enumerate(_by(rows, "rewind").items()):
        color = _COLORS[i % len(_COLORS)]
        pts: dict[int, tuple[float, tuple]] = {}
        for r in rs:
            d, c = _num(r.get("density")), _ci(r.get("error_pp"))
            if d and c:
                pts.setdefault(r["level"], (d, c))
            d, c = _num(r.get("next_density")), _ci(r.get("next_error_pp"))
            if d and c:
                pts.setdefault(r["level"] + 1, (d, c))
        if not pts:
            continue
        levels = sorted(pts)
        xs = [pts[L][0] for L in levels]
        _errorbar(ax, xs, [pts[L][1] for L in levels], fmt="o-", color=color, ms=4, label=f"rewind k = {k}")
        densities += xs
        plotted = True
        base = next(((_num(r.get("dense_error_pp")), _num(r.get("eps_pp"))) for r in rs
                     if _num(r.get("dense_error_pp")) is not None), (None, None))
        if base[0] is not None:
            eps = base[1] or 0.0
            ax.axhspan(base[0], base[0] + eps, color=color, alpha=0.12, lw=0)
            ax.axhline(base[0] + eps, color=color, ls="--", lw=1)
    if not plotted:
        return None
    _density_axis(ax, densities)
    floor = _tau(doc, o, "HIGH_SPARSITY_DENSITY", None)
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


def _fig_barrier_vs_density(doc: dict, o: dict):
    from matplotlib.lines import Line2D

    rows = [r for r in _rows(o) if _num(r.get("next_density")) and _ci(r.get("barrier_pp"))]
    if not rows:
        return None
    tau = _tau(doc, o)
    fig = _new_figure()
    ax = fig.add_subplot()
    densities = []
    for i, (k, rs) in enumerate(_by(rows, "rewind").items()):
        color = _COLORS[i % len(_COLORS)]
        rs = sorted(rs, key=lambda r: -r["next_density"])
        xs = [r["next_density"] for r in rs]
        densities += xs
        cis = [_ci(r["barrier_pp"]) for r in rs]
        _errorbar(ax, xs, cis, fmt="-", color=color, label=f"rewind k = {k} (test)")
        for match, face in ((True, color), (False, "white")):
            sel = [(x, c[0]) for x, c, r in zip(xs, cis, rs) if r.get("matching") is match]
            if sel:
                ax.scatter(*zip(*sel), s=36, facecolors=face, edgecolors=color, zorder=3, linewidths=1.4)
        train = [(x, _ci(r.get("barrier_train_pp"))) for x, r in zip(xs, rs) if _ci(r.get("barrier_train_pp"))]
        if train:
            ax.plot([t[0] for t in train], [t[1][0] for t in train], ls=":", marker="x", ms=4, color=color, lw=1,
                    label=f"rewind k = {k} (training subset)")
    _density_axis(ax, densities)
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


def _fig_barrier_vs_c(doc: dict, o: dict):
    from matplotlib.lines import Line2D

    rows = [r for r in _rows(o) if _ci(r.get("barrier_pp")) and _num(r.get("c")) is not None]
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
    density = {r["level"]: _num(r.get("density")) for r in rows if isinstance(r.get("level"), int)}
    fig = _new_figure(8.0, 5.0)
    ax = fig.add_subplot()
    for i, level in enumerate(levels):
        color = _COLORS[i % len(_COLORS)]
        for k in [late, *others]:
            sel = [r for r in rows if r.get("level") == level and r.get("rewind") == k]
            pert = sorted((r for r in sel if r.get("kind") == "perturb"), key=lambda r: r["c"])
            if pert:
                _errorbar(ax, [r["c"] for r in pert], [_ci(r["barrier_pp"]) for r in pert], fmt="o",
                          ls=styles.get(k, "--"), color=color, ms=4)
            face = color if k == late else "white"
            for kind, marker in (("sgd_noise", "s"), ("real_pair", "*")):
                for r in sel:
                    if r.get("kind") == kind:
                        ax.scatter([r["c"]], [_ci(r["barrier_pp"])[0]], marker=marker, s=90 if marker == "*" else 45,
                                   facecolors=face, edgecolors=color, zorder=4, linewidths=1.2)
    tau = _tau(doc, o)
    ax.axhline(tau, color="black", ls="--", lw=1.2)
    handles = [Line2D([], [], color=_COLORS[i % len(_COLORS)], marker="o", ms=4,
                      label=f"level {L}" + (f" ({fmt_pct(density.get(L))} alive)" if density.get(L) else ""))
               for i, L in enumerate(levels)]
    handles += [Line2D([], [], color="grey", ls=styles[late], label=f"perturbed, rewind k = {late} (late)")]
    handles += [Line2D([], [], color="grey", ls=styles[k], label=f"perturbed, rewind k = {k}") for k in others]
    handles += [Line2D([], [], color="grey", marker="s", ls="", label="control: SGD noise only (c = 0)"),
                Line2D([], [], color="grey", marker="*", ms=10, ls="", label="control: real pair L → L+1 (c = 1)"),
                Line2D([], [], color="black", ls="--", label=f"τ = {tau:g} pp")]
    if others:
        handles.append(Line2D([], [], color="grey", marker="s", mfc="white", ls="",
                              label="open markers: other rewinds"))
    ax.legend(handles=handles, fontsize=7.5, loc="upper left", ncol=2)
    ax.set_xlabel("perturbation size c (units of r_L = ‖(m_L − m_{L+1}) ⊙ w_k‖)")
    ax.set_ylabel("error barrier to the unperturbed w_L (pp)")
    ax.set_title(f"Claim 2 ({o.get('recipe')}): barrier vs perturbation size")
    ax.grid(True, alpha=0.3)
    return fig


def _fig_flatness(doc: dict, oa: dict | None, ob: dict | None):
    rows_a = _rows(oa) if oa else []
    rows_b = _rows(ob) if ob else []
    rows_a, rows_b = rows_a or rows_b, rows_b or rows_a
    left = [r for r in rows_a
            if _num(r.get("top_eigenvalue")) is not None and _num(r.get("p_max_magnitude")) is not None]
    right = {s: [r for r in rows_b if _num(r.get(f"p_max_{s}")) is not None and _num(r.get(f"p_star_{s}")) is not None]
             for s in ("magnitude", "random")}
    if not left and not any(right.values()):
        return None
    recipe = (oa or ob or {}).get("recipe")
    fig = _new_figure(12.0, 5.0)
    ax1, ax2 = fig.subplots(1, 2)
    levels = sorted({r.get("level") for r in left if isinstance(r.get("level"), int)})
    if left:
        for i, level in enumerate(levels):
            sel = [r for r in left if r.get("level") == level]
            d = _num(sel[0].get("density"))
            label = f"level {level}" + (f" ({fmt_pct(d)} alive)" if d else "")
            ax1.scatter([r["top_eigenvalue"] for r in sel], [r["p_max_magnitude"] for r in sel], s=40,
                        color=_COLORS[i % len(_COLORS)], label=label, alpha=0.6)
            # the rank correlation is computed on per-level means over replicates: show them
            ax1.scatter([float(np.mean([r["top_eigenvalue"] for r in sel]))],
                        [float(np.mean([r["p_max_magnitude"] for r in sel]))], marker="X", s=110,
                        color=_COLORS[i % len(_COLORS)], edgecolor="black", linewidth=0.8,
                        label="level mean (used by ρ)" if i == 0 else None)
        eig = [r["top_eigenvalue"] for r in left]
        if min(eig) > 0 and max(eig) / min(eig) > 20:
            ax1.set_xscale("log")
        ax1.set_ylim(-0.05, 1.0)
        ax1.legend(fontsize=8, title="replicates × levels", title_fontsize=8)
        effect = (oa or {}).get("effect") or {}
        rho = _num(effect.get("spearman_rho"))
        extra = f"; Spearman ρ = {rho:+.2f}" + (f", p = {effect['p_value_one_sided']:.3g}"
                                                 if _num(effect.get("p_value_one_sided")) is not None else "") \
            if rho is not None else ""
        ax1.set_title(f"Claim 3a: sharpness vs prune limit{extra}", fontsize=10)
    else:
        ax1.text(0.5, 0.5, "no Claim 3a data", ha="center", va="center", transform=ax1.transAxes)
    ax1.set_xlabel("top Hessian eigenvalue λ_max of the training loss at w_L")
    ax1.set_ylabel("measured p_max, magnitude pruning (fraction)")
    ax1.grid(True, alpha=0.3)
    tol = _tau(doc, ob or oa or {}, "P_STAR_TOLERANCE", None)
    ax2.plot([0, 1], [0, 1], color="black", lw=1, label="y = x")
    if tol is not None:
        ax2.fill_between([0, 1], [-tol, 1 - tol], [tol, 1 + tol], color="grey", alpha=0.15, lw=0,
                         label=f"± {tol:g} tolerance (Claim 3b)")
    for (s, marker, color, dx) in (("magnitude", "o", _COLORS[0], -0.01), ("random", "^", _COLORS[3], 0.01)):
        sel = right[s]
        if sel:
            ax2.scatter([r[f"p_max_{s}"] + dx for r in sel], [r[f"p_star_{s}"] for r in sel], marker=marker, s=40,
                        color=color, alpha=0.8, label=f"{s} pruning")
    if any(right.values()):
        ax2.set_xlim(-0.05, 1.0)
        ax2.set_ylim(-0.05, 1.0)
        ax2.set_aspect("equal")
        ax2.legend(fontsize=8, loc="lower right")
        ax2.set_title("Claim 3b: predicted p* vs measured p_max", fontsize=10)
    else:
        ax2.text(0.5, 0.5, "no Claim 3b data", ha="center", va="center", transform=ax2.transAxes)
    ax2.set_xlabel("measured p_max (largest matching and connected one-shot fraction)")
    ax2.set_ylabel("predicted p* (quadratic sublevel-set theory)")
    ax2.grid(True, alpha=0.3)
    fig.suptitle(f"Claim 3 ({recipe}): flatness and the prune fraction per level")
    return fig


def _fig_small_weights(doc: dict, o: dict):
    m = o.get("measured") or {}
    hists = m.get("histograms") if isinstance(m.get("histograms"), dict) else {}
    good = {}
    for key, h in hists.items():
        lvl = _float_or_none(key)
        if isinstance(h, dict) and isinstance(h.get("edges"), list) and len(h["edges"]) >= 2 and lvl is not None:
            good[int(lvl)] = h
    imp = [r for r in _rows(o, "imp") if _num(r.get("density"))]
    chain = [r for r in _rows(o, "chain") if _num(r.get("density"))]
    if not good and not imp and not chain:
        return None
    import numpy as np

    shown = sorted(good)
    if len(shown) > 4:
        shown = [shown[int(round(j))] for j in np.linspace(0, len(shown) - 1, 4)]
    fig = _new_figure(13.0, 8.0 if shown and (imp or chain) else 4.6)
    rows_n = (1 if shown else 0) + (1 if imp or chain else 0)
    grid = fig.add_gridspec(rows_n, max(len(shown), 2) * 2)
    by_level = {r.get("level"): r for r in imp}
    width = max(len(shown), 2) * 2
    if shown:
        span = width // len(shown)
        for j, level in enumerate(shown):
            ax = fig.add_subplot(grid[0, j * span:(j + 1) * span])
            h = good[level]
            edges = np.asarray([e if _num(e) is not None else 0.0 for e in h["edges"]], float)
            for key, color, label in (("projected", _COLORS[0], "P(w_L): projection survivors"),
                                      ("retrained", _COLORS[3], "w_{L+1}: after retraining")):
                counts = h.get(key)
                if isinstance(counts, list) and len(counts) == len(edges) - 1:
                    ax.stairs([c or 0 for c in counts], edges, color=color, lw=1.4, label=label,
                              fill=key == "projected", alpha=0.35 if key == "projected" else 1.0)
            t = _num((by_level.get(level) or {}).get("threshold"))
            if t is not None:
                ax.axvline(t, color="black", ls="--", lw=1, label="threshold t_L")
            d = _num((by_level.get(level) or {}).get("density"))
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
        for data, label, color, marker in ((imp_x, "with retraining (IMP)", _COLORS[2], "o"),
                                           (chain_x, "without retraining (chain)", _COLORS[1], "s")):
            pts = [(x, _num(row.get("relative_projection_length"))) for x, row in data]
            pts = [p for p in pts if p[1] is not None]
            if pts:
                ax_len.plot(*zip(*pts), marker=marker, color=color, label=label)
            pts = [(x, 100 * _num(row.get("projected_test_error"))) for x, row in data
                   if _num(row.get("projected_test_error")) is not None]
            if pts:
                ax_err.plot(*zip(*pts), marker=marker, color=color, label=f"projected, {label}")
        sol = [(x, 100 * _num(row.get("solution_test_error"))) for x, row in imp_x
               if _num(row.get("solution_test_error")) is not None]
        if sol:
            ax_err.plot(*zip(*sol), marker="o", ls=":", color=_COLORS[2], mfc="white",
                        label="IMP solution w_L before its projection")
        for ax in (ax_len, ax_err):
            _density_axis(ax, densities)
            ax.set_xlabel("alive fraction after the projection (log scale; sparser to the right)")
            ax.legend(fontsize=8)
        ax_len.set_ylabel("relative projection length ‖w − P(w)‖ / ‖w‖")
        ax_len.set_title("projection length per 20% cut", fontsize=10)
        ax_err.set_ylabel("test error (%)")
        ax_err.set_title("error of the projected network (before any retraining)", fontsize=10)
    fig.suptitle(f"Claim 4 ({o.get('recipe')}): retraining creates new small weights")
    return fig


def _save(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fig.savefig(tmp, format="png", metadata={"Software": None})
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


_FIGURES = {
    "fig1_error_vs_density": ("1", _fig_error_vs_density,
                              "Figure 1: test error vs alive fraction per rewind, matching band and 95% intervals"),
    "fig2_barrier_vs_density": ("1", _fig_barrier_vs_density,
                                "Figure 2: successive-level error barrier vs alive fraction, with τ"),
    "fig3_barrier_vs_perturbation": ("2", _fig_barrier_vs_c,
                                     "Figure 3: barrier vs perturbation size c per level, with SGD-noise and "
                                     "real-pair controls"),
    "fig5_small_weights": ("4", _fig_small_weights,
                           "Figure 5: |w| histograms before and after retraining; projection length and projected "
                           "error with and without retraining"),
}
_FIG4 = ("fig4_flatness", "Figure 4: top Hessian eigenvalue vs measured p_max; predicted p* vs measured p_max")


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

    for i, o in enumerate(outcomes):
        for stem, (claim, fn, caption) in _FIGURES.items():
            if str(o.get("claim")) == claim and isinstance(o.get("measured"), dict):
                draw(stem, caption, str(o.get("recipe", "?")), [i], lambda fn=fn, o=o: fn(doc, o))
    recipes = list(dict.fromkeys(str(o.get("recipe", "?")) for o in outcomes))
    for recipe in recipes:
        a = [i for i, o in enumerate(outcomes) if o.get("recipe") == recipe and o.get("claim") == "3a"
             and _rows(o)]
        b = [i for i, o in enumerate(outcomes) if o.get("recipe") == recipe and o.get("claim") == "3b"
             and _rows(o)]
        for j in range(max(len(a), len(b))):
            ia, ib = (a[j] if j < len(a) else None), (b[j] if j < len(b) else None)
            owners = [i for i in (ia, ib) if i is not None]
            draw(_FIG4[0], _FIG4[1], recipe, owners,
                 lambda ia=ia, ib=ib: _fig_flatness(doc, None if ia is None else outcomes[ia],
                                                    None if ib is None else outcomes[ib]))
    return figures, errors
