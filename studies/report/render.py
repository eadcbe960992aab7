"""`reports/REPORT.md`, one page per claim (`reports/claims/<id>.md`) and their figures,
from stored results only: a pure function of the results directory (no training, no clock),
so regenerating gives the same bytes.

Each claim module's `analyze(rows)` returns `studies.report.stats.make_analysis(...)`; this module
renders those dicts (REPORT.md: the summary, the verdict scale, the summary forest plot and
per claim its setup, figures, key numbers, checks and caveats; the claim's page: the full
tables, the per-arm convergence, the seed plan), the layer benchmarks (`bench.json`, written
by `python -m studies bench`) and the provenance carried by the rows and the manifest.
"""

from __future__ import annotations

import json
import math
import pathlib

import pandas

from studies import claims as claims_registry
from studies import plan as seed_planning
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
    "effect size that matters, its **threshold**, taken from the published anchor (each check "
    "says why). A check **holds** when the whole interval lies on the claim's side of the "
    "threshold, **fails** when the whole interval lies on the other side (evidence against "
    "the claim, as in an equivalence test), and is **undecided** when the interval spans the "
    "threshold, or when a blocker applies: an arm whose training loss had not levelled off "
    f"(in fewer than {stats.CONVERGED_SHARE:.0%} of its runs, the loss fell by at most "
    f"{stats.PLATEAU_THRESHOLD:.0%} of its total decrease over the last "
    f"{stats.PLATEAU_FRACTION:.0%} of training), or two arms both within "
    f"{stats.CEILING_MARGIN_PP:g} pp of 100 % accuracy (or of chance), where no difference can "
    "show. Decisive checks decide the verdict; secondary ones can only lower *supported* to "
    "*partly supported*. " + stats.CONVERGED_SHARE_WHY + "\n\n"
    "- **supported**: every decisive check holds (and no secondary one fails);\n"
    "- **partly supported**: decisive checks hold and fail, or all hold and a secondary fails;\n"
    "- **inconclusive**: a decisive check is still undecided after the planned seeds: the "
    "data cannot decide, which is not evidence against the claim;\n"
    "- **not supported**: every decisive check fails.\n\n"
    "Seeds per arm come from a pilot's seed-to-seed spread, sized so that a decisive "
    "interval's half-width is at most half its threshold; where a decisive check stays "
    "undecided for want of precision, a sequential plan declared in the claim's code adds "
    "seeds in blocks up to a cap. Every number carries its n.\n"
)
SUMMARY_FIGURE = "fig-summary"
SUMMARY_CAPTION = (
    "One row per claim: its headline check's effect (diamond) and 95% interval, divided by "
    "the size of its threshold, so that every threshold sits at +1 or -1 (ticks; both for "
    "an equivalence check) and 0 is no effect; the axis is linear within ±2 and logarithmic "
    "beyond. Colour: the claim's verdict. Right: the raw effect with its n, the claim's side "
    "of the threshold and the check's outcome. The headline is the claim's first decisive "
    "check; the summary table counts the outcomes of all of them."
)


def _page_link(claim_id):
    return f"claims/{claim_id.lower()}.md"


def _headline(a):
    """The check the summary shows (`make_analysis`'s ``headline``)."""
    return next(c for c in a["checks"] if c["name"] == a["headline"])


def _check_effect_text(c):
    return _estimate_text({**c["effect"], "unit": c["unit"]})


def summary_table(analyses) -> pandas.DataFrame:
    """The numbers fig-summary plots, one row per claim: the headline check's raw effect,
    threshold and outcome, and the effect divided by the threshold's size (``scale``)."""
    records = []
    for claim_id, a in analyses.items():
        if a is None:
            records.append({"claim": claim_id, "verdict": "not run"})
            continue
        c = _headline(a)
        e = c["effect"]
        # A zero threshold has no size: the interval's own reach scales the row instead.
        scale = abs(c["threshold"]) or max(abs(v) for v in (e["mean"], e["low"], e["high"]) if math.isfinite(v)) or 1.0
        records.append({
            "claim": claim_id, "verdict": a["verdict"], "check": c["name"], "kind": c["kind"],
            "threshold": c["threshold"], "unit": c["unit"].strip(), "mean": e["mean"], "low": e["low"],
            "high": e["high"], "n": e["n"], "outcome": c["outcome"], "scale": scale,
            "scaled_mean": e["mean"] / scale, "scaled_low": e["low"] / scale, "scaled_high": e["high"] / scale,
            "scaled_threshold": c["threshold"] / scale,
        })  # fmt: skip
    columns = ["claim", "verdict", "check", "kind", "threshold", "unit", "mean", "low", "high", "n", "outcome",
               "scale", "scaled_mean", "scaled_low", "scaled_high", "scaled_threshold"]  # fmt: skip
    return pandas.DataFrame.from_records(records, columns=columns)


