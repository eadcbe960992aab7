import io
import json
import os
import subprocess
import sys
import textwrap

import pytest

from studies.engine import stacked, sweep, tasks, training, worker
from studies.engine.config import RunConfig, concat, grid
from studies.engine.store import ResultsStore, load_rows
from tests.studies.conftest import kill_after_first_result


def test_grid_is_the_product_of_axes_in_order():
    base = RunConfig(claim="C1")
    configs = grid(base, norm=["none", "batch"], seed=[0, 1, 2])
    assert [(c.norm, c.seed) for c in configs] == [
        ("none", 0), ("none", 1), ("none", 2), ("batch", 0), ("batch", 1), ("batch", 2)
    ]
    assert grid(base) == [base]
    with pytest.raises(ValueError, match="colour"):
        grid(base, colour=["red"])


def test_concat_keeps_order_and_drops_repeats():
    base = RunConfig(claim="C1")
    a = grid(base, seed=[0, 1])
    b = grid(base, seed=[1, 2])
    assert [c.seed for c in concat(a, b)] == [0, 1, 2]


def _row(config, status="ok", **extra):
    row = training.base_row(config)
    row.update(status=status, **extra)
    return row


def test_store_writes_atomically_and_reads_back(tmp_path):
    store = ResultsStore(tmp_path)
    config = RunConfig(claim="C3", seed=4)
    assert not store.done(config) and store.status(config) is None
    path = store.write(_row(config, metric=[1.0, float("nan")]))
    assert path == tmp_path / "C3" / f"{config.key()}.json"
    assert store.done(config) and store.read(config)["metric"][0] == 1.0
    assert [p.name for p in (tmp_path / "C3").iterdir()] == [path.name]  # no temp file left


def test_error_rows_count_as_done_unless_retried(tmp_path):
    store = ResultsStore(tmp_path)
    config = RunConfig(claim="C3")
    store.write(_row(config, status="error", error="boom"))
    assert store.done(config) and not store.done(config, retry_errors=True)


def test_invalid_files_are_not_results(tmp_path):
    store = ResultsStore(tmp_path)
    config = RunConfig(claim="C3")
    store.path(config).parent.mkdir(parents=True)
    store.path(config).write_text('{"status": "ok", "key": "')  # damaged by hand
    assert not store.done(config)
    other = RunConfig(claim="C3", seed=9)
    store.write(_row(other))
    with pytest.warns(UserWarning, match=config.key()):
        rows = load_rows(tmp_path)
    assert list(rows["key"]) == [other.key()]


def test_stray_temp_files_are_ignored_and_cleaned(tmp_path):
    store = ResultsStore(tmp_path)
    config = RunConfig(claim="C3")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stray = tmp_path / "C3" / f".{config.key()}.{dead.pid}.tmp"
    live = tmp_path / "C3" / f".{config.key()}.{os.getpid()}.tmp"
    stray.parent.mkdir(parents=True)
    stray.write_text("{")
    live.write_text("{")
    assert not store.done(config) and len(load_rows(tmp_path)) == 0
    assert store.clean() == [stray]
    assert not stray.exists() and live.exists()  # a live writer's file is left alone


def test_load_rows_filters_claims_and_makes_lists_tuples(tmp_path):
    store = ResultsStore(tmp_path)
    for claim in ("C1", "C2"):
        store.write(_row(RunConfig(claim=claim, widths=(4, 4)), curve=[0.1, 0.2]))
    rows = load_rows(tmp_path, claims=["C2"])
    assert list(rows["claim"]) == ["C2"]
    assert rows["curve"][0] == (0.1, 0.2) and rows["widths"][0] == (4, 4)
    assert len(load_rows(tmp_path / "missing")) == 0


@pytest.fixture
def flaky_task():
    """Task ``test_flaky``: fails for seed 1, else returns its base row."""

    @tasks.register_task("test_flaky")
    def flaky(config):
        if config.seed == 1:
            raise ValueError("seed 1 always fails")
        return training.base_row(config)

    yield
    del tasks.TASKS["test_flaky"]


