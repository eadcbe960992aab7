"""kerasnorm.RMSNormalization: Keras's numbers and weights, float64 reference."""

from __future__ import annotations

import numpy as np
import pytest

import keras

import kerasnorm
from tests.kerasnorm.keras_parity import assert_weights_load_both_ways
from tests.kerasnorm.layer_test import run_layer_test

RNG = np.random.default_rng(11)


def rms_reference(x, axis=-1, epsilon=1e-6, scale=1.0):
    x = np.asarray(x, np.float64)
    axes = tuple(a % x.ndim for a in np.atleast_1d(axis))
    return x / np.sqrt((x**2).mean(axis=axes, keepdims=True) + epsilon) * scale


def test_layer_contract(tmp_path):
    run_layer_test(
        kerasnorm.RMSNormalization,
        {},
        input_shape=(4, 3, 5),
        expected_num_trainable_weights=1,
        expected_num_non_trainable_weights=0,
        tmp_path=tmp_path,
    )


@pytest.mark.parametrize(
    "shape,axis,like_keras",
    [
        ((4, 6), -1, True),
        ((3, 5, 4), -1, True),
        ((2, 3, 4, 5), [2, 3], True),
        # Keras's layer cannot broadcast its scale over non-trailing axes: reference only.
        ((3, 5, 4), 1, False),
        ((2, 3, 4, 5), [1, 3], False),
    ],
)
def test_matches_keras_and_reference(shape, axis, like_keras):
    x = (RNG.normal(size=shape) * 3 + 1).astype("float32")
    ours = kerasnorm.RMSNormalization(axis=axis, epsilon=1e-2)
    ours.build(x.shape)
    scale = RNG.normal(size=ours.scale.shape)
    ours.set_weights([scale])
    out = keras.ops.convert_to_numpy(ours(x))
    if like_keras:
        theirs = keras.layers.RMSNormalization(axis=axis, epsilon=1e-2)
        theirs.build(x.shape)
        theirs.set_weights([scale])
        np.testing.assert_allclose(out, keras.ops.convert_to_numpy(theirs(x)), rtol=1e-5, atol=1e-6)
    keep = [1] * len(shape)
    for i, a in enumerate(np.atleast_1d(axis)):
        keep[a] = scale.shape[i]
    np.testing.assert_allclose(out, rms_reference(x, axis, 1e-2, scale.reshape(keep)), rtol=1e-5, atol=1e-6)


def test_epsilon_sits_inside_the_square_root():
    # An all-zero row stays zero, and a constant row c maps to c / sqrt(c^2 + epsilon).
    x = np.array([[0.0, 0.0], [0.1, 0.1]], "float32")
    out = keras.ops.convert_to_numpy(kerasnorm.RMSNormalization(epsilon=0.03)(x))
    np.testing.assert_allclose(out, [[0.0, 0.0], [0.5, 0.5]], rtol=1e-6)


def test_weights_load_both_ways_with_keras(tmp_path):
    assert_weights_load_both_ways(
        kerasnorm.RMSNormalization(axis=[1, 2]), keras.layers.RMSNormalization(axis=[1, 2]), (2, 3, 6), tmp_path
    )


def test_mask_passes_through_and_half_precision_is_finite():
    inputs = keras.Input((4,), dtype="int32")
    h = keras.layers.Embedding(10, 6, mask_zero=True)(inputs)
    assert kerasnorm.RMSNormalization()(h)._keras_mask is not None
    # Squares of 300 overflow float16; the mean square is taken in float32.
    x = (RNG.normal(size=(3, 8)) * 300).astype("float16")
    out = kerasnorm.RMSNormalization(dtype="mixed_float16")(x)
    assert keras.backend.standardize_dtype(out.dtype) == "float16"
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out).astype("float32"), rms_reference(x), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize(
    "kwargs,needle",
    [({"epsilon": 0.0}, "epsilon=0.0"), ({"epsilon": -1.0}, "epsilon=-1.0"), ({"axis": "last"}, "axis='last'"), ({"axis": []}, r"axis=\[\]")],
)
def test_invalid_arguments_name_the_value(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        kerasnorm.RMSNormalization(**kwargs)


def test_bad_axis_and_integer_inputs():
    with pytest.raises(ValueError, match="axis=2"):
        kerasnorm.RMSNormalization(axis=2)(np.zeros((2, 3), "float32"))
    with pytest.raises(ValueError, match="int32"):
        kerasnorm.RMSNormalization()(np.zeros((2, 3), "int32"))
