"""pytest plugin for `pytest claims/`: options, markers, parametrization, verdicts, summary and report.

Loaded by `claims/conftest.py`. Each claim test calls `conclude(outcome)`: PASS passes, FAIL fails
the test (so the exit status is non-zero), INCONCLUSIVE is reported in its own category — never
as a pass. Outcomes travel to the controlling process as `user_properties`, so the report is
complete under pytest-xdist too; the cache's file locks keep workers from training the same
experiment twice.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime, timezone

import pytest

from .config import override
from .errors import LthError
from .evidence import PLANS, SCALES, ClaimContext
from .imp import configure_cpu_threads, resolve_device
from .recipes import RECIPES, get_recipe, recipe_config

OUTCOME_PROPERTY = "lth_outcome"
INCONCLUSIVE_PREFIX = "INCONCLUSIVE: "
GPU_RECIPES = {"small", "cifar10_resnet20", "cifar10_vgg16", "imagenet_resnet50"}
PAPER_RECIPES = {"cifar10_resnet20", "cifar10_vgg16", "imagenet_resnet50", "mnist_lenet300"}
_context_key = pytest.StashKey[ClaimContext]()
_started_key = pytest.StashKey[float]()


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("lth-checks", "lth-checks claims")
    g.addoption("--scale", choices=SCALES, default="smoke",
                help="smoke (CPU, embedded digits, seconds), cpu (CIFAR-10 16x16 ResNet-8, <= 1 h on 2 CPU cores), "
                     "small (GPU, CIFAR-10 ResNet-20 short), paper (GPU hours)")
    g.addoption("--recipe", action="append", default=[], help=f"run only these recipes ({', '.join(RECIPES)})")
    g.addoption("--rewind", action="append", type=int, default=[], help="rewind iterations (default: the recipe's)")
    g.addoption("--replicates", type=int, help="seeds per configuration (default: the scale's)")
    g.addoption("--levels", type=int, help="last IMP level (default: the scale's)")
    g.addoption("--set", dest="lth_set", action="append", default=[], metavar="KEY=VALUE",
                help="override a setting of every recipe, e.g. --set train.precision=bf16 (changes the cache key)")
    g.addoption("--data-root", default=os.environ.get("LTH_CHECKS_DATA_ROOT"), help="dataset folder")
    g.addoption("--cache-dir", default=None, help="experiment cache (default $LTH_CHECKS_CACHE_DIR or ./.lth-cache)")
    g.addoption("--report-dir", default="reports", help="where reports/<run-id>/ is written")
    g.addoption("--device", default="auto", help="cpu, cuda, cuda:N (default: cuda when present)")
    g.addoption("--cache-only", action="store_true", help="train nothing; use only what the cache holds")


def _worker_device(requested: str) -> str:
    """Under xdist with several GPUs, worker gwN takes GPU N modulo the count."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if requested != "auto" or not worker.startswith("gw"):
        return requested
    try:
        import torch

        count = torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no torch CUDA: plain auto
        return requested
    return f"cuda:{int(worker[2:]) % count}" if count > 1 else requested


def pytest_configure(config: pytest.Config) -> None:
    for line in ("gpu: needs a CUDA device; skipped with the reason where none is present",
                 "slow: takes minutes on a CPU", "paper: runs at the paper's scale (GPU hours)",
                 "slurm: needs a running Slurm cluster (bash .ci/slurm-up.sh starts a one-node one as root)"):
        config.addinivalue_line("markers", line)
    opt = config.option
    try:  # bad names and settings stop the run with one line, before anything is collected
        for name in opt.recipe or PLANS[opt.scale].recipes:
            # each requested rewind, built as the claims build it (rewind first, then --set): the
            # recipe's default rewind may not fit a shortened --set train.iterations
            for rewind in opt.rewind or get_recipe(name).default_rewinds:
                override(recipe_config(name, rewind_iteration=rewind), opt.lth_set)
        resolve_device(opt.device)
    except LthError as e:
        raise pytest.UsageError(str(e)) from None
    configure_cpu_threads(opt.device)
    config.stash[_context_key] = ClaimContext(
        scale=opt.scale, recipes=tuple(opt.recipe), rewinds=tuple(opt.rewind), replicates=opt.replicates,
        levels=opt.levels, overrides=tuple(opt.lth_set), device=_worker_device(opt.device),
        data_root=opt.data_root, cache_dir=opt.cache_dir,
        cache_only=opt.cache_only, log=lambda msg: print(f"[lth] {msg}", file=sys.stderr, flush=True))
    _session_outcomes.clear()
    config.stash[_started_key] = time.perf_counter()
    if not hasattr(config, "workerinput") and os.isatty(2):
        # the real terminal, kept before any test captures fd 2, for the progress bar's thread
        config.stash[_tty_key] = os.fdopen(os.dup(2), "w")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    ctx: ClaimContext = metafunc.config.stash[_context_key]
    names = metafunc.fixturenames
    if "recipe" in names and "rewind" in names:
        combos = [(r, k) for r in ctx.recipe_names() for k in ctx.rewinds_for(r)]
        metafunc.parametrize(("recipe", "rewind"), combos, ids=[f"{r}-k{k}" for r, k in combos])
    elif "recipe" in names:
        metafunc.parametrize("recipe", list(ctx.recipe_names()), ids=list(ctx.recipe_names()))


