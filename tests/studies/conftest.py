"""Fixtures for the study engine's tests: tiny configs that train in about a second."""

import pytest

import kerasnorm
from studies.training import RunConfig


def has_layer(name):
    return hasattr(kerasnorm, name)


def needs_layer(*names):
    """Skips a test until kerasnorm provides all `names` (it switches on by itself)."""
    missing = [n for n in names if not has_layer(n)]
    return pytest.mark.skipif(bool(missing), reason=f"kerasnorm lacks {', '.join(missing)}")


@pytest.fixture
def tiny():
    """`tiny(**fields)`: a 1-epoch RunConfig on 200 MNIST-1D samples (5 steps of 32)."""

    def make(**fields):
        defaults = dict(claim="T", num_samples=200, widths=(16, 16), epochs=1)
        defaults.update(fields)
        return RunConfig(**defaults)

    return make
