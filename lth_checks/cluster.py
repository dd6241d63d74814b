"""The claims' experiments as cluster jobs, through submitit, with the cache as the meeting point.

A claims run is a plan (`lth_checks.plan`): trainings, path evaluations and Hessians, each under
its cache key. Here the plan is cut into *units* a scheduler can run, one pair per lineage
(recipe, rewind, seed):

* ``train``: the lineage's pretraining and IMP levels (submitted together as one job array);
* ``branches``: every branch training and measurement that reads the lineage (its SGD-noise
  twins, perturbations, one-shot prunes, paths, Hessians, weight statistics), submitted with an
  ``afterok`` dependency on the lineage's ``train`` job.

Every unit runs the ordinary cached code (`run_unit`) against a shared ``--cache-dir``: what is
cached is skipped, what another job holds is waited for (the cache's lease locks,
`store.LeaseLock`), and an interrupted training resumes from its in-level checkpoint. So
submitting again is always safe: units whose work is all cached, or whose job is still queued or
running, are left alone; the rest (failed, cancelled, pre-empted, never submitted) go in again.

Why submitit: it is the Slurm toolbox the field uses (job arrays, dependencies, requeue on
pre-emption, the same code locally), so nothing here speaks sbatch directly except the status
query (`squeue`), which submitit does not expose for jobs of an earlier process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .config import content_hash
from .errors import ConfigError, LthError
from .store import pid_alive

EXECUTORS = ("slurm", "local")


@dataclass(frozen=True)
class RunOptions:
    """What a job needs to rebuild the plan: the claims-run options, as on the command line."""

    scale: str
    recipes: tuple[str, ...] = ()
    rewinds: tuple[int, ...] = ()
    replicates: int | None = None
    levels: int | None = None
    overrides: tuple[str, ...] = ()
    data_root: str | None = None
    cache_dir: str | None = None
    device: str = "auto"

    def context(self, log: Callable[[str], None] = lambda msg: None):
        from .evidence import ClaimContext

        return ClaimContext(scale=self.scale, recipes=self.recipes, rewinds=self.rewinds,
                            replicates=self.replicates, levels=self.levels, overrides=self.overrides,
                            device=self.device, data_root=self.data_root, cache_dir=self.cache_dir, log=log)

    @property
    def key(self) -> str:
        """Names the submission ledger: the same options always meet the same ledger."""
        d = asdict(self)
        for k in ("data_root", "cache_dir", "device"):
            d.pop(k)
        return content_hash(d)


@dataclass
class Unit:
    """A schedulable piece of the plan: the jobs of one lineage's training, or of its branch work."""

    name: str  # "train:<lineage>" or "branches:<lineage>"
    lineage: str
    kind: str  # "train" | "branches"
    job_ids: list[str]
    label: str
    after: str | None = None  # the unit this one waits for (afterok)
    seconds: float = 0.0  # estimated device seconds of what is left
    cached: bool = False
    state: str = ""  # filled by status(): done | running | queued | failed | not submitted
    slurm_id: str | None = None
    jobs: list = field(default_factory=list, repr=False)


def units(plan) -> list[Unit]:
    """Cut a plan into per-lineage ``train`` and ``branches`` units, in plan order."""
    from .plan import TRAINING_KINDS

    by_lineage: dict[str, dict[str, list]] = {}
    labels: dict[str, str] = {}
    for job in plan.jobs.values():
        parts = by_lineage.setdefault(job.lineage, {"train": [], "branches": []})
        kind = "train" if job.what in ("pretrain", "level") else "branches"
        parts[kind].append(job)
        labels.setdefault(job.lineage, job.label.split(":")[0])
    out = []
    for lineage, parts in by_lineage.items():
        for kind in ("train", "branches"):
            jobs = parts[kind]
            if not jobs:
                continue
            trainings = sum(j.what in TRAINING_KINDS and not j.shared_with for j in jobs)
            out.append(Unit(f"{kind}:{lineage}", lineage, kind, [j.id for j in jobs],
                            f"{labels[lineage]}: {kind} ({len(jobs)} jobs, {trainings} trainings)",
                            after=f"train:{lineage}" if kind == "branches" and parts["train"] else None,
                            cached=all(j.cached for j in jobs), jobs=jobs))
    return out


def run_unit(options: RunOptions, job_ids: Sequence[str]) -> dict:
    """Run the listed plan jobs against the cache: the body of every cluster job.

    Rebuilds the plan from `options` (cheap: nothing is trained to build it) and produces each job
    that is not cached through the same cached code the claims call (`plan.run_jobs`).
    """
    from .imp import configure_cpu_threads
    from .plan import claims_plan, run_jobs

    started = time.perf_counter()
    configure_cpu_threads(options.device)

    def log(msg: str) -> None:
        print(f"[lth] {msg}", flush=True)

    plan = claims_plan(options.context(log))
    missing = [j for j in job_ids if j not in plan.jobs]
    if missing:
        raise ConfigError(f"{len(missing)} job(s) of this unit are not in the plan of these options (first: "
                          f"{missing[0]}): the code or the options changed since submission; submit again")
    ran = run_jobs(plan, job_ids, log)
    return {"ran": ran, "seconds": round(time.perf_counter() - started, 1), "host": os.uname().nodename}


