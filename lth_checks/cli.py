"""Command line: `lth-checks run|recipes|show|...`. Every error of the library becomes one line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from . import __version__
from .bench import add_parser as add_bench_parser
from .config import IMPConfig, canonical_json, override, to_dict
from .devicecheck import add_parser as add_device_check_parser
from .errors import ConfigError, LthError
from .imp import DEFAULT_CHECKPOINT_EVERY, Experiment, LevelResult, configure_cpu_threads
from .recipes import RECIPES, get_recipe, recipe_config
from .store import Store


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def add_experiment_options(p: argparse.ArgumentParser) -> None:
    """Options that pick an IMP lineage; shared by every subcommand that works on one."""
    p.add_argument("recipe", help=f"recipe name ({', '.join(RECIPES)})")
    p.add_argument("--levels", type=int, help="last pruning level to run (level 0 is dense)")
    p.add_argument("--rewind", type=int, help="rewind iteration k (0 = rewind to initialisation)")
    p.add_argument("--seed", type=int, help="replicate seed (initialisation and data order)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any setting, e.g. --set train.lr=0.05 --set prune.strategy=random_global")
    p.add_argument("--data-root", help="folder with mnist/ and cifar-10-batches-py/ (or $LTH_CHECKS_DATA_ROOT)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when present)")
    p.add_argument("--cache-dir", help="experiment cache (default $LTH_CHECKS_CACHE_DIR or ./.lth-cache)")
    p.add_argument("--fast", choices=("auto", "on", "off"), default="auto",
                   help="channels_last + fused SGD (auto: on CUDA); not part of the cache key")
    p.add_argument("--compile", action="store_true", help="torch.compile the model for training")
    p.add_argument("--checkpoint-every", type=int, default=DEFAULT_CHECKPOINT_EVERY, metavar="N",
                   help=f"save a resumable checkpoint every N iterations inside a level (default "
                        f"{DEFAULT_CHECKPOINT_EVERY}; not part of the cache key)")


def config_from_args(args: argparse.Namespace) -> IMPConfig:
    cfg = recipe_config(args.recipe, levels=args.levels, rewind_iteration=args.rewind, seed=args.seed)
    return override(cfg, args.set) if args.set else cfg


def experiment_from_args(args: argparse.Namespace, progress: bool = True) -> Experiment:
    configure_cpu_threads(args.device)
    return Experiment(config_from_args(args), store=Store(args.cache_dir), device=args.device,
                      data_root=args.data_root, progress=progress, log=_log,
                      fast={"auto": None, "on": True, "off": False}[args.fast], compile_model=args.compile,
                      checkpoint_every=args.checkpoint_every)


def format_table(results: Sequence[LevelResult]) -> str:
    lines = [f"{'level':>5} {'alive':>9} {'test err %':>10} {'train err %':>11} {'time s':>8}"]
    for r in results:
        lines.append(f"{r.level:>5} {100 * r.density:>8.2f}% {100 * r.test_error:>10.2f} "
                     f"{100 * r.train_error:>11.2f} {r.wall_time_s:>8.1f}")
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace) -> int:
    exp = experiment_from_args(args)
    cfg = exp.config
    _log(f"recipe {cfg.recipe} {get_recipe(args.recipe).source}: key {exp.key}, rewind {cfg.rewind_iteration}, "
         f"seed {cfg.seed}, {cfg.levels} levels, device {exp.device}, cache {exp.entry.path}")
    started = time.perf_counter()
    results = exp.run()
    print(format_table(results))
    _log(f"done in {time.perf_counter() - started:.1f} s (levels already in the cache are not retrained)")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    for r in RECIPES.values():
        if args.verbose:
            print(f"{r.name} {r.source}: {r.description}")
            print(json.dumps(to_dict(r.config), indent=2))
        else:
            print(f"{r.name:<18} {r.source:<10} {r.description}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    exp = experiment_from_args(args, progress=False)
    done = exp.finished_levels()
    print(f"{exp.config.recipe}: key {exp.key} at {exp.entry.path}")
    print(canonical_json(exp.config.key_dict()))
    if done == 0:
        print("no finished levels in the cache; `lth-checks run` with the same options trains them")
        return 1
    print(format_table([exp.result(level) for level in range(done)]))
    return 0


MEASUREMENTS = ("barrier", "perturb", "hessian", "theory", "weights")


def cmd_measure(args: argparse.Namespace) -> int:
    """Per level: successive barrier, perturbation barrier at c = 1, top eigenvalue, p*, weight stats."""
    from .measure.connectivity import PathSettings
    from .measure.suite import MeasureSettings, measure_level

    what = tuple(w.strip() for w in args.what.split(",") if w.strip())
    unknown = [w for w in what if w not in MEASUREMENTS]
    if unknown:
        raise ConfigError(f"unknown measurement {unknown[0]!r}; valid: {', '.join(MEASUREMENTS)}")
    exp = experiment_from_args(args)
    settings = MeasureSettings(path=PathSettings(points=args.points, bn_mode=args.bn_mode),
                               hessian_examples=args.hessian_examples, hessian_k=args.hessian_k)
    started = time.perf_counter()
    last = exp.config.levels
    exp.run(last)  # measuring level L needs L + 1
    rows = []
    for level in range(last):
        rows.append(measure_level(exp, level, settings, what))
        _log(f"measured level {level} ({time.perf_counter() - started:.0f} s)")
    exp.entry.write_json("measurements.json", {"settings": to_dict(settings), "what": list(what), "rows": rows})
    print(format_rows(rows))
    _log(f"done in {time.perf_counter() - started:.1f} s; written to {exp.entry.path / 'measurements.json'}")
    return 0


def format_rows(rows: Sequence[dict]) -> str:
    """A plain aligned table of dict rows; errors and barriers (fractions) printed in percent."""
    if not rows:
        return "(no rows)"
    cols = list(rows[0])
    pct = {c for c in cols if "error" in c or "barrier" in c or c == "density"}

    def cell(c: str, v) -> str:
        if isinstance(v, float):
            return f"{100 * v:.2f}" if c in pct else f"{v:.4g}"
        return str(v)

    table = [[c + (" %" if c in pct else "") for c in cols]] + [[cell(c, r.get(c)) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    return "\n".join("  ".join(x.rjust(w) for x, w in zip(row, widths)) for row in table)


def cmd_report(args: argparse.Namespace) -> int:
    """Rebuild a report without training: re-render a run's results.json, or re-run the claims cache-only."""
    from pathlib import Path

    if args.compare:
        from .report.compare import compare_runs, render_text

        comparison, folder = compare_runs(*args.compare, report_dir=args.report_dir)
        print(render_text(comparison), end="")
        print(f"written: {folder}/compare.md and compare.json")
        return 0
    if args.from_evidence:
        from .archive import report_from_evidence

        print(f"{report_from_evidence(args.from_evidence, args.report_dir)}/report.html")
        return 0
    if args.rebuild:
        from .report import rebuild

        print(f"{rebuild(args.rebuild)}/report.html")
        return 0
    import pytest

    claims = Path(args.claims_dir) if args.claims_dir else Path(__file__).resolve().parents[1] / "claims"
    if not (claims / "conftest.py").exists():
        raise ConfigError(f"no claims folder at {claims}; run from a checkout of lth-checks or pass --claims-dir")
    argv = [str(claims), "-q", "-p", "no:cacheprovider", "--cache-only", "--scale", args.scale,
            "--report-dir", args.report_dir, "--device", args.device]
    for flag, value in (("--cache-dir", args.cache_dir), ("--data-root", args.data_root),
                        ("--replicates", args.replicates), ("--levels", args.levels)):
        if value is not None:
            argv += [flag, str(value)]
    for name in args.recipe:
        argv += ["--recipe", name]
    code = int(pytest.main(argv))
    return 0 if code in (0, 1) else code  # 1 = a claim FAILs, which the rebuilt report states


