"""`reports/REPORT.md`, one page per claim (`reports/claims/<id>.md`) and their figures,
from stored results only: a pure function of the results directory (no training, no clock),
so regenerating gives the same bytes.

Each claim module's `analyze(rows)` returns `studies.report.stats.make_analysis(...)`; this module
renders those dicts:

- REPORT.md, the front page for practitioners: the summary forest plot (fig-summary, one row
  per claim and task, at the check that decides the verdict), then per claim its verdict, the
  real-data task's verdict and whether it agrees, one sentence on what it means in practice
  (the claim's ``practice``) and its key figure; the sensitivity of the verdicts to the
  judgement calls, the deviations from the rules commit, the verdict scale and provenance;
- ``claims/<id>.md``: setup, figures, key numbers, the rule and its checks, convergence,
  ceiling and power per task, the seed plan, sensitivity, anchor, caveats and every table;
- ``sensitivity.md`` (the full sensitivity table) and ``bench.md`` (the layer and engine
  benchmarks of `bench.json`, written by `python -m studies bench`).

Every link resolves inside the repository: the rules' design is `studies/DESIGN.md`.
"""

from __future__ import annotations

import json
import math
import os
import pathlib

import pandas

from studies import claims as claims_registry
from studies import plan as seed_planning
from studies.engine.real_data import NAMES as REAL_DATASETS
from studies.engine.store import MANIFEST, load_rows, write_text
from studies.report import plots, stats
from studies.report.stats import INTERVAL

MANIFEST = MANIFEST
#: Column order of the benchmark tables (bench.json stores its keys sorted).
BENCH_COLUMNS = {
    "table": [
        "shape", "layer", "mode", "xla", "keras_ms", "kerasnorm_ms", "floor_ms", "ratio",
        "keras_vs_keras", "target", "met", "met_at_fixed_ratio",
    ],
    "folding": ["block", "xla", "keras_ms", "kerasnorm_ms", "folded_ms", "folded_vs_keras"],
    "throughput": [
        "executor", "workers", "runs", "wall_s", "runs_per_min", "wall_speedup_vs_1",
        "steady_runs_per_min", "speedup_vs_1", "met",
    ],
    "engine": [
        "model", "seeds", "steps_per_seed", "epochs", "repeats", "plain_wall_s", "engine_wall_s",
        "ratio", "plain_overhead", "engine_overhead", "target", "met",
    ],
}
BENCH = "bench.json"

FORMULA_NOTE = (
    "The study note writes the variance as \"sigma\" and normalizes by it directly. The layers "
    "(and this study) compute `x_hat = (x - mu) / sqrt(var + epsilon)`, where `var` is the "
    "biased variance of the normalized group and `epsilon` (default 1e-3, as in Keras) keeps "
    "the division finite; the output is `gamma * x_hat + beta`."
)


def _fmt(value, digits=2):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _estimate_text(e, digits=2):
    unit = e.get("unit") or ""
    if not e["n"] or not math.isfinite(e["mean"]):
        return "n/a (n=0)"
    if e["n"] < 2 or not math.isfinite(e["low"]):
        return f"{e['mean']:.{digits}f}{unit} (n={e['n']})"
    return f"{e['mean']:.{digits}f}{unit} [{e['low']:.{digits}f}, {e['high']:.{digits}f}] (n={e['n']})"


