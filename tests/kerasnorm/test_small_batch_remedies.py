"""Batch norm's small-batch remedies: inference example weighing (Summers & Dinneen 2020)
and frozen statistics late in training (Wu & Johnson 2021), against float64 NumPy
references of their equations."""

from __future__ import annotations

import numpy as np
import pytest

import keras

import kerasnorm
from tests.kerasnorm.autodiff import layer_gradients

RNG = np.random.default_rng(2020)
EPS = 1e-3
to_numpy = keras.ops.convert_to_numpy


def weighed_reference(x, moving_mean, moving_var, w, gamma, beta, mask=None, epsilon=EPS):
    """Features last. Each example's mean and biased variance over its own positions
    (axes 1..ndim-2; none for a dense layer: mean x, variance 0), valid positions only,
    mixed with the moving statistics: mu = w mu_e + (1 - w) mu_p and var = w var_e +
    (1 - w) var_p + w (1 - w) (mu_e - mu_p)^2, the mixture's moments."""
    x = np.asarray(x, np.float64)
    out = np.empty_like(x)
    for n in range(x.shape[0]):
        sample = x[n].reshape(-1, x.shape[-1])
        valid = sample if mask is None else sample[np.asarray(mask[n], bool).reshape(-1)]
        mu_e, var_e = valid.mean(axis=0), valid.var(axis=0)
        mu = w * mu_e + (1 - w) * moving_mean
        var = w * var_e + (1 - w) * moving_var + w * (1 - w) * (mu_e - moving_mean) ** 2
        out[n] = gamma * (x[n] - mu) / np.sqrt(var + epsilon) + beta
    return out


def _trained_like(layer, shape):
    """Builds `layer` for `shape` with random statistics and affine weights, as a
    trained layer would have them; returns (moving_mean, moving_variance, gamma, beta)."""
    if not layer.built:
        layer.build(shape)
    c = shape[-1]
    values = (RNG.normal(size=c), RNG.uniform(0.5, 2.0, size=c), RNG.normal(size=c), RNG.normal(size=c))
    for variable, value in zip((layer.moving_mean, layer.moving_variance, layer.gamma, layer.beta), values):
        variable.assign(value.astype("float32"))
    return values


# -- inference example weighing ----------------------------------------------------------


@pytest.mark.parametrize(
    "shape,weight",
    [((6, 4), 0.25), ((3, 5, 4), 0.5), ((2, 3, 4, 3), 1 / 8), ((3, 5, 4), 1.0)],
)
def test_example_weighing_matches_reference(shape, weight):
    x = (RNG.normal(size=shape) * 2 + 1).astype("float32")
    layer = kerasnorm.BatchNormalization(inference_weight=weight, epsilon=EPS)
    mean, var, gamma, beta = _trained_like(layer, shape)
    expected = weighed_reference(x, mean, var, weight, gamma, beta)
    np.testing.assert_allclose(to_numpy(layer(x)), expected, rtol=1e-5, atol=1e-5)
    # Per example: an example's output does not depend on its batch-mates.
    np.testing.assert_allclose(to_numpy(layer(x[1:2])), expected[1:2], rtol=1e-5, atol=1e-5)


def test_dense_example_moments_are_the_example_itself():
    # A dense layer's example has one value per unit: mu_e = x, var_e = 0, so the output
    # is (1 - w) (x - mu_p) / sqrt((1 - w) var_p + w (1 - w) (x - mu_p)^2 + eps).
    x = RNG.normal(size=(5, 3)).astype("float32")
    w = 0.25
    layer = kerasnorm.BatchNormalization(inference_weight=w, epsilon=EPS, center=False, scale=False)
    layer.build(x.shape)
    layer.moving_mean.assign(np.array([0.5, -1.0, 0.0], "float32"))
    layer.moving_variance.assign(np.array([1.0, 4.0, 0.25], "float32"))
    d = x.astype(np.float64) - np.array([0.5, -1.0, 0.0])
    expected = (1 - w) * d / np.sqrt((1 - w) * np.array([1.0, 4.0, 0.25]) + w * (1 - w) * d**2 + EPS)
    np.testing.assert_allclose(to_numpy(layer(x)), expected, rtol=1e-5, atol=1e-6)


def test_weight_one_on_a_conv_map_is_batch_of_one_normalization():
    x = RNG.normal(size=(3, 6, 4)).astype("float32")
    weighed = kerasnorm.BatchNormalization(inference_weight=1.0)
    _trained_like(weighed, x.shape)
    out = to_numpy(weighed(x))
    for n in range(3):
        alone = kerasnorm.BatchNormalization()
        alone.build(x.shape)
        alone.set_weights(weighed.get_weights())
        np.testing.assert_allclose(out[n : n + 1], to_numpy(alone(x[n : n + 1], training=True)), rtol=1e-5, atol=1e-5)


