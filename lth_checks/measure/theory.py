"""The quadratic-model prune limit of CLAIMS.md Claim 3 (Larsen et al., ICLR 2022, as adapted by the paper).

Model: near a solution w_L the training loss is quadratic with Hessian eigenvalues
lambda_i, so the eps-sublevel set is an ellipsoid with semi-axes sqrt(2 eps / lambda_i).
A random d-dimensional subspace through a point at distance R from w_L meets it when

    d >= d*(eps, R) = sum_i lambda_i R^2 / (lambda_i R^2 + 2 eps).

Pruning a fraction p of the alive weights moves the point by R(p) = ||w_L - P_p(w_L)|| and
leaves d = (1 - p) * alive free dimensions, so the predicted limit is

    p* = max { p in grid : (1 - p) * alive >= d*(eps, R(p)) }.

Assumption: only a top-k spectrum is known; eigenvalues beyond it are taken as zero (and
non-positive ones contribute nothing). Every term is >= 0 and increasing in lambda_i, so
the d* computed here is a LOWER bound on the full-spectrum value and the p* derived from
it is an UPPER bound (optimistic). Note d* < k always, so p* >= 1 - k / alive on any grid
that reaches it: with k much smaller than alive the prediction saturates near p = 1.

Weights are ranked here by a small local selection (the project's pruning module is not
imported) that follows the same conventions as global pruning there, so with the same
seed and exclusions it removes the same weights: round-half-up count, global magnitude
(scores |w| in float32) or seeded uniform scores drawn on the CPU, the smallest scores
removed with ties broken by position in the alive vector (mask-key order, row-major
within a tensor). Names in ``exclude`` (e.g. an output layer the recipe never prunes)
are neither counted nor removed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch

from lth_checks.errors import ConfigError

Strategy = Literal["magnitude", "random"]

__all__ = [
    "PruneLimit",
    "PrunePoint",
    "d_star",
    "n_removed",
    "predicted_prune_limit",
    "projection_delta",
    "projection_distance",
    "removed_alive_indices",
]


def _check_eps(eps: float) -> float:
    eps = float(eps)
    if not (eps > 0 and math.isfinite(eps)):
        raise ConfigError(f"Sublevel-set tolerance eps must be a positive finite number, got {eps}.")
    return eps


def d_star(eigenvalues: npt.ArrayLike, eps: float, R: float | npt.ArrayLike) -> float | np.ndarray:
    """d*(eps, R) = sum_i lambda_i R^2 / (lambda_i R^2 + 2 eps), over the given eigenvalues.

    Non-positive eigenvalues contribute 0; eigenvalues not given are taken as 0 (so this is
    a lower bound on the full-spectrum value). ``R`` may be a scalar (returns a float) or
    an array (returns an array of its shape). Requires eps > 0 and finite R >= 0.
    """
    eps = _check_eps(eps)
    lam = np.asarray(eigenvalues, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(lam)):
        raise ConfigError("Eigenvalues for d* must be finite.")
    lam = np.clip(lam, 0.0, None)
    r = np.asarray(R, dtype=np.float64)
    if not np.all(np.isfinite(r)) or np.any(r < 0):
        raise ConfigError("Distances R for d* must be finite and >= 0.")
    x = lam * (r.reshape(-1, 1) ** 2)  # (len(R), k)
    out = (x / (x + 2.0 * eps)).sum(axis=1).reshape(r.shape)
    return float(out) if out.ndim == 0 else out


def n_removed(p: float, alive: int) -> int:
    """Number of weights a fraction p prunes from ``alive``: round(p * alive), halves rounded up.

    The 1e-9 guard makes 0.2 * 5 = 1.0000000000000002 and 0.5 * 3 = 1.5 behave as written.
    """
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"Prune fraction p must be in [0, 1], got {p}.")
    return int(math.floor(p * alive + 0.5 + 1e-9))


def _alive_values(
    weights: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor], exclude: Collection[str] = ()
) -> torch.Tensor:
    """Alive, non-excluded weights as one flat vector, in mask-key order, row-major within each tensor."""
    unknown = sorted(set(exclude) - set(mask))
    if unknown:
        raise ConfigError(f"Excluded name {unknown[0]!r} is not in the mask.")
    names = [n for n in mask if n not in exclude]
    if not names:
        raise ConfigError("The mask names no prunable (non-excluded) weight.")
    parts = []
    for name in names:
        m = mask[name]
        if name not in weights:
            raise ConfigError(f"No weight named {name!r} for mask entry.")
        w = weights[name]
        if m.dtype != torch.bool or m.shape != w.shape:
            raise ConfigError(f"Mask entry {name!r} must be a bool tensor of shape {tuple(w.shape)}.")
        parts.append(w.detach().reshape(-1)[m.to(w.device).reshape(-1)])
    return torch.cat(parts)


def removed_alive_indices(
    weights: Mapping[str, torch.Tensor],
    mask: Mapping[str, torch.Tensor],
    p: float,
    strategy: Strategy,
    seed: int = 0,
    exclude: Collection[str] = (),
) -> torch.Tensor:
    """Positions, in the flat alive non-excluded vector, of the round(p * alive) weights P_p removes.

    ``magnitude``: the smallest |w| globally. ``random``: the smallest of uniform scores drawn
    on the CPU from a generator seeded with ``seed`` (same removal on every device). Ties go
    to the lower position (stable sort).
    """
    vals = _alive_values(weights, mask, exclude)
    n = n_removed(p, vals.numel())
    if strategy == "magnitude":
        scores = vals.abs().float()
    elif strategy == "random":
        scores = torch.rand(vals.numel(), generator=torch.Generator().manual_seed(seed)).to(vals.device)
    else:
        raise ConfigError(f"Unknown pruning strategy {strategy!r}; use 'magnitude' or 'random'.")
    return torch.sort(scores, stable=True).indices[:n]


def projection_delta(
    weights: Mapping[str, torch.Tensor],
    mask: Mapping[str, torch.Tensor],
    p: float,
    strategy: Strategy,
    seed: int = 0,
    exclude: Collection[str] = (),
) -> dict[str, torch.Tensor]:
    """w - P_p(w) as full-shape tensors (one per mask key): the removed weights, zero elsewhere.

    This is the pruning direction of Claim 3(c); weights at already-pruned coordinates
    are ignored (they are zero in a masked solution).
    """
    idx = removed_alive_indices(weights, mask, p, strategy, seed, exclude)
    vals = _alive_values(weights, mask, exclude)
    flat = torch.zeros_like(vals)
    flat[idx] = vals[idx]
    out: dict[str, torch.Tensor] = {}
    start = 0
    for name, m in mask.items():
        w = weights[name]
        full = torch.zeros(w.numel(), dtype=w.dtype, device=w.device)
        if name not in exclude:
            mm = m.to(w.device).reshape(-1)
            count = int(mm.sum())
            full[mm] = flat[start : start + count]
            start += count
        out[name] = full.reshape(w.shape)
    return out


def projection_distance(
    weights: Mapping[str, torch.Tensor],
    mask: Mapping[str, torch.Tensor],
    p: float,
    strategy: Strategy,
    seed: int = 0,
    exclude: Collection[str] = (),
) -> float:
    """R(p) = ||w - P_p(w)||_2 over the alive coordinates (float64 accumulation)."""
    idx = removed_alive_indices(weights, mask, p, strategy, seed, exclude)
    vals = _alive_values(weights, mask, exclude)
    return float(vals[idx].to(torch.float64).norm())


@dataclass(frozen=True)
class PrunePoint:
    """One grid point: distance R(p), free dimensions d = (1 - p) * alive, d*, and whether d >= d*."""

    p: float
    R: float
    d: float
    d_star: float
    feasible: bool


@dataclass(frozen=True)
class PruneLimit:
    """Predicted prune limit p* (0.0 if no grid point is feasible) with the per-point detail."""

    p_star: float
    eps: float
    alive: int
    n_eigenvalues: int
    points: list[PrunePoint]

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-safe dict."""
        return asdict(self)


