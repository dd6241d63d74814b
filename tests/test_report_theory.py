"""The report's Claim 3b theory table: d vs d* per grid point, the p* range and resolution."""

from __future__ import annotations

from lth_checks.paper import claim3_flatness


def test_theory_detail_table() -> None:
    row = {"seed": 0, "level": 4, "p_star_random": 0.6, "p_max_random": 0.4,
           "theory_random": {"alive": 1000, "p_star_low": 0.4, "p_star_high": 0.6, "resolved": True,
                             "points": [{"p": 0.2, "d": 800.0, "d_star": 310.5, "d_star_se": 4.2},
                                        {"p": 0.9, "d": 100.0, "d_star": 420.0, "d_star_se": 5.0}]}}
    (table,) = claim3_flatness.theory_detail([row, {"seed": 1}])
    assert "stochastic Lanczos quadrature" in table.note
    assert table.columns[-2:] == ["p = 0.2", "p = 0.9"] and len(table.rows) == 1
    assert table.rows[0][:6] == ["0", "4", "1000", "0.6 [0.4, 0.6]", "0.4", "yes"]
    assert table.rows[0][6] == "800 / 310.5 ± 4.2"
    assert claim3_flatness.theory_detail([{"seed": 0}]) == []
