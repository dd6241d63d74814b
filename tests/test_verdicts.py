"""Verdict rules (each in its claim's module, lth_checks/paper/) on planted results where the truth is known."""

from __future__ import annotations

import numpy as np
import pytest

from lth_checks import thresholds as T
from lth_checks import verdicts as V
from lth_checks.paper import claim1_connectivity as C1
from lth_checks.paper import claim2_perturbation as C2
from lth_checks.paper import claim3_flatness as C3
from lth_checks.paper import claim4_small_weights as C4
from lth_checks.stats import Interval
from lth_checks.verdicts import FAIL, INCONCLUSIVE, PASS


def iv(mean: float, half: float = 0.3, n: int = 10_000, seeds: int = 2) -> Interval:
    """A planted interval (pp)."""
    return Interval(mean, mean - half, mean + half, half / 2, n, seeds, seeds >= 3, (mean,) * seeds)


EPS = 0.5


def _pairs(spec: list[tuple[float, float]], density: float = 0.3, half: float = 0.3) -> list[C1.LevelPair]:
    """(excess over dense pp, barrier pp) per pair."""
    return [C1.LevelPair(rewind=0, level=i, next_density=density, excess=iv(x, half), eps_pp=EPS,
                        barrier=iv(b, half)) for i, (x, b) in enumerate(spec)]


MATCH, NOT = -0.5, 3.0  # excess over dense: clearly matching / clearly not


def test_claim1_agreement_passes():
    pairs = _pairs([(MATCH, 0.1)] * 5 + [(NOT, 5.0)] * 5)
    v = C1.rule(pairs, tau_pp=2.0, replicates=3)
    assert v.verdict == PASS and v.effect["agreement"] == 1.0 and v.effect["fisher_p_one_sided"] < 0.05


def test_claim1_disagreement_fails():
    pairs = _pairs([(MATCH, 0.1)] * 5 + [(NOT, 0.2)] * 5)  # non-matching but connected: contradicts "iff"
    v = C1.rule(pairs, tau_pp=2.0, replicates=3)
    assert v.verdict == FAIL and v.effect["balanced_agreement"] == 0.5


def test_claim1_undetermined_pairs_do_not_count():
    """Pairs whose error sits within its interval of dense + eps decide nothing (issue 9: the smoke FAIL
    rested on six pairs 0.2-1.2 images above the line)."""
    undetermined = _pairs([(EPS + 0.1, 0.2)] * 6, half=1.0)  # would have been 'non-matching and connected'
    pairs = _pairs([(MATCH, 0.1)] * 5 + [(NOT, 5.0)] * 5) + undetermined
    v = C1.rule(pairs, tau_pp=2.0, replicates=3)
    assert v.verdict == PASS and v.effect["undetermined_matching"] == 6 and v.effect["determined_pairs"] == 10


def test_claim1_needs_three_determined_pairs_per_class_and_says_what_is_underpowered():
    pairs = _pairs([(MATCH, 0.1)] * 5 + [(NOT, 5.0)] * 2 + [(EPS, 2.0)] * 5, half=3.0)
    v = C1.rule(pairs, tau_pp=2.0, replicates=3)
    assert v.verdict == INCONCLUSIVE and "underpowered" in v.summary and "test examples" in v.summary
    assert v.effect["distance_to_thresholds"] and v.effect["resolution_pp"] == pytest.approx(0.01)


def test_claim1_paper_scale_needs_three_replicates():
    pairs = _pairs([(MATCH, 0.1)] * 5 + [(NOT, 5.0)] * 5)
    assert C1.rule(pairs, tau_pp=2.0, replicates=2, required=3).verdict == INCONCLUSIVE
    assert C1.rule(pairs, tau_pp=2.0, replicates=3, required=3).verdict == PASS


def test_claim1_one_class_is_inconclusive():
    v = C1.rule(_pairs([(MATCH, 0.1)] * 10), tau_pp=2.0, replicates=3)  # LeNet on MNIST: everything matches
    assert v.verdict == INCONCLUSIVE and "0 non-matching" in v.summary


def test_claim1_divergence_is_inconclusive():
    assert C1.rule([], tau_pp=2.0, replicates=3, diverged=True).verdict == INCONCLUSIVE


