"""Several models of one architecture trained or evaluated together, in one pass per step.

R replicas (different seeds, data orders, perturbations or masks) keep their weights and
buffers stacked along a leading dimension. Two ways of running the forward and backward pass:

* ``"vmap"``: ``torch.func.functional_call`` under ``torch.func.vmap``. A convolution with
  batched weights becomes one grouped convolution, a linear layer one batched matmul, so a step
  costs one set of large kernels instead of R sets of small ones: the fast path on a GPU, where
  a CIFAR ResNet step at batch 128 is bound by kernel launches. On a CPU grouped convolutions
  are slow, and the sums run in a different order (results agree to ~1e-6, not bitwise).
* ``"loop"``: the replicas run one after another on views of the stacked tensors, with the
  very kernels a single training uses: bitwise identical to one-at-a-time training. Only data
  gathering, the optimizer step, masking and the divergence check are batched.
* ``"auto"`` (default): vmap on CUDA, loop elsewhere; loop too where vmap would not honour the
  precision (below).

bf16 under vmap: torch's CPU autocast skips convolutions under vmap (they run in fp32 while the
cache key says bf16). :func:`vmap_autocast_works` probes the device once; where it fails, "auto"
picks the loop (which runs the single-training kernels under autocast, really in bf16) and an
explicit "vmap" with bf16 is refused with one line.

Semantics are those of :func:`lth_checks.training.train`, replica by replica:

* replica r sees ``BatchStream(split, cfg.batch_size, data_seeds[r], augment)``: the same
  batches, in the same order, with the same augmentation as a run of its own;
* the learning rate of step t is ``cfg.lr_at(t)``; a fresh SGD state starts at ``start``;
* SGD with momentum, dampening 0, optional Nesterov and L2 weight decay is written out with
  ``torch._foreach_*`` ops on the stacked tensors, in the order of operations of
  ``torch.optim.SGD``'s foreach implementation (weight decay added to the gradient, momentum
  buffer initialised to a copy of the first gradient, then ``buf = momentum * buf + grad``):
  elementwise, so the update itself is bitwise that of torch.optim.SGD;
* every replica has its own mask: gradients of pruned weights are zeroed before the update and
  the weights re-zeroed after it, so pruned weights stay exactly zero;
* batch norm in train mode normalises with each replica's own batch statistics and updates each
  replica's own running statistics: the running-stat buffers are stacked like the weights and
  vmap's batch-norm rule folds the replica dimension into the channel dimension, so the
  in-place running-average update lands in the right replica (``replace_all_batch_norm_modules_``
  is *not* used: it stops tracking statistics);
* a non-finite loss is recorded per replica on the device (no host synchronisation inside the
  step loop) and read back every ``DIVERGENCE_CHECK_EVERY`` steps, at checkpoints and at the end
  (with the weights' finiteness), raising ``ReplicaDivergenceError`` (a ``DivergenceError``)
  naming the replica and its first bad iteration -- or, with ``on_diverged``, reporting each
  diverged replica once while the others train on (replicas do not interact, so a NaN in one
  leaves the others bitwise unchanged);
* in-level checkpoints (``checkpoint_every``, ``on_checkpoint``, ``resume``) are one
  ``training.Checkpoint`` per replica, the very checkpoint its single training would write, so a
  replica resumes from a single training's checkpoint and vice versa.

Evaluation: :func:`evaluate_replicas` gives :func:`training.evaluate`'s error and loss for every
replica in one pass over the data; :func:`measure.connectivity.evaluate_path_batched` builds on
these pieces to evaluate a whole grid of interpolation points as replicas.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.nn import functional as F

from .config import TrainConfig
from .data import Split, with_standard_strides
from .errors import ConfigError, DivergenceError
from .training import DIVERGENCE_CHECK_EVERY, BatchStream, Checkpoint, EvalResult, autocast, random_crop_flip

State = dict[str, torch.Tensor]
ModelOrFactory = nn.Module | Callable[[], nn.Module]
EXECUTIONS = ("auto", "vmap", "loop")

__all__ = [
    "EXECUTIONS",
    "ReplicaDivergenceError",
    "evaluate_replicas",
    "reestimate_batchnorm_stacked",
    "resolve_execution",
    "stack_states",
    "train_replicas",
    "unstack_state",
    "vmap_autocast_works",
]


class ReplicaDivergenceError(DivergenceError):
    """A replica produced a non-finite loss (or weights); ``replica`` and ``iteration`` name the first one.

    ``first_bad`` lists, per replica, the first non-finite iteration (-1 where none was seen);
    ``cause`` says what was non-finite and when, without the replica's name.
    """

    def __init__(self, message: str, replica: int, iteration: int, first_bad: list[int], cause: str = ""):
        super().__init__(message)
        self.replica, self.iteration, self.first_bad, self.cause = replica, iteration, first_bad, cause


@functools.cache
def _vmap_autocast_works(device: str) -> bool:
    x = torch.randn(2, 2, 2, 4, 4, device=device)
    w = torch.randn(2, 3, 2, 3, 3, device=device)
    lx, lw = torch.randn(2, 4, 5, device=device), torch.randn(2, 3, 5, device=device)
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        conv = vmap(F.conv2d)(x, w)
        lin = vmap(F.linear)(lx, lw)
    return conv.dtype == torch.bfloat16 and lin.dtype == torch.bfloat16


def vmap_autocast_works(device: str | torch.device) -> bool:
    """Whether convolutions and linear layers under vmap run in bf16 inside bf16 autocast on `device`.

    torch 2.13's CPU autocast does not reach convolutions under vmap (they stay fp32); probed
    once per device rather than assumed, so a torch that fixes it (or a device where it works)
    gets vmap back.
    """
    return _vmap_autocast_works(str(torch.device(device)))


def resolve_execution(execution: str, device: torch.device, precision: str = "fp32") -> str:
    """'auto' -> 'vmap' on CUDA, 'loop' elsewhere (and where vmap would not run `precision`).

    An explicit 'vmap' that cannot honour bf16 autocast on `device` is refused with one line.
    """
    if execution not in EXECUTIONS:
        raise ConfigError(f"unknown replica execution {execution!r}; valid choices: {', '.join(EXECUTIONS)}")
    bf16_broken = precision == "bf16" and not vmap_autocast_works(device)
    if execution == "auto":
        return "vmap" if device.type == "cuda" and not bf16_broken else "loop"
    if execution == "vmap" and bf16_broken:
        raise ConfigError(f"bf16 replicas under vmap on {device}: torch {torch.__version__}'s autocast does not "
                          "reach convolutions there (they would run in fp32); use execution 'loop' or 'auto', "
                          "or train.precision=fp32")
    return execution


# ----------------------------------------------------------------------------- stacking

def _template(model: ModelOrFactory) -> nn.Module:
    """The architecture (the module structure whose forward is called) of `model`."""
    return model if isinstance(model, nn.Module) else model()


def _device_of(module: nn.Module, states: Sequence[Mapping[str, torch.Tensor]]) -> torch.device:
    """The template's device, or the first state's when the template has no real tensors."""
    for p in module.parameters():
        if p.device.type != "meta":
            return p.device
    return next(iter(states[0].values())).device


def stack_states(template: nn.Module, states: Sequence[Mapping[str, torch.Tensor]],
                 device: torch.device) -> tuple[State, State]:
    """(params, buffers) under `template`'s names, each stacked over the replicas along dim 0."""
    if not states:
        raise ConfigError("need at least one replica state")
    param_names = [n for n, _ in template.named_parameters()]
    buffer_names = [n for n, _ in template.named_buffers()]
    for r, s in enumerate(states):
        missing = [n for n in (*param_names, *buffer_names) if n not in s]
        if missing:
            raise ConfigError(f"replica {r}'s state lacks {missing[0]!r} ({len(missing)} entries missing): "
                              "pass full state_dicts of the template's architecture")

    def stack(name: str) -> torch.Tensor:
        return torch.stack([s[name].detach().to(device) for s in states]).contiguous()

    return {n: stack(n) for n in param_names}, {n: stack(n) for n in buffer_names}


