"""Oracles for the full-spectrum theory: torch Lanczos and stochastic Lanczos quadrature (SLQ)
against the exact spectrum of a trained network's Hessian small enough to materialise."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from lth_checks.errors import ConfigError
from lth_checks.measure.hessian import (
    RestrictedHessian,
    SpectralDensity,
    exact_float32,
    lanczos,
    spectral_density,
    summarize_hessian,
    top_eigenpairs,
)
from lth_checks.measure.theory import (
    bulk_resolution,
    d_star,
    d_star_with_bulk,
    predicted_prune_limit,
    projection_distance,
)

EPS = 0.1


class _Diag:
    """diag(lam) behind the operator interface (SLQ's error depends on the spectrum only)."""

    def __init__(self, lam: np.ndarray) -> None:
        self.lam = torch.from_numpy(np.asarray(lam, dtype=np.float64))
        self.calls = 0

    @property
    def dim(self) -> int:
        return self.lam.numel()

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.lam * v.to(torch.float64)


@pytest.fixture(scope="module")
def trained() -> dict:
    """A digits MLP (64-24-10, tanh) trained to a low loss, 70% of its weights alive (1,237), and its
    exact restricted Hessian: a few outliers, a bulk around zero with negative eigenvalues, as a
    pruned trained network has; radii R(p) of random pruning at the project's grid."""
    x_np, y_np = load_digits(return_X_y=True)
    x = torch.tensor(x_np[:600] / 16.0, dtype=torch.float64)
    y = torch.tensor(y_np[:600], dtype=torch.int64)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 24), nn.Tanh(), nn.Linear(24, 10)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [200, 300], 0.1)
    for _ in range(400):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        sched.step()
    g = torch.Generator().manual_seed(1)
    mask = {n: torch.rand(p.shape, generator=g) < 0.7 for n, p in model.named_parameters() if p.dim() > 1}
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in mask:
                p.mul_(mask[n])
    h = RestrictedHessian(model, mask, x, y)
    dense = h.dense()
    exact = np.sort(np.linalg.eigvalsh((dense + dense.T) / 2))[::-1]
    w = {n: p.detach() for n, p in model.named_parameters() if n in mask}
    radii = np.array([projection_distance(w, mask, p, "random", seed=0) for p in (0.2, 0.4, 0.6, 0.8, 0.9)])
    return {"model": model, "mask": mask, "x": x, "y": y, "h": h, "exact": exact, "radii": radii}


def test_torch_lanczos_matches_the_exact_top_spectrum(trained: dict) -> None:
    h, exact = trained["h"], trained["exact"]
    vals, vecs, info = top_eigenpairs(h, 20, tol=1e-8, seed=3)
    np.testing.assert_allclose(vals, exact[:20], rtol=1e-6)
    assert info["converged"] == 20 and info["steps"] < h.dim
    hv = torch.stack([h.matvec(v) for v in vecs])  # Ritz vectors are eigenvectors
    np.testing.assert_allclose(hv.numpy(), (torch.from_numpy(vals)[:, None] * vecs).numpy(), atol=1e-6 * exact[0])
    np.testing.assert_allclose((vecs @ vecs.T).numpy(), np.eye(20), atol=1e-10)


def test_lanczos_basis_is_orthonormal_and_tridiagonalises(trained: dict) -> None:
    h = trained["h"]
    run = lanczos(h, torch.randn(h.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64), 60)
    q = run.basis
    assert q is not None and run.steps == 60 and not run.breakdown
    np.testing.assert_allclose((q @ q.T).numpy(), np.eye(60), atol=1e-12)
    hq = torch.stack([h.matvec(v) for v in q])
    t = np.diag(run.alpha) + np.diag(run.beta, 1) + np.diag(run.beta, -1)
    np.testing.assert_allclose((q @ hq.T).numpy(), t, atol=1e-10 * abs(run.alpha).max())


def test_lanczos_breaks_down_on_an_invariant_subspace_and_honours_maxiter() -> None:
    op = _Diag(np.array([3.0, 3.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]))  # three distinct eigenvalues
    run = lanczos(op, torch.ones(8, dtype=torch.float64), 8)
    assert run.breakdown and run.steps == 3 and op.calls == 3
    np.testing.assert_allclose(np.sort(run.ritz()[0]), [0.0, 1.0, 3.0], atol=1e-12)
    lam = np.linspace(1.0, 2.0, 500) ** 8  # clustered: 10 steps cannot converge the top 5 to 1e-12
    with pytest.warns(RuntimeWarning, match="maxiter"):
        _, _, info = top_eigenpairs(_Diag(lam), 5, tol=1e-12, maxiter=10)
    assert info["steps"] == 10 and info["converged"] < 5
    with pytest.raises(ConfigError):
        top_eigenpairs(_Diag(lam), 5, maxiter=4)


