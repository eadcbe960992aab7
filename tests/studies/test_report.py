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
    front = text.split("\n## C", 1)[0]
    assert "![fig-summary](figures/fig-summary.png)" in front  # the front page opens with it
    assert len(text.splitlines()) <= 150 + 2 * len(claims.CLAIM_IDS)
    for claim_id in claims.CLAIM_IDS:
        section = text.split(f"\n## {claim_id}\n", 1)[1].split("\n## ", 1)[0]
        assert re.search(r"\*\*(supported|partly supported|inconclusive|not supported)\*\*", section), claim_id
        assert "**In practice:**" in section and ("Real-data task" in section or "No real-data task" in section)
        page = tmp_path / "claims" / f"{claim_id.lower()}.md"
        assert f"]({page.relative_to(tmp_path).as_posix()})" in section
        page_text = page.read_text()
        assert page_text.startswith(f"# {claim_id}: ")
        for part in ("## Rule", "## Checks", "- **Convergence**", "- **Ceiling and floor:**", "- **Power:**",
                     "### Seed plan", "**Published anchor.**", "## Sensitivity"):
            assert part in page_text, (claim_id, part)
    for part in ("## Sensitivity", "## Deviations", "## The verdict scale", "## Provenance"):
        assert text.count(part) == 1, part
    assert "Layer benchmarks" not in text and (tmp_path / "bench.md").read_text().startswith("# Layer and engine")
    assert "CLAIMS.md" not in text and "sqrt(var + epsilon)" in text
    assert "- profile: `smoke`" in text
    figure_ids = set(re.findall(r"\(\.\./figures/(fig-[a-z0-9-]+)\.png\)", "".join(
        p.read_text() for p in (tmp_path / "claims").glob("*.md"))))
    assert len({f.split("-")[1] for f in figure_ids if f.startswith("fig-c")}) == len(claims.CLAIM_IDS)
    for fig_id in figure_ids:
        for suffix in (".png", ".svg", ".csv"):
            assert (tmp_path / "figures" / f"{fig_id}{suffix}").stat().st_size > 0


def _anchors(text):
    """GitHub's anchors of a Markdown page's headings."""
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", text, re.MULTILINE)}


def test_every_link_of_the_report_and_its_pages_resolves(smoke_results, tmp_path):
    out = tmp_path / "out"
    _report(smoke_results, out)
    pages = [out / "REPORT.md", out / "bench.md", out / "sensitivity.md", *sorted((out / "claims").glob("*.md"))]
    checked = 0
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            assert not re.match(r"[a-z]+://", target), (page.name, target)  # nothing outside the repository
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            assert resolved.is_file(), (page.name, target)
            if anchor:
                assert anchor in _anchors(resolved.read_text()), (page.name, target)
            checked += 1
    assert checked > 3 * len(pages)
    design = (out / "REPORT.md").read_text().split("[the study's design](", 1)[1].split(")", 1)[0]
    assert (out / design).resolve() == report.DESIGN


def test_sensitivity_table_from_rows(smoke_results, tmp_path):
    rows = report.load_rows(smoke_results)
    analyses = {cid: claims.analyze(cid, rows) for cid in claims.CLAIM_IDS}
    table = report.sensitivity_table(analyses)
    assert {r["claim"] for r in table} == set(claims.CLAIM_IDS)
    for claim_id, a in analyses.items():
        mine = [r for r in table if r["claim"] == claim_id]
        assert mine[0]["judgement call (the other choice)"] == claims.ALL_RUNS_CONVERGED
        assert [r["verdict under it"] for r in mine] == [s["verdict"] for s in a["sensitivity"]]
        assert all(r["verdict as run"] == a["verdict"] for r in mine)
        assert all(r["changes"] == ("yes" if r["verdict under it"] != a["verdict"] else "no") for r in mine)
    page = report.sensitivity_page(analyses)
    assert page.count("\n| C") == len(table)


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


def test_summary_figure_shows_both_tasks_and_clips_far_intervals_visibly(tmp_path):
    analyses = _analyses()
    far = stats.Check("C1 far", stats.Estimate(300.0, 200.0, 400.0, 6), 3.0, "at_least", "anchor", unit=" pp")
    real = stats.Check("C1 real", stats.Estimate(-1.0, -2.0, 0.0, 6), 3.0, "at_least", "anchor", unit=" pp",
                       real=True)
    analyses["C1"] = stats.make_analysis(claim="C1", title="t", rule="r", evidence=[], anchor="a", setup="s",
                                         checks=[far, real])
    table = report.summary_table(analyses)
    c1 = table[table["claim"] == "C1"]
    assert c1["task"].tolist() == ["synthetic", "real data"]
    assert c1["verdict"].tolist() == ["supported", "not supported"]
    limit = float(table["limit"].iloc[0])
    assert limit == report.SUMMARY_LIMIT and bool(c1.iloc[0]["clipped"]) and not bool(c1.iloc[1]["clipped"])
    shown = table[["shown_low", "shown_high", "shown_mean"]].dropna().to_numpy()
    assert (abs(shown) <= limit).all()
    assert c1.iloc[0]["shown_low"] == limit and c1.iloc[0]["high"] == 400.0  # at the edge, value kept
    report.summary_figure(analyses, tmp_path)


