"""Perturbations of the pruned rewind point (the perturbation claim).

r_L = ||(m_L - m_{L+1}) * w_k||_2 is the norm of the rewind-point weights the next mask removes,
i.e. the distance between successive pruned rewind points. A perturbation is a seeded Gaussian
direction on the alive coordinates of m_L, rescaled to norm c * r_L (CLAIMS.md, "(ours)").
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..training import derive_seed


def perturbation_scale(rewind_weights: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor],
                       next_mask: Mapping[str, torch.Tensor]) -> float:
    """r_L: norm of the weights of w_k alive in `mask` but removed in `next_mask`."""
    total = torch.zeros((), dtype=torch.float64)
    for name, m in mask.items():
        removed = m & ~next_mask[name]
        total += rewind_weights[name].detach().double()[removed].square().sum().cpu()
    return float(total.sqrt())


def gaussian_direction(mask: Mapping[str, torch.Tensor], norm: float, seed: int,
                       dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A Gaussian direction on the alive coordinates of `mask`, scaled to exactly `norm`.

    Drawn in float64 from a CPU generator (same seed, same direction on any device), then cast.
    Pruned coordinates are exactly zero.
    """
    g = torch.Generator().manual_seed(derive_seed("perturbation", seed))
    raw = {n: torch.randn(m.shape, generator=g, dtype=torch.float64) * m.cpu() for n, m in mask.items()}
    current = torch.sqrt(sum(v.square().sum() for v in raw.values()))
    scale = norm / float(current) if float(current) > 0 else 0.0
    return {n: (v * scale).to(device=mask[n].device, dtype=dtype) for n, v in raw.items()}


def direction_norm(direction: Mapping[str, torch.Tensor]) -> float:
    return float(torch.sqrt(sum(v.double().square().sum().cpu() for v in direction.values())))


@torch.no_grad()
def add_direction(state: Mapping[str, torch.Tensor], direction: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A copy of `state` with `direction` added to the named weights."""
    out = {k: v.clone() for k, v in state.items()}
    for name, d in direction.items():
        out[name] += d.to(out[name].dtype)
    return out
