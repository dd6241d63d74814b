"""Dataset file readers that return whole splits as normalised tensors on a device.

Experiments here train small networks many times over, so each split is loaded once, kept
entirely on the target device, and normalised per channel with statistics taken from the
training split only (so no test information leaks into preprocessing).

Supported datasets (``DATASETS``):

* ``digits`` -- scikit-learn's bundled 8x8 digits (1797 images, raw values 0..16, no files
  needed). The split is fixed: ``torch.randperm(1797)`` from a CPU generator seeded with 0;
  the first 1437 indices are the training split, the remaining 360 the test split.
* ``mnist`` -- the standard IDX files in ``<root>/mnist/`` or ``<root>/MNIST/raw/``
  (torchvision's layout), each plain or gzipped.
* ``cifar10`` / ``cifar100`` -- the standard python pickle batches in
  ``<root>/cifar-10-batches-py/`` and ``<root>/cifar-100-python/`` (fine labels).

``Dataset.mean`` / ``Dataset.std`` are in the [0, 1] scale, i.e. raw pixel value / 255
(/ 16 for digits): ``inputs = (raw / scale - mean) / std``. The standard deviation is the
population one (divide by the number of pixels). The official md5 sums are deliberately not
checked: rebuilt, re-ordered copies of the files are valid input.
"""

from __future__ import annotations

import codecs
import dataclasses
import functools
import gzip
import os
import pickle
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lth_checks.errors import ConfigError, DataError

DATASETS: tuple[str, ...] = ("digits", "mnist", "cifar10", "cifar100")

ENV_DATA_ROOT = "LTH_CHECKS_DATA_ROOT"
_ROOT_HINT = f"pass --data-root or set {ENV_DATA_ROOT}"

_DIGITS_TRAIN = 1437  # of 1797; the remaining 360 form the test split
_DIGITS_SPLIT_SEED = 0
_MNIST_DIRS = ("mnist", os.path.join("MNIST", "raw"))
_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
_IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
_CIFAR10_DIR = "cifar-10-batches-py"
_CIFAR100_DIR = "cifar-100-python"
_CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))


def standard_strides(shape: tuple[int, ...] | torch.Size) -> tuple[int, ...]:
    """The strides ``torch.empty(shape)`` gives: row-major, size-1 dimensions included."""
    strides, step = [], 1
    for size in reversed(tuple(shape)):
        strides.append(step)
        step *= max(int(size), 1)
    return tuple(reversed(strides))


