"""Content-addressed experiment cache: atomic writes, checksums, file locks, no pickle.

Layout: `<root>/<kind>/<key>/` holds `config.json` (the canonical configuration the key was made
from) and any number of named tensor files (safetensors, each with a `.sha256` sidecar written
after it) and JSON files. Every write goes to a temporary file and is renamed into place, so a
crash (even `kill -9`) leaves either the old state or the new one, never half a file. Tensors are
read with safetensors, which cannot execute code, so a cache received from elsewhere is safe.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from filelock import FileLock, Timeout
from safetensors import SafetensorError
from safetensors.torch import safe_open, save_file

from . import __version__
from .config import SCHEMA_VERSION, content_hash
from .errors import CacheError

ENV_CACHE_DIR = "LTH_CHECKS_CACHE_DIR"
T = TypeVar("T")


def default_cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    """explicit > $LTH_CHECKS_CACHE_DIR > ./.lth-cache (beside the reports, easy to find and delete)."""
    return Path(explicit or os.environ.get(ENV_CACHE_DIR) or ".lth-cache")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n").encode())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Entry:
    """One cache entry: a directory named by the content hash of `key_dict`."""

    def __init__(self, root: Path, kind: str, key_dict: Mapping[str, Any]):
        self.kind, self.key_dict = kind, dict(key_dict)
        self.key = content_hash(self.key_dict)
        self.path = root / kind / self.key
        self._checked = False
        self._lock: FileLock | None = None

    def __repr__(self) -> str:
        return f"Entry({self.kind}/{self.key})"

    def lock(self, timeout: float = -1) -> FileLock:
        """Inter-process lock for producing this entry (held while training it).

        One lock object per entry, so nested use within a process is re-entrant.
        """
        if self._lock is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = FileLock(str(self.path) + ".lock", timeout=timeout)
        return self._lock

    def _corrupt(self, what: str) -> CacheError:
        return CacheError(f"cache entry {self.path} is corrupt ({what}); delete that directory to recompute it")

    def ensure(self) -> None:
        """Create the entry, or check that an existing one was made from the same configuration."""
        if self._checked:
            return
        cfg_path = self.path / "config.json"
        record = {"kind": self.kind, "key": self.key, "schema": SCHEMA_VERSION, "config": self.key_dict}
        if cfg_path.exists():
            stored = self.read_json("config.json")
            if not isinstance(stored, dict):
                raise self._corrupt("config.json is not a JSON object")
            if stored.get("schema") != SCHEMA_VERSION or stored.get("config") != json.loads(json.dumps(self.key_dict)):
                raise CacheError(f"cache entry {self.path} was written by an incompatible configuration or version "
                                 f"(schema {stored.get('schema')}, expected {SCHEMA_VERSION}); delete it to recompute")
        else:
            atomic_write_json(cfg_path, {**record, "lth_checks": __version__, "torch": torch.__version__})
        self._checked = True

    def _verify(self) -> None:
        """Before reading a result, check an existing config.json once (never reuse a foreign entry)."""
        if not self._checked and (self.path / "config.json").exists():
            self.ensure()

    # ---- JSON
    def has_json(self, name: str) -> bool:
        return (self.path / name).exists()

    def write_json(self, name: str, obj: Any) -> None:
        self.ensure()
        atomic_write_json(self.path / name, obj)

    def read_json(self, name: str) -> Any:
        if name != "config.json":
            self._verify()
        try:
            return json.loads((self.path / name).read_text())
        except FileNotFoundError:
            raise CacheError(f"cache entry {self.path} has no {name}; run the experiment first") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise self._corrupt(f"{name} is not valid JSON: {e.msg if hasattr(e, 'msg') else e}") from None

    # ---- tensors
    def has_tensors(self, name: str) -> bool:
        """True once both the tensor file and its checksum (written second) are in place."""
        return (self.path / f"{name}.sha256").exists() and (self.path / f"{name}.safetensors").exists()

    def write_tensors(self, name: str, tensors: Mapping[str, torch.Tensor],
                      metadata: Mapping[str, str] | None = None) -> None:
        self.ensure()
        cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        path = self.path / f"{name}.safetensors"
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            save_file(cpu, tmp, metadata=dict(metadata or {}))
            digest = _sha256(Path(tmp))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        atomic_write_bytes(self.path / f"{name}.sha256", digest.encode())

    def read_tensors(self, name: str,
                     device: torch.device | str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """Tensors and metadata, after checking the file against its recorded checksum."""
        self._verify()
        path = self.path / f"{name}.safetensors"
        if not self.has_tensors(name):
            raise CacheError(f"cache entry {self.path} has no finished {name}; run the experiment first")
        if _sha256(path) != (self.path / f"{name}.sha256").read_text().strip():
            raise self._corrupt(f"{path.name} does not match its checksum")
        try:
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
        except (SafetensorError, OSError, ValueError) as e:
            raise self._corrupt(f"{path.name} cannot be read: {e}") from None

    def delete(self, name: str) -> None:
        for suffix in (".sha256", ".safetensors"):
            (self.path / f"{name}{suffix}").unlink(missing_ok=True)


@contextlib.contextmanager
def holding_free(items: Sequence[T], entry_of: Callable[[T], Entry]) -> Iterator[list[T]]:
    """Lock, without waiting, the entries of `items` no other process holds; yield those items.

    For training several experiments together: the ones another process is producing are left
    to it (the caller re-checks, under the lock, whether each still needs work).
    """
    locks, free = [], []
    try:
        for item in items:
            lock = entry_of(item).lock()
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            locks.append(lock)
            free.append(item)
        yield free
    finally:
        for lock in locks:
            lock.release()


class Store:
    """The cache root; hands out entries by kind and configuration."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = default_cache_dir(root)

    def entry(self, kind: str, key_dict: Mapping[str, Any]) -> Entry:
        return Entry(self.root, kind, key_dict)

    def entries(self, kind: str) -> list[Path]:
        base = self.root / kind
        return sorted(p for p in base.iterdir() if p.is_dir()) if base.exists() else []
