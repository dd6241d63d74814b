"""Claim 3: flatness at the end of training limits the fraction that can be pruned per level."""

import pytest

from lth_checks.claim import get_claim


@pytest.mark.parametrize("part", ["a", "b", "c", "d"],
                         ids=["sharpness-vs-pmax", "theory-vs-measured", "magnitude-flatter", "oneshot-fails"])
def test_claim3_flatness_limits_prune_fraction(lth, recipe, part, conclude):
    conclude(get_claim(f"3{part}").run(lth, recipe))
