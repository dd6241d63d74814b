"""The claims run as data: every training, path and Hessian it will request, with keys, dependencies and costs.

`claims_plan(ctx)` asks every registered claim for its jobs (`Claim.plan`, which walks the same loops
as its evidence: the scale's plan in `evidence.PLANS`, the claim's branch specs, the spec helpers of
`measure.suite`), and asks the library itself for every cache key: lineages through
`ClaimContext.experiment`, branches through `measure.branches.Branch`, and measurements by calling
the very `measure.suite` function the claims call with a store that stops at the measurement's
entry (`_KeyProbe`). So the keys are the real ones and follow any change to the spec helpers.

`totals(plan, throughput)` (per job: `job_seconds`) turns the costs (SGD iterations of one model, images evaluated,
Hessian-vector products) into device seconds, with replicas trained together as the code groups
them (`imp.run_together` per recipe, rewind and level; `branches.train_together` per lineage in
groups of 16). Throughput comes from a `lth-checks bench` JSON (`reports/bench/*.json`) when one
exists for the device, otherwise from a stated figure: `ASSUMED_H100` on a GPU, and on a CPU the
cpu recipe's speed measured on this project's 2-core machine (`MEASURED_CPU_RESNET8`) where the plan
trains only that model. A CPU run's work splits over its pytest-xdist workers (`workers`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .claim import planned_claims
from .errors import ConfigError, LthError
from .evidence import ClaimContext
from .imp import Experiment
from .measure import suite
from .measure.branches import Branch, BranchSpec
from .store import Entry, Store

# Split sizes (train, test) of each dataset; `data.train_examples`, where a config has it, narrows train.
SPLIT_SIZES = {"digits": (1437, 360), "mnist": (60_000, 10_000), "cifar10": (50_000, 10_000),
               "cifar100": (50_000, 10_000), "imagenet": (1_281_167, 50_000)}
BN_MODELS = {"cifar_resnet", "vgg16_bn", "resnet18", "resnet50"}  # paths re-estimate BN only where it exists
BRANCH_GROUP = 16  # branches.train_together's default group size
TRAINING_KINDS = ("pretrain", "level", "sgd_noise", "perturb", "oneshot")


@dataclass
class Job:
    """One unit of work of the claims run: a training, a path evaluation, a Hessian, ..."""

    id: str  # "<store kind>/<key>[/<part>]": the cache entry (and the part of it) the job produces
    what: str  # pretrain | level | sgd_noise | perturb | oneshot | path | hessian | curvature | weights | chain
    label: str
    claims: list[str]
    deps: list[str]
    iterations: int = 0  # SGD iterations of one model
    images: int = 0  # images through the network in evaluation (BN re-estimation included)
    hvps: int = 0  # Hessian-vector products
    hvp_images: int = 0  # images per Hessian-vector product
    group: str | None = None  # trainings with the same group train together as replicas
    shared_with: str | None = None  # a job whose result this one reuses: no cost of its own
    cached: bool = False
    note: str = ""
    lineage: str = ""  # key of the IMP lineage the job reads or produces (the unit of cluster submission)
    done: Callable[[], bool] | None = field(default=None, repr=False, compare=False)
    # what produces the job's result through the ordinary cached code (None: produced by the claim itself)
    run: Callable[[], object] | None = field(default=None, repr=False, compare=False)
    # (experiment, spec) of a branch training, so that `run_jobs` can train a unit's branches together
    branch: tuple | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        for name in ("done", "run", "branch"):
            del d[name]
        return d


@dataclass
class Plan:
    scale: str
    description: str
    jobs: dict[str, Job] = field(default_factory=dict)
    models: set[tuple] = field(default_factory=set)  # (name, depth, width) of the lineages' models

    def add(self, job: Job) -> Job:
        """Add a job, or record one more claim on the job already there (claims share experiments)."""
        have = self.jobs.get(job.id)
        if have is None:
            self.jobs[job.id] = job
            return job
        for c in job.claims:
            if c not in have.claims:
                have.claims.append(c)
        return have

    def refresh(self) -> None:
        """Re-read which jobs the cache holds."""
        for job in self.jobs.values():
            job.cached = bool(job.done and job.done())

    def count(self, what: str | Iterable[str], *, cached: bool | None = None, shared: bool | None = None) -> int:
        kinds = {what} if isinstance(what, str) else set(what)
        return sum(1 for j in self.jobs.values() if j.what in kinds
                   and (cached is None or j.cached == cached) and (shared is None or bool(j.shared_with) == shared))


# ----------------------------------------------------------------------------------------- keys

class _Found(Exception):
    def __init__(self, entry: Entry):
        self.entry = entry


class _KeyProbe(Store):
    """A store that hands out entries as usual but stops at the first measurement entry, so a
    `measure.suite` function called with it reveals the key it caches under, computing nothing."""

    def entry(self, kind: str, key_dict) -> Entry:
        found = super().entry(kind, key_dict)
        if kind == "measure":
            raise _Found(found)
        return found


def measure_entry(exp: Experiment, fn: Callable, *args) -> Entry:
    """The cache entry `fn(exp, *args)` (a `measure.suite` function) reads and writes."""
    probe = Experiment(exp.config, store=_KeyProbe(exp.store.root), device="cpu", allow_training=False)
    try:
        fn(probe, *args)
    except _Found as found:
        return found.entry
    raise LthError(f"{fn.__name__} did not ask the store for a measurement entry")  # pragma: no cover


# ----------------------------------------------------------------------------------------- costs

def lanczos_matvecs(k: int, extra: int | None = None) -> int:
    """Hessian-vector products of `hessian.top_eigenpairs`: its bound, max(3 (k + extra), 200).

    The torch Lanczos stops earlier once the top k + extra Ritz pairs have converged (on the smoke
    MLP about 215 products at k = 100), so this is an upper bound, as the estimate should be.
    """
    nev = k + (max(2, k // 10) if extra is None else extra)
    return max(3 * nev, 200)


def _sizes(exp: Experiment) -> tuple[int, int, int]:
    """(train examples, test examples, evaluation training subset) of a lineage."""
    data = exp.config.data
    train, test = SPLIT_SIZES[data.dataset]
    train = getattr(data, "train_examples", None) or train
    return train, test, min(data.eval_train_examples, train)


def _evaluation_images(exp: Experiment) -> int:
    """`Experiment.evaluate_model`: the test split and the fixed training subset."""
    _, test, sub = _sizes(exp)
    return test + sub


def _path_images(exp: Experiment, s: suite.MeasureSettings) -> int:
    _, test, sub = _sizes(exp)
    bn = min(s.path.bn_examples, sub) if exp.config.model.name in BN_MODELS and s.path.bn_mode == "reestimate" else 0
    return s.path.points * (bn + test + sub)


def _hessian_images(exp: Experiment, s: suite.MeasureSettings) -> int:
    return min(s.hessian_examples, _sizes(exp)[0])


# ----------------------------------------------------------------------------------------- the plan

INPUTS = {"digits": ((1, 8, 8), 10), "mnist": ((1, 28, 28), 10), "cifar10": ((3, 32, 32), 10),
          "cifar100": ((3, 32, 32), 100), "imagenet": ((3, 224, 224), 1000)}


def _model_of(exp: Experiment):
    """The lineage's architecture on the CPU without loading its data (for counting weights)."""
    from .models import build_model

    shape, classes = INPUTS[exp.config.data.dataset]
    resolution = getattr(exp.config.data, "resolution", None)
    if resolution:
        shape = (shape[0], resolution, resolution)
    return build_model(exp.config.model, shape, classes, seed=0)


