"""kerasnorm.FilterResponseNormalization and kerasnorm.TLU against a float64 NumPy
reference of eq. 1-2 of Singh & Krishnan (2020)."""

from __future__ import annotations

import numpy as np
import pytest

import keras

import kerasnorm
from tests.kerasnorm.autodiff import layer_gradients
from tests.kerasnorm.layer_test import run_layer_test

RNG = np.random.default_rng(14)
to_numpy = keras.ops.convert_to_numpy


def frn_reference(x, axis=-1, epsilon=1e-6, gamma=None, beta=None, tau=None, mask=None):
    """Eq. 1 (nu2 = sum_i x_i^2 / N over the N positions of a sample's channel; x_hat =
    x / sqrt(nu2 + eps); y = gamma * x_hat + beta) then eq. 2 (z = max(y, tau)), one
    sample and one channel at a time, in float64."""
    x = np.moveaxis(np.asarray(x, np.float64), axis, -1)
    out = np.empty_like(x)
    valid = None if mask is None else np.asarray(mask, bool)
    for n in range(x.shape[0]):
        for c in range(x.shape[-1]):
            responses = x[n, ..., c]
            kept = responses if valid is None else responses[valid[n]]
            nu2 = np.sum(kept**2) / max(kept.size, 1)
            y = responses / np.sqrt(nu2 + epsilon)
            y = y * (1.0 if gamma is None else gamma[c]) + (0.0 if beta is None else beta[c])
            out[n, ..., c] = y if tau is None else np.maximum(y, tau[c])
    return np.moveaxis(out, -1, axis)


def _randomized(layer, shape):
    """Builds `layer` for `shape` with random gamma, beta, tau; returns them by name."""
    layer.build(shape)
    values = {}
    for w in layer.weights:
        values[w.name] = RNG.normal(size=w.shape).astype("float32")
        w.assign(values[w.name])
    return values


def test_layer_contract(tmp_path):
    run_layer_test(
        kerasnorm.FilterResponseNormalization,
        {"epsilon": 1e-3},
        input_shape=(4, 5, 3),
        expected_num_trainable_weights=3,
        expected_num_non_trainable_weights=0,
        tmp_path=tmp_path,
    )


def test_tlu_layer_contract(tmp_path):
    # The inputs of the fit step are N(0, 1): some fall below tau = 0, so tau trains.
    run_layer_test(
        kerasnorm.TLU,
        {},
        input_shape=(4, 5, 3),
        expected_num_trainable_weights=1,
        expected_num_non_trainable_weights=0,
        tmp_path=tmp_path,
    )


def test_weights_are_named_and_ordered_as_keras_would():
    layer = kerasnorm.FilterResponseNormalization()
    layer.build((2, 4, 3))
    assert [w.name for w in layer.weights] == ["gamma", "beta", "tau"]
    assert all(tuple(w.shape) == (3,) for w in layer.weights)
    # Initial values: the identity normalization, then a ReLU.
    np.testing.assert_array_equal(layer.gamma, np.ones(3))
    np.testing.assert_array_equal(layer.beta, np.zeros(3))
    np.testing.assert_array_equal(layer.tau, np.zeros(3))
    bare = kerasnorm.FilterResponseNormalization(center=False, scale=False, use_tlu=False)
    bare.build((2, 4, 3))
    assert bare.weights == []


@pytest.mark.parametrize(
    "shape,axis",
    [
        ((3, 7, 4), -1),  # 1-D conv map / sequence
        ((2, 4, 5, 3), -1),  # 2-D conv map
        ((2, 3, 2, 3, 2), -1),  # 3-D conv map
        ((2, 3, 4, 5), 1),  # channels first
    ],
)
def test_matches_reference(shape, axis):
    x = (RNG.normal(size=shape) * 2 + 0.5).astype("float32")
    layer = kerasnorm.FilterResponseNormalization(axis=axis, epsilon=1e-4)
    w = _randomized(layer, shape)
    expected = frn_reference(x, axis, 1e-4, w["gamma"], w["beta"], w["tau"])
    np.testing.assert_allclose(to_numpy(layer(x)), expected, rtol=1e-5, atol=1e-5)
    # No batch statistics: the same in training, and a sample alone gives its own rows.
    np.testing.assert_allclose(to_numpy(layer(x, training=True)), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(to_numpy(layer(x[1:2])), expected[1:2], rtol=1e-5, atol=1e-5)


def test_without_tlu_and_affine():
    x = RNG.normal(size=(2, 6, 3)).astype("float32")
    layer = kerasnorm.FilterResponseNormalization(center=False, scale=False, use_tlu=False)
    out = to_numpy(layer(x))
    np.testing.assert_allclose(out, frn_reference(x), rtol=1e-5, atol=1e-6)
    # Unit mean square per sample and channel over positions (epsilon aside).
    np.testing.assert_allclose((out**2).mean(axis=1), np.ones((2, 3)), rtol=1e-4)
    assert (out < 0).any()


def test_tlu_thresholds_per_channel():
    x = RNG.normal(size=(3, 4, 2)).astype("float32")
    layer = kerasnorm.TLU()
    layer.build(x.shape)
    tau = np.array([-0.5, 0.25], "float32")
    layer.tau.assign(tau)
    np.testing.assert_array_equal(to_numpy(layer(x)), np.maximum(x, tau))
    # On a dense layer's output as well: TLU needs no positions.
    dense = kerasnorm.TLU()
    dense.build(x[:, 0].shape)
    dense.tau.assign(tau)
    np.testing.assert_array_equal(to_numpy(dense(x[:, 0])), np.maximum(x[:, 0], tau))


def test_gradients_match_finite_differences_of_reference():
    """The backward pass is the reference's: the loss sum(z * g) differentiated in gamma,
    beta, tau and x, against central differences of the float64 reference."""
    shape = (2, 5, 3)
    x = RNG.normal(size=shape)
    g = RNG.normal(size=shape)
    layer = kerasnorm.FilterResponseNormalization(epsilon=1e-3, dtype="float64")
    w = {k: v.astype("float64") for k, v in _randomized(layer, shape).items()}

    def loss(x_, gamma, beta, tau):
        return np.sum(frn_reference(x_, -1, 1e-3, gamma, beta, tau) * g)

    grads = layer_gradients(layer, x, g)
    h = 1e-6
    args = [x, w["gamma"], w["beta"], w["tau"]]
    for i, analytic in enumerate(grads):
        numeric = np.zeros_like(args[i])
        for idx in np.ndindex(args[i].shape):
            plus = [a.copy() for a in args]
            minus = [a.copy() for a in args]
            plus[i][idx] += h
            minus[i][idx] -= h
            numeric[idx] = (loss(*plus) - loss(*minus)) / (2 * h)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-6)


