"""Iteration-based SGD training with a held mask, on whole-split tensors that live on the device.

Batches are a pure function of (data seed, iteration): the epoch's permutation and augmentation
parameters come from a CPU generator seeded by (seed, epoch). A run resumed at any iteration
therefore sees exactly the batches an uninterrupted run would, on any device.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .config import TrainConfig
from .data import Split, with_standard_strides
from .errors import ConfigError, DivergenceError
from .speed import sgd_optimizer

# How often the device-side divergence flag is read back: rare enough to keep the step loop free
# of host synchronisation, frequent enough that a diverged run stops quickly.
DIVERGENCE_CHECK_EVERY = 100


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any tuple of parts, with no collisions between e.g. (0, 12) and (1, 2)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def random_crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, pad: int) -> torch.Tensor:
    """Batched random crop (zero padding of the normalised image, i.e. the mean colour) and h-flip.

    offsets: (B, 2) integers in [0, 2 * pad]; flips: (B,) bool.
    """
    b, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    rows = offsets[:, 0:1] + torch.arange(h, device=x.device)
    cols = offsets[:, 1:2] + torch.arange(w, device=x.device)
    xp = xp.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * pad))
    xp = xp.gather(3, cols[:, None, None, :].expand(b, c, h, w))
    return torch.where(flips[:, None, None, None], xp.flip(3), xp)


class BatchStream:
    """The batch of any iteration, reproducibly: epoch-wise permutation, full batches only."""

    PAD = 4  # at the native size; a downsampled split carries its own (Split.crop_padding)

    def __init__(self, split: Split, batch_size: int, seed: int, augment: bool):
        if len(split) < batch_size:
            raise ConfigError(
                f"batch size {batch_size} exceeds the {len(split)} training examples; lower train.batch_size")
        self.split, self.batch_size, self.seed, self.augment = split, batch_size, seed, augment
        self.pad = split.crop_padding
        self.steps_per_epoch = len(split) // batch_size
        self._epoch: int | None = None

    def _plan(self, epoch: int) -> None:
        g = torch.Generator().manual_seed(derive_seed("batches", self.seed, epoch))
        n, device = len(self.split), self.split.inputs.device
        self._perm = torch.randperm(n, generator=g).to(device)
        if self.augment:
            count = self.steps_per_epoch * self.batch_size
            self._offsets = torch.randint(0, 2 * self.pad + 1, (count, 2), generator=g).to(device)
            self._flips = (torch.rand(count, generator=g) < 0.5).to(device)
        self._epoch = epoch

    def indices(self, iteration: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Example indices of the iteration's batch, with its crop offsets and flips (None unaugmented)."""
        epoch, step = divmod(iteration, self.steps_per_epoch)
        if epoch != self._epoch:
            self._plan(epoch)
        sl = slice(step * self.batch_size, (step + 1) * self.batch_size)
        if self.augment:
            return self._perm[sl], self._offsets[sl], self._flips[sl]
        return self._perm[sl], None, None

    def batch(self, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx, offsets, flips = self.indices(iteration)
        x, y = self.split.inputs[idx], self.split.targets[idx]
        if self.augment:
            x = random_crop_flip(x, offsets, flips, self.pad)
        return with_standard_strides(x), y  # a no-op unless a layout slipped through (data.py says why)


@dataclass
class Checkpoint:
    """Everything needed to continue a segment bitwise-identically: weights, BN buffers, momentum."""

    iteration: int
    model_state: dict[str, torch.Tensor]
    momentum: dict[str, torch.Tensor]


@dataclass(frozen=True)
class EvalResult:
    error: float  # top-1 error in [0, 1]
    loss: float
    correct: np.ndarray | None = None  # per-example correctness (bool), when asked for


def train(model: nn.Module, mask: Mapping[str, torch.Tensor], split: Split, cfg: TrainConfig, *,
          start: int, end: int, data_seed: int, augment: bool,
          resume: Checkpoint | None = None, checkpoint_every: int = 0,
          on_checkpoint: Callable[[Checkpoint], None] | None = None,
          on_progress: Callable[[int], None] | None = None, label: str = "training",
          fused_optimizer: bool = False) -> None:
    """Train `model` in place from iteration `start` to `end` with `mask` held fixed.

    A fresh optimiser starts at `start` (momentum is not rewound; the learning-rate schedule is
    global, so it resumes at `start`). Pruned weights have their gradients zeroed and are re-zeroed
    after every step, so they stay exactly zero. Raises DivergenceError naming the iteration of the
    first non-finite loss; `on_checkpoint` is only ever called with a finite state.
    `fused_optimizer` uses the fused SGD kernel where the device has one (same math, last-bit
    rounding differences), else the foreach one.
    """
    device = next(model.parameters()).device
    params = dict(model.named_parameters())
    # Masks in each parameter's own memory layout, so the foreach products stay on the fast path.
    masked = [(params[n], in_layout_of(params[n], m, f"the mask of {n!r}")) for n, m in mask.items()]
    masked_params, masked_values = [p for p, _ in masked], [m for _, m in masked]
    opt = sgd_optimizer(model.parameters(), cfg, device, fused=None if fused_optimizer else False)
    if resume is not None:
        restore_checkpoint(model, opt, resume)
        start = resume.iteration
    stream = BatchStream(split, cfg.batch_size, data_seed, augment)
    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    model.train()
    with torch.no_grad():
        torch._foreach_mul_(masked_params, masked_values)

    def check(upto: int) -> None:
        bad = int(first_bad)
        if bad >= 0:
            raise DivergenceError(f"{label} diverged: non-finite loss at iteration {bad} (checked up to {upto}); "
                                  "lower train.lr or use precision fp32, then run again")

    for t in range(start, end):
        for group in opt.param_groups:
            group["lr"] = cfg.lr_at(t)
        x, y = stream.batch(t)
        with autocast(device, cfg.precision):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            grads = [p.grad for p in masked_params]
            torch._foreach_mul_(grads, masked_values)
        opt.step()
        with torch.no_grad():
            torch._foreach_mul_(masked_params, masked_values)
            finite = torch.isfinite(loss.detach())
            # new_full fills on the device: no host-to-device copy, so no synchronisation per step
            first_bad = torch.where(~finite & (first_bad < 0), first_bad.new_full((), t), first_bad)
        done = t + 1
        due_checkpoint = checkpoint_every and on_checkpoint and done % checkpoint_every == 0 and done < end
        if done % DIVERGENCE_CHECK_EVERY == 0 or done == end or due_checkpoint:
            check(done)
            if on_progress is not None:
                on_progress(done)
        if due_checkpoint:
            state = clone_state(model)
            if not all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point()):
                raise DivergenceError(f"{label} diverged: non-finite weights at iteration {done}; "
                                      "lower train.lr or use precision fp32, then run again")
            on_checkpoint(Checkpoint(done, state, momentum_state(model, opt)))


def clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of weights and buffers (the 'full state' rewinding restores)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def in_layout_of(live: torch.Tensor, value: torch.Tensor, what: str = "a stored tensor") -> torch.Tensor:
    """A copy of `value` with `live`'s device, dtype and memory layout (strides).

    Checkpoints are stored contiguous, while on the fast path convolution weights are
    channels_last; kernels that walk raw memory (fused SGD) pair elements by position, not by
    index, so a restored tensor must have the strides of the tensor it sits beside.
    """
    if tuple(value.shape) != tuple(live.shape):
        raise ConfigError(f"{what} has shape {tuple(value.shape)} where the model's parameter has {tuple(live.shape)}; "
                          "it belongs to another architecture")
    return torch.empty_like(live, memory_format=torch.preserve_format).copy_(value)


def restore_checkpoint(model: nn.Module, opt: torch.optim.Optimizer, ckpt: Checkpoint) -> None:
    """Weights, buffers and momentum of `ckpt`, each in the memory layout of the live tensor.

    `load_state_dict` copies into the live tensors (their layout is kept); the momentum buffers
    are new tensors, made in their parameter's layout (`in_layout_of` says why).
    """
    model.load_state_dict(ckpt.model_state)
    params = dict(model.named_parameters())
    unknown = sorted(set(ckpt.momentum) - set(params))
    if unknown:
        raise ConfigError(f"the checkpoint has momentum for {unknown[0]!r}, which is not a parameter of the model")
    for name, buf in ckpt.momentum.items():
        opt.state[params[name]]["momentum_buffer"] = in_layout_of(params[name], buf, f"the stored momentum of {name!r}")


def momentum_state(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters():
        buf = opt.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            out[name] = buf.detach().clone()
    return out


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch_size: int = 1000, precision: str = "fp32",
             per_example: bool = False) -> EvalResult:
    """Top-1 error and mean cross-entropy on a whole split, in eval mode (one host sync at the end).

    per_example: also return each example's correctness (the paired evidence of the verdicts).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    wrong = torch.zeros((), device=device)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    hits = []
    for i in range(0, len(split), batch_size):
        x, y = split.inputs[i:i + batch_size], split.targets[i:i + batch_size]
        with autocast(device, precision):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
        hit = logits.argmax(1) == y
        wrong += (~hit).sum()
        if per_example:
            hits.append(hit)
    model.train(was_training)
    n = len(split)
    loss = float(loss_sum) / n
    correct = torch.cat(hits).cpu().numpy() if per_example else None
    return EvalResult(error=float(wrong) / n, loss=loss, correct=correct)
