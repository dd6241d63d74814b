"""The measurements behind the claims, per level of an IMP lineage, each cached in the store.

Every function takes an `Experiment` and a level, trains whatever it needs through the cache
(levels, branches) and stores its own result as JSON under a `measure/<key>` entry keyed by the
parent configuration, the level and the measurement settings, so claims and reruns share them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .. import stats
from ..config import to_dict
from ..imp import Experiment
from ..pruning import alive_count, prunable_weights, prune
from ..training import derive_seed, evaluate
from .branches import Branch, BranchSpec
from .connectivity import PathResult, PathSettings, evaluate_path, evaluate_path_batched
from .hessian import RestrictedHessian, rayleigh_quotient, summarize_hessian
from .perturbation import gaussian_direction
from .theory import predicted_prune_limit, projection_delta, projection_distance
from .weights import level_statistics, no_retrain_chain


@dataclass(frozen=True)
class MeasureSettings:
    """Settings of every instrument; recorded with each result ("(ours)" defaults of CLAIMS.md)."""

    path: PathSettings = field(default_factory=PathSettings)
    hessian_examples: int = 4096  # fixed training subset for curvature (CLAIMS.md: >= 4,096)
    hessian_k: int = 100  # top eigenvalues by Lanczos (CLAIMS.md: k ~ 100 or more for the theory)
    density_probes: int = 3  # SLQ probes of the bulk (ours; the top-k run is one; they give the trace too)
    density_steps: int = 30  # Lanczos steps per SLQ probe (ours; see hessian.summarize_hessian)
    theory_eps: float = 0.1  # loss tolerance (nats) of the sublevel set in the quadratic model (ours)
    p_grid: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 0.9)
    random_directions: int = 5  # random pruning directions averaged against the magnitude one (ours)
    seed: int = 0


def _cached(exp: Experiment, what: str, params: dict, compute: Callable[[], dict]) -> dict:
    entry = exp.store.entry("measure", {"parent": exp.config.key_dict(), "what": what, **to_dict(params)})
    if entry.has_json("result.json"):
        return entry.read_json("result.json")
    with entry.lock():
        if not entry.has_json("result.json"):
            entry.write_json("result.json", compute())
    return entry.read_json("result.json")


def _path(exp: Experiment, state_a: dict, state_b: dict, settings: PathSettings) -> dict:
    """The path's curves; on a GPU all grid points are evaluated at once (vmap over replicas)."""
    fn = evaluate_path_batched if exp.device.type == "cuda" else evaluate_path
    return fn(exp.build_model(), state_a, state_b, exp.dataset.test, exp.eval_train, settings,
              exp.config.train.precision).to_dict()


def _successive_path(exp: Experiment, level: int, s: MeasureSettings) -> dict:
    return _cached(exp, "successive_path", {"level": level, "path": asdict(s.path)},
                   lambda: _path(exp, exp.solution(level), exp.solution(level + 1), s.path))


def successive_barrier(exp: Experiment, level: int, s: MeasureSettings = MeasureSettings()) -> PathResult:
    """Path from w_L to w_{L+1} (the weights pruned at L+1 shrink to zero along it)."""
    return PathResult.from_dict(_successive_path(exp, level, s))


def branch_barrier(exp: Experiment, spec: BranchSpec, s: MeasureSettings = MeasureSettings()) -> dict:
    """Path from the level-L solution to a branch's solution, with the branch's own metrics.

    A branch that is IMP's level L+1 (`Branch.imp_level`) reuses the successive path.
    """
    branch = Branch(exp, spec)

    def compute() -> dict:
        if branch.imp_level == spec.level + 1:
            return {"branch": branch.result().to_dict(), "path": _successive_path(exp, spec.level, s)}
        return {"branch": branch.result().to_dict(),
                "path": _path(exp, exp.solution(spec.level), branch.solution(), s.path)}

    return _cached(exp, "branch_path", {"branch": spec.key_dict(), "path": asdict(s.path)}, compute)


def perturb_spec(level: int, c: float, s: MeasureSettings = MeasureSettings()) -> BranchSpec:
    return BranchSpec("perturb", level, c=c, noise_seed=s.seed)


