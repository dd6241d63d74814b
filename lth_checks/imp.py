"""The IMP runner: iterative magnitude pruning with weight rewinding, cached and resumable.

Protocol (CLAIMS.md): train the dense network from w_0 to the rewind iteration k and keep w_k;
then for L = 0, 1, ...: train m_L * w_k from k to T with m_L held, giving w_L; prune a fraction p
of the alive weights of w_L to get m_{L+1}. Each finished level is committed to the cache
(its metrics file is written last and marks it done); a level in progress checkpoints
periodically, so an interrupted run resumes where it stopped and gives identical numbers.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import cached_property

import torch

from .config import IMPConfig
from .data import Dataset, Split, load_for
from .errors import CacheError, ConfigError, DivergenceError
from .models import PrunableModel, build_model
from .pruning import Mask, alive_count, apply_mask, dense_mask, excluded_names, prune_model, total_count
from .speed import eager, maybe_compile, prepare_model
from .store import Entry, Store, holding_free
from .training import Checkpoint, derive_seed, evaluate, train

DEFAULT_CHECKPOINT_EVERY = 1000
EVAL_SUBSET_SEED = 0  # the fixed training subset for evaluation is the same for every replicate


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """'auto' or None picks CUDA when present; anything else is passed to torch.device.

    Asking for CUDA where there is none stops with one line (torch's own error is an
    AssertionError traceback from deep inside the first tensor move).
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"device {device!r} is not a device name ({e}); use cpu, cuda, cuda:N or auto") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
            raise ConfigError(f"--device {device} asked for CUDA, but torch {torch.__version__} ({build}) sees no "
                              "CUDA device here; use --device cpu (or auto), or run on a machine with a GPU")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                              f"(cuda:0..cuda:{torch.cuda.device_count() - 1}); pick one of those")
    return resolved


ENV_CPU_THREADS = "LTH_CHECKS_CPU_THREADS"


def configure_cpu_threads(device: str | torch.device | None) -> None:
    """On the CPU, use $LTH_CHECKS_CPU_THREADS intra-op threads (default 1).

    The recipes' models are small: a second OpenMP thread buys little, and when another process
    shares the cores it costs a lot (LeNet-300-100 steps measured 6.5 ms with one thread and
    144 ms with two on a busy 2-core machine). Leaves CUDA runs alone.
    """
    if resolve_device(device).type == "cpu":
        torch.set_num_threads(max(1, int(os.environ.get(ENV_CPU_THREADS, "1"))))


@dataclass(frozen=True)
class LevelResult:
    """What a finished level reports (also its `levelNN_metrics.json` in the cache)."""

    level: int
    alive: int
    total: int
    density: float
    test_error: float
    test_loss: float
    train_error: float
    train_loss: float
    wall_time_s: float
    device: str

    def to_dict(self) -> dict:
        return asdict(self)


def state_to_tensors(ckpt: Checkpoint) -> dict[str, torch.Tensor]:
    out = {f"model/{k}": v for k, v in ckpt.model_state.items()}
    out.update({f"momentum/{k}": v for k, v in ckpt.momentum.items()})
    return out


