"""The README's "Adding a claim" example runs as written under `pytest claims/` (issue 12).

The two code blocks of that section (a claim module and its test file) are written into an empty
project beside the plugin's conftest, and `pytest claims/` runs them at smoke scale on one level: the
toy claim (dense test error below 50%) must PASS, and with its threshold at 0.1% it must FAIL with exit
status 1, so the example, the registry and the plugin are checked end to end.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _example_files() -> dict[str, str]:
    """{path: source} of the README section's python blocks whose first line names their file."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Adding a claim"):]
    section = section[:section.index("\n## ", 3)]
    files = {}
    for block in re.findall(r"```python\n(.*?)```", section, flags=re.S):
        first, _, body = block.partition("\n")
        if first.startswith("# ") and first.endswith(".py"):
            files[first[2:].strip()] = body
    return files


def _claims_run(project: Path, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(project), str(ROOT)]), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "pytest", "claims/", "-q", "-p", "no:cacheprovider", "-p",
                           "no:xdist", "--levels", "1", "--cache-dir", str(cache), "--report-dir",
                           str(project / "reports")], cwd=project, env=env, capture_output=True, text=True,
                          timeout=600)


def _project(tmp: Path, files: dict[str, str]) -> Path:
    for rel, body in files.items():
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_text(body)
    (tmp / "claims" / "conftest.py").write_text((ROOT / "claims" / "conftest.py").read_text())
    return tmp


def test_readme_toy_claim_passes_and_can_fail(tmp_path: Path) -> None:
    files = _example_files()
    assert set(files) == {"my_claims/dense_error.py", "claims/test_dense_error.py"}
    cache = tmp_path / "cache"
    run = _claims_run(_project(tmp_path / "holds", files), cache)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert re.search(r"claim 5 +smoke +PASS +dense test error", out), out
    report = next((tmp_path / "holds" / "reports").glob("*/report.md")).read_text()
    assert "the dense network's test error is below 50%" in report and "MAX_ERROR_PP" in report

    strict = dict(files)
    strict["my_claims/dense_error.py"] = files["my_claims/dense_error.py"].replace("Threshold(50.0,", "Threshold(0.1,")
    assert strict != files
    run = _claims_run(_project(tmp_path / "strict", strict), cache)  # the same cached lineages
    assert run.returncode == 1, run.stdout + run.stderr
    assert re.search(r"claim 5 +smoke +FAIL", run.stdout), run.stdout
