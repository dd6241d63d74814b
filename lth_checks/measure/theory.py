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

The weights P_p removes are chosen by the project's own pruning (``lth_checks.pruning.prune``,
global magnitude or seeded random, round-half-up count, ties to the lower index), so the
theory measures the same projections the experiments make. Names in ``exclude`` (e.g. an
output layer the recipe never prunes) are neither counted nor removed.
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
from lth_checks.pruning import prune, round_half_up

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
    """Number of weights a fraction p prunes from ``alive``: round(p * alive), halves rounded up."""
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"Prune fraction p must be in [0, 1], got {p}.")
    return round_half_up(p * alive)


_STRATEGIES = {"magnitude": "magnitude_global", "random": "random_global"}


def _pruned_mask(
    weights: Mapping[str, torch.Tensor],
    mask: Mapping[str, torch.Tensor],
    p: float,
    strategy: Strategy,
    seed: int,
    exclude: Collection[str],
) -> dict[str, torch.Tensor]:
    """P_p's mask, from the project's own pruning (so theory and experiments remove the same weights)."""
    if strategy not in _STRATEGIES:
        raise ConfigError(f"Unknown pruning strategy {strategy!r}; use 'magnitude' or 'random'.")
    unknown = sorted(set(exclude) - set(mask))
    if unknown:
        raise ConfigError(f"Excluded name {unknown[0]!r} is not in the mask.")
    if not [n for n in mask if n not in exclude]:
        raise ConfigError("The mask names no prunable (non-excluded) weight.")
    n_removed(p, 0)  # validates p
    return prune(weights, mask, p, _STRATEGIES[strategy], frozenset(exclude), seed)


def removed_alive_indices(
    weights: Mapping[str, torch.Tensor],
    mask: Mapping[str, torch.Tensor],
    p: float,
    strategy: Strategy,
    seed: int = 0,
    exclude: Collection[str] = (),
) -> torch.Tensor:
    """Positions, in the flat alive non-excluded vector (mask-key order), of the weights P_p removes."""
    new = _pruned_mask(weights, mask, p, strategy, seed, exclude)
    names = [n for n in mask if n not in exclude]
    alive = torch.cat([mask[n].reshape(-1) for n in names])
    removed = torch.cat([(mask[n] & ~new[n]).reshape(-1) for n in names])
    return removed[alive].nonzero().squeeze(1)


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
    new = _pruned_mask(weights, mask, p, strategy, seed, exclude)
    return {n: weights[n].detach() * (mask[n] & ~new[n]).to(weights[n].device, weights[n].dtype) for n in mask}


def projection_distance(
    weights: Mapping[str, torch.Tensor],
    mask: Mapping[str, torch.Tensor],
    p: float,
    strategy: Strategy,
    seed: int = 0,
    exclude: Collection[str] = (),
) -> float:
    """R(p) = ||w - P_p(w)||_2 over the alive coordinates (float64 accumulation)."""
    delta = projection_delta(weights, mask, p, strategy, seed, exclude)
    return float(torch.sqrt(sum(d.double().square().sum().cpu() for d in delta.values())))


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
