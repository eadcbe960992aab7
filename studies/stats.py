"""Intervals, comparisons and the shape of a claim's analysis.

Every number in the report is a mean over seeds with a 95% Student-t interval and its n
(`INTERVAL` says so in words). A claim's `analyze` returns `make_analysis(...)`: a plain
dict that `studies.report` renders, so that the rule, the numbers and the verdict travel
together and the report adds nothing of its own.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas
from scipy import stats as _scipy_stats

INTERVAL = "95% Student-t interval over seeds"
VERDICTS = ("supported", "partly supported", "not supported")


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


def clearly_greater(a: Estimate, b: Estimate) -> bool:
    """True when a's interval lies wholly above b's (both need n >= 2)."""
    return a.n >= 2 and b.n >= 2 and a.low > b.high


def format_estimate(e: Estimate, digits=2, unit="") -> str:
    """'12.34 [11.90, 12.78] (n=5)' — the mean, the interval, n."""
    if e.n == 0 or not math.isfinite(e.mean):
        return "n/a (n=0)"
    if e.n < 2:
        return f"{e.mean:.{digits}f}{unit} (n=1)"
    return f"{e.mean:.{digits}f}{unit} [{e.low:.{digits}f}, {e.high:.{digits}f}] (n={e.n})"


def verdict_from(parts) -> str:
    """The common rule: 'supported' when every part holds, 'partly supported' when some
    do, 'not supported' when none does. `parts` maps a condition's description to bool."""
    held = [bool(v) for v in dict(parts).values()]
    if held and all(held):
        return "supported"
    if any(held):
        return "partly supported"
    return "not supported"


def make_analysis(
    *,
    claim: str,
    title: str,
    verdict: str,
    rule: str,
    parts: dict,
    evidence: list,
    anchor: str,
    setup: str,
    caveats: list | None = None,
    tables: dict | None = None,
    figures: dict | None = None,
) -> dict:
    """The analysis a claim's `analyze` returns (a dict, JSON-ready).

    Args:
        claim, title: the claim's id and the note's words.
        verdict: one of `VERDICTS`, computed by `rule`.
        rule: the rule in words, as the report prints it.
        parts: {condition in words: bool} — what the rule checked, each with its outcome.
        evidence: list of `(label, Estimate, unit)` — the key numbers, summary first.
        anchor: the published numbers beside ours.
        setup: data, model, grid and profile in words.
        caveats: what limits the conclusion at this scale.
        tables: {name: DataFrame} printed in the claim's section.
        figures: {figure id: caption}, the figures `figures()` writes.
    """
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}. Received: verdict={verdict!r}")
    return {
        "claim": claim,
        "title": title,
        "verdict": verdict,
        "rule": rule,
        "parts": {str(k): bool(v) for k, v in parts.items()},
        "evidence": [
            {"label": label, "unit": unit, **est.to_dict()} for label, est, unit in evidence
        ],
        "anchor": anchor,
        "setup": setup,
        "caveats": list(caveats or []),
        "tables": {name: table.to_dict(orient="records") for name, table in (tables or {}).items()},
        "figures": dict(figures or {}),
    }
