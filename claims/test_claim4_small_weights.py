"""Claim 4: retraining exists to create new small weights, keeping the next projection short."""

from lth_checks import evidence


def test_claim4_retraining_creates_small_weights(lth, recipe, conclude):
    conclude(evidence.claim4(lth, recipe))
