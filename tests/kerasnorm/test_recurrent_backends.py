"""`BatchNormLSTMCell` trained inside `MaskedRNN` gives TensorFlow's numbers on every
backend: the losses, the trained weights and moving statistics, and inference after.

The expected numbers come from TensorFlow in a subprocess (Keras fixes its backend at
import), on the same data, weights and training steps; under TensorFlow itself they are
computed in the test's process.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras import ops

import kerasnorm

BACKEND = keras.backend.backend()
BATCH, STEPS, FEATURES, UNITS = 6, 5, 3, 4
# Right-padded, left-padded and unpadded samples: at one step the valid samples sit at
# different step indices.
MASK = np.array(
    [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 1, 1, 1, 1], [0, 0, 0, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], bool
)
# Name -> (cell arguments, MaskedRNN arguments).
CASES = {
    # Five steps over three rows: the last row takes steps 2 to 4.
    "per-step": ({"max_steps": 3}, {"return_sequences": True}),
    "shared": ({"share_statistics": True}, {}),
    "per-step-unrolled": ({"max_steps": 3}, {"return_sequences": True, "unroll": True}),
    "backwards-zero-output": ({"max_steps": 4}, {"return_sequences": True, "go_backwards": True, "zero_output_for_mask": True}),
}
TRAINING_STEPS = 2


def _model(case):
    cell_kwargs, rnn_kwargs = CASES[case]
    x = keras.Input((STEPS, FEATURES), batch_size=BATCH)
    mask = keras.Input((STEPS,), batch_size=BATCH, dtype="bool")
    cell = kerasnorm.BatchNormLSTMCell(UNITS, momentum=0.6, **cell_kwargs)
    h = kerasnorm.MaskedRNN(cell, **rnn_kwargs)(x, mask=mask)
    model = keras.Model([x, mask], keras.layers.Dense(2)(h))
    # Compiled by XLA under JAX, the statistics carried through `jax.lax.scan`; eager
    # elsewhere (tracing TensorFlow's loop takes longer than these few steps).
    jax = BACKEND == "jax"
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse", jit_compile=jax, run_eagerly=not jax)
    rng = np.random.default_rng(7)
    model.set_weights(
        [
            rng.uniform(0.5, 1.5, w.shape) if "variance" in w.path else rng.normal(size=w.shape) * 0.5
            for w in model.weights
        ]
    )
    return model


def train(case):
    """{name: array}: the loss of each training step, every weight after them (moving
    statistics included) and the inference output after them."""
    rng = np.random.default_rng(8)
    x = rng.normal(size=(BATCH, STEPS, FEATURES)).astype("float32")
    x[~MASK] = 30.0  # padding far from the data: it must stay out of the statistics
    model = _model(case)
    target = rng.normal(size=tuple(model.output.shape)).astype("float32")
    result = {}
    for i in range(TRAINING_STEPS):
        result[f"loss{i}"] = np.asarray(model.train_on_batch([x, MASK], target))
    for i, w in enumerate(model.weights):
        result[f"{i}:{w.path.split('/')[-1]}"] = ops.convert_to_numpy(w)
    result["inference"] = ops.convert_to_numpy(model.predict_on_batch([x, MASK]))
    return result


def write_expected(path):
    """Writes the numbers of every case (`train`) to the `.npz` file `path`."""
    np.savez(path, **{f"{case}|{k}": v for case in CASES for k, v in train(case).items()})


@pytest.fixture(scope="module")
def tensorflow_numbers(tmp_path_factory):
    path = tmp_path_factory.mktemp("tensorflow") / "expected.npz"
    if BACKEND == "tensorflow":
        write_expected(path)
    else:
        root = pathlib.Path(__file__).resolve().parents[2]
        env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
        code = "import sys; from tests.kerasnorm.test_recurrent_backends import write_expected; write_expected(sys.argv[1])"
        subprocess.run([sys.executable, "-c", code, str(path)], cwd=root, env=env, check=True, timeout=600)
    with np.load(path) as stored:
        return {k: stored[k] for k in stored.files}


@pytest.mark.parametrize("case", list(CASES))
def test_batch_norm_cell_trains_to_tensorflows_numbers(case, tensorflow_numbers):
    result = train(case)
    expected = {k.split("|", 1)[1]: v for k, v in tensorflow_numbers.items() if k.startswith(f"{case}|")}
    assert sorted(result) == sorted(expected)
    moved = 0
    for name, value in expected.items():
        np.testing.assert_allclose(result[name], value, rtol=2e-5, atol=2e-6, err_msg=name)
        if "moving" in name:
            moved += not np.allclose(value, 0.0) and not np.allclose(value, 1.0)
    assert moved == 6  # every moving statistic trained
