"""A one-shot branch that is an IMP level (p = the lineage's fraction, magnitude pruning) is read
from the lineage, never trained again (issue 10)."""

from __future__ import annotations

import pytest
import torch

import lth_checks.imp as imp_module
import lth_checks.measure.branches as branches
import lth_checks.replicas as replicas
from lth_checks.measure import suite
from lth_checks.measure.branches import Branch, BranchSpec, train_together
from lth_checks.measure.connectivity import PathSettings

SETTINGS = suite.MeasureSettings(path=PathSettings(points=3, bn_examples=64))


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def trainings(monkeypatch) -> list[str]:
    """Labels of every training started (single, in-entry or as replicas), trainings still run."""
    started: list[str] = []
    real_train, real_replicas = imp_module.train, replicas.train_replicas

    def train(*args, label="", **kwargs):
        started.append(label)
        return real_train(*args, label=label, **kwargs)

    def train_replicas(*args, label="", **kwargs):
        started.append(label)
        return real_replicas(*args, label=label, **kwargs)

    monkeypatch.setattr(imp_module, "train", train)
    monkeypatch.setattr(replicas, "train_replicas", train_replicas)
    return started


def test_oneshot_at_the_lineage_fraction_reads_imp_level_l_plus_1(tiny_experiment, trainings):
    exp = tiny_experiment
    assert (exp.config.prune.fraction, exp.config.prune.strategy) == (0.2, "magnitude_global")
    exp.run(2)
    trainings.clear()
    spec = suite.oneshot_spec(1, 0.2, "magnitude_global", SETTINGS)
    branch = Branch(exp, spec)
    assert branch.imp_level == 2 and branch.is_done()

    out = suite.oneshot(exp, 1, 0.2, "magnitude_global", SETTINGS)
    assert trainings == []
    level = exp.result(2)
    assert out["branch"] == {"spec": spec.key_dict(), "alive": level.alive, "density": level.density,
                             "test_error": level.test_error, "test_loss": level.test_loss,
                             "train_error": level.train_error, "train_loss": level.train_loss,
                             "perturbation_norm": 0.0, "scale_r": 0.0, "wall_time_s": 0.0, "imp_level": 2}
    assert out["path"] == suite.successive_barrier(exp, 1, SETTINGS).to_dict()
    assert same_state(branch.solution(), exp.solution(2))
    assert same_state(branch.mask(), exp.mask(2))
    assert not branch.entry.path.exists()  # nothing stored twice

    # Grouped branch training leaves it to IMP and trains only the others.
    others = [suite.oneshot_spec(1, 0.2, "random_global", SETTINGS), suite.oneshot_spec(1, 0.4, "magnitude_global",
                                                                                          SETTINGS)]
    assert train_together(exp, [spec, *others]) == 2
    assert len(trainings) == 1 and trainings[0].startswith("2 branches")
    assert [Branch(exp, s).imp_level for s in others] == [None, None]
    assert not branch.entry.path.exists()


def test_the_reused_level_is_what_training_the_branch_gives(tiny_experiment, monkeypatch):
    """The premise of the reuse: trained as a branch, it is bitwise IMP's next level (CPU)."""
    exp = tiny_experiment
    exp.run(1)
    branch = Branch(exp, suite.oneshot_spec(0, 0.2, "magnitude_global", SETTINGS))
    labels: list[str] = []
    real = branches.train_in_entry
    monkeypatch.setattr(branches, "train_in_entry", lambda *a, **k: (labels.append(k["label"]), real(*a, **k)))
    branch._train()  # what result() did before the reuse
    assert labels == [branch.spec.label]
    assert same_state(branch.entry.read_tensors("final")[0], exp.solution(1))
    assert same_state(branch.entry.read_tensors("mask")[0], exp.mask(1))
    trained = branch.entry.read_json("metrics.json")
    level = exp.result(1).to_dict()
    assert {k: trained[k] for k in ("alive", "density", "test_error", "test_loss", "train_error", "train_loss")} == {
        k: level[k] for k in ("alive", "density", "test_error", "test_loss", "train_error", "train_loss")}


@pytest.mark.parametrize("spec", [BranchSpec("oneshot", 1, fraction=0.2, strategy="random_global"),
                                  BranchSpec("oneshot", 1, fraction=0.4, strategy="magnitude_global"),
                                  BranchSpec("oneshot", 1, fraction=0.2, strategy="magnitude_layerwise"),
                                  BranchSpec("oneshot", 1, fraction=0.2, data_seed=12345),
                                  BranchSpec("sgd_noise", 1, data_seed=12345)],
                         ids=["random", "other-fraction", "other-strategy", "other-data-order", "not-oneshot"])
def test_other_branches_are_not_imp_levels(tiny_experiment, spec):
    assert Branch(tiny_experiment, spec).imp_level is None


def test_a_diverging_branch_is_recorded_and_its_group_committed(tiny_experiment, monkeypatch):
    from lth_checks.errors import DivergenceError

    exp = tiny_experiment
    exp.run(1)
    specs = [suite.perturb_spec(0, c, SETTINGS) for c in (0.5, 1.0, 2.0)]
    real = replicas.train_replicas

    def nan_in_the_second(template, states, *args, **kwargs):
        states = list(states)
        states[1] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in states[1].items()}
        return real(template, states, *args, **kwargs)

    monkeypatch.setattr(replicas, "train_replicas", nan_in_the_second)
    assert train_together(exp, specs) == 2
    monkeypatch.setattr(replicas, "train_replicas", real)
    first, second, third = (Branch(exp, s) for s in specs)
    assert first.is_done() and third.is_done() and not second.is_done()
    monkeypatch.setattr(imp_module, "train", lambda *a, **k: pytest.fail("a recorded divergence was trained again"))
    with pytest.raises(DivergenceError, match=r"perturb \(c=1\) diverged \(trained as a replica\): non-finite"):
        suite.branch_barrier(exp, specs[1], SETTINGS)  # what the claims turn into INCONCLUSIVE
    assert train_together(exp, specs) == 0
