"""Cache store: atomic writes, checksums, corrupt and foreign entries, safetensors round trip, locks."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT

from lth_checks.config import SCHEMA_VERSION, content_hash
from lth_checks.errors import CacheError
from lth_checks.pruning import prune
from lth_checks.store import (
    ENV_CACHE_DIR,
    LeaseLock,
    LockTimeout,
    Store,
    atomic_write_bytes,
    atomic_write_json,
    default_cache_dir,
)

KEY = {"model": "mlp", "seed": 0, "hidden": [8, 4]}


def tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(3, 4, generator=g),
        "mask": torch.rand(3, 4, generator=g) < 0.5,
        "step": torch.tensor(7, dtype=torch.long),
        "half": torch.randn(5, generator=g).to(torch.bfloat16),
        "empty": torch.zeros(0, 2),
        "noncontig": torch.randn(4, 3, generator=g).t(),
    }


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp"))


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(ENV_CACHE_DIR, raising=False)
    assert default_cache_dir() == Path(".lth-cache")
    monkeypatch.setenv(ENV_CACHE_DIR, str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    assert default_cache_dir(tmp_path / "x") == tmp_path / "x"


def test_atomic_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    atomic_write_bytes(tmp_path / "sub" / "a.bin", b"one")
    atomic_write_bytes(tmp_path / "sub" / "a.bin", b"two")
    atomic_write_json(tmp_path / "sub" / "b.json", {"x": [1, 2.5], "y": None})
    assert (tmp_path / "sub" / "a.bin").read_bytes() == b"two"
    assert json.loads((tmp_path / "sub" / "b.json").read_text()) == {"x": [1, 2.5], "y": None}
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["a.bin", "b.json"]


def test_failed_atomic_write_keeps_the_old_file_and_removes_the_temporary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "c.json"
    atomic_write_json(target, {"old": True})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"old": True}
    assert leftovers(tmp_path) == []

    class Boom(Exception):
        pass

    def failing_replace(src, dst):
        raise Boom()

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(Boom):
        atomic_write_bytes(target, b"new")
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"old": True}
    assert leftovers(tmp_path) == []


def test_entry_layout_and_config_record(store: Store) -> None:
    entry = store.entry("imp", KEY)
    assert entry.key == content_hash(KEY)
    assert entry.path == store.root / "imp" / entry.key
    assert not entry.path.exists()  # nothing is written until something is stored
    entry.write_json("metrics.json", {"a": 1})
    record = json.loads((entry.path / "config.json").read_text())
    assert record["config"] == KEY and record["key"] == entry.key and record["schema"] == SCHEMA_VERSION
    assert record["kind"] == "imp"
    assert store.entries("imp") == [entry.path]
    assert store.entries("other") == []
    assert entry.read_json("metrics.json") == {"a": 1}
    assert entry.has_json("metrics.json") and not entry.has_json("nothing.json")


def test_safetensors_round_trip_including_bool_masks(store: Store) -> None:
    entry = store.entry("imp", KEY)
    original = tensors()
    entry.write_tensors("state", original, metadata={"iteration": "12"})
    assert entry.has_tensors("state")
    back, meta = entry.read_tensors("state")
    assert meta == {"iteration": "12"}
    assert back.keys() == original.keys()
    for k, v in original.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
        assert torch.equal(back[k], v), k
    assert back["mask"].dtype == torch.bool
    assert leftovers(store.root) == []
    # A second Store on the same folder (another process) sees the same data.
    again, _ = Store(store.root).entry("imp", KEY).read_tensors("state")
    assert torch.equal(again["w"], original["w"])


def test_masks_made_by_prune_round_trip(store: Store) -> None:
    """prune() returns views of one flat tensor; each must be stored as its own mask."""
    g = torch.Generator().manual_seed(1)
    weights = {"a.weight": torch.randn(4, 3, generator=g), "b.weight": torch.randn(5, generator=g)}
    mask = prune(weights, {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}, 0.4)
    entry = store.entry("imp", KEY)
    entry.write_tensors("level01_mask", mask)
    back, _ = Store(store.root).entry("imp", KEY).read_tensors("level01_mask")
    assert back.keys() == mask.keys()
    assert all(back[n].dtype == torch.bool and torch.equal(back[n], mask[n]) for n in mask)


def test_overwrite_and_delete(store: Store) -> None:
    entry = store.entry("imp", KEY)
    entry.write_tensors("ckpt", {"a": torch.ones(2)})
    entry.write_tensors("ckpt", {"a": torch.zeros(3)})
    assert torch.equal(entry.read_tensors("ckpt")[0]["a"], torch.zeros(3))
    entry.delete("ckpt")
    assert not entry.has_tensors("ckpt")
    assert not list(entry.path.glob("ckpt*"))
    entry.delete("ckpt")  # deleting twice is fine
    with pytest.raises(CacheError, match="no finished ckpt"):
        entry.read_tensors("ckpt")


def test_tensor_file_without_checksum_is_not_finished(store: Store) -> None:
    entry = store.entry("imp", KEY)
    entry.write_tensors("state", {"a": torch.ones(2)})
    (entry.path / "state.sha256").unlink()  # as if killed between the two renames
    assert not entry.has_tensors("state")
    with pytest.raises(CacheError):
        entry.read_tensors("state")


@pytest.mark.parametrize("tamper", ["flip_byte", "truncate", "garbage"])
def test_tampered_tensor_file_is_reported_as_corrupt(store: Store, tamper: str) -> None:
    entry = store.entry("imp", KEY)
    entry.write_tensors("state", tensors())
    path = entry.path / "state.safetensors"
    data = bytearray(path.read_bytes())
    if tamper == "flip_byte":
        data[-3] ^= 0xFF  # a tensor value changes; the file still parses
    elif tamper == "truncate":
        data = data[: len(data) // 2]
    else:
        data = bytearray(b"not a safetensors file at all")
    path.write_bytes(bytes(data))
    assert entry.has_tensors("state")
    fresh = Store(store.root).entry("imp", KEY)  # no state kept in memory
    with pytest.raises(CacheError) as excinfo:
        fresh.read_tensors("state")
    message = str(excinfo.value)
    assert "corrupt" in message and str(entry.path) in message and "state.safetensors" in message
    assert "\n" not in message


def test_unreadable_file_with_matching_checksum_is_reported_as_corrupt(store: Store) -> None:
    entry = store.entry("imp", KEY)
    entry.write_tensors("state", {"a": torch.ones(2)})
    path = entry.path / "state.safetensors"
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    (entry.path / "state.sha256").write_text(hashlib.sha256(path.read_bytes()).hexdigest())
    with pytest.raises(CacheError, match="corrupt"):
        entry.read_tensors("state")


@pytest.mark.parametrize("content", [b"{\"test_error\": 0.1", b"", b"\xff\xfe not utf-8", b"nan nan"])
def test_invalid_json_is_a_cache_error(store: Store, content: bytes) -> None:
    entry = store.entry("imp", KEY)
    entry.write_json("level00_metrics.json", {"test_error": 0.1})
    (entry.path / "level00_metrics.json").write_bytes(content)
    with pytest.raises(CacheError) as excinfo:
        Store(store.root).entry("imp", KEY).read_json("level00_metrics.json")
    message = str(excinfo.value)
    assert "level00_metrics.json" in message and str(entry.path) in message and "\n" not in message


def test_missing_json_is_a_cache_error(store: Store) -> None:
    with pytest.raises(CacheError, match="no nothing.json"):
        store.entry("imp", KEY).read_json("nothing.json")


def write_foreign_config(store: Store, record: object) -> Path:
    entry = store.entry("imp", KEY)
    entry.write_json("level00_metrics.json", {"test_error": 0.1})
    entry.write_tensors("state", {"a": torch.ones(2)})
    (entry.path / "config.json").write_text(json.dumps(record))
    return entry.path


@pytest.mark.parametrize("record", [
    {"kind": "imp", "key": "x", "schema": SCHEMA_VERSION, "config": {**KEY, "seed": 1}},
    {"kind": "imp", "key": "x", "schema": SCHEMA_VERSION + 1, "config": KEY},
    ["not", "a", "record"],
])
def test_config_of_another_configuration_is_a_cache_error(store: Store, record: object) -> None:
    path = write_foreign_config(store, record)
    for use in ("write_json", "write_tensors", "read_json", "read_tensors"):
        entry = Store(store.root).entry("imp", KEY)
        with pytest.raises(CacheError) as excinfo:
            if use == "write_json":
                entry.write_json("other.json", {})
            elif use == "write_tensors":
                entry.write_tensors("other", {"a": torch.ones(1)})
            elif use == "read_json":
                entry.read_json("level00_metrics.json")
            else:
                entry.read_tensors("state")
        assert str(path) in str(excinfo.value), use
        assert "\n" not in str(excinfo.value)


def test_matching_config_is_accepted_again(store: Store) -> None:
    store.entry("imp", KEY).write_json("a.json", 1)
    other = Store(store.root).entry("imp", dict(reversed(list(KEY.items()))))  # same content, other order
    other.write_json("b.json", 2)
    assert other.read_json("a.json") == 1


def test_lock_is_reentrant_within_an_entry_and_exclusive_across_entries(store: Store) -> None:
    entry = store.entry("imp", KEY)
    lock = entry.lock()
    assert entry.lock() is lock
    with entry.lock():
        with entry.lock():  # nested use (e.g. pretraining inside a level) does not deadlock
            assert lock.is_locked
            # Another holder (another Entry, as another process would have) cannot take it.
            other = Store(store.root).entry("imp", KEY).lock(timeout=0.05)
            with pytest.raises(LockTimeout):
                other.acquire()
        assert lock.is_locked
    assert not lock.is_locked
    other = Store(store.root).entry("imp", KEY).lock(timeout=0.05)
    with other:
        assert other.is_locked


def test_lock_blocks_another_thread_until_released(store: Store) -> None:
    entry = store.entry("imp", KEY)
    order: list[str] = []
    entry.lock().acquire()

    def contender() -> None:
        with Store(store.root).entry("imp", KEY).lock():
            order.append("contender")

    t = threading.Thread(target=contender)
    t.start()
    t.join(0.2)
    order.append("holder releases")
    entry.lock().release()
    t.join(10)
    assert order == ["holder releases", "contender"]


# --- lease locks (shared filesystems, dead holders) -----------------------------------------


def _write_lock_file(path: Path, **record) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": "vm", "pid": 1, "start": "", "token": "x", **record}))


def test_a_lock_left_by_a_dead_process_on_this_host_is_broken(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path = tmp_path / "e.lock"
    _write_lock_file(path, host=socket.gethostname(), pid=int(dead.stdout))
    lock = LeaseLock(path, timeout=5)
    assert lock.is_stale()
    with lock:
        assert lock.holder()["pid"] == os.getpid()
    assert not path.exists()


def test_a_lock_of_another_host_is_kept_while_renewed_and_broken_once_its_lease_expires(tmp_path: Path) -> None:
    path = tmp_path / "e.lock"
    _write_lock_file(path, host="some-other-node", pid=12345)
    lock = LeaseLock(path, timeout=0.2, ttl_s=30)
    assert not lock.is_stale()
    with pytest.raises(LockTimeout, match="some-other-node"):
        lock.acquire()
    old = time.time() - 31
    os.utime(path, (old, old))  # the other node stopped renewing 31 s ago
    assert lock.is_stale()
    with lock:
        assert lock.holder()["host"] != "some-other-node"


def test_a_held_lease_is_renewed(tmp_path: Path) -> None:
    lock = LeaseLock(tmp_path / "e.lock", ttl_s=6)  # renewed every second
    with lock:
        old = time.time() - 5
        os.utime(lock.path, (old, old))
        time.sleep(2.5)
        assert time.time() - lock.path.stat().st_mtime < 3
        assert not LeaseLock(lock.path, ttl_s=6).is_stale()


def test_a_killed_holder_process_leaves_a_lock_the_next_process_takes(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    path = tmp_path / "e.lock"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from lth_checks.store import LeaseLock\n"
        f"LeaseLock({str(path)!r}).acquire(); print('held', flush=True); time.sleep(600)")],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockTimeout):
            LeaseLock(path, timeout=0.3).acquire()
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        with LeaseLock(path, timeout=5) as lock:
            assert lock.holder()["pid"] == os.getpid()
    finally:
        holder.kill()
