"""The claims of "Unmasking the Lottery Ticket Hypothesis" (Paul et al., ICLR 2023), one module per claim.

Each module holds all of its claim: what it needs (planner jobs), what it measures (evidence), its
verdict rule, its report tables and its figures, behind `lth_checks.claim.Claim`; importing this
package registers them, in the paper's order. Their tests are `claims/test_claim*.py`.
"""

from . import claim1_connectivity, claim2_perturbation, claim3_flatness, claim4_small_weights  # noqa: F401
