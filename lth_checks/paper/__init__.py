"""The claims of "Unmasking the Lottery Ticket Hypothesis" (Paul et al., ICLR 2023), one module per claim.

Each module holds all of its claim: what it needs (planner jobs), what it measures (evidence), its
verdict rule, its report tables and its figures, behind `lth_checks.claim.Claim`, and registers it
when imported. Importing this package imports every module in it in the order of their names (the
paper's order; names starting with _ are shared helpers), so a new claim here is one new module.
Their tests are in `claims/`.
"""

import importlib
import pkgutil

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")):
    importlib.import_module(f"{__name__}.{_module}")
