"""Weight statistics of projections and retraining (the small-weights claim).

For level L with solution w_L, mask m_L and next mask m_{L+1} = prune(w_L):
- relative projection length ||w_L - P(w_L)|| / ||w_L|| with P(w_L) = m_{L+1} * w_L;
- error of P(w_L) before any retraining (batch-norm statistics of w_L kept);
- the level threshold t_L = the smallest |w| that survives the projection (every survivor is >= t_L);
- refill: fraction of the alive weights of w_{L+1} below t_L (the gap below the threshold refills);
- new small weights: of the weights IMP prunes at L+1 (ranked on w_{L+1}), the share that pruning
  w_L again with the same fraction would NOT have removed, i.e. weights that were large in w_L and
  became small through retraining. (ours: read literally, "above t_L in w_L" holds for every
  survivor by construction, so the informative reference is the threshold of re-pruning w_L.)
Norms and thresholds run over the weights the pruning strategy ranks (excluded layers left out).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from ..imp import Experiment
from ..pruning import density, prunable_weights, prune

HISTOGRAM_BINS = 40


def _flat(weights: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    """Alive entries of the named weights, concatenated (float64, CPU)."""
    return torch.cat([weights[n].detach().double().cpu()[mask[n].cpu()] for n in names])


def _norm(weights: Mapping[str, torch.Tensor], names: list[str]) -> float:
    return float(torch.sqrt(sum(weights[n].detach().double().square().sum().cpu() for n in names)))


def projection_length(weights: Mapping[str, torch.Tensor], next_mask: Mapping[str, torch.Tensor],
                      names: list[str]) -> tuple[float, float]:
    """(||w - P(w)||, ||w||) over `names`."""
    removed = {n: weights[n] * (~next_mask[n]).to(weights[n].dtype) for n in names}
    return _norm(removed, names), _norm(weights, names)


def threshold(weights: Mapping[str, torch.Tensor], next_mask: Mapping[str, torch.Tensor], names: list[str]) -> float:
    """t: the smallest surviving magnitude after a projection."""
    alive = _flat(weights, next_mask, names).abs()
    return float(alive.min()) if alive.numel() else float("nan")


def histogram(values: dict[str, torch.Tensor], bins: int = HISTOGRAM_BINS) -> dict:
    """Histograms of several |w| samples on common bin edges, as plain lists (data, not a picture)."""
    top = max((float(v.max()) for v in values.values() if v.numel()), default=1.0)
    edges = np.linspace(0.0, top, bins + 1)
    return {"edges": edges.tolist(),
            **{k: np.histogram(v.numpy(), bins=edges)[0].tolist() for k, v in values.items()}}


def _projection(exp: Experiment, level: int, names: list[str]) -> dict:
    """P(w_L) of IMP's own next mask: its length and the projected network's metrics."""
    w_l = prunable_weights(exp.solution_model(level))
    m_next = exp.mask(level + 1)
    removed_norm, norm = projection_length(w_l, m_next, names)
    metrics = exp.evaluate_model(exp.model_with(exp.solution(level), m_next))
    return {"weights": w_l, "next_mask": m_next, "projection_length": removed_norm, "weight_norm": norm,
            "metrics": metrics}


def level_statistics(exp: Experiment, level: int) -> dict:
    """Claim-4 statistics of level `level` (trains levels L and L+1 if they are not cached)."""
    names, excluded = exp.ranked_names, exp.excluded
    p = exp.config.prune.fraction
    proj = _projection(exp, level, names)
    w_l, m_next, projected_metrics = proj["weights"], proj["next_mask"], proj["metrics"]
    t_l = threshold(w_l, m_next, names)

    w_next = prunable_weights(exp.solution_model(level + 1))
    m_next2 = exp.mask(level + 2)
    survivors_after_projection = _flat(w_l, m_next, names).abs()
    alive_next = _flat(w_next, m_next, names).abs()
    refill = float((alive_next < t_l).double().mean())

    pruned_by_imp = {n: m_next[n] & ~m_next2[n] for n in names}
    again = prune(w_l, m_next, p, exp.config.prune.strategy, excluded)
    pruned_again = {n: m_next[n] & ~again[n] for n in names}
    imp_count = sum(int(v.sum()) for v in pruned_by_imp.values())
    overlap = sum(int((pruned_by_imp[n] & pruned_again[n]).sum()) for n in names)
    return {
        "level": level,
        "density": exp.result(level).density,
        "relative_projection_length": proj["projection_length"] / proj["weight_norm"],
        "projection_length": proj["projection_length"],
        "weight_norm": proj["weight_norm"],
        "threshold": t_l,
        "solution_test_error": exp.result(level).test_error,
        "projected_test_error": projected_metrics["test_error"],
        "projected_train_error": projected_metrics["train_error"],
        "projected_train_loss": projected_metrics["train_loss"],
        "refill_fraction_below_threshold": refill,
        "new_small_weight_share": 1.0 - overlap / imp_count if imp_count else float("nan"),
        "histogram_abs_w": histogram({"projected": survivors_after_projection, "retrained": alive_next}),
    }


def no_retrain_chain(exp: Experiment, level: int, steps: int) -> list[dict]:
    """Prune w_L again and again by the level fraction with no training in between (the ablation).

    Step s has density density(L) * (1 - p)^s; its relative projection length is measured against
    the previous step's weights, like IMP's, and its error is that of the projected network.
    """
    names, excluded = exp.ranked_names, exp.excluded
    cfg = exp.config.prune
    state = exp.solution(level)
    mask = exp.mask(level)
    weights = prunable_weights(exp.model_with(state, mask))
    rows = []
    for step in range(1, steps + 1):
        new_mask = prune(weights, mask, cfg.fraction, cfg.strategy, excluded)
        removed_norm, norm = projection_length(weights, new_mask, names)
        model = exp.model_with(state, new_mask)
        metrics = exp.evaluate_model(model)
        rows.append({"step": step, "density": density(new_mask),
                     "relative_projection_length": removed_norm / norm if norm else float("nan"),
                     **{f"projected_{k}": v for k, v in metrics.items()}})
        weights, mask = prunable_weights(model), new_mask
    return rows
