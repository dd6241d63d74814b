"""Oracles for the measurement instruments: paths and barriers, perturbations, branches, weight statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lth_checks.config import ModelConfig
from lth_checks.data import Split
from lth_checks.measure import suite
from lth_checks.measure.branches import Branch, BranchSpec
from lth_checks.measure.connectivity import (
    PathResult,
    PathSettings,
    barrier,
    evaluate_path,
    instability,
    interpolate_state,
)
from lth_checks.measure.perturbation import direction_norm, gaussian_direction, perturbation_scale
from lth_checks.models import build_model
from lth_checks.pruning import dense_mask, prune


def _linear_problem(seed: int = 0, n: int = 64):
    """A linear classifier (MLP with no hidden layer) whose path error can be computed by hand."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 2, 2, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    model = build_model(ModelConfig(name="mlp", hidden=()), (1, 2, 2), 3, seed=seed)
    a = {k: torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}
    b = {k: torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}
    return model, Split(x, y), a, b


def test_path_matches_hand_computation():
    model, split, a, b = _linear_problem()
    res = evaluate_path(model, a, b, split, split, PathSettings(points=11))
    x = split.inputs.flatten(1).numpy().astype(np.float64)
    for alpha, err in zip(res.alphas, res.test_error):
        w = (1 - alpha) * a["fc.weight"].double().numpy() + alpha * b["fc.weight"].double().numpy()
        bias = (1 - alpha) * a["fc.bias"].double().numpy() + alpha * b["fc.bias"].double().numpy()
        expected = float(np.mean(np.argmax(x @ w.T + bias, axis=1) != split.targets.numpy()))
        assert err == pytest.approx(expected, abs=1e-12)
    assert res.bn_mode == "none (no batch norm)"


def test_barrier_of_a_state_with_itself_is_zero():
    model, split, a, _ = _linear_problem(1)
    res = evaluate_path(model, a, a, split, split, PathSettings(points=11))
    assert res.barrier_test == 0.0 and res.barrier_train == 0.0 and res.instability_test == 0.0


def test_reversing_endpoints_mirrors_the_curve():
    model, split, a, b = _linear_problem(2)
    forward = evaluate_path(model, a, b, split, split, PathSettings(points=11))
    backward = evaluate_path(model, b, a, split, split, PathSettings(points=11))
    assert backward.test_error == pytest.approx(forward.reversed().test_error, abs=1e-12)
    assert backward.barrier_test == pytest.approx(forward.barrier_test, abs=1e-12)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=2, max_size=31))
def test_barrier_is_never_negative_and_at_most_the_instability_bound(values):
    alphas = np.linspace(0, 1, len(values))
    assert barrier(values, alphas) >= 0.0
    assert instability(values) >= 0.0
    assert barrier(values, alphas) <= max(values) - min(values[0], values[-1]) + 1e-12


def test_batchnorm_reestimation_and_interpolation_modes():
    """With BN, re-estimation recomputes statistics from data; interpolation keeps the stored ones."""
    model = build_model(ModelConfig(name="cifar_resnet", depth=8, width=4), (3, 8, 8), 3, seed=0)
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randn(40, 3, 8, 8, generator=g), torch.randint(0, 3, (40,), generator=g))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["bn.running_mean"] += 5.0  # statistics no data would produce
    inter = evaluate_path(model, state, state, split, split, PathSettings(points=3, bn_mode="interpolate"))
    assert torch.equal(model.state_dict()["bn.running_mean"], state["bn.running_mean"])
    rees = evaluate_path(model, state, state, split, split, PathSettings(points=3, bn_mode="reestimate"))
    assert not torch.allclose(model.state_dict()["bn.running_mean"], state["bn.running_mean"])
    assert inter.bn_mode == "interpolate" and rees.bn_mode == "reestimate"
    assert rees.barrier_test == 0.0


def test_interpolation_shrinks_weights_pruned_at_one_end_to_zero():
    a = {"w": torch.tensor([1.0, 2.0, 3.0])}
    b = {"w": torch.tensor([0.0, 4.0, 3.0])}  # first weight pruned at the B end
    mid = interpolate_state(a, b, 0.25)
    assert mid["w"].tolist() == pytest.approx([0.75, 2.5, 3.0])
    assert interpolate_state(a, b, 1.0)["w"][0] == 0.0


def test_path_result_round_trip():
    model, split, a, b = _linear_problem(3)
    res = evaluate_path(model, a, b, split, split, PathSettings(points=11))
    again = PathResult.from_dict(res.to_dict())
    assert again == res and again.barrier_test == res.barrier_test


# ------------------------------------------------------------------------------------- perturbations

def _mask(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"a": torch.rand(4, 5, generator=g) > 0.3, "b": torch.rand(7, generator=g) > 0.5}


