"""kerasnorm.DynamicTanh and convert_to_dynamic_tanh: the closed form, masks, float32
compute, and a converted model that keeps every other weight."""

from __future__ import annotations

import numpy as np
import pytest

import keras

import kerasnorm
from tests.kerasnorm.layer_test import run_layer_test

RNG = np.random.default_rng(11)


def dyt_reference(x, alpha, gamma=None, beta=None):
    """Float64 `gamma * tanh(alpha * x) + beta`; `gamma` and `beta` already shaped to
    broadcast against `x`."""
    out = np.tanh(alpha * np.asarray(x, np.float64))
    if gamma is not None:
        out = out * gamma
    if beta is not None:
        out = out + beta
    return out


def _randomize(layer):
    for w in layer.weights:
        w.assign(RNG.normal(size=w.shape) if w.shape else RNG.uniform(0.2, 2.0))


def test_layer_contract(tmp_path):
    run_layer_test(
        kerasnorm.DynamicTanh,
        {"alpha_init": 0.8},
        input_shape=(4, 5, 6),
        expected_num_trainable_weights=3,
        expected_num_non_trainable_weights=0,
        tmp_path=tmp_path,
    )


@pytest.mark.parametrize(
    "shape,axis,weight_shape",
    [((3, 5, 6), -1, (1, 1, 6)), ((3, 5, 6), [1, 2], (1, 5, 6)), ((2, 4, 3, 3), 1, (1, 4, 1, 1))],
)
def test_matches_the_closed_form_over_axis(shape, axis, weight_shape):
    x = (RNG.normal(size=shape) * 3).astype("float32")
    layer = kerasnorm.DynamicTanh(axis=axis)
    layer.build(shape)
    _randomize(layer)
    alpha, gamma, beta = (keras.ops.convert_to_numpy(w) for w in (layer.alpha, layer.gamma, layer.beta))
    assert alpha.shape == () and gamma.shape == beta.shape == tuple(n for n in weight_shape if n > 1)
    out = keras.ops.convert_to_numpy(layer(x))
    expected = dyt_reference(x, alpha, gamma.reshape(weight_shape), beta.reshape(weight_shape))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_starts_as_tanh_of_half_the_input_and_center_scale_drop_the_affine():
    x = RNG.normal(size=(2, 3, 4)).astype("float32")
    out = keras.ops.convert_to_numpy(kerasnorm.DynamicTanh()(x))
    np.testing.assert_allclose(out, np.tanh(0.5 * x), rtol=1e-6, atol=1e-6)
    bare = kerasnorm.DynamicTanh(alpha_init=2.0, center=False, scale=False)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bare(x)), np.tanh(2.0 * x), rtol=1e-6, atol=1e-6)
    assert [w.name for w in bare.weights] == ["alpha"]


def test_mask_passes_through_unchanged():
    tokens = np.array([[3, 1, 4, 0, 0], [2, 7, 1, 8, 2]])
    inputs = keras.Input((None,), dtype="int32")
    embedded = keras.layers.Embedding(10, 4, mask_zero=True)(inputs)
    layer = kerasnorm.DynamicTanh()
    h = layer(embedded)
    assert h._keras_mask is not None
    mask = keras.ops.convert_to_numpy(layer.compute_mask(embedded, tokens != 0))
    np.testing.assert_array_equal(mask, tokens != 0)


