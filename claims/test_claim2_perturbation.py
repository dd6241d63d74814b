"""Claim 2: SGD from a late rewind point is robust to perturbations as large as r_L."""

from lth_checks import evidence


def test_claim2_robust_to_perturbations(lth, recipe, conclude):
    conclude(evidence.claim2(lth, recipe))