def sgd_noise_spec(exp: Experiment, level: int, s: MeasureSettings = MeasureSettings()) -> BranchSpec:
    """The data-order seed of the SGD-noise twin: offset from the replicate's own seed."""
    return BranchSpec("sgd_noise", level, data_seed=exp.config.seed + 1_000 + s.seed)


def oneshot_spec(level: int, fraction: float, strategy: str, s: MeasureSettings = MeasureSettings()) -> BranchSpec:
    return BranchSpec("oneshot", level, fraction=fraction, strategy=strategy, noise_seed=s.seed)


def perturbation_barrier(exp: Experiment, level: int, c: float, s: MeasureSettings = MeasureSettings()) -> dict:
    return branch_barrier(exp, perturb_spec(level, c, s), s)


def sgd_noise_barrier(exp: Experiment, level: int, s: MeasureSettings = MeasureSettings()) -> dict:
    """Two copies from m_L * w_k that differ only in data order (LMC's instability test)."""
    return branch_barrier(exp, sgd_noise_spec(exp, level, s), s)


def _hessian_inputs(exp: Experiment, s: MeasureSettings):
    return exp.dataset.train.subset(s.hessian_examples, seed=s.seed)


def hessian_mask(exp: Experiment, level: int) -> dict:
    """The coordinates of the Hessian: alive weights of the layers pruning ranks (CLAIMS.md, flatness claim:
    "restricted to the alive coordinates"); excluded layers are left out, as from the theory's alive count."""
    mask = exp.mask(level)
    return {n: mask[n] for n in exp.ranked_names}


def hessian(exp: Experiment, level: int, s: MeasureSettings = MeasureSettings()) -> dict:
    """Top eigenvalues (Lanczos), bulk density (SLQ), power-iteration top-1 and trace of the training loss at w_L.

    `n_examples` in the result is the number of training examples really used (the whole
    split when it is smaller than `s.hessian_examples`).
    """
    def compute() -> dict:
        sub = _hessian_inputs(exp, s)
        summary = summarize_hessian(exp.solution_model(level), hessian_mask(exp, level), sub.inputs, sub.targets,
                                    k=s.hessian_k, density_probes=s.density_probes, density_steps=s.density_steps,
                                    seed=s.seed, power_iters=0)
        return summary.to_dict()

    return _cached(exp, "hessian", {"level": level, "examples": s.hessian_examples, "k": s.hessian_k,
                                    "density_probes": s.density_probes, "density_steps": s.density_steps,
                                    "seed": s.seed, "coordinates": "ranked", "spectrum": "lanczos+slq/2"}, compute)


def prune_limit(exp: Experiment, level: int, strategy: str, s: MeasureSettings = MeasureSettings(),
                tail: str = "density") -> dict:
    """Predicted p* of the quadratic model at w_L for `strategy` ('magnitude' or 'random').

    tail="density": top-k eigenvalues exact, the rest from the SLQ density (CLAIMS.md, flatness claim).
    tail="zero": eigenvalues beyond the top k are 0 (the top-k form; an upper bound on p*).
    tail="trace": the trace not explained by the top k is spread evenly over the remaining
    dimensions (ours; a less optimistic bulk).
    """
    if tail not in ("density", "zero", "trace"):
        raise ValueError(f"unknown spectrum tail {tail!r}")
    h = hessian(exp, level, s)
    model = exp.solution_model(level)
    mask = hessian_mask(exp, level)
    weights = prunable_weights(model)
    alive = alive_count(mask)
    if h["dim"] != alive:
        raise AssertionError(f"Hessian over {h['dim']} coordinates, theory counts {alive} alive weights")
    eig = list(h["top_eigenvalues"])
    if tail == "trace":
        rest = max(h["trace_mean"] - sum(x for x in eig if x > 0), 0.0)
        remaining = max(h["dim"] - len(eig), 1)
        eig = eig + [rest / remaining] * remaining
    seed = derive_seed(exp.config.seed, level, s.seed)
    limit = predicted_prune_limit(eig, s.theory_eps, alive,
                                  lambda p: projection_distance(weights, mask, p, strategy, seed=seed), s.p_grid,
                                  density=h["density"] if tail == "density" else None)
    return {**limit.to_dict(), "strategy": strategy, "tail": tail}


