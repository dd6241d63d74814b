"""Linear paths between trained states: error/loss curves, error barrier and LMC instability.

theta(a) = (1 - a) theta_A + a theta_B on an evenly spaced grid including both ends. Pruned weights
are stored as exact zeros, so when the endpoints have different masks the weights pruned at one
end shrink linearly to zero along the path, as CLAIMS.md prescribes.

Batch norm along the path (CLAIMS.md, "(ours)" default): "reestimate" resets the running
statistics at every grid point and re-estimates them on a fixed training subset;
"interpolate" interpolates them like weights. Barriers are computed from the curve itself (its
own endpoints), so they are never negative and a state compared with itself gives exactly 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from ..data import Split
from ..replicas import (
    State,
    _chunks,
    _device_of,
    _evaluate_stacked,
    _meta_copy,
    reestimate_batchnorm_stacked,
    resolve_execution,
    stack_states,
    unstack_state,
)
from ..training import autocast, evaluate

BN_MODES = ("reestimate", "interpolate")


@dataclass(frozen=True)
class PathSettings:
    """How a path is measured; recorded with every result."""

    points: int = 11  # >= 11 (CLAIMS.md); 30 at paper scale
    bn_mode: str = "reestimate"
    bn_examples: int = 2048  # size of the fixed training subset used to re-estimate BN statistics
    batch_size: int = 1000

    def __post_init__(self) -> None:
        from ..errors import ConfigError

        if self.points < 2:
            raise ConfigError(f"a path needs at least 2 points, got {self.points}")
        if self.bn_mode not in BN_MODES:
            raise ConfigError(f"unknown batch-norm mode {self.bn_mode!r}; valid choices: {', '.join(BN_MODES)}")

    @property
    def alphas(self) -> list[float]:
        return [float(a) for a in np.linspace(0.0, 1.0, self.points)]


def barrier(values: list[float] | np.ndarray, alphas: list[float] | np.ndarray) -> float:
    """max_a [v(a) - ((1 - a) v(0) + a v(1))]: the height above the straight line between the ends."""
    v, a = np.asarray(values, dtype=float), np.asarray(alphas, dtype=float)
    return float(max(0.0, np.max(v - ((1 - a) * v[0] + a * v[-1]))))


def instability(values: list[float] | np.ndarray) -> float:
    """LMC's instability: max_a v(a) - mean(v(0), v(1))."""
    v = np.asarray(values, dtype=float)
    return float(np.max(v) - 0.5 * (v[0] + v[-1]))


@dataclass(frozen=True)
class PathResult:
    """The whole curve on each split, with barriers (error in [0, 1], like every error here)."""

    alphas: list[float]
    test_error: list[float]
    test_loss: list[float]
    train_error: list[float]
    train_loss: list[float]
    bn_mode: str
    settings: dict = field(default_factory=dict)

    @property
    def barrier_test(self) -> float:
        return barrier(self.test_error, self.alphas)

    @property
    def barrier_train(self) -> float:
        return barrier(self.train_error, self.alphas)

    @property
    def instability_test(self) -> float:
        return instability(self.test_error)

    @property
    def instability_train(self) -> float:
        return instability(self.train_error)

    @property
    def loss_barrier_train(self) -> float:
        return barrier(self.train_loss, self.alphas)

    def reversed(self) -> PathResult:
        """The same path walked from B to A."""
        return PathResult([1 - a for a in reversed(self.alphas)], self.test_error[::-1], self.test_loss[::-1],
                          self.train_error[::-1], self.train_loss[::-1], self.bn_mode, self.settings)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(barrier_test=self.barrier_test, barrier_train=self.barrier_train,
                 instability_test=self.instability_test, instability_train=self.instability_train)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PathResult:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in names})