def _lineage_name(exp: Experiment) -> str:
    return f"{exp.config.recipe} k={exp.config.rewind_iteration} seed {exp.config.seed}"


def _level_id(exp: Experiment, level: int) -> str:
    return f"imp/{exp.key}/level{level:02d}"


def _rewind_id(exp: Experiment) -> str:
    return f"imp/{exp.key}/rewind"


class _Builder:
    def __init__(self, ctx: ClaimContext):
        self.ctx, self.s = ctx, ctx.settings
        self.plan = Plan(ctx.scale, "")

    # trainings
    def lineage(self, exp: Experiment, claim: str, upto: int | None = None) -> None:
        cfg, last = exp.config, self.ctx.last_level() if upto is None else upto
        self.plan.models.add((cfg.model.name, cfg.model.depth, cfg.model.width))
        deps: list[str] = []
        recipe, k = cfg.recipe, cfg.rewind_iteration
        if k > 0:
            self.plan.add(Job(_rewind_id(exp), "pretrain", f"{_lineage_name(exp)}: pretrain to k", [claim], [],
                              iterations=k, group=f"pretrain {recipe} k={k}", lineage=exp.key,
                              done=lambda e=exp: e.entry.has_tensors("rewind"), run=lambda e=exp: e.rewind_state()))
            deps = [_rewind_id(exp)]
        for level in range(last + 1):
            self.plan.add(Job(_level_id(exp, level), "level", f"{_lineage_name(exp)}: level {level}", [claim],
                              deps + ([_level_id(exp, level - 1)] if level else []),
                              iterations=cfg.train.iterations - k, images=_evaluation_images(exp),
                              group=f"level {recipe} k={k} L={level}", lineage=exp.key,
                              done=lambda e=exp, lv=level: e.is_done(lv), run=lambda e=exp, lv=level: e.run(lv)))

    def branch(self, exp: Experiment, spec: BranchSpec, claim: str, group: str | None) -> Job:
        b = Branch(exp, spec)
        cfg = exp.config
        deps = [_level_id(exp, spec.level)] + ([_rewind_id(exp)] if cfg.rewind_iteration else [])
        job = Job(f"branch/{b.entry.key}", spec.kind, f"{_lineage_name(exp)}: {spec.label}", [claim], deps,
                  iterations=cfg.train.iterations - cfg.rewind_iteration, images=_evaluation_images(exp),
                  group=group, lineage=exp.key, done=b.is_done, run=b.result, branch=(exp, spec))
        shared = _imp_level_reused(exp, spec, self.ctx.last_level())
        if shared is not None:  # issue 10: the p = 0.2 magnitude one-shot is IMP level L+1
            job.shared_with, job.iterations, job.images, job.group = _level_id(exp, shared), 0, 0, None
            job.deps, job.done = [_level_id(exp, shared)], (lambda e=exp, lv=shared: e.is_done(lv))
            job.run, job.branch = (lambda e=exp, lv=shared: e.run(lv)), None
        return self.plan.add(job)

    def branches(self, exp: Experiment, specs: list[BranchSpec], claim: str, name: str) -> list[Job]:
        """Specs trained through `train_together(exp, specs)`: groups of 16 in order, shared ones left out."""
        jobs = [self.branch(exp, spec, claim, None) for spec in specs]
        todo = [j for j in jobs if not j.shared_with and j.group is None]
        for i, j in enumerate(todo):
            j.group = f"{name} {_lineage_name(exp)} #{i // BRANCH_GROUP}"
        return jobs

    # measurements
    # names and costs a claim's `plan` needs for its own jobs
    def level_id(self, exp: Experiment, level: int) -> str:
        return _level_id(exp, level)

    def branch_id(self, exp: Experiment, spec: BranchSpec) -> str:
        return f"branch/{Branch(exp, spec).entry.key}"

    def eval_images(self, exp: Experiment) -> int:
        return _evaluation_images(exp)

    def model_of(self, exp: Experiment):
        return _model_of(exp)

    def measure(self, exp: Experiment, what: str, fn: Callable, args: tuple, claim: str, deps: list[str],
                label: str, **cost) -> Job:
        entry = measure_entry(exp, fn, *args)
        return self.plan.add(Job(f"measure/{entry.key}", what, f"{_lineage_name(exp)}: {label}",
                                 [claim], deps, lineage=exp.key,
                                 done=lambda en=entry: en.has_json("result.json") or en.has_tensors("correct"),
                                 run=lambda: fn(exp, *args), **cost))

    def level_correct(self, exp: Experiment, level: int, claim: str) -> None:
        self.measure(exp, "correct", suite.level_correct, (level,), claim, [_level_id(exp, level)],
                     f"correctness of level {level}", images=_evaluation_images(exp))

    def successive_correct(self, exp: Experiment, level: int, claim: str) -> None:
        self.measure(exp, "path", suite.successive_path_correct, (level, self.s), claim,
                     [_level_id(exp, level), _level_id(exp, level + 1)], f"path level {level} -> {level + 1}",
                     images=_path_images(exp, self.s))

    def branch_path_correct(self, exp: Experiment, spec: BranchSpec, claim: str) -> None:
        reused = _imp_level_reused(exp, spec, self.ctx.last_level())
        deps = [_level_id(exp, spec.level), _level_id(exp, reused) if reused is not None
                else f"branch/{Branch(exp, spec).entry.key}"]
        self.measure(exp, "path", suite.branch_path_correct, (spec, self.s), claim, deps, f"path to {spec.label}",
                     images=_path_images(exp, self.s))

    def successive(self, exp: Experiment, level: int, claim: str) -> None:
        self.measure(exp, "path", suite.successive_barrier, (level, self.s), claim,
                     [_level_id(exp, level), _level_id(exp, level + 1)], f"path level {level} -> {level + 1}",
                     images=_path_images(exp, self.s))

    def branch_path(self, exp: Experiment, spec: BranchSpec, claim: str) -> None:
        b = Branch(exp, spec)
        if _imp_level_reused(exp, spec, self.ctx.last_level()) is not None:
            # the branch is IMP's next level: its path is the successive path, read from that job
            self.successive(exp, spec.level, claim)
            successive = measure_entry(exp, suite.successive_barrier, spec.level, self.s)
            self.measure(exp, "path", suite.branch_barrier, (spec, self.s), claim,
                         [f"measure/{successive.key}"], f"path to {spec.label} (the successive path)")
            return
        self.measure(exp, "path", suite.branch_barrier, (spec, self.s), claim,
                     [_level_id(exp, spec.level), f"branch/{b.entry.key}"], f"path to {spec.label}",
                     images=_path_images(exp, self.s))

    def hessian(self, exp: Experiment, level: int, claim: str) -> None:
        s = self.s
        self.measure(exp, "hessian", suite.hessian, (level, s), claim, [_level_id(exp, level)],
                     f"Hessian level {level}",
                     hvps=lanczos_matvecs(s.hessian_k) + (s.density_probes - 1) * s.density_steps,
                     hvp_images=_hessian_images(exp, self.s))

    def curvature(self, exp: Experiment, level: int, claim: str) -> None:
        s = self.s
        self.measure(exp, "curvature", suite.pruning_direction_curvature, (level, s), claim,
                     [_level_id(exp, level)], f"pruning-direction curvature level {level}",
                     hvps=2 + s.random_directions, hvp_images=_hessian_images(exp, s))