def summary_figure(analyses, out_dir):
    """fig-summary: the forest plot of `summary_table`; returns its paths."""
    table = summary_table(analyses)
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
    fig, ax = plots.new_axes(width=5.0, height=0.5 * len(table) + 1.4)
    plots.forest([f"{r['claim']}: {r['verdict']}" for r in table.to_dict(orient="records")],
                 table["scaled_mean"].astype(float), table["scaled_low"].astype(float),
                 table["scaled_high"].astype(float), table["verdict"], marks, notes, ax=ax)
    # Linear within twice the threshold, logarithmic beyond: effects far past it stay legible
    # without squeezing the rows that sit near it.
    ax.set_xscale("symlog", linthresh=2.0)
    finite = [v for v in pandas.concat([table["scaled_low"], table["scaled_high"], table["scaled_mean"]]).astype(float)
              if math.isfinite(v)]
    left, right = min([-2.0] + finite) * 1.3, max([2.0] + finite) * 1.3
    ax.set_xlim(left, right)
    ticks = [t for t in (-1000, -100, -10, -5, -2, -1, 0, 1, 2, 5, 10, 100, 1000) if left <= t <= right]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    ax.set_xlabel("headline effect / |threshold| (linear within ±2, log beyond)")
    return plots.save_figure(fig, SUMMARY_FIGURE, out_dir, table)


def _summary(analyses):
    lines = [
        "| claim | the note says | verdict | headline check: effect (ours) vs threshold | outcome | details |",
        "|---|---|---|---|---|---|",
    ]
    for claim_id, a in analyses.items():
        if a is None:
            title = claims_registry.load(claim_id).TITLE
            lines.append(f"| {claim_id} | {title} | not run | | | |")
            continue
        c = _headline(a)
        key_text = f"{c['name']}: {_check_effect_text(c)}; claim {c['claim']}"
        decisive = [d["outcome"] for d in a["checks"] if d["decisive"]]
        outcome = f"{c['outcome']} (decisive checks: " + ", ".join(
            f"{decisive.count(o)} {o}" for o in stats.OUTCOMES if o in decisive) + ")"
        lines.append(
            f"| [{claim_id}](#{claim_id.lower()}) | {a['title']} | **{a['verdict']}** | {key_text} | "
            f"{outcome} | [page]({_page_link(claim_id)}) |"
        )
    return "\n".join(lines) + "\n"


def _checks_table(checks, with_why=True):
    lines = ["| check | effect (ours) | claim | outcome | decisive | blockers |"
             + (" threshold from |" if with_why else ""),
             "|---|---|---|---|---|---|" + ("---|" if with_why else "")]
    for c in checks:
        lines.append(
            f"| {c['name']} | {_check_effect_text(c)} | {c['claim']} | **{c['outcome']}** | "
            f"{'yes' if c['decisive'] else 'no'} | {'; '.join(c['blockers']) or '-'} |"
            + (f" {c['why']} |" if with_why else "")
        )
    return "\n".join(lines) + "\n"


