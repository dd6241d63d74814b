"""`lth-checks report --compare`: what changed between two runs, read from their results.json (seconds, no training)."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
from scipy import stats

from lth_checks.cli import main
from lth_checks.report import compare as C

REPO_ROOT = Path(__file__).resolve().parents[1]
SMOKE = REPO_ROOT / "reports" / "20261127-132501-smoke"
CPU = REPO_ROOT / "reports" / "20261127-134947-cpu"


@pytest.fixture(scope="module")
def smoke_doc() -> dict:
    return json.loads((SMOKE / "results.json").read_text(encoding="utf-8"))


def write_run(root: Path, name: str, doc: dict) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps(doc), encoding="utf-8")
    return run


def outcome(doc: dict, claim: str) -> dict:
    return next(o for o in doc["outcomes"] if o["claim"] == claim)


def altered(doc: dict) -> dict:
    """A second run of the smoke report: newer torch, 3 replicates, claim 2 now FAIL, claim 3d's IMP excess moved."""
    d = copy.deepcopy(doc)
    d["meta"]["torch_version"] = "2.14.0+cpu"
    d["meta"]["options"]["replicates"] = 3
    o2 = outcome(d, "2")
    o2["verdict"], o2["tau_sensitivity"] = "FAIL", {"1": "FAIL", "2": "FAIL", "3": "PASS"}
    o2["config_hashes"] = ["f" * 64]
    imp = outcome(d, "3d")["effect"]["imp_excess_pp"]
    for k in ("mean", "lo", "hi"):
        imp[k] += 5.0  # far beyond its +-0.9 pp interval
    one = outcome(d, "3d")["effect"]["oneshot_excess_pp"]
    for k in ("mean", "lo", "hi"):
        one[k] += 0.1  # well inside its interval
    outcome(d, "3d")["summary"] = "moved"
    return d


def test_a_run_compared_with_itself_changes_nothing(smoke_doc: dict):
    cmp = C.compare(smoke_doc, smoke_doc, "a", "b")
    assert cmp["meta_changed"] == [] and cmp["recipe_note"] is None
    assert not any(o["verdict_changed"] or o["scalars_changed"] for o in cmp["outcomes"])
    assert all(o["same_experiments"] for o in cmp["outcomes"])
    numbers = [n for o in cmp["outcomes"] for n in o["numbers"] + o["rows"]]
    assert len(numbers) > 20 and all(n["call"] == C.WITHIN and n["difference"] == 0 for n in numbers)
    assert "0 of" in C.render_text(cmp).splitlines()[-1]


