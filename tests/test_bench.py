"""The benchmark runs in CI-sized form and reports what it measured; the speed paths compute what the plain loop does.

Equivalence on CPU: fused SGD matches foreach SGD to the last bit (not bitwise: the fused CPU kernel
rounds elements past the last full vector differently); a compile that fails falls back to eager
execution, bitwise identical to never compiling. On CUDA (tests marked gpu): channels_last
and torch.compile agree with the plain loop within 1e-3 relative after 10 steps (TF32 off).
"""

from __future__ import annotations

import argparse
import json
import math
import warnings

import pytest
import torch

from lth_checks import bench
from lth_checks.config import ModelConfig, TrainConfig
from lth_checks.data import Split
from lth_checks.models import build_model
from lth_checks.pruning import dense_mask, prune
from lth_checks.speed import (
    compile_unavailable_reason,
    fused_sgd_available,
    maybe_compile,
    prepare_model,
    sgd_optimizer,
)
from lth_checks.training import clone_state, train

RESNET = ModelConfig(name="cifar_resnet", depth=8, width=4)
CFG = TrainConfig(lr=0.05, momentum=0.9, weight_decay=5e-4, batch_size=16, iterations=60, milestones=(30,))
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory) -> dict:
    """One quick CPU run without dataset files (an empty data root)."""
    empty = tmp_path_factory.mktemp("no-data")
    return bench.run_benchmark(device="cpu", quick=True, data_root=str(empty), log=lambda msg: None)


def _positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_quick_benchmark_reports_every_figure(quick_result: dict) -> None:
    r = quick_result
    json.dumps(r, allow_nan=False)  # plain JSON
    assert r["device"]["type"] == "cpu" and r["device"]["name"]
    assert r["torch_version"] == torch.__version__ and r["quick"] is True
    assert r["data"]["random_tensors"] is True and r["data"]["source"] == "random tensors"
    assert "random" in r["data"]["note"] and r["data"]["image_shape"] == [3, 32, 32]
    train_figs = r["figures"]["train"]
    assert set(train_figs) == {"baseline_dataloader_fp32_eager", "ours_fp32"}
    for fig in train_figs.values():
        assert _positive(fig["s_per_epoch"]) and _positive(fig["images_per_s"]) and fig["steps"] >= 1
    reps = r["figures"]["replicas"]
    assert sorted({f["R"] for f in reps}) == [1, 2, 4] == r["settings"]["replicas"]
    assert {f["execution"] for f in reps} == {"vmap", "loop"}
    assert all(_positive(f["model_steps_per_s"]) and _positive(f["speedup_vs_sequential"]) for f in reps)
    assert [f["execution"] for f in reps if f["default"]] == ["loop"] * 3  # the CPU default
    grid = r["figures"]["barrier_grid"]
    assert _positive(grid["evaluate_path"]["points_per_s"]) and _positive(grid["evaluate_path_batched"]["points_per_s"])
    for method in ("forward_over_reverse", "reverse_over_reverse"):
        assert _positive(r["figures"]["hvp"][method]["hvps_per_s"])
    expected = {"train_ours_fp32_vs_baseline", "barrier_grid_batched_vs_evaluate_path",
                "hvp_forward_over_reverse_vs_reverse_over_reverse",
                *(f"replicas_R{n}_{e}_vs_sequential" for n in (1, 2, 4) for e in ("vmap", "loop"))}
    assert set(r["ratios"]) == expected
    assert all(_positive(v) for v in r["ratios"].values()), r["ratios"]
    assert r["wall_s"] < 300  # minutes at most even on a loaded 2-core CI machine (a wall-clock bound, so generous)


def test_report_table_and_cli(quick_result: dict, tmp_path, monkeypatch, capsys) -> None:
    table = bench.format_report(quick_result)
    for needle in ("baseline_dataloader_fp32_eager", "ours_fp32", "R=4", "evaluate_path_batched", "HVPs/s",
                   "random uint8 images"):
        assert needle in table
    calls = []

    def fake_run(device, **kwargs):
        calls.append((device, kwargs))
        return quick_result

    monkeypatch.setattr(bench, "run_benchmark", fake_run)
    parser = argparse.ArgumentParser()
    bench.add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "sub" / "bench.json"
    args = parser.parse_args(["bench", "--device", "cpu", "--quick", "--replicas", "1,2", "--out", str(out)])
    assert args.func(args) == 0
    assert calls == [("cpu", {"epochs_images": None, "replicas": (1, 2), "quick": True, "data_root": None})]
    assert json.loads(out.read_text()) == json.loads(json.dumps(quick_result))
    assert "lth-checks bench on" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--replicas", "0,2"])


def test_conventional_dataset_matches_the_device_augmentation_up_to_padding() -> None:
    """Same images, same normalisation: an unaugmented crop (offset 4, no flip) gives the split's image."""
    data = bench._random_data(8, 4, torch.device("cpu"), "test")
    ds = bench.ConventionalCifar(data.images_hwc, data.labels, data.mean, data.std)
    x, y = ds[3]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == int(data.train.targets[3])
    inner = x[:, 4:-4, 4:-4]  # away from the padding, any crop + flip is a shifted copy of the image
    ref = data.train.inputs[3]
    found = any(torch.allclose(inner, cand[:, 4 + dy:28 + dy, 4 + dx:28 + dx], atol=1e-5)
                for dy in range(-4, 5) for dx in range(-4, 5) for cand in (ref, ref.flip(2)))
    assert found


# ----------------------------------------------------------------------------- speed paths on CPU

def _split(n: int = 96, seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g))