def _imp_level_reused(exp: Experiment, spec: BranchSpec, last: int) -> int | None:
    """The IMP level a branch is the same experiment as (`Branch.imp_level`: read, not trained),
    when the lineage's plan reaches it."""
    level = Branch(exp, spec).imp_level
    return level if level is not None and level <= last else None


def claims_plan(ctx: ClaimContext) -> Plan:
    """Every experiment `pytest claims/` asks for under `ctx`, in the order the claims ask for them."""
    b = _Builder(ctx)
    plan = b.plan
    last, levels = ctx.last_level(), ctx.branch_levels()
    rewinds = {r: ctx.rewinds_for(r) for r in ctx.recipe_names()}
    plan.description = (f"--scale {ctx.scale}: {', '.join(ctx.recipe_names())}; rewinds "
                        f"{'; '.join(f'{r} {list(k)}' for r, k in rewinds.items())}; {ctx.n_replicates()} replicates; "
                        f"levels 0-{last}; branch levels {list(levels)}; path grid {ctx.settings.path.points} points"
                        + (f"; --set {' '.join(ctx.overrides)}" if ctx.overrides else ""))
    for recipe in ctx.recipe_names():
        late = ctx.late_rewind(recipe)
        # the scale's premise (evidence.check_premise): SGD-noise twins at level 0 of rewind 0 and the late
        # rewind, over the premise's replicates (seeds beyond the claims' own train level 0 only)
        if ctx.plan.premise:
            for rewind in sorted({0, late}):
                for seed in range(ctx.premise_replicates()):
                    exp = ctx.experiment(recipe, rewind, seed)
                    b.lineage(exp, "premise", upto=0 if seed >= ctx.n_replicates() else None)
                    spec = suite.sgd_noise_spec(exp, 0, b.s)
                    b.branches(exp, [spec], "premise", "premise SGD-noise twin")
                    b.branch_path_correct(exp, spec, "premise")
        for claim in planned_claims():  # each claim's own jobs (claims sharing experiments planned once)
            claim.plan(b, recipe)
    plan.refresh()
    return plan


