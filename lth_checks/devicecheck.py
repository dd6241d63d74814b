"""One prepared GPU check: CUDA tests, a short benchmark and the small claims run, under time budgets.

GPU time here comes as one short lease (minutes), so the check is one command whose steps each
run under their own budget: what finished comes back even when a later step runs out of time.
It writes at most 8 files to ``--out`` (the device tool brings back no more):

====================  =============================================================
``device-check.log``  every step's command, exit status, wall time and output tail
``bench.json``        ``lth-checks bench`` (short form) on the device
``results.json``      the claims run's verdicts and measured numbers
``report.md``         the report, as text
``report.html``       the report, self-contained (figures inlined)
``evidence.tar.gz``   what the verdicts need without weights (per-example correctness of
                      every evaluated network and path point as packed bits, and the
                      measured numbers); ``lth-checks report --from-evidence`` rebuilds
                      and re-decides the report from it on any machine
``summary.json``      the steps with their status and times, machine-readable
====================  =============================================================

``--rehearse`` runs the same steps on the CPU with tiny settings (digits, a few levels), so
that CI tests the script itself; it says so in every file it writes.
"""

from __future__ import annotations

import argparse
import base64
import json
import mimetypes
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MAX_FILES = 8
CIFAR_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
               "batches.meta")

# The rehearsal's claims settings: the digits smoke recipe cut to seconds per level.
REHEARSAL_CLAIMS = ("--scale", "smoke", "--levels", "3", "--rewind", "0", "--rewind", "5", "--replicates", "2",
                    "--set", "train.iterations=60", "--set", "train.milestones=30,45")


@dataclass
class Step:
    name: str
    command: list[str]
    budget_s: float
    status: str = "not run"  # ok | failed (exit N) | timed out | skipped: why
    wall_s: float = 0.0
    output_tail: str = ""
    produced: list[str] = field(default_factory=list)


def join_cifar_parts(parts: Sequence[Path], target: Path) -> Path:
    """A data root whose cifar-10-batches-py/ links the batch files found in `parts` (carried separately)."""
    folder = target / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for part in parts:
        for candidate in (part, part / "cifar-10-batches-py"):
            for name in CIFAR_FILES:
                src = candidate / name
                if src.is_file() and not (folder / name).exists():
                    (folder / name).symlink_to(src.resolve())
    return target


def _run_step(step: Step, log, env: dict[str, str]) -> None:
    """Run one step under its budget: SIGINT at the budget (pytest then writes what it has), SIGKILL 30 s later."""
    log(f"\n=== {step.name}: {' '.join(step.command)}  (budget {step.budget_s:.0f} s)")
    if step.budget_s < 5:
        step.status = "skipped: no time left"
        log(step.status)
        return
    started = time.monotonic()
    with tempfile.TemporaryFile(mode="w+") as out:
        proc = subprocess.Popen(step.command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=step.budget_s)
            step.status = "ok" if code == 0 else f"failed (exit {code})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            step.status = "timed out"
        step.wall_s = round(time.monotonic() - started, 1)
        out.seek(0)
        text = out.read()
    step.output_tail = text[-6000:]
    log(text[-20000:])
    log(f"--- {step.name}: {step.status} after {step.wall_s} s")


def _inline_figures(html: str, run_dir: Path) -> str:
    """Replace figure links with data: URIs so report.html travels as one file."""

    def inline(match: re.Match) -> str:
        attr, ref = match.group(1), match.group(2)
        path = run_dir / ref
        if not path.is_file():
            return match.group(0)
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return f'{attr}="data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"'

    return re.sub(r'(src|href)="(figures/[^"]+)"', inline, html)


