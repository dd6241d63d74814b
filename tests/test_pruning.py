"""Pruning: exact counts, nesting, exclusions, tie-break, random strategies, torch cross-check."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import prune as torch_prune

from lth_checks.config import ModelConfig, PruneConfig
from lth_checks.errors import ConfigError
from lth_checks.models import build_model
from lth_checks.pruning import (
    alive_count,
    apply_mask,
    dense_mask,
    density,
    excluded_names,
    is_nested,
    prunable_weights,
    prune,
    prune_model,
    round_half_up,
    sparsity_report,
    total_count,
)

FAST = settings(max_examples=30, deadline=None)

shapes = st.lists(st.lists(st.integers(1, 6), min_size=1, max_size=3).map(tuple), min_size=1, max_size=4)
percents = st.integers(1, 99)  # fraction p = k / 100, so the expected count is exact integer arithmetic


def expected_count(percent: int, alive: int) -> int:
    """round-half-up(percent / 100 * alive), computed exactly."""
    return (2 * percent * alive + 100) // 200


def make_weights(shape_list: list[tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"layer{i}.weight": torch.randn(shape, generator=g) for i, shape in enumerate(shape_list)}


def make_mask(weights: dict[str, torch.Tensor], seed: int, keep: float) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 1)
    return {n: torch.rand(w.shape, generator=g) < keep for n, w in weights.items()}


def removed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return before[name] & ~after[name]


# ----------------------------------------------------------------------------- counts and ordering

def test_round_half_up() -> None:
    assert [round_half_up(x) for x in (0.0, 0.49, 0.5, 1.5, 2.5, 2.4999)] == [0, 0, 1, 2, 3, 2]
    assert round_half_up(0.2 * 5) == 1 and round_half_up(0.1 * 5) == 1 and round_half_up(0.3 * 5) == 2
    assert round_half_up(0.2 * 17_024) == 3405


@FAST
@given(shapes, percents, st.integers(0, 10_000), st.sampled_from([1.0, 0.6]))
def test_global_magnitude_exact_count_nested_smallest(shape_list, percent, seed, keep) -> None:
    weights = make_weights(shape_list, seed)
    mask = make_mask(weights, seed, keep)
    new = prune(weights, mask, percent / 100, "magnitude_global")
    assert new.keys() == mask.keys()
    assert all(new[n].dtype == torch.bool and new[n].shape == weights[n].shape for n in new)
    assert is_nested(new, mask)
    assert alive_count(mask) - alive_count(new) == expected_count(percent, alive_count(mask))
    # The removed weights are the globally smallest alive ones.
    gone = torch.cat([weights[n].abs()[removed(mask, new, n)] for n in mask])
    kept = torch.cat([weights[n].abs()[new[n]] for n in mask])
    if gone.numel() and kept.numel():
        assert gone.max() <= kept.min()


@FAST
@given(shapes, percents, st.integers(0, 10_000), st.sampled_from([1.0, 0.6]))
def test_layerwise_magnitude_exact_count_per_layer(shape_list, percent, seed, keep) -> None:
    weights = make_weights(shape_list, seed)
    mask = make_mask(weights, seed, keep)
    new = prune(weights, mask, percent / 100, "magnitude_layerwise")
    assert is_nested(new, mask)
    for n in mask:
        alive = int(mask[n].sum())
        assert alive - int(new[n].sum()) == expected_count(percent, alive), n
        gone, kept = weights[n].abs()[removed(mask, new, n)], weights[n].abs()[new[n]]
        if gone.numel() and kept.numel():
            assert gone.max() <= kept.min()


@FAST
@given(shapes, percents, st.integers(0, 10_000), st.sampled_from(["random_global", "random_layerwise"]))
def test_random_strategies_exact_counts(shape_list, percent, seed, strategy) -> None:
    weights = make_weights(shape_list, seed)
    mask = make_mask(weights, seed, 0.7)
    new = prune(weights, mask, percent / 100, strategy, seed=seed)
    assert is_nested(new, mask)
    if strategy == "random_global":
        assert alive_count(mask) - alive_count(new) == expected_count(percent, alive_count(mask))
    else:
        for n in mask:
            assert int(mask[n].sum()) - int(new[n].sum()) == expected_count(percent, int(mask[n].sum()))


@FAST
@given(shapes, st.integers(0, 10_000), st.sampled_from(["magnitude_global", "magnitude_layerwise", "random_global"]))
def test_repeated_levels_are_nested_and_exact(shape_list, seed, strategy) -> None:
    weights = make_weights(shape_list, seed)
    mask = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    alive = total_count(mask)
    for level in range(5):
        # New trained values each level, as in IMP; pruned coordinates are zero.
        trained = {n: w * (1 + level) * torch.cos(torch.tensor(level + 0.5 * i)) * mask[n]
                   for i, (n, w) in enumerate(weights.items())}
        new = prune(trained, mask, 0.2, strategy, seed=level)
        assert is_nested(new, mask)
        if strategy.endswith("_global"):
            alive -= expected_count(20, alive)
            assert alive_count(new) == alive
        mask = new


@FAST
@given(shapes, percents, st.integers(0, 10_000),
       st.sampled_from(["magnitude_global", "magnitude_layerwise", "random_global", "random_layerwise"]))
def test_excluded_layers_untouched(shape_list, percent, seed, strategy) -> None:
    weights = make_weights(shape_list, seed)
    mask = make_mask(weights, seed, 0.8)
    excluded = {next(iter(weights))}
    new = prune(weights, mask, percent / 100, strategy, exclude=excluded, seed=seed)
    for n in excluded:
        assert torch.equal(new[n], mask[n])
    rest = [n for n in mask if n not in excluded]
    alive_rest = sum(int(mask[n].sum()) for n in rest)
    if strategy.endswith("_global"):
        assert alive_rest - sum(int(new[n].sum()) for n in rest) == expected_count(percent, alive_rest)
    assert is_nested(new, mask)


def test_input_mask_is_not_modified() -> None:
    weights = make_weights([(4, 5), (3,)], 0)
    mask = make_mask(weights, 0, 0.9)
    copy = {n: m.clone() for n, m in mask.items()}
    prune(weights, mask, 0.5)
    assert all(torch.equal(mask[n], copy[n]) for n in mask)


# ----------------------------------------------------------------------------- tie-break

@FAST
@given(shapes, percents, st.floats(0.0, 3.0))
def test_ties_prune_lowest_flat_indices_first(shape_list, percent, value) -> None:
    weights = {f"layer{i}.weight": torch.full(s, value) for i, s in enumerate(shape_list)}
    # Signs do not matter: magnitudes are ranked.
    weights = {n: w * torch.where(torch.arange(w.numel()) % 2 == 0, 1.0, -1.0).view(w.shape)
               for n, w in weights.items()}
    mask = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    total = total_count(mask)
    count = expected_count(percent, total)
    new = prune(weights, mask, percent / 100, "magnitude_global")
    flat = torch.cat([new[n].reshape(-1) for n in mask])  # concatenated in mask (layer) order
    assert torch.equal(flat, torch.arange(total) >= count)
    new = prune(weights, mask, percent / 100, "magnitude_layerwise")
    for n in mask:
        k = expected_count(percent, mask[n].numel())
        assert torch.equal(new[n].reshape(-1), torch.arange(mask[n].numel()) >= k)


def test_ties_skip_already_pruned_entries() -> None:
    weights = {"a": torch.ones(6), "b": torch.ones(4)}
    mask = {"a": torch.tensor([False, True, False, True, True, True]), "b": torch.ones(4, dtype=torch.bool)}
    new = prune(weights, mask, 0.5, "magnitude_global")  # 8 alive -> prune 4: a[1], a[3], a[4], a[5]
    assert new["a"].tolist() == [False] * 6
    assert new["b"].tolist() == [True] * 4


def test_magnitude_ignores_sign_and_uses_pruned_zeros_never() -> None:
    weights = {"w": torch.tensor([[-5.0, 0.1, 3.0], [-0.2, 4.0, 0.0]])}
    mask = {"w": torch.tensor([[True, True, True], [True, True, False]])}
    new = prune(weights, mask, 0.4, "magnitude_global")  # 5 alive -> prune 2: 0.1 and -0.2
    assert new["w"].tolist() == [[True, False, True], [False, True, False]]


# ----------------------------------------------------------------------------- random strategies

@pytest.mark.parametrize("strategy", ["random_global", "random_layerwise"])
def test_random_strategies_reproducible_by_seed(strategy: str) -> None:
    weights = make_weights([(20, 30), (40,), (5, 5, 3)], 0)
    mask = make_mask(weights, 0, 0.9)
    a = prune(weights, mask, 0.3, strategy, seed=11)
    b = prune(weights, mask, 0.3, strategy, seed=11)
    c = prune(weights, mask, 0.3, strategy, seed=12)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)
    # The weights' values play no part.
    d = prune({n: -w * 7 for n, w in weights.items()}, mask, 0.3, strategy, seed=11)
    assert all(torch.equal(a[n], d[n]) for n in a)


def test_magnitude_ignores_the_seed() -> None:
    weights = make_weights([(10, 10)], 3)
    mask = make_mask(weights, 3, 1.0)
    a, b = prune(weights, mask, 0.2, seed=1), prune(weights, mask, 0.2, seed=2)
    assert torch.equal(a["layer0.weight"], b["layer0.weight"])


# ----------------------------------------------------------------------------- cross-check with torch

@settings(max_examples=15, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 12), st.integers(1, 12)), min_size=1, max_size=4), percents,
       st.integers(0, 10_000))
def test_magnitude_global_matches_torch_global_unstructured(layer_shapes, percent, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    modules = [nn.Linear(i, o, bias=False) for o, i in layer_shapes]
    total = sum(m.weight.numel() for m in modules)
    # Distinct magnitudes (a random permutation of 1..total, random signs): no ties anywhere.
    values = (torch.randperm(total, generator=g).float() + 1) * torch.where(torch.rand(total, generator=g) < 0.5, -1, 1)
    start = 0
    with torch.no_grad():
        for m in modules:
            m.weight.copy_(values[start:start + m.weight.numel()].view_as(m.weight))
            start += m.weight.numel()
    weights = {f"m{i}.weight": m.weight.detach().clone() for i, m in enumerate(modules)}
    mask = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    for _level in range(2):  # a second round checks that only alive weights are counted and ranked
        new = prune(weights, mask, percent / 100, "magnitude_global")
        amount = alive_count(mask) - alive_count(new)
        torch_prune.global_unstructured([(m, "weight") for m in modules],
                                        pruning_method=torch_prune.L1Unstructured, amount=amount)
        for i, m in enumerate(modules):
            assert torch.equal(m.weight_mask.bool(), new[f"m{i}.weight"])
        mask = new
        weights = {n: w * mask[n] for n, w in weights.items()}


# ----------------------------------------------------------------------------- model helpers and reports

def small_resnet():
    return build_model(ModelConfig(name="cifar_resnet", depth=8, width=4), (3, 8, 8), 10, seed=0)


def test_prune_model_with_config_and_exclusions() -> None:
    model = small_resnet()
    mask = dense_mask(model)
    assert mask.keys() == set(model.prunable_names())
    assert all(m.all() for m in mask.values())
    cfg = PruneConfig(fraction=0.5, exclude_output=True, exclude=("conv.weight",))
    assert excluded_names(model, cfg) == {"fc.weight", "conv.weight"}
    new = prune_model(model, mask, cfg)
    assert new["fc.weight"].all() and new["conv.weight"].all()
    rest = [n for n in mask if n not in ("fc.weight", "conv.weight")]
    alive = sum(mask[n].numel() for n in rest)
    assert alive - sum(int(new[n].sum()) for n in rest) == expected_count(50, alive)
    one_shot = prune_model(model, mask, cfg, fraction=0.9)
    assert alive - sum(int(one_shot[n].sum()) for n in rest) == expected_count(90, alive)
    with pytest.raises(ConfigError, match="fc.weight"):
        excluded_names(model, PruneConfig(exclude=("nosuch.weight",)))


def test_apply_mask_zeroes_exactly_the_pruned_weights() -> None:
    model = small_resnet()
    before = {n: w.clone() for n, w in prunable_weights(model).items()}
    new = prune_model(model, dense_mask(model), PruneConfig(fraction=0.6))
    apply_mask(model, new)
    after = prunable_weights(model)
    for n in new:
        assert (after[n][~new[n]] == 0).all()
        assert torch.equal(after[n][new[n]], before[n][new[n]])


def test_sparsity_report_totals() -> None:
    mask = {"a": torch.tensor([True, False, True, True]), "b": torch.zeros(2, 3, dtype=torch.bool),
            "c": torch.ones(5, dtype=torch.bool)}
    rows = sparsity_report(mask)
    assert [r["layer"] for r in rows] == ["a", "b", "c", "(all)"]
    assert [(r["alive"], r["total"]) for r in rows] == [(3, 4), (0, 6), (5, 5), (8, 15)]
    assert rows[0]["density"] == 0.75 and rows[1]["density"] == 0.0 and rows[2]["density"] == 1.0
    assert rows[-1]["density"] == pytest.approx(8 / 15) == density(mask)
    assert sum(r["alive"] for r in rows[:-1]) == rows[-1]["alive"] == alive_count(mask)
    assert sum(r["total"] for r in rows[:-1]) == rows[-1]["total"] == total_count(mask)


def test_is_nested() -> None:
    outer = {"a": torch.tensor([True, True, False])}
    assert is_nested({"a": torch.tensor([True, False, False])}, outer)
    assert not is_nested({"a": torch.tensor([False, False, True])}, outer)
    assert not is_nested({"b": torch.tensor([True, False, False])}, outer)


def test_invalid_arguments() -> None:
    weights = make_weights([(3, 3)], 0)
    mask = make_mask(weights, 0, 1.0)
    with pytest.raises(ConfigError, match="strategy"):
        prune(weights, mask, 0.2, "smallest")
    with pytest.raises(ConfigError, match="fraction"):
        prune(weights, mask, 1.5)
    assert torch.equal(prune(weights, mask, 0.0)["layer0.weight"], mask["layer0.weight"])