def run_jobs(plan: Plan, job_ids: Iterable[str], log: Callable[[str], None] = lambda msg: None) -> list[str]:
    """Produce the listed jobs through the ordinary cached code, in the order given; return those run.

    Jobs already cached are skipped; branch trainings of one lineage go to `train_together` in one
    call (replicas side by side, as the claims train them); everything waits on the cache's locks,
    so a job another process is producing is read, not trained twice.
    """
    from .measure.branches import train_together

    jobs = [plan.jobs[i] for i in job_ids]
    todo = [j for j in jobs if not (j.done and j.done())]
    by_lineage: dict[str, tuple] = {}
    for j in todo:
        if j.branch is not None:
            exp, spec = j.branch
            by_lineage.setdefault(exp.key, (exp, []))[1].append(spec)
    ran = []
    for j in todo:
        if j.branch is not None and j.branch[0].key in by_lineage:
            exp, specs = by_lineage.pop(j.branch[0].key)
            log(f"training {len(specs)} branch(es) of {_lineage_name(exp)} together")
            train_together(exp, specs)
        if j.done and j.done():
            ran.append(j.id)
            continue
        if j.run is None:
            log(f"skipped {j.id} ({j.label}): {j.note or 'produced by its claim, not by a job'}")
            continue
        log(f"running {j.id} ({j.label})")
        j.run()
        ran.append(j.id)
    return ran