def test_small_weight_tends_to_plain_inference_and_none_is_plain():
    x = RNG.normal(size=(4, 5, 3)).astype("float32")
    layer = kerasnorm.BatchNormalization()
    _trained_like(layer, x.shape)
    plain = to_numpy(layer(x))
    layer.inference_weight = 1e-6
    np.testing.assert_allclose(to_numpy(layer(x)), plain, rtol=1e-4, atol=1e-4)
    assert not np.array_equal(to_numpy(layer(x)), plain)
    layer.inference_weight = None
    np.testing.assert_array_equal(to_numpy(layer(x)), plain)


def test_training_is_unchanged_by_the_weight():
    x = RNG.normal(size=(4, 5, 3)).astype("float32")
    plain, weighed = kerasnorm.BatchNormalization(), kerasnorm.BatchNormalization(inference_weight=0.5)
    _trained_like(plain, x.shape)
    weighed.build(x.shape)
    weighed.set_weights(plain.get_weights())
    np.testing.assert_array_equal(to_numpy(weighed(x, training=True)), to_numpy(plain(x, training=True)))
    np.testing.assert_array_equal(to_numpy(weighed.moving_mean), to_numpy(plain.moving_mean))


def test_auto_is_one_over_the_ghost_batch():
    x = RNG.normal(size=(4, 5, 3)).astype("float32")
    auto = kerasnorm.BatchNormalization(virtual_batch_size=4, inference_weight="auto")
    explicit = kerasnorm.BatchNormalization(virtual_batch_size=4, inference_weight=0.25)
    _trained_like(auto, x.shape)
    explicit.build(x.shape)
    explicit.set_weights(auto.get_weights())
    np.testing.assert_array_equal(to_numpy(auto(x)), to_numpy(explicit(x)))
    assert auto.get_config()["inference_weight"] == "auto"


def test_masked_positions_stay_out_of_the_example_moments():
    x = RNG.normal(size=(2, 6, 3)).astype("float32")
    mask = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
    padded = x.copy()
    padded[0, 3:] = 50.0
    layer = kerasnorm.BatchNormalization(inference_weight=0.5, epsilon=EPS)
    mean, var, gamma, beta = _trained_like(layer, x.shape)
    out = to_numpy(layer(padded, mask=mask))
    expected = weighed_reference(padded, mean, var, 0.5, gamma, beta, mask=mask)
    np.testing.assert_allclose(out[mask], expected[mask], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[0, :3], to_numpy(layer(x[:1, :3]))[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"inference_weight": 0.0}, r"\(0.0, 1.0\]. Received: inference_weight=0.0"),
        ({"inference_weight": 1.5}, "inference_weight=1.5"),
        ({"inference_weight": -0.1}, r"inference_weight=-0.1"),
        ({"inference_weight": True}, "inference_weight=True"),
        ({"inference_weight": "half"}, "inference_weight='half'"),
        ({"inference_weight": "auto"}, "needs virtual_batch_size"),
        ({"freeze_statistics": 1}, "freeze_statistics=1"),
        ({"freeze_statistics": None}, "freeze_statistics=None"),
    ],
)
def test_validation_names_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kerasnorm.BatchNormalization(**kwargs)
    # The same checks when a trained layer is switched later.
    layer = kerasnorm.BatchNormalization()
    name, value = next(iter(kwargs.items()))
    with pytest.raises(ValueError, match=match):
        setattr(layer, name, value)


def _conv_model(**bn_kwargs):
    inputs = keras.Input((6, 2))
    h = keras.layers.Conv1D(4, 3, padding="same")(inputs)
    h = kerasnorm.BatchNormalization(name="bn1", **bn_kwargs)(h)
    h = keras.layers.Conv1D(3, 3, padding="same")(keras.layers.ReLU()(h))
    h = kerasnorm.BatchNormalization(name="bn2", **bn_kwargs)(h)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling1D()(h))


def test_config_and_keras_file_keep_the_remedies(tmp_path):
    model = _conv_model(inference_weight=0.25, freeze_statistics=True)
    for layer in model.layers:
        if isinstance(layer, kerasnorm.BatchNormalization):
            _trained_like(layer, (None, 6, layer.moving_mean.shape[0]))
    config = model.get_layer("bn1").get_config()
    assert config["inference_weight"] == 0.25 and config["freeze_statistics"] is True
    assert kerasnorm.BatchNormalization.from_config(config).get_config() == config
    x = RNG.normal(size=(5, 6, 2)).astype("float32")
    path = tmp_path / "remedies.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.get_layer("bn2").inference_weight == 0.25 and loaded.get_layer("bn2").freeze_statistics
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6, atol=1e-6)


