"""Verdict rules on planted results where the truth is known."""

from __future__ import annotations

import numpy as np
import pytest

from lth_checks import thresholds as T
from lth_checks import verdicts as V
from lth_checks.verdicts import FAIL, INCONCLUSIVE, PASS


def _pairs(spec: list[tuple[bool, float]], density: float = 0.3) -> list[V.LevelPair]:
    return [V.LevelPair(rewind=0, level=i, next_density=density, matching=m, barrier_pp=b)
            for i, (m, b) in enumerate(spec)]


def test_claim1_agreement_passes():
    pairs = _pairs([(True, 0.1)] * 5 + [(False, 5.0)] * 5)
    v = V.claim1(pairs, tau_pp=2.0, replicates=3)
    assert v.verdict == PASS and v.effect["agreement"] == 1.0


def test_claim1_disagreement_fails():
    pairs = _pairs([(True, 0.1)] * 5 + [(False, 0.2)] * 5)  # non-matching but connected: contradicts "iff"
    assert V.claim1(pairs, tau_pp=2.0, replicates=3).verdict == FAIL


def test_claim1_lopsided_pool_cannot_pass_on_its_larger_class():
    pairs = _pairs([(True, 0.3)] * 10 + [(False, 0.3)])  # 91% raw agreement, but the non-matching pair disagrees
    v = V.claim1(pairs, tau_pp=2.0, replicates=3)
    assert v.verdict == FAIL and v.effect["balanced_agreement"] == 0.5


def test_claim1_paper_scale_needs_three_replicates():
    pairs = _pairs([(True, 0.1)] * 5 + [(False, 5.0)] * 5)
    assert V.claim1(pairs, tau_pp=2.0, replicates=2, required=3).verdict == INCONCLUSIVE
    assert V.claim1(pairs, tau_pp=2.0, replicates=3, required=3).verdict == PASS


def test_claim1_one_class_is_inconclusive():
    pairs = _pairs([(True, 0.1)] * 10)  # e.g. LeNet on MNIST: everything matches
    v = V.claim1(pairs, tau_pp=2.0, replicates=3)
    assert v.verdict == INCONCLUSIVE and "one class" in v.summary


def test_claim1_too_few_replicates_is_inconclusive():
    pairs = _pairs([(True, 0.1)] * 5 + [(False, 5.0)] * 5)
    assert V.claim1(pairs, tau_pp=2.0, replicates=1).verdict == INCONCLUSIVE


def test_claim1_divergence_is_inconclusive():
    assert V.claim1([], tau_pp=2.0, replicates=3, diverged=True).verdict == INCONCLUSIVE


def test_claim1_only_counts_high_sparsity_pairs():
    low = _pairs([(True, 9.0)] * 10, density=0.9)  # disagreeing pairs at low sparsity are ignored
    high = _pairs([(True, 0.1)] * 5 + [(False, 5.0)] * 5, density=0.2)
    assert V.claim1(low + high, tau_pp=2.0, replicates=3).verdict == PASS


def test_claim1_tau_sweep_reports_each_tau():
    pairs = _pairs([(True, 0.1)] * 5 + [(False, 2.5)] * 5)
    sweep = V.tau_sweep(lambda tau: V.claim1(pairs, tau, replicates=3))
    assert sweep == {"1": PASS, "2": PASS, "3": FAIL}


def test_claim2_rules():
    cases = [V.PerturbationCase(level, c, 0.3, True) for level in range(3) for c in (0.5, 1.0)]
    assert V.claim2(cases, [0.1, 0.2], 2.0, replicates=3).verdict == PASS
    broken = [V.PerturbationCase(level, c, 6.0, True) for level in range(3) for c in (0.5, 1.0)]
    assert V.claim2(broken, [0.1], 2.0, replicates=3).verdict == FAIL
    assert V.claim2(cases, [4.0], 2.0, replicates=3).verdict == INCONCLUSIVE  # not even SGD-noise stable
    assert V.claim2([V.PerturbationCase(0, 1.0, 0.1, False)], [], 2.0, replicates=3).verdict == INCONCLUSIVE
    big_c_only = [V.PerturbationCase(0, 4.0, 9.0, True), V.PerturbationCase(0, 1.0, 0.5, True)]
    assert V.claim2(big_c_only, [0.1], 2.0, replicates=3).verdict == PASS  # c > 1 is not part of the claim
    # an instrument that never shows a barrier anywhere cannot tell robustness from insensitivity
    assert V.claim2(cases, [0.1], 2.0, replicates=3, all_barriers_pp=[0.3, 0.1, 1.0]).verdict == INCONCLUSIVE
    assert V.claim2(cases, [0.1], 2.0, replicates=3, all_barriers_pp=[0.3, 0.1, 9.0]).verdict == PASS