def pruning_direction_curvature(exp: Experiment, level: int, s: MeasureSettings = MeasureSettings()) -> dict:
    """Rayleigh quotients of the magnitude-pruning direction and of random pruning directions (flatness claim, c).

    "A random one of the same size" is a random variable: its curvature is averaged over
    `s.random_directions` draws (each removing the same number of weights), and every draw is kept.
    """
    def compute() -> dict:
        model = exp.solution_model(level)
        mask = exp.mask(level)
        pool = {n: m for n, m in mask.items() if n not in exp.excluded}
        weights = prunable_weights(model)
        sub = _hessian_inputs(exp, s)
        h = RestrictedHessian(model, mask, sub.inputs, sub.targets)
        p = exp.config.prune.fraction
        seed = derive_seed(exp.config.seed, level, s.seed)

        def measured(d: dict) -> dict:
            full = {n: d.get(n, weights[n] * 0) for n in mask}
            norm = float(sum(v.double().square().sum() for v in full.values()) ** 0.5)
            return {"rayleigh": rayleigh_quotient(h, full), "norm": norm}

        out = {"magnitude": measured(projection_delta(weights, pool, p, "magnitude"))}
        draws = [measured(projection_delta(weights, pool, p, "random", seed=derive_seed(seed, i)))
                 for i in range(s.random_directions)]
        out["random_prune"] = {"rayleigh": float(np.mean([d["rayleigh"] for d in draws])),
                               "norm": float(np.mean([d["norm"] for d in draws])), "draws": draws}
        iso = gaussian_direction(mask, out["magnitude"]["norm"], seed)
        out["gaussian"] = {"rayleigh": rayleigh_quotient(h, iso), "norm": out["magnitude"]["norm"]}
        return out

    return _cached(exp, "direction_curvature", {"level": level, "examples": s.hessian_examples, "seed": s.seed,
                                                "random_directions": s.random_directions, "rng": 2}, compute)


def oneshot(exp: Experiment, level: int, fraction: float, strategy: str,
            s: MeasureSettings = MeasureSettings()) -> dict:
    """One-shot prune of w_L by `fraction`, rewind, retrain; with the path back to w_L."""
    return branch_barrier(exp, oneshot_spec(level, fraction, strategy, s), s)


def weight_statistics(exp: Experiment, level: int) -> dict:
    return _cached(exp, "weight_statistics", {"level": level}, lambda: level_statistics(exp, level))


def no_retraining(exp: Experiment, level: int, steps: int) -> list[dict]:
    return _cached(exp, "no_retrain_chain", {"level": level, "steps": steps},
                   lambda: {"rows": no_retrain_chain(exp, level, steps)})["rows"]


def measure_level(exp: Experiment, level: int, s: MeasureSettings = MeasureSettings(),
                  what: tuple[str, ...] = ("barrier", "perturb", "hessian", "theory", "weights")) -> dict:
    """The per-level summary of `lth-checks measure` (needs levels L and L+1 of the lineage)."""
    row: dict = {"level": level, "density": exp.result(level).density,
                 "test_error": exp.result(level).test_error}
    if "barrier" in what:
        path = successive_barrier(exp, level, s)
        row.update(next_test_error=exp.result(level + 1).test_error, barrier_next=path.barrier_test,
                   barrier_next_train=path.barrier_train)
    if "perturb" in what:
        row["barrier_perturb_c1"] = PathResult.from_dict(perturbation_barrier(exp, level, 1.0, s)["path"]).barrier_test
    if "hessian" in what or "theory" in what:
        h = hessian(exp, level, s)
        row.update(top_eigenvalue=h["top_eigenvalues"][0], hessian_trace=h["trace_mean"])
    if "theory" in what:
        row["p_star_magnitude"] = prune_limit(exp, level, "magnitude", s)["p_star"]
        row["p_star_random"] = prune_limit(exp, level, "random", s)["p_star"]
    if "weights" in what:
        w = weight_statistics(exp, level)
        row.update(relative_projection_length=w["relative_projection_length"],
                   projected_test_error=w["projected_test_error"],
                   refill_below_threshold=w["refill_fraction_below_threshold"],
                   new_small_weight_share=w["new_small_weight_share"])
    return row


# ------------------------------------------------------------------ per-example correctness (packed bits)

CORRECT_SPLITS = ("test", "train")