# ----------------------------------------------------------------------------------------- time

@dataclass(frozen=True)
class Throughput:
    """Device speed in the units of the plan's costs."""

    source: str  # a bench JSON path, or "assumption: ..."
    s_per_iteration: float  # one model, one SGD step at the recipe's batch size
    replica_time: tuple[tuple[int, float], ...]  # (R, time of one step of R replicas / one of a single model)
    s_per_eval_image: float
    s_per_hvp_image: float
    startup_s: float  # process start, CUDA context, data loading, report
    per_job_s: float  # model building, cache writes and reads per job
    model: tuple = ("cifar_resnet", 20, 16)  # (name, depth, width) whose speed this is

    def replica_factor(self, r: int) -> float:
        """Time of R replicas together in units of one: linear between measured points, then extrapolated."""
        pts = sorted(self.replica_time)
        if r <= 1:
            return 1.0
        for (r0, t0), (r1, t1) in zip(pts, pts[1:]):
            if r0 <= r <= r1:
                return t0 + (t1 - t0) * (r - r0) / (r1 - r0)
        (r0, t0), (r1, t1) = pts[-2], pts[-1]
        return t1 + (t1 - t0) / (r1 - r0) * (r - r1)


# The issue's own figures for an H100 (issue 10 "Targets"): a ResNet-20 CIFAR-10 epoch (390 steps of
# batch 128) in 0.5 s, 8 replicas for 3x the time of one. The rest is ours: a forward pass in evaluation
# costs a third of a training step per image (forward ~ 1/3 of forward + backward), a Hessian-vector
# product twice a training step per image (forward-over-reverse: a forward and a backward with duals),
# 30 s for start-up, data loading and the report, 0.05 s per job for model building and cache I/O.
ASSUMED_H100 = Throughput(
    source="assumption (issue 10 targets, no GPU benchmark yet): 0.5 s per ResNet-20 CIFAR-10 epoch on one H100, "
           "8 replicas at 3x the time of one; evaluation 1/3 and a Hessian-vector product 2x a training step per "
           "image; 30 s start-up, data loading and report; 0.05 s per job",
    s_per_iteration=0.5 / 390, replica_time=((1, 1.0), (8, 3.0)), s_per_eval_image=0.5 / 390 / 128 / 3,
    s_per_hvp_image=2 * 0.5 / 390 / 128, startup_s=30.0, per_job_s=0.05)


# Measured on this project's 2-core AMD EPYC machine (torch 2.13.0 CPU, one intra-op thread per
# process, the cpu recipe: ResNet-8 width 8 on 16x16 CIFAR-10): 42 CPU-s per 936-iteration training
# with its evaluation, ~8 CPU-s per 11-point path with BN re-estimated (154,000 images). On a CPU the
# replicas of a group train one after another (`replicas.resolve_execution`: "loop"), so R replicas
# cost R times one. The per-job overhead (model building, safetensors writes, BN re-estimation set-up
# and workers waiting on each other's locks) is calibrated on two cold runs with `-n 2`: levels 0-9
# measured 40.6 min (this model: 39.2) and levels 0-15, 51.4 min (this model: 53.5).
MEASURED_CPU_RESNET8 = Throughput(
    source="measured on a 2-core AMD EPYC (torch 2.13, 1 thread per worker) for the cpu recipe: 0.044 s per SGD "
           "step, 52 us per evaluated image, 1.0 s overhead per job, replicas one after another",
    s_per_iteration=0.044, replica_time=((1, 1.0), (8, 8.0)), s_per_eval_image=52e-6,
    s_per_hvp_image=2 * 0.044 / 128, startup_s=20.0, per_job_s=1.0, model=("cifar_resnet", 8, 8))


