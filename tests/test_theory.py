"""Oracles for the quadratic-model prune limit (Claim 3): loops, brute force and monotone trends."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lth_checks.errors import ConfigError
from lth_checks.measure.theory import (
    PruneLimit,
    d_star,
    n_removed,
    predicted_prune_limit,
    projection_delta,
    projection_distance,
    removed_alive_indices,
)

SETTINGS = settings(max_examples=40, deadline=None)
spectra = st.lists(st.floats(-10.0, 1e3, allow_nan=False), min_size=0, max_size=30)
eps_values = st.floats(1e-4, 10.0)
grids = st.lists(st.floats(0.0, 1.0), min_size=1, max_size=8)


def _d_star_loop(eigs: list[float], eps: float, r: float) -> float:
    total = 0.0
    for lam in eigs:
        if lam > 0:
            total += lam * r * r / (lam * r * r + 2 * eps)
    return total


def _p_star_brute(eigs: list[float], eps: float, alive: int, dist, grid: list[float]) -> float:
    best = 0.0
    for p in grid:
        if (1 - p) * alive >= _d_star_loop(eigs, eps, dist(p)) and p > best:
            best = p
    return best


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5 + 1e-9))


def _dist(scale: float, power: float):
    return lambda p: scale * p**power


def test_d_star_on_an_explicit_quadratic() -> None:
    """L(w) = 1/2 (w - w0)^T A (w - w0) with A = Q diag(lam) Q^T: its spectrum gives d* by the formula."""
    lam = np.array([50.0, 10.0, 2.0, 0.5, 0.0, -1.0])
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((6, 6)))
    a = q @ np.diag(lam) @ q.T
    recovered = np.linalg.eigvalsh(a)
    eps, r = 0.1, 0.3
    expected = sum(x * r * r / (x * r * r + 2 * eps) for x in lam[:4])
    assert d_star(recovered, eps, r) == pytest.approx(expected, rel=1e-10)
    # Only large eigenvalues matter: each term is < 1, and ~1 when lam R^2 >> eps.
    assert d_star([1e9, 1e9], 1e-6, 1.0) == pytest.approx(2.0, rel=1e-9)
    assert d_star([], 1.0, 5.0) == 0.0 and d_star([3.0], 1.0, 0.0) == 0.0


@SETTINGS
@given(spectra, eps_values, st.lists(st.floats(0.0, 100.0), min_size=1, max_size=5))
def test_d_star_matches_loop_and_vectorises(eigs: list[float], eps: float, radii: list[float]) -> None:
    got = d_star(eigs, eps, np.array(radii))
    assert isinstance(got, np.ndarray) and got.shape == (len(radii),)
    for g, r in zip(got, radii):
        scalar = d_star(eigs, eps, r)
        assert isinstance(scalar, float)
        assert scalar == pytest.approx(_d_star_loop(eigs, eps, r), rel=1e-9, abs=1e-12)
        assert g == pytest.approx(scalar, rel=1e-12, abs=1e-15)
        assert 0.0 <= scalar <= sum(1 for x in eigs if x > 0)


def test_d_star_rejects_bad_arguments() -> None:
    for eps in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ConfigError):
            d_star([1.0], eps, 1.0)
    with pytest.raises(ConfigError):
        d_star([1.0], 1.0, -0.5)
    with pytest.raises(ConfigError):
        d_star([math.nan], 1.0, 1.0)


@SETTINGS
@given(spectra, eps_values, st.integers(1, 200), st.floats(0.0, 10.0), st.floats(0.2, 3.0), grids)
def test_p_star_matches_brute_force(eigs, eps, alive, scale, power, grid) -> None:
    dist = _dist(scale, power)
    limit = predicted_prune_limit(eigs, eps, alive, dist, grid)
    assert limit.p_star == _p_star_brute(eigs, eps, alive, dist, grid)
    assert [pt.p for pt in limit.points] == sorted(set(grid))
    for pt in limit.points:
        assert pt.R == dist(pt.p) and pt.d == pytest.approx((1 - pt.p) * alive)
        assert pt.d_star == pytest.approx(_d_star_loop(eigs, eps, pt.R), rel=1e-9, abs=1e-12)
        assert pt.feasible == (pt.d >= pt.d_star)


@SETTINGS
@given(spectra, eps_values, st.integers(1, 200), st.floats(0.0, 10.0), grids, st.floats(1.0, 1e3))
def test_sharper_spectrum_never_raises_p_star(eigs, eps, alive, scale, grid, factor) -> None:
    dist = _dist(scale, 1.0)
    flat = predicted_prune_limit(eigs, eps, alive, dist, grid).p_star
    sharp = predicted_prune_limit([factor * x for x in eigs], eps, alive, dist, grid).p_star
    assert sharp <= flat


@SETTINGS
@given(spectra, eps_values, st.integers(1, 200), st.floats(0.0, 10.0), grids, st.floats(1.0, 1e3))
def test_larger_eps_never_lowers_p_star(eigs, eps, alive, scale, grid, factor) -> None:
    dist = _dist(scale, 0.5)
    assert (
        predicted_prune_limit(eigs, eps * factor, alive, dist, grid).p_star
        >= predicted_prune_limit(eigs, eps, alive, dist, grid).p_star
    )


def test_prune_limit_to_dict_is_json_safe_and_infeasible_gives_zero() -> None:
    limit = predicted_prune_limit([1e6] * 10, 1e-6, 10, lambda p: 1.0, [0.2, 0.5, 0.9])
    assert isinstance(limit, PruneLimit) and limit.p_star == 0.0
    assert not any(pt.feasible for pt in limit.points)
    d = limit.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert set(d["points"][0]) == {"p", "R", "d", "d_star", "feasible", "d_star_top", "d_star_bulk", "d_star_se",
                                   "resolved"}
    assert d["p_star_low"] == d["p_star_high"] == 0.0 and not d["at_grid_end"] and d["bulk_dim"] == 0
    with pytest.raises(ConfigError):
        predicted_prune_limit([1.0], 1.0, 10, lambda p: 1.0, [])
    with pytest.raises(ConfigError):
        predicted_prune_limit([1.0], 1.0, 10, lambda p: 1.0, [1.5])
    with pytest.raises(ConfigError):
        predicted_prune_limit([1.0], 1.0, 0, lambda p: 1.0, [0.5])


def _weights_and_mask(seed: int, density: float = 0.7) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    shapes = {"conv.weight": (4, 3, 3, 3), "fc.weight": (5, 16)}
    weights = {n: torch.randn(s, generator=g) for n, s in shapes.items()}
    mask = {n: torch.rand(s, generator=g) < density for n, s in shapes.items()}
    for n in weights:  # a masked solution is zero at pruned coordinates
        weights[n] = weights[n] * mask[n]
    return weights, mask


def _alive_numpy(weights, mask) -> np.ndarray:
    return np.concatenate([weights[n].reshape(-1).numpy()[mask[n].reshape(-1).numpy()] for n in mask])


@SETTINGS
@given(st.integers(0, 2**16), st.floats(0.0, 1.0), st.integers(0, 2**16))
def test_magnitude_distance_matches_sort_and_is_at_most_random(seed: int, p: float, rseed: int) -> None:
    weights, mask = _weights_and_mask(seed)
    alive = _alive_numpy(weights, mask)
    n = _round_half_up(p * alive.size)
    expected = float(np.sqrt(np.sum(np.sort(np.abs(alive).astype(np.float64))[:n] ** 2)))
    mag = projection_distance(weights, mask, p, "magnitude")
    assert mag == pytest.approx(expected, rel=1e-6, abs=1e-9)
    rnd = projection_distance(weights, mask, p, "random", seed=rseed)
    assert mag <= rnd + 1e-9
    assert rnd == projection_distance(weights, mask, p, "random", seed=rseed)  # seeded
    assert removed_alive_indices(weights, mask, p, "random", seed=rseed).unique().numel() == n


@SETTINGS
@given(st.integers(1, 300), st.floats(0.0, 1.0), st.sampled_from(["magnitude", "random"]))
def test_removed_count_is_exactly_round_p_alive(alive: int, p: float, strategy: str) -> None:
    mask = {"w": torch.zeros(300, dtype=torch.bool)}
    mask["w"][:alive] = True
    weights = {"w": torch.where(mask["w"], 1.0, 0.0)}  # all alive weights equal: R = sqrt(count)
    n = n_removed(p, alive)
    assert n == _round_half_up(p * alive) and abs(n - p * alive) <= 0.5 + 1e-9
    assert projection_distance(weights, mask, p, strategy) == pytest.approx(math.sqrt(n))
    delta = projection_delta(weights, mask, p, strategy)
    assert int((delta["w"] != 0).sum()) == n and not bool((delta["w"] != 0)[~mask["w"]].any())


def test_magnitude_ties_break_by_alive_position_and_pruned_values_are_ignored() -> None:
    mask = {"a": torch.tensor([[True, False], [True, True]]), "b": torch.tensor([True, True, False])}
    weights = {"a": torch.tensor([[1.0, 99.0], [-1.0, 1.0]]), "b": torch.tensor([1.0, 0.5, 1e-9])}
    # alive vector: a[0,0]=1, a[1,0]=-1, a[1,1]=1, b[0]=1, b[1]=0.5 -> remove 0.5 then the first tied ones
    idx = removed_alive_indices(weights, mask, 0.6, "magnitude")
    assert sorted(idx.tolist()) == [0, 1, 4]
    delta = projection_delta(weights, mask, 0.6, "magnitude")
    assert torch.equal(delta["a"], torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
    assert torch.equal(delta["b"], torch.tensor([0.0, 0.5, 0.0]))
    assert projection_distance(weights, mask, 0.6, "magnitude") == pytest.approx(math.sqrt(2.25))
    with pytest.raises(ConfigError):
        projection_distance(weights, mask, 1.2, "magnitude")
    with pytest.raises(ConfigError):
        projection_distance(weights, mask, 0.5, "largest")  # type: ignore[arg-type]


def test_rounding_and_exclusion() -> None:
    assert [n_removed(0.5, a) for a in (1, 2, 3, 5)] == [1, 1, 2, 3]  # halves round up, not to even
    assert n_removed(0.2, 5) == 1 and n_removed(0.2, 100) == 20 and n_removed(0.0, 7) == 0 and n_removed(1.0, 7) == 7
    weights, mask = _weights_and_mask(5)
    delta = projection_delta(weights, mask, 0.5, "magnitude", exclude={"fc.weight"})
    assert not bool(delta["fc.weight"].any())
    conv_alive = int(mask["conv.weight"].sum())
    assert int((delta["conv.weight"] != 0).sum()) == _round_half_up(0.5 * conv_alive)
    alone = {"conv.weight": mask["conv.weight"]}
    assert projection_distance(weights, mask, 0.5, "random", seed=2, exclude={"fc.weight"}) == projection_distance(
        weights, alone, 0.5, "random", seed=2
    )
    with pytest.raises(ConfigError):
        projection_distance(weights, mask, 0.5, "magnitude", exclude={"nope"})


@pytest.mark.parametrize("strategy", ["magnitude", "random"])
def test_selection_agrees_with_the_pruning_module(strategy: str) -> None:
    """Same seed, same exclusions: the local selection removes exactly what IMP's pruning removes."""
    from lth_checks.pruning import prune

    weights, mask = _weights_and_mask(11)
    for exclude in (set(), {"fc.weight"}):
        new = prune(weights, mask, 0.3, f"{strategy}_global", exclude=exclude, seed=4)
        delta = projection_delta(weights, mask, 0.3, strategy, seed=4, exclude=exclude)  # type: ignore[arg-type]
        for n in mask:
            assert torch.equal(delta[n] != 0, mask[n] & ~new[n])


