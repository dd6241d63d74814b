"""Cache store: atomic writes, checksums, corrupt and foreign entries, safetensors round trip, locks."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import filelock
import pytest
import torch

from lth_checks.config import SCHEMA_VERSION, content_hash
from lth_checks.errors import CacheError
from lth_checks.pruning import prune
from lth_checks.store import ENV_CACHE_DIR, Store, atomic_write_bytes, atomic_write_json, default_cache_dir

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
            with pytest.raises(filelock.Timeout):
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
