"""Training: held masks, bitwise reproducibility, resume, divergence, the batch stream, augmentation."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from torch.nn import functional as F

from lth_checks.config import ModelConfig, TrainConfig
from lth_checks.data import Split
from lth_checks.errors import ConfigError, DivergenceError
from lth_checks.models import build_model
from lth_checks.pruning import dense_mask, prune
from lth_checks.speed import fused_sgd_available
from lth_checks.training import (
    BatchStream,
    Checkpoint,
    clone_state,
    derive_seed,
    evaluate,
    random_crop_flip,
    train,
)

CFG = TrainConfig(lr=0.05, momentum=0.9, weight_decay=5e-4, batch_size=16, iterations=60, milestones=(30, 45))
RESNET = ModelConfig(name="cifar_resnet", depth=8, width=4)  # has batch norm: buffers must follow too


def synthetic_split(n: int = 100, shape: tuple[int, int, int] = (3, 8, 8), classes: int = 4, seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g))


def resnet(seed: int = 0):
    return build_model(RESNET, (3, 8, 8), 4, seed=seed)


def half_mask(model) -> dict[str, torch.Tensor]:
    weights = {n: p.detach() for n, p in model.named_parameters() if n in model.prunable_names()}
    return prune(weights, dense_mask(model), 0.5, "random_global", seed=1)


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- masks held

@pytest.mark.parametrize(("nesterov", "precision"), [(False, "fp32"), (True, "fp32"), (False, "bf16")])
def test_pruned_weights_stay_exactly_zero(nesterov: bool, precision: str) -> None:
    split = synthetic_split()
    model = resnet()
    mask = half_mask(model)
    before = clone_state(model)
    cfg = dataclasses.replace(CFG, nesterov=nesterov, weight_decay=1e-2, precision=precision)
    train(model, mask, split, cfg, start=0, end=40, data_seed=0, augment=True)
    params = dict(model.named_parameters())
    for name, m in mask.items():
        assert (params[name][~m] == 0).all(), name
        assert not torch.equal(params[name][m], before[name][m]), name  # the alive ones did train
    # Unpruned parameters (biases, batch norm) and buffers train as usual.
    assert not torch.equal(params["bn.weight"], before["bn.weight"])
    assert not torch.equal(model.state_dict()["bn.running_mean"], before["bn.running_mean"])


def test_weights_pruned_after_a_dense_start_are_zeroed_before_the_first_step() -> None:
    split = synthetic_split()
    model = resnet()
    mask = half_mask(model)  # the model's weights are not masked yet
    train(model, mask, split, CFG, start=0, end=1, data_seed=0, augment=False)
    params = dict(model.named_parameters())
    assert all((params[n][~m] == 0).all() for n, m in mask.items())


# ----------------------------------------------------------------------------- reproducibility

def test_same_seed_is_bitwise_identical_and_seed_matters() -> None:
    split = synthetic_split()
    states = []
    for data_seed in (3, 3, 4):
        model = resnet()
        train(model, half_mask(model), split, CFG, start=0, end=30, data_seed=data_seed, augment=True)
        states.append(clone_state(model))
    assert same_state(states[0], states[1])
    assert not same_state(states[0], states[2])


@pytest.mark.parametrize("momentum", [0.9, 0.0])
def test_resume_from_mid_segment_checkpoint_is_bitwise_identical(momentum: float) -> None:
    split = synthetic_split()
    cfg = dataclasses.replace(CFG, momentum=momentum)
    model = resnet()
    mask = half_mask(model)
    start_state = clone_state(model)
    checkpoints: list[Checkpoint] = []
    train(model, mask, split, cfg, start=3, end=40, data_seed=5, augment=True, checkpoint_every=10,
          on_checkpoint=checkpoints.append)
    final = clone_state(model)
    # Checkpoints fall on multiples of checkpoint_every, never at the end of the segment.
    assert [c.iteration for c in checkpoints] == [10, 20, 30]
    assert bool(checkpoints[1].momentum) == (momentum > 0)
    if momentum:
        assert checkpoints[1].momentum.keys() == dict(model.named_parameters()).keys()

    # A new process would start from the segment's start state and load the checkpoint.
    resumed = resnet(seed=99)
    resumed.load_state_dict(start_state)
    progress: list[int] = []
    train(resumed, mask, split, cfg, start=3, end=40, data_seed=5, augment=True, resume=checkpoints[1],
          on_progress=progress.append)
    assert same_state(clone_state(resumed), final)
    assert progress[-1] == 40

    # Resuming from the resumed run's own later checkpoint works the same way.
    again = resnet(seed=98)
    train(again, mask, split, cfg, start=3, end=40, data_seed=5, augment=True, resume=checkpoints[2])
    assert same_state(clone_state(again), final)


@pytest.fixture
def channels_last_fused_on_cpu(monkeypatch):
    """The CUDA fast path emulated on the CPU: channels_last convolutions with fused SGD.

    oneDNN is switched off meanwhile: torch 2.13's oneDNN convolution backward corrupts the heap
    on channels_last weights on some CPUs (AMD EPYC here: "corrupted double-linked list").
    """
    if not fused_sgd_available("cpu"):
        pytest.skip(f"torch {torch.__version__} has no fused SGD on the CPU")
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    return lambda model: model.to(memory_format=torch.channels_last)


def test_resume_on_the_fast_path_is_bitwise_identical(channels_last_fused_on_cpu) -> None:
    """A checkpoint stored contiguous (as the cache does) resumes a channels_last, fused-SGD run exactly.

    Fused SGD walks raw memory: a contiguous momentum buffer beside a channels_last weight pairs
    the wrong elements (this run ended up to 0.79 away before the momentum took the weight's layout).
    """
    as_fast = channels_last_fused_on_cpu
    split = synthetic_split()
    model = as_fast(resnet())
    mask = half_mask(model)
    start_state = clone_state(model)
    checkpoints: list[Checkpoint] = []
    train(model, mask, split, CFG, start=3, end=40, data_seed=5, augment=True, checkpoint_every=10,
          on_checkpoint=checkpoints.append, fused_optimizer=True)
    final = clone_state(model)
    stored = checkpoints[0]
    assert any(not v.is_contiguous() for v in stored.momentum.values())  # the layout the test is about
    stored = Checkpoint(stored.iteration, {k: v.contiguous() for k, v in stored.model_state.items()},
                        {k: v.contiguous() for k, v in stored.momentum.items()})

    resumed = as_fast(resnet(seed=99))
    resumed.load_state_dict(start_state)
    train(resumed, mask, split, CFG, start=3, end=40, data_seed=5, augment=True, resume=stored,
          fused_optimizer=True)
    assert resumed.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert same_state(clone_state(resumed), final)


def test_a_checkpoint_of_another_architecture_is_one_line() -> None:
    model = resnet()
    ckpt = Checkpoint(10, clone_state(model), {"conv.weight": torch.zeros(2, 2)})
    with pytest.raises(ConfigError, match="another architecture"):
        train(model, {}, synthetic_split(), CFG, start=0, end=20, data_seed=0, augment=False, resume=ckpt)


def test_fresh_optimiser_and_schedule_resume_at_start() -> None:
    """One plain SGD step from iteration 5 uses lr_at(5) and no momentum from earlier iterations."""
    split = synthetic_split(shape=(1, 2, 3))
    cfg = TrainConfig(lr=0.1, momentum=0.9, weight_decay=0.0, batch_size=16, iterations=20, milestones=(5,))
    model = build_model(ModelConfig(name="mlp", hidden=()), (1, 2, 3), 4, seed=0)
    mask = dense_mask(model)
    expected = build_model(ModelConfig(name="mlp", hidden=()), (1, 2, 3), 4, seed=0)
    x, y = BatchStream(split, 16, seed=2, augment=False).batch(5)
    F.cross_entropy(expected(x), y).backward()
    with torch.no_grad():
        for p in expected.parameters():
            p -= cfg.lr_at(5) * p.grad  # first momentum step: buffer = grad
    train(model, mask, split, cfg, start=5, end=6, data_seed=2, augment=False)
    assert cfg.lr_at(5) == pytest.approx(0.01)
    for (_, a), (_, b) in zip(model.named_parameters(), expected.named_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


# ----------------------------------------------------------------------------- divergence

def test_injected_inf_input_raises_divergence_naming_the_iteration() -> None:
    split = synthetic_split(shape=(1, 4, 4))
    split.inputs[37, 0, 1, 2] = float("inf")
    cfg = dataclasses.replace(CFG, batch_size=10)
    stream = BatchStream(split, cfg.batch_size, seed=1, augment=False)
    start = 4
    bad = next(t for t in range(start, 200) if not torch.isfinite(stream.batch(t)[0]).all())
    saved: list[Checkpoint] = []
    model = build_model(ModelConfig(name="mlp", hidden=(8,)), (1, 4, 4), 4, seed=0)
    with pytest.raises(DivergenceError) as excinfo:
        train(model, dense_mask(model), split, cfg, start=start, end=bad + 150, data_seed=1, augment=False,
              checkpoint_every=1, on_checkpoint=saved.append, label="unit test")
    message = str(excinfo.value)
    assert "\n" not in message
    assert f"iteration {bad}" in message and "unit test" in message
    # Checkpoints stop at the divergence and never hold a non-finite state.
    assert saved and max(c.iteration for c in saved) <= bad
    assert all(torch.isfinite(v).all() for c in saved for v in c.model_state.values() if v.is_floating_point())


def test_huge_learning_rate_raises_divergence() -> None:
    split = synthetic_split()
    model = resnet()
    cfg = dataclasses.replace(CFG, lr=1e6)
    with pytest.raises(DivergenceError, match=r"non-finite loss at iteration \d+"):
        train(model, dense_mask(model), split, cfg, start=0, end=60, data_seed=0, augment=False)


# ----------------------------------------------------------------------------- batch stream

def indexed_split(n: int = 50) -> Split:
    """Targets are the example indices, so a batch says which examples it holds."""
    return Split(torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(0)), torch.arange(n))


def test_batch_stream_is_a_pure_function_of_seed_and_iteration() -> None:
    split = indexed_split()
    in_order = BatchStream(split, 8, seed=3, augment=True)
    batches = [in_order.batch(t) for t in range(20)]  # 6 steps per epoch: crosses 3 epoch boundaries
    jumbled = BatchStream(split, 8, seed=3, augment=True)
    for t in (17, 2, 9, 0, 19, 5, 6, 5, 12):
        x, y = jumbled.batch(t)
        assert torch.equal(x, batches[t][0]) and torch.equal(y, batches[t][1]), t
    other = BatchStream(split, 8, seed=4, augment=True)
    assert not torch.equal(other.batch(0)[1], batches[0][1])


def test_batch_stream_epochs_are_permutations_of_full_batches() -> None:
    split = indexed_split(50)
    stream = BatchStream(split, 8, seed=0, augment=False)
    assert stream.steps_per_epoch == 6  # the last partial batch is dropped
    orders = []
    for epoch in range(3):
        ids = torch.cat([stream.batch(epoch * 6 + s)[1] for s in range(6)])
        assert ids.unique().numel() == 48
        orders.append(ids)
    assert not torch.equal(orders[0], orders[1])
    x, y = stream.batch(7)
    assert torch.equal(x, split.inputs[y])  # no augmentation: the examples themselves


def test_batch_stream_rejects_batches_larger_than_the_split() -> None:
    with pytest.raises(ConfigError, match="batch"):
        BatchStream(indexed_split(10), 11, seed=0, augment=False)


def naive_crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, pad: int) -> torch.Tensor:
    out = torch.empty_like(x)
    _, _, h, w = x.shape
    for i in range(x.shape[0]):
        padded = F.pad(x[i], (pad, pad, pad, pad))
        r, c = int(offsets[i, 0]), int(offsets[i, 1])
        crop = padded[:, r:r + h, c:c + w]
        out[i] = crop.flip(2) if bool(flips[i]) else crop
    return out


@pytest.mark.parametrize(("shape", "pad"), [((6, 3, 8, 8), 4), ((5, 1, 5, 7), 2), ((3, 2, 4, 4), 0)])
def test_random_crop_flip_matches_a_naive_loop(shape, pad) -> None:
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(*shape, generator=g)
    offsets = torch.randint(0, 2 * pad + 1, (shape[0], 2), generator=g)
    offsets[0] = 0
    offsets[-1] = 2 * pad  # the extreme corners
    flips = torch.rand(shape[0], generator=g) < 0.5
    flips[0], flips[1] = True, False
    assert torch.equal(random_crop_flip(x, offsets, flips, pad), naive_crop_flip(x, offsets, flips, pad))


def test_augmented_batch_is_a_crop_flip_of_the_examples() -> None:
    split = indexed_split()
    stream = BatchStream(split, 8, seed=1, augment=True)
    x, y = stream.batch(3)
    sl = slice(3 * 8, 4 * 8)
    expected = naive_crop_flip(split.inputs[y], stream._offsets[sl], stream._flips[sl], BatchStream.PAD)
    assert torch.equal(x, expected)
    assert stream._offsets.min() >= 0 and stream._offsets.max() <= 2 * BatchStream.PAD


# ----------------------------------------------------------------------------- evaluation, seeds

def test_evaluate_matches_a_direct_computation_and_restores_the_mode() -> None:
    split = synthetic_split(n=37)
    model = resnet()
    model.train()
    result = evaluate(model, split, batch_size=10)
    assert model.training
    model.eval()
    with torch.no_grad():
        logits = model(split.inputs)
    assert result.error == pytest.approx(float((logits.argmax(1) != split.targets).float().mean()))
    assert result.loss == pytest.approx(float(F.cross_entropy(logits, split.targets)), rel=1e-5)
    assert 0.0 <= result.error <= 1.0


def test_derive_seed() -> None:
    assert derive_seed("init", 0) == derive_seed("init", 0)
    assert derive_seed(0, 12) != derive_seed(1, 2)
    assert derive_seed("prune", 0, 1) != derive_seed("prune", 0, 2)
    assert 0 <= derive_seed("x") < 2**63
    assert re.fullmatch(r"\d+", str(derive_seed("x")))
