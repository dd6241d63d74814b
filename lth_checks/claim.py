"""What a claim is: one small interface that the pytest plugin, the report, the evidence archive and
the planner use, and the registry of every claim a run knows.

A claim (one module, e.g. `lth_checks/paper/claim1_connectivity.py`) subclasses `Claim` and says:
what it is (`id`, `title`, the names of its thresholds in `thresholds.py`, the choices it makes),
what it needs (`plan`: the jobs it adds to the planner), what it measures (`evidence`: a JSON-ready
dict of per-example correctness and scalars), how it decides (`decide`: verdict, tau sweep and
measured tables from the evidence alone, so an archive can be re-decided without weights), and how
it shows (`headline`: one plain-words sentence for the verdict table; `tables`, `figures`).
`Claim.run(ctx, recipe)` is the common flow: evidence, decision,
the scale's premise gate, the outcome record. Registering an instance (`register`) is all the plugin,
the report, `lth-checks report --from-evidence` and `lth-checks plan` need to know about it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import thresholds as T
from . import verdicts as V

if TYPE_CHECKING:
    from .evidence import ClaimContext
    from .imp import Experiment


class NotDecidable(Exception):
    """Raised by `Claim.evidence` when this run cannot give the claim evidence (too few levels, ...):
    the outcome is INCONCLUSIVE with the message, and the premise is not consulted."""

    def __init__(self, summary: str, experiments: list | None = None):
        super().__init__(summary)
        self.summary = summary
        self.experiments = experiments or []


@dataclass(frozen=True)
class FigureSpec:
    """One figure of a claim: file stem, caption, and a function that draws it (a matplotlib Figure, or
    None when the data do not allow it). `lead`: the figure that carries the verdict, shown small at
    the top of the report beside the verdict table (one per claim)."""

    stem: str
    caption: str
    draw: Callable[[], Any]
    lead: bool = False


class Claim:
    """One claim of a paper (or one part of it, as 3a-3d), tested by one pytest test per recipe.

    Subclasses set the class attributes and implement `evidence` and `decide`; the rest has defaults.
    """

    id: str = ""  # short id shown in verdict tables ("1", "3a"); letters, digits, '_', '.', '-' (results schema)
    title: str = ""
    statement: str = ""  # the claim in plain words, opening its sentence in the verdict table ("" = title)
    thresholds: tuple[str, ...] = ()  # names in thresholds.py (or in `own_thresholds`) the verdict depends on
    own_thresholds: dict[str, T.Threshold] = {}  # thresholds of a claim defined outside thresholds.py
    test_file: str = ""  # the claims/ test file; `owns_test` maps collected tests to `plan_tag`
    plan_tag: str = ""  # planner tag of its jobs; claims that share experiments share one ("" = `id`)
    tabulated: frozenset[str] | None = None  # keys of `measured` that `tables` shows (the rest is listed)

    # --------------------------------------------------------------------------- what it is
    def choices(self, ctx: ClaimContext) -> list[str]:
        """Choices (ours unless a source is named) shown in the report beside the common ones."""
        return []

    def threshold_table(self) -> dict[str, dict]:
        names = [*self.thresholds, "MIN_REPLICATES_PAPER"]
        return {n: (self.own_thresholds.get(n) or T.ALL[n]).to_dict() for n in names}

    @property
    def tag(self) -> str:
        return self.plan_tag or self.id

    def owns_test(self, nodeid: str) -> bool:
        """Whether a collected claims test (its node id) asks for this claim's experiments."""
        return bool(self.test_file) and self.test_file in nodeid

    # --------------------------------------------------------------------------- what it needs
    def plan(self, b: Any, recipe: str) -> None:
        """Add the jobs this claim asks for to the planner (`plan._Builder`: `b.ctx`, `b.lineage`,
        `b.branches`, `b.measure`, ...). Claims sharing a `plan_tag` are planned once, by the first."""

    # --------------------------------------------------------------------------- what it measures
    def evidence(self, ctx: ClaimContext, recipe: str, outcome: dict) -> tuple[dict, list[Experiment]]:
        """(evidence, experiments used): everything `decide` reads; `evidence["claim"]` is `id`. May add
        to `outcome["choices"]` what it learns while measuring; raises NotDecidable where it cannot."""
        raise NotImplementedError

    def decide(self, ev: dict) -> tuple[V.Verdict, dict[str, str] | None, dict]:
        """(verdict at the default tau, verdict per tau of the sweep or None, measured tables)."""
        raise NotImplementedError

    # --------------------------------------------------------------------------- how it shows
    def headline(self, outcome: dict) -> str:
        """One sentence in plain words for the top of the report: what was tested and what the data say
        ("<statement>: holds / contradicted / not decided — <why>"). Default: the why from the summary."""
        return headline(self.statement or self.title, outcome)

    def said(self, outcome: dict, why: str) -> str:
        """The headline with a why of the claim's own (its numbers in plain words) in place of the summary's."""
        return headline(self.statement or self.title, outcome, why)

    def tables(self, doc: dict, outcome: dict, measured: dict) -> list:
        """The measured values as `lth_checks.report.tables.Table`s; default: generic tables."""
        from .report.tables import measured_generic

        return measured_generic(measured)

    def figures(self, doc: dict, outcome: dict) -> list[FigureSpec]:
        """Figures drawn from this outcome alone."""
        return []

    def shared_figures(self, doc: dict, outcomes: list[dict]) -> list[tuple[FigureSpec, str, list[int]]]:
        """Figures drawn from several outcomes of the run: (figure, recipe, indices of the outcomes
        it belongs to)."""
        return []

    def synthetic(self) -> dict[str, Callable]:
        """Generators of synthetic evidence for the rule's measured error rates (`lth_checks.rates`): name ->
        (model "holds" / "false" / "noise", size, numpy Generator) -> evidence. Default: none."""
        return {}

    # --------------------------------------------------------------------------- the common flow
    def run(self, ctx: ClaimContext, recipe: str) -> dict:
        """Measure, decide and gate by the scale's premise: the JSON-ready outcome of one (claim, recipe)."""
        from . import evidence as E
        from .errors import DivergenceError

        started = time.perf_counter()
        outcome = E.base_outcome(self, recipe, ctx)
        try:
            ev, exps = self.evidence(ctx, recipe, outcome)
        except NotDecidable as e:
            return E.finish(outcome, V.Verdict(V.INCONCLUSIVE, e.summary), None, started, e.experiments)
        except DivergenceError as e:
            return E.finish(outcome, V.Verdict(V.INCONCLUSIVE, f"diverged: {e}"), None, started, [])
        return E.decided(outcome, ev, started, exps, ctx)


