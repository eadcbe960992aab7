"""kerasnorm.LayerNormalization: the drop-in contract."""

from __future__ import annotations

import numpy as np
import pytest

import keras

import kerasnorm
from tests.kerasnorm import reference as ref
from tests.kerasnorm.layer_test import run_layer_test

RNG = np.random.default_rng(99)


def _data(shape):
    return (RNG.normal(size=shape) * 2 + 1).astype("float32")


def test_layer_contract(tmp_path):
    run_layer_test(
        kerasnorm.LayerNormalization,
        {"axis": [1, 2]},
        input_shape=(4, 5, 3),
        expected_num_trainable_weights=2,
        expected_num_non_trainable_weights=0,
        tmp_path=tmp_path,
    )


@pytest.mark.parametrize(
    "shape,axis", [((4, 6), -1), ((3, 5, 4), -1), ((3, 5, 4), 1), ((3, 5, 4), [1, 2]), ((2, 3, 4, 5), [-1, -3])]
)
def test_matches_reference_and_keras(shape, axis):
    x = _data(shape)
    ours = kerasnorm.LayerNormalization(axis=axis, gamma_initializer="random_normal", beta_initializer="random_normal")
    ours.build(shape)
    theirs = keras.layers.LayerNormalization(axis=axis)
    theirs.build(shape)
    theirs.set_weights(ours.get_weights())  # same weight shapes and order
    gamma, beta = (np.asarray(w) for w in ours.get_weights())
    keep = [1] * len(shape)
    for i, a in enumerate(sorted(a % len(shape) for a in np.atleast_1d(axis))):
        keep[a] = gamma.shape[i]
    expected = ref.layer_norm(x, axis, gamma=gamma.reshape(keep), beta=beta.reshape(keep))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ours(x)), expected, rtol=1e-4, atol=1e-4)
    trailing = sorted(a % len(shape) for a in np.atleast_1d(axis)) == list(range(len(shape) - np.size(axis), len(shape)))
    if keras.backend.backend() == "torch" and not trailing:
        return  # Keras's PyTorch path (F.layer_norm) fails on axes that do not end the shape
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ours(x)), keras.ops.convert_to_numpy(theirs(x)), rtol=1e-5, atol=1e-5)


def test_sample_output_is_independent_of_batch_mates_and_mode():
    layer = kerasnorm.LayerNormalization()
    x = _data((8, 5))
    alone = keras.ops.convert_to_numpy(layer(x[:1], training=True))
    others = x.copy()
    others[1:] = _data((7, 5)) * 100
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(others, training=True))[:1], alone, rtol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x, training=False))[:1], alone, rtol=1e-6)


def test_mask_passes_through():
    inputs = keras.Input((4, 3))
    masked = keras.layers.Masking(0.0)(inputs)
    out = kerasnorm.LayerNormalization()(masked)
    assert out._keras_mask is not None
    x = _data((2, 4, 3))
    x[:, 2:] = 0.0
    mask = kerasnorm.LayerNormalization().compute_mask(x, keras.ops.convert_to_tensor(x[..., 0] != 0))
    np.testing.assert_array_equal(mask, x[..., 0] != 0)


def test_half_precision_statistics_in_float32():
    x = np.full((2, 8), 60000.0, "float32")
    x[:, ::2] = -60000.0
    layer = kerasnorm.LayerNormalization(dtype="mixed_float16")
    out = layer(keras.ops.cast(x, "float16"))
    assert keras.backend.standardize_dtype(out.dtype) == "float16"
    np.testing.assert_allclose(keras.ops.convert_to_numpy(keras.ops.cast(out, "float32")), np.sign(x), rtol=1e-2)


def test_large_mean_small_spread():
    x = (1e4 + RNG.normal(size=(4, 512))).astype("float32")
    out = keras.ops.convert_to_numpy(kerasnorm.LayerNormalization(epsilon=1e-6)(x))
    np.testing.assert_allclose(out, ref.layer_norm(x, epsilon=1e-6), atol=2e-3)


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"epsilon": 0}, "epsilon=0"),
        ({"axis": "last"}, "axis='last'"),
        ({"axis": [0.5]}, "axis=[0.5]"),
        ({"scale": 1}, "scale=1"),
    ],
)
def test_invalid_arguments_name_the_value(kwargs, needle):
    with pytest.raises(ValueError, match="Received") as err:
        kerasnorm.LayerNormalization(**kwargs)
    assert needle in str(err.value)


@pytest.mark.parametrize("axis", [2, [1, 1]])
def test_bad_axis_for_the_input_rank(axis):
    with pytest.raises(ValueError, match="axis"):
        kerasnorm.LayerNormalization(axis=axis)(_data((2, 3)))


def test_integer_inputs_are_refused():
    with pytest.raises(ValueError, match="int32"):
        kerasnorm.LayerNormalization()(np.ones((2, 3), "int32"))