def test_claim1_only_counts_high_sparsity_pairs():
    low = _pairs([(MATCH, 9.0)] * 10, density=0.9)  # disagreeing pairs at low sparsity are ignored
    high = _pairs([(MATCH, 0.1)] * 5 + [(NOT, 5.0)] * 5, density=0.2)
    assert C1.rule(low + high, tau_pp=2.0, replicates=3).verdict == PASS


def test_claim1_tau_sweep_reports_each_tau():
    pairs = _pairs([(MATCH, 0.1)] * 5 + [(NOT, 2.5)] * 5, half=0.2)
    sweep = V.tau_sweep(lambda tau: C1.rule(pairs, tau, replicates=3))
    assert sweep == {"1": PASS, "2": PASS, "3": FAIL}


def _cases(barrier: float, half: float = 0.3, n: int = 3) -> list[C2.PerturbationCase]:
    return [C2.PerturbationCase(level, c, iv(barrier, half), True) for level in range(n) for c in (0.5, 1.0)]


def test_claim2_rules():
    shows = [iv(9.0)]  # the instrument shows a barrier somewhere (k = 0)
    assert C2.rule(_cases(0.3), [iv(0.1)], 2.0, replicates=3, all_barriers=shows).verdict == PASS
    assert C2.rule(_cases(6.0), [iv(0.1)], 2.0, replicates=3, all_barriers=shows).verdict == FAIL
    # not even SGD-noise stable
    assert C2.rule(_cases(0.3), [iv(4.0)], 2.0, replicates=3, all_barriers=shows).verdict == INCONCLUSIVE
    no_matching = [C2.PerturbationCase(0, 1.0, iv(0.1), None)]
    assert C2.rule(no_matching, [], 2.0, replicates=3).verdict == INCONCLUSIVE
    big_c = [C2.PerturbationCase(0, 4.0, iv(9.0), True)] + _cases(0.5)
    assert C2.rule(big_c, [iv(0.1)], 2.0, replicates=3, all_barriers=shows).verdict == PASS  # c > 1 is not the claim
    # an instrument that never establishes a barrier cannot tell robustness from insensitivity
    assert C2.rule(_cases(0.3), [iv(0.1)], 2.0, replicates=3,
                    all_barriers=[iv(0.3), iv(2.1, half=1.0)]).verdict == INCONCLUSIVE
    # undetermined barriers decide nothing
    v = C2.rule(_cases(2.0, half=1.0), [iv(0.1)], 2.0, replicates=3, all_barriers=shows)
    assert v.verdict == INCONCLUSIVE and "0/0 determined" in v.summary
    v = C2.rule(_cases(2.0, half=2.5), [iv(0.1)], 2.0, replicates=3, all_barriers=shows)
    assert v.verdict == INCONCLUSIVE and "underpowered" in v.summary


def test_p_max_requires_smaller_fractions_to_pass_too():
    sweep = [(0.2, True, 0.1), (0.4, True, 0.5), (0.6, True, 3.0), (0.8, True, 0.1)]
    assert C3.p_max(sweep, tau_pp=2.0) == 0.4  # 0.8 passes but 0.6 does not: the limit is 0.4
    assert C3.p_max(sweep, tau_pp=3.5) == 0.8
    assert C3.p_max([(0.2, False, 0.0), (0.4, True, 0.0)], 2.0) == 0.0


def test_claim3a_controls_density_and_fails_only_when_significantly_positive():
    rng = np.random.default_rng(0)
    levels, seeds = 4, 5
    density = np.repeat(0.8 ** np.arange(levels), seeds)
    sharp = rng.normal(size=levels * seeds) + np.repeat(np.arange(levels), seeds)
    grid_noise = 0.01 * rng.normal(size=sharp.size)
    within = sharp - np.repeat(sharp.reshape(levels, seeds).mean(1), seeds)
    assert C3.rule_3a(sharp, 0.5 - 0.2 * within + grid_noise, density).verdict == PASS
    assert C3.rule_3a(sharp, 0.5 + 0.2 * within + grid_noise, density).verdict == FAIL
    # a density trend alone (both fall with density) is not evidence: no within-density relation
    trend = 0.9 - 0.2 * np.repeat(np.arange(levels), seeds) + 0.05 * rng.normal(size=sharp.size)
    confounded = C3.rule_3a(sharp, trend, density)
    assert confounded.effect["raw_spearman_rho"] < -0.5 and confounded.verdict != PASS
    assert C3.rule_3a(sharp, [0.4] * sharp.size, density).verdict == INCONCLUSIVE


