"""Results of a claims run: the results.json schema and its validation, run metadata, JSON I/O, run
folders and `latest`.

Non-finite numbers (NaN, inf) are written as `null`, so results.json is strict JSON; every file is
written atomically. Nothing here renders: see `render` (report.md, report.html) and `tables`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json
import math
import os
import platform
import re
import subprocess
import sys
import warnings
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import LthError

PASS, FAIL, INCONCLUSIVE = "PASS", "FAIL", "INCONCLUSIVE"
VERDICTS = (PASS, FAIL, INCONCLUSIVE)
RESULTS_FILE = "results.json"
FIGURES_DIR = "figures"
LATEST = "latest"


class ReportWarning(UserWarning):
    """Something in the report could not be drawn or does not match RESULTS_SCHEMA (the report is still written)."""


# ------------------------------------------------------------------------------------------ schema

# The schema is package data (lth_checks/results.schema.json), so other tools can validate a
# results.json without importing this module; jsonschema checks it (Draft 2020-12).
SCHEMA_FILE = "results.schema.json"
RESULTS_SCHEMA: dict = json.loads(importlib.resources.files("lth_checks").joinpath(SCHEMA_FILE)
                                  .read_text(encoding="utf-8"))


class SchemaUnavailable(LthError):
    """jsonschema is not installed (the GPU image lacks it): results.json cannot be validated here."""


@functools.cache
def _validator(schema_text: str):
    # Imported here, not at the top: the GPU image has no jsonschema, and a claims run there must still
    # write its report (write_report then says that results.json went unvalidated).
    try:
        import jsonschema
    except ImportError as e:
        raise SchemaUnavailable("results.json not validated: jsonschema is not installed here "
                                "(pip install jsonschema where the report must be checked)") from e
    schema = json.loads(schema_text)
    jsonschema.Draft202012Validator.check_schema(schema)  # a broken schema is a bug: SchemaError, not a warning
    return jsonschema.Draft202012Validator(schema)


def validate_results(doc: dict, schema: dict = RESULTS_SCHEMA) -> list[str]:
    """Errors of `doc` against the results schema, one readable line each: '$.outcomes[0].verdict: ...'."""
    validator = _validator(json.dumps(schema, sort_keys=True))
    errors = sorted(validator.iter_errors(doc), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    return [f"{e.json_path}: {e.message}" for e in errors]


# --------------------------------------------------------------------------------------- metadata

def _git(*args: str) -> str | None:
    try:
        res = subprocess.run(["git", *args], cwd=os.getcwd(), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def run_metadata(*, scale: str, options: dict, device: str, wall_time_s: float, started_at: str) -> dict:
    """Versions, platform, device and the git commit of the working directory (no host name)."""
    torch_version = cuda_name = None
    try:
        import torch

        torch_version = torch.__version__
        dev = str(device)
        if (dev.startswith("cuda") or dev == "auto") and torch.cuda.is_available():
            index = torch.device("cuda" if dev == "auto" else dev).index
            cuda_name = torch.cuda.get_device_name(torch.cuda.current_device() if index is None else index)
    except Exception:  # noqa: BLE001 - metadata must never break a report
        pass
    try:
        import numpy

        numpy_version = numpy.__version__
    except ImportError:
        numpy_version = None
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {
        "lth_checks_version": __version__,
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "torch_version": torch_version,
        "numpy_version": numpy_version,
        "platform": platform.platform(),  # OS, release and machine; platform.node() (the host) is left out
        "device": str(device),
        "cuda_device_name": cuda_name,
        "git_commit": commit,
        "git_dirty": None if status is None else bool(status),
        "scale": scale,
        "options": dict(options),
        "wall_time_s": wall_time_s,
        "started_at": started_at,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else None,
    }


# ---------------------------------------------------------------------------------- JSON and files

def to_jsonable(obj: Any) -> Any:
    """Plain JSON values: str keys, lists for tuples, Python numbers for numpy ones, None for NaN/inf."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return [to_jsonable(v) for v in sorted(obj, key=str)]
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if hasattr(obj, "tolist"):  # numpy scalars and arrays, torch tensors
        return to_jsonable(obj.tolist())
    if hasattr(obj, "item"):
        return to_jsonable(obj.item())
    return str(obj)


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def summarize(outcomes: Sequence[dict]) -> dict:
    """Counts per verdict (PASS, FAIL, INCONCLUSIVE always present; anything else under its own name)."""
    counts = {v: 0 for v in VERDICTS}
    for o in outcomes:
        v = str(o.get("verdict", "UNKNOWN"))
        counts[v] = counts.get(v, 0) + 1
    counts["total"] = len(outcomes)
    return counts


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("._") or "x"


def new_run_dir(root: Path, run_id: str | None, scale: str) -> Path:
    if run_id is None:
        run_id = f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{safe_name(scale)}"
    elif run_id != safe_name(run_id) or run_id == LATEST:
        raise ValueError(f"run id {run_id!r} must be a plain name of letters, digits, '_', '.' and '-'")
    root.mkdir(parents=True, exist_ok=True)
    candidate, n = run_id, 1
    while True:
        try:
            (root / candidate).mkdir()
            return root / candidate
        except FileExistsError:
            n += 1
            candidate = f"{run_id}-{n}"


def update_latest(root: Path, run_dir: Path) -> None:
    """`root/latest` -> the run dir (relative symlink, replaced atomically); a text file where links fail."""
    latest = root / LATEST
    tmp = root / f".{LATEST}.tmp-{os.getpid()}"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(run_dir.name, tmp, target_is_directory=True)
        os.replace(tmp, latest)
        return
    except (OSError, NotImplementedError):
        if tmp.is_symlink():
            tmp.unlink()
    try:
        if latest.is_symlink():
            latest.unlink()
        atomic_write(latest, (run_dir.name + "\n").encode())
    except OSError as e:
        warnings.warn(f"could not update {latest}: {e}", ReportWarning, stacklevel=3)


def resolve_run_dir(run_dir: str | Path) -> Path:
    """A run folder, its results.json, or `latest` (a symlink or the text-file fallback holding the run id)."""
    p = Path(run_dir)
    if p.is_symlink():  # `latest`: keep the run's own name (it titles the report)
        p = p.parent / os.readlink(p)
    if p.is_file() and p.name == RESULTS_FILE:
        return p.parent
    if p.is_file():  # the `latest` fallback
        name = p.read_text(encoding="utf-8").strip()
        if name and name == safe_name(name) and (p.parent / name).is_dir():
            return p.parent / name
        raise FileNotFoundError(f"{p} names no run folder next to it")
    return p


def load_results(run_dir: str | Path) -> dict:
    """results.json of a run (a run folder, its results.json, or `reports/latest`)."""
    path = resolve_run_dir(run_dir) / RESULTS_FILE
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def dumps(doc: dict) -> str:
    return json.dumps(doc, indent=1, ensure_ascii=False, allow_nan=False) + "\n"