def _spread_lineage_tests(items: list[pytest.Item]) -> None:
    """Put each (recipe, rewind) protocol test at the head of its own pair of tests.

    Under `-n 2` xdist first hands each worker 2 consecutive tests; in collection order both
    protocol tests went to one worker, the other began a claim that needs the same rewind's lineages,
    and one worker waited on the other's locks. Interleaved, each rewind's lineages start on their
    own worker (measured on the cpu scale: one worker idle for the whole IMP phase otherwise).
    """
    protocol = [i for i in items if "rewind" in getattr(getattr(i, "callspec", None), "params", {})]
    if len(protocol) < 2:
        return
    others = [i for i in items if i not in protocol]
    order: list[pytest.Item] = []
    for item in protocol:
        order += [item] + ([others.pop(0)] if others else [])
    items[:] = order + others


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ctx: ClaimContext = config.stash[_context_key]
    _spread_lineage_tests(items)
    for item in items:
        recipe = getattr(item, "callspec", None) and item.callspec.params.get("recipe")
        if not recipe:
            continue
        if recipe in GPU_RECIPES:
            item.add_marker(pytest.mark.gpu)
        if recipe in PAPER_RECIPES or ctx.scale == "paper":
            item.add_marker(pytest.mark.paper)
            item.add_marker(pytest.mark.slow)


_tty_key = pytest.StashKey[object]()
_progress_key = pytest.StashKey[object]()


def _start_plan(config: pytest.Config, nodeids: list[str]) -> None:
    """Print the plan's totals for the selected claims and start one progress bar over the run."""
    if hasattr(config, "workerinput") or _progress_key in config.stash:
        return
    from . import plan as P

    config.stash[_progress_key] = None
    ctx: ClaimContext = config.stash[_context_key]
    claims = set().union(*(P.claims_of_test(n) for n in nodeids))
    if not claims:
        return
    try:
        plan = P.select(P.claims_plan(ctx), claims)
        tp = P.throughput_for(resolve_device(ctx.device).type, folder=os.path.join(config.option.report_dir, "bench"),
                              models=plan.models)
    except LthError as e:
        print(f"[lth] no plan: {e}", file=sys.stderr)
        return
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None:
        workers = getattr(config.option, "numprocesses", None)
        workers = workers if isinstance(workers, int) and workers > 1 else 1
        for line in P.format_totals(plan, tp, P._epoch_iterations(ctx), workers=workers).splitlines():
            tr.write_line(line)
    tty = config.stash.get(_tty_key, None)
    if tty is not None and not ctx.cache_only and P.progress_weights(plan, tp):
        config.stash[_progress_key] = P.Progress(plan, tp, tty)


def pytest_collection_finish(session: pytest.Session) -> None:
    _start_plan(session.config, [item.nodeid for item in session.items])


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids: list[str]) -> None:
    _start_plan(node.config, list(ids))


def pytest_runtest_setup(item: pytest.Item) -> None:
    recipe = getattr(item, "callspec", None) and item.callspec.params.get("recipe")
    if not recipe:
        return
    ctx: ClaimContext = item.config.stash[_context_key]
    if item.get_closest_marker("gpu") and not ctx.device.startswith("cpu"):
        import torch

        if not torch.cuda.is_available():
            pytest.skip(f"recipe {recipe} needs a CUDA GPU and none is present (force with --device cpu)")
    if get_recipe(recipe).needs_files:
        from .data import resolve_data_root

        root = resolve_data_root(ctx.data_root)
        if root is None or not root.exists():
            pytest.skip(f"recipe {recipe} needs its dataset files: pass --data-root or set LTH_CHECKS_DATA_ROOT")