def test_set_inference_weight_on_a_trained_model_retraces_predict():
    model = _conv_model()
    x = RNG.normal(size=(8, 6, 2)).astype("float32")
    model.compile(optimizer="sgd", loss="mse")
    model.fit(x, RNG.normal(size=(8, 3)), batch_size=4, epochs=1, verbose=0)
    plain = model.predict(x, verbose=0)
    layers = kerasnorm.set_inference_weight(model, 0.25)
    assert [l.name for l in layers] == ["bn1", "bn2"]
    weighed = model.predict(x, verbose=0)
    assert np.abs(weighed - plain).max() > 1e-3
    np.testing.assert_allclose(weighed, to_numpy(model(x, training=False)), rtol=1e-5, atol=1e-6)
    kerasnorm.set_inference_weight(model, None, layers=["bn2"])
    assert model.get_layer("bn1").inference_weight == 0.25 and model.get_layer("bn2").inference_weight is None


def test_set_inference_weight_refuses_keras_layers():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.BatchNormalization(name="keras_bn")(inputs))
    with pytest.raises(ValueError, match=r"keras.layers.BatchNormalization: \['keras_bn'\]"):
        kerasnorm.set_inference_weight(model, 0.5)


def test_recalibrate_gives_the_same_statistics_with_or_without_weighing():
    """Population statistics are those of the plain inference network: upstream weighing
    does not leak into them, and the weights are back afterwards."""
    x = RNG.normal(size=(16, 6, 2)).astype("float32")
    plain, weighed = _conv_model(), _conv_model(inference_weight=0.5)
    weighed.set_weights(plain.get_weights())
    kerasnorm.recalibrate(plain, x, batch_size=8)
    kerasnorm.recalibrate(weighed, x, batch_size=8)
    for name in ("bn1", "bn2"):
        for stat in ("moving_mean", "moving_variance"):
            np.testing.assert_allclose(
                to_numpy(getattr(weighed.get_layer(name), stat)), to_numpy(getattr(plain.get_layer(name), stat)), rtol=1e-6
            )
        assert weighed.get_layer(name).inference_weight == 0.5
    # And the weighing then applies on top of the recalibrated statistics.
    kerasnorm.set_inference_weight(plain, 0.5)
    np.testing.assert_allclose(to_numpy(weighed(x)), to_numpy(plain(x)), rtol=1e-6, atol=1e-6)


def test_folding_leaves_weighed_layers():
    inputs = keras.Input((5,))
    h = kerasnorm.BatchNormalization(name="weighed", inference_weight=0.5)(keras.layers.Dense(4)(inputs))
    out = kerasnorm.BatchNormalization(name="plain")(keras.layers.Dense(3)(keras.layers.ReLU()(h)))
    model = keras.Model(inputs, out)
    for name in ("weighed", "plain"):
        _trained_like(model.get_layer(name), (None, model.get_layer(name).moving_mean.shape[0]))
    folded = kerasnorm.fold_batch_norm(model)
    assert isinstance(folded.get_layer("weighed"), kerasnorm.BatchNormalization)
    assert isinstance(folded.get_layer("plain"), keras.layers.Identity)
    x = RNG.normal(size=(6, 5)).astype("float32")
    np.testing.assert_allclose(to_numpy(folded(x)), to_numpy(model(x)), rtol=1e-5, atol=1e-5)


# -- frozen statistics -------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{}, {"virtual_batch_size": 2}, {"renorm": True}])
def test_frozen_training_normalizes_with_moving_statistics(kwargs):
    x = (RNG.normal(size=(4, 5, 3)) * 3).astype("float32")
    layer = kerasnorm.BatchNormalization(freeze_statistics=True, epsilon=EPS, **kwargs)
    mean, var, gamma, beta = _trained_like(layer, x.shape)
    state = [to_numpy(w).copy() for w in layer.non_trainable_weights]
    out = to_numpy(layer(x, training=True))
    expected = gamma * (x - mean) / np.sqrt(var + EPS) + beta
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    for old, new in zip(state, layer.non_trainable_weights):
        np.testing.assert_array_equal(to_numpy(new), old)


