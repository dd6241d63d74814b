"""Content-addressed experiment cache: atomic writes, checksums, lease locks, no pickle.

Layout: `<root>/<kind>/<key>/` holds `config.json` (the canonical configuration the key was made
from) and any number of named tensor files (safetensors, each with a `.sha256` sidecar written
after it) and JSON files. Every write goes to a temporary file and is renamed into place, so a
crash (even `kill -9`) leaves either the old state or the new one, never half a file. Tensors are
read with safetensors, which cannot execute code, so a cache received from elsewhere is safe.

Locking (one lock per entry, held while producing it) is a lease in a lock file, so that the
cache can be the meeting point of jobs on several hosts over a shared filesystem (NFS, Lustre,
GPFS): see :class:`LeaseLock` for what it guarantees.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import safe_open, save_file

from . import __version__
from .config import SCHEMA_VERSION, content_hash
from .errors import CacheError

ENV_CACHE_DIR = "LTH_CHECKS_CACHE_DIR"
ENV_LOCK_TTL = "LTH_CHECKS_LOCK_TTL"
TRAINING_LEDGER = "trainings.jsonl"
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


class LockTimeout(CacheError, TimeoutError):
    """A lock could not be taken within the time asked for (another process is producing the entry)."""


def _process_start(pid: int) -> str:
    """The kernel's start time of `pid` (Linux), so a recycled pid is not taken for the holder."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


_HOST = socket.gethostname()


class _Renewer:
    """One daemon thread per process that touches every held lock file, so leases stay fresh."""

    def __init__(self) -> None:
        self._held: weakref.WeakSet[LeaseLock] = weakref.WeakSet()
        self._guard = threading.Lock()
        self._changed = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, lock: LeaseLock) -> None:
        with self._guard:
            self._held.add(lock)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="lth-lease-renewer", daemon=True)
                self._thread.start()
        self._changed.set()  # a shorter lease may need an earlier renewal

    def discard(self, lock: LeaseLock) -> None:
        with self._guard:
            self._held.discard(lock)

    def _run(self) -> None:
        while True:
            with self._guard:
                held = list(self._held)
            for lock in held:
                lock.renew()
            self._changed.clear()
            self._changed.wait(max(0.5, min((lock.ttl_s for lock in held), default=60.0) / 6))


_RENEWER = _Renewer()


