"""Reports: results.json against its schema, figures referenced by report.html, verdict counts, INCONCLUSIVE
never shown as a pass, `latest`, rebuild from results.json, unique run ids. Planted outcomes, no training."""

from __future__ import annotations

import base64
import copy
import json
import math
import os
import platform
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lth_checks import report as R
from lth_checks import thresholds as T

pytestmark = pytest.mark.filterwarnings("error::lth_checks.report.ReportWarning")

REPO_ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------- planted outcomes

def ci(mean: float, half: float = 0.3, n: int = 2) -> dict:
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": n, "std": half / 2}


def thresholds(*names: str) -> dict:
    return {n: T.ALL[n].to_dict() for n in names}


def base(claim: str, recipe: str = "smoke", title: str = "planted") -> dict:
    return {"claim": claim, "title": title, "recipe": recipe, "recipe_source": "(ours)", "scale": "smoke",
            "replicates": 2, "rewinds": [0, 50],
            "thresholds": thresholds("BARRIER_TAU_PP", "MATCHING_EPS_FLOOR_PP", "HIGH_SPARSITY_DENSITY",
                                     "P_STAR_TOLERANCE"),
            "choices": ["batch norm along paths: re-estimated on a fixed training subset (ours)",
                        "path grid: 11 points"],
            "wall_time_s": 12.5, "config_hashes": ["a" * 64, "b" * 64]}


def finish(o: dict, verdict: str, summary: str, effect: dict | None = None, sweep: dict | None = None) -> dict:
    o.update(verdict=verdict, summary=summary, effect=effect or {}, tau_sensitivity=sweep or {})
    return o


def claim1_outcome() -> dict:
    rows = []
    dense, eps = 8.0, 0.5
    for rewind in (0, 50):
        for level in range(8):
            late = rewind == 50
            err = dense + (0.1 * level if late else max(0.0, 0.8 * (level - 2)))
            nxt = dense + (0.1 * (level + 1) if late else max(0.0, 0.8 * (level - 1)))
            bar = 0.3 if late else (0.2 if level < 2 else 1.5 * level)
            rows.append({"rewind": rewind, "level": level, "density": 0.8 ** level, "next_density": 0.8 ** (level + 1),
                         "dense_error_pp": dense, "eps_pp": eps, "dense_std_pp": 0.2, "next_error_pp": ci(nxt),
                         "matching": nxt <= dense + eps, "barrier_pp": ci(bar, 0.2), "barrier_train_pp": ci(bar / 2),
                         "error_pp": ci(err)})
    o = base("1", title="successive levels are linearly connected iff matching")
    o["measured"] = {"rows": rows}
    return finish(o, "PASS", "matching agrees with barrier <= 2 pp in 10/10 pairs (100%; needed 90%)",
                  {"agreement": 1.0, "pairs": 10, "matching_pairs": 4, "non_matching_pairs": 6, "tau_pp": 2.0},
                  {"1": "PASS", "2": "PASS", "3": "FAIL"})


def claim2_outcome() -> dict:
    rows = []
    for rewind in (0, 50):
        for level in (0, 4, 8, 12):
            late = rewind == 50
            b = {"rewind": rewind, "level": level, "density": 0.8 ** level, "level_matching": late or level < 4,
                 "level_error_pp": ci(8.2)}
            noise = 0.2 if late else 0.5 * level
            rows.append({**b, "kind": "sgd_noise", "c": 0.0, "barrier_pp": ci(noise, 0.1)})
            rows.append({**b, "kind": "real_pair", "c": 1.0, "barrier_pp": ci(noise + 0.3, 0.1), "r_L": ci(1.7)})
            for c in (0.5, 1.0, 2.0, 4.0):
                rows.append({**b, "kind": "perturb", "c": c, "barrier_pp": ci(noise + c * (0.3 if late else 1.0))})
    o = base("2", title="SGD is robust to perturbations as large as the distance between pruned rewind points")
    o["measured"] = {"rows": rows, "late_rewind": 50}
    return finish(o, "PASS", "8/8 perturbations with c <= 1 stay within 2 pp (max 0.50 pp)",
                  {"tau_pp": 2.0, "cases": 8, "robust_share": 1.0, "max_barrier_pp": 0.5, "sgd_noise_max_pp": 0.2},
                  {"1": "PASS", "2": "PASS", "3": "PASS"})


