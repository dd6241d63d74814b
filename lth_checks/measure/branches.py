"""Branch experiments: trainings that start from an IMP lineage's level L and are cached beside it.

Key = (parent configuration, branch spec), in the same content-addressed store, trained through
the same resumable, checkpointed loop as the IMP levels.

- sgd_noise: retrain m_L * w_k with another data-order seed (LMC's instability test).
- perturb:   retrain m_L * w_k + delta, delta Gaussian on the alive coordinates of m_L with
             norm c * r_L (the perturbation claim); an independent direction for every (c, replicate, level).
- oneshot:   prune a fraction p of the alive weights of w_L by magnitude or at random, rewind to
             w_k with that mask, retrain (the flatness claim's p_max). At the lineage's own fraction and
             magnitude strategy this is IMP's level L+1, which is read instead of trained again.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from ..config import PRUNE_STRATEGIES, to_dict
from ..errors import ConfigError, DivergenceError
from ..imp import Experiment, train_group_in_entries, train_in_entry
from ..pruning import Mask, alive_count, density, excluded_names, prunable_weights, prune
from ..store import Entry, holding_free
from ..training import derive_seed
from .perturbation import add_direction, gaussian_direction, perturbation_scale

BRANCH_KINDS = ("sgd_noise", "perturb", "oneshot")


@dataclass(frozen=True)
class BranchSpec:
    """What a branch changes relative to level `level` of its parent lineage."""

    kind: str
    level: int
    data_seed: int | None = None  # None: the parent's data order
    c: float = 0.0  # perturb: norm of delta in units of r_L
    noise_seed: int = 0  # perturb: direction seed; oneshot: random-pruning seed
    fraction: float = 0.2  # oneshot: fraction of alive weights of w_L removed at once
    strategy: str = "magnitude_global"  # oneshot: how they are chosen

    def __post_init__(self) -> None:
        if self.kind not in BRANCH_KINDS:
            raise ConfigError(f"unknown branch kind {self.kind!r}; valid choices: {', '.join(BRANCH_KINDS)}")
        if self.level < 0:
            raise ConfigError("branch level must be >= 0")
        if self.c < 0:
            raise ConfigError(f"perturbation size c must be >= 0, got {self.c}")
        if not 0 < self.fraction < 1:
            raise ConfigError(f"one-shot fraction must be in (0, 1), got {self.fraction}")
        if self.strategy not in PRUNE_STRATEGIES:
            raise ConfigError(f"unknown pruning strategy {self.strategy!r}; "
                              f"valid choices: {', '.join(PRUNE_STRATEGIES)}")

    def key_dict(self) -> dict:
        """Only the fields the kind uses, so e.g. c does not split sgd_noise entries."""
        used = {"sgd_noise": ("data_seed",), "perturb": ("c", "noise_seed", "data_seed"),
                "oneshot": ("fraction", "strategy", "noise_seed", "data_seed")}[self.kind]
        d = to_dict(self)
        # "rng": random draws depend on (replicate, level, noise_seed); entries made before that differ.
        # rng 3 (perturb): the direction is drawn anew for every c (issue 9: one direction rescaled
        # for every c made the c cases one draw counted several times)
        rng = 3 if self.kind == "perturb" else 2
        return {"kind": self.kind, "level": self.level, "rng": rng, **{k: d[k] for k in used}}

    @property
    def label(self) -> str:
        extra = {"sgd_noise": f"data seed {self.data_seed}", "perturb": f"c={self.c:g}",
                 "oneshot": f"p={self.fraction:g} {self.strategy}"}[self.kind]
        return f"level {self.level} {self.kind} ({extra})"


@dataclass(frozen=True)
class BranchResult:
    spec: dict
    alive: int
    density: float
    test_error: float
    test_loss: float
    train_error: float
    train_loss: float
    perturbation_norm: float  # |delta| for perturb branches, else 0
    scale_r: float  # r_L for perturb branches, else 0
    wall_time_s: float
    imp_level: int | None = None  # the IMP level this branch is (read, not trained; wall time 0), if any

    def to_dict(self) -> dict:
        return asdict(self)


class Branch:
    """A branch of `parent` described by `spec`; `result()` trains it on first use."""

    kind = "branch"

    def __init__(self, parent: Experiment, spec: BranchSpec):
        self.parent, self.spec = parent, spec
        self.entry: Entry = parent.store.entry(self.kind, {"parent": parent.config.key_dict(),
                                                           "branch": spec.key_dict()})

    @property
    def _rng_parts(self) -> tuple[int, int, int]:
        """Random draws differ across replicates and levels, not only across noise seeds."""
        return self.parent.config.seed, self.spec.level, self.spec.noise_seed

    @property
    def data_seed(self) -> int:
        return self.parent.config.seed if self.spec.data_seed is None else self.spec.data_seed

    @property
    def imp_level(self) -> int | None:
        """The IMP level this branch is the same experiment as, or None.

        A one-shot prune of w_L at the lineage's own fraction and strategy, rewound to w_k and
        retrained with the lineage's data order, is how IMP makes level L+1 (`Experiment.mask`
        prunes with the same `pruning.prune`, exclusions and tie-break). Only for magnitude
        strategies: random ones draw the mask with another seed than IMP does.
        """
        spec, cfg = self.spec, self.parent.config
        same = (spec.kind == "oneshot" and spec.fraction == cfg.prune.fraction and spec.strategy == cfg.prune.strategy
                and not spec.strategy.startswith("random") and self.data_seed == cfg.seed)
        return spec.level + 1 if same else None

    @property
    def segment(self) -> str:
        """This branch's name among its parent's recorded divergences."""
        return f"branch {self.entry.key}"

    def is_done(self) -> bool:
        if self.imp_level is not None:
            return self.parent.is_done(self.imp_level)
        return self.entry.has_json("metrics.json")

    def result(self) -> BranchResult:
        if self.imp_level is not None:
            return self._imp_result(self.imp_level)
        if not self.is_done():
            self.parent.raise_if_diverged(self.segment)
            with self.entry.lock():
                if not self.is_done():
                    self._train()
        return BranchResult(**self.entry.read_json("metrics.json"))

    def _imp_result(self, level: int) -> BranchResult:
        """IMP's level `level` (trained on demand like any level) in a branch record."""
        r = self.parent.run(level)[level]
        return BranchResult(spec=self.spec.key_dict(), alive=r.alive, density=r.density, test_error=r.test_error,
                            test_loss=r.test_loss, train_error=r.train_error, train_loss=r.train_loss,
                            perturbation_norm=0.0, scale_r=0.0, wall_time_s=0.0, imp_level=level)

    def solution(self) -> dict[str, torch.Tensor]:
        if self.imp_level is not None:
            return self.parent.solution(self.imp_level)
        self.result()
        return self.entry.read_tensors("final", self.parent.device)[0]

    def mask(self) -> Mask:
        self.result()
        if self.imp_level is not None:
            return self.parent.mask(self.imp_level)
        return self.entry.read_tensors("mask", self.parent.device)[0]

    def _start(self) -> tuple[Mask, dict[str, torch.Tensor], float, float]:
        """Mask, starting state, |delta| and r_L for this branch."""
        exp, spec = self.parent, self.spec
        rewind = exp.rewind_state()
        if spec.kind == "oneshot":
            model = exp.solution_model(spec.level)
            mask = prune(prunable_weights(model), exp.mask(spec.level), spec.fraction, spec.strategy,
                         excluded_names(model, exp.config.prune), seed=derive_seed("oneshot", *self._rng_parts))
            return mask, rewind, 0.0, 0.0
        mask = exp.mask(spec.level)
        if spec.kind == "sgd_noise" or spec.c == 0:
            return mask, rewind, 0.0, 0.0
        r = perturbation_scale(rewind, mask, exp.mask(spec.level + 1))
        delta = gaussian_direction(mask, spec.c * r, derive_seed(*self._rng_parts, "c", spec.c))
        return mask, add_direction(rewind, delta), spec.c * r, r

    def _train(self) -> None:
        exp, cfg = self.parent, self.parent.config
        exp.require_training(self.spec.label)
        started = time.perf_counter()
        mask, start_state, delta_norm, r = self._start()
        model = exp.model_with(start_state, mask)
        train_in_entry(self.entry, "checkpoint", model, mask, exp.dataset.train, cfg,
                       start=cfg.rewind_iteration, end=cfg.train.iterations, data_seed=self.data_seed,
                       checkpoint_every=exp.checkpoint_every, progress=exp.progress, log=exp.log,
                       label=self.spec.label, fast=exp.fast, compile_model=exp.compile_model)
        self._commit(model, mask, delta_norm, r, time.perf_counter() - started)

    def _commit(self, model: torch.nn.Module, mask: Mask, delta_norm: float, r: float, seconds: float) -> None:
        exp = self.parent
        metrics = exp.evaluate_model(model)
        result = BranchResult(spec=self.spec.key_dict(), alive=alive_count(mask), density=density(mask),
                              perturbation_norm=delta_norm, scale_r=r, wall_time_s=round(seconds, 3), **metrics)
        self.entry.write_tensors("mask", mask)
        self.entry.write_tensors("final", model.state_dict())
        self.entry.write_json("metrics.json", result.to_dict())  # commit marker: last
        self.entry.delete("checkpoint")
        exp.log(f"{self.spec.label}: test error {100 * result.test_error:.2f}%")