def interpolate_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """(1 - alpha) a + alpha b for floating tensors; integer buffers (BN batch counts) come from a."""
    out = {}
    for k, va in a.items():
        vb = b[k]
        out[k] = torch.lerp(va, vb.to(va.dtype), alpha) if va.is_floating_point() else va.clone()
    return out


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, split: Split, batch_size: int = 500, precision: str = "fp32") -> None:
    """Reset BN running statistics and recompute them as plain averages over `split` (no augmentation)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [(m, m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
    was_training = model.training
    model.train()
    device = next(model.parameters()).device
    seen = 0
    for i in range(0, len(split), batch_size):
        x = split.inputs[i:i + batch_size]
        # running = (1 - m) running + m batch with m = b / (seen + b): an average weighted by
        # examples, so a short last batch counts for its size, not for a whole batch
        for m in bns:
            m.momentum = len(x) / (seen + len(x))
        with autocast(device, precision):
            model(x)
        seen += len(x)
    for m, momentum in saved:
        m.momentum = momentum
    model.train(was_training)


def evaluate_path(model: nn.Module, state_a: dict[str, torch.Tensor], state_b: dict[str, torch.Tensor],
                  test: Split, train: Split, settings: PathSettings = PathSettings(),
                  precision: str = "fp32", correct: dict[str, list] | None = None) -> PathResult:
    """Error and loss along the straight line from `state_a` to `state_b` (loaded into `model`).

    `train` is the fixed, unaugmented training subset; its first `settings.bn_examples` examples
    re-estimate BN statistics in "reestimate" mode. `model` is left holding theta(1).
    `correct`, when given, receives per split ("test", "train") one per-example correctness array
    per grid point (the paired evidence of the barrier's interval).
    """
    alphas = settings.alphas
    bn_subset = Split(train.inputs[:settings.bn_examples], train.targets[:settings.bn_examples])
    reestimate = settings.bn_mode == "reestimate" and _has_batchnorm(model)
    curves: dict[str, list[float]] = {k: [] for k in ("test_error", "test_loss", "train_error", "train_loss")}
    for alpha in alphas:
        model.load_state_dict(interpolate_state(state_a, state_b, alpha))
        if reestimate:
            reestimate_batchnorm(model, bn_subset, precision=precision)
        for split_name, split in (("test", test), ("train", train)):
            res = evaluate(model, split, settings.batch_size, precision, per_example=correct is not None)
            if correct is not None:
                correct.setdefault(split_name, []).append(res.correct)
            curves[f"{split_name}_error"].append(res.error)
            curves[f"{split_name}_loss"].append(res.loss)
    bn_mode = settings.bn_mode if _has_batchnorm(model) else "none (no batch norm)"
    return PathResult(alphas=alphas, bn_mode=bn_mode, settings=asdict(settings), **curves)


def evaluate_path_batched(model: nn.Module, state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor],
                          test: Split, train: Split, settings=None, precision: str = "fp32", *,
                          execution: str = "auto", max_replicas: int | None = None):
    """`measure.connectivity.evaluate_path` with the grid points evaluated as replicas.

    Same grid, same interpolation (``interpolate_state``), same batch-norm handling
    ("reestimate": running statistics reset and re-estimated per grid point on the first
    `settings.bn_examples` examples of `train`, in batches of 500; "interpolate": interpolated
    like the weights), same evaluation; returns the same PathResult. At most `max_replicas`
    grid points share a pass (all by default). Like evaluate_path, `model` is left holding
    theta(1) (with its re-estimated statistics).
    """
    settings = settings if settings is not None else PathSettings()
    alphas = settings.alphas
    has_bn = _has_batchnorm(model)
    reestimate = settings.bn_mode == "reestimate" and has_bn
    bn_subset = Split(train.inputs[:settings.bn_examples], train.targets[:settings.bn_examples])
    device = _device_of(model, [state_a])
    execution = resolve_execution(execution, device)
    fmodel = _meta_copy(model)
    a, b = dict(state_a), dict(state_b)
    curves: dict[str, list[float]] = {k: [] for k in ("test_error", "test_loss", "train_error", "train_loss")}
    last_state: State | None = None
    for chunk in _chunks(len(alphas), max_replicas):
        params, buffers = stack_states(model, [interpolate_state(a, b, alphas[i]) for i in chunk], device)
        if reestimate:
            reestimate_batchnorm_stacked(fmodel, params, buffers, bn_subset, precision=precision, execution=execution)
        for split_name, split in (("test", test), ("train", train)):
            for res in _evaluate_stacked(fmodel, params, buffers, split, settings.batch_size, precision, device,
                                         execution):
                curves[f"{split_name}_error"].append(res.error)
                curves[f"{split_name}_loss"].append(res.loss)
        last_state = unstack_state(model, params, buffers, len(chunk) - 1)
    assert last_state is not None
    model.load_state_dict(last_state)
    bn_mode = settings.bn_mode if has_bn else "none (no batch norm)"
    return PathResult(alphas=alphas, bn_mode=bn_mode, settings=asdict(settings), **curves)
