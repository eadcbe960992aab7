"""Shared test setup: the Keras backend, quiet logs, set before Keras is imported.

The suite runs under TensorFlow by default; `make test` then reruns the layer tests
(`tests/kerasnorm`) under `KERAS_BACKEND=jax` and `KERAS_BACKEND=torch`. A test that
needs TensorFlow itself (`tf.distribute`, the fused kernels of `kerasnorm.kernels`,
`tf.function`) carries `@pytest.mark.tensorflow_only` (a whole module:
`pytestmark = pytest.mark.tensorflow_only`) and is skipped under the other backends;
every other test runs under all three, so a new layer test is picked up by every
backend without further ado.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return
    skip = pytest.mark.skip(reason=f"TensorFlow only; this run's backend is {backend}")
    for item in items:
        if item.get_closest_marker("tensorflow_only"):
            item.add_marker(skip)
