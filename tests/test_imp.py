"""The IMP runner: rewinding, nested masks, cache hits, resume after crashes, divergence, concurrency."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import TINY_REWIND, cli_command, cli_env, tiny_imp_config

import lth_checks.imp as imp
from lth_checks.config import IMPConfig, override
from lth_checks.errors import CacheError, DivergenceError
from lth_checks.imp import Experiment, LevelResult
from lth_checks.pruning import alive_count, dense_mask, is_nested, round_half_up, total_count
from lth_checks.recipes import recipe_config
from lth_checks.store import Store
from lth_checks.training import train

REAL_TRAIN = imp.train
TINY_RESNET = ("model.name=cifar_resnet", "model.depth=8", "model.width=4")  # batch norm buffers too


def experiment(config: IMPConfig, store: Store, log: list[str] | None = None, checkpoint_every: int = 10) -> Experiment:
    return Experiment(config, store=store, device="cpu", checkpoint_every=checkpoint_every,
                      log=(log.append if log is not None else None))


def without_time(results: list[LevelResult]) -> list[dict]:
    return [{k: v for k, v in r.to_dict().items() if k != "wall_time_s"} for r in results]


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def leftover_checkpoints(exp: Experiment) -> list[str]:
    return sorted(p.name for p in exp.entry.path.glob("*_checkpoint*"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Experiment, list[LevelResult]]:
    """An uninterrupted run of the tiny configuration, shared by the tests that compare against it."""
    exp = experiment(tiny_imp_config(), Store(tmp_path_factory.mktemp("reference")))
    return exp, exp.run()


# ----------------------------------------------------------------------------- the protocol

@pytest.mark.parametrize("extra", [(), TINY_RESNET], ids=["mlp", "resnet8"])
def test_levels_follow_the_rewinding_protocol_exactly(store: Store, extra: tuple[str, ...]) -> None:
    cfg = tiny_imp_config(extra=extra)
    exp = experiment(cfg, store)
    results = exp.run()
    assert [r.level for r in results] == [0, 1, 2]
    ds, k, end = exp.dataset, cfg.rewind_iteration, cfg.train.iterations

    # w_0 is the seeded initialisation; w_k is w_0 trained densely for k iterations.
    init = exp.initial_state()
    assert same_state(init, exp.build_model().state_dict())
    dense = exp.model_with(init)
    train(dense, dense_mask(dense), ds.train, cfg.train, start=0, end=k, data_seed=cfg.seed,
          augment=cfg.data.augment)
    rewind = exp.rewind_state()
    assert same_state(rewind, dense.state_dict())
    assert not same_state(rewind, init)

    for level in range(3):
        mask = exp.mask(level)
        # The level-L start is m_L * w_k: weights masked, every other entry (BN buffers too) = w_k.
        start = exp.pruned_rewind_model(level).state_dict()
        for name, value in rewind.items():
            expected = value * mask[name] if name in mask else value
            assert torch.equal(start[name], expected), name
        # The level-L solution is exactly that start trained from k to T with a fresh optimiser.
        model = exp.model_with(rewind, mask)
        train(model, mask, ds.train, cfg.train, start=k, end=end, data_seed=cfg.seed, augment=cfg.data.augment)
        solution = exp.solution(level)
        assert same_state(solution, model.state_dict()), f"level {level}"
        # Pruned weights stay zero in the solution.
        assert all((solution[n][~m] == 0).all() for n, m in mask.items())


def test_masks_are_nested_with_exact_densities(reference) -> None:
    exp, results = reference
    cfg = exp.config
    masks = [exp.mask(level) for level in range(3)]
    total = total_count(masks[0])
    assert alive_count(masks[0]) == total
    alive = total
    for level in range(1, 3):
        assert is_nested(masks[level], masks[level - 1])
        alive -= round_half_up(cfg.prune.fraction * alive)
        assert alive_count(masks[level]) == alive
        assert abs(alive / total - 0.8 ** level) <= 1.5 * level / total
        # m_L removes the globally smallest alive weights of w_{L-1}.
        solution = exp.solution(level - 1)
        gone = torch.cat([solution[n].abs()[masks[level - 1][n] & ~masks[level][n]] for n in masks[level]])
        kept = torch.cat([solution[n].abs()[masks[level][n]] for n in masks[level]])
        assert gone.max() <= kept.min()
    for r, m in zip(results, masks):
        assert (r.alive, r.total) == (alive_count(m), total)
        assert r.density == alive_count(m) / total
        assert 0 <= r.test_error <= 1 and 0 <= r.train_error <= 1 and r.device == "cpu"
        assert exp.entry.has_json(f"level{r.level:02d}_metrics.json")
    assert results[0].test_error < 0.5  # it did learn something
    assert leftover_checkpoints(exp) == []


def test_rewind_to_initialisation_stores_no_rewind_state(store: Store) -> None:
    exp = experiment(tiny_imp_config(levels=1, rewind_iteration=0), store)
    exp.run()
    assert same_state(exp.rewind_state(), exp.initial_state())
    assert not exp.entry.has_tensors("rewind")


def test_lineages_with_other_seeds_or_rewinds_get_other_entries(tiny_config: IMPConfig) -> None:
    keys = {tiny_config.key, override(tiny_config, ["seed=1"]).key, tiny_imp_config(rewind_iteration=0).key}
    assert len(keys) == 3
    assert tiny_imp_config(levels=5).key == tiny_config.key


# ----------------------------------------------------------------------------- cache

def test_cache_hit_returns_identical_results_without_training(reference, monkeypatch) -> None:
    exp, results = reference

    def no_training(*args, **kwargs):
        raise AssertionError("a cache hit must not train")

    monkeypatch.setattr(imp, "train", no_training)
    again = experiment(exp.config, Store(exp.store.root))
    assert again.run() == results  # wall times included: read back, not recomputed
    assert again.finished_levels() == 3
    assert same_state(again.solution(2), exp.solution(2))
    assert all(torch.equal(again.mask(2)[n], exp.mask(2)[n]) for n in again.mask(2))


def test_more_levels_extend_the_same_entry(store: Store, monkeypatch) -> None:
    first = experiment(tiny_imp_config(levels=1), store).run()
    labels: list[str] = []

    def counting_train(*args, **kwargs):
        labels.append(kwargs["label"])
        return REAL_TRAIN(*args, **kwargs)

    monkeypatch.setattr(imp, "train", counting_train)
    exp = experiment(tiny_imp_config(levels=3), store)
    results = exp.run()
    assert labels == ["smoke level 2", "smoke level 3"]  # no pretraining, no level 0 or 1 again
    assert results[:2] == first and len(results) == 4


def test_corrupt_stored_solution_is_an_error_not_a_silent_retrain(store: Store, monkeypatch) -> None:
    exp = experiment(tiny_imp_config(levels=0), store)
    exp.run()
    path = exp.entry.path / "level00_final.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    monkeypatch.setattr(imp, "train", lambda *a, **k: pytest.fail("must not retrain"))
    fresh = experiment(tiny_imp_config(levels=1), Store(store.root))
    with pytest.raises(CacheError, match="level00_final.safetensors"):
        fresh.solution(0)
    with pytest.raises(CacheError, match="corrupt"):
        fresh.run()  # level 1 needs m_1, pruned from the corrupt w_0


def test_foreign_entry_is_not_reused(store: Store) -> None:
    exp = experiment(tiny_imp_config(levels=0), store)
    exp.run()
    record = json.loads((exp.entry.path / "config.json").read_text())
    record["config"]["seed"] = 12
    (exp.entry.path / "config.json").write_text(json.dumps(record))
    with pytest.raises(CacheError, match="incompatible configuration"):
        experiment(tiny_imp_config(levels=0), Store(store.root)).run()


# ----------------------------------------------------------------------------- crashes and resume

class Crash(Exception):
    pass


@pytest.mark.parametrize(("crash_in", "checkpoint_every", "resumed_at"),
                         [("pretraining", 3, 3), ("level 1", 10, 10)])
def test_resume_after_a_crash_matches_an_uninterrupted_run(
        reference, store: Store, monkeypatch, crash_in: str, checkpoint_every: int, resumed_at: int) -> None:
    ref_exp, ref_results = reference
    cfg = tiny_imp_config(rewind_iteration=TINY_REWIND)

    def crashing_train(*args, on_checkpoint=None, label="", **kwargs):
        def save_then_crash(ckpt):
            on_checkpoint(ckpt)
            if crash_in in label:
                raise Crash(f"simulated crash after the checkpoint at {ckpt.iteration}")
        return REAL_TRAIN(*args, on_checkpoint=save_then_crash, label=label, **kwargs)

    monkeypatch.setattr(imp, "train", crashing_train)
    with pytest.raises(Crash):
        experiment(cfg, store, checkpoint_every=checkpoint_every).run()
    monkeypatch.setattr(imp, "train", REAL_TRAIN)

    log: list[str] = []
    exp = experiment(cfg, Store(store.root), log, checkpoint_every=checkpoint_every)
    assert exp.finished_levels() == (1 if crash_in == "level 1" else 0)
    results = exp.run()
    assert any(f"{crash_in}: resuming from checkpoint at iteration {resumed_at}" in line for line in log), log
    assert without_time(results) == without_time(ref_results)
    for level in range(3):
        assert same_state(exp.solution(level), ref_exp.solution(level)), level
    assert same_state(exp.rewind_state(), ref_exp.rewind_state())
    assert leftover_checkpoints(exp) == []


def test_resumed_level_on_the_fast_path_equals_an_uninterrupted_one(tmp_path: Path, monkeypatch) -> None:
    """CUDA's fast path emulated on the CPU (channels_last convolutions, fused SGD): a level resumed
    from its stored (contiguous) checkpoint is bitwise the uninterrupted level.

    oneDNN is off meanwhile: torch 2.13's oneDNN convolution backward corrupts the heap on
    channels_last weights on some CPUs (AMD EPYC).
    """
    from lth_checks.speed import fused_sgd_available

    if not fused_sgd_available("cpu"):
        pytest.skip(f"torch {torch.__version__} has no fused SGD on the CPU")
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    monkeypatch.setattr(imp, "prepare_model", lambda model, device: model.to(device).to(
        memory_format=torch.channels_last))
    cfg = tiny_imp_config(levels=1, extra=TINY_RESNET)

    def fast(root: Path, log: list[str] | None = None) -> Experiment:
        return Experiment(cfg, store=Store(root), device="cpu", checkpoint_every=10, fast=True,
                          log=(log.append if log is not None else None))

    reference = fast(tmp_path / "reference")
    ref_results = reference.run()
    assert reference.build_model().conv.weight.is_contiguous(memory_format=torch.channels_last)

    def crashing_train(*args, on_checkpoint=None, label="", **kwargs):
        assert kwargs["fused_optimizer"]

        def save_then_crash(ckpt):
            on_checkpoint(ckpt)
            if "level 1" in label:
                raise Crash(f"simulated crash after the checkpoint at {ckpt.iteration}")
        return REAL_TRAIN(*args, on_checkpoint=save_then_crash, label=label, **kwargs)

    monkeypatch.setattr(imp, "train", crashing_train)
    with pytest.raises(Crash):
        fast(tmp_path / "resumed").run()
    monkeypatch.setattr(imp, "train", REAL_TRAIN)
    log: list[str] = []
    resumed = fast(tmp_path / "resumed", log)
    results = resumed.run()
    assert any("level 1: resuming from checkpoint at iteration 10" in line for line in log), log
    assert without_time(results) == without_time(ref_results)
    assert same_state(resumed.solution(1), reference.solution(1))


def test_diverged_level_leaves_no_metrics_but_keeps_earlier_levels(reference, store: Store, monkeypatch) -> None:
    ref_exp, ref_results = reference

    def diverging_train(model, *args, label="", **kwargs):
        if "level 1" in label:
            with torch.no_grad():
                next(model.parameters()).fill_(float("inf"))
        return REAL_TRAIN(model, *args, label=label, **kwargs)

    monkeypatch.setattr(imp, "train", diverging_train)
    exp = experiment(tiny_imp_config(), store)
    with pytest.raises(DivergenceError) as excinfo:
        exp.run()
    message = str(excinfo.value)
    assert f"iteration {TINY_REWIND}" in message and "level 1" in message and "\n" not in message
    assert exp.is_done(0) and not exp.is_done(1) and exp.finished_levels() == 1
    assert not exp.entry.has_tensors("level01_final")
    assert not exp.entry.has_json("level01_metrics.json")
    assert not exp.entry.has_tensors("level01_train_checkpoint")  # never a non-finite checkpoint
    assert without_time([exp.result(0)]) == without_time(ref_results[:1])

    # Once the cause is gone, the same command finishes from where it stopped.
    labels: list[str] = []

    def counting_train(*args, **kwargs):
        labels.append(kwargs["label"])
        return REAL_TRAIN(*args, **kwargs)

    monkeypatch.setattr(imp, "train", counting_train)
    results = experiment(tiny_imp_config(), Store(store.root)).run()
    assert labels == ["smoke level 1", "smoke level 2"]
    assert without_time(results) == without_time(ref_results)


# ----------------------------------------------------------------------------- real processes

KILL_SETTINGS = ("train.iterations=1300", "train.milestones=650,975")  # the CLI checkpoints every 1000


def kill_args(cache: Path) -> list[str]:
    args = ["run", "smoke", "--levels", "1", "--device", "cpu", "--cache-dir", str(cache)]
    for s in KILL_SETTINGS:
        args += ["--set", s]
    return args


def entry_path(cache: Path, levels: int, settings: tuple[str, ...]) -> Path:
    cfg = override(recipe_config("smoke", levels=levels), list(settings))
    return Store(cache).entry("imp", cfg.key_dict()).path


def finished_files(entry: Path) -> dict[str, object]:
    """Metrics (without wall time) and the checksums of every stored tensor file."""
    out: dict[str, object] = {}
    for p in sorted(entry.glob("level*_metrics.json")):
        metrics = json.loads(p.read_text())
        metrics.pop("wall_time_s")
        out[p.name] = metrics
    for p in sorted(entry.glob("*.sha256")):
        if "_checkpoint" not in p.name:
            out[p.name] = p.read_text()
    return out


def test_kill_9_mid_level_then_rerun_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    victim_cache, ref_cache = tmp_path / "victim", tmp_path / "reference"
    with open(tmp_path / "victim.log", "w") as log:
        victim = subprocess.Popen(cli_command(*kill_args(victim_cache)), cwd=tmp_path, env=cli_env(),
                                  stdout=log, stderr=subprocess.STDOUT)
    entry = entry_path(victim_cache, 1, KILL_SETTINGS)
    try:
        deadline = time.monotonic() + 240
        while True:
            found = [p for p in entry.glob("*_checkpoint.safetensors") if p.with_suffix(".sha256").exists()]
            if found:
                break
            assert victim.poll() is None, "the run ended before its first checkpoint: " + (
                tmp_path / "victim.log").read_text()
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.005)
        os.kill(victim.pid, signal.SIGKILL)
        assert victim.wait(30) == -signal.SIGKILL
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    assert not (entry / "level01_metrics.json").exists(), "killed too late: the run had finished"
    checkpoint = found[0].name
    # In the instant between committing a level and deleting its checkpoint there is nothing to resume.
    resumable = not (entry / checkpoint.replace("_train_checkpoint.safetensors", "_metrics.json")).exists()

    # Rerun the same command; meanwhile, the uninterrupted reference runs here in another cache.
    with open(tmp_path / "rerun.log", "w") as log:
        rerun = subprocess.Popen(cli_command(*kill_args(victim_cache)), cwd=tmp_path, env=cli_env(),
                                 stdout=subprocess.DEVNULL, stderr=log)
    try:
        cfg = override(recipe_config("smoke", levels=1), list(KILL_SETTINGS))
        Experiment(cfg, store=Store(ref_cache), device="cpu", checkpoint_every=imp.DEFAULT_CHECKPOINT_EVERY).run()
        assert rerun.wait(240) == 0, (tmp_path / "rerun.log").read_text()
    finally:
        if rerun.poll() is None:
            rerun.kill()
            rerun.wait()
    rerun_log = (tmp_path / "rerun.log").read_text()
    if resumable:
        assert "resuming from checkpoint at iteration 1000" in rerun_log, (checkpoint, rerun_log)

    expected = finished_files(entry_path(ref_cache, 1, KILL_SETTINGS))
    assert {"level00_metrics.json", "level01_metrics.json", "level00_final.sha256", "level01_final.sha256",
            "level01_mask.sha256", "rewind.sha256", "init.sha256"} <= expected.keys()
    assert finished_files(entry) == expected  # identical metrics and bitwise-identical tensors
    if resumable:
        assert not list(entry.glob("*_checkpoint.safetensors"))


CONCURRENT_SETTINGS = ("train.iterations=200", "train.milestones=100,150")


def test_two_processes_asking_for_the_same_experiment_train_it_once(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    args = ["run", "smoke", "--levels", "1", "--device", "cpu", "--cache-dir", str(cache)]
    for s in CONCURRENT_SETTINGS:
        args += ["--set", s]
    entry = Store(cache).entry("imp", override(recipe_config("smoke", levels=1), list(CONCURRENT_SETTINGS)).key_dict())
    logs = [tmp_path / f"p{i}.err" for i in range(2)]
    outs = [tmp_path / f"p{i}.out" for i in range(2)]
    # Hold the entry's lock while both start, so that both really ask at the same time.
    lock = entry.lock()
    lock.acquire()
    procs = []
    try:
        for log, out in zip(logs, outs):
            with open(out, "w") as stdout, open(log, "w") as stderr:  # the child keeps its own copies
                procs.append(subprocess.Popen(cli_command(*args), cwd=tmp_path, env=cli_env(),
                                              stdout=stdout, stderr=stderr))
        deadline = time.monotonic() + 120
        while not all(log.exists() and "recipe smoke" in log.read_text() for log in logs):
            assert all(p.poll() is None for p in procs), [log.read_text() for log in logs]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.5)  # both are now waiting for the lock
        assert not entry.path.joinpath("level00_metrics.json").exists()
    finally:
        lock.release()
    assert [p.wait(120) for p in procs] == [0, 0], [log.read_text() for log in logs]
    errs = [log.read_text() for log in logs]
    trained = [sum(line.startswith(("level 0:", "level 1:", "pretraining")) for line in e.splitlines())
               for e in errs]
    assert sorted(trained) == [0, 3], errs  # one process trained everything, the other nothing
    tables = [[line.split()[:4] for line in out.read_text().splitlines()] for out in outs]
    assert tables[0] == tables[1] and len(tables[0]) == 3


def test_replicates_trained_together_equal_replicates_trained_alone(tmp_path):
    """run_together commits, level by level, exactly what separate runs would (CPU loop mode)."""
    from lth_checks.imp import Experiment, run_together
    from lth_checks.store import Store

    def lineages(root):
        return [Experiment(replace(tiny_imp_config(levels=2), seed=seed), store=Store(root), device="cpu")
                for seed in (0, 1, 2)]

    together, alone = lineages(tmp_path / "a"), lineages(tmp_path / "b")
    assert run_together(together) == 3 * 4  # pretraining + levels 0, 1, 2 for three seeds
    assert run_together(together) == 0
    for a, b in zip(together, alone):
        ra = [r.to_dict() for r in a.run()]
        rb = [r.to_dict() for r in b.run()]
        for x, y in zip(ra, rb):
            x.pop("wall_time_s"), y.pop("wall_time_s")
        assert ra == rb
        sa, sb = a.solution(2), b.solution(2)
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


# ----------------------------------------------------------------------------- replica groups that hold up

def _lineages(root: Path, seeds=(0, 1, 2), log: list[str] | None = None, checkpoint_every: int = 10):
    return [Experiment(replace(tiny_imp_config(levels=2), seed=seed), store=Store(root), device="cpu",
                       checkpoint_every=checkpoint_every, log=(log.append if log is not None else None))
            for seed in seeds]


def _results(exp: Experiment) -> list[dict]:
    return without_time([exp.result(level) for level in range(exp.config.levels + 1)])


def test_a_diverging_replicate_is_recorded_and_the_rest_of_its_group_committed(tmp_path: Path, monkeypatch):
    import lth_checks.replicas as replicas

    real = replicas.train_replicas

    def nan_in_seed_1_at_level_1(template, states, *args, label="", **kwargs):
        if "level 1" in label:
            states = list(states)
            states[1] = {k: v.clone() for k, v in states[1].items()}
            weight = next(k for k in states[1] if k.endswith("weight"))
            states[1][weight] = torch.full_like(states[1][weight], float("nan"))
        return real(template, states, *args, label=label, **kwargs)

    monkeypatch.setattr(replicas, "train_replicas", nan_in_seed_1_at_level_1)
    together = _lineages(tmp_path / "together")
    assert imp.run_together(together) == 3 + 3 + 2 + 2  # pretraining, level 0, then levels 1 and 2 without seed 1
    monkeypatch.setattr(replicas, "train_replicas", real)
    alone = _lineages(tmp_path / "alone", seeds=(0, 2))
    for a, b in zip([together[0], together[2]], alone):
        b.run()
        assert _results(a) == _results(b)
        assert same_state(a.solution(2), b.solution(2))
    seed1 = together[1]
    assert seed1.is_done(0) and not seed1.is_done(1)

    def no_training(*args, **kwargs):
        raise AssertionError("a recorded divergence was trained again")

    monkeypatch.setattr(imp, "train", no_training)
    with pytest.raises(DivergenceError) as info:  # what the claims turn into INCONCLUSIVE
        seed1.run()
    message = str(info.value)
    assert "level 1 of seed 1 diverged (trained as a replica): non-finite loss at iteration 5" in message
    assert "\n" not in message


@pytest.mark.parametrize("resume_with", ["run_together", "single"])
def test_a_replica_group_resumes_in_level_like_a_single_training(tmp_path: Path, monkeypatch, resume_with: str):
    import lth_checks.replicas as replicas

    real = replicas.train_replicas

    def crash_after_first_checkpoint(*args, on_checkpoint=None, label="", **kwargs):
        def save_then_crash(ckpts):
            on_checkpoint(ckpts)
            if "level 1" in label:
                raise Crash(f"simulated crash after the checkpoint at {ckpts[0].iteration}")
        return real(*args, on_checkpoint=save_then_crash, label=label, **kwargs)

    monkeypatch.setattr(replicas, "train_replicas", crash_after_first_checkpoint)
    with pytest.raises(Crash):
        imp.run_together(_lineages(tmp_path / "crashed", seeds=(0, 1)))
    monkeypatch.setattr(replicas, "train_replicas", real)
    log: list[str] = []
    resumed = _lineages(tmp_path / "crashed", seeds=(0, 1), log=log)
    assert [e.finished_levels() for e in resumed] == [1, 1]
    assert all(e.entry.has_tensors("level01_train_checkpoint") for e in resumed)
    if resume_with == "run_together":
        assert imp.run_together(resumed) == 4
        assert any("resuming from checkpoints at iteration 10" in line for line in log), log
    else:  # each lineage alone, through train(), from the group's checkpoint
        for e in resumed:
            e.run()
        assert sum("level 1: resuming from checkpoint at iteration 10" in line for line in log) == 2, log
    uninterrupted = _lineages(tmp_path / "uninterrupted", seeds=(0, 1))
    imp.run_together(uninterrupted)
    for a, b in zip(resumed, uninterrupted):
        assert _results(a) == _results(b)
        assert same_state(a.solution(2), b.solution(2))
        assert leftover_checkpoints(a) == []
