"""Oracles for the restricted Hessian: the exact Hessian from torch.func.hessian, sliced to the mask."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call

from lth_checks.errors import ConfigError, DataError
from lth_checks.measure.hessian import (
    HessianSummary,
    RestrictedHessian,
    hutchinson_trace,
    rayleigh_quotient,
    summarize_hessian,
    top_eigenvalue_power,
    top_eigenvalues,
)

N = 20


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def _conv_bn() -> nn.Module:
    """Conv + BatchNorm with non-trivial running statistics, left in TRAIN mode on purpose."""
    torch.manual_seed(1)
    m = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Tanh(), nn.Flatten(), nn.Linear(48, 3))
    m = m.double()
    bn = m[1]
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.3, 0.3)
    return m.train()


def _prunable(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.dim() > 1]


def _exact_hessian(model: nn.Module, names: list[str], x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Full Hessian over the flattened prunable weights (in ``names`` order), BN in eval mode."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    shapes = [params[n].shape for n in names]
    sizes = [s.numel() for s in shapes]

    def loss(flat: torch.Tensor) -> torch.Tensor:
        w = {n: t.reshape(s) for n, t, s in zip(names, torch.split(flat, sizes), shapes)}
        return F.cross_entropy(functional_call(model, {**params, **buffers, **w}, (x,)), y)

    was = model.training
    model.eval()
    h = torch.func.hessian(loss)(torch.cat([params[n].reshape(-1) for n in names]))
    model.train(was)
    return h.numpy()


def _alive_positions(mask: dict[str, torch.Tensor]) -> np.ndarray:
    """Global flat indices of the alive coordinates, in mask-key order."""
    out, offset = [], 0
    for m in mask.values():
        out.append(np.flatnonzero(m.reshape(-1).numpy()) + offset)
        offset += m.numel()
    return np.concatenate(out)


@dataclass
class Case:
    model: nn.Module
    mask: dict[str, torch.Tensor]
    x: torch.Tensor
    y: torch.Tensor
    full: np.ndarray  # exact Hessian over all prunable weights
    sliced: np.ndarray  # exact Hessian restricted to the alive coordinates


def _case(kind: str) -> Case:
    model = _mlp() if kind == "mlp" else _conv_bn()
    g = torch.Generator().manual_seed(7)
    shape = (N, 6) if kind == "mlp" else (N, 2, 4, 4)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (N,), generator=g)
    names = _prunable(model)
    mask = {n: torch.rand(dict(model.named_parameters())[n].shape, generator=g) < 0.6 for n in names}
    full = _exact_hessian(model, names, x, y)
    idx = _alive_positions(mask)
    return Case(model, mask, x, y, full, full[np.ix_(idx, idx)])


_CASES: dict[str, Case] = {}


@pytest.fixture(params=["mlp", "conv_bn"])
def case(request: pytest.FixtureRequest) -> Case:
    if request.param not in _CASES:
        _CASES[request.param] = _case(request.param)
    return _CASES[request.param]


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def test_matvec_equals_exact_hessian_times_v(case: Case) -> None:
    h = RestrictedHessian(case.model, case.mask, case.x, case.y)
    assert h.dim == int(sum(int(m.sum()) for m in case.mask.values())) == case.sliced.shape[0]
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        v = torch.randn(h.dim, generator=g, dtype=torch.float64)
        hv = h.matvec(v)
        assert hv.dtype == torch.float64 and hv.shape == (h.dim,)
        np.testing.assert_allclose(hv.numpy(), case.sliced @ v.numpy(), rtol=1e-9, atol=1e-12)


def test_restriction_equals_slicing_and_full_mask_equals_full_hessian(case: Case) -> None:
    h = RestrictedHessian(case.model, case.mask, case.x, case.y)
    np.testing.assert_allclose(h.dense(), case.sliced, rtol=1e-9, atol=1e-12)
    full_mask = {n: torch.ones_like(m) for n, m in case.mask.items()}
    np.testing.assert_allclose(
        RestrictedHessian(case.model, full_mask, case.x, case.y).dense(), case.full, rtol=1e-9, atol=1e-12
    )


def test_top_eigenvalues_match_eigvalsh(case: Case) -> None:
    h = RestrictedHessian(case.model, case.mask, case.x, case.y)
    exact = np.sort(np.linalg.eigvalsh(case.sliced))[::-1]
    got = top_eigenvalues(h, 3, tol=1e-8)
    assert got.shape == (3,) and np.all(np.diff(got) <= 0)
    np.testing.assert_allclose(got, exact[:3], rtol=1e-4)
    np.testing.assert_allclose(top_eigenvalues(h, 3), exact[:3], rtol=1e-3)  # default tol
    np.testing.assert_array_equal(top_eigenvalues(h, 3, tol=1e-8, seed=5), top_eigenvalues(h, 3, tol=1e-8, seed=5))
    # the torch Lanczos agrees with scipy's ARPACK (the implementation it replaced) on the same operator
    from scipy.sparse.linalg import eigsh

    arpack = np.sort(eigsh(h.as_linear_operator(), k=3, which="LA", tol=1e-10, return_eigenvectors=False))[::-1]
    np.testing.assert_allclose(top_eigenvalues(h, 3, tol=1e-8, extra=0, maxiter=h.dim), arpack, rtol=1e-6)


def test_power_iteration_matches_eigvalsh_and_lanczos(case: Case) -> None:
    h = RestrictedHessian(case.model, case.mask, case.x, case.y)
    exact = float(np.linalg.eigvalsh(case.sliced)[-1])
    power = top_eigenvalue_power(h, iters=3000, tol=1e-12)
    assert _rel(power, exact) < 1e-4
    assert _rel(power, float(top_eigenvalues(h, 1, tol=1e-8)[0])) < 1e-4
    assert _rel(top_eigenvalue_power(h), exact) < 1e-2  # defaults


def test_hutchinson_trace_agrees_with_exact_trace(case: Case) -> None:
    h = RestrictedHessian(case.model, case.mask, case.x, case.y)
    exact = float(np.trace(case.sliced))
    # 100 probes: a 4-standard-error check is as strict at any sample size (the CPU time is the HVPs)
    mean, se = hutchinson_trace(h, samples=100, seed=0)
    assert se > 0 and abs(mean - exact) <= 4 * se
    assert hutchinson_trace(h, samples=100, seed=0) == (mean, se)  # reproducible
    big_mean, big_se = hutchinson_trace(_Dense(case.sliced), samples=6400, seed=1)
    assert abs(big_mean - exact) <= 4 * big_se and big_se < se / 2


def test_batching_gives_the_same_matvec(case: Case) -> None:
    one = RestrictedHessian(case.model, case.mask, case.x, case.y, batch_size=1024)
    many = RestrictedHessian(case.model, case.mask, case.x, case.y, batch_size=7)  # batches 7, 7, 6
    v = torch.randn(one.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    np.testing.assert_allclose(many.matvec(v).numpy(), one.matvec(v).numpy(), rtol=1e-10, atol=1e-13)


def test_double_backward_agrees_with_forward_over_reverse(case: Case) -> None:
    fwd = RestrictedHessian(case.model, case.mask, case.x, case.y, method="forward_over_reverse")
    rev = RestrictedHessian(case.model, case.mask, case.x, case.y, batch_size=9, method="reverse_over_reverse")
    v = torch.randn(fwd.dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    np.testing.assert_allclose(rev.matvec(v).numpy(), fwd.matvec(v).numpy(), rtol=1e-10, atol=1e-13)
    auto = RestrictedHessian(case.model, case.mask, case.x, case.y)
    auto.matvec(v)
    assert auto.method == "forward_over_reverse"


def test_model_mode_and_buffers_are_restored() -> None:
    model = _conv_bn()
    model[1].eval()  # a mixed state: each submodule's own flag must come back
    c = _case("conv_bn")
    before = {n: b.clone() for n, b in model.named_buffers()}
    h = RestrictedHessian(model, c.mask, c.x, c.y)
    h.matvec(torch.ones(h.dim, dtype=torch.float64))
    assert model.training and model[0].training and not model[1].training
    for n, b in model.named_buffers():
        assert torch.equal(b, before[n])
    model.eval()
    h.matvec(torch.ones(h.dim, dtype=torch.float64))
    assert not any(m.training for m in model.modules())


def test_operator_is_a_snapshot_of_the_weights() -> None:
    model, c = _mlp(), _case("mlp")
    h = RestrictedHessian(model, c.mask, c.x, c.y)
    v = torch.ones(h.dim, dtype=torch.float64)
    before = h.matvec(v)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    assert torch.equal(h.matvec(v), before)


def test_flatten_unflatten_and_linear_operator(case: Case) -> None:
    h = RestrictedHessian(case.model, case.mask, case.x, case.y)
    params = dict(case.model.named_parameters())
    full = {n: torch.randn_like(params[n]) for n in case.mask}
    flat = h.flatten_alive(full)
    assert flat.shape == (h.dim,)
    back = h.unflatten_alive(flat)
    for n, m in case.mask.items():
        assert back[n].shape == m.shape
        assert torch.equal(back[n], torch.where(m, full[n], torch.zeros_like(full[n])))
    w = {n: params[n].detach() for n in case.mask}
    assert torch.equal(h.alive_weights(), h.flatten_alive(w))
    op = h.as_linear_operator()
    x = np.random.default_rng(0).standard_normal(h.dim)
    y = op.matvec(x)
    assert op.shape == (h.dim, h.dim) and y.dtype == np.float64 and isinstance(y, np.ndarray)
    np.testing.assert_allclose(y, case.sliced @ x, rtol=1e-9, atol=1e-12)
    with pytest.raises(ConfigError):
        h.unflatten_alive(torch.zeros(h.dim + 1))


def test_rayleigh_quotient_flat_and_dict(case: Case) -> None:
    h = RestrictedHessian(case.model, case.mask, case.x, case.y)
    d = torch.randn(h.dim, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    dn = d.numpy()
    exact = dn @ case.sliced @ dn / (dn @ dn)
    assert _rel(rayleigh_quotient(h, d), exact) < 1e-9
    as_dict = h.unflatten_alive(d)
    for n, m in case.mask.items():  # junk at pruned coordinates must be ignored
        as_dict[n] = torch.where(m, as_dict[n], torch.full_like(as_dict[n], 1e6))
    assert _rel(rayleigh_quotient(h, as_dict), exact) < 1e-9
    with pytest.raises(ConfigError):
        rayleigh_quotient(h, torch.zeros(h.dim))


class _Dense:
    """A symmetric matrix behind the operator interface, for estimator-only checks."""

    def __init__(self, a: np.ndarray) -> None:
        self.a = torch.from_numpy(np.asarray(a, dtype=np.float64))

    @property
    def dim(self) -> int:
        return self.a.shape[0]

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.a @ v.to(torch.float64)


@settings(max_examples=15, deadline=None)
@given(
    st.lists(st.floats(-5.0, 5.0), min_size=3, max_size=12, unique=True).filter(
        lambda xs: sorted(xs)[-1] - sorted(xs)[-2] > 0.05
    ),
    st.integers(0, 2**16),
)
def test_estimators_on_known_spectra(eigs: list[float], seed: int) -> None:
    """Power iteration returns the top ALGEBRAIC eigenvalue even when a negative one dominates."""
    lam = np.array(eigs)
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((lam.size, lam.size)))
    op = _Dense(q @ np.diag(lam) @ q.T)
    top = float(lam.max())
    assert abs(top_eigenvalue_power(op, iters=20000, tol=1e-13, seed=seed) - top) < 1e-4 * max(1.0, abs(top))
    np.testing.assert_allclose(top_eigenvalues(op, lam.size), np.sort(lam)[::-1], atol=1e-10)
    diag_mean, diag_se = hutchinson_trace(_Dense(np.diag(lam)), samples=3, seed=seed)
    assert abs(diag_mean - lam.sum()) < 1e-10 and diag_se < 1e-10  # Rademacher is exact on a diagonal


def test_power_iteration_negative_dominant_eigenvalue() -> None:
    op = _Dense(np.diag([-5.0, 1.0, 2.0, 0.5]))
    assert abs(top_eigenvalue_power(op, iters=2000, tol=1e-12) - 2.0) < 1e-6
    assert top_eigenvalue_power(_Dense(np.zeros((3, 3)))) == 0.0


def test_float32_model_computes_in_float32() -> None:
    c = _case("mlp")
    model32 = _mlp().float()
    h = RestrictedHessian(model32, c.mask, c.x.float(), c.y)
    v = torch.randn(h.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    hv = h.matvec(v)
    assert hv.dtype == torch.float32
    np.testing.assert_allclose(hv.double().numpy(), c.sliced @ v.numpy(), rtol=1e-4, atol=1e-5)


def test_summarize_hessian_is_json_safe(case: Case) -> None:
    s = summarize_hessian(
        case.model, case.mask, case.x, case.y, k=2, density_probes=4, seed=3, subset_size=12, batch_size=5
    )
    assert isinstance(s, HessianSummary)
    d = s.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["n_examples"] == 12 and d["subset_seed"] == 3 and d["batch_size"] == 5 and d["dim"] == case.sliced.shape[0]
    assert len(d["top_eigenvalues"]) == 2 and d["top_eigenvalues"][0] >= d["top_eigenvalues"][1]
    assert _rel(d["top_eigenvalue_power"], d["top_eigenvalues"][0]) < 1e-2
    full = summarize_hessian(case.model, case.mask, case.x, case.y, k=2, density_probes=8)
    assert full.n_examples == N and _rel(full.top_eigenvalues[0], float(np.linalg.eigvalsh(case.sliced)[-1])) < 1e-3
    # the trace: the exact top-k sum plus an unbiased SLQ (Hutchinson) estimate over the complement
    assert abs(full.trace_mean - float(np.trace(case.sliced))) <= 4 * full.trace_stderr
    assert full.density["dim"] == full.dim - 2 and full.hvps > 0


def test_invalid_inputs_raise() -> None:
    c = _case("mlp")
    with pytest.raises(ConfigError):
        RestrictedHessian(c.model, {}, c.x, c.y)
    with pytest.raises(ConfigError):
        RestrictedHessian(c.model, {"nope": torch.ones(2, dtype=torch.bool)}, c.x, c.y)
    with pytest.raises(ConfigError):
        RestrictedHessian(c.model, {n: m.float() for n, m in c.mask.items()}, c.x, c.y)
    with pytest.raises(ConfigError):
        RestrictedHessian(c.model, {n: torch.zeros_like(m) for n, m in c.mask.items()}, c.x, c.y)
    with pytest.raises(ConfigError):
        RestrictedHessian(c.model, c.mask, c.x, c.y, batch_size=0)
    with pytest.raises(DataError):
        RestrictedHessian(c.model, c.mask, c.x, c.y[:-1])
    h = RestrictedHessian(c.model, c.mask, c.x, c.y)
    with pytest.raises(ConfigError):
        top_eigenvalues(h, 0)
    with pytest.raises(ConfigError):
        hutchinson_trace(h, samples=1)
