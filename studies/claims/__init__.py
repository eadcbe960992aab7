"""The study's claims, each declared in a module of its own, and the framework that runs
and analyzes them.

A claim is one module ``c<number><suffix>_<name>.py`` in this package (``c4b_small_batch``
is claim ``C4b``); the study finds it by its file name (`discover`), orders claims by their
number, and needs nothing else: adding a claim is adding its module (and its test).
The module ends in one declaration, ``CLAIM = Claim(...)``: its id, the note's words, the
rule, the anchor, the seed plan, and three functions:

- ``grid(profile) -> list[RunConfig]``: the runs it needs, for profile ``smoke`` (seconds,
  used by the tests), ``quick`` (the whole study in minutes) or ``full`` (the committed
  report);
- ``analyze(ok, runs) -> dict``: from the claim's usable rows (``status == "ok"``; a
  diverged run is a result and stays) and their `Runs` count to its findings: the keyword
  arguments of `studies.report.stats.make_analysis` beyond the declaration's (checks,
  evidence, setup, caveats, tables, figures, convergence, headline);
- ``figures(analysis, out_dir) -> list[pathlib.Path]``: the files it wrote.

The framework (`analyze`) filters a claim's rows, handles a claim none of whose runs
finished (one way for every claim: `no_runs`), and joins the declaration to the findings.
A claim that reads another's reference arm instead of training it again names that claim
in ``reads``: its analysis gets those rows too (the arm is trained once).

A claim that measures something other than training curves registers its own task with
`studies.engine.tasks.register_task` at import; its configs name that task.
`register_tasks` imports every claim module, so that their tasks are known: the command
line passes it to the sweep, which runs it in every worker process.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import re
from types import ModuleType
from typing import Callable

import pandas

from studies.report import stats

PROFILES = ("smoke", "quick", "full")
_MODULE_NAME = re.compile(r"^c(\d+)([a-z]?)_\w+$")


@dataclasses.dataclass(frozen=True)
class Claim:
    """A claim's declaration (see the module docstring).

    Args:
        id: e.g. ``"C4b"``; it must match the module's file name.
        title: the claim in the study note's words.
        rule: the verdict rule in words, as the report prints it, fixed before the run.
        anchor: the published numbers the thresholds come from.
        seed_plan: the claim's `studies.report.stats.SeedPlan`, or None.
        grid, analyze, figures: the claim's functions.
        reads: ids of claims whose rows the analysis also reads (a shared reference arm).
        practice: {verdict: the sentence a practitioner should read when the claim gets that
            verdict} (verdicts of `studies.report.stats.VERDICTS`), e.g. ``{"not supported":
            "below 8 samples per statistic, use GN or LN; recalibrating does not save BN"}``;
            the report's front page prints the one for the computed verdict, or a neutral
            sentence where none is given.
        deviations: {alternative: why} for the judgement calls changed after the rules
            commit (the commit the full run's rows were made at): each key names one of the
            claim's ``alternatives`` (the choice as pre-registered), the value says why it
            changed; the report lists each with the verdict as run and under the alternative.
    """

    id: str
    title: str
    rule: str
    anchor: str
    seed_plan: stats.SeedPlan | None
    grid: Callable[[str], list]
    analyze: Callable[[pandas.DataFrame, "Runs"], dict]
    figures: Callable[[dict, object], list]
    reads: tuple[str, ...] = ()
    practice: dict = dataclasses.field(default_factory=dict)
    deviations: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        unknown = set(self.practice) - set(stats.VERDICTS)
        if unknown:
            raise ValueError(f"practice's keys must be verdicts {stats.VERDICTS}. Received: {sorted(unknown)}")


@dataclasses.dataclass(frozen=True)
class Runs:
    """What became of a claim's runs: all of them, those that failed (left out of the
    analysis) and those that diverged (kept: divergence is a result)."""

    total: int
    failed: int
    diverged: int

    @property
    def ok(self) -> int:
        return self.total - self.failed

    @property
    def note(self) -> str | None:
        """A sentence for the caveats, or None when every run finished and none diverged."""
        if not self.failed and not self.diverged:
            return None
        return (
            f"{self.failed} of {self.total} runs failed and are left out; {self.diverged} of the "
            f"{self.ok} others diverged (loss NaN or infinite; their metrics are NaN from then on)."
        )

    @property
    def summary(self) -> str:
        """A sentence counting the runs ok, failed and diverged, whatever they are."""
        text = f"{self.ok} runs ok, {self.failed} failed (left out), {self.diverged} of the ok runs diverged"
        if self.diverged:
            text += " (their NaN metrics are left out of the estimates)"
        return text + "."


def discover(paths=None) -> dict[str, str]:
    """``{claim id: module name}`` of the claim modules in this package's `paths` (default:
    its ``__path__``), in study order: by number, then suffix (C4 before C4b before C5)."""
    found = {}
    for info in pkgutil.iter_modules(paths if paths is not None else __path__):
        match = _MODULE_NAME.match(info.name)
        if match:
            number, suffix = match.groups()
            found[(int(number), suffix)] = (f"C{number}{suffix}", f"{__name__}.{info.name}")
    return dict(found[key] for key in sorted(found))


MODULES = discover()
#: In study order (C4b, beyond the note: which small-batch remedy works, follows C4).
CLAIM_IDS = tuple(MODULES)


def parse_claims(text: str) -> list[str]:
    """``"all"`` or a comma-separated list of ids (any case) -> ids in study order.
    Raises `ValueError` naming an unknown id."""
    if text.strip().lower() == "all":
        return list(CLAIM_IDS)
    by_upper = {claim_id.upper(): claim_id for claim_id in CLAIM_IDS}
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise ValueError(f"no claim given; known: {', '.join(CLAIM_IDS)} or 'all'")
    for part in parts:
        if part.upper() not in by_upper:
            raise ValueError(f"unknown claim '{part}'; known: {', '.join(CLAIM_IDS)}")
    return sorted({by_upper[part.upper()] for part in parts}, key=CLAIM_IDS.index)


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile '{profile}'; known: {', '.join(PROFILES)}")
    return profile


def load(claim_id: str) -> ModuleType:
    """Imports claim `claim_id`'s module and checks that it declares that id."""
    if claim_id not in MODULES:
        raise ValueError(f"unknown claim '{claim_id}'; known: {', '.join(CLAIM_IDS)}")
    module = importlib.import_module(MODULES[claim_id])
    claim = getattr(module, "CLAIM", None)
    if not isinstance(claim, Claim) or claim.id != claim_id:
        raise ValueError(
            f"{module.__name__} must declare CLAIM = Claim(id={claim_id!r}, ...). "
            f"Received: {getattr(claim, 'id', claim)!r}"
        )
    return module


