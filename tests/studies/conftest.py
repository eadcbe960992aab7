"""Fixtures for the study engine's tests: tiny configs that train in about a second, and
the whole study at the smoke profile, run once per test session for every test that reads
it (each claim's end-to-end test and the report's)."""

import os
import signal
import subprocess
import sys
import time

import pytest

from studies import claims
from studies.__main__ import main
from studies.engine.config import RunConfig
from studies.engine.store import load_rows

# The claims' tasks, known to every test that runs a claim's config, as the command line
# makes them known to its sweeps.
claims.register_tasks()


@pytest.fixture(scope="session")
def smoke_results(tmp_path_factory):
    """The results folder of ``python -m studies run --claims all --profile smoke --jobs 2``
    (through the command line, as a user runs it), every run ok."""
    results = tmp_path_factory.mktemp("smoke") / "results"
    assert main(["run", "--claims", "all", "--profile", "smoke", "--jobs", "2", "--results", str(results)]) == 0
    rows = load_rows(results)
    assert set(rows["claim"]) == set(claims.CLAIM_IDS)
    assert (rows["status"] == "ok").all(), rows.loc[rows["status"] != "ok", "error"].tolist()
    return results


def smoke_rows(results, claim_id):
    """The stored rows of `claim_id`'s smoke grid (a stacked block also stores its
    members' other seeds: those are left out), one per planned run."""
    planned = {config.key() for config in claims.load(claim_id).grid("smoke")}
    rows = load_rows(results, claims=[claim_id])
    rows = rows[rows["key"].isin(planned)].reset_index(drop=True)
    assert len(rows) == len(planned)
    return rows


@pytest.fixture
def tiny():
    """`tiny(**fields)`: a 1-epoch RunConfig on 200 MNIST-1D samples (5 steps of 32)."""

    def make(**fields):
        defaults = dict(claim="T", num_samples=200, widths=(16, 16), epochs=1)
        defaults.update(fields)
        return RunConfig(**defaults)

    return make


def kill_after_first_result(script, results, pattern, timeout_s=300):
    """Runs ``python script results`` and kills it (SIGKILL) as soon as a file matching
    `pattern` appears under `results`; returns ``{file name: bytes}`` of what was stored."""
    process = subprocess.Popen([sys.executable, str(script), str(results)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while not list(results.glob(pattern)):
        assert process.poll() is None and time.monotonic() < deadline, "the sweep never wrote"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return {p.name: p.read_bytes() for p in results.glob(pattern)}