def _convergence_line(a):
    table = a.get("convergence")
    if table is None:
        return "**Convergence.** Not measured for this claim (the caveats say why)."
    if not table:
        return "**Convergence.** No runs."
    label = [k for k in table[0] if k not in ("runs", "diverged", "converged", "median_plateau", "worst_plateau")]
    short = [r for r in table if r["converged"] < r["runs"] - r["diverged"] or r["runs"] == r["diverged"]]
    runs = sum(r["runs"] for r in table)
    done = sum(r["converged"] for r in table)
    diverged = sum(r["diverged"] for r in table)
    text = (f"**Convergence** (a run has converged when its training loss fell by at most "
            f"{stats.PLATEAU_THRESHOLD:.0%} of its total decrease over the last "
            f"{stats.PLATEAU_FRACTION:.0%} of training): {done} of {runs} runs in "
            f"{len(table) - len(short)} of {len(table)} arms converged, {diverged} diverged")
    if short:
        text += "; arms with unconverged runs: " + "; ".join(
            ", ".join(str(r[k]) for k in label) + f" ({r['converged']} of {r['runs'] - r['diverged']})" for r in short
        )
    return text + ". Per arm: see the claim's page."


def _power_line(a):
    plan = a.get("seed_plan")
    decisive = [c for c in a["checks"] if c["decisive"]]
    widths = "; ".join(
        f"{c['name']}: half-width {(c['effect']['high'] - c['effect']['low']) / 2:.3g}{c['unit']} "
        f"(n={c['effect']['n']}) against half the threshold, {abs(c['threshold']) / 2:.3g}{c['unit']}"
        for c in decisive if c["effect"]["n"] >= 2 and math.isfinite(c["effect"]["low"])
    )
    if plan is None:
        return f"**Power.** No seed plan declared. {widths}".rstrip() + ("." if widths else "")
    return (f"**Power.** Seed plan: a pilot of {plan['pilot']} seeds; {plan['initial']} per arm "
            f"({plan['why']}); while a decisive check is undecided for want of precision, "
            f"{plan['block']} more per arm, up to {plan['cap']}. " + (widths + ". " if widths else "")
            + _plan_status(a, plan, decisive))


def _plan_status(a, plan, decisive):
    """Where the sequential plan stands on these results: done, or the block it calls for
    next (`python -m studies run --sequential` trains it)."""
    # Seeds per arm: the smallest n of a decisive check (a check over runs pooled across
    # arms, e.g. C2's per-run logit change, counts runs, not seeds).
    n_now = min((c["effect"]["n"] for c in decisive), default=0)
    more = stats.more_seeds_needed(a, stats.SeedPlan(**plan), n_now)
    if more:
        return (f"Plan status: a decisive check is undecided for want of precision at n={n_now}, "
                f"so the plan calls for {more} more seed(s) per arm, not yet run "
                "(`python -m studies run --profile full --sequential`).")
    if n_now >= plan["cap"]:
        return f"Plan status: at its cap of {plan['cap']} seeds."
    return "Plan status: complete (no decisive check is undecided for want of precision)."


def _figures_text(a):
    return [f"![{fig_id}](figures/{fig_id}.png)\n\n*{fig_id}.* {caption} "
            f"(data: [figures/{fig_id}.csv](figures/{fig_id}.csv))\n" for fig_id, caption in a["figures"].items()]


def _rule_text(a):
    out = [f"**Rule.** {a['rule']}\n"]
    out.append(_checks_table(a["checks"], with_why=False))
    return out


def _claim_section(claim_id, a):
    """The claim's part of REPORT.md: what a reader needs for the verdict; the full tables
    are on its page."""
    out = [f"## {claim_id}\n"]
    if a is None:
        out.append("No stored results for this claim: run `python -m studies run --claims "
                   f"{claim_id}`.\n")
        return "\n".join(out)
    out.append(f"**The note:** {a['title']}  \n**Verdict: {a['verdict']}**  \n"
               f"Full tables, checks with their thresholds' sources, convergence per arm: "
               f"[{_page_link(claim_id)}]({_page_link(claim_id)})\n")
    out.append(f"**Setup.** {a['setup']}\n")
    out.extend(_figures_text(a))
    out.append("**Key numbers** (mean, " + INTERVAL + ", n):\n")
    out.extend(f"- {e['label']}: {_estimate_text(e)}" for e in a["evidence"])
    out.append("")
    out.extend(_rule_text(a))
    out.append("")
    out.append(_convergence_line(a) + "\n")
    out.append(_power_line(a) + "\n")
    out.append(f"**Published anchor.** {a['anchor']}\n")
    if a["caveats"]:
        out.append("**Caveats.**\n")
        out.extend(f"- {c}" for c in a["caveats"])
        out.append("")
    return "\n".join(out) + "\n"


