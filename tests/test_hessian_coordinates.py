"""The Hessian of Claim 3 and the theory's alive count cover the same coordinates (issue 9)."""

from __future__ import annotations

from conftest import tiny_imp_config

from lth_checks.imp import Experiment
from lth_checks.measure import suite
from lth_checks.pruning import alive_count


def test_excluded_output_layer_is_neither_in_the_hessian_nor_in_alive(store) -> None:
    exp = Experiment(tiny_imp_config(extra=("prune.exclude_output=true",)), store=store, device="cpu")
    exp.run(1)
    assert exp.excluded  # the output layer is kept dense and never ranked
    s = suite.MeasureSettings(hessian_examples=128, hessian_k=5, density_probes=2, density_steps=10)
    h = suite.hessian(exp, 1, s)
    ranked = {n: m for n, m in exp.mask(1).items() if n not in exp.excluded}
    assert h["dim"] == alive_count(ranked) < alive_count(exp.mask(1))
    assert h["n_examples"] == 128 and h["density"]["dim"] == h["dim"] - 5
    limit = suite.prune_limit(exp, 1, "random", s)
    assert limit["alive"] == h["dim"] and limit["bulk_dim"] == h["dim"] - 5