# ------------------------------------------------------------------------------------------ headline

VERDICT_WORDS = {V.PASS: "holds", V.FAIL: "contradicted", V.INCONCLUSIVE: "not decided"}


def clauses(text: str, sep: str = "; ") -> list[str]:
    """`text` split at `sep` outside parentheses and brackets."""
    out, depth, start, i = [], 0, 0, 0
    while i < len(text):
        if text[i] in "([":
            depth += 1
        elif text[i] in ")]":
            depth -= 1
        if depth <= 0 and text.startswith(sep, i):
            out.append(text[start:i])
            start = i = i + len(sep)
            continue
        i += 1
    return [c for c in (*out, text[start:]) if c.strip()]


def reason(summary: str, verdict: str) -> str:
    """The why of a verdict in few words, from its summary: a diverged run, an unmet premise, the data an
    underpowered verdict needs, or the summary's first clause (with what an undecided one still needs)."""
    summary = summary.strip()
    if summary.startswith("diverged"):
        return "a training run diverged"
    if summary.startswith("premise not met"):
        why = re.search(r"pp: ([^;]*)", summary)
        return "the scale's premise is not met" + (f" ({why.group(1)})" if why else "")
    parts = clauses(summary)
    if not parts:
        return ""
    if parts[0].startswith("underpowered"):
        needs = [p for p in parts if p.startswith("needs ")]
        needs = [re.sub(r" \(.*\)$", "", n) for n in needs]  # without its parenthesised measurement
        return "too little data to resolve it" + (f" ({needs[0]})" if needs else "")
    first = parts[0]
    head = clauses(first, ": ")
    if len(head) > 1 and len(first) - len(head[0]) > 60:  # a long list after the colon: keep its lead
        first = head[0]
    extra = [p for p in parts[1:] if verdict == V.INCONCLUSIVE and ("needed" in p or p.startswith("run with"))]
    return "; ".join([first, *extra[:1]])


def headline(statement: str, outcome: dict, why: str | None = None) -> str:
    verdict = str(outcome.get("verdict", ""))
    words = VERDICT_WORDS.get(verdict, f"verdict {verdict or 'missing'}")
    if why is None:
        why = reason(str(outcome.get("summary") or ""), verdict)
    text = statement[:1].upper() + statement[1:]
    return f"{text}: {words}" + (f" — {why}" if why else "")


# ------------------------------------------------------------------------------------------ registry

_REGISTRY: dict[str, Claim] = {}


def register(claim: Claim) -> Claim:
    """Make a claim known to the plugin, the report, the archive and the planner (by its id)."""
    if not claim.id:
        raise ValueError(f"{type(claim).__name__} has no id")
    _REGISTRY[claim.id] = claim
    return claim


def registry() -> dict[str, Claim]:
    """Every registered claim by id, the paper's first, in their order."""
    from . import paper  # noqa: F401 - registers the paper's claims

    return dict(_REGISTRY)


def get_claim(claim_id: str) -> Claim | None:
    return registry().get(str(claim_id))


def decide(ev: dict) -> tuple[V.Verdict, dict[str, str] | None, dict]:
    """A claim's verdict, tau sweep and measured tables from its evidence alone (no weights needed)."""
    claim = get_claim(ev["claim"])
    if claim is None:
        from .errors import LthError

        raise LthError(f"no registered claim {ev['claim']!r} to decide this evidence; import the module that "
                       "defines it")
    return claim.decide(ev)


def claims_of_test(nodeid: str) -> set[str]:
    """The planner tags of the claims a collected claims test asks for."""
    return {c.tag for c in registry().values() if c.owns_test(nodeid)}


def planned_claims() -> list[Claim]:
    """One claim per planner tag, in registry order (claims sharing experiments are planned once)."""
    seen: dict[str, Claim] = {}
    for c in registry().values():
        seen.setdefault(c.tag, c)
    return list(seen.values())
