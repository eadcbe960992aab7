"""Checks that a kerasnorm drop-in and the Keras layer it mirrors read each other's files."""

from __future__ import annotations

import numpy as np

import keras


def _model(layer, input_shape):
    inputs = keras.Input(input_shape[1:])
    return keras.Model(inputs, layer(keras.layers.Dense(input_shape[-1])(inputs)))


def _randomize(layer, rng):
    for w in layer.weights:
        w.assign(rng.normal(size=w.shape))


def assert_weights_load_both_ways(ours, theirs, input_shape, tmp_path, rtol=1e-5, atol=1e-5):
    """A `.keras` file saved with Keras's layer loads into kerasnorm's (weights matched by
    name and order) and vice versa, with the same predictions each time."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=input_shape).astype("float32")
    ours, theirs = _model(ours, input_shape), _model(theirs, input_shape)
    for source, target in ((theirs, ours), (ours, theirs)):
        _randomize(source.layers[-1], rng)
        path = tmp_path / f"{source.layers[-1].__class__.__module__.split('.')[0]}.keras"
        source.save(path)
        target.load_weights(path)
        np.testing.assert_allclose(target.predict(x, verbose=0), source.predict(x, verbose=0), rtol=rtol, atol=atol)