@settings(max_examples=30, deadline=None)
@given(norm=st.floats(1e-3, 1e3), seed=st.integers(0, 2**31))
def test_perturbation_has_the_requested_norm_on_alive_coordinates_only(norm, seed):
    mask = _mask(seed % 7)
    d = gaussian_direction(mask, norm, seed)
    assert direction_norm(d) == pytest.approx(norm, rel=1e-6)
    for name, m in mask.items():
        assert not d[name][~m].any()


def test_same_seed_same_perturbation_other_seed_other():
    mask = _mask()
    assert all(torch.equal(x, y) for x, y in zip(gaussian_direction(mask, 1.0, 3).values(),
                                                   gaussian_direction(mask, 1.0, 3).values()))
    assert not torch.equal(gaussian_direction(mask, 1.0, 3)["a"], gaussian_direction(mask, 1.0, 4)["a"])


def test_perturbation_scale_is_the_norm_of_the_removed_rewind_weights():
    g = torch.Generator().manual_seed(0)
    w = {"a": torch.randn(4, 5, generator=g), "b": torch.randn(7, generator=g)}
    mask = _mask()
    nxt = prune(w, mask, 0.2)
    removed = torch.cat([w[n][mask[n] & ~nxt[n]] for n in w])
    assert perturbation_scale(w, mask, nxt) == pytest.approx(float(removed.norm()), rel=1e-6)


# ------------------------------------------------------------------------------------- branches

def test_branches_are_cached_and_start_where_they_should(tiny_experiment, monkeypatch):
    exp = tiny_experiment
    exp.run(2)
    spec = BranchSpec("perturb", 1, c=1.0, noise_seed=0)
    first = Branch(exp, spec).result()
    r = perturbation_scale(exp.rewind_state(), exp.mask(1), exp.mask(2))
    assert first.scale_r == pytest.approx(r) and first.perturbation_norm == pytest.approx(r)
    assert first.density == pytest.approx(exp.result(1).density)

    import lth_checks.imp as imp_module

    def no_training(*args, **kwargs):
        raise AssertionError("a cached branch was trained again")

    monkeypatch.setattr(imp_module, "train", no_training)
    assert Branch(exp, spec).result() == first
    assert Branch(exp, BranchSpec("perturb", 1, c=1.0, noise_seed=0)).entry.key == Branch(exp, spec).entry.key


def test_branch_keys_only_depend_on_what_the_kind_uses():
    a = BranchSpec("sgd_noise", 2, data_seed=5, c=3.0)
    b = BranchSpec("sgd_noise", 2, data_seed=5, c=0.0)
    assert a.key_dict() == b.key_dict()
    assert BranchSpec("perturb", 2, c=1.0).key_dict() != BranchSpec("perturb", 2, c=2.0).key_dict()


def test_oneshot_branch_prunes_the_requested_fraction(tiny_experiment):
    exp = tiny_experiment
    exp.run(1)
    branch = Branch(exp, BranchSpec("oneshot", 1, fraction=0.5, strategy="random_global"))
    res = branch.result()
    mask1 = exp.mask(1)
    alive1 = sum(int(m.sum()) for m in mask1.values())
    assert res.alive == alive1 - int(np.floor(0.5 * alive1 + 0.5))
    assert all(bool((branch.mask()[n] & ~mask1[n]).sum() == 0) for n in mask1)


def test_sgd_noise_branch_differs_only_in_data_order(tiny_experiment):
    exp = tiny_experiment
    exp.run(0)
    same = Branch(exp, BranchSpec("sgd_noise", 0, data_seed=exp.config.seed)).solution()
    other = Branch(exp, BranchSpec("sgd_noise", 0, data_seed=exp.config.seed + 1)).solution()
    level0 = exp.solution(0)
    assert all(torch.equal(same[k], level0[k]) for k in level0)  # same data order: the level-0 run itself
    assert any(not torch.equal(other[k], level0[k]) for k in level0)


# ------------------------------------------------------------------------------------- suite and weights

def test_measure_level_reports_every_instrument(tiny_experiment):
    exp = tiny_experiment
    exp.run(2)
    s = suite.MeasureSettings(hessian_examples=256, hessian_k=5, density_probes=2)
    row = suite.measure_level(exp, 0, s)
    for key in ("barrier_next", "barrier_perturb_c1", "top_eigenvalue", "p_star_magnitude", "p_star_random",
                "relative_projection_length", "projected_test_error", "refill_below_threshold",
                "new_small_weight_share"):
        assert key in row and np.isfinite(row[key]), key
    assert 0 <= row["barrier_next"] <= 1 and row["top_eigenvalue"] > 0
    assert 0 < row["relative_projection_length"] < 1


def test_weight_statistics_threshold_and_projection(tiny_experiment):
    exp = tiny_experiment
    exp.run(2)
    stats = suite.weight_statistics(exp, 0)
    w = {k: v for k, v in exp.solution(0).items() if k in exp.mask(0)}
    m1 = exp.mask(1)
    survivors = torch.cat([w[n][m1[n]].abs() for n in w])
    removed = torch.cat([w[n][~m1[n]] for n in w])
    total = torch.cat([w[n].flatten() for n in w])
    assert stats["threshold"] == pytest.approx(float(survivors.min()))
    assert stats["relative_projection_length"] == pytest.approx(float(removed.norm() / total.norm()), rel=1e-6)
    hist = stats["histogram_abs_w"]
    assert sum(hist["projected"]) == int(survivors.numel())