def test_p_max_needs_matching_and_connected():
    sweep = [(0.2, True, 0.1), (0.4, True, 0.5), (0.6, True, 3.0), (0.8, False, 0.1)]
    assert V.p_max(sweep, tau_pp=2.0) == 0.4
    assert V.p_max(sweep, tau_pp=3.5) == 0.6
    assert V.p_max([(0.2, False, 0.0)], 2.0) == 0.0


def test_claim3a_rank_correlation():
    sharp = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert V.claim3a(sharp, [0.9, 0.8, 0.6, 0.4, 0.2, 0.2]).verdict == PASS
    assert V.claim3a(sharp, [0.2, 0.2, 0.4, 0.6, 0.8, 0.9]).verdict == FAIL
    assert V.claim3a(sharp, [0.4] * 6).verdict == INCONCLUSIVE
    assert V.claim3a(sharp[:2], [0.4, 0.2]).verdict == INCONCLUSIVE


def test_claim3a_small_samples_use_the_exact_permutation_p_value():
    rho, p = V.spearman_less(np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.8, 0.6, 0.4, 0.2]))
    assert rho == pytest.approx(-1.0) and p == pytest.approx(1 / 24)
    assert V.claim3a([1.0, 2.0, 3.0], [0.8, 0.6, 0.4]).verdict == INCONCLUSIVE  # 1/6 > 0.05: too few levels


def test_claim3c_and_3d():
    assert V.claim3c([0.5, 0.4, 0.6], [1.0, 1.0, 1.0]).verdict == PASS
    assert V.claim3c([2.0, 2.0, 0.5], [1.0, 1.0, 1.0]).verdict == FAIL
    assert V.claim3c([5.0, 5.0, 5.0], [-1.0, -1.0, -1.0]).verdict == FAIL  # a negative curvature must not flip it
    assert V.claim3d(True, False, 0.1).verdict == PASS
    assert V.claim3d(True, True, 0.1).verdict == FAIL
    assert V.claim3d(False, False, 0.1).verdict == INCONCLUSIVE


def test_claim4_rules():
    assert V.claim4(5.0, 0.5, 3.0, 1.1).verdict == PASS
    assert V.claim4(0.2, 0.5, 3.0, 1.1).verdict == FAIL  # chain no worse than IMP
    assert V.claim4(5.0, 0.5, 1.0, 1.1).verdict == FAIL  # projection length grows no faster
    assert V.claim4(1.0, 0.5, 3.0, 1.1).verdict == INCONCLUSIVE  # below the margin


def test_with_replicates_demotes_but_never_promotes():
    assert V.with_replicates(V.Verdict(PASS, "x"), 1).verdict == INCONCLUSIVE
    assert V.with_replicates(V.Verdict(FAIL, "x"), 1).verdict == INCONCLUSIVE
    assert V.with_replicates(V.Verdict(FAIL, "x"), 3).verdict == FAIL


def test_matching_eps_uses_the_floor_and_the_std():
    assert V.matching_eps_pp([8.0])[0] == T.MATCHING_EPS_FLOOR_PP.value
    eps, std = V.matching_eps_pp([8.0, 10.0, 12.0])
    assert std == pytest.approx(2.0) and eps == pytest.approx(2.0)


def test_mean_ci():
    ci = V.mean_ci([1.0, 2.0, 3.0])
    assert ci["mean"] == 2.0 and ci["lo"] < 2.0 < ci["hi"] and ci["n"] == 3
    assert V.mean_ci([4.0])["lo"] is None


def test_every_threshold_names_a_source():
    for name, t in T.ALL.items():
        assert t.source and t.meaning, name
        assert any(tag in t.source for tag in ("(paper)", "(LMC)", "(ours)", "(OpenLTH)", "CLAIMS.md")), name