def test_changed_verdict_number_and_settings_are_reported(smoke_doc: dict, tmp_path: Path, capsys):
    write_run(tmp_path, "run-a", smoke_doc)
    write_run(tmp_path, "run-b", altered(smoke_doc))
    assert main(["report", "--compare", "run-a", "run-b", "--report-dir", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    verdict_line = next(ln for ln in lines if ln.strip().startswith("2 "))
    assert "PASS (1:P 2:P 3:P)" in verdict_line and "FAIL (1:F 2:F 3:P)" in verdict_line and "CHANGED" in verdict_line
    assert not any("CHANGED" in ln for ln in lines if ln.strip().startswith(("1 ", "3d ")))
    torch_line = next(ln for ln in lines if ln.strip().startswith("torch_version"))
    assert "2.13.0+cpu" in torch_line and "2.14.0+cpu" in torch_line
    assert any(ln.strip().startswith("options.replicates") and ln.rstrip().endswith("3") for ln in lines)
    imp = next(ln for ln in lines if ln.strip().startswith("imp_excess_pp"))
    assert imp.rstrip().endswith(C.OUTSIDE) and "+5" in imp
    assert next(ln for ln in lines if ln.strip().startswith("oneshot_excess_pp")).rstrip().endswith(C.WITHIN)
    assert "claim 2: PASS -> FAIL" in text and "claim 3d: INCONCLUSIVE -> INCONCLUSIVE  (same experiments" in text

    folder = tmp_path / "compare-run-a-vs-run-b"
    assert f"written: {folder}/compare.md" in text
    doc = json.loads((folder / "compare.json").read_text(encoding="utf-8"))
    assert [o["claim"] for o in doc["outcomes"] if o["verdict_changed"]] == ["2"]
    assert {m["key"] for m in doc["meta_changed"]} == {"torch_version", "options.replicates"}
    md = (folder / "compare.md").read_text(encoding="utf-8")
    assert "| 2 | " in md and "**yes**" in md and "- B: moved" in md
    assert "| `imp_excess_pp` | 0.139 [-0.833, 0.972] | 5.14 [4.17, 5.97] |" in md


def test_the_difference_interval_resolves_what_overlapping_intervals_hide():
    # Bootstrap intervals (se given): [-1.96, 1.96] and [1.04, 4.96] overlap, yet B - A = 3 +- 2.77.
    a = {"mean": 0.0, "lo": -1.96, "hi": 1.96, "se": 1.0}
    b = {"mean": 3.0, "lo": 1.04, "hi": 4.96, "se": 1.0}
    res = C.compare_intervals(a, b)
    assert res["call"] == C.OUTSIDE and res["lo"] == pytest.approx(3 - 1.959964 * 2 ** 0.5)
    assert C.compare_intervals(a, {**b, "mean": 2.0})["call"] == C.WITHIN
    # Student-t intervals over replicates (std, n): the call agrees with Welch's t-test at 5%.
    for mean_b, std_b in ((1.0, 0.5), (2.5, 0.5), (2.5, 3.0), (4.0, 1.0)):
        ta = {"mean": 0.0, "lo": -1.0, "hi": 1.0, "std": 0.8, "n": 3}
        tb = {"mean": mean_b, "lo": mean_b - 1, "hi": mean_b + 1, "std": std_b, "n": 5}
        p = stats.ttest_ind_from_stats(0.0, 0.8, 3, mean_b, std_b, 5, equal_var=False).pvalue
        assert (C.compare_intervals(ta, tb)["call"] == C.OUTSIDE) == (p < 0.05), (mean_b, std_b, p)
    # No standard error: disjoint intervals or not.
    assert C.compare_intervals({"mean": 0, "lo": -1, "hi": 1}, {"mean": 3, "lo": 2, "hi": 4})["call"] == C.OUTSIDE
    assert C.compare_intervals({"mean": 0, "lo": -1, "hi": 1}, {"mean": 2, "lo": 0.5, "hi": 4})["call"] == C.WITHIN


@pytest.mark.parametrize("case", ["missing", "no_results", "not_json", "schema", "claims"])
def test_bad_input_is_one_clear_line(smoke_doc: dict, tmp_path: Path, capsys, case: str):
    good = write_run(tmp_path, "good", smoke_doc)
    other = tmp_path / "other"
    expected = {"missing": "other' (looked for", "no_results": "has no results.json",
                "not_json": "is not readable JSON", "schema": "$.outcomes[0].verdict: 'PASSED' is not one of",
                "claims": "only in A none, only in B 3c, 3d"}[case]
    if case == "no_results":
        other.mkdir()
    elif case == "not_json":
        other.mkdir()
        (other / "results.json").write_text("{", encoding="utf-8")
    elif case == "schema":
        bad = copy.deepcopy(smoke_doc)
        bad["outcomes"][0]["verdict"] = "PASSED"
        write_run(tmp_path, "other", bad)
    elif case == "claims":
        fewer = copy.deepcopy(smoke_doc)
        fewer["outcomes"] = [o for o in fewer["outcomes"] if o["claim"] not in ("3c", "3d")]
        write_run(tmp_path, "other", fewer)
        good, other = other, good  # A lacks 3c and 3d
    assert main(["report", "--compare", str(good), str(other), "--report-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lth-checks: error:") and "\n" not in err and expected in err, err
    assert not list(tmp_path.glob("compare-*"))


def test_latest_and_run_ids_resolve_under_the_report_dir(smoke_doc: dict, tmp_path: Path):
    write_run(tmp_path, "20260101-000000-smoke", smoke_doc)
    os.symlink("20260101-000000-smoke", tmp_path / "latest")
    (run, doc) = C.load_run("latest", tmp_path)
    assert run.name == "20260101-000000-smoke" and doc == smoke_doc
    assert C.load_run("20260101-000000-smoke", tmp_path)[0] == tmp_path / "20260101-000000-smoke"


def test_committed_smoke_and_cpu_reports(tmp_path: Path, capsys):
    """The two committed reports: different recipes, paired by claim, and said so."""
    assert main(["report", "--compare", str(SMOKE), str(CPU), "--report-dir", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "different recipes (smoke in A, cpu in B)" in text
    changed = [ln.split()[0] for ln in text.splitlines() if ln.rstrip().endswith("CHANGED")]
    assert changed == ["2", "3b"]  # claim 2 PASS -> INCONCLUSIVE, claim 3b FAIL -> INCONCLUSIVE
    assert "unchanged: torch_version 2.13.0+cpu, device cpu" in text
    assert "only in B: SGD-noise barrier (pp) at rewind 0" in text  # the cpu scale has a premise, smoke none
    assert (tmp_path / "compare-20261127-132501-smoke-vs-20261127-134947-cpu" / "compare.md").is_file()
