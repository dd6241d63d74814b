"""Claim 2 with `ScalePlan.perturb_early_rewinds=False` (the cpu scale): perturbations for the late
rewind only, SGD-noise twins for every rewind; the rule, tables and figure work on such evidence."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from lth_checks import evidence as EV
from lth_checks.archive import decode, read_archive
from lth_checks.claim import decide, get_claim
from lth_checks.evidence import ClaimContext
from lth_checks.paper import claim2_perturbation as C2

RECORDED = Path(__file__).parent / "data" / "smoke_evidence.json.gz"


@pytest.fixture
def late_only(monkeypatch):
    monkeypatch.setitem(EV.PLANS, "smoke", replace(EV.PLANS["smoke"], perturb_early_rewinds=False))
    return ClaimContext(scale="smoke", device="cpu", cache_dir="/nonexistent-lth-cache")


def test_branches_perturb_the_late_rewind_only(late_only: ClaimContext):
    kinds = {}
    for rewind in late_only.rewinds_for("smoke"):
        specs = C2.branch_specs(late_only, late_only.experiment("smoke", rewind, 0))
        kinds[rewind] = sorted({s.kind for s in specs})
    late = late_only.late_rewind("smoke")
    assert kinds[late] == ["perturb", "sgd_noise"] and kinds[0] == ["sgd_noise"]
    assert any("only the late rewind" in c for c in get_claim("2").choices(late_only))
    # the planner follows the claim: no perturbation jobs for k = 0
    from lth_checks import plan as P

    plan = P.claims_plan(late_only)
    perturbs = [j for j in plan.jobs.values() if j.what == "perturb"]
    late_keys = {late_only.experiment("smoke", late, seed).key for seed in range(late_only.n_replicates())}
    assert perturbs and {j.lineage for j in perturbs} == late_keys


def test_rule_and_figure_on_evidence_without_early_perturbations():
    doc = read_archive(RECORDED)
    ev = next(decode(o["evidence"]) for o in doc["outcomes"] if o.get("claim") == "2" and o.get("evidence"))
    full = decide(ev)[0]
    for rw in ev["rewinds"]:
        if rw["rewind"] != ev["late_rewind"]:
            for lv in rw["levels"]:
                lv["perturb"] = {}
    verdict, _, measured = decide(ev)
    # the rule reads the late rewind's perturbations only: the same verdict and counts
    assert verdict.verdict == full.verdict and verdict.effect["determined"] == full.effect["determined"]
    early = [r for r in measured["rows"] if r["rewind"] != ev["late_rewind"]]
    assert early and {r["kind"] for r in early} == {"sgd_noise", "real_pair"}
    outcome = {"recipe": "smoke", "measured": measured, "effect": verdict.effect}
    fig = C2.fig_barrier_vs_c({}, outcome)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any("(late)" in t for t in labels) and not any(t == "perturbed, rewind k = 0" for t in labels)
    note = C2.tables({}, outcome, measured)[0].note
    assert "k = 0: SGD noise only, not perturbed at this scale" in note
