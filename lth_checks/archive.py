"""A run's evidence as one small archive, and the report re-decided from it without weights.

The evidence of a verdict is what its rule reads: per-example correctness of every network and path
point it compares (packed bits), plus the scalar measurements (curvatures, p* predictions, weight
statistics). `encode` turns the arrays into base64 packed bits so an outcome stays JSON;
`write_archive` stores every outcome's evidence with the run's metadata as gzipped JSON
(`evidence.json.gz`, written beside every report); `report_from_evidence` applies the current
verdict rules to it and writes a fresh report (`lth-checks report --from-evidence ARCHIVE`), so a
GPU run's evidence can travel back and be re-decided, and changed rules re-applied to old runs.
"""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np

from .errors import LthError
from .stats import pack, unpack

FORMAT = "lth-checks-evidence/1"
ARCHIVE_FILE = "evidence.json.gz"


class EvidenceError(LthError):
    """An evidence archive that cannot be read."""


def encode(obj: Any) -> Any:
    """JSON-safe copy: bool arrays become {"__bits__": base64 packed bits, "shape": [...]}, other arrays lists."""
    if isinstance(obj, np.ndarray):
        if obj.dtype == bool:
            return {"__bits__": base64.b64encode(pack(obj.reshape(-1)).tobytes()).decode("ascii"),
                    "shape": list(obj.shape)}
        return obj.tolist()
    if isinstance(obj, dict):
        return {str(k): encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [encode(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def decode(obj: Any) -> Any:
    """Inverse of `encode`."""
    if isinstance(obj, dict):
        if "__bits__" in obj:
            shape = tuple(obj["shape"])
            raw = np.frombuffer(base64.b64decode(obj["__bits__"]), dtype=np.uint8)
            return unpack(raw, int(np.prod(shape))).reshape(shape)
        return {k: decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode(v) for v in obj]
    return obj


def write_archive(path: str | Path, meta: dict, outcomes: list[dict]) -> Path:
    """Every outcome that carries evidence, with the run's metadata, as gzipped JSON."""
    path = Path(path)
    doc = {"format": FORMAT, "meta": meta,
           "outcomes": [{k: o.get(k) for k in ("claim", "title", "recipe", "recipe_source", "scale", "replicates",
                                               "rewinds", "thresholds", "required_replicates", "choices",
                                               "wall_time_s", "config_hashes", "test_id", "premise", "evidence")}
                        # outcomes decided without evidence (a divergence, too few levels) keep their verdict
                        | ({} if o.get("evidence") is not None else
                           {k: o[k] for k in ("verdict", "summary", "effect", "tau_sensitivity", "measured")
                            if k in o})
                        for o in outcomes]}
    tmp = path.with_name(path.name + ".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8") as f:
        json.dump(doc, f, default=float)
    tmp.replace(path)
    return path


def read_archive(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / ARCHIVE_FILE
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise EvidenceError(f"cannot read the evidence archive {path}: {e}; pass a run folder or its "
                            f"{ARCHIVE_FILE}") from None
    if doc.get("format") != FORMAT:
        raise EvidenceError(f"{path} is not an lth-checks evidence archive ({FORMAT})")
    return doc


def redecide(outcome: dict) -> dict:
    """The outcome with verdict, summary, effect, tau sweep and measured tables recomputed from its evidence."""
    from .claim import decide

    if outcome.get("evidence") is None:
        return outcome
    verdict, sweep, measured = decide(decode(outcome["evidence"]))
    return {**outcome, "verdict": verdict.verdict, "summary": verdict.summary, "effect": verdict.effect,
            "tau_sensitivity": sweep or {}, "measured": measured}


def report_from_evidence(archive: str | Path, report_root: str | Path = "reports") -> Path:
    """Re-decide every outcome of an archive with the current rules and write a new report."""
    from .report import write_report

    doc = read_archive(archive)
    outcomes = sorted((redecide(o) for o in doc["outcomes"]), key=lambda o: (o["claim"], o["recipe"]))
    meta = {**doc["meta"], "rebuilt_from_evidence": str(archive)}
    return write_report(outcomes, meta, report_root)