def unstack_state(template: nn.Module, params: State, buffers: State, r: int) -> State:
    """Replica r's state_dict (in `template.state_dict()`'s key order), as detached copies."""
    out: State = {}
    for name in template.state_dict():
        src = params[name] if name in params else buffers[name]
        out[name] = src[r].detach().clone()
    return out


def _meta_copy(template: nn.Module) -> nn.Module:
    """A weightless copy of the architecture for functional_call (every tensor is supplied).

    A compiled template (nn.Module.compile) would carry its compiled call, bound to the original
    module, into the copy: the copy runs eagerly instead.
    """
    fmodel = copy.deepcopy(template).to("meta")
    for m in fmodel.modules():
        if getattr(m, "_compiled_call_impl", None) is not None:
            m._compiled_call_impl = None
    return fmodel


def _stacked_masks(masks: Sequence[Mapping[str, torch.Tensor]], params: State) -> tuple[list[str], list[torch.Tensor]]:
    """Names of the masked parameters and, for each, the (R, ...) float mask (ones where a replica has none)."""
    names: list[str] = []
    for m in masks:
        for n in m:
            if n not in params:
                raise ConfigError(f"mask entry {n!r} is not a parameter of the model")
            if n not in names:
                names.append(n)
    values = []
    for n in names:
        p = params[n]
        per = []
        for r, m in enumerate(masks):
            if n in m:
                if tuple(m[n].shape) != tuple(p.shape[1:]):
                    raise ConfigError(f"replica {r}'s mask for {n!r} has shape {tuple(m[n].shape)}, "
                                      f"the weight has {tuple(p.shape[1:])}")
                per.append(m[n].to(device=p.device, dtype=p.dtype))
            else:
                per.append(torch.ones(p.shape[1:], device=p.device, dtype=p.dtype))
        values.append(torch.stack(per))
    return names, values