def throughput_from_bench(path: str | Path) -> Throughput:
    """Throughput measured by `lth-checks bench` (its default replica execution, fp32 training)."""
    try:
        doc = json.loads(Path(path).read_text())
        f = doc["figures"]
        train = f["train"]
        step = min(v["s_per_step"] for k, v in train.items() if k.startswith("ours_fp32"))
        reps = [(int(x["R"]), x["s_per_step"] / step) for x in f["replicas"] if x.get("default")]
        grid, s = f["barrier_grid"], doc["settings"]
        best_grid = min(v["s"] for k, v in grid.items() if isinstance(v, dict) and "s" in v)
        eval_images = s["path_points"] * (2 * s["path_examples"] + s["path_bn_examples"])
        hvp = max((v.get("hvps_per_s") or 0) for v in f["hvp"].values() if isinstance(v, dict))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path} is not a `lth-checks bench` JSON ({type(e).__name__}: {e}); "
                          "write one with `lth-checks bench --out reports/bench/<device>.json`") from None
    if not hvp:
        raise ConfigError(f"{path} has no Hessian-vector product timing")
    return Throughput(source=f"{path} ({doc['device']['name']}, torch {doc.get('torch_version')}"
                             + (", quick settings" if doc.get("quick") else "") + ")",
                      s_per_iteration=step, replica_time=tuple(sorted({(1, 1.0), *reps})),
                      s_per_eval_image=best_grid / eval_images, s_per_hvp_image=1 / hvp / f["hvp"]["examples"],
                      startup_s=ASSUMED_H100.startup_s, per_job_s=ASSUMED_H100.per_job_s)


def find_bench(folder: str | Path = "reports/bench", device_type: str = "cuda") -> Path | None:
    """The newest full (not --quick) bench JSON of a device type, if any."""
    best = None
    for p in sorted(Path(folder).glob("*.json")):
        try:
            doc = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if doc.get("device", {}).get("type") == device_type and not doc.get("quick"):
            if best is None or p.stat().st_mtime > best.stat().st_mtime:
                best = p
    return best


def throughput_for(device_type: str = "cuda", bench: str | Path | None = None,
                   folder: str | Path = "reports/bench", models: Iterable[tuple] = ()) -> Throughput:
    """An explicit bench JSON; else, on a CPU whose plan trains only the cpu recipe's model,
    `MEASURED_CPU_RESNET8` (a bench JSON times ResNet-20, a model this plan does not train); else the
    newest full bench JSON for the device type; else `ASSUMED_H100`."""
    if bench:
        return throughput_from_bench(bench)
    if device_type == "cpu" and models and set(models) <= {MEASURED_CPU_RESNET8.model}:
        return MEASURED_CPU_RESNET8
    found = find_bench(folder, device_type)
    return throughput_from_bench(found) if found else ASSUMED_H100


def job_seconds(plan: Plan, tp: Throughput, *, only_todo: bool = True, grouped: bool = True) -> dict[str, float]:
    """Estimated device seconds per job; a replica group's time is split over its members.

    `grouped=False`: every training alone, as where each lineage is a job on its own GPU.
    """
    jobs = [j for j in plan.jobs.values() if not (only_todo and j.cached)]
    groups: dict[str, list[Job]] = {}
    for j in jobs:
        if grouped and j.what in TRAINING_KINDS and j.group and not j.shared_with:
            groups.setdefault(j.group, []).append(j)
    out = {}
    for j in jobs:
        if j.shared_with:
            out[j.id] = 0.0
            continue
        t = tp.per_job_s + j.images * tp.s_per_eval_image + j.hvps * j.hvp_images * tp.s_per_hvp_image
        members = groups.get(j.group or "", [j])
        if j.iterations:
            # a group of 2+ trains together; a lone training runs on its own (the code does the same)
            r = len(members) if len(members) >= 2 else 1
            t += max(m.iterations for m in members) * tp.s_per_iteration * tp.replica_factor(r) / r
        out[j.id] = t
    return out


