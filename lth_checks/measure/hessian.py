"""Curvature of the training loss at a trained state, restricted to the alive weights (the flatness claim).

The Hessian is taken with respect to the *alive coordinates* of a mask only: the True
entries of every mask tensor, flattened row-major within a tensor and concatenated in
the iteration order of the mask's keys. Every other parameter (pruned weights, biases,
batch-norm affine parameters) and every buffer (batch-norm running statistics) is held
fixed at its value when the operator is built. The loss is the mean cross-entropy over
the given examples, evaluated with the model in eval mode, so batch norm uses its running
statistics and the loss is a fixed function of the weights (no batch coupling).

Nothing here materialises the Hessian: everything is built on Hessian-vector products
(HVPs), summed over mini-batches so memory is bounded by ``batch_size``. The products run
with TF32 off (``exact_float32``), and every Lanczos run stays on the model's device in
torch with a bounded number of steps and full reorthogonalisation (no host round trips).

Spectrum: the top-k eigenpairs by Lanczos, and the rest of the spectrum as a density by
stochastic Lanczos quadrature (SLQ; Ghorbani et al., ICML 2019, as in PyHessian's
``density``) on the complement of the top-k Ritz vectors, so a spectral sum
tr f(H) = sum_i f(lambda_i) splits into an exact top-k part plus ``dim`` times the
expectation of f under the bulk density.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from scipy.linalg import eigh_tridiagonal
from scipy.sparse.linalg import LinearOperator
from torch import nn
from torch.func import functional_call, grad, jvp

from lth_checks.errors import ConfigError, DataError

Mask = dict[str, torch.Tensor]
HvpMethod = Literal["auto", "forward_over_reverse", "reverse_over_reverse"]

__all__ = [
    "HessianOperator",
    "HessianSummary",
    "LanczosResult",
    "RestrictedHessian",
    "SpectralDensity",
    "exact_float32",
    "lanczos",
    "spectral_density",
    "top_eigenpairs",
    "hutchinson_trace",
    "rayleigh_quotient",
    "summarize_hessian",
    "top_eigenvalue_power",
    "top_eigenvalues",
]


class HessianOperator(Protocol):
    """Anything symmetric with a dimension and a matrix-vector product (the estimators' input)."""

    @property
    def dim(self) -> int: ...

    def matvec(self, v: torch.Tensor) -> torch.Tensor: ...


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode, then restore each one's own flag (not just the root's)."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


