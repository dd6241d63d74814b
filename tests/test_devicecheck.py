"""The prepared GPU check (lth-checks device-check), rehearsed on the CPU as CI does."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import REPO_ROOT, cli_env

from lth_checks.devicecheck import CIFAR_FILES, MAX_FILES, Step, _inline_figures, _run_step, join_cifar_parts


@pytest.mark.slow(minutes=2)
def test_rehearsal_runs_every_step_and_brings_back_at_most_eight_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "gpu_check.sh"), str(out), "--rehearse",
                           "--budget", "400"], cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= MAX_FILES and all(p.is_file() for p in out.iterdir()), files
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rehearsal"] is True
    assert [s["status"] for s in summary["steps"]][1:] in (["ok", "ok"], ["ok", "failed (exit 1)"]), summary
    assert {"bench.json", "results.json", "report.md", "report.html", "device-check.log"} <= set(files)
    html = (out / "report.html").read_text()
    assert 'src="figures/' not in html and 'href="figures/' not in html  # figures travel inside the file
    assert "data:image/png;base64," in html
    assert "REHEARSAL" in (out / "device-check.log").read_text()
    results = json.loads((out / "results.json").read_text())
    assert {o["verdict"] for o in results["outcomes"]} <= {"PASS", "FAIL", "INCONCLUSIVE"}


def test_a_step_past_its_budget_is_stopped_and_later_steps_still_run(tmp_path: Path) -> None:
    lines: list[str] = []
    slow = Step("slow", ["python", "-c", "import time; print('started', flush=True); time.sleep(60)"], budget_s=5)
    _run_step(slow, lines.append, cli_env())
    assert slow.status == "timed out" and slow.wall_s < 40 and "started" in slow.output_tail
    none_left = Step("late", ["python", "-c", "print(1)"], budget_s=1)
    _run_step(none_left, lines.append, cli_env())
    assert none_left.status == "skipped: no time left"


def test_cifar_batches_carried_in_parts_are_joined(tmp_path: Path) -> None:
    parts = [tmp_path / "c1", tmp_path / "c2", tmp_path / "c3"]
    for part, names in zip(parts, (CIFAR_FILES[:2], CIFAR_FILES[2:4], CIFAR_FILES[4:])):
        part.mkdir()
        for name in names:
            (part / name).write_bytes(name.encode())
    root = join_cifar_parts(parts, tmp_path / "joined")
    folder = root / "cifar-10-batches-py"
    assert sorted(p.name for p in folder.iterdir()) == sorted(CIFAR_FILES)
    assert (folder / "test_batch").read_bytes() == b"test_batch"


def test_figures_are_inlined(tmp_path: Path) -> None:
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "a.png").write_bytes(b"\x89PNG")
    html = _inline_figures('<a href="figures/a.png"><img src="figures/a.png"></a><img src="figures/missing.png">',
                           tmp_path)
    assert html.count("data:image/png;base64,iVBORw==") == 2 and 'src="figures/missing.png"' in html