def claim3_rows() -> list[dict]:
    rows = []
    for seed in (0, 1):
        for i, level in enumerate((0, 4, 8, 12)):
            row = {"seed": seed, "level": level, "density": 0.8 ** level, "top_eigenvalue": 5.0 * (i + 1) + seed,
                   "trace": 100.0 + 10 * i}
            for s, shift in (("magnitude", 0.0), ("random", 0.2)):
                sweep = [{"p": p, "test_error_pp": 8 + 20 * p * i, "matching": p <= 0.8 - 0.2 * i - shift,
                          "barrier_pp": 5 * p * i} for p in (0.2, 0.4, 0.6, 0.8, 0.9)]
                row[f"sweep_{s}"] = sweep
                row[f"p_max_{s}"] = max([x["p"] for x in sweep if x["matching"]], default=0.0)
                row[f"p_star_{s}"] = max(0.0, 0.75 - 0.2 * i - shift)
                row[f"p_star_{s}_trace_tail"] = max(0.0, 0.7 - 0.2 * i - shift)
            row.update(rayleigh_magnitude=0.5 + i, rayleigh_random=2.0 + i, rayleigh_gaussian=1.5 + i)
            rows.append(row)
    return rows


def claim3_outcome(part: str, verdict: str, summary: str, sweep: dict | None = None) -> dict:
    o = base(f"3{part}", title=f"claim 3{part}")
    o["measured"] = {"rows": claim3_rows(), "rewind": 50}
    return finish(o, verdict, summary, {"spearman_rho": -0.8, "p_value_one_sided": 0.07, "points": 8}, sweep)


def claim3d_outcome() -> dict:
    o = base("3d", title="one-shot pruning to high sparsity fails where 20% steps succeed")
    o["measured"] = {"target_level": 5, "density": 0.8 ** 5, "dense_error_pp": 8.0, "eps_pp": 0.5,
                     "imp_error_pp": ci(8.3), "oneshot_error_pp": ci(15.0)}
    return finish(o, "PASS", "IMP matches at 32.8% density, one-shot pruning there does not",
                  {"density": 0.8 ** 5, "imp_matching": True, "oneshot_matching": False})


def claim4_outcome() -> dict:
    imp, hists = [], {}
    for level in range(8):
        t = 0.02 + 0.005 * level
        imp.append({"level": level, "density": 0.8 ** level, "relative_projection_length": 0.1 + 0.002 * level,
                    "projection_length": 1.0, "weight_norm": 10.0, "threshold": t, "solution_test_error": 0.08,
                    "projected_test_error": 0.082 + 0.001 * level, "projected_train_error": 0.01,
                    "projected_train_loss": 0.05, "refill_fraction_below_threshold": 0.3,
                    "new_small_weight_share": float("nan") if level == 7 else 0.6})
        edges = [0.01 * j for j in range(31)]
        hists[level] = {"edges": edges,
                        "projected": [0 if e < t else int(200 * math.exp(-e * 30)) for e in edges[:-1]],
                        "retrained": [int(150 * math.exp(-e * 25)) + 5 for e in edges[:-1]]}
    chain = [{"step": s, "density": 0.8 ** (1 + s), "relative_projection_length": 0.1 * 1.5 ** s,
              "projected_test_error": 0.082 + 0.01 * s * s, "projected_train_error": 0.01 * s,
              "projected_train_loss": 0.1 * s} for s in range(1, 5)]
    o = base("4", title="retraining exists to create new small weights")
    o["measured"] = {"rewind": 50, "start_level": 1, "steps": 4, "imp": imp, "imp_replicates": [imp],
                     "histograms": hists, "chain": chain, "chain_replicates": [chain],
                     "per_replicate": [{"chain_error_rise_pp": 16.0, "imp_error_gap_pp": 0.5,
                                        "chain_length_growth": 3.4, "imp_length_growth": 1.05}]}
    return finish(o, "INCONCLUSIVE", "only 1 replicate(s), 2 needed; measured: chain error rises 15.5 pp more",
                  {"chain_error_rise_pp": 16.0, "imp_error_gap_pp": 0.5, "excess_pp": 15.5})