@pytest.mark.parametrize("nesterov", [False, True])
def test_fused_sgd_matches_the_foreach_step_on_cpu(nesterov: bool) -> None:
    """Equal to the last bit, not bitwise: the fused CPU kernel rounds the vector tail differently."""
    if not fused_sgd_available("cpu"):
        pytest.skip(f"torch {torch.__version__} has no fused SGD on the CPU")
    cfg = TrainConfig(lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=nesterov)
    g = torch.Generator().manual_seed(0)
    a = [torch.randn(50, generator=g).requires_grad_() for _ in range(3)]
    b = [p.detach().clone().requires_grad_() for p in a]
    fused, foreach = sgd_optimizer(a, cfg, "cpu"), sgd_optimizer(b, cfg, "cpu", fused=False)
    assert fused.defaults["fused"] and foreach.defaults["foreach"]
    for _ in range(4):
        grads = [torch.randn(50, generator=g) for _ in a]
        for p, q, gr in zip(a, b, grads):
            p.grad, q.grad = gr.clone(), gr.clone()
        fused.step()
        foreach.step()
    assert all(torch.allclose(p, q, rtol=1e-6, atol=1e-7) for p, q in zip(a, b))


def test_prepare_model_leaves_cpu_models_alone() -> None:
    model = build_model(RESNET, (3, 8, 8), 4, seed=0)
    before = clone_state(model)
    assert prepare_model(model, "cpu") is model
    assert all(p.is_contiguous() for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_compile_disabled_or_unavailable_runs_eagerly(monkeypatch) -> None:
    model = build_model(RESNET, (3, 8, 8), 4, seed=0)
    assert maybe_compile(model, enabled=False) is model and model._compiled_call_impl is None
    monkeypatch.setattr("lth_checks.speed.compile_unavailable_reason", lambda device: "no compiler here")
    with pytest.warns(RuntimeWarning, match="no compiler here"):
        assert maybe_compile(model) is model
    assert model._compiled_call_impl is None
    assert compile_unavailable_reason("cpu") is None or isinstance(compile_unavailable_reason("cpu"), str)


def test_a_failing_compile_falls_back_to_the_plain_loop_bitwise(monkeypatch) -> None:
    monkeypatch.setattr("lth_checks.speed.compile_unavailable_reason", lambda device: None)
    plain, guarded = build_model(RESNET, (3, 8, 8), 4, seed=0), build_model(RESNET, (3, 8, 8), 4, seed=0)

    def broken_compile(self, **kwargs):
        def fail(*args, **kw):
            raise RuntimeError("backend compiler failed\nlong traceback")
        self._compiled_call_impl = fail

    monkeypatch.setattr(torch.nn.Module, "compile", broken_compile)
    maybe_compile(guarded)
    weights = {n: p.detach() for n, p in plain.named_parameters() if n in plain.prunable_names()}
    mask = prune(weights, dense_mask(plain), 0.5, "random_global", seed=1)
    split = _split()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(guarded, mask, split, CFG, start=0, end=12, data_seed=0, augment=True)
    assert [str(w.message) for w in caught if "torch.compile" in str(w.message)] == [
        "torch.compile failed on the first call (RuntimeError: backend compiler failed); running eagerly"]
    train(plain, mask, split, CFG, start=0, end=12, data_seed=0, augment=True)
    a, b = clone_state(plain), clone_state(guarded)
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- speed paths on CUDA

def _rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max() / a[k].double().abs().max().clamp_min(1e-12))
               for k in a if a[k].is_floating_point())


@pytest.fixture
def no_tf32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("compiled", [False, True], ids=["channels_last", "channels_last+compile"])
def test_fast_single_model_path_matches_plain_loop_on_cuda(compiled: bool, no_tf32) -> None:
    split = _split().to("cuda")
    plain = build_model(RESNET, (3, 8, 8), 4, seed=0).cuda()
    fast = prepare_model(build_model(RESNET, (3, 8, 8), 4, seed=0), "cuda")
    if compiled:
        maybe_compile(fast)
    mask = dense_mask(plain)
    train(plain, mask, split, CFG, start=0, end=10, data_seed=0, augment=True)
    train(fast, mask, split, CFG, start=0, end=10, data_seed=0, augment=True)
    assert _rel(clone_state(plain), clone_state(fast)) < 1e-3


@pytest.mark.gpu
@needs_cuda
def test_vmap_replicas_match_one_at_a_time_on_cuda(no_tf32) -> None:
    from lth_checks.replicas import train_replicas

    split = _split().to("cuda")
    models = [build_model(RESNET, (3, 8, 8), 4, seed=s).cuda() for s in range(3)]
    masks = [dense_mask(m) for m in models]
    together = train_replicas(models[0], [clone_state(m) for m in models], masks, split, CFG, start=0, end=10,
                              data_seeds=[0, 1, 2], augment=True, execution="vmap")
    for r, m in enumerate(models):
        train(m, masks[r], split, CFG, start=0, end=10, data_seed=r, augment=True)
        assert _rel(clone_state(m), together[r]) < 1e-3, r


def test_fast_training_variant_runs_on_cpu() -> None:
    """The CUDA-only variants' code path (channels_last is a no-op on CPU; fused SGD where train has the hook)."""
    s = bench.settings_for(torch.device("cpu"), quick=True, epochs_images=64)
    data = bench._random_data(64, 16, torch.device("cpu"), "test")
    fig = bench.time_ours(data, s, torch.device("cpu"), channels_last=True, fused_optimizer=True)
    assert _positive(fig["s_per_epoch"]) and fig["steps"] == 2
