"""Claim 1: at higher sparsities, successive IMP levels are linearly connected iff the next is matching."""

import pytest

from lth_checks import evidence
from lth_checks.pruning import is_nested


def test_imp_protocol(lth, recipe, rewind):
    """The lineages the claims stand on follow the protocol: exact 20% steps, nested masks, zeros held."""
    for exp in lth.lineages(recipe, rewind):
        results = exp.run()
        p = exp.config.prune.fraction
        for level in range(1, len(results)):
            mask, previous = exp.mask(level), exp.mask(level - 1)
            assert is_nested(mask, previous), f"mask of level {level} is not inside level {level - 1}"
            solution = exp.solution(level)
            for name, m in mask.items():
                assert not solution[name][~m].any(), f"pruned weights of {name} moved at level {level}"
        assert results[-1].density == pytest.approx((1 - p) ** (len(results) - 1), abs=1e-3)


def test_claim1_barrier_iff_matching(lth, recipe, conclude):
    conclude(evidence.claim1(lth, recipe))