def test_end_to_end_random_pruning_limit() -> None:
    """The pieces compose: R(p) from projection_distance, a spectrum, p* from the grid."""
    weights, mask = _weights_and_mask(3)
    alive = int(sum(int(m.sum()) for m in mask.values()))
    grid = [0.2, 0.4, 0.6, 0.8, 0.9]
    eigs = list(np.geomspace(100.0, 0.01, 60))
    limits = [
        predicted_prune_limit(eigs, eps, alive, lambda p: projection_distance(weights, mask, p, "random"), grid).p_star
        for eps in (1e-3, 1e-1, 10.0)
    ]
    assert limits == sorted(limits) and all(x in [0.0, *grid] for x in limits)


def test_p_star_with_a_bulk_density_equals_the_full_spectrum_one() -> None:
    """A bulk of few distinct eigenvalues is integrated exactly by SLQ (Gauss quadrature with one node
    per distinct value), so top-k + density gives the full spectrum's d* and p*; the top k alone do not."""
    from lth_checks.measure.hessian import spectral_density

    class Diag:
        def __init__(self, lam: np.ndarray) -> None:
            self.lam = torch.from_numpy(lam)

        @property
        def dim(self) -> int:
            return self.lam.numel()

        def matvec(self, v: torch.Tensor) -> torch.Tensor:
            return self.lam * v.to(torch.float64)

    top = np.array([50.0, 20.0, 10.0])
    bulk = np.repeat([0.02, 0.005, -0.001], 400)
    dens = spectral_density(Diag(bulk), probes=2, steps=10, seed=0)
    alive, grid = top.size + bulk.size, [0.2, 0.4, 0.6, 0.8, 0.9]
    dist = _dist(12.0, 0.5)
    full = predicted_prune_limit(np.concatenate([top, bulk]), 0.1, alive, dist, grid)
    mixed = predicted_prune_limit(top, 0.1, alive, dist, grid, density=dens)
    for a, b in zip(full.points, mixed.points):
        assert b.d_star == pytest.approx(a.d_star, rel=0.05)
    assert mixed.p_star == full.p_star < 0.9 and mixed.resolved
    assert predicted_prune_limit(top, 0.1, alive, dist, grid).p_star == 0.9  # top-k only saturates
    with pytest.raises(ConfigError):
        predicted_prune_limit(top, 0.1, alive + 1, dist, grid, density=dens)