def claim_page(claim_id, a) -> str:
    """`claims/<id>.md`: the claim's checks in full (with where each threshold comes
    from), its seed plan, the per-arm convergence table and every table of its analysis."""
    out = [f"# {claim_id}: {a['title']}\n",
           f"_Generated by `python -m studies report`; back to [the report](../REPORT.md#{claim_id.lower()}). "
           f"Intervals: {INTERVAL}._\n",
           f"**Verdict: {a['verdict']}**\n", f"**Rule.** {a['rule']}\n"]
    out.append("## Checks\n")
    out.append(_checks_table(a["checks"]))
    out.append("## Power\n")
    out.append(_power_line(a) + "\n")
    out.append("## Convergence\n")
    out.append(_convergence_line(a).replace(" Per arm: see the claim's page.", "") + "\n")
    if a.get("convergence"):
        out.append(_table(a["convergence"]))
    out.append("## Tables\n")
    for name, records in a["tables"].items():
        out.append(f"*{name}*\n\n{_table(records)}")
    out.append("## Setup\n")
    out.append(a["setup"] + "\n")
    return "\n".join(out).replace("](figures/", "](../figures/")


def _bench_section(bench):
    if not bench:
        return ("## Layer benchmarks\n\nNo benchmark results stored: run `python -m studies "
                "bench`.\n")
    out = ["## Layer benchmarks\n", bench.get("description", ""), ""]
    out.append(f"Machine: {bench.get('machine', 'n/a')}\n")
    table = bench.get("table", [])
    met = sum(bool(r["met"]) for r in table)
    out.append(f"{met} of {len(table)} cases meet their target.\n")
    if table and "met_at_fixed_ratio" in table[0]:
        fixed = sum(bool(r["met_at_fixed_ratio"]) for r in table)
        band = max(r["target"] for r in table)
        out.append(f"The noise band of this run is {band}x; at the fixed ratio alone, "
                   f"{fixed} of {len(table)} cases meet their target.\n")
    out.append(_table(table, columns=BENCH_COLUMNS["table"]))
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


def render(rows, analyses, manifest, bench, results_label="reports/results") -> str:
    """The Markdown text of the report (`results_label`: where the results came from)."""
    parts = [
        "# Batch and layer normalization, claim by claim\n",
        "_Generated by `python -m studies report` from the stored results in "
        f"`{results_label}/`; every number below is computed by code from those rows. "
        f"Intervals: {INTERVAL}._\n",
        "## Summary\n",
        _summary(analyses),
        f"![{SUMMARY_FIGURE}](figures/{SUMMARY_FIGURE}.png)\n\n*{SUMMARY_FIGURE}.* {SUMMARY_CAPTION} "
        f"(data: [figures/{SUMMARY_FIGURE}.csv](figures/{SUMMARY_FIGURE}.csv))\n",
        "## The verdict scale\n",
        VERDICT_SCALE,
        "## The formula\n",
        FORMULA_NOTE + "\n",
    ]
    parts.extend(_claim_section(cid, a) for cid, a in analyses.items())
    parts.append(_bench_section(bench))
    parts.append(_provenance(rows, manifest))
    return "\n".join(parts)


def write_report(results_dir="reports/results", out_dir="reports") -> pathlib.Path:
    """Writes `<out_dir>/REPORT.md`, `<out_dir>/claims/<id>.md` and `<out_dir>/figures/`
    from `results_dir`."""
    results_dir, out_dir = pathlib.Path(results_dir), pathlib.Path(out_dir)
    manifest = _read_json(results_dir / MANIFEST)
    rows, analyses = analyze_all(results_dir, out_dir / "figures", (manifest or {}).get("profile"))
    summary_figure(analyses, out_dir / "figures")
    for claim_id, analysis in analyses.items():
        if analysis is not None:
            write_text(out_dir / _page_link(claim_id), claim_page(claim_id, analysis))
    bench = _read_json(results_dir / BENCH)
    if bench:
        from studies import bench as bench_module

        bench_module.figures(bench, out_dir / "figures")
    path = out_dir / "REPORT.md"
    write_text(path, render(rows, analyses, manifest, bench, results_dir.as_posix()))
    return path

