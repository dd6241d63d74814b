"""The report leads with the answer: the verdict table with one sentence per claim, the regime line and
the figure behind each verdict come first; the run's metadata comes last (folded in HTML)."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
from test_report import claim1_outcome, claim3d_outcome, meta, planted

from lth_checks import report as R
from lth_checks.claim import get_claim, headline, reason

pytestmark = pytest.mark.filterwarnings("error::lth_checks.report.ReportWarning")

PREMISE = {"premise": "instability at k = 0, stability at the late rewind", "unstable_rewind": 0, "stable_rewind": 50,
           "method": "planted",
           "barriers": {"0": {"rewind": 0, "level": 0, "barrier_pp": {"mean": 9.3, "lo": 3.4, "hi": 15.2, "n": 5}},
                        "50": {"rewind": 50, "level": 0, "barrier_pp": {"mean": 0.1, "lo": -0.2, "hi": 0.4, "n": 5}}}}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return R.write_report(planted(), meta(), tmp_path_factory.mktemp("reports"))


def test_markdown_opens_with_the_verdict_table_and_ends_with_the_metadata(run: Path):
    md = (run / "report.md").read_text(encoding="utf-8")
    lines = md.splitlines()
    headings = [line for line in lines if line.startswith("## ")]
    assert headings[0] == "## Verdicts" and headings[-1] == "## Run"
    first_table = next(i for i, line in enumerate(lines) if line.startswith("|"))
    assert lines[first_table] == "| claim | recipe | verdict | what was tested, and what the data say |"
    run_at = lines.index("## Run")
    assert first_table < lines.index("## Verdict details") < lines.index("## Outcomes") < run_at
    assert md.index("| started (UTC) |") > run_at and md.index("| torch |") > run_at
    # the regime line and the figures behind the verdicts come before the details
    details = md.index("## Verdict details")
    assert md.index("**Regime.**") < details
    assert re.search(r'<img src="figures/fig2_barrier_vs_density_smoke.png" width="32%"', md[:details])
    assert "fig1_error_vs_density" not in md[:details]  # one figure per claim up top, the one behind its verdict


def test_each_claim_has_one_plain_sentence(run: Path):
    md = (run / "report.md").read_text(encoding="utf-8")
    top = md[:md.index("## Verdict details")]
    expected = {(o["claim"], o["recipe"]): o for o in planted()}
    rows = [line for line in top.splitlines() if line.startswith("| [")]
    assert len(rows) == len(expected)
    for line in rows:
        claim, recipe = re.match(r"\| \[(\w+)\]\([^)]*\) \| (\S+)", line).groups()
        o = expected[(claim, recipe)]
        assert get_claim(claim).headline(o).replace("|", "\\|") in line
    one = get_claim("1").headline(claim1_outcome())
    assert one.startswith("Successive IMP levels are linearly connected exactly when the next level is matching: "
                          "holds — ")


def test_html_leads_with_verdicts_and_folds_the_metadata(run: Path):
    html = (run / "report.html").read_text(encoding="utf-8")
    first_table = html.index("<table")
    assert 'class="verdicts"' in html[first_table:first_table + 40]
    assert html.index('class="regime"') < html.index("<h2>Verdict details</h2>")
    lead = html[:html.index("<h2>Verdict details</h2>")]
    assert lead.count("<img") == 4  # claims 1, 2, 3a+3b (one figure) and 4
    folded = html[html.index("<details"):html.index("</details>")]
    assert "started (UTC)" in folded and "git commit" in folded
    assert "started (UTC)" not in html[:html.index("<details")]


def test_default_sentence_and_its_reasons():
    o = claim3d_outcome()
    o.update(verdict="INCONCLUSIVE", summary="underpowered: the typical interval is +-1.04 pp against 0.5 pp; needs "
                                              "about 1,563 test examples; IMP +0.14 [-0.83, +0.97] pp")
    assert headline("my claim holds", o) == ("My claim holds: not decided — too little data to resolve it (needs "
                                             "about 1,563 test examples)")
    assert reason("diverged: loss is NaN at iteration 120", "INCONCLUSIVE") == "a training run diverged"
    assert reason("premise not met (x) at tau = 2 pp: a barrier is on the wrong side of tau; SGD-noise barrier",
                  "INCONCLUSIVE") == "the scale's premise is not met (a barrier is on the wrong side of tau)"
    assert reason("2/2 determined cases stay within 2 pp (0 undetermined; max 0.18 pp); 3 determined cases needed",
                  "INCONCLUSIVE") == ("2/2 determined cases stay within 2 pp (0 undetermined; max 0.18 pp); "
                                      "3 determined cases needed")
    assert headline("x", {"verdict": "FAIL", "summary": ""}) == "X: contradicted"


@pytest.mark.parametrize("met", [True, False])
def test_regime_line_says_whether_the_premise_was_met(tmp_path: Path, met: bool):
    outcomes = [claim1_outcome(), claim3d_outcome()]
    premise = copy.deepcopy(PREMISE)
    if not met:
        premise["barriers"]["0"]["barrier_pp"].update(mean=1.0, lo=0.5, hi=1.5)
    for o in outcomes:
        o["premise"] = premise
    m = meta("cpu")
    m["options"]["plan"] = {"premise": PREMISE["premise"], "regime": ""}
    m["regime"] = f"premise: {PREMISE['premise']}"
    md = (R.write_report(outcomes, m, tmp_path) / "report.md").read_text(encoding="utf-8")
    line = next(line for line in md.splitlines() if line.startswith("**Regime.**"))
    assert "Scale cpu, recipe smoke (ours)." in line
    if met:
        assert "on smoke: met at τ = 2 pp (SGD-noise barrier k = 0: 9.30 pp [3.40, 15.20]" in line
        assert "in the paper's regime on a reduced recipe of this project (ours), not the paper's recipe" in line
    else:
        assert "on smoke: NOT met at τ = 2 pp" in line and "INCONCLUSIVE here" in line


def test_own_claim_ids_validate():
    doc = R.load_results(Path(__file__).resolve().parents[1] / "reports" / "20261127-132501-smoke")
    for good, bad in (("dense-error", "../x"), ("my_claim.2", " 5"), ("5", "")):
        doc["outcomes"][0]["claim"] = good
        assert R.validate_results(doc) == []
        doc["outcomes"][0]["claim"] = bad
        assert len(R.validate_results(doc)) == 1


def test_claims_2_and_4_say_their_numbers_in_plain_words():
    """The committed cpu report: claim 2 in counts of determined perturbations, claim 4 with both halves."""
    import json

    doc = json.loads((Path(__file__).resolve().parents[1] / "reports" / "20261127-134947-cpu" / "results.json")
                     .read_text())
    by_claim = {o["claim"]: o for o in doc["outcomes"]}
    two = get_claim("2").headline(by_claim["2"])
    assert "not decided — 2 of 2 determined perturbations up to c = 1 leave a barrier below 2 pp" in two
    assert two.endswith("3 determined cases needed")
    four = get_claim("4").headline(by_claim["4"])
    assert "error rises +8.0 pp [+2.9, +13.6] beyond IMP's, as predicted" in four
    assert "does not grow measurably faster than along IMP (log slope +0.094 [-0.102, +0.290] per cut)" in four


def test_claim_1_says_its_two_by_two_table_in_plain_words_once_both_classes_are_there():
    table = {"matching_connected": 17, "matching_barrier": 0, "non_matching_connected": 4, "non_matching_barrier": 0}
    o = {"verdict": "INCONCLUSIVE", "summary": "matching agrees ...; neither established",
         "effect": {"tau_pp": 2.0, "table": table, "agreement": 17 / 21, "agreement_below_rate_p": 0.152,
                    "fisher_p_one_sided": 1.0, "matching_pairs": 17, "non_matching_pairs": 4}}
    one = get_claim("1").headline(o)
    assert one.endswith("not decided — 0 of 4 determined non-matching pairs show a barrier above 2 pp and 17 of 17 "
                        "matching pairs are connected (agreement 81%, not significantly below 90%: p = 0.15)")
    table.update(matching_barrier=0, non_matching_connected=0, non_matching_barrier=4)
    o.update(verdict="PASS", effect={**o["effect"], "agreement": 1.0, "fisher_p_one_sided": 1e-4})
    assert ": holds — 4 of 4 determined non-matching pairs show a barrier" in get_claim("1").headline(o)
    # short of a class: the counts say what is missing, as before
    o = {"verdict": "INCONCLUSIVE", "summary": "12/12 pairs determined (12 matching, 0 non-matching; 3 of each needed)",
         "effect": {"matching_pairs": 12, "non_matching_pairs": 0}}
    assert get_claim("1").headline(o).endswith("too few determined level pairs: 0 non-matching pairs (3 needed)")