def test_mask_keeps_padding_out_of_the_mean_square():
    x = RNG.normal(size=(2, 6, 3)).astype("float32")
    mask = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
    padded = x.copy()
    padded[0, 4:] = 100.0  # padding values must not matter
    layer = kerasnorm.FilterResponseNormalization(epsilon=1e-4)
    w = _randomized(layer, x.shape)
    out = to_numpy(layer(padded, mask=mask))
    expected = frn_reference(padded, -1, 1e-4, w["gamma"], w["beta"], w["tau"], mask=mask)
    np.testing.assert_allclose(out[mask], expected[mask], rtol=1e-5, atol=1e-5)
    # The valid part equals the unpadded sequence alone.
    alone = to_numpy(layer(x[:1, :4]))
    np.testing.assert_allclose(out[0, :4], alone[0], rtol=1e-5, atol=1e-5)


def test_mask_flows_through_a_model():
    tokens = np.array([[3, 1, 4, 0, 0], [2, 7, 1, 8, 2]])
    inputs = keras.Input((5,), dtype="int32")
    h = keras.layers.Embedding(10, 4, mask_zero=True)(inputs)
    frn = kerasnorm.FilterResponseNormalization()
    out = frn(h)
    model = keras.Model(inputs, out)
    y = to_numpy(model(tokens))
    embedded = to_numpy(model.layers[1](tokens))
    expected = frn_reference(embedded, tau=np.zeros(4), mask=tokens != 0)
    np.testing.assert_allclose(y[tokens != 0], expected[tokens != 0], rtol=1e-5, atol=1e-5)
    assert out._keras_mask is not None


def test_mask_over_the_channel_axis_is_refused():
    x = RNG.normal(size=(2, 3, 4)).astype("float32")
    with pytest.raises(ValueError, match="must not cover the channel axis"):
        kerasnorm.FilterResponseNormalization()(x, mask=np.ones((2, 3, 4), bool))


def test_inputs_without_positions_are_refused():
    with pytest.raises(ValueError, match=r"rank 2 \(batch, channels\) have none.*input_shape=\(4, 8\)"):
        kerasnorm.FilterResponseNormalization()(np.zeros((4, 8), "float32"))
    with pytest.raises(ValueError, match="cannot be the batch axis"):
        kerasnorm.FilterResponseNormalization(axis=0)(np.zeros((4, 3, 8), "float32"))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"epsilon": 0.0}, "epsilon=0.0"),
        ({"epsilon": -1e-6}, "epsilon=-1e-06"),
        ({"axis": [1, 2]}, r"axis=\[1, 2\]"),
        ({"axis": True}, "axis=True"),
        ({"use_tlu": 1}, "use_tlu=1"),
        ({"center": "yes"}, "center='yes'"),
    ],
)
def test_validation_names_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kerasnorm.FilterResponseNormalization(**kwargs)


def test_integer_inputs_are_refused():
    with pytest.raises(ValueError, match="floating-point"):
        kerasnorm.FilterResponseNormalization()(np.zeros((2, 3, 4), "int32"))


def test_config_round_trip_and_saving(tmp_path):
    layer = kerasnorm.FilterResponseNormalization(
        axis=1, epsilon=1e-4, use_tlu=True, tau_initializer="ones", tau_regularizer="l2"
    )
    config = layer.get_config()
    assert config["use_tlu"] is True and config["axis"] == 1 and config["epsilon"] == 1e-4
    assert kerasnorm.FilterResponseNormalization.from_config(config).get_config() == config
    x = RNG.normal(size=(3, 2, 6)).astype("float32")
    inputs = keras.Input(x.shape[1:])
    hidden = kerasnorm.FilterResponseNormalization(axis=1, tau_initializer="ones")(inputs)
    model = keras.Model(inputs, kerasnorm.TLU(axis=1)(hidden))
    for w in model.weights:
        w.assign(RNG.normal(size=w.shape))
    path = tmp_path / "frn.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert [type(l).__name__ for l in loaded.layers[1:]] == ["FilterResponseNormalization", "TLU"]
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)


def test_float16_inputs_use_float32_statistics():
    # Responses around 300: their squares overflow float16's range (65504), not float32's.
    x = (RNG.normal(size=(2, 8, 3)) * 300).astype("float16")
    layer = kerasnorm.FilterResponseNormalization(use_tlu=False, dtype="mixed_float16")
    out = layer(x)
    assert keras.backend.standardize_dtype(out.dtype) == "float16"
    np.testing.assert_allclose(to_numpy(out).astype("float32"), frn_reference(x.astype(np.float64)), rtol=2e-3, atol=2e-3)
