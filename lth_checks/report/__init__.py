"""Reports of a claims run: `reports/<run-id>/` with results.json, report.md, a self-contained
report.html, PNG figures and the evidence archive.

`write_report(outcomes, meta)` writes a run folder and points `reports/latest` at it; `rebuild(run_dir)`
renders it again from results.json alone (no training). Both render from the JSON as read back from
disk, so a rebuild reproduces a fresh report byte for byte.

The package, by what it does: `results` (the results.json schema and its validation, run metadata,
JSON I/O, run folders and `latest`), `tables` (the Table and Figure that claims' modules return, and
the formatting helpers they use), `render` (figures, and the Markdown and HTML templates under
`templates/`), `compare` (`lth-checks report --compare`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from .. import thresholds as T
from .render import render
from .results import (
    FAIL,
    FIGURES_DIR,
    INCONCLUSIVE,
    LATEST,
    PASS,
    RESULTS_FILE,
    RESULTS_SCHEMA,
    SCHEMA_FILE,
    VERDICTS,
    ReportWarning,
    SchemaUnavailable,
    atomic_write,
    dumps,
    load_results,
    new_run_dir,
    resolve_run_dir,
    run_metadata,
    summarize,
    to_jsonable,
    update_latest,
    validate_results,
)
from .tables import Figure, Table, fmt, fmt_ci, fmt_err, fmt_pct

__all__ = ["FAIL", "FIGURES_DIR", "INCONCLUSIVE", "LATEST", "PASS", "RESULTS_FILE", "RESULTS_SCHEMA", "SCHEMA_FILE",
           "VERDICTS", "Figure", "ReportWarning", "SchemaUnavailable", "Table", "fmt", "fmt_ci", "fmt_err", "fmt_pct",
           "load_results",
           "rebuild", "resolve_run_dir", "run_metadata", "summarize", "to_jsonable", "validate_results",
           "write_report"]


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
    try:
        errors = validate_results(doc)
    except SchemaUnavailable as e:
        warnings.warn(str(e), ReportWarning, stacklevel=2)
        errors = []
    if errors:
        warnings.warn(f"results do not match RESULTS_SCHEMA: {'; '.join(errors[:5])}", ReportWarning, stacklevel=2)
    run_dir = new_run_dir(root, run_id, str(meta.get("scale") or "run"))
    atomic_write(run_dir / RESULTS_FILE, dumps(doc).encode("utf-8"))
    if evidence:  # per-example evidence, to re-decide without weights (lth-checks report --from-evidence)
        from ..archive import ARCHIVE_FILE, write_archive

        write_archive(run_dir / ARCHIVE_FILE, meta, evidence)
    render(run_dir, load_results(run_dir))
    update_latest(root, run_dir)
    return run_dir


def rebuild(run_dir: str | Path) -> Path:
    """Render report.md, report.html and the figures again from the run's results.json (no training)."""
    run_dir = resolve_run_dir(run_dir)
    doc = load_results(run_dir)
    figdir = run_dir / FIGURES_DIR
    if figdir.is_dir():
        for old in figdir.glob("fig*.png"):
            old.unlink()
    render(run_dir, doc)
    return run_dir