@contextmanager
def exact_float32() -> Iterator[None]:
    """TF32 off for CUDA matmuls and cuDNN convolutions inside the block, restored after.

    TF32 keeps 10 mantissa bits: HVPs formed with it carry relative errors of ~1e-3, the
    size of the small eigenvalues the theory needs. No effect on the CPU.
    """
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class RestrictedHessian:
    """Hessian of the mean training cross-entropy w.r.t. the alive coordinates of ``mask``.

    ``matvec(v)`` returns H v for a flat vector ``v`` of length ``dim`` over the alive
    coordinates (ordering: see the module docstring). The parameters and buffers are
    copied when the operator is built, so training the model afterwards does not change it.

    Computation is in float64 when the model's prunable weights are float64, float32
    otherwise; inputs and floating buffers are cast to that dtype. ``method`` picks how
    HVPs are formed: ``forward_over_reverse`` (``torch.func.jvp`` of ``torch.func.grad``:
    one forward-mode pass through the backward graph, the cheapest exact HVP),
    ``reverse_over_reverse`` (double backward with ``torch.autograd.grad``: works for any
    op with a twice-differentiable backward, for ops that lack a forward-mode AD rule), or
    ``auto``: forward-over-reverse, falling back to double backward once and for good if
    the first product raises because some op has no forward-mode rule.
    """

    def __init__(
        self,
        model: nn.Module,
        mask: Mapping[str, torch.Tensor],
        inputs: torch.Tensor,
        targets: torch.Tensor,
        batch_size: int = 1024,
        method: HvpMethod = "auto",
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"Hessian batch_size must be >= 1, got {batch_size}.")
        if method not in ("auto", "forward_over_reverse", "reverse_over_reverse"):
            raise ConfigError(f"Unknown HVP method {method!r}; use auto, forward_over_reverse or reverse_over_reverse.")
        if not mask:
            raise ConfigError("The Hessian mask is empty: it must name at least one prunable weight.")
        if inputs.ndim < 1 or targets.ndim != 1 or inputs.shape[0] != targets.shape[0] or targets.shape[0] == 0:
            raise DataError(
                "Hessian data must be non-empty inputs (N, ...) and targets (N,); "
                f"got {tuple(inputs.shape)} and {tuple(targets.shape)}."
            )
        if targets.is_floating_point() or targets.is_complex():
            raise DataError(f"Hessian targets must be integer class labels, got dtype {targets.dtype}.")

        params = dict(model.named_parameters())
        for name, m in mask.items():
            if name not in params:
                raise ConfigError(f"Mask entry {name!r} is not a parameter of the model.")
            if m.dtype != torch.bool:
                raise ConfigError(f"Mask entry {name!r} must be a bool tensor, got {m.dtype}.")
            if m.shape != params[name].shape:
                raise ConfigError(
                    f"Mask entry {name!r} has shape {tuple(m.shape)}, weight has {tuple(params[name].shape)}."
                )

        first = params[next(iter(mask))]
        self.device: torch.device = first.device
        self.dtype: torch.dtype = torch.float64 if first.dtype == torch.float64 else torch.float32

        def cast(t: torch.Tensor) -> torch.Tensor:
            t = t.detach()
            return t.to(self.dtype).clone() if t.is_floating_point() else t.clone()

        self._model = model
        self._names: list[str] = list(mask)
        self._shapes: dict[str, torch.Size] = {n: params[n].shape for n in self._names}
        self._weights: dict[str, torch.Tensor] = {n: cast(params[n]) for n in self._names}
        self._fixed: dict[str, torch.Tensor] = {n: cast(p) for n, p in params.items() if n not in mask}
        self._fixed.update({n: cast(b) for n, b in model.named_buffers()})
        self._index: dict[str, torch.Tensor] = {
            n: torch.nonzero(mask[n].to(self.device).reshape(-1)).reshape(-1) for n in self._names
        }
        self._counts: list[int] = [int(self._index[n].numel()) for n in self._names]
        if sum(self._counts) == 0:
            raise ConfigError("The Hessian mask has no alive coordinates.")
        self._inputs = inputs
        self._targets = targets
        self.n_examples: int = int(targets.shape[0])
        self.batch_size: int = int(batch_size)
        self.method: HvpMethod = method

    @property
    def dim(self) -> int:
        """Number of alive coordinates (the side of the restricted Hessian)."""
        return sum(self._counts)

    def flatten_alive(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Gather the alive coordinates of full-shape tensors (one per mask key) into a flat vector."""
        missing = [n for n in self._names if n not in tensors]
        if missing:
            raise ConfigError(f"Cannot flatten alive coordinates: no tensor for {missing}.")
        parts = []
        for n in self._names:
            t = tensors[n]
            if t.shape != self._shapes[n]:
                raise ConfigError(f"Tensor {n!r} has shape {tuple(t.shape)}, expected {tuple(self._shapes[n])}.")
            parts.append(t.to(self.device).reshape(-1)[self._index[n]])
        return torch.cat(parts)

    def unflatten_alive(self, vector: torch.Tensor) -> dict[str, torch.Tensor]:
        """Scatter a flat alive vector back to full-shape tensors, zero at pruned coordinates."""
        vector = vector.reshape(-1)
        if vector.numel() != self.dim:
            raise ConfigError(f"Alive vector has {vector.numel()} entries, expected {self.dim}.")
        vector = vector.to(self.device)
        out: dict[str, torch.Tensor] = {}
        for n, seg in zip(self._names, torch.split(vector, self._counts)):
            full = torch.zeros(self._shapes[n].numel(), dtype=vector.dtype, device=self.device)
            full[self._index[n]] = seg
            out[n] = full.reshape(self._shapes[n])
        return out

    def alive_weights(self) -> torch.Tensor:
        """The alive weights at which the Hessian is evaluated, as a flat vector."""
        return self.flatten_alive(self._weights)

    def _loss(self, weights: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(self._model, {**self._fixed, **weights}, (x,))
        return F.cross_entropy(out, y)

    def _hvp_forward_over_reverse(
        self, tangent: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        _, hv = jvp(lambda w: grad(self._loss)(w, x, y), (self._weights,), (tangent,))
        return hv

    def _hvp_reverse_over_reverse(
        self, tangent: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        with torch.enable_grad():
            w = {n: t.detach().requires_grad_(True) for n, t in self._weights.items()}
            leaves = [w[n] for n in self._names]
            g = torch.autograd.grad(self._loss(w, x, y), leaves, create_graph=True, allow_unused=True)
            dot = sum(
                ((gi * tangent[n]).sum() for gi, n in zip(g, self._names) if gi is not None),
                torch.zeros((), dtype=self.dtype, device=self.device),
            )
            if not dot.requires_grad:  # the loss is linear in the alive weights: H = 0
                return {n: torch.zeros_like(t) for n, t in self._weights.items()}
            hv = torch.autograd.grad(dot, leaves, allow_unused=True)
        return {n: torch.zeros_like(w[n]) if h is None else h.detach() for n, h in zip(self._names, hv)}

    def _batch_hvp(self, tangent: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.method == "reverse_over_reverse":
            return self._hvp_reverse_over_reverse(tangent, x, y)
        if self.method == "forward_over_reverse":
            return self._hvp_forward_over_reverse(tangent, x, y)
        try:  # "auto": decided on the first product, then fixed
            hv = self._hvp_forward_over_reverse(tangent, x, y)
        except (NotImplementedError, RuntimeError) as err:
            if isinstance(err, torch.cuda.OutOfMemoryError):
                raise  # double backward needs more memory, not less
            # Some op has no forward-mode AD rule: double backward only needs the backward
            # to be differentiable. If that fails too, the problem is not the AD mode.
            try:
                hv = self._hvp_reverse_over_reverse(tangent, x, y)
            except Exception:
                raise err from None
            warnings.warn(
                f"Forward-over-reverse HVP failed ({err}); using double backward.", RuntimeWarning, stacklevel=3
            )
            self.method = "reverse_over_reverse"
            return hv
        self.method = "forward_over_reverse"
        return hv

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """H v for a flat alive vector ``v`` (any device/dtype); returned on the model's device in the compute dtype.

        The full-data Hessian is the example-weighted mean of per-batch Hessians, so the
        per-batch products are summed with weights n_b / N (accumulated in float64).
        """
        tangent = self.unflatten_alive(v.detach().to(device=self.device, dtype=self.dtype))
        total = torch.zeros(self.dim, dtype=torch.float64, device=self.device)
        with _eval_mode(self._model), exact_float32():
            for start in range(0, self.n_examples, self.batch_size):
                x = self._inputs[start : start + self.batch_size].to(device=self.device, dtype=self.dtype)
                y = self._targets[start : start + self.batch_size].to(device=self.device, dtype=torch.int64)
                hv = self._batch_hvp(tangent, x, y)
                total += self.flatten_alive(hv).to(torch.float64) * (y.shape[0] / self.n_examples)
        return total.to(self.dtype)

    def as_linear_operator(self) -> LinearOperator:
        """A symmetric scipy ``LinearOperator`` (float64 numpy in and out) for ``eigsh`` and friends."""
        return _to_linear_operator(self)

    def dense(self) -> np.ndarray:
        """The full restricted Hessian as a (dim, dim) float64 array, by ``dim`` products. Small problems only."""
        return _dense(self)


def _matvec_f64(op: HessianOperator, v: torch.Tensor) -> torch.Tensor:
    """H v in float64 on the device ``op`` returns results on."""
    return op.matvec(v).to(torch.float64)


def _to_linear_operator(op: HessianOperator) -> LinearOperator:
    def mv(x: np.ndarray) -> np.ndarray:
        v = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64).reshape(-1))
        return _matvec_f64(op, v).cpu().numpy()

    return LinearOperator((op.dim, op.dim), matvec=mv, rmatvec=mv, dtype=np.float64)


def _dense(op: HessianOperator) -> np.ndarray:
    n = op.dim
    out = np.empty((n, n), dtype=np.float64)
    for i in range(n):
        e = torch.zeros(n, dtype=torch.float64)
        e[i] = 1.0
        out[:, i] = _matvec_f64(op, e).cpu().numpy()
    return out


def _start_vector(dim: int, seed: int) -> torch.Tensor:
    """A seeded unit Gaussian vector, drawn on the CPU so it is identical on every device."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(dim, generator=g, dtype=torch.float64)
    return v / v.norm()


@dataclass(frozen=True)
class LanczosResult:
    """A Lanczos run: tridiagonal T (diagonal ``alpha``, off-diagonal ``beta``) and, if kept, the basis Q.

    ``basis`` is (steps, dim) float64 on the operator's device with orthonormal rows and
    Q H Q^T = T; ``residual`` bounds every Ritz pair's residual. ``breakdown`` is True when
    the Krylov space became invariant before ``steps`` products (T's eigenvalues are then exact eigenvalues of H).
    """

    alpha: np.ndarray
    beta: np.ndarray
    basis: torch.Tensor | None
    breakdown: bool
    residual: float  # norm of the part of H q_m outside the Krylov space (0 at a breakdown)

    @property
    def steps(self) -> int:
        return int(self.alpha.size)

    def ritz(self) -> tuple[np.ndarray, np.ndarray]:
        """Eigenvalues (ascending) and eigenvectors (columns) of T, by ``scipy.linalg.eigh_tridiagonal``."""
        if self.alpha.size == 1:
            return self.alpha.copy(), np.ones((1, 1))
        return eigh_tridiagonal(self.alpha, self.beta)


def _device(op: HessianOperator) -> torch.device:
    """Where the operator returns its products (its ``device`` attribute; the CPU if it has none)."""
    return torch.device(getattr(op, "device", None) or "cpu")


def _orthogonalize(w: torch.Tensor, bases: list[torch.Tensor]) -> torch.Tensor:
    """Remove the components of ``w`` along the rows of each basis: classical Gram-Schmidt, twice
    ("twice is enough", Giraud et al. 2005), which keeps the Lanczos vectors orthogonal to
    working precision at the cost of 4 (steps x dim) matrix-vector products per step."""
    for _ in range(2):
        for b in bases:
            if b.shape[0]:
                w = w - b.T @ (b @ w)
    return w


def lanczos(
    hessian: HessianOperator,
    start: torch.Tensor,
    steps: int,
    *,
    against: torch.Tensor | None = None,
    keep_basis: bool = True,
    stop: Callable[[LanczosResult], bool] | None = None,
    check_every: int = 10,
) -> LanczosResult:
    """At most ``steps`` Lanczos steps from ``start``, with full reorthogonalisation, in float64 on the device.

    Each step is one product H q and stays on the device the operator returns results on
    (written here in torch rather than scipy's ARPACK so that nothing round-trips to the host).
    ``against``: rows of an orthonormal basis to stay orthogonal to (the run then sees H
    compressed to their orthogonal complement, i.e. deflated). ``stop``: called every
    ``check_every`` steps with the run so far; True ends it early. Full reorthogonalisation
    needs the basis anyway, so ``keep_basis=False`` only drops it from the result.
    """
    if steps < 1:
        raise ConfigError(f"Lanczos needs at least 1 step, got {steps}.")
    n = hessian.dim
    steps = min(steps, n - (0 if against is None else int(against.shape[0])))
    if steps < 1:
        raise ConfigError("Lanczos has no dimension left: the deflated subspace fills the whole space.")
    q = start.detach().reshape(-1).to(torch.float64)
    device = _device(hessian)
    bases = [] if against is None else [against.to(device=device, dtype=torch.float64)]
    q = _orthogonalize(q.to(device), bases)
    norm = float(q.norm())
    if not math.isfinite(norm) or norm == 0.0:
        raise ConfigError("Lanczos start vector is zero or not finite (after deflation).")
    q = q / norm
    basis = torch.zeros(steps, n, dtype=torch.float64, device=device)
    alpha = np.zeros(steps)
    beta = np.zeros(steps)  # beta[j]: norm of the residual after step j (beta[:m-1] is T's off-diagonal)
    breakdown = False
    j = 0
    while j < steps:
        basis[j] = q
        w = _matvec_f64(hessian, q)
        alpha[j] = float(torch.dot(q, w))
        w = _orthogonalize(w, [*bases, basis[: j + 1]])
        beta[j] = float(w.norm())
        j += 1
        # An invariant subspace: the residual is round-off relative to the spectrum's scale.
        if beta[j - 1] <= 1e-10 * max(float(np.abs(alpha[:j]).max()), float(beta[: j - 1].max(initial=0.0)), 1e-300):
            beta[j - 1] = 0.0
            breakdown = True
            break
        q = w / beta[j - 1]
        if stop is not None and j % check_every == 0 and j < steps:
            if stop(LanczosResult(alpha[:j].copy(), beta[: j - 1].copy(), None, False, float(beta[j - 1]))):
                break
    return LanczosResult(alpha[:j].copy(), beta[: j - 1].copy(), basis[:j] if keep_basis else None, breakdown,
                         float(beta[j - 1]))


def _residual_bounds(run: LanczosResult, vectors: np.ndarray) -> np.ndarray:
    """||H y - theta y|| = beta_m |s_m| for each Ritz pair (y = Q^T s), exact in exact arithmetic."""
    return np.abs(run.residual * vectors[-1, :])


def _top_converged(run: LanczosResult, k: int, tol: float) -> int:
    values, vectors = run.ritz()
    res = _residual_bounds(run, vectors)
    top = np.argsort(values)[::-1][:k]
    scale = max(float(np.abs(values).max()), 1e-300)
    # ARPACK's criterion, ||r|| <= tol |theta|, with an absolute floor at tol * ||T|| so that
    # eigenvalues ~0 (which contribute ~nothing to any spectral sum here) can converge.
    ok = res[top] <= tol * np.maximum(np.abs(values[top]), 1e-6 * scale)
    return int(np.cumprod(ok).sum())


def top_eigenpairs(
    hessian: HessianOperator,
    k: int,
    tol: float = 1e-3,
    seed: int = 0,
    maxiter: int | None = None,
    extra: int | None = None,
) -> tuple[np.ndarray, torch.Tensor, dict[str, object]]:
    """The ``k`` algebraically largest eigenvalues (descending), their Ritz vectors (rows) and run info.

    One Lanczos run with full reorthogonalisation from a seeded start vector, on the device,
    stopped once the top ``k + extra`` Ritz pairs have residuals within ``tol`` (relative,
    ARPACK's criterion; checked every 10 steps) or after ``maxiter`` products (default
    max(3 (k + extra), 200), at most dim). The ``extra`` pairs (default max(2, k // 10)) guard
    the last wanted ones: a Ritz value can converge to the next eigenvalue before a close
    neighbour has entered the Krylov space. When ``k + extra >= dim`` the operator is materialised instead (``dim``
    products) and the result is exact. Info: ``steps`` (products used) and ``converged``
    (leading pairs within tol; fewer than k means ``maxiter`` was reached: a ``RuntimeWarning``),
    and ``tridiagonal``: the run's (alpha, beta), None on the dense path.
    """
    if k < 1:
        raise ConfigError(f"Number of eigenvalues k must be >= 1, got {k}.")
    extra = max(2, k // 10) if extra is None else extra
    if extra < 0:
        raise ConfigError(f"Extra Lanczos eigenvalues must be >= 0, got {extra}.")
    n = hessian.dim
    want = min(k + extra, n)
    if maxiter is None:
        maxiter = max(3 * want, 200)
    if maxiter < want:
        raise ConfigError(f"Lanczos maxiter ({maxiter}) must be at least k + extra ({want}).")
    maxiter = min(maxiter, n)
    if k + extra >= n:  # tiny: materialise (n products); Lanczos would miss repeated eigenvalues
        h = _dense(hessian)
        values, vectors = np.linalg.eigh((h + h.T) / 2)
        order = np.argsort(values)[::-1][: min(k, n)]
        vecs = torch.from_numpy(np.ascontiguousarray(vectors[:, order].T)).to(_device(hessian))
        return values[order].copy(), vecs, {"steps": n, "converged": int(order.size), "tridiagonal": None}

    def done(run: LanczosResult) -> bool:
        return run.steps >= want and _top_converged(run, want, tol) >= want

    run = lanczos(hessian, _start_vector(n, seed), maxiter, stop=done)
    values, vectors = run.ritz()
    order = np.argsort(values)[::-1][: min(k, values.size)]
    converged = _top_converged(run, k, tol)
    if converged < min(k, n):
        warnings.warn(
            f"Lanczos: {converged} of {k} top eigenvalues reached tol={tol} in {run.steps} steps (maxiter).",
            RuntimeWarning,
            stacklevel=2,
        )
    assert run.basis is not None
    ritz_vectors = torch.from_numpy(np.ascontiguousarray(vectors[:, order].T)).to(run.basis.device) @ run.basis
    info = {"steps": run.steps, "converged": converged,
            "tridiagonal": ([float(x) for x in run.alpha], [float(x) for x in run.beta])}
    return values[order].copy(), ritz_vectors, info


def top_eigenvalues(
    hessian: HessianOperator,
    k: int,
    tol: float = 1e-3,
    seed: int = 0,
    extra: int | None = None,
    maxiter: int | None = None,
) -> np.ndarray:
    """The ``k`` algebraically largest eigenvalues, descending, by Lanczos in torch (see ``top_eigenpairs``)."""
    return top_eigenpairs(hessian, k, tol=tol, seed=seed, maxiter=maxiter, extra=extra)[0]


@dataclass(frozen=True)
class SpectralDensity:
    """A spectral density as a mixture of discrete measures, one per probe (SLQ).

    Probe j's Lanczos run is kept as its tridiagonal T_j (``alphas[j]``, ``betas[j]``); its
    Gauss quadrature has T_j's eigenvalues as nodes and the squared first components of its
    eigenvectors as weights (summing to 1). For any f, (1/dim) tr f(H_c) ~= mean_j
    sum_i w_ji f(theta_ji), where H_c is H on the ``dim``-dimensional space the probes were
    drawn in (the complement of the deflated vectors). The leading s x s block of T_j is the
    run after s steps, so the quadrature with half the steps comes for free: how much the
    estimate moves between the two measures its convergence.
    """

    alphas: list[list[float]]
    betas: list[list[float]]
    dim: int
    steps_asked: int = 0  # a run shorter than this broke down: its quadrature is exact
    skip: list[int] = field(default_factory=list)

    def quadrature(self, steps: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """(nodes, weights) per probe, from the first ``steps`` Lanczos steps (all by default)."""
        out = []
        skips = list(self.skip) + [0] * (len(self.alphas) - len(self.skip))
        for a, b, skip in zip(self.alphas, self.betas, skips):
            m = len(a) if steps is None else max(1, min(steps, len(a)))
            run = LanczosResult(np.asarray(a[:m], dtype=np.float64), np.asarray(b[: m - 1], dtype=np.float64),
                                None, False, 0.0)
            theta, s = run.ritz()
            w = s[0, :] ** 2
            if skip:
                keep = np.argsort(theta)[: max(theta.size - skip, 0)]
                theta, w = theta[keep], w[keep] / max(float(w[keep].sum()), 1e-300)
            out.append((theta, w))
        return out

    def expectation(self, f: Callable[[np.ndarray], np.ndarray], steps: int | None = None) -> tuple[float, float]:
        """(mean over probes of sum_i w_i f(theta_i), its standard error over probes; 0 for one probe)."""
        if self.dim == 0 or not self.alphas:
            return 0.0, 0.0
        per = np.array([float(np.dot(w, f(x))) for x, w in self.quadrature(steps)])
        se = float(per.std(ddof=1) / math.sqrt(per.size)) if per.size > 1 else 0.0
        return float(per.mean()), se

    @property
    def steps(self) -> int:
        return max((len(a) for a in self.alphas), default=0)

    def to_dict(self) -> dict[str, object]:
        return {"alphas": self.alphas, "betas": self.betas, "dim": self.dim, "steps_asked": self.steps_asked,
                "skip": self.skip}

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> SpectralDensity:
        return cls(alphas=list(d["alphas"]), betas=list(d["betas"]), dim=int(d["dim"]),  # type: ignore[arg-type]
                   steps_asked=int(d.get("steps_asked", 0)),  # type: ignore[call-overload]
                   skip=list(d.get("skip", [])))  # type: ignore[call-overload]


def spectral_density(
    hessian: HessianOperator,
    probes: int = 4,
    steps: int = 80,
    seed: int = 0,
    deflate: torch.Tensor | None = None,
) -> SpectralDensity:
    """Stochastic Lanczos quadrature of H on the orthogonal complement of ``deflate``'s rows.

    Each probe is a seeded Gaussian vector (drawn on the CPU, so identical on every device),
    projected onto the complement and normalised; ``steps`` Lanczos steps from it give the
    ``steps``-node Gauss quadrature of its spectral measure (exact for polynomials of degree
    < 2 steps). A uniformly random unit vector makes (dim) u^T f(H_c) u an unbiased estimate
    of tr f(H_c); the probes' spread gives its standard error.
    """
    if probes < 1:
        raise ConfigError(f"Spectral density needs at least 1 probe, got {probes}.")
    k = 0 if deflate is None else int(deflate.shape[0])
    dim = hessian.dim - k
    if dim <= 0:
        return SpectralDensity(alphas=[], betas=[], dim=0)
    g = torch.Generator().manual_seed(seed + 1)  # not the top-k run's start vector
    alphas, betas = [], []
    for _ in range(probes):
        z = torch.randn(hessian.dim, generator=g, dtype=torch.float64)
        run = lanczos(hessian, z, steps, against=deflate, keep_basis=False)
        alphas.append([float(x) for x in run.alpha])
        betas.append([float(x) for x in run.beta])
    return SpectralDensity(alphas=alphas, betas=betas, dim=dim, steps_asked=steps)


def _power(mv: Callable[[torch.Tensor], torch.Tensor], v: torch.Tensor, iters: int, tol: float) -> tuple[float, bool]:
    """Power iteration; returns the Rayleigh quotient v^T H v of the last iterate and whether it converged."""
    mu_prev: float | None = None
    mu = 0.0
    for _ in range(iters):
        w = mv(v)
        v = v.to(w.device)
        mu = float(torch.dot(v, w))
        norm = float(w.norm())
        if norm == 0.0:
            return 0.0, True
        if mu_prev is not None and abs(mu - mu_prev) <= tol * max(abs(mu), 1e-30):
            return mu, True
        mu_prev = mu
        v = w / norm
    return mu, False


def top_eigenvalue_power(hessian: HessianOperator, iters: int = 100, tol: float = 1e-4, seed: int = 0) -> float:
    """The algebraically largest eigenvalue by power iteration (a cheap check on Lanczos).

    Power iteration converges to the eigenvalue of largest *magnitude*, which at a
    non-minimum may be negative. The value reported is the Rayleigh quotient of the
    iterate once it changes by less than ``tol`` (relative). If that value is negative,
    the dominant eigenvalue was the most negative one, mu; a second power iteration on
    H - mu I (spectrum in [~0, lambda_max - mu]) then gives lambda_max = top + mu.
    A ``RuntimeWarning`` is emitted if either phase runs out of iterations.
    """
    if iters < 1 or tol <= 0:
        raise ConfigError(f"Power iteration needs iters >= 1 and tol > 0, got {iters} and {tol}.")
    v0 = _start_vector(hessian.dim, seed)
    mu, ok = _power(lambda v: _matvec_f64(hessian, v), v0, iters, tol)
    if mu < 0:
        shift = mu

        def shifted(v: torch.Tensor) -> torch.Tensor:
            w = _matvec_f64(hessian, v)
            return w - shift * v.to(w.device)

        nu, ok2 = _power(shifted, v0, iters, tol)
        mu, ok = nu + shift, ok and ok2
    if not ok:
        warnings.warn(f"Power iteration did not reach tol={tol} in {iters} iterations.", RuntimeWarning, stacklevel=2)
    return mu


def hutchinson_trace(hessian: HessianOperator, samples: int = 100, seed: int = 0) -> tuple[float, float]:
    """Hutchinson estimate of tr(H) with Rademacher probes: (mean of z^T H z, its standard error).

    Probes are drawn on the CPU from a seeded generator, so estimates are reproducible
    across devices. Rademacher probes are exact on a diagonal H.
    """
    if samples < 2:
        raise ConfigError(f"Hutchinson trace needs at least 2 samples for a standard error, got {samples}.")
    g = torch.Generator().manual_seed(seed)
    vals = np.empty(samples, dtype=np.float64)
    for i in range(samples):
        z = torch.randint(0, 2, (hessian.dim,), generator=g).to(torch.float64) * 2 - 1
        hz = _matvec_f64(hessian, z)
        vals[i] = float(torch.dot(z.to(hz.device), hz))
    return float(vals.mean()), float(vals.std(ddof=1) / math.sqrt(samples))


def rayleigh_quotient(hessian: HessianOperator, direction: torch.Tensor | Mapping[str, torch.Tensor]) -> float:
    """d^T H d / |d|^2 over the alive coordinates.

    ``direction`` is a flat alive vector, or (for a ``RestrictedHessian``) a dict of
    full-shape tensors of which only the alive coordinates are used.
    """
    if isinstance(direction, Mapping):
        flatten = getattr(hessian, "flatten_alive", None)
        if flatten is None:
            raise ConfigError("A dict direction needs a RestrictedHessian (with flatten_alive).")
        d = flatten(direction)
    else:
        d = direction.reshape(-1)
    d = d.detach().to(torch.float64)
    if d.numel() != hessian.dim:
        raise ConfigError(f"Direction has {d.numel()} alive entries, expected {hessian.dim}.")
    norm2 = float(torch.dot(d, d))
    if norm2 == 0.0 or not math.isfinite(norm2):
        raise ConfigError("Rayleigh quotient direction must be non-zero and finite on the alive coordinates.")
    hd = _matvec_f64(hessian, d)
    return float(torch.dot(d.to(hd.device), hd)) / norm2


@dataclass(frozen=True)
class HessianSummary:
    """Curvature at one solution: top eigenvalues (Lanczos), the bulk's density (SLQ), top-1 by
    power iteration, and the trace (exact top-k part plus the bulk's SLQ estimate)."""

    top_eigenvalues: list[float]
    top_eigenvalue_power: float | None  # None when skipped (power_iters=0)
    trace_mean: float
    trace_stderr: float
    trace_samples: int
    dim: int
    n_examples: int
    subset_seed: int
    batch_size: int
    lanczos_steps: int
    lanczos_converged: int
    density: dict[str, object]  # SpectralDensity.to_dict() of the complement of the top-k Ritz vectors
    density_steps: int
    hvps: int  # Hessian-vector products used in all

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-safe dict (floats, ints, lists)."""
        d = asdict(self)
        d["top_eigenvalues"] = [float(x) for x in self.top_eigenvalues]
        return d


class _Counted:
    """An operator that counts its products (the cost the plan and the report quote)."""

    def __init__(self, op: HessianOperator) -> None:
        self.op, self.calls = op, 0
        self.device = _device(op)

    @property
    def dim(self) -> int:
        return self.op.dim

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.op.matvec(v)


def summarize_hessian(
    model: nn.Module,
    mask: Mapping[str, torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    k: int = 20,
    density_probes: int = 3,
    density_steps: int = 30,
    seed: int = 0,
    subset_size: int | None = None,
    batch_size: int = 1024,
    tol: float = 1e-3,
    maxiter: int | None = None,
    power_iters: int = 100,
    power_tol: float = 1e-4,
) -> HessianSummary:
    """Curvature summary of the training loss at the model's current weights (the flatness claim).

    If ``subset_size`` is given and smaller than N, a seeded random subset of that many
    examples is used (CLAIMS.md asks for >= 4,096); ``n_examples`` records how many were
    really used. ``seed`` fixes the subset, the Lanczos, power and SLQ start vectors;
    ``tol``/``maxiter`` bound the top-k Lanczos run and ``power_tol`` the power iteration
    (``power_iters=0`` skips it: it only re-checks Lanczos's top eigenvalue).
    The bulk density comes from ``density_probes`` SLQ probes of the complement of the top-k
    Ritz vectors: the top-k run itself (its own Gaussian start vector, top-k nodes dropped) and
    ``density_probes - 1`` runs of ``density_steps`` steps (30 steps: on the smoke MLP's exact spectrum the
    d* of the prune-limit theory is then within ~1% bias, 20 steps give ~6%); the trace is the exact top-k
    sum plus the bulk's SLQ estimate (Hutchinson on the deflated operator), with its
    standard error over probes.
    """
    n = int(targets.shape[0])
    if subset_size is not None and subset_size < 1:
        raise ConfigError(f"Hessian subset_size must be >= 1, got {subset_size}.")
    if subset_size is not None and subset_size < n:
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:subset_size]
        idx = torch.sort(idx).values.to(inputs.device)
        inputs, targets = inputs[idx], targets[idx.to(targets.device)]
    h = _Counted(RestrictedHessian(model, mask, inputs, targets, batch_size=batch_size))
    eig, vectors, info = top_eigenpairs(h, k, tol=tol, seed=seed, maxiter=maxiter)
    tri = info["tridiagonal"]
    free = tri is not None and len(tri[0]) > eig.size  # the top-k run is one probe of the bulk too
    density = spectral_density(h, density_probes - int(free), density_steps, seed=seed, deflate=vectors) \
        if density_probes - int(free) > 0 else SpectralDensity([], [], h.dim - eig.size, density_steps)
    if free and density.dim > 0:
        assert tri is not None
        density = SpectralDensity([tri[0], *density.alphas], [tri[1], *density.betas], density.dim, density_steps,
                                  [int(eig.size)] + [0] * len(density.alphas))
    power = top_eigenvalue_power(h, iters=power_iters, tol=power_tol, seed=seed) if power_iters else None
    bulk, bulk_se = density.expectation(lambda x: x)
    return HessianSummary(
        top_eigenvalues=[float(x) for x in eig],
        top_eigenvalue_power=None if power is None else float(power),
        trace_mean=float(eig.sum()) + density.dim * bulk,
        trace_stderr=density.dim * bulk_se,
        trace_samples=len(density.alphas),
        dim=h.dim,
        n_examples=int(targets.shape[0]),
        subset_seed=seed,
        batch_size=batch_size,
        lanczos_steps=info["steps"],
        lanczos_converged=info["converged"],
        density=density.to_dict(),
        density_steps=density_steps,
        hvps=h.calls,
    )