def test_sweep_records_failures_goes_on_and_resumes(tmp_path, flaky_task):
    configs = grid(RunConfig(claim="T", task="test_flaky"), seed=[0, 1, 2])
    store = ResultsStore(tmp_path)
    out = io.StringIO()
    summary = sweep.run_sweep(configs + configs[:1], store, progress_stream=out)
    assert (summary.planned, summary.skipped, summary.ok, summary.errors) == (3, 0, 2, 1)
    assert "seed 1 always fails" in store.read(configs[1])["error"]
    assert store.status(configs[2]) == "ok"  # the sweep went on after the failure
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and lines[-1].startswith("[3/3]") and "1 failed" in lines[-1]
    again = sweep.run_sweep(configs, store, progress_stream=io.StringIO())
    assert (again.skipped, again.ok, again.errors) == (3, 0, 0)
    retried = sweep.run_sweep(configs, store, retry_errors=True, progress_stream=io.StringIO())
    assert (retried.skipped, retried.errors) == (2, 1)


def test_progress_rewrites_one_line_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    progress = sweep.Progress(2, stream)
    for _ in range(2):
        progress.update({"claim": "C1", "key": "k", "status": "ok", "time/total_s": 1.0})
    text = stream.getvalue()
    assert text.count("\r") == 2 and text.count("\n") == 1 and "eta" in text


SCRIPT = textwrap.dedent(
    """
    import sys, time
    from studies.engine import sweep, tasks, training
    from studies.engine.config import RunConfig, grid
    from studies.engine.store import ResultsStore

    @tasks.register_task("slow")
    def slow(config):
        time.sleep(0.4)
        return training.base_row(config)

    configs = grid(RunConfig(claim="K", task="slow"), seed=list(range(6)))
    summary = sweep.run_sweep(configs, ResultsStore(sys.argv[1]))
    print("SKIPPED", summary.skipped, "RAN", summary.ok)
    """
)


def test_killed_sweep_resumes_without_redoing_or_corrupting(tmp_path):
    script = tmp_path / "sweep_script.py"
    script.write_text(SCRIPT)
    results = tmp_path / "results"
    before = kill_after_first_result(script, results, "K/*.json")
    assert 1 <= len(before) < 6  # killed mid-sweep

    resumed = subprocess.run(
        [sys.executable, str(script), str(results)], capture_output=True, text=True, check=True
    )
    assert f"SKIPPED {len(before)} RAN {6 - len(before)}" in resumed.stdout
    files = sorted(results.glob("K/*"))  # temp files included: none may remain
    assert len(files) == 6 and all(p.suffix == ".json" for p in files)
    for path in files:
        row = json.loads(path.read_text())
        assert row["status"] == "ok" and row["key"] == path.stem
    for name, content in before.items():
        assert (results / "K" / name).read_bytes() == content  # finished runs not redone
    assert len({json.loads(p.read_text())["seed"] for p in files}) == 6


def _tiny_configs(claim):
    """Two learning rates x seeds 0 and 1: two stacked blocks of `stacked.MEMBERS` seeds."""
    return grid(
        RunConfig(claim=claim, num_samples=200, widths=(8,)), learning_rate=[0.05, 0.1], seed=[0, 1]
    )


def _check_block_rows(tmp_path, summary):
    members = stacked.MEMBERS
    assert (summary.ok, summary.errors, summary.extra) == (4, 0, 2 * members - 4)
    rows = load_rows(tmp_path)
    assert set(rows["status"]) == {"ok"} and len(rows) == 2 * members
    assert set(rows["stack/members"]) == {members}
    # a worker computes the same numbers as this process
    config = _tiny_configs("C1")[1]
    here = worker.run_group(stacked.block(config))[config.seed]
    stored = rows.set_index("key").loc[config.key()]
    assert list(stored["test/loss"]) == here["test/loss"]


@pytest.mark.slow
def test_local_pool_of_workers(tmp_path):
    store = ResultsStore(tmp_path)
    summary = sweep.run_sweep(_tiny_configs("C1"), store, jobs=2, progress_stream=io.StringIO())
    _check_block_rows(tmp_path, summary)


@pytest.mark.slow
def test_ray_executor(tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summary = sweep.run_sweep(
            _tiny_configs("C1"), ResultsStore(tmp_path), executor="ray", jobs=2,
            progress_stream=io.StringIO(),
        )
    finally:
        ray.shutdown()
    _check_block_rows(tmp_path, summary)


def test_ray_missing_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(RuntimeError, match=r"kerasnorm\[ray\]"):
        sweep.run_sweep(_tiny_configs("C2"), ResultsStore(tmp_path), executor="ray")


def test_bad_executor_and_jobs(tmp_path):
    store = ResultsStore(tmp_path)
    with pytest.raises(ValueError, match="'dask'"):
        sweep.run_sweep([], store, executor="dask")
    with pytest.raises(ValueError, match="jobs=0"):
        sweep.run_sweep([], store, jobs=0)