@dataclass
class Totals:
    rows: list[dict]
    seconds_todo: float
    seconds_cold: float
    startup_s: float

    def wall_s(self, workers: int = 1, *, todo: bool = False) -> float:
        """Wall-clock seconds with `workers` processes sharing the work, start-up included."""
        return (self.seconds_todo if todo else self.seconds_cold) / workers + self.startup_s


ROWS = (("IMP pretraining to k", ("pretrain",), False), ("IMP levels", ("level",), False),
        ("SGD-noise twins", ("sgd_noise",), False), ("perturbations", ("perturb",), False),
        ("one-shot prunes", ("oneshot",), False), ("one-shot = IMP level L+1 (shared)", ("oneshot",), True),
        ("path evaluations", ("path",), None), ("Hessians", ("hessian",), None),
        ("direction curvatures", ("curvature",), None), ("weight statistics", ("weights",), None),
        ("no-retraining chains", ("chain",), None),
        ("correctness bits", ("correct",), None))


def totals(plan: Plan, tp: Throughput) -> Totals:
    cold = job_seconds(plan, tp, only_todo=False)
    todo = job_seconds(plan, tp)
    rows = []
    for name, kinds, shared in ROWS:
        js = [j for j in plan.jobs.values() if j.what in kinds and (shared is None or bool(j.shared_with) == shared)]
        if not js:
            continue
        rows.append({"what": name, "count": len(js), "cached": sum(j.cached for j in js),
                     "iterations": sum(j.iterations for j in js),
                     "images": sum(j.images for j in js), "hvps": sum(j.hvps for j in js),
                     "seconds_cold": sum(cold[j.id] for j in js), "seconds_todo": sum(todo.get(j.id, 0.0) for j in js)})
    return Totals(rows, sum(todo.values()), sum(cold.values()), tp.startup_s)


def _epoch_iterations(ctx: ClaimContext) -> int | None:
    """Iterations per epoch of the run's first recipe (its training subset where it has one)."""
    from .recipes import CIFAR_TRAIN, get_recipe, iterations_per_epoch

    cfg = get_recipe(ctx.recipe_names()[0]).config
    if not cfg.data.dataset.startswith("cifar"):
        return None
    return iterations_per_epoch(getattr(cfg.data, "train_examples", 0) or CIFAR_TRAIN, cfg.train.batch_size)


def format_totals(plan: Plan, tp: Throughput, ipe: int | None = None, workers: int = 1) -> str:
    """The table `lth-checks plan` and the pytest run print; `workers` processes share the work
    (pytest-xdist's `-n`), so the wall time is the work divided by them (a lower bound where one
    lineage's levels, which run in order, take longer than that share)."""
    t = totals(plan, tp)
    lines = [f"plan for {plan.description}",
             f"{'':<36}{'count':>7}{'cached':>8}{'iterations':>12}{'epochs' if ipe else '':>8}{'eval images':>14}"
             f"{'HVPs':>8}{'est. s':>9}"]
    for r in t.rows:
        ep = f"{r['iterations'] / ipe:>8.0f}" if ipe else f"{'':>8}"
        lines.append(f"{r['what']:<36}{r['count']:>7}{r['cached']:>8}{r['iterations']:>12,}{ep}{r['images']:>14,}"
                     f"{r['hvps']:>8,}{r['seconds_cold']:>9.0f}")
    n = len(plan.jobs)
    it = sum(r["iterations"] for r in t.rows)
    lines.append(f"{'total':<36}{n:>7}{sum(r['cached'] for r in t.rows):>8}{it:>12,}"
                 + (f"{it / ipe:>8.0f}" if ipe else f"{'':>8}")
                 + f"{sum(r['images'] for r in t.rows):>14,}{sum(r['hvps'] for r in t.rows):>8,}{t.seconds_cold:>9.0f}")
    on, shared = (f" on {workers} workers", " shared by them") if workers > 1 else ("", "")
    lines.append(f"estimated device time{on} from a cold cache: {_minutes(t.wall_s(workers))} "
                 f"({t.seconds_cold:.0f} s of work{shared} + {t.startup_s:.0f} s start-up, data loading and report); "
                 f"still to do with this cache: {_minutes(t.wall_s(workers, todo=True))}")
    lines.append(f"throughput: {tp.source}")
    if plan.models - {tp.model}:
        name, depth, width = tp.model
        lines.append(f"(the throughput is that of {name} depth {depth} width {width}; this plan trains other models "
                     "too, so its time is indicative only)")
    return "\n".join(lines)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def format_jobs(plan: Plan, tp: Throughput) -> str:
    secs = job_seconds(plan, tp, only_todo=False)
    lines = []
    for j in plan.jobs.values():
        state = "cached" if j.cached else ("shared" if j.shared_with else "to do")
        cost = ", ".join(x for x in (f"{j.iterations} it" if j.iterations else "",
                                     f"{j.images:,} images" if j.images else "",
                                     f"{j.hvps} HVPs x {j.hvp_images}" if j.hvps else "") if x)
        extra = f" = {j.shared_with}" if j.shared_with else (f" [{j.group}]" if j.group else "")
        lines.append(f"{state:<6} {j.id}  {j.label}  claims {','.join(j.claims)}  {cost or '-'}  "
                     f"~{secs[j.id]:.1f} s{extra}  deps {len(j.deps)}" + (f"  ({j.note})" if j.note else ""))
    return "\n".join(lines)