@pytest.mark.parametrize("shape", [(4, 5, 3), (64, 4096)])
def test_frozen_gradients_are_those_of_the_fixed_affine_map(shape):
    """With frozen statistics y = gamma (x - mu_p) / sqrt(var_p + eps) + beta, so for the
    loss sum(y g): dx = g gamma / sqrt(var_p + eps), dgamma = sum(g x_hat), dbeta = sum(g).
    (64, 4096) reaches the fused kernel of the TensorFlow backend."""
    x = RNG.normal(size=shape).astype("float32")
    g = RNG.normal(size=shape).astype("float32")
    layer = kerasnorm.BatchNormalization(freeze_statistics=True, epsilon=EPS)
    mean, var, gamma, beta = _trained_like(layer, shape)
    dx, dgamma, dbeta = layer_gradients(layer, x, g, training=True)
    x_hat = (x - mean) / np.sqrt(var + EPS)
    axes = tuple(range(len(shape) - 1))
    np.testing.assert_allclose(dx, g * gamma / np.sqrt(var + EPS), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dgamma, (g * x_hat).sum(axis=axes), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(dbeta, g.sum(axis=axes), rtol=1e-4, atol=1e-3)


class _Trace(keras.callbacks.Callback):
    """The moving mean of layer `bn1` and its gamma after every step."""

    def __init__(self):
        super().__init__()
        self.means, self.gammas = [], []

    def on_train_batch_end(self, batch, logs=None):
        if keras.backend.backend() == "jax":
            self.model.jax_state_sync()
        layer = self.model.get_layer("bn1")
        self.means.append(to_numpy(layer.moving_mean).copy())
        self.gammas.append(to_numpy(layer.gamma).copy())


def _fit(callback, epochs=2, x=None):
    keras.utils.set_random_seed(3)
    model = _conv_model(momentum=0.5)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    x = RNG.normal(size=(16, 6, 2)).astype("float32") if x is None else x
    trace = _Trace()
    model.fit(x, RNG.normal(size=(16, 3)), batch_size=4, epochs=epochs, verbose=0, callbacks=[callback, trace])
    return model, trace


@pytest.mark.parametrize("freeze", [{"at_step": 5}, {"at_fraction": 0.5}])
def test_callback_freezes_mid_fit(freeze):
    """Retraced train function: the moving statistics move until the chosen step and not
    after it, while gamma keeps training (2 epochs of 4 steps; half of 8 is step 4)."""
    callback = kerasnorm.FreezeBatchStatistics(**freeze)
    model, trace = _fit(callback)
    step = freeze.get("at_step", 4)
    assert callback.frozen_at_step == step
    means, gammas = np.array(trace.means), np.array(trace.gammas)
    assert all(np.abs(means[i] - means[i - 1]).max() > 0 for i in range(1, step))
    for i in range(step, len(means)):
        np.testing.assert_array_equal(means[i], means[step - 1])
        assert np.abs(gammas[i] - gammas[i - 1]).max() > 0
    assert model.get_layer("bn1").freeze_statistics and model.get_layer("bn2").freeze_statistics


def test_callback_recalibrates_before_freezing():
    """With a learning rate of 0 nothing trains, so after freezing at step 0 over
    recalibrate_data the first layer's statistics are the exact population statistics of
    its inputs, the first convolution's outputs over the data (float64 reference)."""
    x = RNG.normal(size=(16, 6, 2)).astype("float32")
    keras.utils.set_random_seed(3)
    model = _conv_model(momentum=0.5)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    callback = kerasnorm.FreezeBatchStatistics(at_step=0, recalibrate_data=x, recalibrate_batch_size=5)
    model.fit(x, RNG.normal(size=(16, 3)), batch_size=4, epochs=1, verbose=0, callbacks=[callback])
    conv_out = to_numpy(model.layers[1](x)).astype(np.float64).reshape(-1, 4)
    layer = model.get_layer("bn1")
    np.testing.assert_allclose(to_numpy(layer.moving_mean), conv_out.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_numpy(layer.moving_variance), conv_out.var(axis=0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({}, "exactly one of `at_step` and `at_fraction`"),
        ({"at_step": 1, "at_fraction": 0.5}, "exactly one"),
        ({"at_step": -1}, "at_step=-1"),
        ({"at_step": 2.0}, "at_step=2.0"),
        ({"at_fraction": 1.5}, "at_fraction=1.5"),
        ({"at_step": 1, "recalibrate_batch_size": 0}, "recalibrate_batch_size=0"),
    ],
)
def test_callback_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kerasnorm.FreezeBatchStatistics(**kwargs)


def test_callback_refuses_keras_layers():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.BatchNormalization(name="keras_bn")(inputs))
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="keras_bn"):
        model.fit(
            np.zeros((4, 4)), np.zeros((4, 4)), verbose=0, callbacks=[kerasnorm.FreezeBatchStatistics(at_step=1)]
        )
