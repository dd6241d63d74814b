"""End to end: the claims plugin on a shortened smoke recipe writes a valid, complete report."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, cli_env
from test_plan import LEVELS, REPLICATES, REWINDS, SETTINGS, _ctx, assert_cache_holds_exactly_the_plan

from lth_checks import plan as P
from lth_checks.report import validate_results

# The options of test_plan._ctx (6 levels so that claim 4 measures), so that this one tiny run also
# checks the plan against what the run creates.
SHORT = ["--levels", str(LEVELS), "--replicates", str(REPLICATES), *[a for k in REWINDS for a in ("--rewind", str(k))],
         *[a for s in SETTINGS for a in ("--set", s)]]


def _run_claims(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pytest", str(REPO_ROOT / "claims"), "-q", "-p", "no:cacheprovider",
           "--cache-dir", str(tmp_path / "cache"), "--report-dir", str(tmp_path / "reports"), *SHORT, *extra]
    return subprocess.run(cmd, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=600)


@pytest.mark.slow(minutes=1.5)
def test_claims_plugin_end_to_end(tmp_path: Path):
    plan = P.claims_plan(_ctx(tmp_path / "cache"))
    proc = _run_claims(tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode in (0, 1), out  # 1 = some claim FAILed: a result, not a crash
    assert_cache_holds_exactly_the_plan(plan, tmp_path / "cache", out)
    assert "lth-checks verdicts" in out
    run_dir = (tmp_path / "reports" / "latest").resolve()
    results = json.loads((run_dir / "results.json").read_text())
    assert validate_results(results) == []
    claims = {o["claim"] for o in results["outcomes"]}
    assert claims == {"1", "2", "3a", "3b", "3c", "3d", "4"}
    for o in results["outcomes"]:
        assert o["verdict"] in ("PASS", "FAIL", "INCONCLUSIVE")
        assert o["thresholds"] and o["config_hashes"]
    # terminal categories agree with the report: FAIL fails the test, INCONCLUSIVE is its own category
    n_fail = sum(o["verdict"] == "FAIL" for o in results["outcomes"])
    n_inc = sum(o["verdict"] == "INCONCLUSIVE" for o in results["outcomes"])
    assert (proc.returncode == 1) == (n_fail > 0)
    if n_inc:
        assert re.search(rf"{n_inc} inconclusive", out), out
    html = (run_dir / "report.html").read_text()
    figures = re.findall(r'href="(figures/[^"]+\.png)"', html)
    assert figures and all((run_dir / f).exists() for f in figures)

    # the run's evidence re-decides to the same verdicts without cache or weights (issue 9)
    from lth_checks.archive import report_from_evidence

    assert (run_dir / "evidence.json.gz").stat().st_size < 2_000_000
    redone = report_from_evidence(run_dir / "evidence.json.gz", tmp_path / "from-evidence")
    again_doc = json.loads((redone / "results.json").read_text())
    assert [(o["claim"], o["verdict"], o["summary"]) for o in again_doc["outcomes"]] == \
        [(o["claim"], o["verdict"], o["summary"]) for o in results["outcomes"]]

    # a second run is served from the cache (cache-only mode would fail if anything were missing)
    again = _run_claims(tmp_path, "--cache-only")
    assert again.returncode == proc.returncode, again.stdout + again.stderr
    rerun = json.loads((tmp_path / "reports" / "latest" / "results.json").read_text())
    assert [o["verdict"] for o in rerun["outcomes"]] == [o["verdict"] for o in results["outcomes"]]


def _collect(tmp_path: Path, *options: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pytest", str(REPO_ROOT / "claims"), "--collect-only", "-q", "-p", "no:cacheprovider",
           "--cache-dir", str(tmp_path / "cache"), "--report-dir", str(tmp_path / "reports"), *options]
    return subprocess.run(cmd, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)


def test_set_is_checked_against_the_requested_rewinds(tmp_path: Path):
    """--set train.iterations=12 is checked against rewinds 0 and 4 as asked, not the small recipe's default 500."""
    short = ["--scale", "small", "--set", "train.iterations=12", "--set", "train.milestones=6,9"]
    accepted = _collect(tmp_path, *short, "--rewind", "0", "--rewind", "4")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert "small-k4" in accepted.stdout and "small-k500" not in accepted.stdout
    too_late = _collect(tmp_path, *short, "--rewind", "0", "--rewind", "12")
    assert too_late.returncode != 0
    assert "rewind_iteration must be in [0, 12), got 12" in too_late.stderr, too_late.stderr