def _check(name, low, high, decisive=True, real=False):
    return stats.Check(name, stats.Estimate((low + high) / 2, low, high, 6), 3.0, "at_least", "anchor",
                       decisive=decisive, real=real)


def test_deciding_check_is_the_one_that_decides_the_verdict():
    holds, fails, undecided = _check("holds", 4, 5), _check("fails", 0, 1), _check("undecided", 2, 4)
    secondary_fails = _check("secondary", 0, 1, decisive=False)
    assert stats.deciding_check([holds, undecided, fails])["name"] == "undecided"  # inconclusive
    assert stats.deciding_check([fails, _check("fails too", -1, 0)], preferred="fails too")["name"] == "fails too"
    assert stats.deciding_check([holds, fails])["name"] == "fails"  # partly supported
    assert stats.deciding_check([holds, secondary_fails])["name"] == "secondary"  # partly supported
    assert stats.deciding_check([holds, _check("holds too", 5, 6)], preferred="holds too")["name"] == "holds too"
    assert stats.deciding_check([holds, undecided], preferred="holds")["name"] == "undecided"  # not a decider
    assert stats.deciding_check([secondary_fails]) is None
    a = stats.make_analysis(claim="C1", title="t", rule="r", evidence=[], anchor="a", setup="s",
                            checks=[holds, _check("real", 0, 1, real=True)], headline="holds")
    assert report.deciding_check(a)["name"] == "holds" and report.deciding_check(a, real=True)["name"] == "real"


def test_front_page_says_the_practice_sentence_and_a_disagreement_plainly():
    a = _analysis("C1", 4.0, 6.0)
    assert report.practice_sentence(a) == report.NEUTRAL_PRACTICE["supported"]
    a["practice"] = {"supported": "use BN above 8 samples per statistic"}
    assert report.practice_sentence(a) == "use BN above 8 samples per statistic"
    a["real_verdict"], a["real_agrees"] = "not supported", "disagrees"
    assert "**disagrees** with the synthetic task (**supported**)" in report.real_task_text(a)
    text = report._front_claim("C1", a)
    assert "**In practice:** use BN above 8 samples per statistic" in text and "not averaged" in text


def test_deviations_list_the_verdict_under_both_choices():
    analyses = _analyses()
    text = report._deviations_section(analyses, "`abc1234`")
    assert "`abc1234`" in text and "No claim changed" in text
    alternative = analyses["C1"]["sensitivity"][0]["alternative"] if analyses["C1"]["sensitivity"] else None
    analyses["C1"]["sensitivity"] = [{"alternative": "momentum 0.9", "verdict": "inconclusive"}]
    analyses["C1"]["deviations"] = {"momentum 0.9": "the run at abc1234 diverged at 0.9"}
    assert alternative is None
    records = report.deviations_table(analyses)
    assert records == [{"claim": "C1", "as pre-registered": "momentum 0.9", "why it changed": "the run at abc1234 "
                        "diverged at 0.9", "verdict as run": "supported", "verdict as pre-registered": "inconclusive"}]
    text = report._deviations_section(analyses, "`abc1234`")
    assert "| C1 | momentum 0.9 | the run at abc1234 diverged at 0.9 | supported | inconclusive |" in text
    assert report.sensitivity_table(analyses)[0]["deviation"] == "yes"


def test_rules_commit_is_the_commit_of_the_rows():
    assert report.rules_commit(pandas.DataFrame({"commit": ["6d7033a", "6d7033a"]})) == "`6d7033a`"
    assert "not recorded" in report.rules_commit(pandas.DataFrame())


def test_claim_page_carries_checks_convergence_ceiling_and_power_per_task():
    analyses = _analyses()
    page = report.claim_page("C3", analyses["C3"])
    assert ("| synthetic | C3 effect | 0.00 pp [-0.50, 0.50] (n=6) | within ±1 pp | **undecided** | yes | "
            "at the ceiling: x |") in page
    assert "5 of 6 runs converged, 0 diverged; 1 of 1 arms converged by the rule" in page
    assert "norm=batch: 5 of 6 converged" in page and "has not converged" not in page
    assert "1 of 1 checks blocked: C3 effect (at the ceiling: x)" in page
    assert "a pilot of 3 seeds; 6 per arm (pilot sd 1 pp)" in page and "up to 10" in page
    assert "*full table*" in page


def test_convergence_line_counts_converged_runs_and_names_blocked_arms():
    table = [{"act": "relu", "norm": "batch", "runs": 8, "diverged": 0, "converged": 2, "median_plateau": 0.2,
              "worst_plateau": 0.5},
             {"act": "relu", "norm": "layer", "runs": 8, "diverged": 0, "converged": 8, "median_plateau": 0.0,
              "worst_plateau": 0.01}]
    line = report.convergence_line(table)
    assert "10 of 16 runs converged" in line and "1 of 2 arms converged by the rule" in line
    assert "act=relu, norm=batch: 2 of 8 converged (the arm has not converged" in line
    assert "norm=layer" not in line


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
