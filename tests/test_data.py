"""Tests for lth_checks.data: real files (skipped when absent), digits, synthetic good and bad files."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from lth_checks.data import DATASETS, Dataset, Split, clear_cache, load_dataset, resolve_data_root
from lth_checks.errors import ConfigError, DataError

MNIST_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def real_data_root() -> Path:
    """$LTH_CHECKS_DATA_ROOT, else the shared folder next to the repository."""
    from_env = os.environ.get("LTH_CHECKS_DATA_ROOT")
    return Path(from_env) if from_env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


REAL_ROOT = real_data_root()  # read at import, before any test edits the environment


def require_real(sub: str) -> Path:
    root = REAL_ROOT
    if not (root / sub).is_dir():
        pytest.skip(f"real dataset folder {sub} not found at {root / sub}: set LTH_CHECKS_DATA_ROOT")
    return root


@pytest.fixture(autouse=True, scope="module")
def _free_cache() -> Iterator[None]:
    """Drop cached datasets (hundreds of MB for CIFAR-10) once this module is done."""
    yield
    clear_cache()


@pytest.fixture(autouse=True)
def _no_env_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests pass roots explicitly; an inherited environment variable must not leak in."""
    monkeypatch.delenv("LTH_CHECKS_DATA_ROOT", raising=False)


@pytest.fixture(scope="module")
def mnist() -> Dataset:
    return load_dataset("mnist", require_real("mnist"))


@pytest.fixture(scope="module")
def cifar10() -> Dataset:
    return load_dataset("cifar10", require_real("cifar-10-batches-py"))


# --- synthetic file builders ------------------------------------------------------------


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    magic = magic if magic is not None else 0x00000800 | array.ndim
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(
    root: Path,
    n_train: int = 20,
    n_test: int = 7,
    gz: bool = True,
    folder: str = "mnist",
    seed: int = 0,
) -> dict[str, Path]:
    """A small valid MNIST folder; returns the written paths by stem."""
    rng = np.random.default_rng(seed)
    target = root / folder
    target.mkdir(parents=True, exist_ok=True)
    content = {
        MNIST_STEMS[0]: idx_bytes(rng.integers(0, 256, (n_train, 28, 28))),
        MNIST_STEMS[1]: idx_bytes(np.arange(n_train) % 10),
        MNIST_STEMS[2]: idx_bytes(rng.integers(0, 256, (n_test, 28, 28))),
        MNIST_STEMS[3]: idx_bytes(np.arange(n_test) % 10),
    }
    paths = {}
    for stem, payload in content.items():
        path = target / (stem + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(payload) if gz else payload)
        paths[stem] = path
    return paths


def cifar_batch(n: int, num_classes: int = 10, label_key: str = "labels", seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "batch_label": "synthetic",
        label_key: [int(v) for v in rng.integers(0, num_classes, n)],
        "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        "filenames": [f"img_{i}.png" for i in range(n)],
    }