def with_standard_strides(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when its strides are the standard ones, else a copy that has them.

    Why not ``.contiguous()``: torch calls a tensor contiguous whatever the strides of its size-1
    dimensions, so a (N, 1, H, W) batch with strides (H*W, 1, W, 1) -- what digits produced, and
    what indexing or channels_last keep -- passes through unchanged. torch 2.13.0's CPU convolution
    backward corrupts the heap on such single-channel batches on some CPUs (AMD EPYC: glibc aborts
    with "corrupted double-linked list" / "free(): invalid size" inside loss.backward()), so every
    split and every batch built from one is given the strides ``torch.empty(shape)`` would have.
    """
    if t.stride() == standard_strides(t.shape):
        return t
    out = torch.empty(t.shape, dtype=t.dtype, device=t.device)
    out.copy_(t)
    return out


@dataclass(frozen=True, eq=False)
class Split:
    """One split held as two whole tensors (treat them as read-only: loads are cached).

    ``inputs``: float32 (N, C, H, W), already normalised per channel; ``targets``: int64 (N,).
    Both always have standard strides (see :func:`with_standard_strides`).
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    # Random-crop padding in pixels for augmented training: 4 at the native size, divided by the
    # pooling factor when the images were downsampled (2 at 16x16 CIFAR), so a crop shifts the same
    # share of the image.
    crop_padding: int = 4

    def __post_init__(self) -> None:
        if self.inputs.dim() != 4 or self.targets.dim() != 1:
            raise ValueError(
                f"Split needs inputs (N, C, H, W) and targets (N,), got {tuple(self.inputs.shape)} "
                f"and {tuple(self.targets.shape)}"
            )
        if self.inputs.shape[0] != self.targets.shape[0]:
            raise ValueError(f"Split has {self.inputs.shape[0]} inputs but {self.targets.shape[0]} targets")
        object.__setattr__(self, "inputs", with_standard_strides(self.inputs))
        object.__setattr__(self, "targets", with_standard_strides(self.targets))

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def to(self, device: str | torch.device) -> Split:
        """The same split with both tensors on ``device``."""
        return Split(self.inputs.to(device), self.targets.to(device), self.crop_padding)

    def subset(self, n: int, seed: int) -> Split:
        """A fixed random subset of ``n`` examples (the whole split when ``n >= len(self)``).

        Indices come from a CPU ``torch.Generator`` seeded with ``seed`` so the subset is the
        same on every device; for one seed, smaller subsets are contained in larger ones. The
        chosen examples keep their original order.
        """
        if n < 1:
            raise ConfigError(f"subset size must be a positive number of examples, got {n}")
        if n >= len(self):
            return self
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        chosen = torch.randperm(len(self), generator=generator)[:n].sort().values
        return self._take(chosen)

    def _take(self, chosen: torch.Tensor) -> Split:
        chosen = chosen.to(self.targets.device)
        return Split(self.inputs.index_select(0, chosen), self.targets.index_select(0, chosen), self.crop_padding)

    def balanced_subset(self, n: int, seed: int, num_classes: int) -> Split:
        """A fixed, class-balanced subset of ``n`` examples, in their original order.

        Each class gets ``n // num_classes`` examples (the first ``n % num_classes`` classes one
        more), drawn by a seeded CPU permutation of the class's indices, so the subset is the same
        on every device. Raises ConfigError when the split has fewer examples of a class than that.
        """
        if n < 1 or n > len(self):
            raise ConfigError(f"data.train_examples must be in [1, {len(self)}] (the training split's size), got {n}")
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        targets = self.targets.cpu()
        chosen = []
        for c in range(num_classes):
            members = (targets == c).nonzero().flatten()
            want = n // num_classes + (1 if c < n % num_classes else 0)
            if len(members) < want:
                raise ConfigError(f"data.train_examples={n} needs {want} examples of class {c}, the training split "
                                  f"has {len(members)}; choose at most {num_classes * len(members)}")
            chosen.append(members[torch.randperm(len(members), generator=generator)[:want]])
        return self._take(torch.cat(chosen).sort().values)

    def downsampled(self, resolution: int) -> Split:
        """Images average-pooled to ``resolution`` x ``resolution`` (the side must divide the native one).

        Pooling is applied to the normalised images (linear, so per-channel means are unchanged),
        and the crop padding is divided by the same factor.
        """
        side = int(self.inputs.shape[-1])
        if self.inputs.shape[-2] != side or resolution < 1 or resolution > side or side % resolution:
            raise ConfigError(f"data.resolution must divide the native image side {side} "
                              f"(e.g. {side // 2}), got {resolution}")
        factor = side // resolution
        if factor == 1:
            return self
        pooled = torch.nn.functional.avg_pool2d(self.inputs, factor)
        return Split(pooled, self.targets, max(1, self.crop_padding // factor))


@dataclass(frozen=True, eq=False)
class Dataset:
    """A dataset's train and test splits plus the normalisation they went through.

    ``mean``/``std`` are per channel in the [0, 1] scale (raw / 255, or raw / 16 for digits),
    computed from the training split.
    """

    name: str
    train: Split
    test: Split
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one example."""
        channels, height, width = self.train.inputs.shape[1:]
        return int(channels), int(height), int(width)


def resolve_data_root(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The data root: ``explicit`` argument, else ``$LTH_CHECKS_DATA_ROOT``, else None.

    Empty strings count as unset.
    """
    if explicit is not None and os.fspath(explicit) != "":
        return Path(explicit).expanduser()
    from_env = os.environ.get(ENV_DATA_ROOT, "")
    return Path(from_env).expanduser() if from_env else None


def load_dataset(
    name: str,
    data_root: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    download: bool = False,
    *,
    resolution: int = 0,
    train_examples: int = 0,
) -> Dataset:
    """Load ``name`` (one of ``DATASETS``) with both splits on ``device``.

    ``resolution`` > 0 average-pools both splits to that side (:meth:`Split.downsampled`);
    ``train_examples`` > 0 keeps a fixed class-balanced training subset of that size
    (:meth:`Split.balanced_subset`, seed ``TRAIN_SUBSET_SEED``); the test split stays whole.
    0 leaves either unchanged (the data options ``data.resolution`` / ``data.train_examples``).

    ``data_root`` is resolved by :func:`resolve_data_root`; ``digits`` ignores it. With
    ``download=True`` missing files are fetched into the root with torchvision (imported only
    then); files already present are never re-fetched. Repeated loads in one process are
    served from a small in-memory cache (see :func:`clear_cache`).
    """
    if name == "imagenet":
        raise DataError("lth-checks has no ImageNet reader yet, so the imagenet_resnet50 recipe is listed for its "
                        "published settings only; use a CIFAR-10 or MNIST recipe")
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}: valid names are {', '.join(DATASETS)}")
    device_key = str(torch.device(device))
    if name == "digits":
        return _derived(name, "", device_key, resolution, train_examples)
    root = resolve_data_root(data_root)
    if root is None:
        raise ConfigError(f"dataset {name!r} needs a data root: {_ROOT_HINT}")
    if download and not _files_present(name, root):
        _download(name, root)
    if not root.is_dir():
        raise DataError(
            f"data root {root} does not exist: expected a folder holding the {name} files; "
            f"{_ROOT_HINT} to the right folder"
        )
    return _derived(name, str(root.resolve()), device_key, resolution, train_examples)


def load_for(data: Any, data_root: str | os.PathLike[str] | None = None,
             device: str | torch.device = "cpu") -> Dataset:
    """The dataset a ``DataConfig`` describes: its dataset, resolution and training subset."""
    return load_dataset(data.dataset, data_root, device, resolution=data.resolution,
                        train_examples=data.train_examples)


def clear_cache() -> None:
    """Forget every dataset cached by :func:`load_dataset` (frees its memory)."""
    _derived.cache_clear()
    _load_cached.cache_clear()


TRAIN_SUBSET_SEED = 0  # fixed: the training subset is part of the data, the same for every lineage


@functools.lru_cache(maxsize=4)
def _derived(name: str, root: str, device: str, resolution: int, train_examples: int) -> Dataset:
    if resolution < 0 or train_examples < 0:
        raise ConfigError(f"resolution and train_examples must be >= 0 (0 = unchanged), got {resolution}, "
                          f"{train_examples}")
    ds = _load_cached(name, root, device)
    train, test = ds.train, ds.test
    if resolution:
        train, test = train.downsampled(resolution), test.downsampled(resolution)
    if train_examples:
        train = train.balanced_subset(train_examples, TRAIN_SUBSET_SEED, ds.num_classes)
    if train is ds.train and test is ds.test:
        return ds
    return dataclasses.replace(ds, train=train, test=test)


@functools.lru_cache(maxsize=4)
def _load_cached(name: str, root: str, device: str) -> Dataset:
    readers: dict[str, Callable[[Path], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]]
    readers = {"mnist": _read_mnist, "cifar10": _read_cifar10, "cifar100": _read_cifar100}
    if name == "digits":
        arrays, scale, num_classes = _read_digits(), 16.0, 10
    else:
        arrays, scale = readers[name](Path(root)), 255.0
        num_classes = 10 if name != "cifar100" else 100
    return _build(name, *arrays, scale=scale, num_classes=num_classes, device=torch.device(device))


def _build(
    name: str,
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    scale: float,
    num_classes: int,
    device: torch.device,
) -> Dataset:
    """Normalise uint8 (N, C, H, W) arrays with training statistics and move them to ``device``."""
    mean, std = _channel_stats(train_x, scale)

    def to_split(x: np.ndarray, y: np.ndarray) -> Split:
        # Move uint8 first and convert there: the float copy never exists in host memory.
        inputs = torch.from_numpy(x).to(device).to(torch.float32).div_(scale)
        shape = (1, len(mean), 1, 1)
        inputs.sub_(torch.tensor(mean, dtype=torch.float32, device=device).view(shape))
        inputs.div_(torch.tensor(std, dtype=torch.float32, device=device).view(shape))
        targets = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)).to(device)
        return Split(inputs, targets)

    return Dataset(
        name=name,
        train=to_split(train_x, train_y),
        test=to_split(test_x, test_y),
        num_classes=num_classes,
        mean=mean,
        std=std,
    )


