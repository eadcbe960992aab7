"""Fixtures for the study engine's tests: tiny configs that train in about a second."""

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
