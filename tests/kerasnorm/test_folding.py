"""kerasnorm.fold_batch_norm: same predictions, the right layers folded, the original kept."""

from __future__ import annotations

import numpy as np
import pytest

import keras

import kerasnorm

RNG = np.random.default_rng(13)


def _randomize_batch_norms(model):
    for layer in model._flatten_layers():
        if isinstance(layer, (keras.layers.BatchNormalization, kerasnorm.BatchNormalization)):
            shape = layer.moving_mean.shape
            layer.moving_mean.assign(RNG.normal(size=shape))
            layer.moving_variance.assign(RNG.uniform(0.2, 3.0, size=shape))
            for w in (layer.gamma, layer.beta):
                if w is not None:
                    w.assign(RNG.normal(size=shape))


def _kinds(model):
    return {layer.name: type(layer).__name__ for layer in model.layers}


def _check(model, x):
    """Folds, checks the predictions and that the original is untouched; returns the
    folded model."""
    _randomize_batch_norms(model)
    before = model.predict(x, verbose=0)
    weights = [w.copy() for w in model.get_weights()]
    folded = kerasnorm.fold_batch_norm(model)
    np.testing.assert_allclose(folded.predict(x, verbose=0), before, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(model.predict(x, verbose=0), before)
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))
    return folded


def test_sequential_conv_and_dense_chain(tmp_path):
    model = keras.Sequential(
        [
            keras.Input((7, 7, 3)),
            keras.layers.Conv2D(4, 3, use_bias=False, name="conv_a"),
            keras.layers.BatchNormalization(name="bn_a"),
            keras.layers.ReLU(),
            keras.layers.Conv2D(5, 3, name="conv_b"),
            kerasnorm.BatchNormalization(name="bn_b", center=False),
            keras.layers.Flatten(),
            keras.layers.Dense(6, activation="relu", name="dense_relu"),
            kerasnorm.BatchNormalization(name="bn_after_relu"),
            keras.layers.Dense(2, name="dense"),
            keras.layers.BatchNormalization(name="bn_dense", scale=False),
        ]
    )
    x = RNG.normal(size=(3, 7, 7, 3)).astype("float32")
    folded = _check(model, x)
    kinds = _kinds(folded)
    assert kinds["bn_a"] == kinds["bn_b"] == kinds["bn_dense"] == "Identity"
    assert kinds["bn_after_relu"] == "BatchNormalization"  # after an activation: stays
    assert folded.get_layer("conv_a").use_bias  # gained the folded bias
    assert not model.get_layer("conv_a").use_bias
    folded.save(tmp_path / "folded.keras")
    loaded = keras.saving.load_model(tmp_path / "folded.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), folded.predict(x, verbose=0), rtol=1e-6, atol=1e-6)


def test_functional_folds_only_what_is_safe_and_nested_models():
    inputs = keras.Input((6, 4))
    a = keras.layers.Conv1D(5, 2, name="conv1d")(inputs)
    a = kerasnorm.BatchNormalization(name="bn_conv1d")(a)
    b = keras.layers.Dense(5, name="dense_two_consumers")(inputs)
    b_bn = kerasnorm.BatchNormalization(name="bn_two_consumers")(b)
    c = keras.layers.Dense(5, name="dense_axis1")(inputs)
    c = keras.layers.BatchNormalization(axis=1, name="bn_axis1")(c)
    shared = keras.layers.Dense(5, name="shared_dense")
    d = kerasnorm.BatchNormalization(name="bn_shared")(shared(inputs))
    d = keras.layers.Add()([d, shared(inputs)])
    e = keras.layers.Dense(5, name="dense_training")(inputs)
    e = kerasnorm.BatchNormalization(name="bn_training")(e, training=False)
    inner = keras.Sequential(
        [keras.Input((6, 5)), keras.layers.Dense(5, name="inner_dense"), keras.layers.BatchNormalization(name="inner_bn")],
        name="inner",
    )
    merged = keras.layers.Concatenate()([keras.layers.ZeroPadding1D((0, 1))(a), b_bn, b, c, d, e])
    outputs = inner(keras.layers.Dense(5)(merged))
    model = keras.Model(inputs, outputs)

    folded = _check(model, RNG.normal(size=(4, 6, 4)).astype("float32"))
    kinds = _kinds(folded)
    assert kinds["bn_conv1d"] == kinds["bn_training"] == "Identity"
    assert kinds["bn_two_consumers"] == kinds["bn_axis1"] == kinds["bn_shared"] == "BatchNormalization"
    assert type(folded.get_layer("inner").get_layer("inner_bn")).__name__ == "Identity"


def test_functional_model_nested_in_a_sequential_one():
    inputs = keras.Input((4,))
    h = keras.layers.BatchNormalization(name="inner_bn")(keras.layers.Dense(3, name="inner_dense")(inputs))
    inner = keras.Model(inputs, keras.layers.ReLU()(h), name="inner")
    model = keras.Sequential([keras.Input((4,)), inner, keras.layers.Dense(2), kerasnorm.BatchNormalization(name="outer_bn")])
    folded = _check(model, RNG.normal(size=(5, 4)).astype("float32"))
    assert _kinds(folded)["outer_bn"] == "Identity"
    assert type(folded.get_layer("inner").get_layer("inner_bn")).__name__ == "Identity"


def test_folded_weights_follow_the_formula():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), kerasnorm.BatchNormalization(epsilon=0.1)])
    _randomize_batch_norms(model)
    kernel, bias = (np.asarray(w, np.float64) for w in model.layers[0].weights)
    gamma, beta, mean, var = (np.asarray(w, np.float64) for w in model.layers[1].weights)
    folded_kernel, folded_bias = kerasnorm.fold_batch_norm(model).layers[0].get_weights()
    s = gamma / np.sqrt(var + 0.1)
    np.testing.assert_allclose(folded_kernel, kernel * s, rtol=1e-6)
    np.testing.assert_allclose(folded_bias, (bias - mean) * s + beta, rtol=1e-6, atol=1e-7)


def test_models_it_cannot_fold_are_refused():
    class Subclassed(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="Subclassed"):
        kerasnorm.fold_batch_norm(Subclassed())
    with pytest.raises(ValueError, match="built"):
        kerasnorm.fold_batch_norm(keras.Sequential([keras.layers.Dense(2), keras.layers.BatchNormalization()]))
