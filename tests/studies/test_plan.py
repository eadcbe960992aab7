"""The sequential seed plan: seeds extended per arm, stored beside the results, run in
blocks while a decisive check is undecided for want of precision, and read back by the
report so that it plans the same runs from the results directory alone."""

from __future__ import annotations

from studies import plan
from studies.engine import sweep
from studies.engine.config import RunConfig
from studies.engine.store import ResultsStore, load_rows
from studies.report import render as report
from studies.report import stats


def _grid(seeds=(0, 1)):
    return [RunConfig(claim="C1", norm=norm, seed=s) for norm in ("none", "batch") for s in seeds]


def test_with_seeds_extends_every_arm_after_the_largest_seed():
    configs = plan.with_seeds(_grid(), 4)
    assert sorted((c.norm, c.seed) for c in configs) == [(n, s) for n in ("batch", "none") for s in range(4)]
    assert plan.with_seeds(_grid(), 2) == _grid()  # already there
    assert plan.seeds_per_arm(configs) == 4


def test_seeds_are_stored_per_profile(tmp_path):
    plan.write_seeds(tmp_path, "full", {"C1": 6})
    assert plan.read_seeds(tmp_path, "full") == {"C1": 6}
    assert plan.read_seeds(tmp_path, "quick") == {}  # another profile's plan does not apply
    assert plan.read_seeds(tmp_path / "missing", "full") == {}


def _fake_claim(needs):
    """A claim whose one check is decided once it has `needs` seeds per arm."""
    seed_plan = stats.SeedPlan(pilot=2, initial=2, block=2, cap=6, why="test")

    def analyze(rows):
        n = rows["seed"].nunique()
        wide = (1.0, 5.0) if n < needs else (4.0, 5.0)
        check = stats.Check("effect", stats.Estimate(sum(wide) / 2, *wide, n), 3.0, "at_least", "test")
        return stats.make_analysis(claim="C1", title="t", rule="r", evidence=[], anchor="a", setup="s",
                                   checks=[check], seed_plan=seed_plan)

    return analyze


def _fake_sweep(store):
    def run_configs(configs):
        pending = [c for c in configs if not store.done(c)]
        for c in pending:
            store.write({**c.to_dict(), "key": c.key(), "status": "ok", "seed": c.seed})
        return sweep.SweepSummary(planned=len(configs), skipped=len(configs) - len(pending), ok=len(pending))

    return run_configs


def _patch(monkeypatch, needs):
    monkeypatch.setattr(plan.claims_registry, "plan", lambda ids, profile: {"C1": _grid()})
    analyze = _fake_claim(needs)
    monkeypatch.setattr(plan.claims_registry, "analyze", lambda claim, rows: analyze(rows))


def test_run_planned_adds_blocks_until_decided(tmp_path, monkeypatch):
    _patch(monkeypatch, needs=4)
    store = ResultsStore(tmp_path)
    summary, seeds = plan.run_planned(["C1"], "full", store, _fake_sweep(store))
    assert seeds == {"C1": 4} and plan.read_seeds(tmp_path, "full") == {"C1": 4}
    assert (summary.planned, summary.ok) == (8, 8)  # 2 arms x 4 seeds, each run once
    # The report plans the same runs from the results directory alone.
    rows = load_rows(tmp_path)
    monkeypatch.setattr(report.claims_registry, "plan", lambda ids, profile: {"C1": _grid()})
    assert len(report.planned_rows(rows, "full", plan.read_seeds(tmp_path, "full"))) == 8
    assert len(report.planned_rows(rows, "full")) == 4


def test_run_planned_stops_at_the_cap_and_outside_the_full_profile(tmp_path, monkeypatch):
    _patch(monkeypatch, needs=100)
    store = ResultsStore(tmp_path / "full")
    _, seeds = plan.run_planned(["C1"], "full", store, _fake_sweep(store))
    assert seeds == {"C1": 6}  # the cap
    quick = ResultsStore(tmp_path / "quick")
    summary, seeds = plan.run_planned(["C1"], "quick", quick, _fake_sweep(quick))
    assert seeds == {} and summary.planned == 4
    assert not (tmp_path / "quick" / plan.SEEDS).exists()


def test_run_planned_follows_the_plans_by_default_and_reruns_nothing_once_complete(tmp_path, monkeypatch):
    _patch(monkeypatch, needs=4)
    store = ResultsStore(tmp_path)
    summary, seeds = plan.run_planned(["C1"], "full", store, _fake_sweep(store))  # sequential by default
    assert seeds == {"C1": 4} and summary.ok == 8
    # A fresh clone of the committed rows (``make report``): finished runs are skipped and the
    # plan, complete, adds nothing.
    summary, seeds = plan.run_planned(["C1"], "full", store, _fake_sweep(store))
    assert seeds == {"C1": 4} and (summary.planned, summary.skipped, summary.ok) == (8, 8, 0)


def test_run_planned_without_sequential_runs_the_grid_and_the_seeds_stored_before(tmp_path, monkeypatch):
    _patch(monkeypatch, needs=100)
    store = ResultsStore(tmp_path)
    summary, seeds = plan.run_planned(["C1"], "full", store, _fake_sweep(store), sequential=False)
    assert seeds == {} and summary.planned == 4 and not (tmp_path / plan.SEEDS).exists()
    plan.write_seeds(tmp_path, "full", {"C1": 3})  # a plan that stood at 3 seeds resumes there
    summary, seeds = plan.run_planned(["C1"], "full", store, _fake_sweep(store), sequential=False)
    assert seeds == {"C1": 3} and summary.planned == 6
