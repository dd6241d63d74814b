"""Plotting helpers the claims' figures share (matplotlib `Figure` objects on the Agg canvas, so
neither pyplot nor the global backend is touched)."""

from __future__ import annotations

import math
from collections.abc import Iterable

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def new_figure(width: float = 7.5, height: float = 4.8):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def density_axis(ax, densities: Iterable[float]) -> None:
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


def errorbar(ax, xs, cis, **kw):
    """Points with asymmetric error bars from (mean, lo, hi) triples (a missing bound draws none)."""
    ys = [c[0] for c in cis]
    lo = [c[0] - c[1] if c[1] is not None else 0.0 for c in cis]
    hi = [c[2] - c[0] if c[2] is not None else 0.0 for c in cis]
    return ax.errorbar(xs, ys, yerr=[lo, hi], capsize=3, **kw)


def by(rows: list[dict], key: str) -> dict:
    """Rows grouped by `key`, groups sorted by their value (None last)."""
    out: dict = {}
    for r in rows:
        out.setdefault(r.get(key), []).append(r)
    return dict(sorted(out.items(), key=lambda kv: (kv[0] is None, kv[0] if isinstance(kv[0], (int, float)) else 0)))