def diverged_outcome() -> dict:
    o = base("1", recipe="small", title="successive levels are linearly connected iff matching")
    o.update(config_hashes=[], wall_time_s=3.0)
    return finish(o, "INCONCLUSIVE", "diverged: loss is NaN at iteration 120 of level 3")


def planted() -> list[dict]:
    return [claim1_outcome(), claim2_outcome(),
            claim3_outcome("a", "INCONCLUSIVE", "rank correlation -0.80 is negative but not significant (p = 0.07)",
                           {"1": "PASS", "2": "INCONCLUSIVE", "3": "INCONCLUSIVE"}),
            claim3_outcome("b", "FAIL", "|p* - p_max| <= 0.2 at 50% of levels (mean 0.21)",
                           {"1": "FAIL", "2": "FAIL", "3": "FAIL"}),
            claim3_outcome("c", "PASS", "magnitude direction flatter than random at 100% of levels"),
            claim3d_outcome(), claim4_outcome(), diverged_outcome()]


EXPECTED_COUNTS = {"PASS": 4, "FAIL": 1, "INCONCLUSIVE": 3, "total": 8}
FIGURE_STEMS = ("fig1_error_vs_density", "fig2_barrier_vs_density", "fig3_barrier_vs_perturbation",
                "fig4_flatness", "fig5_small_weights")


def meta(scale: str = "smoke") -> dict:
    return R.run_metadata(scale=scale, options={"scale": scale, "rewinds": {"smoke": (0, 50)}, "cache_dir": None},
                          device="cpu", wall_time_s=42.0, started_at="2026-11-25T19:30:00+00:00")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return R.write_report(planted(), meta(), tmp_path_factory.mktemp("reports"))


class _Refs(HTMLParser):
    """Collect attributes of <img>/<a>/<link>/<script> and the verdict badges of the verdict table rows."""

    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[dict] = []
        self.links: list[str] = []
        self.external: list[str] = []
        self.rows: list[tuple[dict, list[str]]] = []  # (tr attrs, classes of the verdict spans in it)
        self._row: tuple[dict, list[str]] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a)
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        if tag in ("link", "script", "iframe") or any(str(v).startswith(("http:", "https:", "//"))
                                                      for k, v in a.items() if k in ("src", "href")):
            self.external.append(f"{tag} {a}")
        if tag == "tr" and "outcome" in (a.get("class") or ""):
            self._row = (a, [])
            self.rows.append(self._row)
        if tag == "span" and "verdict" in (a.get("class") or "").split() and self._row is not None:
            self._row[1].append(a["class"])

    def handle_endtag(self, tag):
        if tag == "tr":
            self._row = None


def parse_html(run_dir: Path) -> _Refs:
    p = _Refs()
    p.feed((run_dir / "report.html").read_text(encoding="utf-8"))
    return p