def _over_replicas(fn: Callable[..., torch.Tensor], execution: str, batched_x: bool) -> Callable[..., torch.Tensor]:
    """fn(params, buffers, *data) of one replica -> the same over stacked params/buffers, stacked output.

    Data arguments carry the replica dimension first when `batched_x`, else are shared.
    """
    data_dim = 0 if batched_x else None
    if execution == "vmap":
        def mapped(p: State, b: State, *data: torch.Tensor) -> torch.Tensor:
            return vmap(fn, in_dims=(0, 0, *([data_dim] * len(data))))(p, b, *data)
        return mapped

    def looped(p: State, b: State, *data: torch.Tensor) -> torch.Tensor:
        # unbind: one view per replica; its backward stacks the replicas' gradients in one go, and
        # in-place buffer updates (batch-norm running statistics) land in the stacked buffers.
        views_p = {n: v.unbind(0) for n, v in p.items()}
        views_b = {n: v.unbind(0) for n, v in b.items()}
        r_count = next(iter(p.values())).shape[0]
        outs = []
        for r in range(r_count):
            args = [d[r] for d in data] if batched_x else list(data)
            outs.append(fn({n: v[r] for n, v in views_p.items()}, {n: v[r] for n, v in views_b.items()}, *args))
        return torch.stack(outs)
    return looped


# ----------------------------------------------------------------------------- data