def train_together(parent: Experiment, specs: Sequence[BranchSpec], group: int = 16) -> int:
    """Train the branches of `specs` that are not cached yet several at a time, as replicas.

    All branches of one lineage share the architecture and the iteration range (k to T), so they
    train together through `replicas.train_replicas` (vmap on a GPU; on the CPU a loop that is
    bitwise equal to training them one by one). Each result is committed to its own cache entry
    exactly as `Branch.result()` would, with in-level checkpoints under the name its single
    training uses. Branches another process is training (lock held) are left to it. A diverging
    branch is recorded on `parent` (its `result()` raises the DivergenceError); the others are
    committed. Returns the number trained and committed here.
    """
    # branches that are IMP levels are left to IMP (trained, if at all, as levels of the lineage);
    # diverged ones raise their error when asked for
    todo = [b for b in (Branch(parent, s) for s in specs)
            if b.imp_level is None and b.segment not in parent.diverged and not b.is_done()]
    if len(todo) < 2:
        return 0  # a single branch trains on demand, with in-level checkpoints
    parent.require_training(f"{len(todo)} branch experiments")
    cfg, trained = parent.config, 0
    for first in range(0, len(todo), group):
        with holding_free(todo[first:first + group], lambda b: b.entry) as held:
            batch = [b for b in held if not b.is_done()]  # re-checked under the lock
            if not batch:
                continue
            started = time.perf_counter()
            starts = [b._start() for b in batch]
            models = [parent.model_with(state, mask) for mask, state, _, _ in starts]
            finals = train_group_in_entries(
                [b.entry for b in batch], "checkpoint", parent.build_model(), [m.state_dict() for m in models],
                [mask for mask, _, _, _ in starts], parent.dataset.train, cfg, start=cfg.rewind_iteration,
                end=cfg.train.iterations, data_seeds=[b.data_seed for b in batch],
                checkpoint_every=parent.checkpoint_every, label=f"{len(batch)} branches of {cfg.recipe}",
                names=[f"{cfg.recipe} seed {cfg.seed} {b.spec.label}" for b in batch], log=parent.log)
            seconds = (time.perf_counter() - started) / len(batch)
            for b, model, final, (mask, _, delta_norm, r) in zip(batch, models, finals, starts):
                if isinstance(final, DivergenceError):
                    parent.record_divergence(b.segment, final)
                    continue
                model.load_state_dict(final)
                b._commit(model, mask, delta_norm, r, seconds)
                trained += 1
    return trained