def test_slq_d_star_agrees_with_the_exact_spectrum(trained: dict) -> None:
    """The stated tolerance: with the top 100 exact and the bulk by SLQ at the project's defaults
    (3 probes x 30 steps), d* is within 10% of the exact spectrum's at every R(p) of the grid,
    where the top-k spectrum alone gives less than half of it."""
    h, exact, radii = trained["h"], trained["exact"], trained["radii"]
    top, vecs, _ = top_eigenpairs(h, 100, seed=0)
    truth = np.asarray(d_star(exact, EPS, radii))
    dens = spectral_density(h, 3, 30, seed=0, deflate=vecs)
    assert dens.dim == h.dim - 100 and len(dens.alphas) == 3
    for r, want in zip(radii, truth):
        t, bulk, se = d_star_with_bulk(top, EPS, float(r), dens)
        assert abs(t + bulk - want) <= 0.10 * want, (r, t + bulk, want)
        assert se > 0
    assert np.all(np.asarray(d_star(top, EPS, radii)) < 0.5 * truth)  # why the bulk is needed at all


def test_unresolved_quadrature_is_flagged(trained: dict) -> None:
    """With only the top 20 deflated the bulk is wide, the transition 2 eps / R^2 falls between the
    quadrature's nodes and d* is off by more than 10%: the prediction must say it is not resolved."""
    h, exact, radii = trained["h"], trained["exact"], trained["radii"]
    top, vecs, _ = top_eigenpairs(h, 20, seed=0)
    dens = spectral_density(h, 3, 30, seed=0, deflate=vecs)
    truth = np.asarray(d_star(exact, EPS, radii))
    est = np.array([sum(d_star_with_bulk(top, EPS, float(r), dens)[:2]) for r in radii])
    assert np.any(np.abs(est - truth) > 0.10 * truth)
    limit = predicted_prune_limit(top, EPS, h.dim, dict(zip((0.2, 0.4, 0.6, 0.8, 0.9), radii)).__getitem__,
                                  (0.2, 0.4, 0.6, 0.8, 0.9), dens)
    assert not limit.resolved and limit.resolution == pytest.approx(bulk_resolution(dens))
    assert all(2 * EPS / r**2 < limit.resolution for r in radii)


def test_summary_trace_and_density_are_consistent(trained: dict) -> None:
    h, exact = trained["h"], trained["exact"]
    s = summarize_hessian(trained["model"], trained["mask"], trained["x"], trained["y"], k=20, density_probes=4)
    assert s.dim == h.dim and s.n_examples == 600 and s.density["dim"] == h.dim - 20
    assert s.hvps < 400 and s.lanczos_converged == 20
    # the top-k run is one of the 4 probes; the power iteration adds at most 100
    assert s.lanczos_steps + 3 * s.density_steps < s.hvps <= s.lanczos_steps + 3 * s.density_steps + 100
    assert s.density["skip"] == [20, 0, 0, 0]
    np.testing.assert_allclose(s.top_eigenvalues, exact[:20], rtol=1e-3)
    assert abs(s.trace_mean - exact.sum()) <= 4 * s.trace_stderr + 1e-9
    # predicted_prune_limit insists that the spectrum and the alive count describe the same coordinates
    limit = predicted_prune_limit(s.top_eigenvalues, EPS, h.dim, lambda p: 10 * p, [0.2, 0.5, 0.9], s.density)
    assert limit.bulk_dim == h.dim - 20 and limit.p_star_low <= limit.p_star <= limit.p_star_high
    with pytest.raises(ConfigError, match="same"):
        predicted_prune_limit(s.top_eigenvalues, EPS, h.dim + 5, lambda p: 10 * p, [0.2], s.density)


def test_slq_is_exact_for_a_spectrum_with_few_distinct_values() -> None:
    """Gauss quadrature with as many nodes as distinct eigenvalues is exact: only probe noise remains,
    and with equal eigenvalues there is none."""
    dens = spectral_density(_Diag(np.full(300, 0.5)), probes=3, steps=10)
    assert all(len(a) == 1 for a in dens.alphas)  # breakdown after one step
    mean, se = dens.expectation(lambda lam: lam**2)
    assert mean == pytest.approx(0.25, rel=1e-12) and se < 1e-12
    empty = spectral_density(_Diag(np.ones(4)), deflate=torch.eye(4, dtype=torch.float64))
    assert empty.dim == 0 and empty.expectation(np.abs) == (0.0, 0.0)
    assert SpectralDensity.from_dict(dens.to_dict()) == dens


def test_exact_float32_turns_tf32_off_and_restores() -> None:
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        with exact_float32():
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.gpu
def test_lanczos_on_cuda_matches_the_cpu(trained: dict) -> None:
    """On the device: the run stays there (the basis lives on CUDA) and agrees with the CPU run."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    m = trained["model"]
    cpu = top_eigenpairs(trained["h"], 10, tol=1e-8)[0]
    gpu_model = m.to("cuda").float()
    try:
        h = RestrictedHessian(gpu_model, {n: t.cuda() for n, t in trained["mask"].items()},
                              trained["x"].cuda().float(), trained["y"].cuda())
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            vals, vecs, _ = top_eigenpairs(h, 10, tol=1e-4)
        assert vecs.device.type == "cuda"
        np.testing.assert_allclose(vals, cpu, rtol=1e-3)
    finally:
        m.to("cpu").double()