def _table(records, digits=3, columns=None):
    """A Markdown table from a list of dicts (as `make_analysis` stores tables), with
    `columns` in that order (default: the first record's keys)."""
    if not records:
        return "_(empty)_\n"
    columns = columns or list(records[0].keys())
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in records:
        lines.append("| " + " | ".join(_fmt(r.get(c), digits) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _read_json(path: pathlib.Path):
    return json.loads(path.read_text()) if path.exists() else None


def planned_rows(rows, profile, seeds=None):
    """The rows of runs that `profile`'s grids plan, with each claim's seeds extended to
    `seeds[claim]` per arm where the sequential seed plan added some (`studies.plan`): a
    store may also hold runs of grids since changed, or of another profile, which must not
    enter this report."""
    if profile is None or not len(rows):
        return rows
    planned = seed_planning.extend(claims_registry.plan(claims_registry.CLAIM_IDS, profile), seeds or {})
    keys = {c.key() for configs in planned.values() for c in configs}
    return rows[rows["key"].isin(keys)].reset_index(drop=True)


def analyze_all(results_dir, figures_dir, profile=None):
    """{claim id: analysis or None} for every claim, from the rows `profile` plans (all
    rows when None); figures written to `figures_dir`."""
    seeds = seed_planning.read_seeds(results_dir, profile)
    rows = planned_rows(load_rows(results_dir), profile, seeds)
    analyses = {}
    for claim_id in claims_registry.CLAIM_IDS:
        if not len(rows) or not (rows["claim"] == claim_id).any():
            analyses[claim_id] = None
            continue
        analysis = claims_registry.analyze(claim_id, rows)
        claims_registry.declaration(claim_id).figures(analysis, figures_dir)
        analyses[claim_id] = analysis
    return rows, analyses


VERDICT_SCALE = (
    "Each claim's rule is a set of **checks**. A check compares an effect (a mean over seeds "
    "with its 95% interval; paired per-seed differences where the arms share seeds) with the "
    "effect size that matters, its **threshold**, taken from the published anchor. A check "
    "**holds** when the whole interval lies on the claim's side of the threshold, **fails** "
    "when the whole interval lies on the other side (evidence against the claim, as in an "
    "equivalence test), and is **undecided** when the interval spans the threshold, or when a "
    "blocker applies: an arm whose training loss had not levelled off (in fewer than "
    f"{stats.CONVERGED_SHARE:.0%} of its runs, the loss fell by at most "
    f"{stats.PLATEAU_THRESHOLD:.0%} of its total decrease over the last "
    f"{stats.PLATEAU_FRACTION:.0%} of training), or two arms both within "
    f"{stats.CEILING_MARGIN_PP:g} pp of 100 % accuracy (or of chance). Decisive checks decide "
    "the verdict; secondary ones can only lower *supported* to *partly supported*. "
    "**supported**: every decisive check holds; **partly supported**: decisive checks hold and "
    "fail, or all hold and a secondary one fails; **inconclusive**: a decisive check is still "
    "undecided after the planned seeds (the data cannot decide, which is not evidence against "
    "the claim); **not supported**: every decisive check fails. A claim's real-data task has "
    "checks of its own and a verdict of its own, set beside the claim's, never blended in. "
    "Seeds per arm come from a pilot's spread; a sequential plan adds seeds in blocks, up to a "
    "cap, while a decisive check is undecided for want of precision. The design and the "
    "reasons behind each rule: {design}.\n"
)
SUMMARY_FIGURE = "fig-summary"
#: fig-summary's axis reaches at most this many thresholds from 0; beyond, an arrow.
SUMMARY_LIMIT = 20.0
SUMMARY_CAPTION = (
    "One row per claim and task (diamond: the synthetic task; circle: the real-data task): "
    "the effect of the check that decides the task's verdict (for *inconclusive*, an undecided "
    "decisive check; for *not supported* and *partly supported*, a failing one; for "
    "*supported*, a decisive check that holds), with its 95% interval, divided by the size of "
    "its threshold, so that every threshold sits at +1 or -1 (ticks; both for an equivalence "
    "check) and 0 is no effect; linear within ±2, logarithmic beyond; a value past the axis's "
    "end is drawn at the edge as an arrow (hollow point) with its value. Colour: the verdict. "
    "Right: the raw effect with its n, the claim's side of the threshold and the outcome."
)
#: The tasks of a claim: the synthetic one decides its verdict; the real-data one (checks
#: with ``real``) gives a verdict of its own.
TASKS = (("synthetic", False), ("real data", True))
#: The front page's sentence for a claim whose declaration gives none for its verdict.
NEUTRAL_PRACTICE = {
    "supported": "At this scale the measurements back the note's statement; the claim's page "
                 "gives the conditions it was measured under.",
    "partly supported": "Only part of the note's statement holds at this scale; the claim's page "
                        "says which part before you rely on it.",
    "inconclusive": "The measurements cannot decide this yet: do not rely on it either way.",
    "not supported": "At this scale the measurements go against the note's statement: do not "
                     "rely on it.",
}
#: Where the study's design lives, relative to the repository root.
DESIGN = pathlib.Path(__file__).resolve().parents[1] / "DESIGN.md"
#: The pages beside REPORT.md.
BENCH_PAGE = "bench.md"
SENSITIVITY_PAGE = "sensitivity.md"


def _page_link(claim_id):
    return f"claims/{claim_id.lower()}.md"


def _resolve(text, design):
    """`text` with its mentions of the study's design file pointing at the project's own."""
    return text.replace("CLAIMS.md", f"[the study's design]({design})")


def _check_effect_text(c):
    return _estimate_text({**c["effect"], "unit": c["unit"]})


def _task_checks(a, real):
    return [c for c in a["checks"] if bool(c.get("real")) == real]


def _task_verdict(a, real):
    return a.get("real_verdict") if real else a["verdict"]


def deciding_check(a, real=False):
    """The check that decides the task's verdict (`stats.deciding_check`; the claim's
    headline where it is one of those), or None for a claim without a real-data task."""
    verdict = _task_verdict(a, real)
    if verdict is None:
        return None
    return stats.deciding_check(_task_checks(a, real), verdict, a.get("headline"))


def summary_table(analyses) -> pandas.DataFrame:
    """The numbers fig-summary plots, one row per claim and task: the deciding check's raw
    effect, threshold and outcome, the effect divided by the threshold's size (``scale``),
    and what the axis shows (``shown_*``: clipped to ``limit``, ``clipped`` where any is)."""
    records = []
    for claim_id, a in analyses.items():
        if a is None:
            records.append({"claim": claim_id, "task": "synthetic", "verdict": "not run"})
            continue
        for task, real in TASKS:
            c = deciding_check(a, real)
            if c is None:
                continue
            e = c["effect"]
            # A zero threshold has no size: the interval's own reach scales the row instead.
            reach = [abs(v) for v in (e["mean"], e["low"], e["high"]) if math.isfinite(v)]
            scale = abs(c["threshold"]) or max(reach, default=0.0) or 1.0
            records.append({
                "claim": claim_id, "task": task, "verdict": _task_verdict(a, real), "check": c["name"],
                "kind": c["kind"], "threshold": c["threshold"], "unit": c["unit"].strip(), "mean": e["mean"],
                "low": e["low"], "high": e["high"], "n": e["n"], "outcome": c["outcome"], "scale": scale,
                "scaled_mean": e["mean"] / scale, "scaled_low": e["low"] / scale, "scaled_high": e["high"] / scale,
                "scaled_threshold": c["threshold"] / scale,
            })  # fmt: skip
    columns = ["claim", "task", "verdict", "check", "kind", "threshold", "unit", "mean", "low", "high", "n",
               "outcome", "scale", "scaled_mean", "scaled_low", "scaled_high", "scaled_threshold"]  # fmt: skip
    table = pandas.DataFrame.from_records(records, columns=columns)
    scaled = table[["scaled_low", "scaled_high", "scaled_mean", "scaled_threshold"]].astype(float).to_numpy().ravel()
    reach = max([2.0] + [abs(v) for v in scaled if math.isfinite(v)])
    limit = min(SUMMARY_LIMIT, reach * 1.3)
    for column in ("mean", "low", "high"):
        table[f"shown_{column}"] = table[f"scaled_{column}"].astype(float).clip(-limit, limit)
    table["clipped"] = [
        any(math.isfinite(r[f"scaled_{c}"]) and abs(r[f"scaled_{c}"]) > limit for c in ("mean", "low", "high"))
        for r in table.to_dict(orient="records")
    ]
    table["limit"] = limit
    return table


def summary_figure(analyses, out_dir):
    """fig-summary: the forest plot of `summary_table`; returns its paths."""
    table = summary_table(analyses)
    limit = float(table["limit"].iloc[0]) if len(table) else SUMMARY_LIMIT
    marks, notes = [], []
    for r in table.to_dict(orient="records"):
        t = r["scaled_threshold"]
        if not isinstance(r["kind"], str):
            marks.append([])
            notes.append(r["verdict"])
            continue
        marks.append([-abs(t), abs(t)] if r["kind"] == "within" else [t])
        side = {"at_least": ">=", "at_most": "<=", "within": "within ±"}[r["kind"]]
        unit = f" {r['unit']}" if isinstance(r["unit"], str) and r["unit"] else ""
        est = {"mean": r["mean"], "low": r["low"], "high": r["high"], "n": int(r["n"]), "unit": unit}
        t = abs(r["threshold"]) if r["kind"] == "within" else r["threshold"]
        notes.append(f"{_estimate_text(est)}; claim {side} {t:g}{unit}: {r['outcome']}")
    records = table.to_dict(orient="records")
    fig, ax = plots.new_axes(width=5.0, height=0.42 * len(table) + 1.5)
    labels = [f"{r['claim']}: not run" if r["verdict"] == "not run" else f"{r['claim']} {r['task']}: {r['verdict']}"
              for r in records]
    plots.forest(labels,
                 table["scaled_mean"].astype(float), table["scaled_low"].astype(float),
                 table["scaled_high"].astype(float), table["verdict"], marks, notes, ax=ax,
                 markers=[plots.TASK_MARKERS[r["task"]] for r in records], limit=limit)
    # Linear within twice the threshold, logarithmic beyond: effects far past it stay legible
    # without squeezing the rows that sit near it.
    ax.set_xscale("symlog", linthresh=2.0)
    ax.set_xlim(-limit * 1.08, limit * 1.08)
    ticks = [t for t in (-100, -20, -10, -5, -2, -1, 0, 1, 2, 5, 10, 20, 100) if abs(t) <= limit]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    ax.set_xlabel("deciding check's effect / |threshold| (linear within ±2, log beyond)")
    return plots.save_figure(fig, SUMMARY_FIGURE, out_dir, table)


def practice_sentence(a) -> str:
    """The sentence for practitioners: the claim's own for its verdict, else a neutral one."""
    return (a.get("practice") or {}).get(a["verdict"]) or NEUTRAL_PRACTICE[a["verdict"]]


def real_task_text(a) -> str:
    """The real-data task's verdict and whether it agrees, said plainly ("" without one)."""
    real, agrees = a.get("real_verdict"), a.get("real_agrees")
    if real is None:
        return "No real-data task."
    text = f"Real-data task: **{real}**"
    if agrees == "agrees":
        return text + ", in agreement with the synthetic task."
    if agrees == "disagrees":
        return (text + f": it **disagrees** with the synthetic task (**{a['verdict']}**); the two are "
                "reported side by side, not averaged.")
    return text + ": whether the two agree cannot be told while either is inconclusive."


def _figure_lines(a, fig_ids=None, prefix="figures/"):
    return [f"![{fig_id}]({prefix}{fig_id}.png)\n\n*{fig_id}.* {caption} "
            f"(data: [{prefix}{fig_id}.csv]({prefix}{fig_id}.csv))\n"
            for fig_id, caption in a["figures"].items() if fig_ids is None or fig_id in fig_ids]


def _front_claim(claim_id, a):
    """A claim on the front page: the verdict, what it means in practice, its key figure."""
    if a is None:
        title = claims_registry.declaration(claim_id).title
        return (f"## {claim_id}\n\n*{title}*: **not run**. No stored results for this claim: run "
                f"`python -m studies run --claims {claim_id}`.\n")
    out = [f"## {claim_id}\n",
           f"*{a['title']}*: **{a['verdict']}**. {real_task_text(a)}  ",
           f"**In practice:** {practice_sentence(a)} Rule, checks, convergence, power and caveats: "
           f"[{_page_link(claim_id)}]({_page_link(claim_id)})\n"]
    key = next(iter(a["figures"]), None)
    if key is not None:
        out.extend(_figure_lines(a, [key]))
    return "\n".join(out)


def sensitivity_table(analyses) -> list[dict]:
    """One record per claim and judgement call: the verdict as run and under the other
    choice (`make_analysis`'s ``sensitivity``), whether it changes, and whether the call was
    a deviation from the rules commit (the claim's ``deviations``)."""
    records = []
    for claim_id, a in analyses.items():
        if a is None:
            continue
        for alt in a.get("sensitivity", []):
            records.append({
                "claim": claim_id, "verdict as run": a["verdict"], "judgement call (the other choice)": alt["alternative"],
                "verdict under it": alt["verdict"], "changes": "yes" if alt["verdict"] != a["verdict"] else "no",
                "deviation": "yes" if alt["alternative"] in (a.get("deviations") or {}) else "no",
            })  # fmt: skip
    return records


def deviations_table(analyses) -> list[dict]:
    """One record per change a claim made after the rules commit (its ``deviations``): why,
    the verdict as run and under the choice as pre-registered."""
    records = []
    for claim_id, a in analyses.items():
        if a is None:
            continue
        under = {alt["alternative"]: alt["verdict"] for alt in a.get("sensitivity", [])}
        for alternative, why in (a.get("deviations") or {}).items():
            records.append({
                "claim": claim_id, "as pre-registered": alternative, "why it changed": why,
                "verdict as run": a["verdict"],
                "verdict as pre-registered": under.get(alternative, "not computed (no such alternative)"),
            })  # fmt: skip
    return records


def rules_commit(rows) -> str:
    """The commit(s) the rows were made at, the rules commit of the run, as text."""
    commits = sorted({str(v) for v in rows["commit"].dropna()}) if len(rows) and "commit" in rows else []
    if not commits:
        return "(not recorded in the rows)"
    return ", ".join(f"`{c}`" for c in commits)


def _sensitivity_section(analyses):
    records = sensitivity_table(analyses)
    changed = [r for r in records if r["changes"] == "yes"]
    out = ["## Sensitivity\n",
           f"Each claim's verdict under each other choice of its judgement calls ({len(records)} in all; "
           f"the framework adds \"{claims_registry.ALL_RUNS_CONVERGED}\" to every claim): "
           f"[the full table]({SENSITIVITY_PAGE}). "
           + (f"{len(changed)} of them {'changes' if len(changed) == 1 else 'change'} a verdict:" if changed else "None of them changes a verdict.")]
    out.extend(f"- {r['claim']}: {r['verdict as run']} -> {r['verdict under it']} under "
               f"\"{r['judgement call (the other choice)']}\"" for r in changed)
    return "\n".join(out) + "\n"


def _deviations_section(analyses, commit):
    records = deviations_table(analyses)
    out = ["## Deviations\n",
           f"The rules commit is the commit the full run's rows were made at: {commit}. "]
    if not records:
        out[-1] += "No claim changed a rule, a threshold or a design choice after it."
        return "\n".join(out) + "\n"
    out[-1] += (f"{len(records)} judgement call(s) changed after it; each with the verdict as run and "
                "under the choice as pre-registered:\n")
    out.append(_table(records))
    return "\n".join(out) + "\n"


def sensitivity_page(analyses) -> str:
    """`sensitivity.md`: the table of `sensitivity_table`."""
    records = sensitivity_table(analyses)
    return "\n".join([
        "# Sensitivity of the verdicts to the judgement calls\n",
        "_Generated by `python -m studies report`; back to [the report](REPORT.md#sensitivity)._\n",
        "One row per claim and judgement call it could have made otherwise: the verdict as run and "
        "under the other choice. *deviation*: the call was changed after the rules commit (the "
        "choice as pre-registered is the other one; see [Deviations](REPORT.md#deviations)).\n",
        _table(records),
    ])


def _checks_table(checks, with_why=True):
    lines = ["| task | check | effect (ours) | claim | outcome | decisive | blockers |"
             + (" threshold from |" if with_why else ""),
             "|---|---|---|---|---|---|---|" + ("---|" if with_why else "")]
    for c in checks:
        lines.append(
            f"| {'real data' if c.get('real') else 'synthetic'} | {c['name']} | {_check_effect_text(c)} | "
            f"{c['claim']} | **{c['outcome']}** | {'yes' if c['decisive'] else 'no'} | "
            f"{'; '.join(c['blockers']) or '-'} |" + (f" {c['why']} |" if with_why else "")
        )
    return "\n".join(lines) + "\n"


_CONVERGENCE_COLUMNS = ("runs", "diverged", "converged", "median_plateau", "worst_plateau")


def _is_real_arm(record) -> bool:
    """A convergence-table row of the real-data task: one of its labels names a real dataset."""
    return any(isinstance(v, str) and v in REAL_DATASETS for k, v in record.items() if k not in _CONVERGENCE_COLUMNS)


def convergence_line(table) -> str:
    """The convergence of a task's arms (`stats.convergence_table` records) in words: runs
    converged, arms converged by the rule, and each arm with runs that did not converge."""
    if table is None:
        return "Not measured for this claim (the caveats say why)."
    if not table:
        return "No arms in the convergence table."
    label = [k for k in table[0] if k not in _CONVERGENCE_COLUMNS]
    runs = sum(r["runs"] for r in table)
    done = sum(r["converged"] for r in table)
    diverged = sum(r["diverged"] for r in table)
    blocked = [r for r in table if stats.arm_unconverged(r)]
    text = (f"{done} of {runs} runs converged, {diverged} diverged; {len(table) - len(blocked)} of "
            f"{len(table)} arms converged by the rule (at least {stats.CONVERGED_SHARE:.0%} of their runs)")
    short = [r for r in table if r["converged"] < r["runs"] - r["diverged"] or r["runs"] == r["diverged"]]
    if short:
        text += ". Arms with runs that did not converge (converged of the runs that did not diverge): " + "; ".join(
            ", ".join(f"{k}={r[k]}" for k in label)
            + f": {r['converged']} of {r['runs'] - r['diverged']} converged"
            + (" (the arm has not converged: its checks are undecided)" if stats.arm_unconverged(r) else "")
            for r in short
        )
    return text + "."


def ceiling_line(checks) -> str:
    """Which of a task's checks the ceiling-and-floor rule blocked, or that none was."""
    blocked = [c for c in checks if any(b.startswith(("at the ceiling", "at the floor")) for b in c["blockers"])]
    if not blocked:
        return f"none of the {len(checks)} checks has both arms within {stats.CEILING_MARGIN_PP:g} pp of 100 % or of chance."
    return f"{len(blocked)} of {len(checks)} checks blocked: " + "; ".join(
        f"{c['name']} ({'; '.join(b for b in c['blockers'] if b.startswith(('at the ceiling', 'at the floor')))})"
        for c in blocked)


def _widths(checks):
    return "; ".join(
        f"{c['name']}: half-width {(c['effect']['high'] - c['effect']['low']) / 2:.3g}{c['unit']} "
        f"(n={c['effect']['n']}) against half the threshold, {abs(c['threshold']) / 2:.3g}{c['unit']}"
        for c in checks if c["decisive"] and c["effect"]["n"] >= 2 and math.isfinite(c["effect"]["low"])
    )


def _power_line(a):
    plan = a.get("seed_plan")
    decisive = [c for c in a["checks"] if c["decisive"]]
    widths = _widths(a["checks"])
    if plan is None:
        return f"**Power.** No seed plan declared. {widths}".rstrip() + ("." if widths else "")
    return (f"**Power.** Seed plan: a pilot of {plan['pilot']} seeds; {plan['initial']} per arm "
            f"({plan['why']}); while a decisive check is undecided for want of precision, "
            f"{plan['block']} more per arm, up to {plan['cap']}. " + (widths + ". " if widths else "")
            + _plan_status(a, plan, decisive))


def _plan_status(a, plan, decisive):
    """Where the sequential plan stands on these results: done, or the block it calls for
    next (`python -m studies run --profile full` trains it)."""
    # Seeds per arm: the smallest n of a decisive check (a check over runs pooled across
    # arms, e.g. C2's per-run logit change, counts runs, not seeds).
    n_now = min((c["effect"]["n"] for c in decisive), default=0)
    more = stats.more_seeds_needed(a, stats.SeedPlan(**plan), n_now)
    if more:
        return (f"Plan status: a decisive check is undecided for want of precision at n={n_now}, "
                f"so the plan calls for {more} more seed(s) per arm, not yet run "
                "(`python -m studies run --profile full` runs it).")
    if n_now >= plan["cap"]:
        return f"Plan status: at its cap of {plan['cap']} seeds."
    return "Plan status: complete (no decisive check is undecided for want of precision)."


def _task_lines(a):
    """Per task (synthetic, real data): its verdict, convergence, ceiling and power lines."""
    table = a.get("convergence")
    out = []
    for task, real in TASKS:
        checks = _task_checks(a, real)
        if not checks:
            continue
        arms = None if table is None else [r for r in table if _is_real_arm(r) == real]
        widths = _widths(checks)
        verdict = _task_verdict(a, real)
        out.append(f"### The {task} task\n")
        out.append(f"- **Verdict:** {verdict if verdict else 'none (no decisive check)'}")
        out.append(f"- **Convergence** (a run has converged when its training loss fell by at most "
                   f"{stats.PLATEAU_THRESHOLD:.0%} of its total decrease over the last "
                   f"{stats.PLATEAU_FRACTION:.0%} of training): {convergence_line(arms)}")
        out.append(f"- **Ceiling and floor:** {ceiling_line(checks)}")
        out.append(f"- **Power:** {widths + '.' if widths else 'no decisive check with an interval.'}")
        out.append("")
    return "\n".join(out) + "\n"


def claim_page(claim_id, a, design="../../studies/DESIGN.md") -> str:
    """`claims/<id>.md`: the verdict per task, setup, figures, key numbers, the rule and its
    checks (with where each threshold comes from), convergence, ceiling and power per task,
    the seed plan, the claim's sensitivity, anchor, caveats and every table."""
    out = [f"# {claim_id}: {a['title']}\n",
           f"_Generated by `python -m studies report`; back to [the report](../REPORT.md#{claim_id.lower()}). "
           f"Intervals: {INTERVAL}._\n",
           f"**Verdict: {a['verdict']}** (synthetic task). {real_task_text(a)}  ",
           f"**In practice:** {practice_sentence(a)}\n",
           "## Setup\n", _resolve(a["setup"], design) + "\n"]
    out.extend(_figure_lines(a))
    out.append("## Key numbers\n\nMean, " + INTERVAL + ", n:\n")
    out.extend(f"- {e['label']}: {_estimate_text(e)}" for e in a["evidence"])
    out.append("")
    out.append("## Rule\n")
    out.append(_resolve(a["rule"], design) + "\n")
    out.append("## Checks\n")
    out.append(_checks_table(a["checks"]))
    out.append("## Convergence, ceiling and power per task\n")
    out.append(_task_lines(a))
    out.append("### Seed plan\n")
    out.append(_power_line(a).replace("**Power.** ", "") + "\n")
    if a.get("convergence"):
        out.append("### Convergence per arm\n")
        out.append(_table(a["convergence"]))
    out.append("## Sensitivity\n")
    rows = [{k: v for k, v in r.items() if k != "claim"} for r in sensitivity_table({claim_id: a})]
    out.append(_table(rows))
    out.append(f"**Published anchor.** {_resolve(a['anchor'], design)}\n")
    if a["caveats"]:
        out.append("## Caveats\n")
        out.extend(f"- {_resolve(c, design)}" for c in a["caveats"])
        out.append("")
    out.append("## Tables\n")
    for name, records in a["tables"].items():
        out.append(f"*{name}*\n\n{_table(records)}")
    return "\n".join(out).replace("](figures/", "](../figures/")


def bench_page(bench) -> str:
    """`bench.md`: the layer and engine benchmarks."""
    text = _bench_section(bench).replace("## Layer benchmarks\n", "", 1)
    return ("# Layer and engine benchmarks\n\n_Generated by `python -m studies report` from `bench.json` "
            "(written by `python -m studies bench`); back to [the report](REPORT.md)._\n" + text)


def _bench_section(bench):
    if not bench:
        return ("## Layer benchmarks\n\nNo benchmark results stored: run `python -m studies "
                "bench`.\n")
    out = ["## Layer benchmarks\n", bench.get("description", ""), ""]
    out.append(f"Machine: {bench.get('machine', 'n/a')}\n")
    # A table per Keras backend, in the order they ran; rows stored before the other
    # backends were timed are TensorFlow's.
    by_backend = {}
    for r in bench.get("table", []):
        by_backend.setdefault(r.get("backend", "tensorflow"), []).append(r)
    names = {"tensorflow": "TensorFlow", "jax": "JAX", "torch": "PyTorch"}
    for backend, table in by_backend.items():
        if len(by_backend) > 1:
            out.append(f"### {names.get(backend, backend)}\n")
        met = sum(bool(r["met"]) for r in table)
        out.append(f"{met} of {len(table)} cases meet their target.\n")
        if "met_at_fixed_ratio" in table[0]:
            fixed = sum(bool(r["met_at_fixed_ratio"]) for r in table)
            band = max(r["target"] for r in table)
            out.append(f"The noise band of these cases is {band}x; at the fixed ratio alone, "
                       f"{fixed} of {len(table)} cases meet their target.\n")
        out.append(_table(table, columns=BENCH_COLUMNS["table"]))
    if len(by_backend) > 1 and any(bench.get(k) for k in ("folding", "throughput", "engine")):
        out.append("### Folding, study throughput and the engine (TensorFlow)\n")
    if bench.get("folding"):
        out.append("Inference of a linear layer followed by BN, with BN folded into the kernel "
                   "(`kerasnorm.fold_batch_norm`):\n")
        out.append(_table(bench["folding"], columns=BENCH_COLUMNS["folding"]))
    if bench.get("throughput"):
        out.append(
            "Study throughput: the same sweep of typical runs with 1 and 2 workers. "
            "`runs_per_min` is over the whole wall time, the executor's and each worker's "
            "start-up included; `steady_runs_per_min` counts the runs finished after every "
            "worker's first, over the time since then: the rate a long sweep (the full "
            "profile's hundreds of runs) runs at. Target: 2 workers' steady rate at least "
            f"{bench['throughput'][-1].get('target', 'n/a')}x one's (`speedup_vs_1`).\n"
        )
        out.append(_table(bench["throughput"], columns=BENCH_COLUMNS["throughput"]))
    if bench.get("engine"):
        out.append(bench["engine"].get("description", "") + "\n")
        out.append(_table(bench["engine"]["table"], columns=BENCH_COLUMNS["engine"]))
    for fig_id, caption in bench.get("figures", {}).items():
        out.append(f"![{fig_id}](figures/{fig_id}.png)\n\n*{fig_id}.* {caption}\n")
    return "\n".join(out) + "\n"


def _provenance(rows, manifest):
    out = ["## Provenance\n"]
    if manifest:
        executors = manifest.get("executor")
        executors = ", ".join(executors) if isinstance(executors, list) else executors
        out.append(
            f"- profile: `{manifest.get('profile')}`; executor: {executors} with up to "
            f"{manifest.get('jobs')} job(s) at a time; sweep wall time: "
            f"{_fmt(manifest.get('wall_s', math.nan) / 60, 1)} min over "
            f"{len(manifest.get('sweeps', [None]))} invocation(s)"
        )
    if len(rows):
        for column in ("commit", "machine", "python", "tensorflow", "keras", "numpy", "kerasnorm"):
            values = sorted({str(v) for v in rows[column].dropna()}) if column in rows else []
            if values:
                out.append(f"- {column}: {', '.join(values)}")
        out.append(f"- runs: {len(rows)} ({int((rows['status'] == 'ok').sum())} ok)")
        split = {c: rows[c].sum() for c in ("time/build_s", "time/train_s", "time/eval_s", "time/total_s") if c in rows}
        if split:
            out.append("- time over all runs (CPU-process seconds, summed): " + ", ".join(
                f"{k.split('/')[1][:-2]} {v / 60:.1f} min" for k, v in split.items()))
        if "time/total_s" in rows:
            per_claim = rows.groupby("claim")["time/total_s"].agg(["count", "sum"]).reset_index()
            out.append("\n| claim | runs | summed run time (min) |\n|---|---|---|")
            for _, r in per_claim.iterrows():
                out.append(f"| {r['claim']} | {int(r['count'])} | {r['sum'] / 60:.1f} |")
    out.append("")
    return "\n".join(out) + "\n"


def render(rows, analyses, manifest, bench=None, results_label="reports/results",
           design="../studies/DESIGN.md") -> str:
    """The Markdown text of REPORT.md, the front page (`results_label`: where the results
    came from; `design`: the link to the study's design, relative to the page)."""
    commit = rules_commit(rows)
    parts = [
        "# Batch and layer normalization, claim by claim\n",
        "_Generated by `python -m studies report` from the stored results in "
        f"`{results_label}/`; every number is computed by code from those rows. "
        f"Intervals: {INTERVAL}._\n",
        f"Each claim's rule, thresholds and seed plan were fixed in code before the run, at the rules "
        f"commit {commit}; the design behind them: [the study's design]({design}). Below, per claim: "
        "its verdict, what it means in practice and its key figure; its page holds the rule, the "
        "checks, convergence, power and caveats. Also: [how a verdict is reached](#the-verdict-scale), "
        "[sensitivity](#sensitivity), [deviations](#deviations), "
        f"[layer and engine benchmarks]({BENCH_PAGE}), [provenance](#provenance).\n",
        f"![{SUMMARY_FIGURE}](figures/{SUMMARY_FIGURE}.png)\n\n*{SUMMARY_FIGURE}.* {SUMMARY_CAPTION} "
        f"(data: [figures/{SUMMARY_FIGURE}.csv](figures/{SUMMARY_FIGURE}.csv))\n",
    ]
    parts.extend(_front_claim(cid, a) for cid, a in analyses.items())
    parts.append(_sensitivity_section(analyses))
    parts.append(_deviations_section(analyses, commit))
    parts.extend(["## The verdict scale\n", VERDICT_SCALE.format(design=f"[the study's design]({design})"),
                  "## The formula\n", FORMULA_NOTE + "\n"])
    parts.append(_provenance(rows, manifest))
    return "\n".join(parts)


def _relative(target: pathlib.Path, page_dir: pathlib.Path) -> str:
    return pathlib.Path(os.path.relpath(target.resolve(), page_dir.resolve())).as_posix()


def write_report(results_dir="reports/results", out_dir="reports") -> pathlib.Path:
    """Writes `<out_dir>/REPORT.md`, `<out_dir>/claims/<id>.md`, `<out_dir>/bench.md`,
    `<out_dir>/sensitivity.md` and `<out_dir>/figures/` from `results_dir`."""
    results_dir, out_dir = pathlib.Path(results_dir), pathlib.Path(out_dir)
    manifest = _read_json(results_dir / MANIFEST)
    rows, analyses = analyze_all(results_dir, out_dir / "figures", (manifest or {}).get("profile"))
    summary_figure(analyses, out_dir / "figures")
    for claim_id, analysis in analyses.items():
        if analysis is not None:
            write_text(out_dir / _page_link(claim_id),
                       claim_page(claim_id, analysis, _relative(DESIGN, out_dir / "claims")))
    bench = _read_json(results_dir / BENCH)
    if bench:
        from studies import bench as bench_module

        bench_module.figures(bench, out_dir / "figures")
    write_text(out_dir / BENCH_PAGE, bench_page(bench))
    write_text(out_dir / SENSITIVITY_PAGE, sensitivity_page(analyses))
    path = out_dir / "REPORT.md"
    write_text(path, render(rows, analyses, manifest, bench, results_dir.as_posix(), _relative(DESIGN, out_dir)))
    return path