def _channel_stats(x: np.ndarray, scale: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std of integer pixels, in the raw / ``scale`` scale.

    Runs on the host in float64 over chunks: sums of integer pixels are exact, and the result
    does not depend on the device the data ends up on.
    """
    channels = x.shape[1]
    total = np.zeros(channels, dtype=np.float64)
    total_sq = np.zeros(channels, dtype=np.float64)
    for start in range(0, x.shape[0], 1024):
        chunk = x[start : start + 1024].astype(np.float64)
        total += chunk.sum(axis=(0, 2, 3))
        total_sq += np.square(chunk).sum(axis=(0, 2, 3))
    count = float(x.shape[0] * x.shape[2] * x.shape[3])
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
    std[std == 0.0] = scale  # a constant channel: leave its scale alone instead of dividing by 0
    return tuple(float(v) for v in mean / scale), tuple(float(v) for v in std / scale)


# --- digits -----------------------------------------------------------------------------


def _read_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits, split by a fixed seeded permutation (see module docstring)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images).astype(np.uint8)[:, None, :, :]  # values 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    generator = torch.Generator(device="cpu").manual_seed(_DIGITS_SPLIT_SEED)
    order = torch.randperm(images.shape[0], generator=generator).numpy()
    train, test = order[:_DIGITS_TRAIN], order[_DIGITS_TRAIN:]
    return images[train], labels[train], images[test], labels[test]


# --- MNIST (IDX files) ------------------------------------------------------------------


def _find_mnist_files(root: Path) -> dict[str, Path] | None:
    """The four MNIST files in the first layout holding all of them (plain preferred to .gz)."""
    for folder in _MNIST_DIRS:
        found: dict[str, Path] = {}
        for key, stem in _MNIST_FILES.items():
            for candidate in (root / folder / stem, root / folder / f"{stem}.gz"):
                if candidate.is_file():
                    found[key] = candidate
                    break
        if len(found) == len(_MNIST_FILES):
            return found
    return None


def _read_mnist(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    files = _find_mnist_files(root)
    if files is None:
        for folder in _MNIST_DIRS:
            if (root / folder).is_dir():
                missing = next(
                    stem
                    for stem in _MNIST_FILES.values()
                    if not (root / folder / stem).is_file() and not (root / folder / f"{stem}.gz").is_file()
                )
                raise DataError(
                    f"{root / folder / missing}[.gz] is missing: expected the four standard MNIST "
                    f"IDX files in {root / folder}; put them there or use download=True"
                )
        raise DataError(
            f"MNIST not found under {root}: expected {root / 'mnist'}/train-images-idx3-ubyte"
            f"[.gz] and the other IDX files (or torchvision's MNIST/raw/); {_ROOT_HINT} "
            "to the folder that holds mnist/, or use download=True"
        )
    arrays = []
    for part in ("train", "test"):
        images_path, labels_path = files[f"{part}_images"], files[f"{part}_labels"]
        images = _read_idx(images_path, _IDX_IMAGES_MAGIC)
        labels = _read_idx(labels_path, _IDX_LABELS_MAGIC)
        if images.shape[1:] != (28, 28):
            raise DataError(
                f"{images_path}: expected 28x28 MNIST images, header says "
                f"{images.shape[1]}x{images.shape[2]}; replace it with the standard file"
            )
        if images.shape[0] != labels.shape[0]:
            raise DataError(
                f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
                f"{labels.shape[0]} labels; expected equal counts: replace the mismatched file"
            )
        _check_labels(labels, 10, labels_path)
        arrays += [images[:, None, :, :], labels.astype(np.int64)]
    return arrays[0], arrays[1], arrays[2], arrays[3]


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse an unsigned-byte IDX file (plain or gzipped), checking header and payload size."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as stream:
                data = stream.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"{path}: cannot read it ({_one_line(exc)}); expected a "
            f"{'gzip-compressed ' if path.suffix == '.gz' else ''}IDX file: re-download it"
        ) from exc
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    kind = "labels" if ndim == 1 else "images"
    if len(data) < header:
        raise DataError(
            f"{path}: truncated ({len(data)} bytes), expected an IDX {kind} header of {header} bytes: re-download it"
        )
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DataError(
            f"{path}: IDX magic number 0x{found:08x}, expected 0x{magic:08x} (unsigned-byte "
            f"{kind}, {ndim} dimension(s)): the file is not MNIST {kind}, replace it"
        )
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64))
    if len(data) - header != expected:
        raise DataError(
            f"{path}: payload is {len(data) - header} bytes but the header dims {dims} need "
            f"exactly {expected}; the file is truncated or corrupt: re-download it"
        )
    return np.frombuffer(data, dtype=np.uint8, count=expected, offset=header).reshape(dims).copy()


# --- CIFAR (python pickles) -------------------------------------------------------------


def _read_cifar10(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    folder = root / _CIFAR10_DIR
    return _read_cifar(folder, _CIFAR10_TRAIN, "test_batch", "batches.meta", "labels", 10)


def _read_cifar100(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    folder = root / _CIFAR100_DIR
    return _read_cifar(folder, ("train",), "test", "meta", "fine_labels", 100)


def _read_cifar(
    folder: Path,
    train_files: tuple[str, ...],
    test_file: str,
    meta_file: str,
    label_key: str,
    num_classes: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if not folder.is_dir():
        raise DataError(
            f"{folder} not found: expected the python-pickle CIFAR files "
            f"({', '.join(train_files)}, {test_file}) there; {_ROOT_HINT} to the folder that holds {folder.name}/, "
            "or use download=True"
        )
    meta_path = folder / meta_file
    if meta_path.is_file():  # optional; only used as a consistency check
        meta = _unpickle(meta_path)
        names = meta.get("label_names" if num_classes == 10 else "fine_label_names")
        if names is not None and len(names) != num_classes:
            raise DataError(
                f"{meta_path}: lists {len(names)} class names, expected {num_classes}: "
                "the folder does not hold this dataset"
            )
    train = [_read_cifar_batch(folder / f, label_key, num_classes) for f in train_files]
    test_x, test_y = _read_cifar_batch(folder / test_file, label_key, num_classes)
    train_x = np.concatenate([x for x, _ in train]) if len(train) > 1 else train[0][0]
    train_y = np.concatenate([y for _, y in train])
    return train_x, train_y, test_x, test_y


def _read_cifar_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch -> uint8 (N, 3, 32, 32) images and int64 (N,) labels, checked."""
    if not path.is_file():
        raise DataError(
            f"{path} is missing: expected the CIFAR python batch file there; "
            "put the standard files in place or use download=True"
        )
    batch = _unpickle(path)
    data, labels = batch.get("data"), batch.get(label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(
            f"{path}: 'data' is {found}, expected a uint8 array of shape (N, 3072): "
            "replace it with the standard CIFAR batch file"
        )
    if labels is None:
        raise DataError(f"{path}: no {label_key!r} entry, expected one label per image: replace the file")
    try:
        label_array = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise DataError(
            f"{path}: {label_key!r} is not a list of integers ({_one_line(exc)}): replace the file"
        ) from exc
    if label_array.shape != (data.shape[0],):
        raise DataError(
            f"{path}: {label_array.size} labels for {data.shape[0]} images, expected one "
            "label per image: replace the file"
        )
    _check_labels(label_array, num_classes, path)
    return data.reshape(-1, 3, 32, 32), label_array


# Unpickling can run arbitrary code (a pickle may name any importable callable, e.g.
# os.system, and ask for it to be called). The CIFAR formats are pickles, so we must unpickle,
# but a legitimate batch only needs numpy's array-reconstruction helpers; everything else is
# refused before it is ever imported or called. `_codecs.encode` appears in protocol-2 pickles
# written by Python 3 (it turns the raw array bytes back from a latin-1 string) and only
# encodes text; `_frombuffer` is numpy's protocol-5 array rebuild and only wraps a buffer.
_reconstruct, _frombuffer = np.zeros(1).__reduce__()[0], np.zeros(1).__reduce_ex__(5)[0]
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a global outside the allow-list."""


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the numpy array globals in ``_ALLOWED_GLOBALS``."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise _RefusedGlobal(f"{module}.{name}") from None


def _unpickle(path: Path) -> dict[str, Any]:
    """Load a CIFAR pickle with the restricted unpickler; keys are returned as ``str``."""
    try:
        with open(path, "rb") as stream:
            obj = _ArrayOnlyUnpickler(stream, encoding="latin1").load()
    except _RefusedGlobal as exc:
        raise DataError(
            f"{path}: refused to unpickle {exc} (only numpy arrays may appear in a CIFAR "
            "file, so it is not a standard batch and may be malicious): replace it"
        ) from None
    except Exception as exc:  # truncated/corrupt pickles raise many different types
        raise DataError(
            f"{path}: not a readable pickle ({type(exc).__name__}: {_one_line(exc)}); "
            "expected a standard CIFAR python batch: re-download it"
        ) from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path}: holds a {type(obj).__name__}, expected a dict (a CIFAR python batch): replace it")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


# --- shared helpers ---------------------------------------------------------------------


def _check_labels(labels: np.ndarray, num_classes: int, path: Path) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"{path}: labels span {int(labels.min())}..{int(labels.max())}, expected "
            f"0..{num_classes - 1}: the file is corrupt or of another dataset, replace it"
        )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _files_present(name: str, root: Path) -> bool:
    if name == "mnist":
        return _find_mnist_files(root) is not None
    if name == "cifar10":
        folder, needed = root / _CIFAR10_DIR, (*_CIFAR10_TRAIN, "test_batch")
    else:
        folder, needed = root / _CIFAR100_DIR, ("train", "test")
    return all((folder / f).is_file() for f in needed)


def _download(name: str, root: Path) -> None:
    """Fetch ``name`` into ``root`` with torchvision, which is imported only here."""
    try:
        import torchvision.datasets as tv_datasets  # type: ignore[import-not-found]
    except ImportError as exc:
        raise DataError(
            f"download of {name} into {root} needs torchvision, which cannot be imported "
            f"({_one_line(exc)}): install torchvision or place the files in {root} by hand"
        ) from exc
    factory = {
        "mnist": tv_datasets.MNIST,
        "cifar10": tv_datasets.CIFAR10,
        "cifar100": tv_datasets.CIFAR100,
    }[name]
    try:
        root.mkdir(parents=True, exist_ok=True)
        for train in (True, False):
            factory(str(root), train=train, download=True)
    except Exception as exc:  # network, disk and checksum failures all end the same way
        raise DataError(
            f"download of {name} into {root} failed ({type(exc).__name__}: {_one_line(exc)}): "
            "check the network and the folder, or place the files there by hand"
        ) from exc
