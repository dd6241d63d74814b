"""Command line: recipes, run, show, and one-line errors with exit status 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli

import lth_checks.imp as imp
from lth_checks import __version__
from lth_checks.cli import format_table, main
from lth_checks.imp import LevelResult
from lth_checks.recipes import RECIPES

SHORT = ["--set", "train.iterations=40", "--set", "train.milestones=20,30"]


def run_args(cache: Path, *extra: str) -> list[str]:
    return ["smoke", "--levels", "1", *SHORT, "--device", "cpu", "--cache-dir", str(cache), *extra]


def table_rows(stdout: str) -> list[list[str]]:
    """The level table's rows (level, alive %, test err %, train err %), without the wall time."""
    lines = stdout.strip().splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["level", "alive"])
    return [line.split()[:4] for line in lines[start + 1:]]


def test_recipes_lists_all(capsys: pytest.CaptureFixture) -> None:
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == list(RECIPES)
    assert "(ours)" in out[0] and "(OpenLTH)" in "\n".join(out)


def test_recipes_verbose_prints_configurations(capsys: pytest.CaptureFixture) -> None:
    assert main(["recipes", "-v"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in RECIPES)
    assert '"rewind_iteration": 2000' in out and '"milestones"' in out


def test_unknown_recipe_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "nosuch", "--cache-dir", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "\n" not in err and err.startswith("lth-checks: error:")
    assert "nosuch" in err and all(name in err for name in RECIPES)
    assert captured.out == ""


def test_unknown_recipe_in_a_real_process(tmp_path: Path) -> None:
    proc = run_cli("run", "nosuch", "--cache-dir", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert "\n" not in err and all(name in err for name in RECIPES), err
    assert not (tmp_path / "imp").exists()


@pytest.mark.parametrize(("settings", "fragment"), [
    (["--set", "train.learning_rate=0.1"], "train.learning_rate"),
    (["--set", "train.lr=fast"], "train.lr"),
    (["--set", "train.iterations=40"], "train.milestones"),  # smoke's milestones (300, 450) lie beyond 40
    (["--set", "prune.strategy=smallest"], "magnitude_global"),
    (["--rewind", "5000"], "rewind_iteration"),
])
def test_bad_settings_exit_2_with_one_line(tmp_path: Path, capsys, settings, fragment) -> None:
    assert main(["run", "smoke", "--cache-dir", str(tmp_path), *settings]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and fragment in err, err


def test_run_prints_the_table_and_show_prints_it_from_cache(tmp_path: Path, capsys, monkeypatch) -> None:
    cache = tmp_path / "cache"
    assert main(["show", *run_args(cache)]) == 1  # nothing yet
    assert "no finished levels" in capsys.readouterr().out

    assert main(["run", *run_args(cache)]) == 0
    captured = capsys.readouterr()
    rows = table_rows(captured.out)
    assert [r[:2] for r in rows] == [["0", "100.00%"], ["1", "80.00%"]]
    assert "recipe smoke (ours)" in captured.err and "level 1: density 0.8000" in captured.err

    # From now on nothing may train.
    monkeypatch.setattr(imp, "train", lambda *a, **k: pytest.fail("show/run from cache must not train"))
    assert main(["show", *run_args(cache)]) == 0
    shown = capsys.readouterr().out
    assert table_rows(shown) == rows
    assert '"iterations":40' in shown  # the canonical configuration is printed too
    assert main(["run", *run_args(cache)]) == 0
    assert table_rows(capsys.readouterr().out) == rows


def test_show_with_fewer_levels_finished_prints_what_is_there(tmp_path: Path, capsys) -> None:
    cache = tmp_path / "cache"
    assert main(["run", "smoke", "--levels", "0", *SHORT, "--device", "cpu", "--cache-dir", str(cache)]) == 0
    capsys.readouterr()
    assert main(["show", *run_args(cache)]) == 0  # asks for 2 levels, 1 is finished
    assert [r[0] for r in table_rows(capsys.readouterr().out)] == ["0"]


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main(["--version"])
    assert excinfo.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_format_table() -> None:
    r = LevelResult(level=3, alive=512, total=1000, density=0.512, test_error=0.0734, test_loss=0.3,
                    train_error=0.01, train_loss=0.05, wall_time_s=12.34, device="cpu")
    lines = format_table([r]).splitlines()
    assert lines[0].split() == ["level", "alive", "test", "err", "%", "train", "err", "%", "time", "s"]
    assert lines[1].split() == ["3", "51.20%", "7.34", "1.00", "12.3"]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_is_one_line_in_the_cli_and_in_pytest(tmp_path: Path) -> None:
    proc = run_cli("run", "smoke", "--levels", "1", "--device", "cuda", "--cache-dir", str(tmp_path), cwd=tmp_path)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and "\n" not in err, err
    assert "no CUDA device" in err and "--device cpu" in err
    import subprocess
    import sys

    from conftest import REPO_ROOT, cli_env

    claims = subprocess.run([sys.executable, "-m", "pytest", str(REPO_ROOT / "claims"), "-q", "-p", "no:cacheprovider",
                             "--device", "cuda", "--cache-dir", str(tmp_path)], cwd=tmp_path, env=cli_env(),
                            capture_output=True, text=True, timeout=120)
    out = claims.stdout + claims.stderr
    assert claims.returncode == 4, out  # pytest's usage error, before anything is collected or trained
    assert "no CUDA device" in out and "Traceback" not in out, out
