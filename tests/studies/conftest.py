"""Fixtures for the study engine's tests: tiny configs that train in about a second."""

import os
import signal
import subprocess
import sys
import time

import pytest

from studies.training import RunConfig


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