def test_half_precision_is_computed_in_float32():
    # The float64 result rounded once to float16: float16 arithmetic would round alpha * x,
    # the tanh, the product and the sum each on its own.
    x = (RNG.normal(size=(4, 64)) * 4).astype("float16")
    layer = kerasnorm.DynamicTanh(alpha_init=0.7, dtype="mixed_float16")
    layer.build(x.shape)
    gamma, beta = RNG.normal(size=64) * 5, RNG.normal(size=64) * 5
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    out = layer(x)
    assert keras.backend.standardize_dtype(out.dtype) == "float16"
    expected = dyt_reference(x, np.float32(0.7), gamma.astype("float32"), beta.astype("float32")).astype("float16")
    out = keras.ops.convert_to_numpy(out)
    # Ties aside (float32 rounding next to a float16 midpoint), one rounding.
    assert np.mean(out == expected) > 0.99
    np.testing.assert_allclose(out.astype("float32"), expected.astype("float32"), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"alpha_init": 0.0}, "alpha_init=0.0"),
        ({"alpha_init": -0.5}, "alpha_init=-0.5"),
        ({"alpha_init": "big"}, "alpha_init='big'"),
        ({"alpha_init": True}, "alpha_init=True"),
        ({"axis": "last"}, "axis='last'"),
        ({"center": 1}, "center=1"),
    ],
)
def test_invalid_arguments_name_the_value(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        kerasnorm.DynamicTanh(**kwargs)


def test_bad_axis_and_integer_inputs_are_refused():
    with pytest.raises(ValueError, match="axis=3"):
        kerasnorm.DynamicTanh(axis=3)(np.zeros((2, 3, 4), "float32"))
    with pytest.raises(ValueError, match="int32"):
        kerasnorm.DynamicTanh()(np.zeros((2, 4), "int32"))


# The converter.


def _functional_model():
    inputs = keras.Input((5, 4))
    a = keras.layers.Dense(6, name="dense_a")(inputs)
    a = keras.layers.LayerNormalization(name="keras_ln")(a)
    a = keras.layers.Dense(6, name="dense_b")(a)
    a = kerasnorm.LayerNormalization(axis=[1, 2], center=False, name="kerasnorm_ln")(a)
    untouched = keras.layers.Dense(3, name="dense_c")(inputs)  # no layer norm on this path
    model = keras.Model(inputs, [a, untouched])
    for layer in model.layers:
        _randomize(layer)
    return model


def _weights(layer):
    return [keras.ops.convert_to_numpy(w) for w in layer.weights]


def test_converter_replaces_every_layer_norm_and_keeps_every_other_weight(tmp_path):
    model = _functional_model()
    x = RNG.normal(size=(3, 5, 4)).astype("float32")
    before = [y.copy() for y in model.predict(x, verbose=0)]
    converted = kerasnorm.convert_to_dynamic_tanh(model, alpha_init=0.3)

    for name in ("keras_ln", "kerasnorm_ln"):
        ln, dyt = model.get_layer(name), converted.get_layer(name)
        assert type(dyt) is kerasnorm.DynamicTanh
        assert dyt.axis == ln.axis and (dyt.center, dyt.scale) == (ln.center, ln.scale)
        assert float(keras.ops.convert_to_numpy(dyt.alpha)) == pytest.approx(0.3)
        for weight in ("gamma", "beta"):
            if getattr(ln, weight) is None:
                assert getattr(dyt, weight) is None
            else:
                np.testing.assert_array_equal(*(keras.ops.convert_to_numpy(getattr(l, weight)) for l in (ln, dyt)))
    for name in ("dense_a", "dense_b", "dense_c"):
        for old, new in zip(_weights(model.get_layer(name)), _weights(converted.get_layer(name))):
            np.testing.assert_array_equal(old, new)

    out, untouched = converted.predict(x, verbose=0)
    np.testing.assert_allclose(untouched, before[1], rtol=1e-6, atol=1e-6)
    # The other path, by hand: each layer norm replaced by gamma * tanh(alpha * h) + beta.
    (wa, ba), (wb, bb) = _weights(model.get_layer("dense_a")), _weights(model.get_layer("dense_b"))
    g1, b1 = _weights(model.get_layer("keras_ln"))
    (g2,) = _weights(model.get_layer("kerasnorm_ln"))
    h = dyt_reference(x @ wa + ba, 0.3, g1, b1)
    expected = dyt_reference(h @ wb + bb, 0.3, g2)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)

    # The original is untouched.
    assert type(model.get_layer("keras_ln")) is keras.layers.LayerNormalization
    for old, new in zip(before, model.predict(x, verbose=0)):
        np.testing.assert_array_equal(old, new)

    converted.save(tmp_path / "converted.keras")
    loaded = keras.saving.load_model(tmp_path / "converted.keras")
    for a, b in zip(loaded.predict(x, verbose=0), converted.predict(x, verbose=0)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_converter_walks_sequential_and_nested_models():
    block = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(4), keras.layers.LayerNormalization(name="inner_ln")], name="block"
    )
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(2, name="head")(block(kerasnorm.LayerNormalization(name="outer_ln")(inputs)))
    model = keras.Model(inputs, outputs)
    converted = kerasnorm.convert_to_dynamic_tanh(model)
    assert type(converted.get_layer("outer_ln")) is kerasnorm.DynamicTanh
    assert type(converted.get_layer("block").get_layer("inner_ln")) is kerasnorm.DynamicTanh
    np.testing.assert_array_equal(_weights(converted.get_layer("head"))[0], _weights(model.get_layer("head"))[0])

    sequential = keras.Sequential([keras.Input((3, 4)), keras.layers.Dense(4), keras.layers.LayerNormalization(axis=1)])
    converted = kerasnorm.convert_to_dynamic_tanh(sequential)
    assert type(converted.layers[-1]) is kerasnorm.DynamicTanh and converted.layers[-1].axis == [1]
    assert converted.predict(np.ones((2, 3, 4), "float32"), verbose=0).shape == (2, 3, 4)


@pytest.mark.filterwarnings("ignore:You passed `rms_scaling=True`")
@pytest.mark.parametrize("ln_type", [keras.layers.LayerNormalization, kerasnorm.LayerNormalization])
def test_converter_refuses_rms_scaling(ln_type):
    model = keras.Sequential([keras.Input((4,)), ln_type(rms_scaling=True, name="rms_ln")])
    with pytest.raises(ValueError, match="'rms_ln'.*Received: rms_scaling=True"):
        kerasnorm.convert_to_dynamic_tanh(model)


def test_converter_refuses_what_it_cannot_copy():
    with pytest.raises(ValueError, match="alpha_init=0.0"):
        kerasnorm.convert_to_dynamic_tanh(_functional_model(), alpha_init=0.0)
    with pytest.raises(ValueError, match="must be built"):
        kerasnorm.convert_to_dynamic_tanh(keras.Sequential([keras.layers.LayerNormalization()]))
    with pytest.raises(ValueError, match="Received: model of type LayerNormalization"):
        kerasnorm.convert_to_dynamic_tanh(keras.layers.LayerNormalization())
