import json
import sys

import pytest

from studies import claims, plan
from studies.__main__ import main
from studies.engine import stacked, worker
from studies.engine.store import ResultsStore


def _exit_code(argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code


def test_smoke_profile_end_to_end(tmp_path, capsys):
    results = tmp_path / "results"
    argv = ["--claims", "C1", "--profile", "smoke", "--results", str(results)]
    assert main(["run", *argv]) == 0
    planned = claims.load("C1").grid("smoke")
    stored = sorted(results.glob("C1/*.json"))
    # each planned seed's whole block of seeds ran stacked, and all of its rows are stored
    assert {p.stem for p in stored} >= {c.key() for c in planned}
    assert len(stored) == len(worker.plan(planned)) * stacked.MEMBERS
    rows = [json.loads(p.read_text()) for p in stored]
    assert all(r["status"] == "ok" for r in rows)
    manifest = json.loads((results / "manifest.json").read_text())
    assert manifest["profile"] == "smoke" and manifest["claims"] == ["C1"]
    assert manifest["sweeps"][-1]["runs"] == len(planned)
    capsys.readouterr()

    assert main(["list", *argv]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == f"total: {len(planned)}/{len(planned)} runs done"
    assert lines[0].startswith(f"C1  {len(planned)}/{len(planned)} done")

    assert main(["run", *argv]) == 0  # nothing left to do
    assert f"{len(planned)} already done, 0 ran ok" in capsys.readouterr().out


def test_manifest_accumulates_a_study_run_in_pieces(tmp_path):
    import argparse

    from studies.__main__ import _write_manifest
    from studies.engine import sweep

    store = ResultsStore(tmp_path)
    done = sweep.SweepSummary(planned=3, skipped=0, ok=3, errors=0)
    args = lambda claims, profile="full": argparse.Namespace(  # noqa: E731
        claims=claims, profile=profile, executor="local", jobs=2, seeds=None
    )
    _write_manifest(store, args(["C4"]), done, 60.0)
    _write_manifest(store, args(["C1", "C2"]), done, 30.0)
    manifest = store.read_manifest()
    assert manifest["claims"] == ["C1", "C2", "C4"] and manifest["wall_s"] == 90.0
    assert len(manifest["sweeps"]) == 2
    _write_manifest(store, args(["C1"], profile="quick"), done, 5.0)  # another profile: anew
    manifest = store.read_manifest()
    assert manifest["profile"] == "quick" and manifest["claims"] == ["C1"] and manifest["wall_s"] == 5.0


def test_list_counts_every_claims_plan(tmp_path, capsys):
    assert main(["list", "--profile", "smoke", "--results", str(tmp_path / "none")]) == 0
    lines = capsys.readouterr().out.splitlines()
    total = sum(len(claims.load(c).grid("smoke")) for c in claims.CLAIM_IDS)
    assert [line.split()[0] for line in lines[:-1]] == list(claims.CLAIM_IDS)
    assert lines[-1] == f"total: 0/{total} runs done"


@pytest.mark.parametrize(
    "argv, named",
    [
        (["run", "--claims", "C99"], "unknown claim 'C99'; known: C1, C2, "),
        (["list", "--claims", "C1,X2"], "unknown claim 'X2'"),
        (["run", "--profile", "huge"], "unknown profile 'huge'"),
        (["list", "--profile", "huge"], "unknown profile 'huge'"),
        (["run", "--executor", "slurm"], "unknown executor 'slurm'"),
        (["run", "--jobs", "0"], "'0'"),
        (["run", "--jobs", "two"], "'two'"),
        (["run", "--seeds", "0"], "not '0'"),
        (["list", "--seeds", "5-3"], "not '5-3'"),
        (["run", "--seeds", "-3"], "not '-3'"),
        (["list", "--seeds", "two"], "not 'two'"),
    ],
)
def test_bad_arguments_exit_2_naming_the_value(argv, named, capsys):
    assert _exit_code(argv) == 2
    assert named in capsys.readouterr().err


def test_seeds_replace_every_arms_seeds_for_run_list_and_report(tmp_path, capsys):
    results = tmp_path / "results"
    argv = ["--claims", "C1", "--profile", "smoke", "--results", str(results), "--seeds", "2-3"]
    arms = len(claims.load("C1").grid("smoke"))  # the smoke grid has one seed per arm
    assert main(["list", *argv]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"total: 0/{2 * arms} runs done"
    assert main(["run", *argv]) == 0
    assert f"{2 * arms} runs planned, 0 already done, {2 * arms} ran ok" in capsys.readouterr().out
    rows = [json.loads(p.read_text()) for p in results.glob("C1/*.json")]
    assert {r["seed"] for r in rows} == set(range(stacked.MEMBERS))  # seeds 2 and 3's block
    # the report plans every stored seed up to the last one asked for
    assert plan.read_seeds(results, "smoke") == {"C1": 4}
    assert _last_sweep_seeds(results) == "2-3"
    assert main(["list", *argv[:-2], "--seeds", "4"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"total: {4 * arms}/{4 * arms} runs done"


def _last_sweep_seeds(results):
    return json.loads((results / "manifest.json").read_text())["sweeps"][-1]["seeds"]


def test_unusable_paths_exit_2_naming_them(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert _exit_code(["run", "--claims", "C1", "--profile", "smoke", "--results", str(a_file / "sub")]) == 2
    assert str(a_file / "sub") in capsys.readouterr().err
    assert _exit_code(["list", "--results", str(a_file)]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert _exit_code(["report", "--results", str(tmp_path / "missing")]) == 2
    assert "missing' does not exist" in capsys.readouterr().err
    assert _exit_code(["report", "--results", str(tmp_path), "--out", str(a_file)]) == 2
    assert str(a_file) in capsys.readouterr().err


def test_ray_executor_without_ray_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)
    argv = ["run", "--claims", "C1", "--profile", "smoke", "--executor", "ray", "--results", str(tmp_path)]
    assert _exit_code(argv) == 2
    assert "pip install 'kerasnorm[ray]'" in capsys.readouterr().err


def test_report_and_bench_delegate(tmp_path, monkeypatch):
    from studies import bench
    from studies.report import render

    calls = []
    monkeypatch.setattr(render, "write_report", lambda results, out: calls.append(("report", results, out)))
    monkeypatch.setattr(bench, "main", lambda args: calls.append(("bench", args)))
    assert main(["report", "--results", str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    assert main(["bench", "--quick", "-h"]) == 0
    assert calls == [("report", tmp_path, tmp_path / "out"), ("bench", ["--quick", "-h"])]
    assert _exit_code(["list", "--quick"]) == 2


def test_run_follows_the_seed_plans_by_default(tmp_path, monkeypatch, capsys):
    from studies.engine import sweep

    calls = []

    def run_planned(claim_ids, profile, store, run_configs, sequential=True):
        calls.append((claim_ids, profile, sequential))
        return sweep.SweepSummary(planned=0, skipped=0, ok=0), {}

    monkeypatch.setattr(plan, "run_planned", run_planned)
    argv = ["run", "--claims", "C1", "--results", str(tmp_path)]
    assert main(argv) == 0
    assert main([*argv, "--no-sequential"]) == 0
    assert main([*argv, "--sequential"]) == 0
    assert calls == [(["C1"], "full", True), (["C1"], "full", False), (["C1"], "full", True)]
    capsys.readouterr()