def run_check(data_root: str | None, out: Path, *, budget_s: float = 540, rehearse: bool = False,
              device: str | None = None, cifar_parts: Sequence[str] = (), claims_args: Sequence[str] = ()) -> dict:
    """Run the steps, collect at most 8 files in `out`, and return the summary."""
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="lth-device-check-"))
    log_path = out / "device-check.log"
    log_file = open(log_path, "w")

    def log(msg: str) -> None:
        log_file.write(msg + "\n")
        log_file.flush()

    device = device or ("cpu" if rehearse else "cuda")
    deadline = time.monotonic() + budget_s
    if cifar_parts:
        data_root = str(join_cifar_parts([Path(p) for p in cifar_parts], work / "data"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "LTH_CHECKS_CACHE_DIR": str(work / "cache")}
    if data_root:
        env["LTH_CHECKS_DATA_ROOT"] = str(Path(data_root).resolve())
    py = sys.executable
    kind = "REHEARSAL on the CPU with tiny settings: not a measurement" if rehearse else "full"
    log(f"lth-checks device check ({kind}) device {device}, budget {budget_s:.0f} s, data root {data_root or '(none)'}")
    if shutil.which("nvidia-smi"):
        log(subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip())
    bench_out = work / "bench.json"
    reports = work / "reports"
    claims = list(REHEARSAL_CLAIMS) if rehearse else ["--scale", "small"]
    steps = [
        Step("gpu-tests", [py, "-m", "pytest", "tests", "-m", "gpu", "-q", "-p", "no:cacheprovider"],
             budget_s=60 if not rehearse else 120),
        Step("bench", [py, "-m", "lth_checks.cli", "bench", "--device", device, "--out", str(bench_out),
                       *(["--quick"] if rehearse else ["--replicas", "1,4,8,16", "--epochs-images", "25600"]),
                       *(["--data-root", data_root] if data_root and not rehearse else [])],
             budget_s=100 if not rehearse else 90),
        Step("claims", [py, "-m", "pytest", "claims/", "-p", "no:cacheprovider", "--device", device,
                        "--report-dir", str(reports), *claims, *claims_args], budget_s=0),
    ]
    for step in steps:
        left = deadline - time.monotonic() - 20  # 20 s to collect files
        step.budget_s = left if step.name == "claims" else min(step.budget_s, left)
        _run_step(step, log, env)
    steps[1].produced = [str(bench_out)] if bench_out.exists() else []

    files: dict[str, Path] = {}
    if bench_out.exists():
        files["bench.json"] = bench_out
    latest = reports / "latest"
    run_dir = latest.resolve() if latest.exists() else None
    if run_dir is not None:
        for name in ("results.json", "report.md"):
            if (run_dir / name).exists():
                files[name] = run_dir / name
        if (run_dir / "report.html").exists():
            inlined = work / "report.html"
            inlined.write_text(_inline_figures((run_dir / "report.html").read_text(), run_dir))
            files["report.html"] = inlined
        archive = work / "evidence.tar.gz"
        export = subprocess.run([py, "-m", "lth_checks.cli", "report", "--export-evidence", str(run_dir),
                                 "--out", str(archive)], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
        log(f"\n=== evidence export: exit {export.returncode}\n{export.stdout[-2000:]}{export.stderr[-2000:]}")
        if archive.exists():
            files["evidence.tar.gz"] = archive
    summary = {"rehearsal": rehearse, "device": device, "budget_s": budget_s, "steps": [
        {k: v for k, v in asdict(s).items() if k != "output_tail"} for s in steps],
        "files": sorted([*files, "device-check.log", "summary.json"])}
    assert len(summary["files"]) <= MAX_FILES, summary["files"]
    for name, path in files.items():
        shutil.copyfile(path, out / name)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log("\n" + "\n".join(f"{s.name:<10} {s.status:<16} {s.wall_s:>7.1f} s" for s in steps))
    log_file.close()
    shutil.rmtree(work, ignore_errors=True)
    return summary


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("device-check", help="the prepared GPU check: CUDA tests, bench, small claims run",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for the (at most 8) result files, e.g. $OUT")
    p.add_argument("--data-root", help="folder holding cifar-10-batches-py/ (or $LTH_CHECKS_DATA_ROOT)")
    p.add_argument("--cifar-parts", nargs="*", default=[], metavar="DIR",
                   help="folders each holding some CIFAR-10 batch files (carried separately); joined for the run")
    p.add_argument("--budget", type=float, default=540, help="seconds for the whole check (default 540 = 9 min)")
    p.add_argument("--device", help="default: cuda (cpu with --rehearse)")
    p.add_argument("--rehearse", action="store_true",
                   help="tiny settings on the CPU: tests the script, measures nothing")
    p.set_defaults(func=cmd_device_check)
    return p


def cmd_device_check(args: argparse.Namespace) -> int:
    summary = run_check(args.data_root or os.environ.get("LTH_CHECKS_DATA_ROOT"), Path(args.out),
                        budget_s=args.budget, rehearse=args.rehearse, device=args.device, cifar_parts=args.cifar_parts)
    for s in summary["steps"]:
        print(f"{s['name']:<10} {s['status']:<16} {s['wall_s']:>7.1f} s")
    print(f"files in {args.out}: {', '.join(summary['files'])}")
    claims = next(s for s in summary["steps"] if s["name"] == "claims")
    return 0 if claims["status"] in ("ok", "failed (exit 1)") else 1  # exit 1 of pytest = a claim FAILs
