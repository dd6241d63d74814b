"""The quadratic-model prune limit of CLAIMS.md's flatness claim (Larsen et al., ICLR 2022, as adapted by the paper).

Model: near a solution w_L the training loss is quadratic with Hessian eigenvalues
lambda_i, so the eps-sublevel set is an ellipsoid with semi-axes sqrt(2 eps / lambda_i).
A random d-dimensional subspace through a point at distance R from w_L meets it when

    d >= d*(eps, R) = sum_i lambda_i R^2 / (lambda_i R^2 + 2 eps).

Pruning a fraction p of the alive weights moves the point by R(p) = ||w_L - P_p(w_L)|| and
leaves d = (1 - p) * alive free dimensions, so the predicted limit is

    p* = max { p in grid : (1 - p) * alive >= d*(eps, R(p)) }.

Spectrum: the top-k eigenvalues are exact (Lanczos) and the rest comes from a spectral
density of the bulk (stochastic Lanczos quadrature on the complement of the top-k Ritz
vectors, ``lth_checks.measure.hessian.spectral_density``), so

    d* = sum_{i <= k} f(lambda_i) + dim_bulk * E_density[f(lambda)],  f(l) = l R^2 / (l R^2 + 2 eps).

Eigenvalues with lambda R^2 comparable to 2 eps contribute, and the bulk holds thousands of
them: with the top k alone (the rest set to 0) d* < k, p* saturates at the grid's end (the
smoke MLP's exact spectrum gives a d* 3-8x the top-100 one). Without a density the old
top-k form is computed (a lower bound on d*, an upper bound on p*). Non-positive eigenvalues
contribute nothing (the quadratic model's sublevel set is unbounded along them).

The Hessian must be taken over the same coordinates the theory counts: the alive weights of
the prunable, ranked layers (CLAIMS.md: "restricted to the alive coordinates"); layers
excluded from pruning are neither in the Hessian nor in ``alive`` (suite.hessian does so).

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
from lth_checks.measure.hessian import SpectralDensity
from lth_checks.pruning import prune, round_half_up

Strategy = Literal["magnitude", "random"]

__all__ = [
    "PruneLimit",
    "PrunePoint",
    "d_star",
    "bulk_resolution",
    "d_star_with_bulk",
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


def _f(lam: np.ndarray, r: float, eps: float) -> np.ndarray:
    x = np.clip(lam, 0.0, None) * r * r
    return x / (x + 2.0 * eps)


def bulk_resolution(density: SpectralDensity | Mapping[str, object] | None) -> float:
    """The smallest lambda the bulk's quadrature resolves: its nodes' span divided by the steps.

    Gauss quadrature with m nodes over a bulk of width W places them ~W/m apart, so a
    transition of f at lambda* = 2 eps / R^2 below that is smeared across nodes: on exact
    spectra, d* is then off by 10-40%, above it within a few percent (tests/test_spectrum.py).
    0 without a density, or when every probe's run broke down (its quadrature is then exact).
    """
    if density is None:
        return 0.0
    dens = density if isinstance(density, SpectralDensity) else SpectralDensity.from_dict(density)
    inexact = [len(a) >= dens.steps_asked for a in dens.alphas]  # shorter runs broke down: exact
    nodes = [x for (x, _), keep in zip(dens.quadrature(), inexact) if keep and x.size]
    if not nodes:
        return 0.0
    span = max(float(x.max()) for x in nodes) - min(float(x.min()) for x in nodes)
    return span / min(x.size for x in nodes)  # the coarsest probe sets it


def d_star_with_bulk(
    eigenvalues: npt.ArrayLike, eps: float, R: float, density: SpectralDensity | Mapping[str, object] | None
) -> tuple[float, float, float]:
    """(top-k part, bulk part, standard error of the bulk part over the density's probes) of d*(eps, R).

    The bulk part is dim * E[f] under the SLQ density (0 without one); the top-k part is exact.
    Whether the quadrature resolves f at this R is ``bulk_resolution`` <= 2 eps / R^2.
    """
    top = d_star(eigenvalues, eps, R)
    assert isinstance(top, float)
    if density is None:
        return top, 0.0, 0.0
    dens = density if isinstance(density, SpectralDensity) else SpectralDensity.from_dict(density)
    if not all(np.all(np.isfinite(a)) for a in dens.alphas):
        raise ConfigError("Spectral density for d* must be finite.")
    mean, se = dens.expectation(lambda lam: _f(lam, float(R), eps))
    return top, dens.dim * mean, dens.dim * se


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

    This is the pruning direction of the flatness claim's part c; weights at already-pruned coordinates
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
    """One grid point: distance R(p), free dimensions d = (1 - p) * alive, d* (and its top-k and
    bulk parts, with the bulk's standard error over probes), whether d >= d*, and whether the
    bulk's quadrature resolves f's transition at 2 eps / R^2 (``resolved``)."""

    p: float
    R: float
    d: float
    d_star: float
    feasible: bool
    d_star_top: float = 0.0
    d_star_bulk: float = 0.0
    d_star_se: float = 0.0
    resolved: bool = True


@dataclass(frozen=True)
class PruneLimit:
    """Predicted prune limit p* (0.0 if no grid point is feasible) with the per-point detail.

    ``p_star_low`` / ``p_star_high``: p* with d* moved up / down by two standard errors of the
    bulk estimate (equal to p* when the spectrum is exact). ``at_grid_end``: p* is the grid's
    largest fraction, so the prediction says only "at least that". ``resolved``: every grid
    point's d* is resolved by the bulk's quadrature (else p* is not a reliable prediction).
    """

    p_star: float
    eps: float
    alive: int
    n_eigenvalues: int
    points: list[PrunePoint]
    p_star_low: float = 0.0
    p_star_high: float = 0.0
    at_grid_end: bool = False
    bulk_dim: int = 0
    resolved: bool = True
    resolution: float = 0.0

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-safe dict."""
        return asdict(self)


def predicted_prune_limit(
    eigenvalues: npt.ArrayLike,
    eps: float,
    alive: int,
    distance_fn: Callable[[float], float],
    p_grid: Iterable[float],
    density: SpectralDensity | Mapping[str, object] | None = None,
) -> PruneLimit:
    """p* = max { p in grid : (1 - p) * alive >= d*(eps, R(p)) } with R = ``distance_fn``.

    ``alive`` is the number of prunable alive weights (excluded layers not counted); with a
    ``density`` (the bulk beyond the given top eigenvalues) the top eigenvalues plus the
    density's dimension must equal it, since both describe the same coordinates. Without one,
    eigenvalues beyond those given are taken as zero (d* a lower bound, p* an upper bound).
    The grid is sorted and de-duplicated; the result lists every point.
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
    dens = None if density is None else (
        density if isinstance(density, SpectralDensity) else SpectralDensity.from_dict(density))
    if dens is not None and lam.size + dens.dim != alive:
        raise ConfigError(f"The spectrum covers {lam.size} + {dens.dim} coordinates but alive is {alive}: the "
                          "Hessian and the theory must use the same (prunable, alive) coordinates.")
    resolution = bulk_resolution(dens)
    points = []
    for p in grid:
        r = float(distance_fn(p))
        top, bulk, se = d_star_with_bulk(lam, eps, r, dens)
        d = (1.0 - p) * alive
        points.append(PrunePoint(p=p, R=r, d=float(d), d_star=top + bulk, feasible=bool(d >= top + bulk),
                                 d_star_top=top, d_star_bulk=bulk, d_star_se=se,
                                 resolved=bool(2 * eps >= resolution * r * r)))

    def limit(shift: float) -> float:
        return max((pt.p for pt in points if pt.d >= pt.d_star + shift * pt.d_star_se), default=0.0)

    p_star = limit(0.0)
    return PruneLimit(
        p_star=p_star, eps=eps, alive=int(alive), n_eigenvalues=int(lam.size), points=points,
        p_star_low=limit(2.0), p_star_high=limit(-2.0), at_grid_end=bool(p_star == grid[-1]),
        bulk_dim=0 if dens is None else dens.dim, resolved=all(pt.resolved for pt in points), resolution=resolution,
    )
