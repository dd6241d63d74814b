"""The sources' reference values stand beside ours only for the paper's ResNet-20 setting, labelled."""

from __future__ import annotations

from test_report import claim1_outcome, claim4_outcome

from lth_checks.claim import get_claim
from lth_checks.report import Table


def _tables(claim: str, outcome: dict, recipe: str) -> list[Table]:
    outcome["recipe"] = recipe
    return [b for b in get_claim(claim).tables({}, outcome, outcome["measured"]) if isinstance(b, Table)]


def test_claim1_reference_only_for_resnet20_and_labelled() -> None:
    assert not any("reference" in " ".join(t.columns) for t in _tables("1", claim1_outcome(), "smoke"))
    (ref,) = [t for t in _tables("1", claim1_outcome(), "cifar10_resnet20") if "reference" in t.columns]
    assert ref.rows[0][:3] == ["dense test error (%), k = 0", "8", "≈ 8.3"]
    assert ref.rows[1][1:3] == ["64%", "not matching at high sparsity"]
    (small,) = [t for t in _tables("1", claim1_outcome(), "small") if "ours" in t.columns]
    assert "not this recipe" in small.columns[2]


def test_claim4_authors_chain_beside_ours_at_equal_density() -> None:
    (chain,) = [t for t in _tables("4", claim4_outcome(), "cifar10_resnet20") if t.columns[0] == "step"]
    assert chain.columns[-1] == "error projected (%), reference"
    assert [r[-1] for r in chain.rows] == ["8.2", "9", "10.9", "13.3"]  # 100 - 91.8, 91.0, 89.1, 86.7
    (plain,) = [t for t in _tables("4", claim4_outcome(), "smoke") if t.columns[0] == "step"]
    assert "reference" not in " ".join(plain.columns)