# ----------------------------------------------------------------------------------------- ledger

class Ledger:
    """Which unit went to which scheduler job, kept in the cache beside the experiments."""

    def __init__(self, cache_root: Path, options: RunOptions):
        self.path = cache_root / "cluster" / f"{options.scale}-{options.key}.json"
        self.folder = cache_root / "cluster" / "submitit"

    @classmethod
    def of(cls, options: RunOptions) -> Ledger:
        from .store import Store

        return cls(Store(options.cache_dir).root, options)

    def read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError:
            raise LthError(f"{self.path} is not valid JSON; delete it (the cache itself is unaffected) and "
                           "submit again") from None
        return data if isinstance(data, dict) else {}

    def write(self, data: dict) -> None:
        from .store import atomic_write_json

        atomic_write_json(self.path, data)


def _scheduler_states(job_ids: Iterable[str], executor: str) -> dict[str, tuple[str, str]]:
    """{job id: (state, reason)} of jobs the scheduler still knows; absent ones have ended."""
    ids = [j for j in job_ids if j]
    if not ids:
        return {}
    if executor == "local":
        return {j: ("RUNNING", "") for j in ids if _local_alive(j)}
    if shutil.which("squeue") is None:
        raise LthError("squeue is not on PATH: run this on a Slurm login node (or use --executor local)")
    proc = subprocess.run(["squeue", "-h", "-o", "%i|%T|%r", "-j", ",".join(ids)], capture_output=True, text=True)
    out: dict[str, tuple[str, str]] = {}
    for line in proc.stdout.splitlines():
        jid, state, reason = (line.split("|") + ["", ""])[:3]
        out[jid.strip()] = (state.strip(), reason.strip())
    return out


def _local_alive(job_id: str) -> bool:
    """submitit's local executor names jobs by process id: is that process still running?"""
    try:
        pid = int(job_id)
    except ValueError:
        return False
    try:  # reap it if it is our own finished child (a zombie still answers kill(pid, 0))
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    return pid_alive(pid)


def status(options: RunOptions, executor: str = "slurm") -> list[Unit]:
    """Every unit of the plan with its state: done, running, queued, failed or not submitted."""
    from .plan import claims_plan, job_seconds, throughput_for

    plan = claims_plan(options.context())
    tp = throughput_for("cuda")
    all_units = units(plan)
    ledger = Ledger.of(options).read()
    submitted = ledger.get("units", {})
    live = _scheduler_states((submitted.get(u.name, {}).get("job_id") for u in all_units), executor)
    # a train unit is one lineage alone on its GPU; a branch unit trains its branches together as planned
    seconds = {"train": job_seconds(plan, tp, grouped=False), "branches": job_seconds(plan, tp)}
    for u in all_units:
        u.seconds = sum(seconds[u.kind].get(i, 0.0) for i in u.job_ids)
        u.slurm_id = submitted.get(u.name, {}).get("job_id")
        if u.cached:
            u.state = "done"
        elif u.slurm_id in live:
            state, reason = live[u.slurm_id]
            if "DependencyNeverSatisfied" in reason:
                u.state = "failed"  # its training job failed: it would wait forever
            else:
                u.state = "running" if state in ("RUNNING", "COMPLETING") else "queued"
        elif u.slurm_id:
            u.state = "failed"  # the scheduler is done with it but the cache lacks its results
        else:
            u.state = "not submitted"
    return all_units