def verdict_table(md: str) -> list[list[str]]:
    """Rows of the markdown verdict table, split into cells."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| claim | recipe | verdict |"))
    rows = []
    for line in lines[start + 2:]:  # past the header and the |---| line
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows


def report_files(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name != R.RESULTS_FILE}


# ------------------------------------------------------------------------------------------ tests

def test_results_json_is_strict_json_and_validates(run: Path):
    text = (run / "results.json").read_text(encoding="utf-8")

    def no_constants(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    doc = json.loads(text, parse_constant=no_constants)  # NaN became null
    assert R.validate_results(doc) == []
    assert doc["thresholds"] == json.loads(json.dumps(T.as_dict()))
    assert len(doc["outcomes"]) == 8
    assert doc["outcomes"][6]["measured"]["imp"][7]["new_small_weight_share"] is None
    assert R.load_results(run) == doc == R.load_results(run / "results.json")


def test_schema_is_valid_2020_12_and_ships_as_package_data(run: Path):
    import importlib.resources

    import jsonschema

    jsonschema.Draft202012Validator.check_schema(R.RESULTS_SCHEMA)
    jsonschema.validate(R.load_results(run), R.RESULTS_SCHEMA, cls=jsonschema.Draft202012Validator)
    shipped = importlib.resources.files("lth_checks").joinpath(R.SCHEMA_FILE).read_text(encoding="utf-8")
    assert json.loads(shipped) == R.RESULTS_SCHEMA
    assert R.RESULTS_SCHEMA["$defs"]["verdict"]["enum"] == list(R.VERDICTS)
    assert "results.schema.json" in (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8")


def test_a_broken_schema_is_an_error_not_a_silent_pass():
    import jsonschema

    with pytest.raises(jsonschema.SchemaError):
        R.validate_results({}, {"type": "objekt"})


def test_without_jsonschema_the_report_is_written_and_says_it_went_unvalidated(tmp_path: Path, monkeypatch):
    """The GPU image has no jsonschema: a claims run there must not lose its report to an ImportError."""
    import sys

    from lth_checks.report import results as RR

    monkeypatch.setitem(sys.modules, "jsonschema", None)  # `import jsonschema` raises ImportError
    RR._validator.cache_clear()
    try:
        with pytest.raises(R.SchemaUnavailable, match="pip install jsonschema"):
            R.validate_results({})
        with pytest.warns(R.ReportWarning, match="results.json not validated: jsonschema is not installed"):
            run_dir = R.write_report([claim3d_outcome()], meta(), tmp_path)
        assert (run_dir / "report.html").is_file() and R.load_results(run_dir)["outcomes"]
    finally:
        RR._validator.cache_clear()


def test_bad_documents_are_reported_with_their_path(run: Path):
    good = R.load_results(run)
    cases = []  # (change, the JSON path and words the error line must carry)

    def case(change, *expected):
        d = copy.deepcopy(good)
        change(d)
        cases.append((d, expected))

    case(lambda d: d["outcomes"][0].update(verdict="PASSED"), "$.outcomes[0].verdict", "'PASSED' is not one of")
    case(lambda d: d["outcomes"][3].pop("verdict"), "$.outcomes[3]", "'verdict' is a required property")
    case(lambda d: d.pop("outcomes"), "$:", "'outcomes' is a required property")
    case(lambda d: d["outcomes"][1].update(replicates="two"), "$.outcomes[1].replicates", "not of type 'integer'")
    case(lambda d: d["summary"].update(PASS=True), "$.summary.PASS", "not of type 'integer'")  # a bool is no integer
    case(lambda d: d["outcomes"][2]["tau_sensitivity"].update({"2": "MAYBE"}),
         "$.outcomes[2].tau_sensitivity['2']", "'MAYBE' is not one of")
    case(lambda d: d["thresholds"]["BARRIER_TAU_PP"].pop("source"), "$.thresholds.BARRIER_TAU_PP",
         "'source' is a required property")
    case(lambda d: d["meta"].update(git_commit="not-a-hash"), "$.meta.git_commit", "does not match")
    case(lambda d: d.update(extra=1), "$:", "'extra' was unexpected")
    for bad, expected in cases:
        errors = R.validate_results(bad)
        assert len(errors) == 1 and all(part in errors[0] for part in expected), (expected, errors)


def test_verdict_counts(run: Path):
    doc = R.load_results(run)
    assert doc["summary"] == EXPECTED_COUNTS
    md = (run / "report.md").read_text(encoding="utf-8")
    assert "✅ **PASS** 4 · ❌ **FAIL** 1 · ⚠️ **INCONCLUSIVE** 3 (total 8)" in md
    rows = verdict_table(md)
    assert len(rows) == 8
    html_rows = parse_html(run).rows
    assert [a["data-verdict"] for a, _ in html_rows].count("PASS") == 4
    assert [a["data-verdict"] for a, _ in html_rows].count("INCONCLUSIVE") == 3


def test_inconclusive_is_never_rendered_as_pass(run: Path):
    md = (run / "report.md").read_text(encoding="utf-8")
    expected = {(o["claim"], o["recipe"]): o["verdict"] for o in planted()}
    for cells in verdict_table(md):
        claim = re.match(r"\[(\w+)\]", cells[0]).group(1)
        recipe = cells[1].split()[0]
        want = expected[(claim, recipe)]
        assert cells[2] == {"PASS": "✅ **PASS**", "FAIL": "❌ **FAIL**", "INCONCLUSIVE": "⚠️ **INCONCLUSIVE**"}[want]
        if want != "PASS":
            assert "PASS" not in cells[2]
    # 3a is INCONCLUSIVE although its tau sweep has a PASS at 1 pp: the main badge stays amber
    for attrs, badges in parse_html(run).rows:
        cls = {"PASS": "v-pass", "FAIL": "v-fail", "INCONCLUSIVE": "v-inconclusive"}[attrs["data-verdict"]]
        assert badges[0] == f"verdict {cls}"
        assert f"row-{attrs['data-verdict'].lower()}" in attrs["class"]
        assert expected[(attrs["data-claim"], attrs["data-recipe"])] == attrs["data-verdict"]
    html_text = (run / "report.html").read_text(encoding="utf-8")
    assert ">INCONCLUSIVE</span>" in html_text and "not a pass" in html_text
    badge = {"PASS": "✅ **PASS**", "FAIL": "❌ **FAIL**", "INCONCLUSIVE": "⚠️ **INCONCLUSIVE**"}
    sections = md.split("\n### Claim ")[1:]
    assert len(sections) == len(expected) == 8
    for section in sections:
        head, _, verdict_line = section.split("\n", 3)[:3]
        claim, recipe = head.split(" ", 1)[0], head.rsplit("(", 1)[1].rstrip(")")
        want = expected[(claim, recipe)]
        assert verdict_line.startswith(f"Verdict: {badge[want]} — ")
        assert ("it is not a pass" in section) == (want == "INCONCLUSIVE")


def test_html_is_self_contained_and_its_figures_exist(run: Path):
    refs = parse_html(run)
    assert refs.external == []
    figs = sorted((run / "figures").glob("*.png"))
    assert sorted(p.name for p in figs) == sorted(f"{stem}_smoke.png" for stem in FIGURE_STEMS)
    assert refs.imgs, "no figure in report.html"
    for img in refs.imgs:
        assert img["src"].startswith("data:image/png;base64,")
        path = run / img["data-file"]
        assert img["data-file"].startswith("figures/") and path.is_file()
        assert base64.b64decode(img["src"].split(",", 1)[1]) == path.read_bytes()
    referenced = {h for h in refs.links if h.startswith("figures/")}
    assert referenced == {f"figures/{p.name}" for p in figs}
    for href in referenced:
        assert (run / href).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (run / "report.md").read_text(encoding="utf-8")
    for p in figs:
        assert f"](figures/{p.name})" in md
    # figure 4 belongs to both claim 3a and 3b; the diverged outcome has none
    assert md.count("(figures/fig4_flatness_smoke.png)") == 4  # image + link, in two sections
    assert "No measurements recorded" in md


def test_report_md_carries_thresholds_choices_effects_and_measurements(run: Path):
    md = (run / "report.md").read_text(encoding="utf-8")
    assert "| BARRIER_TAU_PP | 2 | pp | (LMC) stable when the barrier is below 2 pp; (ours) default |" in md
    assert "- batch norm along paths: re-estimated on a fixed training subset (ours)" in md
    assert "| agreement | 1 |" in md
    assert "| 50 | 3 → 4 |" in md  # a claim-1 row
    assert "SGD noise (control)" in md
    assert "p = 0.9" in md  # the one-shot sweep table
    assert "‖w_L − P(w_L)‖ / ‖w_L‖" in md and "Without retraining (chain" in md
    assert "1 pp: ✅ **PASS** · 2 pp: ✅ **PASS** · 3 pp: ❌ **FAIL**" in md
    assert "this project's own choice (ours)" in md
    assert "| started (UTC) | 2026-11-25T19:30:00+00:00 |" in md


def test_latest_points_at_the_newest_run(tmp_path: Path):
    small = [claim3d_outcome(), diverged_outcome()]
    first = R.write_report(small, meta(), tmp_path)
    second = R.write_report(small, meta(), tmp_path)
    assert first != second
    latest = tmp_path / "latest"
    assert latest.is_symlink() and os.readlink(latest) == second.name  # relative: the tree can move
    assert latest.resolve() == second.resolve()
    assert R.load_results(latest) == R.load_results(second)


def test_latest_falls_back_to_a_text_file(tmp_path: Path, monkeypatch):
    small = [claim3d_outcome()]
    R.write_report(small, meta(), tmp_path)  # a symlink first, then replaced by the text file

    def no_symlinks(*args, **kwargs):
        raise OSError("symlinks not permitted")

    monkeypatch.setattr(os, "symlink", no_symlinks)
    newest = R.write_report(small, meta(), tmp_path)
    latest = tmp_path / "latest"
    assert latest.is_file() and not latest.is_symlink()
    assert latest.read_text().strip() == newest.name
    assert R.resolve_run_dir(latest) == newest
    assert R.load_results(latest)["summary"]["PASS"] == 1
    assert not list(tmp_path.glob(".latest.tmp*"))


def test_rebuild_reproduces_the_same_files(run: Path, tmp_path: Path):
    copy_dir = tmp_path / run.name  # same run id: it titles the report
    shutil.copytree(run, copy_dir)
    before = report_files(run)
    assert {"report.md", "report.html"} <= set(before) and len(before) == 2 + len(FIGURE_STEMS)
    (copy_dir / "report.md").unlink()
    (copy_dir / "report.html").write_text("stale")
    next(iter((copy_dir / "figures").glob("fig2*.png"))).unlink()
    (copy_dir / "figures" / "fig9_stale_smoke.png").write_bytes(b"old")
    assert R.rebuild(copy_dir) == copy_dir
    assert report_files(copy_dir) == before


def test_rebuild_through_latest(tmp_path: Path):
    run_dir = R.write_report([claim3d_outcome(), diverged_outcome()], meta(), tmp_path)
    before = report_files(run_dir)
    (run_dir / "report.md").unlink()
    assert R.rebuild(tmp_path / "latest") == run_dir  # the run keeps its own name
    assert report_files(run_dir) == before
    assert R.rebuild(run_dir / "results.json") == run_dir


def test_run_ids_are_unique_on_a_clash(tmp_path: Path):
    small = [claim3d_outcome()]
    a = R.write_report(small, meta(), tmp_path, run_id="fixed")
    b = R.write_report(small, meta(), tmp_path, run_id="fixed")
    c = R.write_report(small, meta(), tmp_path, run_id="fixed")
    assert [a.name, b.name, c.name] == ["fixed", "fixed-2", "fixed-3"]
    d = R.write_report(small, meta("small"), tmp_path)
    e = R.write_report(small, meta("small"), tmp_path)
    assert re.fullmatch(r"\d{8}-\d{6}-small", d.name)
    assert re.fullmatch(r"\d{8}-\d{6}-small(-2)?", e.name) and d != e
    assert all((p / "results.json").is_file() for p in (a, b, c, d, e))
    for bad in ("../escape", "a/b", "latest", ""):
        with pytest.raises(ValueError):
            R.write_report(small, meta(), tmp_path, run_id=bad)


def test_missing_or_partial_measurements_skip_figures(tmp_path: Path):
    partial = claim1_outcome()
    for row in partial["measured"]["rows"]:
        del row["barrier_pp"]  # figure 2 has nothing to draw, figure 1 still does
    no_rows = claim2_outcome()
    no_rows["measured"] = {"late_rewind": 50}
    only_3b = claim3_outcome("b", "FAIL", "planted")
    hist_only = claim4_outcome()
    hist_only["measured"] = {"histograms": hist_only["measured"]["histograms"]}
    run_dir = R.write_report([partial, no_rows, only_3b, hist_only, diverged_outcome()], meta(), tmp_path)
    names = sorted(p.name for p in (run_dir / "figures").glob("*.png"))
    assert names == ["fig1_error_vs_density_smoke.png", "fig4_flatness_smoke.png", "fig5_small_weights_smoke.png"]
    refs = parse_html(run_dir)
    assert all((run_dir / i["data-file"]).is_file() for i in refs.imgs)

    empty = R.write_report([diverged_outcome()], meta(), tmp_path / "only-diverged")
    assert not (empty / "figures").exists() or not list((empty / "figures").iterdir())
    assert R.load_results(empty)["summary"] == {"PASS": 0, "FAIL": 0, "INCONCLUSIVE": 1, "total": 1}
    assert "<img" not in (empty / "report.html").read_text(encoding="utf-8")


def test_text_is_escaped_in_html(tmp_path: Path):
    o = claim3d_outcome()
    o["summary"] = "<script>alert('x')</script> & done"
    o["recipe"] = "weird <recipe>/name"
    run_dir = R.write_report([o], meta(), tmp_path)
    text = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "<script" not in text
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; done" in text  # Jinja2 autoescape (MarkupSafe)
    assert "weird &lt;recipe&gt;/name" in text


def test_unknown_verdict_is_not_a_pass(tmp_path: Path):
    o = claim3d_outcome()
    o["verdict"] = "SKIPPED"
    with pytest.warns(R.ReportWarning, match="RESULTS_SCHEMA"):
        run_dir = R.write_report([o], meta(), tmp_path)
    doc = R.load_results(run_dir)
    assert doc["summary"] == {"PASS": 0, "FAIL": 0, "INCONCLUSIVE": 0, "SKIPPED": 1, "total": 1}
    (attrs, badges), = parse_html(run_dir).rows
    assert badges[0] == "verdict v-unknown"


def test_run_metadata(monkeypatch, tmp_path: Path):
    m = meta()
    assert m["lth_checks_version"] and m["python_version"] == platform.python_version()
    assert m["torch_version"] and m["device"] == "cpu" and m["cuda_device_name"] is None
    assert m["scale"] == "smoke" and m["wall_time_s"] == 42.0 and m["options"]["scale"] == "smoke"
    node = platform.node()
    if len(node) > 3:
        assert node not in json.dumps(R.to_jsonable(m))
    monkeypatch.chdir(REPO_ROOT)
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or None
    assert meta()["git_commit"] == head
    monkeypatch.chdir(tmp_path)
    inside = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).returncode == 0
    if not inside:
        assert meta()["git_commit"] is None and meta()["git_dirty"] is None
    monkeypatch.setenv("PATH", str(tmp_path / "no-git-here"))
    assert meta()["git_commit"] is None


finite_or_not = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(), st.booleans(), st.none(),
                          st.text(max_size=5))
nested = st.recursive(finite_or_not, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.tuples(inner, inner),
    st.dictionaries(st.one_of(st.text(max_size=4), st.integers()), inner, max_size=4)), max_leaves=20)


@settings(max_examples=60, deadline=None)
@given(nested)
def test_to_jsonable_gives_strict_json(value):
    text = json.dumps(R.to_jsonable(value), allow_nan=False)
    assert json.loads(text) == R.to_jsonable(value)