def write_cifar10(root: Path, n: int = 4, protocol: int = 4) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(cifar_batch(n, seed=i), protocol=protocol))
    (folder / "test_batch").write_bytes(pickle.dumps(cifar_batch(n, seed=9), protocol=protocol))
    meta = {"label_names": [f"c{i}" for i in range(10)], "num_cases_per_batch": n, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return folder


class _RunsShell:
    """Pickles to a call of os.system: what a malicious 'dataset' file would contain."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return os.system, (self.command,)


# --- real files -------------------------------------------------------------------------


def test_real_mnist_shapes_counts_classes(mnist: Dataset) -> None:
    assert mnist.input_shape == (1, 28, 28) and mnist.num_classes == 10
    assert mnist.train.inputs.shape == (60000, 1, 28, 28) and mnist.test.inputs.shape == (
        10000,
        1,
        28,
        28,
    )
    assert mnist.train.inputs.dtype == torch.float32 and mnist.train.targets.dtype == torch.int64
    assert len(mnist.train) == 60000 and len(mnist.test) == 10000
    for split in (mnist.train, mnist.test):
        counts = torch.bincount(split.targets, minlength=10)
        assert counts.numel() == 10 and bool((counts > 0).all())


def test_real_mnist_normalised(mnist: Dataset) -> None:
    x = mnist.train.inputs
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1.0) < 1e-3
    assert mnist.mean[0] == pytest.approx(0.1307, abs=1e-3)
    assert mnist.std[0] == pytest.approx(0.3081, abs=1e-3)


def test_real_cifar10_shapes_counts_means(cifar10: Dataset) -> None:
    assert cifar10.input_shape == (3, 32, 32) and cifar10.num_classes == 10
    assert len(cifar10.train) == 50000 and len(cifar10.test) == 10000
    assert torch.bincount(cifar10.train.targets, minlength=10).tolist() == [5000] * 10
    assert torch.bincount(cifar10.test.targets, minlength=10).tolist() == [1000] * 10
    assert [255 * m for m in cifar10.mean] == pytest.approx([125.3, 123.0, 113.9], abs=0.1)
    per_channel = cifar10.train.inputs.mean(dim=(0, 2, 3))  # float32 pairwise sums: ample here
    assert torch.allclose(per_channel, torch.zeros(3), atol=1e-3)


# --- digits -----------------------------------------------------------------------------


def test_digits_shapes_and_classes() -> None:
    digits = load_dataset("digits")
    assert digits.input_shape == (1, 8, 8) and digits.num_classes == 10
    assert len(digits.train) == 1437 and len(digits.test) == 360
    assert set(digits.train.targets.tolist()) == set(range(10)) == set(digits.test.targets.tolist())
    raw_train = digits.train.inputs * digits.std[0] + digits.mean[0]
    assert float(raw_train.min()) == pytest.approx(0.0, abs=1e-5)
    assert float(raw_train.max()) == pytest.approx(1.0, abs=1e-5)


def test_digits_split_is_deterministic() -> None:
    first = load_dataset("digits")
    clear_cache()
    second = load_dataset("digits")
    assert first is not second
    assert torch.equal(first.train.inputs, second.train.inputs)
    assert torch.equal(first.test.targets, second.test.targets)
    assert first.mean == second.mean and first.std == second.std


def test_load_is_cached_per_device() -> None:
    assert load_dataset("digits") is load_dataset("digits", device=torch.device("cpu"))


# --- Split.subset -----------------------------------------------------------------------


def test_subset_deterministic_and_seeded() -> None:
    train = load_dataset("digits").train
    a, b, c = train.subset(100, seed=1), train.subset(100, seed=1), train.subset(100, seed=2)
    assert len(a) == 100
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, c.inputs)
    assert train.subset(len(train), seed=1) is train and train.subset(10**6, seed=3) is train
    with pytest.raises(ConfigError):
        train.subset(0, seed=1)


def test_subset_same_on_any_device_and_nested() -> None:
    split = Split(torch.arange(50.0).view(50, 1, 1, 1), torch.arange(50))
    small, large = split.subset(5, seed=7), split.subset(20, seed=7)
    assert set(small.targets.tolist()) <= set(large.targets.tolist())
    moved = split.to("cpu").subset(5, seed=7)
    assert torch.equal(moved.targets, small.targets)


# --- synthetic valid files --------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_synthetic_mnist_roundtrip(tmp_path: Path, gz: bool) -> None:
    write_mnist(tmp_path, gz=gz)
    data = load_dataset("mnist", tmp_path)
    assert data.train.inputs.shape == (20, 1, 28, 28) and data.test.inputs.shape == (7, 1, 28, 28)
    assert data.train.targets.tolist() == [i % 10 for i in range(20)]
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (20, 28, 28)).astype(np.float32) / 255
    restored = data.train.inputs[:, 0] * data.std[0] + data.mean[0]
    assert torch.allclose(restored, torch.from_numpy(raw), atol=1e-5)
    assert data.mean[0] == pytest.approx(float(raw.mean()), abs=1e-6)


def test_mnist_torchvision_layout_and_plain_preferred(tmp_path: Path) -> None:
    paths = write_mnist(tmp_path, gz=False, folder="MNIST/raw")
    for path in paths.values():  # a broken .gz beside a good plain file is never read
        path.with_name(path.name + ".gz").write_bytes(b"not gzip")
    assert len(load_dataset("mnist", tmp_path).train) == 20


def test_data_root_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_mnist(tmp_path)
    monkeypatch.setenv("LTH_CHECKS_DATA_ROOT", str(tmp_path))
    assert resolve_data_root() == tmp_path
    assert resolve_data_root(tmp_path / "x") == tmp_path / "x"
    assert len(load_dataset("mnist").test) == 7


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_synthetic_cifar10_roundtrip(tmp_path: Path, protocol: int) -> None:
    folder = write_cifar10(tmp_path, protocol=protocol)
    data = load_dataset("cifar10", tmp_path)
    assert data.train.inputs.shape == (20, 3, 32, 32) and len(data.test) == 4
    first = cifar_batch(4, seed=1)
    assert data.train.targets[:4].tolist() == first["labels"]
    mean, std = torch.tensor(data.mean).view(1, 3, 1, 1), torch.tensor(data.std).view(1, 3, 1, 1)
    restored = data.train.inputs[:4] * std + mean
    expected = torch.from_numpy(first["data"].reshape(4, 3, 32, 32).astype(np.float32) / 255)
    assert torch.allclose(restored, expected, atol=1e-5)
    assert (folder / "batches.meta").is_file()


def test_synthetic_cifar100_with_bytes_keys(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name, n in (("train", 6), ("test", 3)):
        batch = {k.encode(): v for k, v in cifar_batch(n, 100, "fine_labels").items()}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    data = load_dataset("cifar100", tmp_path)
    assert data.num_classes == 100 and len(data.train) == 6 and len(data.test) == 3


# --- broken files -----------------------------------------------------------------------


def test_truncated_idx(tmp_path: Path) -> None:
    paths = write_mnist(tmp_path, gz=False)
    path = paths["train-images-idx3-ubyte"]
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated") as info:
        load_dataset("mnist", tmp_path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_truncated_gzip(tmp_path: Path) -> None:
    path = write_mnist(tmp_path)["t10k-images-idx3-ubyte"]
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(DataError) as info:
        load_dataset("mnist", tmp_path)
    assert str(path) in str(info.value)


def test_wrong_magic(tmp_path: Path) -> None:
    path = write_mnist(tmp_path)["train-labels-idx1-ubyte"]
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(20), magic=0x00000803)))
    with pytest.raises(DataError, match="0x00000801") as info:
        load_dataset("mnist", tmp_path)
    assert str(path) in str(info.value)


def test_count_mismatch(tmp_path: Path) -> None:
    paths = write_mnist(tmp_path)
    labels = paths["t10k-labels-idx1-ubyte"]
    labels.write_bytes(gzip.compress(idx_bytes(np.arange(6) % 10)))
    with pytest.raises(DataError, match="7 images") as info:
        load_dataset("mnist", tmp_path)
    assert str(labels) in str(info.value) and str(paths["t10k-images-idx3-ubyte"]) in str(info.value)


def test_wrong_image_size(tmp_path: Path) -> None:
    path = write_mnist(tmp_path)["train-images-idx3-ubyte"]
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((20, 27, 28)))))
    with pytest.raises(DataError, match="28x28") as info:
        load_dataset("mnist", tmp_path)
    assert str(path) in str(info.value)


def test_corrupt_gzip(tmp_path: Path) -> None:
    path = write_mnist(tmp_path)["train-images-idx3-ubyte"]
    blob = bytearray(path.read_bytes())
    blob[20:40] = bytes(20)  # damage the deflate stream
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="gzip") as info:
        load_dataset("mnist", tmp_path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_label_out_of_range(tmp_path: Path) -> None:
    path = write_mnist(tmp_path)["train-labels-idx1-ubyte"]
    path.write_bytes(gzip.compress(idx_bytes(np.full(20, 12))))
    with pytest.raises(DataError, match="0..9") as info:
        load_dataset("mnist", tmp_path)
    assert str(path) in str(info.value)


def test_missing_mnist_file(tmp_path: Path) -> None:
    write_mnist(tmp_path)["t10k-labels-idx1-ubyte"].unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte") as info:
        load_dataset("mnist", tmp_path)
    assert "missing" in str(info.value)


def test_missing_mnist_folder_and_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="LTH_CHECKS_DATA_ROOT"):
        load_dataset("mnist", tmp_path)
    with pytest.raises(DataError, match="does not exist") as info:
        load_dataset("mnist", tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(info.value)


def test_no_data_root(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--data-root.*LTH_CHECKS_DATA_ROOT"):
        load_dataset("mnist", None)


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(ConfigError) as info:
        load_dataset("svhn")
    assert "svhn" in str(info.value)
    assert all(name in str(info.value) for name in DATASETS)


def test_imagenet_says_it_has_no_reader() -> None:
    with pytest.raises(DataError, match="no ImageNet reader"):
        load_dataset("imagenet")


def test_cifar_wrong_data_shape(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path)
    batch = cifar_batch(4)
    batch["data"] = batch["data"][:, :3000]
    (folder / "data_batch_3").write_bytes(pickle.dumps(batch))
    with pytest.raises(DataError, match="3072") as info:
        load_dataset("cifar10", tmp_path)
    assert str(folder / "data_batch_3") in str(info.value)


def test_cifar_label_count_mismatch(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path)
    batch = cifar_batch(4)
    batch["labels"] = batch["labels"][:3]
    (folder / "test_batch").write_bytes(pickle.dumps(batch))
    with pytest.raises(DataError, match="3 labels for 4 images") as info:
        load_dataset("cifar10", tmp_path)
    assert str(folder / "test_batch") in str(info.value)


def test_cifar_truncated_pickle_and_missing_batch(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path)
    path = folder / "data_batch_2"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DataError, match="pickle") as info:
        load_dataset("cifar10", tmp_path)
    assert str(path) in str(info.value)
    path.unlink()
    with pytest.raises(DataError, match="missing") as info:
        load_dataset("cifar10", tmp_path)
    assert str(path) in str(info.value)


def test_malicious_pickle_refused_and_not_run(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    batch = cifar_batch(4)
    batch["batch_label"] = _RunsShell(f"touch {marker}")
    (folder / "data_batch_1").write_bytes(pickle.dumps(batch))
    with pytest.raises(DataError, match="refused") as info:
        load_dataset("cifar10", tmp_path)
    assert str(folder / "data_batch_1") in str(info.value) and "system" in str(info.value)
    assert not marker.exists()


def test_download_without_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)  # makes `import torchvision` fail
    with pytest.raises(DataError, match="torchvision"):
        load_dataset("cifar10", tmp_path / "fresh", download=True)
    write_mnist(tmp_path)  # files already present: download=True must not need torchvision
    assert len(load_dataset("mnist", tmp_path, download=True).train) == 20


# --- standard strides (torch 2.13 CPU conv backward corrupts the heap on ambiguous ones) -----


def _assert_standard(split: Split, what: str) -> None:
    for name, t in (("inputs", split.inputs), ("targets", split.targets)):
        assert t.stride() == torch.empty(t.shape).stride(), f"{what}.{name} has strides {t.stride()}"


@pytest.mark.parametrize("dataset", ["digits", "mnist", "cifar10", "cifar100"])
def test_every_split_of_every_reader_has_standard_strides(dataset: str, tmp_path: Path) -> None:
    if dataset == "mnist":
        write_mnist(tmp_path)
    elif dataset == "cifar10":
        write_cifar10(tmp_path)
    elif dataset == "cifar100":
        folder = tmp_path / "cifar-100-python"
        folder.mkdir()
        for part, n in (("train", 6), ("test", 3)):
            batch = cifar_batch(n, num_classes=100, label_key="fine_labels")
            (folder / part).write_bytes(pickle.dumps(batch, protocol=4))
    data = load_dataset(dataset, tmp_path)
    for part in ("train", "test"):
        split = getattr(data, part)
        _assert_standard(split, f"{dataset}.{part}")
        _assert_standard(split.subset(3, seed=1), f"{dataset}.{part}.subset")


def test_batches_built_from_a_split_keep_standard_strides() -> None:
    from lth_checks.replicas import _ReplicaBatches
    from lth_checks.training import BatchStream

    split = load_dataset("digits").train
    for augment in (False, True):
        x, _ = BatchStream(split, 64, seed=3, augment=augment).batch(25)
        assert x.stride() == torch.empty(x.shape).stride(), f"augment={augment}: {x.stride()}"
        xs, _ = _ReplicaBatches(split, 64, [1, 2, 3], augment).batch(25)
        assert xs.stride() == torch.empty(xs.shape).stride(), f"replicas augment={augment}: {xs.stride()}"
        assert xs[1].stride() == torch.empty(xs[1].shape).stride()


def test_split_gives_ambiguous_layouts_standard_strides() -> None:
    values = torch.randn(5, 1, 8, 8)
    odd = values.as_strided((5, 1, 8, 8), (64, 1, 8, 1))
    assert odd.is_contiguous()  # why .contiguous() would not have helped
    split = Split(odd, torch.zeros(5, dtype=torch.long))
    assert split.inputs.stride() == (64, 64, 8, 1)
    assert torch.equal(split.inputs, odd)


_CONV_ON_DIGITS = """
import torch, torch.nn.functional as F
from lth_checks.config import ModelConfig
from lth_checks.data import load_dataset
from lth_checks.models import build_model
from lth_checks.training import BatchStream
torch.set_num_threads(1)
split = load_dataset("digits").train
model = build_model(ModelConfig(name="cifar_resnet", depth=8, width=4), (1, 8, 8), 10, seed=0)
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
stream = BatchStream(split, 64, seed=0, augment=False)
for t in range(60):
    x, y = stream.batch(t)
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
assert torch.isfinite(loss), loss
print("trained", float(loss))
"""


def test_conv_model_trains_on_digits_in_a_fresh_process() -> None:
    """A heap corruption kills the process: run it in a child so it fails here with the signal."""
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.run([sys.executable, "-c", _CONV_ON_DIGITS], capture_output=True, text=True, timeout=300,
                          env=env)
    if proc.returncode < 0:
        import signal

        pytest.fail(f"training a conv net on digits killed the process with {signal.Signals(-proc.returncode).name}: "
                    f"{proc.stderr.strip()[:600]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "trained" in proc.stdout


# --- data options: resolution (average pooling) and class-balanced training subsets ------


def test_downsampling_average_pools_and_halves_the_crop_padding(tmp_path: Path) -> None:
    write_cifar10(tmp_path, n=8)
    full = load_dataset("cifar10", tmp_path)
    small = load_dataset("cifar10", tmp_path, resolution=16)
    assert small.train.inputs.shape == (40, 3, 16, 16) and small.test.inputs.shape == (8, 3, 16, 16)
    block = full.train.inputs[3, 1, 4:6, 6:8].mean()  # pixel (2, 3) of the 16x16 image
    assert torch.allclose(small.train.inputs[3, 1, 2, 3], block, atol=1e-6)
    assert torch.equal(small.train.targets, full.train.targets)
    assert full.train.crop_padding == 4 and small.train.crop_padding == 2
    assert small.train.subset(5, seed=0).crop_padding == 2 and small.train.to("cpu").crop_padding == 2
    assert load_dataset("cifar10", tmp_path, resolution=32) is full  # native side: unchanged


@pytest.mark.parametrize("resolution", [5, 33, 7])
def test_resolution_must_divide_the_native_side(tmp_path: Path, resolution: int) -> None:
    write_cifar10(tmp_path)
    with pytest.raises(ConfigError) as excinfo:
        load_dataset("cifar10", tmp_path, resolution=resolution)
    message = str(excinfo.value)
    assert "\n" not in message and "data.resolution must divide the native image side 32" in message


def test_balanced_subset_is_fixed_seeded_and_class_balanced() -> None:
    targets = torch.arange(200) % 10
    split = Split(torch.arange(200, dtype=torch.float32).view(200, 1, 1, 1), targets)
    a, b = split.balanced_subset(55, seed=0, num_classes=10), split.balanced_subset(55, seed=0, num_classes=10)
    assert torch.equal(a.inputs, b.inputs) and len(a) == 55
    counts = torch.bincount(a.targets, minlength=10).tolist()
    assert counts == [6] * 5 + [5] * 5  # the remainder goes to the first classes
    order = a.inputs.flatten()
    assert torch.equal(order, order.sort().values)  # original order kept
    assert torch.equal(a.targets, targets[order.long()])  # each example keeps its label
    other = split.balanced_subset(55, seed=1, num_classes=10)
    assert not torch.equal(other.inputs, a.inputs)


def test_balanced_subset_rejects_impossible_sizes() -> None:
    split = Split(torch.zeros(30, 1, 2, 2), torch.tensor([0] * 25 + [1] * 5))
    for n, words in ((0, "must be in [1, 30]"), (31, "must be in [1, 30]"), (20, "needs 10 examples of class 1")):
        with pytest.raises(ConfigError) as excinfo:
            split.balanced_subset(n, seed=0, num_classes=2)
        assert words in str(excinfo.value) and "\n" not in str(excinfo.value)


def test_train_examples_subsets_the_training_split_only(tmp_path: Path) -> None:
    write_cifar10(tmp_path, n=40)
    data = load_dataset("cifar10", tmp_path, resolution=16, train_examples=50)
    full = load_dataset("cifar10", tmp_path)
    assert len(data.train) == 50 and len(data.test) == len(full.test) == 40
    assert data.mean == full.mean  # normalised with the whole training split's statistics
    assert load_dataset("cifar10", tmp_path, resolution=16, train_examples=50) is data  # cached


def test_real_cifar10_cpu_recipe_data() -> None:
    root = require_real("cifar-10-batches-py")
    data = load_dataset("cifar10", root, resolution=16, train_examples=20_000)
    assert data.train.inputs.shape == (20_000, 3, 16, 16) and data.test.inputs.shape == (10_000, 3, 16, 16)
    assert torch.bincount(data.train.targets).tolist() == [2_000] * 10