def predicted_prune_limit(
    eigenvalues: npt.ArrayLike,
    eps: float,
    alive: int,
    distance_fn: Callable[[float], float],
    p_grid: Iterable[float],
) -> PruneLimit:
    """p* = max { p in grid : (1 - p) * alive >= d*(eps, R(p)) } with R = ``distance_fn``.

    ``alive`` is the number of prunable alive weights (excluded layers not counted).
    Eigenvalues beyond those given are taken as zero, so d* is a lower bound of the
    full-spectrum value and p* an upper bound (see the module docstring). The grid is
    sorted and de-duplicated; the result lists every point.
    """
    eps = _check_eps(eps)
    if alive < 1:
        raise ConfigError(f"Number of alive weights must be >= 1, got {alive}.")
    grid: Sequence[float] = sorted({float(p) for p in p_grid})
    if not grid:
        raise ConfigError("The prune-fraction grid is empty.")
    if grid[0] < 0 or grid[-1] > 1:
        raise ConfigError(f"Prune fractions must lie in [0, 1], got {grid}.")
    lam = np.asarray(eigenvalues, dtype=np.float64).reshape(-1)
    radii = np.array([float(distance_fn(p)) for p in grid], dtype=np.float64)
    ds = np.asarray(d_star(lam, eps, radii))
    points = []
    for p, r, dsv in zip(grid, radii, ds):
        d = (1.0 - p) * alive
        points.append(PrunePoint(p=p, R=float(r), d=float(d), d_star=float(dsv), feasible=bool(d >= dsv)))
    feasible = [pt.p for pt in points if pt.feasible]
    return PruneLimit(
        p_star=max(feasible) if feasible else 0.0, eps=eps, alive=int(alive), n_eigenvalues=int(lam.size), points=points
    )
