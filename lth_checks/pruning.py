"""Masks and pruning.

A mask is a plain `dict[str, torch.Tensor]`: parameter name -> bool tensor of the parameter's shape,
on the parameter's device. Every prunable weight has an entry (excluded layers stay all True).
Each strategy removes exactly round(p * alive) of the alive, non-excluded weights with a
deterministic tie-break (lower flat index first among equal magnitudes), so masks are nested
and runs are reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence, Set

import torch

from .config import PruneConfig
from .errors import ConfigError
from .models import PrunableModel

Mask = dict[str, torch.Tensor]


def round_half_up(x: float) -> int:
    """round() without banker's rounding, robust to 0.2 * 5 = 1.0000000000000002."""
    return int(math.floor(x + 0.5 + 1e-9))


def dense_mask(model: PrunableModel) -> Mask:
    params = dict(model.named_parameters())
    return {n: torch.ones_like(params[n], dtype=torch.bool) for n in model.prunable_names()}


def prunable_weights(model: PrunableModel) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return {n: params[n].detach() for n in model.prunable_names()}


def excluded_names(model: PrunableModel, config: PruneConfig) -> set[str]:
    names = set(model.prunable_names())
    unknown = sorted(set(config.exclude) - names)
    if unknown:
        raise ConfigError(f"prune.exclude names unknown parameter {unknown[0]!r}; prunable: {', '.join(sorted(names))}")
    return set(config.exclude) | ({model.output_weight} if config.exclude_output else set())


def _select_smallest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Flat indices of the `count` smallest scores; ties go to the lower index (stable sort)."""
    order = torch.sort(scores, stable=True).indices
    return order[:count]


def _prune_pool(weights: list[torch.Tensor], masks: list[torch.Tensor], fraction: float,
                random: bool, generator: torch.Generator | None) -> list[torch.Tensor]:
    """Remove round(fraction * alive) alive entries across one pool of tensors; return new masks."""
    flat_masks = torch.cat([m.reshape(-1) for m in masks])
    alive_idx = flat_masks.nonzero().squeeze(1)
    count = round_half_up(fraction * alive_idx.numel())
    if random:
        # Random scores from a CPU generator, so the same seed gives the same mask on any device.
        scores = torch.rand(alive_idx.numel(), generator=generator).to(alive_idx.device)
    else:
        flat_w = torch.cat([w.reshape(-1) for w in weights]).abs().float()
        scores = flat_w[alive_idx]
    new_flat = flat_masks.clone()
    new_flat[alive_idx[_select_smallest(scores, count)]] = False
    out, start = [], 0
    for m in masks:
        out.append(new_flat[start:start + m.numel()].view_as(m))
        start += m.numel()
    return out


def pruning_pools(names: Sequence[str], strategy: str, exclude: Set[str] = frozenset()) -> list[list[str]]:
    """The groups of weights a strategy ranks together: all ranked weights (global) or each layer."""
    ranked = [n for n in names if n not in exclude]
    if strategy.endswith("_global"):
        return [ranked]
    if strategy.endswith("_layerwise"):
        return [[n] for n in ranked]
    raise ConfigError(f"unknown pruning strategy {strategy!r}")


def alive_after(pool_sizes: Sequence[int], fraction: float, levels: int) -> list[list[int]]:
    """Alive weights of each pool after 0..`levels` pruning steps: exactly what `prune` leaves
    (round(fraction * alive) removed per pool and step), known before anything is trained."""
    out = [list(pool_sizes)]
    for _ in range(levels):
        out.append([a - round_half_up(fraction * a) for a in out[-1]])
    return out


def prune(weights: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor], fraction: float,
          strategy: str = "magnitude_global", exclude: set[str] | frozenset[str] = frozenset(),
          seed: int = 0) -> Mask:
    """Next mask: remove `fraction` of the alive weights of `mask` by `strategy`.

    `weights` are the trained values (only used for magnitude strategies). The result is a subset
    of `mask`; excluded names are copied unchanged.
    """
    if not 0 <= fraction <= 1:
        raise ConfigError(f"prune fraction must be in [0, 1], got {fraction}")
    random = strategy.startswith("random")
    generator = torch.Generator().manual_seed(seed) if random else None
    new_mask = {n: m.clone() for n, m in mask.items()}
    for pool in pruning_pools(list(mask), strategy, exclude):
        if not pool:
            continue
        pruned = _prune_pool([weights[n] for n in pool], [mask[n] for n in pool], fraction, random, generator)
        new_mask.update(zip(pool, pruned))
    return new_mask


def prune_model(model: PrunableModel, mask: Mapping[str, torch.Tensor], config: PruneConfig,
                seed: int = 0, fraction: float | None = None) -> Mask:
    """Apply a PruneConfig to a trained model (fraction overridable, for one-shot sweeps)."""
    return prune(prunable_weights(model), mask, config.fraction if fraction is None else fraction,
                 config.strategy, excluded_names(model, config), seed)


@torch.no_grad()
def apply_mask(model: torch.nn.Module, mask: Mapping[str, torch.Tensor]) -> None:
    """Zero the pruned weights in place."""
    params = dict(model.named_parameters())
    for name, m in mask.items():
        params[name].mul_(m.to(params[name].dtype))


def alive_count(mask: Mapping[str, torch.Tensor]) -> int:
    return int(sum(int(m.sum()) for m in mask.values()))


def total_count(mask: Mapping[str, torch.Tensor]) -> int:
    return int(sum(m.numel() for m in mask.values()))


def density(mask: Mapping[str, torch.Tensor]) -> float:
    """Fraction of prunable weights still alive."""
    return alive_count(mask) / max(total_count(mask), 1)


def sparsity_report(mask: Mapping[str, torch.Tensor]) -> list[dict]:
    """Per-layer alive/total counts and density, plus a total row."""
    rows = [{"layer": n, "alive": int(m.sum()), "total": m.numel(), "density": float(m.float().mean())}
            for n, m in mask.items()]
    rows.append({"layer": "(all)", "alive": alive_count(mask), "total": total_count(mask),
                 "density": density(mask)})
    return rows


def is_nested(inner: Mapping[str, torch.Tensor], outer: Mapping[str, torch.Tensor]) -> bool:
    """True when every weight alive in `inner` is alive in `outer`."""
    return inner.keys() == outer.keys() and all(bool((inner[n] & ~outer[n]).sum() == 0) for n in inner)