def add_claims_run_options(p: argparse.ArgumentParser) -> None:
    """The options of `pytest claims/` that decide what a claims run trains (plan, work, submit)."""
    from .evidence import SCALES

    p.add_argument("--scale", choices=SCALES, default="smoke", help="as for pytest claims/")
    p.add_argument("--recipe", action="append", default=[], help="recipes (default: the scale's)")
    p.add_argument("--rewind", action="append", type=int, default=[], help="rewind iterations (default: the recipe's)")
    p.add_argument("--replicates", type=int, help="seeds per configuration (default: the scale's)")
    p.add_argument("--levels", type=int, help="last IMP level (default: the scale's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="as for pytest claims/")
    p.add_argument("--data-root", help="folder with mnist/ and cifar-10-batches-py/ (or $LTH_CHECKS_DATA_ROOT)")
    p.add_argument("--cache-dir", help="experiment cache (default $LTH_CHECKS_CACHE_DIR or ./.lth-cache)")


def run_options_from_args(args: argparse.Namespace):
    from .cluster import RunOptions

    return RunOptions(scale=args.scale, recipes=tuple(args.recipe), rewinds=tuple(args.rewind),
                      replicates=args.replicates, levels=args.levels, overrides=tuple(args.set),
                      data_root=args.data_root, cache_dir=args.cache_dir, device=getattr(args, "device", "auto"))


def cmd_work(args: argparse.Namespace) -> int:
    """Produce the given plan jobs (or all missing ones) through the cached code."""
    from .plan import claims_plan, run_jobs

    options = run_options_from_args(args)
    configure_cpu_threads(options.device)
    plan = claims_plan(options.context(_log))
    ids = list(plan.jobs) if args.all else args.jobs
    if not ids:
        raise ConfigError("name the jobs to run (ids from `lth-checks plan --list`) or pass --all")
    unknown = [i for i in ids if i not in plan.jobs]
    if unknown:
        raise ConfigError(f"{unknown[0]} is not a job of this plan; list them with `lth-checks plan --list` "
                          "and the same options")
    started = time.perf_counter()
    ran = run_jobs(plan, ids, _log)
    _log(f"{len(ran)} job(s) produced, {len(ids) - len(ran)} already cached or left to their claim, "
         f"in {time.perf_counter() - started:.1f} s")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from . import cluster

    options = run_options_from_args(args)
    if args.status:
        print(cluster.format_status(cluster.status(options, args.executor)))
        return 0
    units = cluster.submit(options, executor=args.executor, partition=args.partition,
                           gpus_per_job=args.gpus_per_job, cpus_per_job=args.cpus_per_job,
                           max_parallel=args.max_parallel, timeout_min=args.timeout_min, extra=args.slurm_param,
                           dry_run=args.dry_run, log=_log)
    if args.wait and not args.dry_run:
        units = cluster.wait(options, args.executor, log=_log)
    print(cluster.format_status(units))
    failed = [u for u in units if u.state == "failed"]
    if failed:
        _log(f"{len(failed)} unit(s) failed: their logs are in {cluster.Ledger.of(options).folder}; "
             "run the same command again to resubmit them (finished work is kept)")
    return 1 if args.wait and failed else 0


def cmd_plan(args: argparse.Namespace) -> int:
    """Print what `pytest claims/` would run with these options: counts, costs, cache state, device time."""
    from . import plan as P
    from .evidence import ClaimContext

    if args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: give the number of processes sharing the run, 1 or more")
    ctx = ClaimContext(scale=args.scale, recipes=tuple(args.recipe), rewinds=tuple(args.rewind),
                       replicates=args.replicates, levels=args.levels, overrides=tuple(args.set), device="cpu",
                       cache_dir=args.cache_dir, data_root=args.data_root)
    plan = P.claims_plan(ctx)
    if args.claim:
        plan = P.select(plan, set(args.claim))
    tp = P.throughput_for(args.device_type, args.bench, models=plan.models)
    print(P.format_totals(plan, tp, P._epoch_iterations(ctx), workers=args.workers))
    if args.list:
        print(P.format_jobs(plan, tp))
    if args.json:
        from pathlib import Path

        Path(args.json).write_text(json.dumps(P.plan_json(plan, tp, workers=args.workers), indent=1) + "\n")
        _log(f"plan written to {args.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lth-checks",
        description="Run and measure iterative magnitude pruning experiments behind the claims of 'Unmasking the "
                    "Lottery Ticket Hypothesis' (Paul et al., ICLR 2023). The claims themselves: pytest claims/.")
    parser.add_argument("--version", action="version", version=f"lth-checks {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run (or resume) IMP for a recipe and print the level table")
    add_experiment_options(p)
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("recipes", help="list the named recipes")
    p.add_argument("-v", "--verbose", action="store_true", help="print each configuration too")
    p.set_defaults(func=cmd_recipes)
    p = sub.add_parser("show", help="print a cached experiment without training")
    add_experiment_options(p)
    p.set_defaults(func=cmd_show)
    p = sub.add_parser("measure", help="measure barriers, perturbations, curvature and weight statistics per level")
    add_experiment_options(p)
    p.add_argument("--what", default=",".join(MEASUREMENTS),
                   help=f"comma-separated subset of {', '.join(MEASUREMENTS)}")
    p.add_argument("--points", type=int, default=11, help="grid points on each linear path (>= 11; 30 at paper scale)")
    p.add_argument("--bn-mode", default="reestimate", help="batch norm along paths: reestimate or interpolate")
    p.add_argument("--hessian-examples", type=int, default=4096, help="fixed training subset for the Hessian")
    p.add_argument("--hessian-k", type=int, default=100, help="top eigenvalues computed by Lanczos")
    p.set_defaults(func=cmd_measure)
    p = sub.add_parser("report", help="rebuild a claims report from the cache, training nothing")
    p.add_argument("--rebuild", metavar="RUN_DIR", help="only re-render reports/<run-id> from its results.json")
    p.add_argument("--from-evidence", metavar="ARCHIVE",
                   help="re-decide every verdict with the current rules from a run's evidence.json.gz (or its "
                        "run folder) and write a new report; needs no cache, weights or data")
    p.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"),
                   help="what changed from run A to run B (verdicts, the numbers they hinge on with their intervals, "
                        "settings); each a run folder, a run id or `latest` under --report-dir; writes "
                        "<report-dir>/compare-A-vs-B/compare.md and compare.json")
    p.add_argument("--scale", default="smoke", help="smoke, cpu, small or paper (as the claims run used)")
    p.add_argument("--recipe", action="append", default=[], help="recipes (default: the scale's)")
    p.add_argument("--replicates", type=int, help="as the claims run used")
    p.add_argument("--levels", type=int, help="as the claims run used")
    p.add_argument("--report-dir", default="reports", help="where the new reports/<run-id>/ goes")
    p.add_argument("--claims-dir", help="the claims folder (default: the checkout's claims/)")
    p.add_argument("--data-root", help="dataset folder (needed to evaluate from cached states)")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... for evaluations of cached states")
    p.add_argument("--cache-dir", help="experiment cache (default $LTH_CHECKS_CACHE_DIR or ./.lth-cache)")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("plan", help="what `pytest claims/` would train and measure, its cost and device time")
    add_claims_run_options(p)
    p.add_argument("--claim", action="append", default=[], choices=("1", "2", "3", "3d", "4"),
                   help="only what these claims need (default: all)")
    p.add_argument("--bench", metavar="JSON", help="throughput from this `lth-checks bench` JSON (default: the "
                   "newest full one in reports/bench/ for --device-type, else the stated H100 assumption)")
    p.add_argument("--device-type", default="cuda", choices=("cuda", "cpu"), help="device the estimate is for")
    p.add_argument("--workers", type=int, default=1, help="processes sharing the work, as pytest's -n N (default 1)")
    p.add_argument("--list", action="store_true", help="also list every job with its key, cost and state")
    p.add_argument("--json", metavar="PATH", help="write the whole plan as JSON")
    p.set_defaults(func=cmd_plan)
    p = sub.add_parser("work", help="produce some jobs of the claims plan against the cache (what a cluster job runs)")
    add_claims_run_options(p)
    p.add_argument("jobs", nargs="*", metavar="JOB", help="job ids as `lth-checks plan --list` prints them")
    p.add_argument("--all", action="store_true", help="every job of the plan that the cache lacks")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (default: cuda when present)")
    p.set_defaults(func=cmd_work)
    p = sub.add_parser("submit", help="run the claims plan as cluster jobs (submitit: Slurm or local processes)")
    add_claims_run_options(p)
    p.add_argument("--executor", choices=("slurm", "local"), default="slurm", help="where the jobs run")
    p.add_argument("--partition", help="Slurm partition")
    p.add_argument("--gpus-per-job", type=int, default=1, help="GPUs per job (0 for CPU jobs; default 1)")
    p.add_argument("--cpus-per-job", type=int, default=4, help="CPU cores per job (default 4)")
    p.add_argument("--max-parallel", type=int, default=16, help="lineage jobs of the array running at once")
    p.add_argument("--timeout-min", type=int, default=24 * 60, help="time limit of each job in minutes")
    p.add_argument("--slurm-param", action="append", default=[], metavar="KEY=VALUE",
                   help="any other sbatch option, e.g. --slurm-param account=abc --slurm-param qos=high")
    p.add_argument("--device", default="auto", help="device inside each job (default: cuda when present)")
    p.add_argument("--status", action="store_true", help="only show done / running / queued / failed per unit")
    p.add_argument("--dry-run", action="store_true", help="show what would be submitted, submit nothing")
    p.add_argument("--wait", action="store_true", help="wait until every unit is done or failed")
    p.set_defaults(func=cmd_submit)
    add_bench_parser(sub)
    add_device_check_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LthError as e:
        print(f"lth-checks: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lth-checks: interrupted; finished levels and the last checkpoint are kept, "
              "run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