def test_no_retraining_chain_densities(tiny_experiment):
    exp = tiny_experiment
    exp.run(1)
    rows = suite.no_retraining(exp, 1, 3)
    d1 = exp.result(1).density
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert r["density"] == pytest.approx(d1 * 0.8 ** r["step"], abs=2e-3)


def test_measure_results_are_cached(tiny_experiment, monkeypatch):
    exp = tiny_experiment
    exp.run(1)
    first = suite.successive_barrier(exp, 0)
    import lth_checks.measure.suite as suite_module

    monkeypatch.setattr(suite_module, "evaluate_path", lambda *a, **k: pytest.fail("recomputed a cached path"))
    assert suite.successive_barrier(exp, 0) == first


def test_dense_mask_prunes_nothing():
    model = build_model(ModelConfig(name="mlp", hidden=(8,)), (1, 2, 2), 3, seed=0)
    mask = dense_mask(model)
    assert all(bool(m.all()) for m in mask.values())


def test_batchnorm_reestimation_weights_examples_not_batches():
    """A short last batch counts for its size: the running mean is the mean over all examples."""
    from lth_checks.measure.connectivity import reestimate_batchnorm

    model = torch.nn.Sequential(torch.nn.BatchNorm2d(1))
    values = torch.tensor([0.0] * 8 + [10.0, 10.0])  # batches of 4, 4 and 2: per-batch means 0, 0, 10
    x = values.view(10, 1, 1, 1).expand(10, 1, 2, 2).contiguous()
    reestimate_batchnorm(model, Split(x, torch.zeros(10, dtype=torch.long)), batch_size=4)
    assert float(model[0].running_mean) == pytest.approx(float(values.mean()))


def test_branches_trained_together_equal_branches_trained_alone(tiny_config, tmp_path):
    """Replica training of branches commits exactly what one-by-one training would (CPU loop mode)."""
    from lth_checks.imp import Experiment
    from lth_checks.measure.branches import train_together
    from lth_checks.store import Store

    specs = [BranchSpec("perturb", 0, c=1.0), BranchSpec("sgd_noise", 1, data_seed=7),
             BranchSpec("oneshot", 1, fraction=0.5, strategy="random_global")]
    together = Experiment(tiny_config, store=Store(tmp_path / "a"), device="cpu")
    alone = Experiment(tiny_config, store=Store(tmp_path / "b"), device="cpu")
    together.run(2)
    alone.run(2)
    assert train_together(together, specs) == 3
    assert train_together(together, specs) == 0  # all cached now
    for spec in specs:
        a, b = Branch(together, spec), Branch(alone, spec)
        ra, rb = a.result().to_dict(), b.result().to_dict()
        ra.pop("wall_time_s"), rb.pop("wall_time_s")
        assert ra == rb, spec
        sa, sb = a.solution(), b.solution()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), spec


def test_per_example_correctness_agrees_with_the_cached_errors(tiny_experiment):
    """The packed bits behind every interval give exactly the errors the instruments cached (issue 9)."""
    exp = tiny_experiment
    exp.run(2)
    bits = suite.level_correct(exp, 1)
    assert (~bits["test"]).mean() == pytest.approx(exp.result(1).test_error, abs=1e-12)
    assert (~bits["train"]).mean() == pytest.approx(exp.result(1).train_error, abs=1e-12)
    path = suite.successive_barrier(exp, 0)
    pbits = suite.successive_path_correct(exp, 0)
    assert pbits["test"].shape == (len(path.alphas), len(exp.dataset.test))
    assert list((~pbits["test"]).mean(axis=1)) == pytest.approx(path.test_error, abs=1e-12)
    assert list((~pbits["train"]).mean(axis=1)) == pytest.approx(path.train_error, abs=1e-12)
    proj = suite.projected_correct(exp, 0)
    assert (~proj["test"]).mean() == pytest.approx(suite.weight_statistics(exp, 0)["projected_test_error"], abs=1e-12)
    assert suite.level_correct(exp, 1)["test"].tolist() == bits["test"].tolist()  # served from the cache


def test_perturbation_directions_are_independent_across_c(tiny_experiment):
    """Claim 2 counts each c as a case, so each c gets its own direction (not one direction rescaled)."""
    exp = tiny_experiment
    exp.run(2)
    starts = [Branch(exp, BranchSpec("perturb", 1, c=c, noise_seed=0))._start() for c in (0.5, 1.0)]
    rewind = exp.rewind_state()
    d = [torch.cat([(s[1][k] - rewind[k]).flatten() for k in rewind if rewind[k].is_floating_point()])
         for s in starts]
    cos = float(torch.dot(d[0], d[1]) / (d[0].norm() * d[1].norm()))
    assert abs(cos) < 0.5
