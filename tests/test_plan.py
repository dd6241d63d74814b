"""The plan of a claims run: its counts and keys against what a tiny `pytest claims/` run creates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli

from lth_checks import plan as P
from lth_checks.errors import ConfigError
from lth_checks.evidence import ClaimContext

# The smoke recipe shortened to 60 iterations; 6 levels so that claim 4 measures (it needs >= 6).
LEVELS, REWINDS, REPLICATES = 6, (0, 5), 2
SETTINGS = ("train.iterations=60", "train.milestones=30,45")


def _ctx(cache: Path) -> ClaimContext:
    return ClaimContext(scale="smoke", rewinds=REWINDS, replicates=REPLICATES, levels=LEVELS, overrides=SETTINGS,
                        device="cpu", cache_dir=str(cache))


def _cache_contents(cache: Path) -> dict[str, set[str]]:
    """Finished trainings and measurements, named as the plan names them."""
    out: dict[str, set[str]] = {"level": set(), "pretrain": set(), "branch": set(), "measure": set()}
    for d in (cache / "imp").glob("*"):
        out["level"] |= {f"imp/{d.name}/{m.name[:7]}" for m in d.glob("level*_metrics.json")}
        out["pretrain"] |= {f"imp/{d.name}/rewind"} if (d / "rewind.safetensors").exists() else set()
    out["branch"] = {f"branch/{d.name}" for d in (cache / "branch").glob("*") if (d / "metrics.json").exists()}
    out["measure"] = {f"measure/{d.name}" for d in (cache / "measure").glob("*")
                      if (d / "result.json").exists() or (d / "correct.sha256").exists()}
    return out


def assert_cache_holds_exactly_the_plan(plan: P.Plan, cache: Path, run_output: str) -> None:
    """What a tiny claims run (`_ctx`'s options) trained and measured is exactly `plan`, built before it.

    Called by tests/test_claims_plugin.py's end-to-end test, whose run has these options, so that
    one tiny run serves both checks.
    """
    assert f"plan for {plan.description}" in run_output  # the run printed the same plan's totals at its start
    made = _cache_contents(cache)
    ids = {what: {j.id for j in plan.jobs.values() if j.what == what} for what in P.TRAINING_KINDS}
    assert made["level"] == ids["level"] and len(made["level"]) == 2 * REPLICATES * (LEVELS + 1)
    assert made["pretrain"] == ids["pretrain"] and len(made["pretrain"]) == REPLICATES

    # Branches and measurements: exactly the planned ones (claim 3d's target is known from counts),
    # except that a branch which is IMP's level L+1 is read from the level, not trained
    branches = {j.id for j in plan.jobs.values() if j.what in ("sgd_noise", "perturb", "oneshot")}
    shared = {j.id for j in plan.jobs.values() if j.shared_with}
    assert made["branch"] == branches - shared
    measures = {j.id for j in plan.jobs.values() if j.id.startswith("measure/")}
    assert made["measure"] == measures

    # after the run the plan finds everything with a known key in the cache
    again = P.claims_plan(_ctx(cache))
    todo = [j for j in again.jobs.values() if not j.cached]
    assert todo == []


def test_small_plan_fits_eight_minutes_on_the_assumed_h100():
    """Issue 10: the whole small-scale claims run, cold cache, start-up included, in <= 8 minutes."""
    plan = P.claims_plan(ClaimContext(scale="small", device="cpu", cache_dir="/nonexistent-lth-cache"))
    t = P.totals(plan, P.ASSUMED_H100)
    assert t.seconds_cold + t.startup_s <= 8 * 60
    counts = {r["what"]: r["count"] for r in t.rows}
    # the regime the issue asks to keep: both rewinds, >= 2 replicates, every claim's experiments
    assert counts["IMP pretraining to k"] == 2 and counts["IMP levels"] == 2 * 2 * 9
    assert counts["Hessians"] == 8 and counts["no-retraining chains"] == 2
    assert counts["one-shot = IMP level L+1 (shared)"] == 8


def test_replica_factor_interpolates_and_extrapolates():
    tp = P.ASSUMED_H100
    assert tp.replica_factor(1) == 1.0 and tp.replica_factor(8) == pytest.approx(3.0)
    assert tp.replica_factor(4) == pytest.approx(1 + 3 * 2 / 7)
    assert tp.replica_factor(16) == pytest.approx(3.0 + 8 * 2 / 7)


def test_groups_follow_the_code(tmp_path: Path):
    """Replicates of a level train as one group; claim 2's 5 branches per level go in groups of 16."""
    plan = P.claims_plan(ClaimContext(scale="small", device="cpu", cache_dir=str(tmp_path)))
    groups: dict[str, int] = {}
    for j in plan.jobs.values():
        if j.group:
            groups[j.group] = groups.get(j.group, 0) + 1
    assert all(n == 2 for g, n in groups.items() if g.startswith("level "))
    claim2 = sorted(n for g, n in groups.items() if g.startswith("claim 2") and "k=500 seed 0" in g)
    assert claim2 == [4, 16]  # 4 branch levels x (1 SGD-noise twin + 4 perturbations) = 20


def test_throughput_from_a_bench_json(tmp_path: Path):
    doc = {"device": {"type": "cuda", "name": "Fake GPU"}, "torch_version": "x", "quick": False,
           "settings": {"path_points": 11, "path_examples": 10_000, "path_bn_examples": 2048},
           "figures": {"train": {"ours_fp32": {"s_per_step": 0.002},
                                 "ours_fp32_channels_last_fused": {"s_per_step": 0.001}},
                       "replicas": [{"R": 8, "s_per_step": 0.003, "default": True},
                                    {"R": 8, "s_per_step": 0.009, "default": False}],
                       "barrier_grid": {"points": 11, "evaluate_path": {"s": 2.0}, "evaluate_path_batched": {"s": 1.0}},
                       "hvp": {"examples": 4096, "forward_over_reverse": {"hvps_per_s": 20.0},
                               "reverse_over_reverse": {"hvps_per_s": 10.0}}}}
    (tmp_path / "gpu.json").write_text(json.dumps(doc))
    assert P.find_bench(tmp_path, "cuda") == tmp_path / "gpu.json" and P.find_bench(tmp_path, "cpu") is None
    tp = P.throughput_for("cuda", folder=tmp_path)
    assert tp.s_per_iteration == 0.001 and tp.replica_factor(8) == pytest.approx(3.0)
    assert tp.s_per_eval_image == pytest.approx(1.0 / (11 * 22_048))
    assert tp.s_per_hvp_image == pytest.approx(1 / 20 / 4096)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ConfigError, match="not a `lth-checks bench` JSON"):
        P.throughput_from_bench(tmp_path / "bad.json")