def tensors_to_checkpoint(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> Checkpoint:
    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    return Checkpoint(int(meta["iteration"]), part("model/"), part("momentum/"))


class Experiment:
    """One IMP lineage (an `IMPConfig`) in the cache, trained on demand."""

    kind = "imp"

    def __init__(self, config: IMPConfig, *, store: Store | None = None, device: str | torch.device | None = None,
                 data_root: str | os.PathLike | None = None, checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
                 progress: bool = False, log: Callable[[str], None] | None = None, allow_training: bool = True,
                 fast: bool | None = None, compile_model: bool = False):
        """`fast` (default: on CUDA) uses channels_last and fused SGD; `compile_model` torch.compile.

        Neither is part of the cache key: they change results only in the last bits of rounding.
        """
        self.config = config
        self.allow_training = allow_training
        self.store = store or Store()
        self.device = resolve_device(device)
        self.fast = self.device.type == "cuda" if fast is None else fast
        self.compile_model = compile_model
        self.data_root = data_root
        if checkpoint_every < 0:
            raise ConfigError(f"checkpoint interval must be >= 0 iterations (0 = none), got {checkpoint_every}")
        self.checkpoint_every = checkpoint_every
        self.progress = progress
        self.log = log or (lambda msg: None)
        self.entry: Entry = self.store.entry(self.kind, config.key_dict())
        # Segments (e.g. "level03_train", "branch <key>") that diverged while trained as replicas in
        # this process: asking for them again raises the same error instead of training them again.
        self.diverged: dict[str, DivergenceError] = {}

    def record_divergence(self, segment: str, error: DivergenceError) -> None:
        self.diverged[segment] = error
        self.log(str(error))

    def raise_if_diverged(self, segment: str) -> None:
        if segment in self.diverged:
            raise DivergenceError(str(self.diverged[segment]))

    @property
    def key(self) -> str:
        return self.entry.key

    # ------------------------------------------------------------------ data and models
    @cached_property
    def dataset(self) -> Dataset:
        return load_for(self.config.data, self.data_root, self.device)

    @cached_property
    def eval_train(self) -> Split:
        """Fixed, unaugmented training subset for train error/loss and BN re-estimation."""
        return self.dataset.train.subset(self.config.data.eval_train_examples, seed=EVAL_SUBSET_SEED)

    def build_model(self) -> PrunableModel:
        """A freshly initialised model of this lineage (the same w_0 every time)."""
        ds = self.dataset
        model = build_model(self.config.model, ds.input_shape, ds.num_classes,
                            seed=derive_seed("init", self.config.seed)).to(self.device)
        return prepare_model(model, self.device) if self.fast else model

    @cached_property
    def excluded(self) -> frozenset[str]:
        """Prunable weights the strategy never ranks (e.g. a dense output layer)."""
        return frozenset(excluded_names(self.build_model(), self.config.prune))

    @cached_property
    def ranked_names(self) -> list[str]:
        """The prunable weights the pruning strategy ranks, in model order."""
        return [n for n in self.build_model().prunable_names() if n not in self.excluded]

    def model_with(self, state: dict[str, torch.Tensor], mask: Mask | None = None) -> PrunableModel:
        model = self.build_model()
        model.load_state_dict(state)
        if mask is not None:
            apply_mask(model, mask)
        return model

    # ------------------------------------------------------------------ stored states
    def initial_state(self) -> dict[str, torch.Tensor]:
        if not self.entry.has_tensors("init"):
            with self.entry.lock():
                if not self.entry.has_tensors("init"):
                    self.entry.write_tensors("init", self.build_model().state_dict())
        return self.entry.read_tensors("init", self.device)[0]

    def rewind_state(self) -> dict[str, torch.Tensor]:
        """w_k: the dense network after `rewind_iteration` iterations (w_0 when k = 0)."""
        if self.config.rewind_iteration == 0:
            return self.initial_state()
        if not self.entry.has_tensors("rewind"):
            self.raise_if_diverged("pretrain")
            with self.entry.lock():
                if not self.entry.has_tensors("rewind"):
                    self._pretrain()
        return self.entry.read_tensors("rewind", self.device)[0]

    def _pretrain(self) -> None:
        k = self.config.rewind_iteration
        model = self.model_with(self.initial_state())
        self.log(f"pretraining dense network to rewind iteration {k}")
        self._train_segment(model, dense_mask(model), "pretrain", 0, k, "pretraining")
        self.entry.write_tensors("rewind", model.state_dict(), {"iteration": str(k)})
        self.entry.delete("pretrain_checkpoint")

    def require_training(self, what: str) -> None:
        """Refuse to train in cache-only mode (e.g. `lth-checks report`), naming what is missing."""
        if not self.allow_training:
            raise CacheError(f"{what} of {self.config.recipe} (key {self.key}, seed {self.config.seed}, rewind "
                             f"{self.config.rewind_iteration}) is not in the cache at {self.store.root}; "
                             "run the claims or `lth-checks run` first")

    def _train_segment(self, model: PrunableModel, mask: Mask, name: str, start: int, end: int, label: str) -> None:
        self.require_training(label)
        train_in_entry(self.entry, f"{name}_checkpoint", model, mask, self.dataset.train, self.config,
                       start=start, end=end, data_seed=self.config.seed, checkpoint_every=self.checkpoint_every,
                       progress=self.progress, log=self.log, label=label, fast=self.fast,
                       compile_model=self.compile_model)

    # ------------------------------------------------------------------ levels
    @staticmethod
    def _name(level: int, what: str) -> str:
        return f"level{level:02d}_{what}"

    def is_done(self, level: int) -> bool:
        return self.entry.has_json(self._name(level, "metrics.json"))

    def finished_levels(self) -> int:
        """Number of consecutive finished levels starting at 0."""
        n = 0
        while self.is_done(n):
            n += 1
        return n

    def result(self, level: int) -> LevelResult:
        name = self._name(level, "metrics.json")
        try:
            return LevelResult(**self.entry.read_json(name))
        except TypeError:
            raise CacheError(f"cache entry {self.entry.path} has a {name} of another layout; "
                             "delete that directory to recompute it") from None

    def mask(self, level: int) -> Mask:
        """m_L: dense at level 0; otherwise pruned from the level-(L-1) solution (and stored)."""
        if level == 0:
            return dense_mask(self.build_model())
        name = self._name(level, "mask")
        if not self.entry.has_tensors(name):
            previous = self.model_with(self.solution(level - 1))
            new_mask = prune_model(previous, self.mask(level - 1), self.config.prune,
                                   seed=derive_seed("prune", self.config.seed, level))
            self.entry.write_tensors(name, new_mask)
        return self.entry.read_tensors(name, self.device)[0]

    def solution(self, level: int) -> dict[str, torch.Tensor]:
        """w_L: the full state (weights and BN buffers) at the end of level L's training."""
        if not self.is_done(level):
            self.run(level)
        return self.entry.read_tensors(self._name(level, "final"), self.device)[0]

    def solution_model(self, level: int) -> PrunableModel:
        return self.model_with(self.solution(level))

    def pruned_rewind_model(self, level: int) -> PrunableModel:
        """m_L * w_k, the starting point of level L."""
        return self.model_with(self.rewind_state(), self.mask(level))

    def evaluate_model(self, model: PrunableModel) -> dict[str, float]:
        test = evaluate(model, self.dataset.test, precision=self.config.train.precision)
        tr = evaluate(model, self.eval_train, precision=self.config.train.precision)
        return {"test_error": test.error, "test_loss": test.loss, "train_error": tr.error, "train_loss": tr.loss}

    def _train_level(self, level: int) -> LevelResult:
        cfg = self.config
        started = time.perf_counter()
        mask = self.mask(level)
        model = self.model_with(self.rewind_state(), mask)
        self._train_segment(model, mask, self._name(level, "train"), cfg.rewind_iteration,
                            cfg.train.iterations, f"level {level}")
        return self._commit_level(level, model, mask, time.perf_counter() - started)

    def _commit_level(self, level: int, model: PrunableModel, mask: Mask, seconds: float) -> LevelResult:
        result = LevelResult(level=level, alive=alive_count(mask), total=total_count(mask),
                             density=alive_count(mask) / total_count(mask), **self.evaluate_model(model),
                             wall_time_s=round(seconds, 3), device=str(self.device))
        self.entry.write_tensors(self._name(level, "final"), model.state_dict())
        self.entry.write_json(self._name(level, "metrics.json"), result.to_dict())  # commit marker: last
        self.entry.delete(self._name(level, "train_checkpoint"))
        return result

    def run(self, levels: int | None = None) -> list[LevelResult]:
        """Make sure levels 0..`levels` (default: the config's) are finished; return their results."""
        last = self.config.levels if levels is None else levels
        if self.finished_levels() <= last:
            with self.entry.lock():
                self.entry.ensure()
                for level in range(last + 1):
                    if not self.is_done(level):
                        self.raise_if_diverged(self._name(level, "train"))
                        res = self._train_level(level)
                        self.log(f"level {level}: density {res.density:.4f}  test error {100 * res.test_error:.2f}%")
        return [self.result(level) for level in range(last + 1)]


def run_together(experiments: Sequence[Experiment], levels: int | None = None) -> int:
    """Train lineages that differ only in their seed side by side, level by level, as replicas.

    Replicates of one recipe and rewind share the architecture and the iteration range, so their
    pretraining and each level train together through `replicas.train_replicas` (vmap on a GPU,
    where one small model leaves it idle; on the CPU a loop bitwise equal to one-by-one training).
    Levels are committed to each lineage's own cache entry exactly as `Experiment.run` would, and
    checkpoint in-level under the names single training uses (either resumes the other's);
    lineages another process holds are left to it. A lineage that diverges is recorded as
    diverged (`Experiment.run` raises its DivergenceError) and leaves the group; the others are
    committed. Returns the number of trainings done and committed here.
    """
    groups: dict[str, list[Experiment]] = {}
    for e in experiments:
        shared = {k: v for k, v in e.config.key_dict().items() if k != "seed"}
        groups.setdefault(json.dumps(shared, sort_keys=True) + str(e.device), []).append(e)
    trained = 0
    for group in groups.values():
        if len(group) < 2:
            continue
        cfg = group[0].config
        last = cfg.levels if levels is None else levels
        if cfg.rewind_iteration > 0:
            trained += _together(group, "pretrain", lambda e: not e.entry.has_tensors("rewind"),
                                 0, cfg.rewind_iteration, "pretraining",
                                 lambda e: (dense_mask(e.build_model()), e.initial_state()), _commit_rewind)
        for level in range(last + 1):
            trained += _together(group, Experiment._name(level, "train"), lambda e, level=level: not e.is_done(level),
                                 cfg.rewind_iteration, cfg.train.iterations, f"level {level}",
                                 lambda e, level=level: (e.mask(level), e.rewind_state()),
                                 lambda e, model, mask, seconds, level=level: e._commit_level(level, model, mask,
                                                                                              seconds))
    return trained


def _commit_rewind(e: Experiment, model: PrunableModel, mask: Mask, seconds: float) -> None:
    e.entry.write_tensors("rewind", model.state_dict(), {"iteration": str(e.config.rewind_iteration)})
    e.entry.delete("pretrain_checkpoint")


def _together(group: list[Experiment], segment: str, needed: Callable[[Experiment], bool],
              start: int, end: int, label: str, begin: Callable[[Experiment], tuple[Mask, dict]],
              commit: Callable) -> int:
    """One segment of `run_together`: lock, train the lineages that still need it, commit each."""
    def wanted(e: Experiment) -> bool:
        return not e.diverged and needed(e)  # a diverged lineage has no later segments to train

    if sum(map(wanted, group)) < 2:
        return 0  # a single lineage trains on demand, with in-level checkpoints
    with holding_free(group, lambda e: e.entry) as held:
        batch = [e for e in held if wanted(e)]  # re-checked under the lock: it may have just been finished
        if len(batch) < 2:
            return 0
        for e in batch:
            e.require_training(label)
            e.entry.ensure()
        started = time.perf_counter()
        starts = [begin(e) for e in batch]
        models = [e.model_with(state, mask) for e, (mask, state) in zip(batch, starts)]
        cfg = batch[0].config
        finals = train_group_in_entries(
            [e.entry for e in batch], f"{segment}_checkpoint", batch[0].build_model(),
            [m.state_dict() for m in models], [mask for mask, _ in starts], batch[0].dataset.train, cfg,
            start=start, end=end, data_seeds=[e.config.seed for e in batch],
            checkpoint_every=batch[0].checkpoint_every, label=f"{cfg.recipe} {label} x{len(batch)}",
            names=[f"{cfg.recipe} {label} of seed {e.config.seed}" for e in batch], log=batch[0].log)
        seconds = (time.perf_counter() - started) / len(batch)
        committed = 0
        for e, model, final, (mask, _) in zip(batch, models, finals, starts):
            if isinstance(final, DivergenceError):
                e.record_divergence(segment, final)
                continue
            model.load_state_dict(final)
            commit(e, model, mask, seconds)
            committed += 1
            e.log(f"{label} of seed {e.config.seed} trained with {len(batch) - 1} other replicate(s)")
        return committed


def train_group_in_entries(entries: Sequence[Entry], checkpoint_name: str, template: PrunableModel,
                           states: Sequence[dict[str, torch.Tensor]], masks: Sequence[Mask], split: Split,
                           config: IMPConfig, *, start: int, end: int, data_seeds: Sequence[int],
                           checkpoint_every: int, label: str, names: Sequence[str],
                           log: Callable[[str], None] = lambda msg: None) -> list[dict | DivergenceError]:
    """`train_in_entry` for a group trained as replicas: member i's final state, or its DivergenceError.

    Member i checkpoints to `entries[i]` under `checkpoint_name`, the name its single training
    uses, so either way of training resumes the other's checkpoint; members that resume from the
    same iteration train together. A diverging member (`names[i]` in its message) does not stop
    the others. The caller deletes the checkpoints after committing, never before.
    """
    from .replicas import train_replicas

    device = next(template.parameters()).device
    resumes = [tensors_to_checkpoint(*e.read_tensors(checkpoint_name, device)) if e.has_tensors(checkpoint_name)
               else None for e in entries]
    out: list[dict | DivergenceError | None] = [None] * len(entries)
    cohorts: dict[int, list[int]] = {}
    for i, ckpt in enumerate(resumes):
        cohorts.setdefault(start if ckpt is None else ckpt.iteration, []).append(i)
    for at, members in sorted(cohorts.items()):
        if at != start:
            log(f"{label}: {len(members)} replica(s) resuming from checkpoints at iteration {at}")
        for i in members:
            entries[i].record_training(checkpoint_name, start, end, None if at == start else at)

        def on_checkpoint(ckpts: list[Checkpoint | None], members: list[int] = members) -> None:
            for i, ckpt in zip(members, ckpts):
                if ckpt is not None:
                    entries[i].write_tensors(checkpoint_name, state_to_tensors(ckpt),
                                             {"iteration": str(ckpt.iteration)})

        def on_diverged(r: int, error, members: list[int] = members) -> None:
            out[members[r]] = DivergenceError(f"{names[members[r]]} diverged (trained as a replica): {error.cause}; "
                                              "lower train.lr or use precision fp32, then run again")

        finals = train_replicas(template, [states[i] for i in members], [masks[i] for i in members], split,
                                config.train, start=start, end=end, data_seeds=[data_seeds[i] for i in members],
                                augment=config.data.augment, label=label,
                                resume=None if at == start else [resumes[i] for i in members],
                                checkpoint_every=checkpoint_every, on_checkpoint=on_checkpoint,
                                on_diverged=on_diverged)
        for i, final in zip(members, finals):
            if final is not None:
                out[i] = final
    return out  # every member is either a state or an error by now


def train_in_entry(entry: Entry, checkpoint_name: str, model: PrunableModel, mask: Mask, split: Split,
                   config: IMPConfig, *, start: int, end: int, data_seed: int, checkpoint_every: int,
                   progress: bool = False, log: Callable[[str], None] = lambda msg: None,
                   label: str = "training", fast: bool = False, compile_model: bool = False) -> None:
    """Train with periodic checkpoints stored in `entry`, resuming from one if present.

    Shared by IMP levels and branch experiments, so every training in the cache is resumable.
    The caller deletes the checkpoint after committing its result, never before.
    """
    resume = None
    if entry.has_tensors(checkpoint_name):
        resume = tensors_to_checkpoint(*entry.read_tensors(checkpoint_name, next(model.parameters()).device))
        log(f"{label}: resuming from checkpoint at iteration {resume.iteration}")
    entry.record_training(checkpoint_name, start, end, resume.iteration if resume else None)
    bar = _progress_bar(progress, end - start, label, resume.iteration - start if resume else 0)

    def on_progress(done: int) -> None:
        bar.n = done - start
        bar.refresh()

    def on_checkpoint(ckpt: Checkpoint) -> None:
        entry.write_tensors(checkpoint_name, state_to_tensors(ckpt), {"iteration": str(ckpt.iteration)})

    maybe_compile(model, compile_model)
    try:
        train(model, mask, split, config.train, start=start, end=end, data_seed=data_seed,
              augment=config.data.augment, resume=resume, checkpoint_every=checkpoint_every,
              on_checkpoint=on_checkpoint, on_progress=on_progress, label=f"{config.recipe} {label}",
              fused_optimizer=fast)
    finally:
        eager(model)  # torch.func transforms (Hessian) and evaluation get the plain module back
        bar.close()


def _progress_bar(enabled: bool, total: int, desc: str, initial: int):
    import sys

    from tqdm.auto import tqdm

    # Only on a terminal: in logs and CI a redrawn bar is noise.
    show = enabled and sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc=desc, unit="it", disable=not show, leave=False,
                dynamic_ncols=True)
