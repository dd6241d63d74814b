"""Shared fixtures for the core tests: a tiny IMP configuration and a cache in a temporary folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lth_checks.config import IMPConfig, override
from lth_checks.recipes import recipe_config
from lth_checks.store import Store

# The suite runs with `pytest -n 2` on small CPU machines: one intra-op thread per worker avoids
# oversubscription (tiny matmuls with several OpenMP threads per process get many times slower).
torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]

# A few seconds of CPU in all: 60 iterations per level, rewind to iteration 5, levels 0..2.
TINY_SETTINGS = ("train.iterations=60", "train.milestones=30,45")
TINY_REWIND = 5


def tiny_imp_config(levels: int = 2, rewind_iteration: int = TINY_REWIND, extra: tuple[str, ...] = ()) -> IMPConfig:
    """The smoke recipe shortened to 60 iterations (milestones 30 and 45)."""
    return override(recipe_config("smoke", levels=levels, rewind_iteration=rewind_iteration),
                    [*TINY_SETTINGS, *extra])


@pytest.fixture
def tiny_config() -> IMPConfig:
    return tiny_imp_config()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """An empty experiment cache under the test's temporary folder."""
    return Store(tmp_path / "cache")


def cli_env() -> dict[str, str]:
    """Environment for `python -m lth_checks.cli` subprocesses: one thread, no inherited cache dir."""
    env = dict(os.environ)
    env.pop("LTH_CHECKS_CACHE_DIR", None)
    env["OMP_NUM_THREADS"] = "1"
    env["MKL_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "lth_checks.cli", *args]


def run_cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the command line in a fresh interpreter and capture its output."""
    return subprocess.run(cli_command(*args), cwd=cwd, env=cli_env(), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def tiny_experiment(tiny_config: IMPConfig, store: Store):
    """An Experiment of the tiny configuration in a fresh cache (levels trained on demand)."""
    from lth_checks.imp import Experiment

    return Experiment(tiny_config, store=store, device="cpu")


def _minutes(item: pytest.Item) -> float:
    marker = item.get_closest_marker("slow")
    return float(marker.kwargs.get("minutes", 1.0)) if marker else 0.0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Place the minutes-long tests (marked `slow`, longest first) so that each xdist worker starts one.

    Under `-n 2 --dist worksteal` (CI and the README) each worker is sent one contiguous share of this
    list and an idle worker steals from the *tail* of another's queue: the slow tests go, alternately,
    to the head of each share. (The default `load` scheduler sends contiguous chunks of about an eighth
    of the suite, so all slow tests landed on one worker and ran one after the other: ~17 minutes.)
    Every worker computes the same order, as xdist requires.
    """
    slow = sorted((i for i in items if i.get_closest_marker("slow")), key=_minutes, reverse=True)
    rest = [i for i in items if not i.get_closest_marker("slow")]
    workers = int(getattr(config, "workerinput", {}).get("workercount", 1))
    if workers < 2:
        items[:] = slow + rest
        return
    ordered, remaining = [], len(items)
    for w in range(workers):  # the shares worksteal sends: len(pending) // workers still to serve
        share = remaining // (workers - w)
        head = slow[w::workers]
        take = max(0, share - len(head))
        ordered += head + rest[:take]
        rest, remaining = rest[take:], remaining - share
    items[:] = ordered + rest