def test_claim3a_says_when_the_smallest_reachable_p_value_is_too_large():
    density = np.repeat([1.0, 0.4, 0.2, 0.1], 2)  # smoke: 4 levels x 2 seeds -> 2^4 orderings, p >= 1/16
    v = C3.rule_3a([1, 2, 3, 4, 5, 6, 7, 8], [0.8, 0.6, 0.8, 0.6, 0.8, 0.6, 0.8, 0.6], density)
    assert v.verdict == INCONCLUSIVE and "smallest reachable p-value" in v.summary
    assert v.effect["smallest_reachable_p"] == pytest.approx(1 / 16)


def test_claim3c_counts_levels_not_rows():
    levels = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert C3.rule_3c([0.5] * 10, [1.0] * 10, levels).verdict == PASS  # 5 levels: p = 1/32
    assert C3.rule_3c([2.0] * 10, [1.0] * 10, levels).verdict == FAIL
    assert C3.rule_3c([5.0] * 10, [-1.0] * 10, levels).verdict == FAIL  # a negative curvature must not flip it
    four = C3.rule_3c([0.5] * 8, [1.0] * 8, [0, 0, 1, 1, 2, 2, 3, 3])  # 8 rows but 4 independent levels
    assert four.verdict == INCONCLUSIVE and "smallest reachable p-value" in four.summary


def test_claim3d_needs_determined_calls_and_mcnemar():
    assert C3.rule_3d(iv(0.0), iv(3.0), EPS, (30, 2), 0.13).verdict == PASS
    assert C3.rule_3d(iv(0.0), iv(0.0), EPS, (5, 5), 0.13).verdict == FAIL
    assert C3.rule_3d(iv(2.0), iv(5.0), EPS, (40, 2), 0.13).verdict == INCONCLUSIVE  # IMP not matching
    # IMP's matching call undetermined (issue 9: smoke's "IMP matches" was [-0.7, +1.4] pp)
    v = C3.rule_3d(iv(0.35, 1.05), iv(2.2, 1.0), EPS, (14, 1), 0.086)
    assert v.verdict == INCONCLUSIVE and "underpowered" in v.summary
    assert C3.rule_3d(iv(0.0), iv(3.0), EPS, (3, 2), 0.13).verdict == INCONCLUSIVE  # McNemar not significant


def _lengths(slope: float, seeds: int = 2) -> list[list[float]]:
    wiggle = np.array([0.0, 0.01, -0.01, 0.0])
    return [list(0.1 * np.exp(slope * np.arange(4) + wiggle)) for _ in range(seeds)]


def test_claim4_decides_on_intervals_and_slopes():
    assert C4.rule(iv(5.0), _lengths(0.3), _lengths(0.0)).verdict == PASS
    assert C4.rule(iv(0.0), _lengths(0.3), _lengths(0.0)).verdict == FAIL  # significant deficit vs the margin
    # error as predicted but IMP's projection length grows faster: mixed evidence, not a PASS
    assert C4.rule(iv(5.0), _lengths(0.0), _lengths(0.3)).verdict == INCONCLUSIVE
    assert C4.rule(iv(1.0), _lengths(0.3), _lengths(0.0)).verdict == INCONCLUSIVE  # straddles the margin
    tiny = C4.rule(iv(0.999999, 0.5), _lengths(0.3), _lengths(0.0))  # issue 9: a 1e-9 pp shortfall is no FAIL
    assert tiny.verdict == INCONCLUSIVE
    d = C4.slope_difference(_lengths(0.3), _lengths(0.1))
    assert d["mean"] == pytest.approx(0.2, abs=0.01) and d["lo"] < 0.2 < d["hi"]


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
    two = V.mean_ci([2.22, 2.22])  # issue 9: no 12.7-standard-error or zero-width interval from 2 replicates
    assert two["lo"] is None and two["hi"] is None and two["std"] == 0.0


def test_every_threshold_names_a_source():
    for name, t in T.ALL.items():
        assert t.source and t.meaning, name
        assert any(tag in t.source for tag in ("(paper)", "(LMC)", "(ours)", "(OpenLTH)", "CLAIMS.md")), name
