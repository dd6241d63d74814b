"""Typed, frozen configuration: the single source for the command line, cache keys and reports.

Every experiment is identified by the content hash of its canonical JSON form, so the same
configuration always lands in the same cache directory, on any machine and Python version.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import ConfigError

# Bump when the meaning of a stored result changes, so old cache entries are not reused.
SCHEMA_VERSION = 1

DATASETS = ("digits", "mnist", "cifar10", "cifar100", "imagenet")
MODELS = ("mlp", "lenet300", "cifar_resnet", "vgg16_bn", "resnet18", "resnet50")
PRUNE_STRATEGIES = ("magnitude_global", "magnitude_layerwise", "random_global", "random_layerwise")
PRECISIONS = ("fp32", "bf16")


def _choice(value: str, valid: tuple[str, ...], what: str) -> None:
    if value not in valid:
        raise ConfigError(f"unknown {what} {value!r}; valid choices: {', '.join(valid)}")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, whether to augment, and the fixed training subset used for evaluation."""

    dataset: str = "digits"
    augment: bool = False  # random crop with 4-pixel padding (scaled with `resolution`) + horizontal flip
    eval_train_examples: int = 10_000  # fixed, unaugmented training subset for train error/loss
    resolution: int = 0  # image side after average pooling (must divide the native side); 0 = native
    train_examples: int = 0  # fixed, seeded, class-balanced training subset; 0 = the whole training split

    def __post_init__(self) -> None:
        _choice(self.dataset, DATASETS, "dataset")
        _check(self.eval_train_examples > 0, "data.eval_train_examples must be positive")
        _check(self.resolution >= 0, f"data.resolution must be >= 0 (0 = native size), got {self.resolution}")
        _check(self.train_examples >= 0,
               f"data.train_examples must be >= 0 (0 = the whole training split), got {self.train_examples}")

    # Fields added after cache keys were pinned, with the value that changes nothing. They are left out
    # of the canonical (hashed) form at that value, so every configuration that existed before them keeps
    # its cache key (tests/test_config.py pins some); any other value is part of the key.
    NO_CHANGE_DEFAULTS: typing.ClassVar[dict[str, Any]] = {"resolution": 0, "train_examples": 0}

    def key_dict(self) -> dict[str, Any]:
        """The hashed form: every field except those still at their no-change default."""
        return {k: v for k, v in to_dict(self).items()
                if not (k in self.NO_CHANGE_DEFAULTS and v == self.NO_CHANGE_DEFAULTS[k])}


@dataclass(frozen=True)
class ModelConfig:
    """Architecture. `width`/`depth` apply to the CIFAR ResNet; `hidden` to the MLP."""

    name: str = "mlp"
    depth: int = 20
    width: int = 16
    hidden: tuple[int, ...] = (128, 64)

    def __post_init__(self) -> None:
        _choice(self.name, MODELS, "model")
        _check(self.width > 0, "model.width must be positive")
        if self.name == "cifar_resnet":
            _check((self.depth - 2) % 6 == 0 and self.depth >= 8,
                   f"model.depth for cifar_resnet must be 6n+2 (8, 14, 20, 32, 56, ...), got {self.depth}")
        _check(all(h > 0 for h in self.hidden), "model.hidden sizes must be positive")


@dataclass(frozen=True)
class TrainConfig:
    """SGD with a step learning-rate schedule, counted in iterations (not epochs)."""

    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    batch_size: int = 128
    iterations: int = 1000
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_iterations: int = 0
    precision: str = "fp32"  # "bf16" = bfloat16 autocast; part of the key because it changes results

    def __post_init__(self) -> None:
        _check(self.lr > 0 and math.isfinite(self.lr), f"train.lr must be positive and finite, got {self.lr}")
        _check(0 <= self.momentum < 1, f"train.momentum must be in [0, 1), got {self.momentum}")
        _check(self.weight_decay >= 0 and math.isfinite(self.weight_decay),
               f"train.weight_decay must be >= 0 and finite, got {self.weight_decay}")
        _check(self.gamma > 0 and math.isfinite(self.gamma),
               f"train.gamma must be positive and finite, got {self.gamma}")
        _check(self.batch_size > 0, "train.batch_size must be positive")
        _check(self.iterations > 0, "train.iterations must be positive")
        _check(list(self.milestones) == sorted(self.milestones), "train.milestones must be increasing")
        _check(all(0 < m < self.iterations for m in self.milestones),
               f"train.milestones must lie in (0, {self.iterations}), got {self.milestones}")
        _check(self.warmup_iterations >= 0, "train.warmup_iterations must be >= 0")
        _check(not self.nesterov or self.momentum > 0, "train.nesterov needs momentum > 0")
        _choice(self.precision, PRECISIONS, "precision")

    def lr_at(self, iteration: int) -> float:
        """Learning rate used for the step that starts at `iteration` (0-based)."""
        lr = self.lr * self.gamma ** sum(1 for m in self.milestones if iteration >= m)
        if self.warmup_iterations and iteration < self.warmup_iterations:
            lr *= (iteration + 1) / self.warmup_iterations
        return lr


