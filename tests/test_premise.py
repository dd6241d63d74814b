"""The scales' premise: the paper's regime (unstable at rewind 0, stable at the late rewind).

The real-data tests train the cpu recipe's level 0 and SGD-noise twins (the premise's 5 replicates,
both rewinds: 20 trainings of 936 or 636 iterations, ~14 CPU-minutes; the two rewinds are separate
tests so `-n 2` runs them side by side) and check each SGD-noise barrier's interval (the paired
bootstrap's, hulled with Student-t over the seeds) against tau.
They skip with the reason where CIFAR-10 is absent. The rest checks the premise logic and the
INCONCLUSIVE gate on made-up numbers.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from lth_checks import evidence
from lth_checks import thresholds as T
from lth_checks.evidence import PLANS, ClaimContext, premise_met, premise_summary
from lth_checks.recipes import get_recipe

TAU = float(T.BARRIER_TAU_PP.value)


def real_data_root() -> Path:
    """$LTH_CHECKS_DATA_ROOT, else the shared folder next to the repository (../shared/data)."""
    from_env = os.environ.get("LTH_CHECKS_DATA_ROOT")
    return Path(from_env) if from_env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


def cpu_context(tmp_path: Path) -> ClaimContext:
    root = real_data_root()
    if not (root / "cifar-10-batches-py").is_dir():
        pytest.skip(f"the cpu recipe's premise needs CIFAR-10 at {root / 'cifar-10-batches-py'}: "
                    "set LTH_CHECKS_DATA_ROOT")
    # $LTH_CHECKS_CACHE_DIR when set (fresh in CI; a warm cache re-checks a finished run without training)
    cache = os.environ.get("LTH_CHECKS_CACHE_DIR") or str(tmp_path / "cache")
    return ClaimContext(scale="cpu", device="cpu", data_root=str(root), cache_dir=cache)


@pytest.mark.slow(minutes=8)
def test_cpu_recipe_is_unstable_at_rewind_0(tmp_path: Path) -> None:
    row = evidence.premise_row(cpu_context(tmp_path), "cpu", 0)
    b = row["barrier_pp"]
    assert b["lo"] is not None and b["lo"] > TAU, (
        f"premise not met: SGD-noise barrier at k = 0 is {b['mean']:.2f} pp [{b['lo']}, {b['hi']}] "
        f"(replicates {b['values']}), its interval should lie above tau = {TAU} pp")


@pytest.mark.slow(minutes=6)
def test_cpu_recipe_is_stable_at_the_late_rewind(tmp_path: Path) -> None:
    ctx = cpu_context(tmp_path)
    late = ctx.late_rewind("cpu")
    b = evidence.premise_row(ctx, "cpu", late)["barrier_pp"]
    assert b["hi"] is not None and b["hi"] < TAU, (
        f"premise not met: SGD-noise barrier at k = {late} is {b['mean']:.2f} pp [{b['lo']}, {b['hi']}] "
        f"(replicates {b['values']}), its interval should lie below tau = {TAU} pp")


# ----------------------------------------------------------------------------- logic on made-up numbers

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _wrong_paths(barriers_pp: list[float], n: int = 10_000) -> np.ndarray:
    """(seeds, points, examples) errors of made-up paths: 30% at both ends, `b` pp above the chord at the
    midpoint and b/2 at the quarter points (the first examples are the wrong ones)."""
    out = np.zeros((len(barriers_pp), len(ALPHAS), n), dtype=bool)
    for i, b in enumerate(barriers_pp):
        for j, e in enumerate((30.0, 30.0 + b / 2, 30.0 + b, 30.0 + b / 2, 30.0)):
            out[i, j, :round(e * n / 100)] = True
    return out


def _check(unstable: list[float], stable: list[float], test_examples: int = 10_000) -> dict:
    rows = {"0": {"rewind": 0, "barrier_pp": evidence.barrier_interval_pp(_wrong_paths(unstable, test_examples),
                                                                          ALPHAS)},
            "300": {"rewind": 300, "barrier_pp": evidence.barrier_interval_pp(_wrong_paths(stable, test_examples),
                                                                              ALPHAS)}}
    return {"premise": evidence.REGIME_PREMISE, "unstable_rewind": 0, "stable_rewind": 300, "barriers": rows,
            "method": "made up"}


def test_every_scale_states_its_premise() -> None:
    assert PLANS["smoke"].premise == ""
    for scale in ("cpu", "small", "paper"):
        assert PLANS[scale].premise == "instability at k = 0, stability at the late rewind"
    assert get_recipe("cpu").source == "(ours)" and PLANS["cpu"].recipes == ("cpu",)
    assert PLANS["cpu"].replicates >= 3


def test_barrier_interval_is_the_hull_of_the_paired_bootstrap_and_student_t() -> None:
    b = evidence.barrier_interval_pp(_wrong_paths([10.0, 12.0, 14.0], 1_000), ALPHAS)
    assert b["mean"] == pytest.approx(12.0) and b["resolution_pp"] == pytest.approx(0.1)
    assert b["values"] == pytest.approx([10.0, 12.0, 14.0])
    t_half = 4.302653 * 2.0 / 3 ** 0.5  # t(0.975, 2) * std / sqrt(n): wider than the seed bootstrap here
    assert b["student_t"] == pytest.approx([12.0 - t_half, 12.0 + t_half], abs=1e-4)
    assert b["lo"] == min(b["bootstrap"][0], b["student_t"][0]) and b["hi"] == max(b["bootstrap"][1], b["student_t"][1])
    assert b["lo"] == pytest.approx(12.0 - t_half, abs=1e-4)
    # identical seeds: no spread over seeds, the test set's noise alone is left (bootstrap over examples)
    same = evidence.barrier_interval_pp(_wrong_paths([12.0] * 3, 1_000), ALPHAS)
    assert same["lo"] < 12.0 < same["hi"] and same["hi"] - same["lo"] > 1.0
    single = evidence.barrier_interval_pp(_wrong_paths([10.0], 1_000), ALPHAS)
    assert single["lo"] is None and single["hi"] is None


def test_premise_met_needs_both_intervals_on_their_side_of_tau() -> None:
    assert premise_met(_check([15, 16, 17], [0.1, 0.2, 0.3]), TAU) is True
    assert premise_met(_check([1.0, 1.5, 1.2], [0.1, 0.2, 0.3]), TAU) is False  # stable at k = 0: lr too low
    assert premise_met(_check([15, 16, 17], [3.0, 4.0, 5.0]), TAU) is False  # unstable at the late rewind
    assert premise_met(_check([15, 16, 17], [0.5, 1.0, 3.0]), TAU) is None  # late interval straddles tau
    assert premise_met(_check([5, 12], [0.1, 0.2]), TAU) is None  # t with one degree of freedom: too wide
    assert "k = 0: 16.00 pp [" in premise_summary(_check([15, 16, 17], [0.1, 0.2, 0.3]))


def test_gate_turns_claims_inconclusive_when_the_premise_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = ClaimContext(scale="cpu")
    checks = {"good": _check([15, 16, 17], [0.1, 0.2, 0.3]), "bad": _check([1.0, 1.5, 1.2], [0.1, 0.2, 0.3])}
    monkeypatch.setattr(evidence, "check_premise", lambda ctx, recipe: checks[recipe])
    outcome = {"recipe": "good"}
    assert ctx.premise_gate(outcome) is None and outcome["premise"] == checks["good"]
    assert ctx.premise_gate(outcome, 3.0) is None and len(outcome["choices"]) == 1  # stated once in the report
    assert outcome["choices"][0].startswith("premise of the cpu scale (instability at k = 0")
    outcome = {"recipe": "bad"}
    verdict = ctx.premise_gate(outcome, 2.0)
    assert verdict.verdict == "INCONCLUSIVE" and verdict.summary.startswith("premise not met")
    assert outcome["premise"]["barriers"]["0"]["barrier_pp"]["mean"] == pytest.approx(1.2333, abs=1e-3)
    # smoke states no premise: nothing is trained or checked
    assert ClaimContext(scale="smoke").premise_gate({"recipe": "smoke"}) is None
