"""Paired evidence: packed bits, the shared-resample bootstrap, and the cached per-example correctness."""

from __future__ import annotations

import numpy as np
import pytest

from lth_checks import stats
from lth_checks.archive import decode, encode


def test_pack_roundtrip_and_archive_encoding():
    rng = np.random.default_rng(0)
    x = rng.random((3, 11, 361)) < 0.1
    assert np.array_equal(stats.unpack(stats.pack(x), 361), x)
    ev = {"a": [x, {"b": x[0, 0]}], "n": 3, "f": np.arange(3.0)}
    back = decode(encode(ev))
    assert np.array_equal(back["a"][0], x) and np.array_equal(back["a"][1]["b"], x[0, 0]) and back["f"] == [0, 1, 2]


def test_paired_difference_cancels_shared_difficulty():
    """Two networks wrong on the same 30 hard images differ by 0 with a zero-width interval; the unpaired
    spread of each error (about +-1.8 pp at n = 360) does not enter."""
    wrong = np.zeros((2, 360), dtype=bool)
    wrong[:, :30] = True
    d = stats.difference(wrong, wrong.copy())
    assert d.mean == 0 and d.lo == 0 and d.hi == 0
    e = stats.error(wrong)
    assert e.mean == pytest.approx(100 * 30 / 360) and e.hi - e.lo > 2.0


def test_paired_interval_covers_and_decides():
    rng = np.random.default_rng(1)
    n = 2000
    a = rng.random((2, n)) < 0.05
    b = a.copy()
    b[:, rng.choice(n, 60, replace=False)] = True  # b about 3 pp worse
    d = stats.difference(b, a)
    assert d.lo > 0 and d.below(0.5) is False and d.below(10.0) is True
    assert d.below(d.mean) is None
    assert not d.seeds_resampled and d.n_seeds == 2


def test_barrier_interval_matches_the_path_definition():
    rng = np.random.default_rng(2)
    ends = rng.random((3, 1, 500)) < 0.05
    mid = ends[:, 0] | (rng.random((3, 500)) < 0.06)
    path = np.concatenate([ends, mid[:, None], ends], axis=1)  # (seeds, 3 points, n)
    b = stats.path_barrier(path, [0.0, 0.5, 1.0])
    direct = [100 * (p[1].mean() - 0.5 * (p[0].mean() + p[2].mean())) for p in path]
    assert b.mean == pytest.approx(np.mean(direct)) and b.seeds_resampled and b.lo <= b.mean <= b.hi


def test_underpowered_note_scales_with_the_interval():
    iv = stats.Interval(1.0, -1.0, 3.0, 1.0, 360, 2, False, (1.0, 1.0))
    note = stats.underpowered_note(iv, 0.5, "x")
    assert note and "5,760 test examples" in note  # (2 / 0.5)^2 * 360
    assert stats.underpowered_note(iv, 5.0, "x") is None