@dataclass(frozen=True)
class PruneConfig:
    """What to remove at each level: a fraction of the alive weights, ranked by `strategy`."""

    fraction: float = 0.2
    strategy: str = "magnitude_global"
    exclude_output: bool = False  # OpenLTH leaves the output layer dense for LeNet and VGG
    exclude: tuple[str, ...] = ()  # further parameter names never pruned

    def __post_init__(self) -> None:
        _check(0 < self.fraction < 1, f"prune.fraction must be in (0, 1), got {self.fraction}")
        _choice(self.strategy, PRUNE_STRATEGIES, "pruning strategy")


@dataclass(frozen=True)
class IMPConfig:
    """One IMP lineage: everything that determines the masks and solutions of every level.

    `levels` says how far to go, not what each level is, so it is left out of the key:
    asking for more levels later extends the same cache entry.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    rewind_iteration: int = 0
    seed: int = 0
    levels: int = 10
    recipe: str = "custom"  # a label for reports; not part of the key

    def __post_init__(self) -> None:
        _check(0 <= self.rewind_iteration < self.train.iterations,
               f"rewind_iteration must be in [0, {self.train.iterations}), got {self.rewind_iteration}")
        _check(self.levels >= 0, "levels must be >= 0")
        _check(self.seed >= 0, "seed must be >= 0")

    def key_dict(self) -> dict[str, Any]:
        """What identifies the lineage's results (everything except `levels` and `recipe`)."""
        d = to_dict(self)
        del d["levels"], d["recipe"]
        d["data"] = self.data.key_dict()
        return d

    @property
    def key(self) -> str:
        return content_hash(self.key_dict())


# ----------------------------------------------------------------------------- serialisation

def to_dict(obj: Any) -> Any:
    """Plain JSON-ready form of a (nested) config dataclass; tuples become lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    return obj


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace, shortest round-trip floats: identical bytes everywhere."""
    return json.dumps({"schema": SCHEMA_VERSION, "value": to_dict(obj)}, sort_keys=True,
                      separators=(",", ":"), allow_nan=False)


def content_hash(obj: Any, length: int = 16) -> str:
    """Hex SHA-256 prefix of the canonical JSON form."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


T = TypeVar("T")


def _coerce(tp: Any, value: Any, name: str) -> Any:
    """Convert JSON/CLI values into the declared field type."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping, got {value!r}")
        return from_dict(tp, value, prefix=f"{name}.")
    if origin is tuple:
        (inner, *_rest) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        return tuple(_coerce(inner, v, name) for v in value)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value in (None, "none", "None") else _coerce(args[0], value, name)
    try:
        if tp is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if tp is float:
            return float(value)
        if tp is str:
            return str(value)
    except ValueError:
        raise ConfigError(f"{name} expects {getattr(tp, '__name__', tp)}, got {value!r}") from None
    return value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Rebuild a config dataclass, rejecting unknown keys with the list of valid ones."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"unknown setting {prefix}{unknown[0]}; valid settings: "
                          + ", ".join(prefix + n for n in names))
    kwargs = {k: _coerce(hints[k], v, prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def override(config: T, assignments: typing.Iterable[str]) -> T:
    """Apply `section.field=value` strings (as given to `--set`) to a frozen config."""
    d = to_dict(config)
    for item in assignments:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value (e.g. train.lr=0.05), got {item!r}")
        key, value = item.split("=", 1)
        node = d
        *parents, leaf = key.strip().split(".")
        for p in parents:
            if not isinstance(node.get(p), dict):
                raise ConfigError(f"unknown setting {key!r}; sections: "
                                  + ", ".join(k for k, v in d.items() if isinstance(v, dict)))
            node = node[p]
        if leaf not in node:
            raise ConfigError(f"unknown setting {key!r}; valid here: {', '.join(sorted(node))}")
        node[leaf] = value
    return from_dict(type(config), d)