@pytest.fixture(scope="session")
def lth(request: pytest.FixtureRequest) -> ClaimContext:
    """The run's ClaimContext: recipes, rewinds, replicates, device, cache."""
    return request.config.stash[_context_key]


@pytest.fixture
def conclude(request: pytest.FixtureRequest):
    """Record an outcome for the report, then pass, fail or mark INCONCLUSIVE by its verdict."""

    def _conclude(outcome: dict) -> None:
        outcome = {**outcome, "test_id": request.node.nodeid}
        request.node.user_properties.append((OUTCOME_PROPERTY, json.dumps(outcome, default=float)))
        line = f"claim {outcome['claim']} [{outcome['recipe']}]: {outcome['verdict']}: {outcome['summary']}"
        if outcome["verdict"] == "FAIL":
            pytest.fail(line, pytrace=False)
        if outcome["verdict"] == "INCONCLUSIVE":
            pytest.skip(INCONCLUSIVE_PREFIX + line)

    return _conclude


def _is_inconclusive(report: pytest.TestReport) -> bool:
    if not report.skipped or not isinstance(report.longrepr, tuple):
        return False
    return str(report.longrepr[2]).startswith("Skipped: " + INCONCLUSIVE_PREFIX)


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config):
    if _is_inconclusive(report):
        return "inconclusive", "I", "INCONCLUSIVE"
    return None


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when != "call" and not (report.when == "setup" and report.skipped):
        return
    for name, value in report.user_properties:
        if name == OUTCOME_PROPERTY:
            _session_outcomes.append(json.loads(value))


# The controller's outcome list (pytest_runtest_logreport has no config argument).
_session_outcomes: list[dict] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    progress = config.stash.get(_progress_key, None)
    if progress is not None:
        progress.close()
    if hasattr(config, "workerinput") or not _session_outcomes:
        return
    from .report import run_metadata, write_report

    ctx: ClaimContext = config.stash[_context_key]
    wall = time.perf_counter() - config.stash[_started_key]
    options = {"scale": ctx.scale, "recipes": list(ctx.recipe_names()), "replicates": ctx.n_replicates(),
               "levels": ctx.last_level(), "rewinds": {r: list(ctx.rewinds_for(r)) for r in ctx.recipe_names()},
               "overrides": list(ctx.overrides), "cache_dir": ctx.cache_dir, "cache_only": ctx.cache_only,
               "plan": PLANS[ctx.scale].__dict__}
    meta = run_metadata(scale=ctx.scale, options=options, device=_resolved_device(ctx.device), wall_time_s=wall,
                        started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    meta["regime"] = PLANS[ctx.scale].regime_line()
    outcomes = sorted(_session_outcomes, key=lambda o: (o["claim"], o["recipe"]))
    config.stash[_report_key] = write_report(outcomes, meta, config.option.report_dir)


_report_key = pytest.StashKey[object]()


def _resolved_device(device: str) -> str:
    from .imp import resolve_device

    return str(resolve_device(device))


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if hasattr(config, "workerinput") or not _session_outcomes:
        return
    tr = terminalreporter
    tr.write_sep("=", "lth-checks verdicts")
    ctx: ClaimContext = config.stash[_context_key]
    if PLANS[ctx.scale].regime_line():
        tr.line(f"regime: {PLANS[ctx.scale].regime_line()}", yellow=True)
    for o in sorted(_session_outcomes, key=lambda o: (o["claim"], o["recipe"])):
        sweep = " ".join(f"{k}pp:{v[0]}" for k, v in o.get("tau_sensitivity", {}).items())
        color = {"PASS": {"green": True}, "FAIL": {"red": True}}.get(o["verdict"], {"yellow": True})
        tr.write(f"claim {o['claim']:<3} {o['recipe']:<18} ", bold=True)
        tr.write(f"{o['verdict']:<13}", **color)
        tr.line(f" {o['summary']}" + (f"  [tau {sweep}]" if sweep else ""))
    run_dir = config.stash.get(_report_key, None)
    if run_dir is not None:
        tr.line(f"report: {run_dir}/report.html (and report.md, results.json)")
