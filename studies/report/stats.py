"""Intervals, checks, verdicts and the shape of a claim's analysis.

Every number in the report is a mean over seeds with a 95% Student-t interval and its n
(`INTERVAL` says so in words). A claim's rule is a list of `Check`s: an effect with its
interval against the size that matters (its threshold, from the anchor), each with one of
three outcomes; `verdict_from_checks` turns them into one of four verdicts, so that "the
data cannot decide" (*inconclusive*) is never reported as evidence against the claim.
Comparisons of end-of-training numbers are blocked (outcome *undecided*) where an arm has
not converged (`plateau`, `unconverged_arms`) or where both arms sit at the ceiling or the
floor (`ceiling_blocker`). `SeedPlan` and `more_seeds_needed` size and extend the seeds.

A claim's `analyze` returns `make_analysis(...)`: a plain dict that `studies.report`
renders, so that the rule, the numbers and the verdict travel together and the report adds
nothing of its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import numpy as np
import pandas
from scipy import stats as _scipy_stats

INTERVAL = "95% Student-t interval over seeds"
OUTCOMES = ("holds", "fails", "undecided")
VERDICTS = ("supported", "partly supported", "inconclusive", "not supported")
KINDS = ("at_least", "at_most", "within")


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Mean of n values with a two-sided 95% Student-t interval (NaN bounds when n < 2)."""

    mean: float
    low: float
    high: float
    n: int

    def __str__(self):
        return format_estimate(self)

    def to_dict(self):
        return dataclasses.asdict(self)


