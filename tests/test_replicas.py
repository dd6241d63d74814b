"""Replicas trained and evaluated together give what one-at-a-time training and evaluation give.

Tolerances (float32, CPU):
* execution="loop" (the CPU default): bitwise identical to `training.train`, `training.evaluate`
  and `connectivity.evaluate_path`, batch-norm buffers and momentum included.
* execution="vmap" (the CUDA default): every tensor within 1e-4 of the reference, relative to
  the tensor's largest magnitude (measured: ~5e-7 for the MLP, ~2e-6 for the ResNet with batch
  norm after 55 steps); evaluation losses within 1e-5 relative; errors within one example.
  Pruned weights stay exactly zero either way.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lth_checks.config import ModelConfig, TrainConfig
from lth_checks.data import Split
from lth_checks.errors import ConfigError, DivergenceError
from lth_checks.measure.connectivity import PathSettings, evaluate_path, evaluate_path_batched
from lth_checks.models import build_model
from lth_checks.pruning import dense_mask, prune
from lth_checks.replicas import (
    ReplicaDivergenceError,
    _ReplicaBatches,
    evaluate_replicas,
    resolve_execution,
    train_replicas,
)
from lth_checks.training import BatchStream, Checkpoint, clone_state, evaluate, train

CFG = TrainConfig(lr=0.05, momentum=0.9, weight_decay=5e-4, batch_size=16, iterations=60, milestones=(20, 45))
MLP = ModelConfig(name="mlp", hidden=(32, 16))
RESNET = ModelConfig(name="cifar_resnet", depth=8, width=4)
SHAPE = (3, 8, 8)
VMAP_RTOL = 1e-4
START, END = 5, 40  # a later start: the lr schedule is global (milestone 20 falls inside)


def synthetic_split(n: int = 100, classes: int = 4, seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randn(n, *SHAPE, generator=g), torch.randint(0, classes, (n,), generator=g))


def replicas(config: ModelConfig, r: int = 3):
    """R models with different initialisations and masks (dense, 30% and 60% randomly pruned)."""
    models = [build_model(config, SHAPE, 4, seed=s) for s in range(r)]
    masks = []
    for i, m in enumerate(models):
        weights = {n: p.detach() for n, p in m.named_parameters() if n in m.prunable_names()}
        masks.append(prune(weights, dense_mask(m), 0.3 * i, "random_global", seed=i) if i else dense_mask(m))
    return models, masks


def max_rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert list(a) == list(b)
    worst = 0.0
    for k in a:
        x, y = a[k].double(), b[k].double()
        worst = max(worst, float((x - y).abs().max() / x.abs().max().clamp_min(1e-12)))
    return worst


def one_at_a_time(models, masks, split, cfg, augment, seeds=(0, 1, 2)) -> list[dict[str, torch.Tensor]]:
    out = []
    for model, mask, seed in zip(models, masks, seeds):
        train(model, mask, split, cfg, start=START, end=END, data_seed=seed, augment=augment)
        out.append(clone_state(model))
    return out


@pytest.mark.parametrize("execution", ["loop", "vmap"])
@pytest.mark.parametrize("config,augment,nesterov", [(MLP, False, False), (RESNET, True, True)],
                         ids=["mlp", "resnet-bn-augment-nesterov"])
def test_training_together_matches_one_at_a_time(execution, config, augment, nesterov) -> None:
    split, cfg = synthetic_split(), dataclasses.replace(CFG, nesterov=nesterov)
    models, masks = replicas(config)
    states = [clone_state(m) for m in models]
    together = train_replicas(models[0], states, masks, split, cfg, start=START, end=END, data_seeds=[0, 1, 2],
                              augment=augment, execution=execution)
    reference = one_at_a_time(models, masks, split, cfg, augment)
    for r in range(3):
        assert list(together[r]) == list(reference[r])
        if execution == "loop":
            assert all(torch.equal(together[r][k], reference[r][k]) for k in reference[r]), r
        else:
            assert max_rel_diff(reference[r], together[r]) < VMAP_RTOL, r
        for name, m in masks[r].items():
            assert (together[r][name][~m] == 0).all(), (r, name)
        assert not torch.equal(together[r]["fc.weight"], states[r]["fc.weight"])  # it did train
    if config is RESNET:  # batch-norm running statistics moved per replica
        assert not torch.equal(together[0]["bn.running_mean"], together[1]["bn.running_mean"])


def test_momentum_matches_the_optimizer_state() -> None:
    split = synthetic_split()
    models, masks = replicas(RESNET, 2)
    states = [clone_state(m) for m in models]
    momenta: list[dict[str, torch.Tensor]] = []
    train_replicas(models[0], states, masks, split, CFG, start=0, end=10, data_seeds=[3, 4], augment=True,
                   momentum_out=momenta, execution="loop")
    for r, model in enumerate(models):
        seen: list[Checkpoint] = []
        train(model, masks[r], split, CFG, start=0, end=11, data_seed=3 + r, augment=True, checkpoint_every=10,
              on_checkpoint=seen.append)
        assert seen[0].iteration == 10
        assert momenta[r].keys() == seen[0].momentum.keys()
        assert all(torch.equal(momenta[r][k], seen[0].momentum[k]) for k in momenta[r])


def test_batches_are_those_of_each_stream() -> None:
    split = synthetic_split()
    batches = _ReplicaBatches(split, 16, [7, 8, 9], augment=True)
    streams = [BatchStream(split, 16, s, True) for s in (7, 8, 9)]
    for t in (0, 5, 6, 13):  # 6 steps per epoch: crosses epochs
        x, y = batches.batch(t)
        for r, s in enumerate(streams):
            xr, yr = s.batch(t)
            assert torch.equal(x[r], xr) and torch.equal(y[r], yr)


@pytest.mark.parametrize("execution", ["loop", "vmap"])
def test_divergence_names_replica_and_iteration(execution) -> None:
    split = synthetic_split()
    models, masks = replicas(MLP)
    states = [clone_state(m) for m in models]
    states[1]["fc.bias"] = torch.full_like(states[1]["fc.bias"], float("nan"))
    with pytest.raises(ReplicaDivergenceError, match=r"replica 1 diverged: non-finite loss at iteration 5") as info:
        train_replicas(models[0], states, masks, split, CFG, start=5, end=12, data_seeds=[0, 1, 2], augment=False,
                       execution=execution)
    assert isinstance(info.value, DivergenceError)
    assert info.value.replica == 1 and info.value.iteration == 5 and info.value.first_bad == [-1, 5, -1]


def test_bad_arguments_are_config_errors() -> None:
    split = synthetic_split()
    models, masks = replicas(MLP, 2)
    states = [clone_state(m) for m in models]
    with pytest.raises(ConfigError, match="as many masks"):
        train_replicas(models[0], states, masks[:1], split, CFG, start=0, end=1, data_seeds=[0, 1], augment=False)
    bad = dict(masks[0], **{"fc.weight": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(ConfigError, match="shape"):
        train_replicas(models[0], states, [bad, masks[1]], split, CFG, start=0, end=1, data_seeds=[0, 1],
                       augment=False)
    with pytest.raises(ConfigError, match="execution"):
        resolve_execution("threads", torch.device("cpu"))
    assert resolve_execution("auto", torch.device("cpu")) == "loop"
    assert resolve_execution("auto", torch.device("cuda")) == "vmap"


@pytest.mark.parametrize("execution", ["loop", "vmap"])
def test_evaluate_replicas_matches_evaluate(execution) -> None:
    split = synthetic_split(230, seed=1)
    models, _ = replicas(RESNET)
    for m in models:  # non-trivial running statistics
        train(m, dense_mask(m), synthetic_split(), CFG, start=0, end=3, data_seed=0, augment=False)
    together = evaluate_replicas(models[0], [clone_state(m) for m in models], split, batch_size=100,
                                 execution=execution, max_replicas=2)
    for m, res in zip(models, together):
        ref = evaluate(m, split, batch_size=100)
        if execution == "loop":
            assert res == ref
        else:
            assert abs(res.error - ref.error) <= 1 / len(split) + 1e-12
            assert res.loss == pytest.approx(ref.loss, rel=1e-5)


@pytest.mark.parametrize("execution", ["loop", "vmap"])
@pytest.mark.parametrize("bn_mode", ["reestimate", "interpolate"])
def test_batched_barrier_grid_matches_evaluate_path(execution, bn_mode) -> None:
    train_split, test_split = synthetic_split(1200, seed=2), synthetic_split(150, seed=3)
    model_a, model_b = build_model(RESNET, SHAPE, 4, seed=0), build_model(RESNET, SHAPE, 4, seed=1)
    for m, seed in ((model_a, 0), (model_b, 1)):
        train(m, dense_mask(m), train_split, CFG, start=0, end=4, data_seed=seed, augment=False)
    a, b = clone_state(model_a), clone_state(model_b)
    # 1100 BN examples = batches of 500, 500 and 100: exercises the cumulative average.
    settings = PathSettings(points=5, bn_mode=bn_mode, bn_examples=1100, batch_size=400)
    ref_model, our_model = build_model(RESNET, SHAPE, 4), build_model(RESNET, SHAPE, 4)
    ref = evaluate_path(ref_model, a, b, test_split, train_split, settings)
    ours = evaluate_path_batched(our_model, a, b, test_split, train_split, settings, execution=execution,
                                 max_replicas=3)
    assert ours.alphas == ref.alphas and ours.bn_mode == ref.bn_mode and ours.settings == ref.settings
    if execution == "loop":
        assert ours == ref
        assert all(torch.equal(v, ref_model.state_dict()[k]) for k, v in our_model.state_dict().items())
    else:
        n_test, n_train = len(test_split), len(train_split)
        assert all(abs(x - y) <= 1 / n_test + 1e-12 for x, y in zip(ours.test_error, ref.test_error))
        assert all(abs(x - y) <= 1 / n_train + 1e-12 for x, y in zip(ours.train_error, ref.train_error))
        assert ours.test_loss == pytest.approx(ref.test_loss, rel=1e-5)
        assert ours.train_loss == pytest.approx(ref.train_loss, rel=1e-5)
        assert max_rel_diff(ref_model.state_dict(), our_model.state_dict()) < VMAP_RTOL


def test_batched_grid_without_batch_norm() -> None:
    split = synthetic_split(120)
    a = clone_state(build_model(MLP, SHAPE, 4, seed=0))
    b = clone_state(build_model(MLP, SHAPE, 4, seed=1))
    settings = PathSettings(points=4)
    ref = evaluate_path(build_model(MLP, SHAPE, 4), a, b, split, split, settings)
    ours = evaluate_path_batched(build_model(MLP, SHAPE, 4), a, b, split, split, settings)
    assert ours == ref and ours.bn_mode == "none (no batch norm)"


# ----------------------------------------------------------------------------- divergence of one replica

@pytest.mark.parametrize("execution", ["loop", "vmap"])
def test_a_diverging_replica_leaves_the_others_to_finish(execution) -> None:
    """With on_diverged, replica 1 (NaN from the start) is reported once; 0 and 2 train as if alone."""
    split = synthetic_split()
    models, masks = replicas(RESNET)
    states = [clone_state(m) for m in models]
    states[1]["fc.bias"] = torch.full_like(states[1]["fc.bias"], float("nan"))
    reported: list[ReplicaDivergenceError] = []
    finals = train_replicas(models[0], states, masks, split, CFG, start=START, end=END, data_seeds=[0, 1, 2],
                            augment=True, execution=execution, on_diverged=lambda r, e: reported.append(e))
    assert [(e.replica, e.iteration) for e in reported] == [(1, START)]
    assert isinstance(reported[0], DivergenceError) and reported[0].cause.startswith("non-finite loss")
    assert finals[1] is None
    alone = train_replicas(models[0], [states[0], states[2]], [masks[0], masks[2]], split, CFG, start=START,
                           end=END, data_seeds=[0, 2], augment=True, execution=execution)
    for got, want in zip([finals[0], finals[2]], alone):
        if execution == "loop":
            assert all(torch.equal(got[k], want[k]) for k in want)
        else:
            assert max_rel_diff(got, want) < VMAP_RTOL


def test_non_finite_weights_with_a_finite_loss_are_divergence() -> None:
    """A last step that overflows a weight while its loss was still finite is caught at the end."""
    split = synthetic_split()
    models, masks = replicas(MLP, 2)
    states = [clone_state(m) for m in models]
    bias = [k for k in states[1] if k.endswith("bias")][-1]
    states[1][bias] = torch.full_like(states[1][bias], 3e38)  # finite; one decay step of lr 3 overflows it
    cfg = dataclasses.replace(CFG, lr=3.0, weight_decay=1.0, momentum=0.0)
    reported: list[ReplicaDivergenceError] = []
    finals = train_replicas(models[0], states, masks, split, cfg, start=0, end=1, data_seeds=[0, 1], augment=False,
                            execution="loop", on_diverged=lambda r, e: reported.append(e))
    assert [(e.replica, e.cause) for e in reported] == [(1, "non-finite weights at iteration 1")]
    assert finals[1] is None and finals[0] is not None


# ----------------------------------------------------------------------------- in-level checkpoints

@pytest.mark.parametrize("momentum", [0.9, 0.0])
def test_replica_checkpoints_resume_bitwise_and_are_those_of_single_training(momentum: float) -> None:
    split = synthetic_split()
    cfg = dataclasses.replace(CFG, momentum=momentum)
    models, masks = replicas(RESNET, 2)
    states = [clone_state(m) for m in models]
    saved: list[list[Checkpoint]] = []
    finals = train_replicas(models[0], states, masks, split, cfg, start=START, end=END, data_seeds=[3, 4],
                            augment=True, execution="loop", checkpoint_every=10, on_checkpoint=saved.append)
    assert [[c.iteration for c in group] for group in saved] == [[10, 10], [20, 20], [30, 30]]
    # resuming the group from its checkpoints gives the uninterrupted group, bitwise
    resumed = train_replicas(models[0], states, masks, split, cfg, start=START, end=END, data_seeds=[3, 4],
                             augment=True, execution="loop", resume=saved[1])
    for got, want in zip(resumed, finals):
        assert all(torch.equal(got[k], want[k]) for k in want)
    for r in range(len(models)):
        # each replica's checkpoint is the one its single training writes ...
        single: list[Checkpoint] = []
        alone = build_model(RESNET, SHAPE, 4, seed=99)
        alone.load_state_dict(states[r])
        train(alone, masks[r], split, cfg, start=START, end=END, data_seed=3 + r, augment=True, checkpoint_every=10,
              on_checkpoint=single.append)
        ours = saved[1][r]
        assert single[1].iteration == ours.iteration
        assert all(torch.equal(single[1].model_state[k], ours.model_state[k]) for k in ours.model_state)
        assert single[1].momentum.keys() == ours.momentum.keys()
        assert all(torch.equal(single[1].momentum[k], ours.momentum[k]) for k in ours.momentum)
        # ... so single training resumes from it, to the same end
        again = build_model(RESNET, SHAPE, 4, seed=98)
        train(again, masks[r], split, cfg, start=START, end=END, data_seed=3 + r, augment=True, resume=ours)
        assert all(torch.equal(clone_state(again)[k], finals[r][k]) for k in finals[r])


def test_replicas_resume_only_together_from_one_iteration() -> None:
    split = synthetic_split()
    models, masks = replicas(MLP, 2)
    states = [clone_state(m) for m in models]
    saved: list[list[Checkpoint]] = []
    train_replicas(models[0], states, masks, split, CFG, start=0, end=25, data_seeds=[0, 1], augment=False,
                   execution="loop", checkpoint_every=10, on_checkpoint=saved.append)
    with pytest.raises(ConfigError, match=r"one iteration .* got checkpoints at \[10, 20\]"):
        train_replicas(models[0], states, masks, split, CFG, start=0, end=25, data_seeds=[0, 1], augment=False,
                       execution="loop", resume=[saved[0][0], saved[1][1]])


# ----------------------------------------------------------------------------- bf16 under vmap

def test_bf16_replicas_run_in_bf16_or_are_refused() -> None:
    """On the CPU, autocast skips convolutions under vmap (torch 2.13): vmap + bf16 is refused there,
    and "auto" picks the loop, which trains in bf16 exactly as single training does."""
    from lth_checks.replicas import vmap_autocast_works

    split = synthetic_split()
    models, masks = replicas(RESNET, 2)
    states = [clone_state(m) for m in models]
    cfg = dataclasses.replace(CFG, precision="bf16")
    cpu = torch.device("cpu")

    def run(execution: str, c: TrainConfig = cfg):
        return train_replicas(models[0], states, masks, split, c, start=START, end=START + 5, data_seeds=[0, 1],
                              augment=False, execution=execution)

    assert resolve_execution("vmap", cpu, "fp32") == "vmap"
    if vmap_autocast_works(cpu):  # a torch where it works: vmap really runs bf16
        assert resolve_execution("auto", cpu, "bf16") == "loop"  # auto still means loop on the CPU
        assert max_rel_diff(run("vmap")[0], run("vmap", CFG)[0]) > 1e-4
        return
    with pytest.raises(ConfigError, match=r"^bf16 replicas under vmap on cpu: .*use execution 'loop'") as info:
        run("vmap")
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="bf16 replicas under vmap"):
        evaluate_replicas(models[0], states, split, precision="bf16", execution="vmap")
    assert resolve_execution("auto", cpu, "bf16") == "loop"
    together = run("auto")
    for r in range(len(models)):
        alone = build_model(RESNET, SHAPE, 4, seed=97)
        alone.load_state_dict(states[r])
        train(alone, masks[r], split, cfg, start=START, end=START + 5, data_seed=r, augment=False)
        assert all(torch.equal(clone_state(alone)[k], together[r][k]) for k in together[r])
    assert max_rel_diff(together[0], run("auto", CFG)[0]) > 1e-4  # and bf16 is not fp32


def test_the_cpu_vmap_autocast_probe_sees_what_a_model_sees() -> None:
    """The probe's verdict matches a real replica forward: conv output dtype under vmap + autocast."""
    from torch.func import functional_call, vmap

    from lth_checks.replicas import stack_states, vmap_autocast_works

    models, _ = replicas(RESNET, 2)
    params, buffers = stack_states(models[0], [clone_state(m) for m in models], torch.device("cpu"))
    x = torch.randn(4, *SHAPE)
    conv = models[0].conv
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = vmap(lambda w: functional_call(conv, {"weight": w}, (x,)))(params["conv.weight"])
    assert (out.dtype == torch.bfloat16) == vmap_autocast_works("cpu")
