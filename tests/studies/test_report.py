"""The report: written from stored results only, covering every claim, reproducible byte
for byte, and blind to runs that the profile's grids no longer plan."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from studies import claims, sweep
from studies.__main__ import main
from studies.training import RunConfig


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory):
    """The whole study at the smoke profile, run once for this module."""
    results = tmp_path_factory.mktemp("smoke") / "results"
    assert main(["run", "--claims", "all", "--profile", "smoke", "--jobs", "2", "--results", str(results)]) == 0
    rows = sweep.load_rows(results)
    assert set(rows["claim"]) == set(claims.CLAIM_IDS)
    assert (rows["status"] == "ok").all(), rows.loc[rows["status"] != "ok", "error"].tolist()
    return results


def _report(results, out):
    assert main(["report", "--results", str(results), "--out", str(out)]) == 0
    return (out / "REPORT.md").read_text()


def test_report_covers_every_claim_with_its_verdict_and_figures(smoke_results, tmp_path):
    text = _report(smoke_results, tmp_path)
    for claim_id in claims.CLAIM_IDS:
        section = text.split(f"\n## {claim_id}\n", 1)[1].split("\n## ", 1)[0]
        assert re.search(r"\*\*Verdict: (supported|partly supported|not supported)\*\*", section), claim_id
        assert "**Rule.**" in section and "**Published anchor.**" in section
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
    sweep.ResultsStore(results).write(row)
    assert _report(results, tmp_path / "after") == before
