"""The report: written from stored results only, covering every claim, reproducible byte
for byte, and blind to runs that the profile's grids no longer plan."""

from __future__ import annotations

import json
import re
import shutil

import pandas
import pytest

from studies import claims
from studies.__main__ import main
from studies.engine.config import RunConfig
from studies.engine.store import ResultsStore
from studies.report import render as report
from studies.report import stats


def _report(results, out):
    assert main(["report", "--results", str(results), "--out", str(out)]) == 0
    return (out / "REPORT.md").read_text()


def test_report_covers_every_claim_with_its_verdict_and_figures(smoke_results, tmp_path):
    text = _report(smoke_results, tmp_path)
    for claim_id in claims.CLAIM_IDS:
        section = text.split(f"\n## {claim_id}\n", 1)[1].split("\n## ", 1)[0]
        assert re.search(r"\*\*Verdict: (supported|partly supported|inconclusive|not supported)\*\*", section), claim_id
        assert "**Rule.**" in section and "**Published anchor.**" in section
        assert "**Convergence" in section and "**Power.**" in section
        page = tmp_path / "claims" / f"{claim_id.lower()}.md"
        assert f"]({page.relative_to(tmp_path).as_posix()})" in section and page.read_text().startswith(f"# {claim_id}: ")
    assert text.count("## The verdict scale") == 1
    assert "![fig-summary](figures/fig-summary.png)" in text.split("## The verdict scale")[0]
    assert "sqrt(var + epsilon)" in text  # the note's formula, corrected once
    assert "- profile: `smoke`" in text
    figure_ids = set(re.findall(r"\(figures/(fig-[a-z0-9-]+)\.png\)", text))
    assert len({f.split("-")[1] for f in figure_ids if f.startswith("fig-c")}) == len(claims.CLAIM_IDS)
    for fig_id in figure_ids:
        for suffix in (".png", ".svg", ".csv"):
            assert (tmp_path / "figures" / f"{fig_id}{suffix}").stat().st_size > 0


def test_report_regenerates_byte_for_byte(smoke_results, tmp_path):
    _report(smoke_results, tmp_path / "a")
    _report(smoke_results, tmp_path / "b")
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) > 20
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_report_ignores_runs_the_profile_does_not_plan(smoke_results, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(smoke_results, results)
    before = _report(results, tmp_path / "before")
    stray = RunConfig(claim="C7", model="cnn1d", norm="layer", num_samples=200, seed=99)
    row = {**json.loads(next((results / "C7").glob("*.json")).read_text()), "key": stray.key(), "seed": 99}
    row["final/test/accuracy"] = 0.0
    ResultsStore(results).write(row)
    assert _report(results, tmp_path / "after") == before


# --- The summary figure and the claim pages, on synthetic analyses ----------------------------


def _analysis(claim, low, high, threshold=3.0, kind="at_least", blockers=()):
    check = stats.Check(f"{claim} effect", stats.Estimate((low + high) / 2, low, high, 6), threshold, kind,
                        "synthetic anchor", unit=" pp", blockers=blockers)
    convergence = pandas.DataFrame([{"norm": "batch", "runs": 6, "diverged": 0, "converged": 5,
                                     "median_plateau": 0.01, "worst_plateau": 0.2}])
    return stats.make_analysis(
        claim=claim, title=f"{claim} title", rule="a rule", evidence=[("key", check.effect, " pp")],
        anchor="an anchor", setup="a setup", checks=[check], convergence=convergence,
        seed_plan=stats.SeedPlan(pilot=3, initial=6, block=2, cap=10, why="pilot sd 1 pp"),
        tables={"full table": pandas.DataFrame([{"a": 1.0}])},
    )


def _analyses():
    return {
        "C1": _analysis("C1", 4.0, 6.0),  # holds
        "C2": _analysis("C2", 1.0, 5.0),  # spans the threshold: inconclusive
        "C3": _analysis("C3", -0.5, 0.5, threshold=1.0, kind="within", blockers=("at the ceiling: x",)),
        "C4": None,
    }


def test_summary_figure_plots_each_claim_against_its_threshold(tmp_path):
    analyses = _analyses()
    paths = report.summary_figure(analyses, tmp_path)
    assert sorted(p.name for p in paths) == ["fig-summary.csv", "fig-summary.png", "fig-summary.svg"]
    csv = pandas.read_csv(tmp_path / "fig-summary.csv")
    assert csv["claim"].tolist() == ["C1", "C2", "C3", "C4"]
    assert csv["verdict"].tolist() == ["supported", "inconclusive", "inconclusive", "not run"]
    c1 = csv.iloc[0]
    assert (c1["mean"], c1["threshold"], c1["scaled_threshold"]) == (5.0, 3.0, 1.0)
    assert c1["scaled_mean"] == pytest.approx(5.0 / 3, rel=1e-5)  # the CSV keeps 6 digits
    assert csv.iloc[2]["outcome"] == "undecided"  # blocked, though inside the margin
    again = report.summary_figure(analyses, tmp_path / "again")
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths]


