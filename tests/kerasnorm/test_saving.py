"""Saved models load in a fresh process that imports kerasnorm, with no custom_objects."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np

import keras

import kerasnorm


def test_keras_file_loads_in_a_fresh_process(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 4))
    h = keras.layers.Dense(8)(inputs)
    h = kerasnorm.BatchNormalization(momentum=0.5, virtual_batch_size=2)(h)
    h = kerasnorm.LayerNormalization(axis=[1, 2])(h)
    outputs = keras.layers.Dense(2)(keras.layers.Flatten()(h))
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(0).normal(size=(8, 6, 4)).astype("float32")
    model.compile("adam", "mse")
    model.fit(x, np.zeros((8, 2)), batch_size=8, verbose=0)
    model.save(tmp_path / "model.keras")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", model.predict(x, verbose=0))

    script = textwrap.dedent(
        f"""
        import numpy as np, keras
        import kerasnorm  # registers the layers; no custom_objects below
        model = keras.saving.load_model({str(tmp_path / "model.keras")!r})
        kinds = sorted(type(l).__module__ for l in model.layers if "kerasnorm" in type(l).__module__)
        assert kinds == ["kerasnorm.batch_normalization", "kerasnorm.layer_normalization"], kinds
        assert model.layers[2].virtual_batch_size == 2
        y = model.predict(np.load({str(tmp_path / "x.npy")!r}), verbose=0)
        np.testing.assert_allclose(y, np.load({str(tmp_path / "y.npy")!r}), rtol=1e-6, atol=1e-6)
        print("LOADED")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LOADED" in result.stdout