def submit(options: RunOptions, *, executor: str = "slurm", partition: str | None = None,
           gpus_per_job: int = 1, cpus_per_job: int = 4, max_parallel: int = 16, timeout_min: int = 24 * 60,
           extra: Sequence[str] = (), dry_run: bool = False, log: Callable[[str], None] = print) -> list[Unit]:
    """Submit every unit that is neither done nor queued/running; return the units with their states."""
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; valid: {', '.join(EXECUTORS)}")
    try:
        import submitit
    except ImportError:
        raise LthError("submitting needs submitit: pip install 'lth-checks[cluster]'") from None
    from .store import Store

    root = Store(options.cache_dir).root.resolve()
    if options.cache_dir is None or not Path(options.cache_dir).is_absolute():
        options = RunOptions(**{**asdict(options), "cache_dir": str(root)})  # jobs may start elsewhere
    if options.data_root:
        options = RunOptions(**{**asdict(options), "data_root": str(Path(options.data_root).resolve())})
    all_units = status(options, executor)
    todo = [u for u in all_units if u.state in ("failed", "not submitted")]
    ledger_file = Ledger(root, options)
    ledger = ledger_file.read()
    ledger.setdefault("options", asdict(options))
    ledger.setdefault("units", {})
    if dry_run or not todo:
        return all_units
    if executor == "slurm":
        for u in todo:  # a dependent stuck behind a failed training never runs: cancel it first
            if u.slurm_id and u.state == "failed":
                subprocess.run(["scancel", u.slurm_id], capture_output=True)
    ex = submitit.AutoExecutor(folder=str(ledger_file.folder / "%j"), cluster=None if executor == "slurm" else "local")
    params: dict = {"timeout_min": timeout_min, "cpus_per_task": cpus_per_job, "name": f"lth-{options.scale}"}
    if executor == "slurm":
        params.update(slurm_array_parallelism=max_parallel, gpus_per_node=gpus_per_job or None,
                      slurm_partition=partition)
        if extra:
            params["slurm_additional_parameters"] = dict(x.split("=", 1) for x in extra)
    ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
    queued_ids = {u.name: u.slurm_id for u in all_units if u.state in ("queued", "running")}
    trains = [u for u in todo if u.kind == "train"]
    if executor == "local":
        # submitit's local executor has no dependencies: one process per lineage runs its training,
        # then its branch work (several lineages still run side by side)
        lineages: dict[str, list[Unit]] = {}
        for u in todo:
            lineages.setdefault(u.lineage, []).append(u)
        with ex.batch():
            jobs = [ex.submit(run_unit, options, [i for u in group for i in u.job_ids]) for group in lineages.values()]
        for group, j in zip(lineages.values(), jobs):
            for u in group:
                u.slurm_id, u.state = str(j.job_id), "queued"
    else:
        if trains:
            with ex.batch():  # one job array for the lineages
                jobs = [ex.submit(run_unit, options, u.job_ids) for u in trains]
            for u, j in zip(trains, jobs):
                u.slurm_id, u.state = str(j.job_id), "queued"
                queued_ids[u.name] = u.slurm_id
        base_extra = params.get("slurm_additional_parameters", {})
        for u in todo:
            if u.kind != "branches":
                continue
            after = queued_ids.get(u.after or "")
            ex.update_parameters(slurm_additional_parameters={**base_extra,
                                                              **({"dependency": f"afterok:{after}"} if after else {})})
            j = ex.submit(run_unit, options, u.job_ids)
            u.slurm_id, u.state = str(j.job_id), "queued"
    for u in todo:
        ledger["units"][u.name] = {"job_id": u.slurm_id, "submitted": time.time(), "jobs": len(u.job_ids)}
    ledger_file.write(ledger)
    log(f"submitted {len(todo)} unit(s) ({len(trains)} lineage trainings, {len(todo) - len(trains)} branch units "
        f"after them) with the {executor} executor; logs in {ledger_file.folder}")
    return all_units


def wait(options: RunOptions, executor: str = "slurm", poll_s: float = 10.0, timeout_s: float | None = None,
         log: Callable[[str], None] = print) -> list[Unit]:
    """Poll until no unit is queued or running; return the final states."""
    started = time.monotonic()
    last = ""
    while True:
        all_units = status(options, executor)
        counts = format_status(all_units).splitlines()[-1]
        if counts != last:
            log(counts)
            last = counts
        if not any(u.state in ("queued", "running") for u in all_units):
            return all_units
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            raise LthError(f"units still queued or running after {timeout_s:.0f} s; `lth-checks submit --status` "
                           "with the same options shows them")
        time.sleep(poll_s)


def format_status(all_units: Sequence[Unit]) -> str:
    counts: dict[str, int] = {}
    for u in all_units:
        counts[u.state] = counts.get(u.state, 0) + 1
    lines = [f"{'state':<14} {'job':>12} {'est. h':>7}  unit"]
    for u in all_units:
        lines.append(f"{u.state:<14} {u.slurm_id or '-':>12} {u.seconds / 3600:>7.2f}  {u.label}")
    train_h = sum(u.seconds for u in all_units if u.kind == "train") / 3600
    branch_h = sum(u.seconds for u in all_units if u.kind == "branches") / 3600
    longest = max((u.seconds for u in all_units), default=0.0) / 3600
    lines.append(f"left to do: {train_h + branch_h:.1f} GPU-hours ({train_h:.1f} in "
                 f"{sum(u.kind == 'train' for u in all_units)} lineage trainings, {branch_h:.1f} in "
                 f"{sum(u.kind == 'branches' for u in all_units)} branch units); longest unit {longest:.1f} h")
    lines.append("; ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return "\n".join(lines)
