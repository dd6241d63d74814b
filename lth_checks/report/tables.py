"""What a claim's report section is made of, and the helpers claim modules build it with.

A claim's `tables(doc, outcome, measured)` returns `Table`s (title, columns, rows of strings, a note
saying how to read them); the report draws its `FigureSpec`s into `Figure`s (file, caption). Both are
plain data: the Markdown and the HTML templates (lth_checks/report/templates/) render the same
objects. The formatting helpers turn results.json values (numbers, {mean, lo, hi} intervals, None)
into cell text, so that every claim prints numbers the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Table:
    """A table of a claim's section: an optional title (a small heading) and note (read before the
    rows), column names and rows of cell text. A table without rows shows its title and note only."""

    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    title: str = ""
    note: str = ""


@dataclass(frozen=True)
class Figure:
    """A drawn figure: its PNG relative to the run folder, and its caption."""

    path: str
    caption: str


# ------------------------------------------------------------------------------------ values

def num(x: Any) -> float | None:
    """A finite float, or None (bools, strings, NaN and None are no numbers)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def ci(x: Any) -> tuple[float, float | None, float | None] | None:
    """(mean, lo, hi) of a mean_ci dict (or a bare number); None when there is no finite mean."""
    if isinstance(x, dict):
        m = num(x.get("mean"))
        return None if m is None else (m, num(x.get("lo")), num(x.get("hi")))
    m = num(x)
    return None if m is None else (m, None, None)


def float_or_none(s: Any) -> float | None:
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


def is_scalar(v: Any) -> bool:
    """A value that fits one cell: a number, a string, None, or an interval {mean, lo, hi}."""
    return v is None or isinstance(v, (str, int, float, bool)) or (isinstance(v, dict) and "mean" in v)


def rows(o: dict, key: str = "rows") -> list[dict]:
    """The list of dict rows `o["measured"][key]` ([] where absent)."""
    m = o.get("measured")
    found = m.get(key) if isinstance(m, dict) else None
    return [r for r in found if isinstance(r, dict)] if isinstance(found, list) else []


def threshold(doc: dict, o: dict, name: str = "BARRIER_TAU_PP", default: float | None = 2.0) -> float | None:
    """A threshold's value as the outcome (else the run) recorded it."""
    for src in (o.get("thresholds"), doc.get("thresholds")):
        if isinstance(src, dict) and isinstance(src.get(name), dict):
            v = num(src[name].get("value"))
            if v is not None:
                return v
    return default


# ---------------------------------------------------------------------------------- formatting

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
    """'mean [lo, hi]' (3 significant digits), or the mean alone where there is no interval."""
    c = ci(x)
    if c is None:
        return "–"
    m, lo, hi = (None if v is None else v * scale for v in c)
    text = f"{m:.3g}"
    if lo is not None and hi is not None:
        text += f" [{lo:.3g}, {hi:.3g}]"
    return text


def fmt_pct(x: Any) -> str:
    """A fraction in percent: 0.262 -> '26.2%'."""
    v = num(x)
    return "–" if v is None else f"{100 * v:.3g}%"


def fmt_err(x: Any) -> str:
    """An error given as a fraction, printed in percent (without the sign)."""
    v = num(x)
    return "–" if v is None else f"{100 * v:.3g}"


def fmt_wall(x: Any) -> str:
    v = num(x)
    if v is None:
        return "–"
    return f"{v:.1f} s" if v < 120 else f"{v / 60:.1f} min"


def call(x: Any) -> str:
    """A three-way call: True / False / None (undetermined: the interval straddles the threshold)."""
    return "undetermined" if x is None else fmt(x)


# ---------------------------------------------------------------------------------------- tables

Column = tuple[str, Callable[[dict], str]]  # (header, cell text of a row)


def get(key: str, f: Callable[[Any], str] = fmt) -> Callable[[dict], str]:
    """A column's cell function: row[key] formatted by f."""
    return lambda r: f(r.get(key))


def table(rows_: list[dict], columns: list[Column], title: str = "", note: str = "") -> Table:
    """Rows as a table; columns that are empty in every row are dropped."""
    cells = [[cell(r) for _, cell in columns] for r in rows_]
    keep = [j for j in range(len(columns)) if any(row[j] not in ("–", None, "") for row in cells)]
    return Table([columns[j][0] for j in keep], [[row[j] for j in keep] for row in cells], title, note)


def generic_table(rows_: list[dict], title: str = "", note: str = "") -> Table:
    """Every scalar key of the rows as a column."""
    keys: list[str] = []
    for r in rows_:
        keys += [k for k, v in r.items() if k not in keys and is_scalar(v)]
    return table(rows_, [(k, get(k)) for k in keys], title, note)


def measured_generic(measured: dict) -> list[Table]:
    """A claim's measured values without tables of its own: the scalars, then each list of rows."""
    out: list[Table] = []
    scalars = [[k, fmt(v)] for k, v in measured.items() if is_scalar(v)]
    if scalars:
        out.append(Table(["quantity", "value"], scalars))
    for k, v in measured.items():
        if isinstance(v, list) and v and all(isinstance(r, dict) for r in v):
            out.append(generic_table(v, title=k))
    return out
