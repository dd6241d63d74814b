"""Curvature of the training loss at a trained state, restricted to the alive weights (Claim 3).

The Hessian is taken with respect to the *alive coordinates* of a mask only: the True
entries of every mask tensor, flattened row-major within a tensor and concatenated in
the iteration order of the mask's keys. Every other parameter (pruned weights, biases,
batch-norm affine parameters) and every buffer (batch-norm running statistics) is held
fixed at its value when the operator is built. The loss is the mean cross-entropy over
the given examples, evaluated with the model in eval mode, so batch norm uses its running
statistics and the loss is a fixed function of the weights (no batch coupling).

Nothing here materialises the Hessian: everything is built on Hessian-vector products
(HVPs), summed over mini-batches so memory is bounded by ``batch_size``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from torch import nn
from torch.func import functional_call, grad, jvp

from lth_checks.errors import ConfigError, DataError, LthError

Mask = dict[str, torch.Tensor]
HvpMethod = Literal["auto", "forward_over_reverse", "reverse_over_reverse"]

__all__ = [
    "HessianOperator",
    "HessianSummary",
    "RestrictedHessian",
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
        with _eval_mode(self._model):
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


def top_eigenvalues(
    hessian: HessianOperator, k: int, tol: float = 1e-3, seed: int = 0, extra: int | None = None
) -> np.ndarray:
    """The ``k`` algebraically largest eigenvalues, descending, by Lanczos (``eigsh(which='LA')``).

    ``tol`` is ARPACK's relative accuracy on the eigenvalues; the seeded start vector
    makes the result reproducible. The last wanted Ritz values converge slowest and, at a
    loose tol, Lanczos can return the next eigenvalue in place of a close neighbour, so
    ``extra`` more (default max(2, k // 10)) are computed and dropped. ARPACK needs fewer
    than ``dim`` eigenvalues: when k + extra >= dim the operator is materialised instead
    (``dim`` products) and all ``min(k, dim)`` top eigenvalues come from ``eigvalsh``.
    """
    if k < 1:
        raise ConfigError(f"Number of eigenvalues k must be >= 1, got {k}.")
    extra = max(2, k // 10) if extra is None else extra
    if extra < 0:
        raise ConfigError(f"Extra Lanczos eigenvalues must be >= 0, got {extra}.")
    n = hessian.dim
    if k + extra >= n:
        h = _dense(hessian)
        return np.sort(np.linalg.eigvalsh((h + h.T) / 2))[::-1][:k].copy()
    v0 = _start_vector(n, seed).numpy()
    try:
        vals = eigsh(_to_linear_operator(hessian), k=k + extra, which="LA", tol=tol, v0=v0, return_eigenvectors=False)
    except ArpackNoConvergence as err:
        raise LthError(
            f"Lanczos found only {len(err.eigenvalues)} of {k + extra} Hessian eigenvalues; raise tol or lower k."
        ) from err
    return np.sort(np.asarray(vals, dtype=np.float64))[::-1][:k].copy()


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
    """Curvature at one solution: top eigenvalues (Lanczos), top-1 by power iteration, Hutchinson trace."""

    top_eigenvalues: list[float]
    top_eigenvalue_power: float
    trace_mean: float
    trace_stderr: float
    trace_samples: int
    dim: int
    n_examples: int
    subset_seed: int
    batch_size: int

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-safe dict (floats, ints, a list of floats)."""
        d = asdict(self)
        d["top_eigenvalues"] = [float(x) for x in self.top_eigenvalues]
        return d


def summarize_hessian(
    model: nn.Module,
    mask: Mapping[str, torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    k: int = 20,
    trace_samples: int = 100,
    seed: int = 0,
    subset_size: int | None = None,
    batch_size: int = 1024,
    tol: float = 1e-3,
    power_iters: int = 100,
    power_tol: float = 1e-4,
) -> HessianSummary:
    """Curvature summary of the training loss at the model's current weights (Claim 3).

    If ``subset_size`` is given and smaller than N, a seeded random subset of that many
    examples is used (CLAIMS.md asks for >= 4,096); ``seed`` fixes the subset, the
    Lanczos and power start vectors and the Hutchinson probes; ``tol`` is the Lanczos
    tolerance and ``power_tol`` the power-iteration one.
    """
    n = int(targets.shape[0])
    if subset_size is not None and subset_size < 1:
        raise ConfigError(f"Hessian subset_size must be >= 1, got {subset_size}.")
    if subset_size is not None and subset_size < n:
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:subset_size]
        idx = torch.sort(idx).values.to(inputs.device)
        inputs, targets = inputs[idx], targets[idx.to(targets.device)]
    h = RestrictedHessian(model, mask, inputs, targets, batch_size=batch_size)
    eig = top_eigenvalues(h, k, tol=tol, seed=seed)
    power = top_eigenvalue_power(h, iters=power_iters, tol=power_tol, seed=seed)
    mean, se = hutchinson_trace(h, samples=trace_samples, seed=seed)
    return HessianSummary(
        top_eigenvalues=[float(x) for x in eig],
        top_eigenvalue_power=float(power),
        trace_mean=mean,
        trace_stderr=se,
        trace_samples=trace_samples,
        dim=h.dim,
        n_examples=h.n_examples,
        subset_seed=seed,
        batch_size=batch_size,
    )