class _ReplicaBatches:
    """The batches of R BatchStreams for one iteration, gathered and augmented in one go.

    Replica r's batch is bitwise the one its ``BatchStream.batch`` returns: the permutation and
    augmentation plan are the stream's own, and gathering and per-image crops do not depend on
    which other images share the call.
    """

    def __init__(self, split: Split, batch_size: int, seeds: Sequence[int], augment: bool):
        self.split, self.augment, self.batch_size = split, augment, batch_size
        self.streams = [BatchStream(split, batch_size, s, augment) for s in seeds]
        self.steps_per_epoch = self.streams[0].steps_per_epoch

    def batch(self, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx, offsets, flips = [], [], []
        for s in self.streams:
            i, o, f = s.indices(iteration)
            idx.append(i)
            offsets.append(o)
            flips.append(f)
        index = torch.cat(idx)
        x, y = self.split.inputs[index], self.split.targets[index]
        if self.augment:
            x = random_crop_flip(x, torch.cat(offsets), torch.cat(flips), self.split.crop_padding)
        r = len(self.streams)
        x = with_standard_strides(x)  # a no-op unless a layout slipped through (data.py says why)
        return x.view(r, self.batch_size, *x.shape[1:]), y.view(r, self.batch_size)


# ----------------------------------------------------------------------------- training

def _sgd_step(params: list[torch.Tensor], grads: list[torch.Tensor], bufs: list[torch.Tensor] | None,
              cfg: TrainConfig, lr: float) -> list[torch.Tensor] | None:
    """torch.optim.SGD's foreach step (dampening 0, no maximize) on stacked tensors; returns the buffers."""
    if cfg.weight_decay != 0:
        grads = torch._foreach_add(grads, params, alpha=cfg.weight_decay)
    if cfg.momentum != 0:
        if bufs is None:
            bufs = [g.detach().clone() for g in grads]
        else:
            torch._foreach_mul_(bufs, cfg.momentum)
            torch._foreach_add_(bufs, grads, alpha=1.0)
        if cfg.nesterov:
            torch._foreach_add_(grads, bufs, alpha=cfg.momentum)
        else:
            grads = bufs
    torch._foreach_add_(params, grads, alpha=-lr)
    return bufs


def train_replicas(model: ModelOrFactory, states: Sequence[Mapping[str, torch.Tensor]],
                   masks: Sequence[Mapping[str, torch.Tensor]], split: Split, cfg: TrainConfig, *,
                   start: int, end: int, data_seeds: Sequence[int], augment: bool, execution: str = "auto",
                   on_progress: Callable[[int], None] | None = None, label: str = "replicas",
                   momentum_out: list[State] | None = None, resume: Sequence[Checkpoint] | None = None,
                   checkpoint_every: int = 0,
                   on_checkpoint: Callable[[list[Checkpoint | None]], None] | None = None,
                   on_diverged: Callable[[int, ReplicaDivergenceError], None] | None = None) -> list[State | None]:
    """Train R replicas of `model`'s architecture together from iteration `start` to `end`.

    `model` is a module (or a factory returning one) that fixes the architecture and the device;
    its own weights are neither used nor changed. `states[r]` is replica r's full state_dict
    (weights and batch-norm buffers), `masks[r]` its mask (name -> bool tensor; an empty dict
    trains dense), `data_seeds[r]` its data order. Returns the R trained state_dicts, in
    `model.state_dict()`'s key order, on the model's device. `execution`: "auto", "vmap" or
    "loop" (see the module docstring). With `momentum_out` (a list), each replica's final
    momentum buffers (name -> tensor) are appended to it. Raises ReplicaDivergenceError naming
    the first replica with a non-finite loss and its iteration.

    Checkpoints as in `training.train`: every `checkpoint_every` iterations before `end`,
    `on_checkpoint` gets one `Checkpoint` per replica (None for a diverged one); `resume` (one
    checkpoint per replica, all at one iteration) continues from them bitwise. With
    `on_diverged`, a diverging replica is reported once, `on_diverged(r, error)`, instead of
    raising; the others train on, and its entry in the returned list is None.
    """
    r_count = len(states)
    if r_count == 0 or not (len(masks) == len(data_seeds) == r_count):
        raise ConfigError(f"train_replicas needs as many masks and data seeds as states (at least one), got "
                          f"{r_count} states, {len(masks)} masks and {len(data_seeds)} data seeds")
    if not 0 <= start <= end:
        raise ConfigError(f"train_replicas needs 0 <= start <= end, got start {start}, end {end}")
    if checkpoint_every < 0:
        raise ConfigError(f"checkpoint interval must be >= 0 iterations (0 = none), got {checkpoint_every}")
    if resume is not None:
        states, start = _resume_states(resume, r_count, start, end)
    template = _template(model)
    device = _device_of(template, states)
    execution = resolve_execution(execution, device, cfg.precision)
    params, buffers = stack_states(template, states, device)
    names = list(params)
    plist = [params[n].requires_grad_(True) for n in names]
    mask_names, mask_values = _stacked_masks(masks, params)
    masked = [params[n] for n in mask_names]
    mask_index = [names.index(n) for n in mask_names]
    data = _ReplicaBatches(split, cfg.batch_size, data_seeds, augment)
    fmodel = _meta_copy(template).train()

    def replica_loss(p: State, b: State, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(fmodel, (p, b), (x,)), y)

    def unused(i: int) -> ConfigError:
        return ConfigError(f"parameter {names[i]!r} takes no part in the forward pass; train_replicas needs every "
                           "parameter to (torch.optim.SGD would skip it, the stacked update cannot)")

    if execution == "vmap":
        losses_of = vmap(replica_loss, in_dims=(0, 0, 0, 0))

        def forward_backward(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
            with autocast(device, cfg.precision):
                losses = losses_of(params, buffers, x, y)
            for p in plist:
                p.grad = None
            losses.sum().backward()  # replicas do not interact: d(sum)/d(theta_r) = d(loss_r)/d(theta_r)
            grads = []
            for i, p in enumerate(plist):
                if p.grad is None:
                    raise unused(i)
                grads.append(p.grad)
                p.grad = None
            return losses.detach(), grads
    else:
        def forward_backward(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
            # One replica at a time, forward then backward (the memory footprint of a single
            # training), with the kernels of a single training: gradients w.r.t. the replica's
            # views of the stacked weights are bitwise those of its own run.
            views = [p.unbind(0) for p in plist]
            bviews = {n: b.unbind(0) for n, b in buffers.items()}
            losses, per_replica = [], []
            for r in range(r_count):
                pr = [v[r] for v in views]
                with autocast(device, cfg.precision):
                    loss = replica_loss(dict(zip(names, pr)), {n: v[r] for n, v in bviews.items()}, x[r], y[r])
                per_replica.append(torch.autograd.grad(loss, pr, allow_unused=True))
                losses.append(loss.detach())
            grads = []
            for i in range(len(plist)):
                parts = [g[i] for g in per_replica]
                if any(g is None for g in parts):
                    raise unused(i)
                grads.append(torch.stack(parts))
            return torch.stack(losses), grads

    first_bad = torch.full((r_count,), -1, dtype=torch.long, device=device)
    bufs = _resume_momentum(resume, names, cfg, device) if resume is not None else None
    with torch.no_grad():
        torch._foreach_mul_(masked, mask_values)
    diverged: dict[int, ReplicaDivergenceError] = {}

    def check(upto: int, weights: bool) -> None:
        """Read the divergence flags (and, at checkpoints and the end, the weights' finiteness)."""
        bad = first_bad.tolist()
        causes = {r: (it, f"non-finite loss at iteration {it} (checked up to {upto})")
                  for r, it in enumerate(bad) if it >= 0}
        if weights:
            with torch.no_grad():
                finite = torch.stack([torch.isfinite(p).reshape(r_count, -1).all(1) for p in plist]).all(0).tolist()
            for r, ok in enumerate(finite):
                if not ok and r not in causes:
                    causes[r] = (upto, f"non-finite weights at iteration {upto}")
        hit = sorted((it, r) for r, (it, _) in causes.items() if r not in diverged)
        advice = "lower train.lr or use precision fp32, then run again"
        if hit and on_diverged is None:
            it, r = hit[0]
            others = f" (replicas {sorted(r for _, r in hit)} diverged in all)" if len(hit) > 1 else ""
            raise ReplicaDivergenceError(f"{label} replica {r} diverged: {causes[r][1]}{others}; {advice}",
                                         r, it, bad, causes[r][1])
        for it, r in hit:
            diverged[r] = ReplicaDivergenceError(f"{label} replica {r} diverged: {causes[r][1]}; {advice}",
                                                 r, it, bad, causes[r][1])
            on_diverged(r, diverged[r])

    def checkpoints(done: int) -> list[Checkpoint | None]:
        return [None if r in diverged else
                Checkpoint(done, unstack_state(template, params, buffers, r),
                           {n: b[r].detach().clone() for n, b in zip(names, bufs)} if bufs is not None else {})
                for r in range(r_count)]

    for t in range(start, end):
        x, y = data.batch(t)
        losses, grads = forward_backward(x, y)
        with torch.no_grad():
            torch._foreach_mul_([grads[i] for i in mask_index], mask_values)
            bufs = _sgd_step(plist, grads, bufs, cfg, cfg.lr_at(t))
            torch._foreach_mul_(masked, mask_values)
            first_bad.masked_fill_(~torch.isfinite(losses) & (first_bad < 0), t)
        done = t + 1
        due_checkpoint = checkpoint_every and on_checkpoint and done % checkpoint_every == 0 and done < end
        if done % DIVERGENCE_CHECK_EVERY == 0 or done == end or due_checkpoint:
            check(done, weights=bool(due_checkpoint) or done == end)
            if on_progress is not None:
                on_progress(done)
        if due_checkpoint:
            on_checkpoint(checkpoints(done))
    for p in plist:
        p.requires_grad_(False)
    if momentum_out is not None and bufs is not None:
        for r in range(r_count):
            momentum_out.append({n: b[r].detach().clone() for n, b in zip(names, bufs)})
    return [None if r in diverged else unstack_state(template, params, buffers, r) for r in range(r_count)]


def _resume_states(resume: Sequence[Checkpoint], r_count: int, start: int,
                   end: int) -> tuple[list[Mapping[str, torch.Tensor]], int]:
    """The replicas' states and the iteration they resume at, checked."""
    if len(resume) != r_count:
        raise ConfigError(f"train_replicas got {len(resume)} checkpoints to resume {r_count} replicas; "
                          "pass one per replica")
    iterations = sorted({c.iteration for c in resume})
    if len(iterations) != 1 or not start <= iterations[0] <= end:
        raise ConfigError(f"replicas resume together from one iteration in [{start}, {end}], got checkpoints at "
                          f"{iterations}; train those at other iterations in another group")
    return [c.model_state for c in resume], iterations[0]


def _resume_momentum(resume: Sequence[Checkpoint], names: list[str], cfg: TrainConfig,
                     device: torch.device) -> list[torch.Tensor] | None:
    """The stacked momentum buffers of the checkpoints (None: a fresh state, as in train)."""
    have = [bool(c.momentum) for c in resume]
    if cfg.momentum == 0 or not any(have):
        return None
    if not all(have) or any(set(c.momentum) != set(names) for c in resume):
        raise ConfigError("the replicas' checkpoints do not all hold momentum for every parameter; "
                          "they come from different trainings: delete them to start the segment over")
    return [torch.stack([c.momentum[n].detach().to(device) for c in resume]).contiguous() for n in names]


# ----------------------------------------------------------------------------- evaluation

def _chunks(n: int, size: int | None) -> list[range]:
    size = n if not size or size <= 0 else size
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


@torch.no_grad()
def _evaluate_stacked(fmodel: nn.Module, params: State, buffers: State, split: Split, batch_size: int,
                      precision: str, device: torch.device, execution: str) -> list[EvalResult]:
    """training.evaluate for each stacked replica: one pass over `split`, one host sync at the end."""
    r_count = next(iter(params.values())).shape[0]
    execution = resolve_execution(execution, device, precision)  # refuses a vmap that would ignore bf16
    was_training = fmodel.training
    fmodel.eval()

    def replica_logits(p: State, b: State, x: torch.Tensor) -> torch.Tensor:
        return functional_call(fmodel, (p, b), (x,))

    logits_of = _over_replicas(replica_logits, execution, batched_x=False)
    wrong = torch.zeros(r_count, device=device)
    loss_sum = torch.zeros(r_count, device=device, dtype=torch.float64)
    for i in range(0, len(split), batch_size):
        x, y = split.inputs[i:i + batch_size], split.targets[i:i + batch_size]
        with autocast(device, precision):
            logits = logits_of(params, buffers, x)  # (R, B, classes)
        logits32 = logits.float()
        loss_sum += torch.stack([F.cross_entropy(logits32[r], y, reduction="sum") for r in range(r_count)]).double()
        wrong += (logits.argmax(2) != y).sum(1)
    fmodel.train(was_training)
    n = len(split)
    return [EvalResult(error=w / n, loss=s / n) for w, s in zip(wrong.tolist(), loss_sum.tolist())]


def evaluate_replicas(model: ModelOrFactory, states: Sequence[Mapping[str, torch.Tensor]], split: Split,
                      batch_size: int = 1000, precision: str = "fp32", *, execution: str = "auto",
                      max_replicas: int | None = None) -> list[EvalResult]:
    """`training.evaluate` (eval mode, top-1 error, mean cross-entropy) of every state, batched.

    At most `max_replicas` states share a pass (all of them by default); memory grows with
    `max_replicas * batch_size`.
    """
    template = _template(model)
    device = _device_of(template, states)
    execution = resolve_execution(execution, device, precision)
    fmodel = _meta_copy(template)
    out: list[EvalResult] = []
    for chunk in _chunks(len(states), max_replicas):
        params, buffers = stack_states(template, [states[i] for i in chunk], device)
        out += _evaluate_stacked(fmodel, params, buffers, split, batch_size, precision, device, execution)
    return out


def _batchnorms(module: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """(buffer-name prefix, module) of every batch-norm layer that tracks running statistics."""
    return [(f"{name}." if name else "", m) for name, m in module.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def reestimate_batchnorm_stacked(fmodel: nn.Module, params: State, buffers: State, split: Split,
                                 batch_size: int = 500, precision: str = "fp32", execution: str = "auto") -> None:
    """`connectivity.reestimate_batchnorm` for every stacked replica at once (buffers updated in place).

    The example-weighted average of `connectivity.reestimate_batchnorm` (momentum b / (seen + b)
    before each batch of b examples) is applied the same way here; every replica sees the same
    batches, so one momentum serves all. `fmodel` is the (meta) architecture used with functional_call.
    """
    bns = _batchnorms(fmodel)
    if not bns:
        return
    for prefix, _ in bns:
        buffers[f"{prefix}running_mean"].zero_()
        buffers[f"{prefix}running_var"].fill_(1)
        if f"{prefix}num_batches_tracked" in buffers:
            buffers[f"{prefix}num_batches_tracked"].zero_()
    device = next(iter(params.values())).device
    execution = resolve_execution(execution, device, precision)

    def forward(p: State, b: State, x: torch.Tensor) -> torch.Tensor:
        return functional_call(fmodel, (p, b), (x,))

    run = _over_replicas(forward, execution, batched_x=False)
    saved = [(m, m.momentum) for _, m in bns]
    was_training = fmodel.training
    fmodel.train()
    try:
        seen = 0
        for i in range(0, len(split), batch_size):
            x = split.inputs[i:i + batch_size]
            for _, m in bns:
                m.momentum = len(x) / (seen + len(x))
            with autocast(device, precision):
                run(params, buffers, x)
            seen += len(x)
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        fmodel.train(was_training)