def test_summary_and_claim_page_carry_checks_convergence_and_power():
    analyses = _analyses()
    summary = report._summary(analyses)
    assert "| **supported** |" in summary and "| **inconclusive** |" in summary
    assert "C2 effect: 3.00 pp [1.00, 5.00] (n=6); claim >= 3 pp | undecided" in summary
    page = report.claim_page("C3", analyses["C3"])
    assert "| C3 effect | 0.00 pp [-0.50, 0.50] (n=6) | within ±1 pp | **undecided** | yes | at the ceiling: x |" in page
    assert "5 of 6 runs in 0 of 1 arms converged" in page and "batch (5 of 6)" in page
    assert "a pilot of 3 seeds; 6 per arm (pilot sd 1 pp)" in page and "up to 10" in page
    assert "*full table*" in page


def test_bench_section_renders_the_engine_against_the_plain_loop():
    row = {"model": "mlp", "seeds": 8, "steps_per_seed": 1250, "epochs": 25, "repeats": 3,
           "plain_wall_s": 30.0, "engine_wall_s": 5.0, "ratio": 0.17, "plain_overhead": 0.7,
           "engine_overhead": 0.2, "target": 0.2, "met": True}
    text = report._bench_section({"table": [], "engine": {"description": "Engine vs loop.", "table": [row]}})
    assert "Engine vs loop." in text
    assert "| model | seeds | steps_per_seed |" in text
    assert "| mlp | 8 | 1250 | 25 | 3 | 30.000 | 5.000 | 0.170 | 0.700 | 0.200 | 0.200 | True |" in text


def test_power_line_names_the_block_the_sequential_plan_still_calls_for():
    plan = stats.SeedPlan(pilot=3, initial=4, block=2, cap=8, why="pilot sd 1 pp")
    check = stats.Check(name="effect", effect=stats.Estimate(2.0, -1.0, 5.0, 4), threshold=3.0,
                        kind="at_least", why="anchor")
    analysis = {"checks": [check.to_dict()], "seed_plan": plan.to_dict()}
    assert "calls for 2 more seed(s) per arm, not yet run" in report._power_line(analysis)
    decided = stats.Check(name="effect", effect=stats.Estimate(6.0, 5.0, 7.0, 4), threshold=3.0,
                          kind="at_least", why="anchor")
    assert "Plan status: complete" in report._power_line({"checks": [decided.to_dict()], "seed_plan": plan.to_dict()})
    # a decisive check over runs pooled across arms (n=48) does not count as seeds per arm
    pooled = stats.Check(name="pooled", effect=stats.Estimate(0.0, 0.0, 0.0, 48), threshold=1e-4,
                         kind="at_most", why="anchor")
    line = report._power_line({"checks": [check.to_dict(), pooled.to_dict()], "seed_plan": plan.to_dict()})
    assert "at n=4" in line and "at its cap" not in line


def test_every_arm_has_a_colour_of_its_own():
    from studies.engine import models
    from studies.report import plots

    assert set(models.NORMS) <= set(plots.COLORS)
    assert len(set(plots.COLORS.values())) == len(plots.COLORS)