def test_cpu_scale_is_sized_by_the_measured_cpu_throughput_within_an_hour():
    """Issue 13: `pytest claims/ --scale cpu -n 2` from a cold cache in at most 60 minutes on 2 cores.
    On a CPU the plan uses the cpu recipe's measured speed, not the H100 assumption, and splits the
    work over the xdist workers (calibrated on cold runs of 40.6 and 51.4 minutes, see `MEASURED_CPU_RESNET8`)."""
    plan = P.claims_plan(ClaimContext(scale="cpu", device="cpu", cache_dir="/nonexistent-lth-cache"))
    tp = P.throughput_for("cpu", folder="/nonexistent-bench", models=plan.models)
    assert tp is P.MEASURED_CPU_RESNET8
    t = P.totals(plan, tp)
    assert (t.seconds_cold / 2 + t.startup_s) / 60 <= 60
    text = P.format_totals(plan, tp, workers=2)
    assert "on 2 workers" in text and "indicative only" not in text
    # a plan with another model on the CPU falls back to the stated GPU assumption, and says so
    smoke = P.claims_plan(ClaimContext(scale="smoke", device="cpu", cache_dir="/nonexistent-lth-cache"))
    tp = P.throughput_for("cpu", folder="/nonexistent-bench", models=smoke.models)
    assert tp is P.ASSUMED_H100 and "indicative only" in P.format_totals(smoke, tp)


def test_plan_command(tmp_path: Path):
    proc = run_cli("plan", "--scale", "small", "--claim", "2", "--json", str(tmp_path / "plan.json"),
                   "--cache-dir", str(tmp_path / "cache"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "estimated device time from a cold cache" in proc.stdout and "assumption" in proc.stdout
    doc = json.loads((tmp_path / "plan.json").read_text())
    assert {j["what"] for j in doc["jobs"]} == {"pretrain", "level", "sgd_noise", "perturb", "path"}
    bad = run_cli("plan", "--scale", "small", "--set", "train.nope=1", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "unknown setting" in bad.stderr
    bad = run_cli("plan", "--scale", "small", "--workers", "0", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--workers 0" in bad.stderr


def test_a_claim_selection_keeps_the_premise_check_that_gates_it():
    """Every claim of a scale with a premise waits on the premise's level-0 twins (5 seeds at cpu scale),
    so `pytest claims/ -k claim2` and `lth-checks plan --claim 2` count them too."""
    full = P.claims_plan(ClaimContext(scale="cpu", device="cpu", cache_dir="/nonexistent-lth-cache"))
    premise = {j.id for j in full.jobs.values() if "premise" in j.claims}
    assert premise and premise <= set(P.select(full, {"2"}).jobs)
    assert P.select(full, set()).jobs == {}


def test_flatness_levels_are_not_measured_where_the_design_cannot_decide_them(tmp_path: Path):
    """The cpu scale branches at two levels: 3a-3c (which compare levels) plan nothing and say why, without
    training; 3d and the other claims keep their jobs. Smoke (4 branch levels) keeps 3a-3c's jobs."""
    from lth_checks.claim import get_claim

    cpu = P.claims_plan(ClaimContext(scale="cpu", device="cpu", cache_dir=str(tmp_path / "cpu")))
    assert not [j for j in cpu.jobs.values() if "3" in j.claims]
    assert [j for j in cpu.jobs.values() if "3d" in j.claims] and [j for j in cpu.jobs.values() if "1" in j.claims]
    smoke = P.claims_plan(ClaimContext(scale="smoke", device="cpu", cache_dir=str(tmp_path / "smoke")))
    assert [j for j in smoke.jobs.values() if "3" in j.claims and j.what == "oneshot"]
    out = get_claim("3a").run(ClaimContext(scale="cpu", device="cpu", cache_dir=str(tmp_path / "cpu")), "cpu")
    assert out["verdict"] == "INCONCLUSIVE"
    assert out["summary"].startswith("by design: this run branches at 2 level(s) [0, 9]")
    assert not (tmp_path / "cpu" / "imp").exists() or not any((tmp_path / "cpu" / "imp").rglob("*.safetensors"))
