"""`lth-checks bench`: how fast this project trains, evaluates and differentiates, on one device.

Measured in one run, on the same device:

1. seconds per epoch of ResNet-20 CIFAR-10 training (batch 128, SGD momentum 0.9, weight decay
   1e-4, random crop + flip) for
   * a conventional baseline written here: a map-style Dataset over uint8 HWC images doing
     per-image random crop (4-pixel zero padding), flip, conversion to float CHW and
     normalisation in numpy inside ``__getitem__``, a DataLoader with worker processes,
     fp32, eager, ``torch.optim.SGD``;
   * ours: :func:`lth_checks.training.train` on a Split held on the device (batched
     augmentation on the device, foreach SGD, no host sync in the step loop); on CUDA also with
     channels_last + fused SGD (fp32, then bf16 autocast), then also torch.compile
     (lth_checks.speed);
2. throughput (model-iterations per second) of R replicas trained together
   (:func:`lth_checks.replicas.train_replicas`, each execution mode) vs one at a time
   (R x the per-iteration time of ``train``);
3. barrier-grid evaluation: grid points per second of
   :func:`measure.connectivity.evaluate_path` vs :func:`measure.connectivity.evaluate_path_batched`
   (batch-norm re-estimation on, as in the default measurement);
4. Hessian-vector products per second of :class:`measure.hessian.RestrictedHessian` (both
   HVP methods).

Without the CIFAR-10 files, random uint8 images of the same shape stand in (and the result says
so). ``quick=True`` shrinks everything (ResNet-8 of width 4, a few hundred images, a few
iterations) so it runs as a CPU test in seconds; its figures only show that the code runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from . import __version__
from .config import ModelConfig, TrainConfig
from .data import Split, load_dataset, resolve_data_root
from .errors import ConfigError, DataError
from .models import build_model
from .pruning import dense_mask
from .training import clone_state, train

CIFAR10_TRAIN_IMAGES = 50_000
NUM_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)
PAD = 4


# ----------------------------------------------------------------------------- settings

@dataclass(frozen=True)
class BenchSettings:
    """Sizes of one benchmark run (see `settings_for`)."""

    model: ModelConfig
    batch_size: int
    epochs_images: int  # images per timed epoch
    warmup_steps: int
    replica_steps: int
    loader_workers: int
    path_points: int
    path_examples: int  # test examples and training-subset examples on the path
    path_bn_examples: int
    path_batch_size: int
    hessian_examples: int
    hessian_batch_size: int
    hvp_repeats: int

    @property
    def steps_per_epoch(self) -> int:
        return max(1, self.epochs_images // self.batch_size)


def settings_for(device: torch.device, quick: bool, epochs_images: int | None) -> BenchSettings:
    """Quick (CI), CPU and GPU sizes. The GPU sizes are those of the paper-scale recipe."""
    cuda = device.type == "cuda"
    if quick:
        return BenchSettings(model=ModelConfig(name="cifar_resnet", depth=8, width=4), batch_size=32,
                             epochs_images=epochs_images or 256, warmup_steps=1, replica_steps=2, loader_workers=2,
                             path_points=5, path_examples=128, path_bn_examples=64, path_batch_size=128,
                             hessian_examples=64, hessian_batch_size=64, hvp_repeats=2)
    resnet20 = ModelConfig(name="cifar_resnet", depth=20, width=16)
    if cuda:
        return BenchSettings(model=resnet20, batch_size=128, epochs_images=epochs_images or CIFAR10_TRAIN_IMAGES,
                             warmup_steps=20, replica_steps=50, loader_workers=min(8, os.cpu_count() or 1),
                             path_points=11, path_examples=10_000, path_bn_examples=2048, path_batch_size=1000,
                             hessian_examples=4096, hessian_batch_size=1024, hvp_repeats=10)
    return BenchSettings(model=resnet20, batch_size=128, epochs_images=epochs_images or 1280, warmup_steps=2,
                         replica_steps=2, loader_workers=2, path_points=11, path_examples=500,
                         path_bn_examples=500, path_batch_size=500, hessian_examples=256, hessian_batch_size=256,
                         hvp_repeats=3)


# ----------------------------------------------------------------------------- data

@dataclass
class BenchData:
    train: Split  # normalised, on the device (what `train` uses)
    test: Split
    images_hwc: np.ndarray  # uint8 (N, H, W, C) on the host (what the conventional baseline uses)
    labels: np.ndarray  # int64 (N,)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str  # "cifar10" or "random tensors"
    note: str

    @property
    def random(self) -> bool:
        return self.source != "cifar10"


def _random_data(n_train: int, n_test: int, device: torch.device, why: str) -> BenchData:
    g = torch.Generator().manual_seed(0)
    raw = torch.randint(0, 256, (n_train + n_test, *IMAGE_SHAPE), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, NUM_CLASSES, (n_train + n_test,), generator=g)
    x = raw.float().div_(255)
    mean = x[:n_train].mean(dim=(0, 2, 3))
    std = x[:n_train].std(dim=(0, 2, 3), unbiased=False)
    x = (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    train = Split(x[:n_train].to(device), labels[:n_train].to(device))
    test = Split(x[n_train:].to(device), labels[n_train:].to(device))
    return BenchData(train, test, raw[:n_train].permute(0, 2, 3, 1).contiguous().numpy(),
                     labels[:n_train].numpy().astype(np.int64), tuple(mean.tolist()), tuple(std.tolist()),
                     "random tensors", f"random uint8 images of CIFAR-10's shape ({why})")


def load_bench_data(data_root: str | os.PathLike | None, n_train: int, n_test: int, device: torch.device) -> BenchData:
    """CIFAR-10 from `data_root` (or $LTH_CHECKS_DATA_ROOT) when its files are there, else random images."""
    root = resolve_data_root(data_root)
    if root is None:
        return _random_data(n_train, n_test, device, "no data root given")
    try:
        ds = load_dataset("cifar10", root, device)
    except (ConfigError, DataError) as exc:
        return _random_data(n_train, n_test, device, f"CIFAR-10 not loadable: {exc}")
    train, test = ds.train, ds.test
    n_train, n_test = min(n_train, len(train)), min(n_test, len(test))
    train = Split(train.inputs[:n_train], train.targets[:n_train])
    test = Split(test.inputs[:n_test], test.targets[:n_test])
    # The baseline gets the same images back as uint8 (exact: the normalisation is affine).
    mean = torch.tensor(ds.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(ds.std, device=device).view(1, -1, 1, 1)
    raw = (train.inputs * std + mean).mul_(255).round_().clamp_(0, 255).to(torch.uint8)
    return BenchData(train, test, raw.permute(0, 2, 3, 1).contiguous().cpu().numpy(),
                     train.targets.cpu().numpy().astype(np.int64), ds.mean, ds.std, "cifar10",
                     f"CIFAR-10 from {root} (first {n_train} training and {n_test} test images)")


class ConventionalCifar(torch.utils.data.Dataset):
    """The torchvision-style pipeline: per-image RandomCrop(32, padding=4) + RandomHorizontalFlip
    + ToTensor + Normalize, in numpy inside ``__getitem__`` (each DataLoader worker has its own RNG).
    """

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, mean: Sequence[float], std: Sequence[float]):
        self.images, self.labels = images_hwc, labels
        self.mean = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(-1, 1, 1)
        self._rng: np.random.Generator | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def _generator(self) -> np.random.Generator:
        if self._rng is None:
            info = torch.utils.data.get_worker_info()
            self._rng = np.random.default_rng((info.seed if info is not None else 0) % 2**32)
        return self._rng

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        rng = self._generator()
        img = self.images[i]
        h, w, _ = img.shape
        padded = np.pad(img, ((PAD, PAD), (PAD, PAD), (0, 0)))
        top, left = rng.integers(0, 2 * PAD + 1, size=2)
        img = padded[top:top + h, left:left + w]
        if rng.random() < 0.5:
            img = img[:, ::-1]
        chw = np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32) / 255.0
        chw = (chw - self.mean) / self.std
        return torch.from_numpy(chw), int(self.labels[i])


# ----------------------------------------------------------------------------- timing helpers

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    started = time.perf_counter()
    fn()
    _sync(device)
    return max(time.perf_counter() - started, 1e-9)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name or platform.machine()} ({torch.get_num_threads()} torch threads)"


def _cfg(s: BenchSettings, precision: str = "fp32") -> TrainConfig:
    return TrainConfig(lr=0.1, momentum=0.9, weight_decay=1e-4, batch_size=s.batch_size, iterations=10**6,
                       precision=precision)


def _model(s: BenchSettings, device: torch.device, seed: int = 0):
    return build_model(s.model, IMAGE_SHAPE, NUM_CLASSES, seed=seed).to(device)


# ----------------------------------------------------------------------------- 1. single-model training

def time_conventional(data: BenchData, s: BenchSettings, device: torch.device) -> dict:
    """Seconds per epoch of the conventional DataLoader pipeline (fp32, eager, torch.optim.SGD)."""
    n = s.steps_per_epoch * s.batch_size
    dataset = ConventionalCifar(data.images_hwc[:n], data.labels[:n], data.mean, data.std)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=s.batch_size, shuffle=True, drop_last=True, num_workers=s.loader_workers,
        pin_memory=device.type == "cuda", persistent_workers=s.loader_workers > 0,
        generator=torch.Generator().manual_seed(0))
    model = _model(s, device)
    model.train()
    cfg = _cfg(s)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    def run(max_steps: int | None) -> int:
        steps = 0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            if max_steps is not None and steps >= max_steps:
                break
        return steps

    run(s.warmup_steps)  # starts the workers, warms up kernels
    steps = 0

    def epoch() -> None:
        nonlocal steps
        steps = run(None)

    seconds = _timed(epoch, device)
    return {"s_per_epoch": seconds, "steps": steps, "images_per_s": steps * s.batch_size / seconds,
            "s_per_step": seconds / steps}


def time_ours(data: BenchData, s: BenchSettings, device: torch.device, *, precision: str = "fp32",
              channels_last: bool = False, compile_model: bool = False, fused_optimizer: bool = False) -> dict:
    """Seconds per epoch of lth_checks.training.train on the device-resident split."""
    from .speed import maybe_compile, prepare_model

    model = _model(s, device)
    if channels_last:
        prepare_model(model, device)
    notes: list[str] = []
    if compile_model:
        maybe_compile(model, True, device=device, warn=lambda msg, *a, **k: notes.append(str(msg)))
    mask = dense_mask(model)
    cfg = _cfg(s, precision)
    train_split = Split(data.train.inputs[:s.steps_per_epoch * s.batch_size],
                        data.train.targets[:s.steps_per_epoch * s.batch_size])
    extra = {"fused_optimizer": fused_optimizer}
    warm = max(s.warmup_steps, 3 if compile_model else 0)
    train(model, mask, train_split, cfg, start=0, end=warm, data_seed=0, augment=True, **extra)
    seconds = _timed(lambda: train(model, mask, train_split, cfg, start=0, end=s.steps_per_epoch, data_seed=1,
                                   augment=True, **extra), device)
    out = {"s_per_epoch": seconds, "steps": s.steps_per_epoch,
           "images_per_s": s.steps_per_epoch * s.batch_size / seconds, "s_per_step": seconds / s.steps_per_epoch}
    if notes:
        out["note"] = "; ".join(notes)
    return out


# ----------------------------------------------------------------------------- 2. replicas

def time_replicas(data: BenchData, s: BenchSettings, device: torch.device, r: int, execution: str) -> dict:
    from .replicas import train_replicas

    models = [_model(s, device, seed) for seed in range(r)]
    states = [clone_state(m) for m in models]
    masks = [dense_mask(m) for m in models]
    cfg = _cfg(s)
    seeds = list(range(r))

    def run(steps: int) -> None:
        train_replicas(models[0], states, masks, data.train, cfg, start=0, end=steps, data_seeds=seeds,
                       augment=True, execution=execution)

    run(s.warmup_steps)
    seconds = _timed(lambda: run(s.replica_steps), device)
    return {"R": r, "execution": execution, "s_per_step": seconds / s.replica_steps,
            "model_steps_per_s": r * s.replica_steps / seconds}


# ----------------------------------------------------------------------------- 3. barrier grid

def time_barrier_grid(data: BenchData, s: BenchSettings, device: torch.device) -> dict:
    from .measure.connectivity import PathSettings, evaluate_path, evaluate_path_batched

    a, b = clone_state(_model(s, device, 0)), clone_state(_model(s, device, 1))
    test = Split(data.test.inputs[:s.path_examples], data.test.targets[:s.path_examples])
    train_sub = Split(data.train.inputs[:s.path_examples], data.train.targets[:s.path_examples])
    settings = PathSettings(points=s.path_points, bn_mode="reestimate", bn_examples=s.path_bn_examples,
                            batch_size=s.path_batch_size)
    warm = PathSettings(points=2, bn_mode="reestimate", bn_examples=s.path_bn_examples, batch_size=s.path_batch_size)
    model = _model(s, device)
    out: dict = {"points": s.path_points, "examples_per_split": len(test), "bn_mode": "reestimate"}
    for name, fn in (("evaluate_path", evaluate_path), ("evaluate_path_batched", evaluate_path_batched)):
        fn(model, a, b, test, train_sub, warm)
        seconds = _timed(lambda fn=fn: fn(model, a, b, test, train_sub, settings), device)
        out[name] = {"s": seconds, "points_per_s": s.path_points / seconds}
    return out


# ----------------------------------------------------------------------------- 4. Hessian-vector products

def time_hvp(data: BenchData, s: BenchSettings, device: torch.device) -> dict:
    from .measure.hessian import RestrictedHessian

    model = _model(s, device)
    x, y = data.train.inputs[:s.hessian_examples], data.train.targets[:s.hessian_examples]
    out: dict = {"examples": len(y)}
    for method in ("forward_over_reverse", "reverse_over_reverse"):
        op = RestrictedHessian(model, dense_mask(model), x, y, batch_size=s.hessian_batch_size, method=method)
        v = torch.randn(op.dim, generator=torch.Generator().manual_seed(0)).to(device)
        try:
            op.matvec(v)
        except Exception as exc:  # e.g. an op without a forward-mode rule on this torch
            out[method] = {"hvps_per_s": None, "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
            continue

        def repeat(op=op, v=v) -> None:
            for _ in range(s.hvp_repeats):
                op.matvec(v)

        seconds = _timed(repeat, device)
        out[method] = {"hvps_per_s": s.hvp_repeats / seconds, "dim": op.dim}
    return out


# ----------------------------------------------------------------------------- the run

def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den <= 0 or not math.isfinite(num) or not math.isfinite(den):
        return None
    return num / den


def run_benchmark(device: str | torch.device = "auto", *, epochs_images: int | None = None,
                  replicas: Sequence[int] | None = (1, 4, 8, 16), quick: bool = False,
                  data_root: str | os.PathLike | None = None,
                  log: Callable[[str], None] | None = None) -> dict:
    """Run every measurement on `device` and return the JSON-ready result.

    `epochs_images`: images per timed training epoch (default: 50,000 on CUDA, 1,280 on CPU,
    256 in quick mode). `replicas`: the R values (quick mode keeps those <= 4, default 1, 2, 4).
    Ratios are speed-ups (> 1: the second-named is slower).
    """
    from .imp import resolve_device
    from .replicas import resolve_execution

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    dev = resolve_device(device)
    s = settings_for(dev, quick, epochs_images)
    if epochs_images is not None and epochs_images < s.batch_size:
        raise ConfigError(f"--epochs-images must be at least one batch ({s.batch_size}), got {epochs_images}")
    rs = [int(r) for r in (replicas or ())]
    if quick:
        rs = [r for r in rs if r <= 4] if rs and replicas != (1, 4, 8, 16) else [1, 2, 4]
    if any(r < 1 for r in rs):
        raise ConfigError(f"replica counts must be >= 1, got {rs}")
    started = time.perf_counter()
    n_train = max(s.steps_per_epoch * s.batch_size, s.path_examples, s.hessian_examples)
    data = load_bench_data(data_root, n_train, s.path_examples, dev)
    log(f"bench on {dev} ({device_name(dev)}), torch {torch.__version__}: {data.note}")

    figures: dict = {"train": {}, "replicas": [], "barrier_grid": {}, "hvp": {}}
    ratios: dict[str, float | None] = {}

    log("training: conventional DataLoader baseline")
    figures["train"]["baseline_dataloader_fp32_eager"] = base = time_conventional(data, s, dev)
    variants = [("ours_fp32", {})]
    if dev.type == "cuda":
        fast = {"channels_last": True, "fused_optimizer": True}
        variants += [("ours_fp32_channels_last_fused", fast),
                     ("ours_bf16_channels_last_fused", {**fast, "precision": "bf16"}),
                     ("ours_bf16_channels_last_fused_compiled", {**fast, "precision": "bf16", "compile_model": True})]
    for name, kwargs in variants:
        log(f"training: {name}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            figures["train"][name] = fig = time_ours(data, s, dev, **kwargs)
        ratios[f"train_{name}_vs_baseline"] = _ratio(base["s_per_epoch"], fig["s_per_epoch"])
    single = figures["train"]["ours_fp32"]["s_per_step"]

    default_exec = resolve_execution("auto", dev)
    for r in rs:
        for execution in ("vmap", "loop"):
            log(f"replicas: R={r} ({execution})")
            fig = time_replicas(data, s, dev, r, execution)
            fig["sequential_model_steps_per_s"] = 1.0 / single
            fig["speedup_vs_sequential"] = _ratio(r * single, fig["s_per_step"])
            fig["default"] = execution == default_exec
            figures["replicas"].append(fig)
            ratios[f"replicas_R{r}_{execution}_vs_sequential"] = fig["speedup_vs_sequential"]

    log("barrier grid")
    figures["barrier_grid"] = grid = time_barrier_grid(data, s, dev)
    ratios["barrier_grid_batched_vs_evaluate_path"] = _ratio(grid["evaluate_path_batched"]["points_per_s"],
                                                             grid["evaluate_path"]["points_per_s"])
    log("Hessian-vector products")
    figures["hvp"] = hvp = time_hvp(data, s, dev)
    ratios["hvp_forward_over_reverse_vs_reverse_over_reverse"] = _ratio(
        hvp["forward_over_reverse"].get("hvps_per_s"), hvp["reverse_over_reverse"].get("hvps_per_s"))

    per_step = {k: v["s_per_step"] for k, v in figures["train"].items()}
    estimates = {k: v * 62_400 / 3600 for k, v in per_step.items()}  # 160 epochs of 390 steps
    return {
        "benchmark": "lth-checks bench",
        "lth_checks_version": __version__,
        "device": {"type": dev.type, "name": device_name(dev), "index": dev.index},
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "quick": quick,
        "data": {"source": data.source, "random_tensors": data.random, "note": data.note,
                 "train_images": len(data.train), "test_images": len(data.test), "image_shape": list(IMAGE_SHAPE)},
        "settings": {"model": f"{s.model.name} depth {s.model.depth} width {s.model.width}",
                     "batch_size": s.batch_size, "epochs_images": s.steps_per_epoch * s.batch_size,
                     "steps_per_epoch": s.steps_per_epoch, "warmup_steps": s.warmup_steps,
                     "replica_steps": s.replica_steps, "replicas": rs, "default_replica_execution": default_exec,
                     "loader_workers": s.loader_workers, "path_points": s.path_points,
                     "path_examples": s.path_examples, "path_bn_examples": s.path_bn_examples,
                     "hessian_examples": s.hessian_examples, "hvp_repeats": s.hvp_repeats},
        "figures": figures,
        "estimates": {"hours_per_62400_iterations": estimates},
        "ratios": ratios,
        "wall_s": time.perf_counter() - started,
    }


# ----------------------------------------------------------------------------- output

def _fmt(v: float | None, spec: str = ".3g") -> str:
    return "n/a" if v is None else format(v, spec)


def format_report(result: dict) -> str:
    """The benchmark as an aligned plain-text table."""
    f, s = result["figures"], result["settings"]
    lines = [f"lth-checks bench on {result['device']['name']} ({result['device']['type']}), "
             f"torch {result['torch_version']}, {'quick' if result['quick'] else 'full'} run",
             f"data: {result['data']['note']}",
             f"model {s['model']}, batch {s['batch_size']}, epoch = {s['epochs_images']} images",
             "", f"{'training':<38} {'s/epoch':>10} {'images/s':>10} {'speed-up':>9}"]
    base = f["train"]["baseline_dataloader_fp32_eager"]["s_per_epoch"]
    for name, fig in f["train"].items():
        lines.append(f"{name:<38} {_fmt(fig['s_per_epoch']):>10} {_fmt(fig['images_per_s'], '.0f'):>10} "
                     f"{_fmt(base / fig['s_per_epoch'], '.2f'):>8}x")
    lines += ["", f"{'replicas':<12} {'execution':<10} {'s/step':>9} {'model-steps/s':>14} {'vs one at a time':>17}"]
    for fig in f["replicas"]:
        mark = " *" if fig.get("default") else ""
        lines.append(f"R={fig['R']:<10} {fig['execution']:<10} {_fmt(fig['s_per_step']):>9} "
                     f"{_fmt(fig['model_steps_per_s']):>14} {_fmt(fig['speedup_vs_sequential'], '.2f'):>16}x{mark}")
    lines.append(f"(one at a time: {_fmt(f['replicas'][0]['sequential_model_steps_per_s']) if f['replicas'] else 'n/a'}"
                 " model-steps/s; * = default execution on this device)")
    g = f["barrier_grid"]
    lines += ["", f"barrier grid ({g['points']} points, {g['examples_per_split']} examples per split, BN re-estimated)",
              f"  evaluate_path          {_fmt(g['evaluate_path']['points_per_s']):>9} points/s",
              f"  evaluate_path_batched  {_fmt(g['evaluate_path_batched']['points_per_s']):>9} points/s   "
              f"{_fmt(result['ratios']['barrier_grid_batched_vs_evaluate_path'], '.2f')}x"]
    h = f["hvp"]
    lines += ["", f"Hessian-vector products ({h['examples']} examples)"]
    for method in ("forward_over_reverse", "reverse_over_reverse"):
        fig = h[method]
        lines.append(f"  {method:<22} {_fmt(fig.get('hvps_per_s')):>9} HVPs/s" +
                     (f"  ({fig['error']})" if fig.get("error") else ""))
    lines.append(f"  forward-over-reverse vs reverse-over-reverse: "
                 f"{_fmt(result['ratios']['hvp_forward_over_reverse_vs_reverse_over_reverse'], '.2f')}x")
    lines += ["", f"wall time {result['wall_s']:.1f} s"]
    return "\n".join(lines)


def write_json(result: dict, path: str | os.PathLike) -> Path:
    out = Path(path)
    if out.parent != Path(""):
        out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, sort_keys=False, allow_nan=False) + "\n")
    return out


def _replica_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--replicas expects integers like 1,4,8,16, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"--replicas expects positive integers, got {text!r}")
    return values


def cmd_bench(args: argparse.Namespace) -> int:
    result = run_benchmark(args.device, epochs_images=args.epochs_images, replicas=args.replicas, quick=args.quick,
                           data_root=args.data_root)
    print(format_report(result))
    path = write_json(result, args.out)
    print(f"written to {path}", file=sys.stderr)
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the `bench` subcommand on an argparse subparsers object."""
    p = subparsers.add_parser("bench", help="time training, replicas, barrier grids and HVPs on one device",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when present)")
    p.add_argument("--quick", action="store_true", help="tiny shapes: checks that everything runs (seconds on a CPU)")
    p.add_argument("--replicas", type=_replica_list, default=(1, 4, 8, 16),
                   help="replica counts trained together (default 1,4,8,16; quick: 1,2,4)")
    p.add_argument("--epochs-images", type=int, default=None,
                   help="images per timed epoch (default 50000 on CUDA, 1280 on CPU, 256 with --quick)")
    p.add_argument("--data-root", help="folder with cifar-10-batches-py/ (or $LTH_CHECKS_DATA_ROOT); "
                                       "random images of the same shape without it")
    p.add_argument("--out", default="lth-bench.json", help="JSON output path (default ./lth-bench.json)")
    p.set_defaults(func=cmd_bench)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from .errors import LthError

    parser = argparse.ArgumentParser(prog="python -m lth_checks.bench")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except LthError as e:
        print(f"lth-checks: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