def declaration(claim_id: str) -> Claim:
    """Claim `claim_id`'s declaration."""
    return load(claim_id).CLAIM


def register_tasks() -> None:
    """Imports every claim's module, registering their tasks (`studies.engine.tasks`). A
    module-level function, so that a sweep's spawned and Ray workers can run it too."""
    for claim_id in CLAIM_IDS:
        load(claim_id)


def plan(claim_ids, profile: str) -> dict[str, list]:
    """``{claim id: its configs for profile}``, checking that every config names its claim."""
    check_profile(profile)
    planned = {}
    for claim_id in claim_ids:
        configs = list(declaration(claim_id).grid(profile))
        strays = {c.claim for c in configs} - {claim_id}
        if strays:
            raise ValueError(f"{MODULES[claim_id]}.grid returned configs of other claims: {sorted(strays)}")
        planned[claim_id] = configs
    return planned


def analyze(claim_id: str, rows: pandas.DataFrame) -> dict:
    """Claim `claim_id`'s analysis (`studies.report.stats.make_analysis`) from `rows`, a
    table that may hold other claims' rows too: the claim's own and those of the claims it
    `reads` are used."""
    claim = declaration(claim_id)
    if len(rows):
        rows = rows[rows["claim"].isin((claim_id, *claim.reads))].reset_index(drop=True)
    ok = rows[rows["status"] == "ok"].reset_index(drop=True) if len(rows) else rows
    diverged = int(ok["diverged"].fillna(False).astype(bool).sum()) if "diverged" in ok else 0
    runs = Runs(total=len(rows), failed=len(rows) - len(ok), diverged=diverged)
    if ok.empty:
        findings = no_runs(runs)
    else:
        findings = claim.analyze(ok, runs)
        # The framework's own judgement call: an arm converged when its median run did.
        with stats.converged_share(1.0):
            strict = claim.analyze(ok, runs)["checks"]
        findings["alternatives"] = {ALL_RUNS_CONVERGED: strict, **findings.get("alternatives", {})}
    analysis = stats.make_analysis(
        claim=claim.id,
        title=claim.title,
        rule=claim.rule,
        anchor=claim.anchor,
        seed_plan=claim.seed_plan,
        **findings,
    )
    # The declaration's words for practitioners and its deviations from the rules commit.
    analysis["practice"] = dict(claim.practice)
    analysis["deviations"] = dict(claim.deviations)
    return analysis


#: The sensitivity table's row for the convergence rule's other choice.
ALL_RUNS_CONVERGED = "convergence judged on every run (not the median run)"


def no_runs(runs: Runs) -> dict:
    """The findings of a claim none of whose runs finished: nothing is measured, so the
    verdict is "inconclusive" (an undecided check without data)."""
    nothing = stats.Estimate(float("nan"), float("nan"), float("nan"), 0)
    return dict(
        checks=[stats.Check("at least one run finished", nothing, 1.0, "at_least", "no runs, no evidence")],
        evidence=[],
        setup="No run of this claim finished; see the caveats.",
        caveats=[
            f"All {runs.total} run(s) failed; their errors are in the stored rows." if runs.total else "No runs."
        ],
    )
