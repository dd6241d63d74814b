"""Reference values the sources give for the paper's setting (CIFAR-10 ResNet-20), shown beside ours.

From CLAIMS.md: (LMC) Frankle et al., ICML 2020: dense test error about 8.3%; rewinding to iteration
500 or later stays matching down to about 13% of the weights remaining, rewinding to 0 does not at
high sparsity. (paper) the authors' chain of 20% cuts without retraining from 80% density: 91.8% ->
91.0% -> 89.1% -> 86.7% test accuracy, read (as thresholds.CHAIN_STEPS and CHAIN_ERROR_MARGIN_PP read
it: four cuts, 5 pp lost) as the accuracy after each of four cuts, at 64%, 51%, 41% and 33% alive.
Shown for the paper's recipe as "reference", and for the project's shortened ResNet-20 recipe ("small")
labelled as the paper's setting; not for other models, where the numbers would mean nothing.
"""

from __future__ import annotations

PAPER_RECIPE = "cifar10_resnet20"
SAME_MODEL = {"small"}  # CIFAR-10 ResNet-20 on a shortened schedule (ours)

DENSE_ERROR_PP = 8.3
LATE_REWIND = 500  # rewinds from here on stay matching down to MATCHING_DOWN_TO
MATCHING_DOWN_TO = 0.13
CHAIN_START_DENSITY = 0.8
CHAIN_ACCURACY_PCT = (91.8, 91.0, 89.1, 86.7)  # after cut 1, 2, 3, 4 of the 80% solution
LMC = "(LMC) Frankle et al., ICML 2020, CIFAR-10 ResNet-20 (CLAIMS.md)"
AUTHORS_CHAIN = "(paper) the authors' ResNet-20 chain of 20% cuts without retraining (CLAIMS.md)"


def label(recipe: str | None) -> str | None:
    """Column header for the reference values of this recipe, or None where none apply."""
    if recipe == PAPER_RECIPE:
        return "reference"
    if recipe in SAME_MODEL:
        return "reference: the paper's setting (160 epochs), not this recipe"
    return None


def chain_error_pp(density: float | None) -> float | None:
    """The authors' chain's test error (%) at this alive fraction, where their chain has a point."""
    if density is None or density <= 0:
        return None
    for i, acc in enumerate(CHAIN_ACCURACY_PCT):
        if abs(density / CHAIN_START_DENSITY ** (i + 2) - 1) < 1e-3:
            return round(100.0 - acc, 1)
    return None