class LeaseLock:
    """Exclusive lock on one cache entry, valid across processes and hosts on a shared filesystem.

    Why not ``filelock.FileLock``: it is ``flock``/``fcntl`` based, which NFS implements only
    partly (client-side emulation, lost on server restarts, not at all with ``nolock`` mounts),
    and a lock held by a job whose node died is never released. What this lock guarantees:

    * **Mutual exclusion.** Taking it is creating ``<entry>.lock`` with ``O_CREAT | O_EXCL``,
      which is atomic on local filesystems and on NFSv3 and later. The file records the holder
      (host, pid, the pid's start time, a random token) and is checked after creation.
    * **Liveness (stale-lock recovery).** While held, a background thread touches the file every
      ``ttl_s / 6`` seconds. A lock whose holder is on this host and no longer running is stale at
      once; one on another host is stale when its file has not been touched for ``ttl_s`` seconds
      by the filesystem's own clock (compared with a probe file written beside it, so client
      clocks do not matter). A stale lock is broken under a short ``<entry>.lock.break`` guard
      (itself O_EXCL, so two waiters never both break and both take it).
    * **No work lost or done twice.** Results are written atomically before the lock is released,
      and every producer re-checks under the lock whether the work is still needed; a job that
      dies mid-level leaves its in-level checkpoint for the next holder to resume.
    * The limit: a holder that is alive but cannot reach the filesystem for longer than ``ttl_s``
      (a partitioned node) may lose its lease while still running. Its atomic writes cannot
      corrupt an entry, but the work can then be done twice. ``ttl_s`` defaults to 300 s
      (``$LTH_CHECKS_LOCK_TTL``).

    Re-entrant within one lock object (nested use in one process does not deadlock).
    """

    def __init__(self, path: str | os.PathLike, timeout: float = -1, ttl_s: float | None = None):
        self.path = Path(path)
        self.timeout = timeout
        self.ttl_s = float(ttl_s if ttl_s is not None else os.environ.get(ENV_LOCK_TTL, 300))
        self._count = 0
        self._token: str | None = None
        self._guard = threading.RLock()

    @property
    def is_locked(self) -> bool:
        return self._count > 0

    def _holder_record(self) -> dict:
        pid = os.getpid()
        return {"host": _HOST, "pid": pid, "start": _process_start(pid), "token": self._token,
                "acquired": time.time()}

    def holder(self) -> dict | None:
        """Who holds the lock now (None when free or unreadable)."""
        try:
            record = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def _try_create(self) -> bool:
        self._token = uuid.uuid4().hex
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self._holder_record(), f)
            f.flush()
            os.fsync(f.fileno())
        return (self.holder() or {}).get("token") == self._token

    def _filesystem_now(self) -> float:
        probe = self.path.with_name(f".{self.path.name}.{_HOST}.{os.getpid()}.probe")
        probe.write_bytes(b"")
        try:
            return probe.stat().st_mtime
        finally:
            probe.unlink(missing_ok=True)

    def is_stale(self) -> bool:
        """Whether the current lock file belongs to a holder that is gone (see the class docstring)."""
        try:
            touched = self.path.stat().st_mtime
        except FileNotFoundError:
            return False
        record = self.holder()
        if record and record.get("host") == _HOST:
            pid = int(record.get("pid", -1))
            recycled = bool(record.get("start")) and _process_start(pid) != record.get("start")
            if not pid_alive(pid) or recycled:
                return True
        return self._filesystem_now() - touched > self.ttl_s

    def _break_stale(self) -> None:
        guard = self.path.with_name(self.path.name + ".break")
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            with contextlib.suppress(FileNotFoundError):  # a breaker that died: its guard expires
                if self._filesystem_now() - guard.stat().st_mtime > 60:
                    guard.unlink(missing_ok=True)
            return
        os.close(fd)
        try:
            if self.is_stale():  # re-checked under the guard: nobody took it in between
                self.path.unlink(missing_ok=True)
        finally:
            guard.unlink(missing_ok=True)

    def acquire(self, timeout: float | None = None, poll_interval: float = 0.05) -> LeaseLock:
        timeout = self.timeout if timeout is None else timeout
        with self._guard:
            if self._count:
                self._count += 1
                return self
            self.path.parent.mkdir(parents=True, exist_ok=True)
            deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
            wait = poll_interval
            while not self._try_create():
                if self.is_stale():
                    self._break_stale()
                    continue
                if deadline is not None and time.monotonic() >= deadline:
                    holder = self.holder() or {}
                    raise LockTimeout(f"{self.path} is held by pid {holder.get('pid', '?')} on "
                                      f"{holder.get('host', '?')}; wait for it, or delete the file if that job is gone")
                time.sleep(wait if deadline is None else max(0.0, min(wait, deadline - time.monotonic())))
                wait = min(wait * 2, 2.0)
            self._count = 1
            _RENEWER.add(self)
            return self

    def renew(self) -> None:
        """Touch the lock file while it is ours (called by the renewer thread)."""
        with self._guard:
            if self._count and (self.holder() or {}).get("token") == self._token:
                with contextlib.suppress(OSError):
                    os.utime(self.path)

    def release(self, force: bool = False) -> None:
        with self._guard:
            if not self._count:
                return
            self._count = 0 if force else self._count - 1
            if self._count:
                return
            _RENEWER.discard(self)
            if (self.holder() or {}).get("token") == self._token:
                self.path.unlink(missing_ok=True)

    def __enter__(self) -> LeaseLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def pid_alive(pid: int) -> bool:
    """Whether process `pid` on this host is running (a zombie, finished but not reaped, is not)."""
    if pid <= 0:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        pass  # no /proc (or the process is gone): ask the kernel
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Entry:
    """One cache entry: a directory named by the content hash of `key_dict`."""

    def __init__(self, root: Path, kind: str, key_dict: Mapping[str, Any]):
        self.kind, self.key_dict = kind, dict(key_dict)
        self.key = content_hash(self.key_dict)
        self.path = root / kind / self.key
        self._checked = False
        self._lock: LeaseLock | None = None

    def __repr__(self) -> str:
        return f"Entry({self.kind}/{self.key})"

    def lock(self, timeout: float = -1) -> LeaseLock:
        """Inter-process, inter-host lease lock for producing this entry (held while training it).

        One lock object per entry, so nested use within a process is re-entrant.
        """
        if self._lock is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = LeaseLock(str(self.path) + ".lock", timeout=timeout)
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

    def record_training(self, segment: str, start: int, end: int, resumed_from: int | None) -> None:
        """Append one line to the cache's training ledger (`<root>/trainings.jsonl`): which entry's
        segment this process trains, from where. It is what shows that no work was done twice when
        several processes or cluster jobs share the cache (a resumed segment says where it resumed)."""
        record = {"entry": f"{self.kind}/{self.key}", "segment": segment, "start": start, "end": end,
                  "resumed_from": resumed_from, "host": _HOST, "pid": os.getpid(), "time": round(time.time(), 3)}
        ledger = self.path.parent.parent / TRAINING_LEDGER
        with open(ledger, "a") as f:  # one short O_APPEND write per segment: lines do not interleave
            f.write(json.dumps(record, sort_keys=True) + "\n")

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
            except LockTimeout:
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

    def trainings(self) -> list[dict]:
        """The training ledger: one record per training segment started on this cache."""
        path = self.root / TRAINING_LEDGER
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def entries(self, kind: str) -> list[Path]:
        base = self.root / kind
        return sorted(p for p in base.iterdir() if p.is_dir()) if base.exists() else []