def plan_json(plan: Plan, tp: Throughput, workers: int = 1) -> dict:
    t = totals(plan, tp)
    return {"scale": plan.scale, "description": plan.description, "throughput": asdict(tp),
            "totals": t.rows, "seconds_cold": t.seconds_cold, "seconds_todo": t.seconds_todo, "workers": workers,
            "startup_s": t.startup_s, "estimate_cold_s": t.wall_s(workers),
            "jobs": [j.to_dict() for j in plan.jobs.values()]}


def progress_weights(plan: Plan, tp: Throughput) -> dict[str, float]:
    """Estimated seconds of each job still to do (the pytest progress bar advances by these)."""
    return {k: v for k, v in job_seconds(plan, tp).items() if v > 0 and not math.isnan(v)}


# ----------------------------------------------------------------------------------------- selection and progress

def claims_of_test(nodeid: str) -> set[str]:
    """The planner tags of the claims a collected claims test asks for (`Claim.owns_test`)."""
    from .claim import claims_of_test as of_test

    return of_test(nodeid)


def select(plan: Plan, claims: set[str]) -> Plan:
    """The jobs the given claims ask for, with everything they depend on. The scale's premise check
    gates every claim (`ClaimContext.premise_gate`), so its jobs come with any selection."""
    wanted = set(claims) | {"premise"} if claims else set()
    keep = {j.id for j in plan.jobs.values() if set(j.claims) & wanted}
    stack = list(keep)
    while stack:
        for d in plan.jobs[stack.pop()].deps:
            if d in plan.jobs and d not in keep:
                keep.add(d)
                stack.append(d)
    return Plan(plan.scale, plan.description, {k: j for k, j in plan.jobs.items() if k in keep}, plan.models)


class Progress:
    """One progress bar over a whole claims run: polls the cache for finished jobs and advances by
    their estimated seconds, so the ETA (from tqdm's observed rate) covers trainings, paths and
    Hessians alike, also when xdist workers do the work."""

    def __init__(self, plan: Plan, tp: Throughput, file, interval: float = 2.0):
        import threading

        from tqdm import tqdm

        self.plan, self.weights = plan, progress_weights(plan, tp)
        self.bar = tqdm(total=round(sum(self.weights.values()), 1), desc="lth-checks run", unit="est-s",
                        file=file, leave=True,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} est. s "
                                   "[{elapsed}<{remaining}]")
        self.interval, self._stop = interval, threading.Event()
        self._thread = threading.Thread(target=self._run, name="lth-checks progress", daemon=True)
        self._thread.start()

    def _update(self) -> None:
        done = 0.0
        for job_id, w in self.weights.items():
            job = self.plan.jobs[job_id]
            if job.done and job.done():
                done += w
        self.bar.n = round(done, 1)
        self.bar.refresh()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._update()
            except Exception:  # noqa: BLE001 - a progress bar must never break the run it reports on
                pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self._update()
        except Exception:  # noqa: BLE001
            pass
        self.bar.close()