def estimate(values, confidence=0.95) -> Estimate:
    """`Estimate` of the finite values in `values`; NaN mean when none is finite."""
    x = np.asarray([v for v in np.asarray(values, dtype=float).ravel() if math.isfinite(v)])
    n = len(x)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n < 2:
        return Estimate(mean, math.nan, math.nan, 1)
    half = float(_scipy_stats.t.ppf(0.5 + confidence / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return Estimate(mean, mean - half, mean + half, n)


def summarize(rows: pandas.DataFrame, by, value: str) -> pandas.DataFrame:
    """One row per group of `by`: columns `by` + mean, low, high, n of `value`, sorted by
    `by` so that tables and CSVs come out in a stable order."""
    by = [by] if isinstance(by, str) else list(by)
    records = []
    for key, group in rows.groupby(by, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        records.append({**dict(zip(by, key)), **estimate(group[value]).to_dict()})
    return pandas.DataFrame.from_records(records, columns=by + ["mean", "low", "high", "n"])


def format_estimate(e: Estimate, digits=2, unit="") -> str:
    """'12.34 [11.90, 12.78] (n=5)' — the mean, the interval, n."""
    if e.n == 0 or not math.isfinite(e.mean):
        return "n/a (n=0)"
    if e.n < 2:
        return f"{e.mean:.{digits}f}{unit} (n=1)"
    return f"{e.mean:.{digits}f}{unit} [{e.low:.{digits}f}, {e.high:.{digits}f}] (n={e.n})"


def paired_differences(a: pandas.DataFrame, b: pandas.DataFrame, value: str, on="seed") -> np.ndarray:
    """Per-pair differences ``a[value] - b[value]`` of the runs of two arms that share `on`
    (the seed, hence the initial weights and the data order): pairing removes the
    seed-to-seed spread the arms have in common. Pairs with a non-finite side are dropped."""
    on = [on] if isinstance(on, str) else list(on)
    merged = a[on + [value]].merge(b[on + [value]], on=on, suffixes=("_a", "_b"), validate="one_to_one")
    diff = merged[f"{value}_a"].astype(float) - merged[f"{value}_b"].astype(float)
    return diff[np.isfinite(diff)].to_numpy()


@dataclasses.dataclass(frozen=True)
class Check:
    """One check of a claim's rule: an effect with its interval against the size that matters.

    Args:
        name: what is compared, e.g. "BN error at batch 2 minus batch 32, MLP (pp)".
        effect: the effect's mean, 95% interval and n (per-seed paired differences where
            the arms share seeds).
        threshold: the effect size that matters, in the effect's units.
        kind: what the claim says of the effect:
            ``"at_least"``: effect >= threshold (holds when the interval's low end is at or
            above it, fails when its high end is below it);
            ``"at_most"``: effect <= threshold (holds when high <= threshold, fails when
            low > threshold);
            ``"within"``: |effect| < threshold, an equivalence test (holds when the interval
            lies inside (-threshold, threshold), fails when it lies wholly outside it).
        why: where the threshold comes from (the anchor), one sentence.
        unit: the effect's unit as the report prints it (e.g. " pp").
        decisive: decisive checks decide the verdict; a secondary one can only turn
            "supported" into "partly supported".
        blockers: reasons the comparison cannot decide (e.g. "not converged: norm=batch");
            any blocker makes the outcome "undecided", whatever the interval.
        real: a check of the claim's real-data task (MNIST digits, Japanese vowels). The
            verdict comes from the other checks; the real-data checks give a verdict of
            their own, which the report sets beside it (`make_analysis`): a replication,
            never blended in.
    """

    name: str
    effect: Estimate
    threshold: float
    kind: str
    why: str
    unit: str = ""
    decisive: bool = True
    blockers: tuple = ()
    real: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}. Received: kind={self.kind!r}")
        if not math.isfinite(self.threshold) or (self.kind == "within" and self.threshold <= 0):
            raise ValueError(
                "threshold must be finite (and positive for kind='within'). "
                f"Received: threshold={self.threshold!r}, kind={self.kind!r}"
            )
        if not isinstance(self.effect, Estimate):
            raise ValueError(f"effect must be an Estimate. Received: effect={self.effect!r}")
        object.__setattr__(self, "blockers", tuple(str(b) for b in self.blockers if b))

    def outcome(self) -> str:
        """One of `OUTCOMES`: "undecided" also when a blocker applies, n < 2 or a bound is NaN."""
        low, high, t = self.effect.low, self.effect.high, self.threshold
        if self.blockers or self.effect.n < 2 or not (math.isfinite(low) and math.isfinite(high)):
            return "undecided"
        if self.kind == "at_least":
            holds, fails = low >= t, high < t
        elif self.kind == "at_most":
            holds, fails = high <= t, low > t
        else:
            holds, fails = -t < low and high < t, low >= t or high <= -t
        return "holds" if holds else "fails" if fails else "undecided"

    def claim_text(self) -> str:
        """What the claim says of the effect, in symbols: 'effect >= 3 pp'."""
        t = f"{self.threshold:g}{self.unit}"
        return {"at_least": f">= {t}", "at_most": f"<= {t}", "within": f"within ±{t}"}[self.kind]

    def to_dict(self) -> dict:
        """JSON-ready, with the ``outcome``."""
        return {
            "name": self.name,
            "effect": self.effect.to_dict(),
            "threshold": float(self.threshold),
            "kind": self.kind,
            "why": self.why,
            "unit": self.unit,
            "decisive": bool(self.decisive),
            "blockers": list(self.blockers),
            "real": bool(self.real),
            "claim": self.claim_text(),
            "outcome": self.outcome(),
        }


def verdict_from_checks(checks) -> str:
    """The verdict of a claim from its checks (`Check`s or their `to_dict()`s).

    1. any decisive check undecided -> "inconclusive" (the data cannot decide);
    2. every decisive check holds -> "supported" ("partly supported" if a secondary fails);
    3. every decisive check fails -> "not supported" (evidence against the claim);
    4. otherwise (decisive checks hold and fail) -> "partly supported".

    Raises `ValueError` when no check is decisive: a verdict needs a decisive check.
    """
    outcomes = [(c.outcome(), c.decisive) if isinstance(c, Check) else (c["outcome"], c["decisive"]) for c in checks]
    decisive = [o for o, d in outcomes if d]
    if not decisive:
        raise ValueError(f"a verdict needs at least one decisive check. Received: {len(outcomes)} check(s), none decisive")
    if "undecided" in decisive:
        return "inconclusive"
    if all(o == "holds" for o in decisive):
        return "partly supported" if any(o == "fails" for o, d in outcomes if not d) else "supported"
    if all(o == "fails" for o in decisive):
        return "not supported"
    return "partly supported"


def deciding_check(checks, verdict=None, preferred=None) -> dict | None:
    """The check that decides `verdict` (default: `verdict_from_checks(checks)`), as a
    `Check.to_dict()`; None without a decisive check. Among the checks that decide, the one
    named `preferred` (a claim's headline) if it is one, else the first:

    - "inconclusive": a decisive check that is undecided;
    - "not supported": a decisive check that fails (all do);
    - "partly supported": a decisive check that fails, or, where all hold, a secondary one
      that fails (what keeps the claim from "supported");
    - "supported": a decisive check that holds (all do).
    """
    checks = [c.to_dict() if isinstance(c, Check) else c for c in checks]
    decisive = [c for c in checks if c["decisive"]]
    if not decisive:
        return None
    verdict = verdict or verdict_from_checks(checks)
    failing = [c for c in decisive if c["outcome"] == "fails"]
    candidates = {
        "inconclusive": [c for c in decisive if c["outcome"] == "undecided"],
        "not supported": failing,
        "partly supported": failing or [c for c in checks if not c["decisive"] and c["outcome"] == "fails"],
        "supported": [c for c in decisive if c["outcome"] == "holds"],
    }.get(verdict) or decisive
    return next((c for c in candidates if c["name"] == preferred), candidates[0])


#: A run has converged when the last fifth of its training removed at most 5 % of its total
#: decrease of the training loss. Fixed before any full run: were the decrease to go on at
#: that rate, a quarter more training would lower the loss by at most 5 % of what it has
#: already gained, below what the claims' thresholds can resolve.
PLATEAU_THRESHOLD = 0.05
PLATEAU_FRACTION = 0.2
#: An arm has converged when at least this share of its runs that did not diverge has: its
#: median run. Set after the first full run with 8 seeds an arm (the stacked blocks'),
#: before the committed one: the plateau of one run is a two-point difference, and where an
#: arm's loss falls little in all (C4's MLP with BN at batch 2, 80 % test error) it scatters
#: around zero from run to run (-0.08 to 0.12 at 30 epochs, and again at 60, with the error
#: unchanged), so an all-runs rule blocked arms at rest more often the more seeds they had.
CONVERGED_SHARE = 0.5


def plateau(losses, fraction=PLATEAU_FRACTION) -> float:
    """The convergence measure of one run: how much of the training loss's decrease came
    in the last `fraction` of training.

    ``(loss[-1-k] - loss[-1]) / (loss[0] - loss[-1])`` with ``k = max(1, ceil(E * fraction))``
    for E logged epochs: near 0 (or negative: rising at the end) when the loss has levelled
    off, near 1 when most of it came at the end, above 1 when the loss rose and is falling
    back. A loss that never fell below its first value scores 0 when it is not falling at
    the end and 1 when it is (the ratio's denominator would be zero or negative). NaN for
    diverged runs (any non-finite value) and fewer than 2 epochs.

    Args:
        losses: the training loss per epoch (the run's ``train/loss`` list).
        fraction: the share of the epochs that counts as "the end of training".
    """
    x = np.asarray(losses if losses is not None else [], dtype=float).ravel()
    if len(x) < 2 or not np.isfinite(x).all():
        return math.nan
    k = min(len(x) - 1, max(1, math.ceil(len(x) * fraction)))
    total = float(x[0] - x[-1])
    recent = float(x[-1 - k] - x[-1])
    if total <= 0.0:
        return 1.0 if recent > 0.0 else 0.0
    return recent / total


def converged(losses, threshold=PLATEAU_THRESHOLD) -> bool:
    """True when `plateau(losses)` is finite and at most `threshold`."""
    p = plateau(losses)
    return math.isfinite(p) and p <= threshold


def _arms(rows: pandas.DataFrame, by):
    by = [by] if isinstance(by, str) else list(by)
    ok = rows[rows["status"] == "ok"] if "status" in rows else rows
    for key, group in ok.groupby(by, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        yield by, key, group


def convergence_table(rows: pandas.DataFrame, by, loss="train/loss", threshold=PLATEAU_THRESHOLD) -> pandas.DataFrame:
    """Per arm (a group of `by`): ``runs``, ``diverged``, ``converged`` (runs whose
    `plateau` is at most `threshold`), the ``median_plateau`` and ``worst_plateau`` of the
    runs that did not diverge. Rows of failed runs (``status`` not ``ok``) are left out."""
    records = []
    for by_cols, key, group in _arms(rows, by):
        values = np.asarray([plateau(v) for v in group[loss]], dtype=float)
        finite = values[np.isfinite(values)]
        diverged = int(group["diverged"].astype(bool).sum()) if "diverged" in group else int((~np.isfinite(values)).sum())
        records.append({
            **dict(zip(by_cols, key)),
            "runs": len(group),
            "diverged": diverged,
            "converged": int((finite <= threshold).sum()),
            "median_plateau": float(np.median(finite)) if len(finite) else math.nan,
            "worst_plateau": float(finite.max()) if len(finite) else math.nan,
        })
    columns = ([by] if isinstance(by, str) else list(by)) + ["runs", "diverged", "converged", "median_plateau", "worst_plateau"]
    return pandas.DataFrame.from_records(records, columns=columns)


#: When and why the median-run rule came (the report says it beside its verdict scale).
CONVERGED_SHARE_WHY = (
    f"Arms converge by their median run (`stats.CONVERGED_SHARE` = {CONVERGED_SHARE:g}), a rule "
    "set after the first full run with 8 seeds an arm and before this one: there every run "
    "had to, and the plateaus of C4's MLP BN at a normalization batch of 2 (-0.08 to 0.12) "
    "blocked both of its decisive checks; rerun at 60 epochs instead of 30 they scattered the "
    "same way, with the same 80 % test error, so those arms were at rest and the rule was "
    "reading noise."
)


@contextlib.contextmanager
def converged_share(share: float):
    """Within the block, arms converge when `share` of their runs have (instead of
    `CONVERGED_SHARE`): the sensitivity of a verdict to that judgement call."""
    global CONVERGED_SHARE
    before, CONVERGED_SHARE = CONVERGED_SHARE, float(share)
    try:
        yield
    finally:
        CONVERGED_SHARE = before


def arm_unconverged(record: dict, share=None) -> bool:
    """True for a `convergence_table` record (an arm) where fewer than `share` (default
    `CONVERGED_SHARE`) of the runs that did not diverge converged, or whose runs all
    diverged."""
    share = CONVERGED_SHARE if share is None else share
    finite = record["runs"] - record["diverged"]
    return finite == 0 or record["converged"] < share * finite


def unconverged_arms(rows: pandas.DataFrame, by, share=None, loss="train/loss",
                     threshold=PLATEAU_THRESHOLD) -> list[str]:
    """Blocker texts, one per arm of `by` that `arm_unconverged` names (by default: fewer
    than half its runs converged), e.g.
    ``"not converged: norm=batch, batch_size=2 (1 of 5 runs)"``. Empty when none is."""
    blockers = []
    table = convergence_table(rows, by, loss, threshold)
    by = [by] if isinstance(by, str) else list(by)
    for r in table.to_dict(orient="records"):
        finite = r["runs"] - r["diverged"]
        if arm_unconverged(r, share):
            arm = ", ".join(f"{c}={r[c]}" for c in by)
            blockers.append(f"not converged: {arm} ({r['converged']} of {finite} runs)")
    return blockers


#: Two arms both within this many percentage points of 100 % accuracy (or of chance) cannot
#: show a difference: at 99 % a test set of a thousand holds ten errors, and the claims'
#: thresholds (1-3 pp) are as large as all the room left.
CEILING_MARGIN_PP = 1.0


def ceiling_blocker(acc_a, acc_b, chance: float, label: str, margin=CEILING_MARGIN_PP) -> str | None:
    """A blocker text when both accuracies (in %, `Estimate`s or numbers; their means
    count) lie within `margin` pp of 100 % ("at the ceiling") or of `chance` % ("at the
    floor"), else None. `label` names the comparison."""
    a, b = (float(x.mean if isinstance(x, Estimate) else x) for x in (acc_a, acc_b))
    if not (math.isfinite(a) and math.isfinite(b)):
        return None
    if min(a, b) >= 100.0 - margin:
        return f"at the ceiling: {label}: both arms within {margin:g} pp of 100 % ({a:.2f} %, {b:.2f} %)"
    if max(a, b) <= chance + margin:
        return f"at the floor: {label}: both arms within {margin:g} pp of chance, {chance:g} % ({a:.2f} %, {b:.2f} %)"
    return None


def ceiling_summary(checks) -> str:
    """A caveat stating the ceiling-and-floor check of a claim's `checks` (`Check`s):
    which of them `ceiling_blocker` blocked, or that none was."""
    blocked = [c.name for c in checks if any(b.startswith(("at the ceiling", "at the floor")) for b in c.blockers)]
    head = (f"Ceiling and floor: a check comparing two arms both within {CEILING_MARGIN_PP:g} pp of "
            "100 % accuracy or of chance is undecided; ")
    if not blocked:
        return head + f"none of the {len(checks)} checks was."
    return head + f"{len(blocked)} of {len(checks)} were: " + "; ".join(blocked) + "."


def seeds_needed(sd: float, threshold: float, confidence=0.95, minimum=2, cap=None) -> int:
    """The smallest n (at least `minimum`, at most `cap`) whose Student-t interval of a
    mean of n values with standard deviation `sd` (a paired difference's, from a pilot) has
    a half-width of at most ``threshold / 2``: then an effect at zero or at twice the
    threshold is told from the threshold itself."""
    if not (math.isfinite(sd) and sd >= 0) or not (math.isfinite(threshold) and threshold > 0):
        raise ValueError(f"sd must be finite and >= 0, threshold finite and > 0. Received: sd={sd!r}, threshold={threshold!r}")
    n = max(2, int(minimum))
    while True:
        half = _scipy_stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
        if half <= threshold / 2 or (cap is not None and n >= cap):
            return n
        n += 1


@dataclasses.dataclass(frozen=True)
class SeedPlan:
    """A claim's seeds, declared at the top of its module before the full run.

    Args:
        pilot: seeds of the pilot whose spread sized `initial`.
        initial: seeds per arm in the full profile.
        block: seeds added per step of the sequential plan while a decisive check is
            undecided for want of precision.
        cap: never more seeds per arm than this.
        why: how `initial` follows from the pilot, e.g. "pilot sd 1.4 pp of the BN batch-2
            minus batch-32 difference -> n=8 for half-width 1.5 pp".
    """

    pilot: int
    initial: int
    block: int
    cap: int
    why: str

    def __post_init__(self):
        if not (self.pilot >= 2 and self.initial >= 2 and self.block >= 1 and self.cap >= self.initial):
            raise ValueError(
                "a seed plan needs pilot >= 2, initial >= 2, block >= 1 and cap >= initial. "
                f"Received: pilot={self.pilot}, initial={self.initial}, block={self.block}, cap={self.cap}"
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def more_seeds_needed(analysis: dict, plan: SeedPlan, n_now: int) -> int:
    """Seeds per arm the sequential `plan` adds to a claim with `n_now` seeds per arm: one
    `block` (at most up to the cap) while a decisive check of `analysis` is undecided for
    want of precision, else 0. A check with blockers (not converged, at the ceiling) is left
    out: more seeds cannot remove them."""
    short = [
        c for c in analysis["checks"]
        if c["decisive"] and c["outcome"] == "undecided" and not c["blockers"]
    ]
    if not short or n_now >= plan.cap:
        return 0
    return min(plan.block, plan.cap - n_now)


def agreement(verdict: str, real_verdict: str | None) -> str | None:
    """Whether a claim's real-data task agrees with its verdict: "agrees" when both
    verdicts are the same, "disagrees" when both are decided and differ, "cannot tell" when
    either is inconclusive, None without a real-data task."""
    if real_verdict is None:
        return None
    if "inconclusive" in (verdict, real_verdict):
        return "cannot tell"
    return "agrees" if verdict == real_verdict else "disagrees"


def make_analysis(
    *,
    claim: str,
    title: str,
    rule: str,
    evidence: list,
    anchor: str,
    setup: str,
    checks: list,
    seed_plan: SeedPlan | None = None,
    convergence: pandas.DataFrame | None = None,
    headline: str | None = None,
    caveats: list | None = None,
    tables: dict | None = None,
    figures: dict | None = None,
    alternatives: dict | None = None,
) -> dict:
    """The analysis a claim's `analyze` returns (a dict, JSON-ready).

    Args:
        claim, title: the claim's id and the note's words.
        rule: the rule in words, as the report prints it.
        evidence: list of `(label, Estimate, unit)` — the key numbers, summary first.
        anchor: the published numbers beside ours.
        setup: data, model, grid and profile in words.
        checks: the rule's `Check`s; the verdict is `verdict_from_checks` of those not
            ``real``; the real-data task's checks give ``real_verdict`` and ``real_agrees``.
        seed_plan: the claim's `SeedPlan` (the report prints it beside n).
        convergence: the per-arm `convergence_table`; None only for a claim whose budget is
            the measurement (say so in a caveat).
        headline: the name of the check the summary figure shows (default: the first
            decisive one).
        caveats: what limits the conclusion at this scale.
        tables: {name: DataFrame} for the claim's page.
        figures: {figure id: caption}, the figures `figures()` writes.
        alternatives: {judgement call: its checks}, the rule's checks under each other
            choice the claim could have made (e.g. "BN momentum 0.9 instead of 0.99");
            the analysis's ``sensitivity`` gives the verdict under each.
    """
    checks = [c.to_dict() for c in checks]
    verdict = verdict_from_checks([c for c in checks if not c.get("real")])
    real_checks = [c for c in checks if c.get("real")]
    real_verdict = verdict_from_checks(real_checks) if any(c["decisive"] for c in real_checks) else None
    names = [c["name"] for c in checks]
    if headline is None:
        headline = next(c["name"] for c in checks if c["decisive"])
    elif headline not in names:
        raise ValueError(f"headline must name one of the checks {names}. Received: headline={headline!r}")
    return {
        "claim": claim,
        "title": title,
        "verdict": verdict,
        "real_verdict": real_verdict,
        "real_agrees": agreement(verdict, real_verdict),
        "rule": rule,
        "checks": checks,
        "headline": headline,
        "seed_plan": seed_plan.to_dict() if seed_plan is not None else None,
        "convergence": convergence.to_dict(orient="records") if convergence is not None else None,
        "evidence": [
            {"label": label, "unit": unit, **est.to_dict()} for label, est, unit in evidence
        ],
        "anchor": anchor,
        "setup": setup,
        "caveats": list(caveats or []),
        "tables": {name: table.to_dict(orient="records") for name, table in (tables or {}).items()},
        "figures": dict(figures or {}),
        "sensitivity": [
            {"alternative": name, "verdict": verdict_from_checks([c for c in alt if not c.real])}
            for name, alt in (alternatives or {}).items()
        ],
    }