def _cached_correct(exp: Experiment, what: str, params: dict,
                    compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-example correctness on the test set and the fixed training subset, cached as packed bits.

    A separate `measure` entry per network or path, so the evidence of a verdict can be recomputed
    (and exported) without weights; the IMP and branch entries are not touched.
    Arrays are bool, (examples,) for a network and (points, examples) for a path.
    """
    entry = exp.store.entry("measure", {"parent": exp.config.key_dict(), "what": what, **to_dict(params)})

    def read() -> dict[str, np.ndarray]:
        tensors, meta = entry.read_tensors("correct")
        return {k: stats.unpack(tensors[k].numpy(), int(meta[f"n_{k}"])) for k in CORRECT_SPLITS}

    if entry.has_tensors("correct"):
        return read()
    with entry.lock():
        if not entry.has_tensors("correct"):
            arrays = compute()
            entry.write_tensors("correct", {k: torch.from_numpy(stats.pack(arrays[k])) for k in CORRECT_SPLITS},
                                metadata={f"n_{k}": str(arrays[k].shape[-1]) for k in CORRECT_SPLITS})
    return read()


def _model_correct(exp: Experiment, model) -> dict[str, np.ndarray]:
    prec = exp.config.train.precision
    return {"test": evaluate(model, exp.dataset.test, precision=prec, per_example=True).correct,
            "train": evaluate(model, exp.eval_train, precision=prec, per_example=True).correct}


def level_correct(exp: Experiment, level: int) -> dict[str, np.ndarray]:
    """Correctness of the level-L solution w_L."""
    return _cached_correct(exp, "correct_level", {"level": level},
                           lambda: _model_correct(exp, exp.solution_model(level)))


def branch_correct(exp: Experiment, spec: BranchSpec) -> dict[str, np.ndarray]:
    """Correctness of a branch's solution."""
    branch = Branch(exp, spec)
    return _cached_correct(exp, "correct_branch", {"branch": spec.key_dict()},
                           lambda: _model_correct(exp, exp.model_with(branch.solution())))


def projected_correct(exp: Experiment, level: int) -> dict[str, np.ndarray]:
    """Correctness of P(w_L) = m_{L+1} * w_L (IMP's projection, no retraining)."""
    return _cached_correct(exp, "correct_projected", {"level": level},
                           lambda: _model_correct(exp, exp.model_with(exp.solution(level), exp.mask(level + 1))))


def chain_correct(exp: Experiment, level: int, steps: int) -> dict[str, np.ndarray]:
    """Correctness of the last network of the no-retraining chain from w_L (same cuts as
    `weights.no_retrain_chain`)."""
    def compute() -> dict[str, np.ndarray]:
        cfg = exp.config.prune
        state, mask = exp.solution(level), exp.mask(level)
        weights = prunable_weights(exp.model_with(state, mask))
        model = None
        for _ in range(steps):
            mask = prune(weights, mask, cfg.fraction, cfg.strategy, exp.excluded)
            model = exp.model_with(state, mask)
            weights = prunable_weights(model)
        return _model_correct(exp, model)

    return _cached_correct(exp, "correct_chain", {"level": level, "steps": steps}, compute)


def _path_correct(exp: Experiment, state_a, state_b, settings: PathSettings) -> dict[str, np.ndarray]:
    """Per grid point correctness along a path (evaluated point by point, also on a GPU: the bits are
    measured once per path and cached)."""
    out: dict[str, list] = {}
    evaluate_path(exp.build_model(), state_a, state_b, exp.dataset.test, exp.eval_train, settings,
                  exp.config.train.precision, correct=out)
    return {k: np.stack(v) for k, v in out.items()}


def successive_path_correct(exp: Experiment, level: int,
                            s: MeasureSettings = MeasureSettings()) -> dict[str, np.ndarray]:
    return _cached_correct(exp, "correct_successive_path", {"level": level, "path": asdict(s.path)},
                           lambda: _path_correct(exp, exp.solution(level), exp.solution(level + 1), s.path))


def branch_path_correct(exp: Experiment, spec: BranchSpec,
                        s: MeasureSettings = MeasureSettings()) -> dict[str, np.ndarray]:
    branch = Branch(exp, spec)
    return _cached_correct(exp, "correct_branch_path", {"branch": spec.key_dict(), "path": asdict(s.path)},
                           lambda: _path_correct(exp, exp.solution(spec.level), branch.solution(), s.path))
