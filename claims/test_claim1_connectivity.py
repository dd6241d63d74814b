"""Claim 1: at higher sparsities, successive IMP levels are linearly connected iff the next is matching."""

from lth_checks.claim import get_claim
from lth_checks.pruning import is_nested, round_half_up


def test_imp_protocol(lth, recipe, rewind):
    """The lineages the claims stand on follow the protocol: exact 20% steps, nested masks, zeros held."""
    for exp in lth.lineages(recipe, rewind):
        results = exp.run()
        p = exp.config.prune.fraction
        excluded, ranked = exp.excluded, exp.ranked_names
        expected_alive = sum(exp.mask(0)[n].numel() for n in ranked)
        for level in range(1, len(results)):
            mask, previous = exp.mask(level), exp.mask(level - 1)
            assert is_nested(mask, previous), f"mask of level {level} is not inside level {level - 1}"
            expected_alive -= round_half_up(p * expected_alive)
            assert sum(int(mask[n].sum()) for n in ranked) == expected_alive, f"wrong prune count at level {level}"
            assert all(bool(mask[n].all()) for n in excluded), f"an excluded layer was pruned at level {level}"
            solution = exp.solution(level)
            for name, m in mask.items():
                assert not solution[name][~m].any(), f"pruned weights of {name} moved at level {level}"


def test_claim1_barrier_iff_matching(lth, recipe, conclude):
    conclude(get_claim("1").run(lth, recipe))
