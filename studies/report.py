"""`reports/REPORT.md` and its figures, from stored results only: a pure function of the
results directory (no training, no clock), so regenerating gives the same bytes.

Each claim module's `analyze(rows)` returns `studies.stats.make_analysis(...)`; this module
renders those dicts, the layer benchmarks (`bench.json`, written by `python -m studies
bench`) and the provenance carried by the rows and the sweep's manifest.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import tempfile

from studies import claims as claims_registry
from studies import sweep
from studies.stats import INTERVAL

MANIFEST = sweep.MANIFEST
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


def _atomic_write(path: pathlib.Path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", newline="\n") as f:
        f.write(text)
    os.replace(tmp, path)


def _read_json(path: pathlib.Path):
    return json.loads(path.read_text()) if path.exists() else None


def planned_rows(rows, profile):
    """The rows of runs that `profile`'s grids plan: a store may also hold runs of grids
    since changed, or of another profile, which must not enter this report."""
    if profile is None or not len(rows):
        return rows
    keys = {c.key() for configs in claims_registry.plan(claims_registry.CLAIM_IDS, profile).values() for c in configs}
    return rows[rows["key"].isin(keys)].reset_index(drop=True)


def analyze_all(results_dir, figures_dir, profile=None):
    """{claim id: analysis or None} for every claim, from the rows `profile` plans (all
    rows when None); figures written to `figures_dir`."""
    rows = planned_rows(sweep.load_rows(results_dir), profile)
    analyses = {}
    for claim_id in claims_registry.CLAIM_IDS:
        module = claims_registry.load(claim_id)
        claim_rows = rows[rows["claim"] == claim_id] if len(rows) else rows
        if not len(claim_rows) or not hasattr(module, "analyze"):
            analyses[claim_id] = None
            continue
        analysis = module.analyze(claim_rows.reset_index(drop=True))
        module.figures(analysis, figures_dir)
        analyses[claim_id] = analysis
    return rows, analyses


def _summary(analyses):
    lines = [
        "| claim | the note says | verdict | key number (ours) | published anchor | figure |",
        "|---|---|---|---|---|---|",
    ]
    for claim_id, a in analyses.items():
        if a is None:
            title = claims_registry.load(claim_id).TITLE
            lines.append(f"| {claim_id} | {title} | not run | | | |")
            continue
        key = a["evidence"][0] if a["evidence"] else None
        key_text = f"{key['label']}: {_estimate_text(key)}" if key else ""
        fig = next(iter(a["figures"]), "")
        fig_link = f"[{fig}](figures/{fig}.png)" if fig else ""
        anchor = a["anchor"].split("\n")[0]
        lines.append(
            f"| [{claim_id}](#{claim_id.lower()}) | {a['title']} | **{a['verdict']}** | {key_text} | {anchor} | {fig_link} |"
        )
    return "\n".join(lines) + "\n"


def _claim_section(claim_id, a):
    out = [f"## {claim_id}\n"]
    if a is None:
        out.append("No stored results for this claim: run `python -m studies run --claims "
                   f"{claim_id}`.\n")
        return "\n".join(out)
    out.append(f"**The note:** {a['title']}  \n**Verdict: {a['verdict']}**\n")
    out.append(f"**Setup.** {a['setup']}\n")
    for fig_id, caption in a["figures"].items():
        out.append(f"![{fig_id}](figures/{fig_id}.png)\n\n*{fig_id}.* {caption} "
                   f"(data: [figures/{fig_id}.csv](figures/{fig_id}.csv))\n")
    out.append("**Numbers** (mean, " + INTERVAL + ", n):\n")
    for e in a["evidence"]:
        out.append(f"- {e['label']}: {_estimate_text(e)}")
    out.append("")
    for name, records in a["tables"].items():
        out.append(f"*{name}*\n\n{_table(records)}")
    out.append(f"**Rule.** {a['rule']}\n")
    for part, held in a["parts"].items():
        out.append(f"- [{'x' if held else ' '}] {part}")
    out.append(f"\n**Published anchor.** {a['anchor']}\n")
    if a["caveats"]:
        out.append("**Caveats.**\n")
        out.extend(f"- {c}" for c in a["caveats"])
        out.append("")
    return "\n".join(out) + "\n"


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
        "## The formula\n",
        FORMULA_NOTE + "\n",
    ]
    parts.extend(_claim_section(cid, a) for cid, a in analyses.items())
    parts.append(_bench_section(bench))
    parts.append(_provenance(rows, manifest))
    return "\n".join(parts)


def write_report(results_dir="reports/results", out_dir="reports") -> pathlib.Path:
    """Writes `<out_dir>/REPORT.md` and `<out_dir>/figures/` from `results_dir`."""
    results_dir, out_dir = pathlib.Path(results_dir), pathlib.Path(out_dir)
    manifest = _read_json(results_dir / MANIFEST)
    rows, analyses = analyze_all(results_dir, out_dir / "figures", (manifest or {}).get("profile"))
    bench = _read_json(results_dir / BENCH)
    if bench:
        from studies import bench as bench_module

        bench_module.figures(bench, out_dir / "figures")
    path = out_dir / "REPORT.md"
    _atomic_write(path, render(rows, analyses, manifest, bench, results_dir.as_posix()))
    return path

