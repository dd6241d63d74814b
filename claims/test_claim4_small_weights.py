"""Claim 4: retraining exists to create new small weights, keeping the next projection short."""

from lth_checks.claim import get_claim


def test_claim4_retraining_creates_small_weights(lth, recipe, conclude):
    conclude(get_claim("4").run(lth, recipe))
