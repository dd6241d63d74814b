"""Cluster submission (issue 11): the plan as jobs, nothing trained twice, a real Slurm where there is one."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import REPO_ROOT, cli_env

from lth_checks.store import LeaseLock, Store

# A tiny claims run: smoke recipe, 60 iterations, levels 0-2, rewinds 0 and 5, 2 replicates.
TINY = ["--levels", "2", "--rewind", "0", "--rewind", "5", "--set", "train.iterations=60",
        "--set", "train.milestones=30,45"]


def _cli(*args: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lth_checks.cli", *args], cwd=cwd, env=cli_env(),
                          capture_output=True, text=True, timeout=timeout)


def _claims(cache: Path, reports: Path, *extra: str) -> tuple[int, dict]:
    proc = subprocess.run([sys.executable, "-m", "pytest", str(REPO_ROOT / "claims"), "-q", "-p", "no:cacheprovider",
                           "--cache-dir", str(cache), "--report-dir", str(reports), *TINY, *extra],
                          cwd=reports.parent, env=cli_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((reports / "latest" / "results.json").read_text())
    return proc.returncode, {(o["claim"], o["recipe"]): o["verdict"] for o in results["outcomes"]}


def _plan_trainings(cache: Path, cwd: Path) -> set[str]:
    """The training entries (kind/key) the plan says this run needs, shared ones left out."""
    proc = _cli("plan", *TINY, "--cache-dir", str(cache), "--json", str(cwd / "plan.json"), cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    jobs = json.loads((cwd / "plan.json").read_text())["jobs"]
    training = {"pretrain", "level", "sgd_noise", "perturb", "oneshot"}
    return {j["id"] for j in jobs if j["what"] in training and not j["shared_with"]}


def _trained_segments(cache: Path) -> Counter:
    """How often each (entry, segment) was started from its beginning (resumptions not counted)."""
    return Counter((r["entry"], r["segment"]) for r in Store(cache).trainings() if r["resumed_from"] is None)


@pytest.mark.slow(minutes=1)
def test_local_submission_trains_exactly_the_plan_and_nothing_twice(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    proc = _cli("submit", "--executor", "local", *TINY, "--cache-dir", str(cache), "--wait", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "failed" not in proc.stdout.splitlines()[-1], proc.stdout
    trained = _trained_segments(cache)
    assert trained and max(trained.values()) == 1, [k for k, n in trained.items() if n > 1]
    # every training the plan lists was trained, and nothing else (levels: one segment per level)
    planned = _plan_trainings(cache, tmp_path)
    done_entries = {e for e, _ in trained}
    assert {j.rsplit("/", 1)[0] if j.startswith("imp/") else j for j in planned} == done_entries
    levels = {(e, s) for e, s in trained if e.startswith("imp/")}
    assert len(levels) == sum(j.startswith("imp/") for j in planned)
    # submitting again finds everything done and submits nothing
    again = _cli("submit", "--executor", "local", *TINY, "--cache-dir", str(cache), cwd=tmp_path)
    assert again.returncode == 0 and "submitted" not in again.stderr, again.stderr
    assert _trained_segments(cache) == trained
    # the claims then need nothing more than the cache
    code, _ = _claims(cache, tmp_path / "reports", "--cache-only")
    assert code in (0, 1)


def test_status_of_a_fresh_cache_lists_every_unit_as_not_submitted(tmp_path: Path) -> None:
    proc = _cli("submit", "--executor", "local", *TINY, "--cache-dir", str(tmp_path / "c"), "--status", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "8 not submitted"  # 2 rewinds x 2 seeds x (train, branches)


def test_unknown_job_is_one_line(tmp_path: Path) -> None:
    proc = _cli("work", *TINY, "--cache-dir", str(tmp_path / "c"), "imp/nosuch/level00", cwd=tmp_path)
    assert proc.returncode == 2 and "\n" not in proc.stderr.strip() and "plan --list" in proc.stderr


# --- a real Slurm (`.ci/slurm-up.sh` starts one on this machine; CI runs it as root) -------------------


def _slurm_reason() -> str | None:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no Slurm here: run `bash .ci/slurm-up.sh` as root (installs slurm-wlm and munge, starts one node)"
    state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    if state.returncode != 0 or not any(s in state.stdout for s in ("idle", "mixed", "alloc")):
        return f"Slurm is installed but no node is up ({(state.stderr or state.stdout).strip()[:200]}): " \
               "run `bash .ci/slurm-up.sh` as root"
    return None


def _wait_for(predicate, timeout: float, what: str, poll: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll)


def _job_pids(job_id: str) -> set[int]:
    """Processes of a running Slurm job on this (the only) node: `scontrol listpids`."""
    out = subprocess.run(["scontrol", "listpids", job_id], capture_output=True, text=True).stdout
    return {int(line.split()[0]) for line in out.splitlines()[1:] if line.split() and line.split()[0].isdigit()}


@pytest.mark.slurm
@pytest.mark.slow(minutes=3.5)
def test_real_slurm_run_equals_a_local_run_and_survives_a_cancelled_job(tmp_path: Path) -> None:
    reason = _slurm_reason()
    if reason:
        pytest.skip(reason)
    cache = tmp_path / "cache"
    submit = ["submit", "--executor", "slurm", *TINY, "--cache-dir", str(cache), "--gpus-per-job", "0",
              "--cpus-per-job", "1", "--timeout-min", "30"]
    proc = _cli(*submit, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ledger = json.loads(next((cache / "cluster").glob("smoke-*.json")).read_text())
    branch_units = {name: u for name, u in ledger["units"].items() if name.startswith("branches:")}
    assert len(branch_units) == 4 and all(u["job_id"] for u in branch_units.values())
    # cancel one branch unit (the one with the most jobs) while it holds a lease on a cache entry, i.e. in
    # the middle of producing it (it runs after its lineage's training: afterok); a tiny unit is done a few
    # seconds after its interpreter starts, so the test watches for the lease rather than sleeping
    victim = max(branch_units.values(), key=lambda u: u["jobs"])["job_id"]

    def squeue(*args: str) -> str:
        return subprocess.run(["squeue", "-h", *args], capture_output=True, text=True).stdout.strip()

    _wait_for(lambda: squeue("-j", victim, "-o", "%T") == "RUNNING", 600, f"job {victim} to run", poll=0.2)

    def victim_holds_a_lease() -> bool:
        pids = _job_pids(victim)
        return any((LeaseLock(p).holder() or {}).get("pid") in pids for p in cache.glob("*/*.lock"))

    _wait_for(victim_holds_a_lease, 120, f"job {victim} to take a lease", poll=0.1)
    # SIGKILL to the job's processes, as a node failure or the OOM killer would: scancel sends SIGTERM,
    # which submitit's jobs bypass until Slurm's KillWait (30 s) runs out, long enough for a tiny unit to
    # finish its work (the job then counts as done, and nothing was interrupted)
    for pid in _job_pids(victim):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _wait_for(lambda: not squeue("-j", victim), 120, f"job {victim} to end")
    # what the killed job was producing: its lease files stay behind with a dead holder
    in_progress = {f"{p.parent.name}/{p.name[:-len('.lock')]}" for p in cache.glob("*/*.lock")
                   if LeaseLock(p).holder()}
    _wait_for(lambda: not squeue("-u", "root"), 900, "the other jobs to finish")
    status = _cli(*submit, "--status", cwd=tmp_path).stdout
    assert "failed" in status, status  # the cancelled unit: the scheduler is done, the cache is not
    again = _cli(*submit, "--wait", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.strip().splitlines()[-1] == "8 done", again.stdout
    # nothing finished was trained twice: only segments the cancelled job had in progress started again
    twice = {k for k, n in _trained_segments(cache).items() if n > 1}
    assert {e for e, _ in twice} <= in_progress, (twice, in_progress)
    # the claims from the cluster's cache decide exactly as an ordinary local run
    code, cluster_verdicts = _claims(cache, tmp_path / "reports-cluster", "--cache-only")
    local_code, local_verdicts = _claims(tmp_path / "cache-local", tmp_path / "reports-local")
    assert (code, cluster_verdicts) == (local_code, local_verdicts)
