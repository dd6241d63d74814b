"""Claim 2: SGD from a late rewind point is robust to perturbations as large as r_L."""

from lth_checks.claim import get_claim


def test_claim2_robust_to_perturbations(lth, recipe, conclude):
    conclude(get_claim("2").run(lth, recipe))
