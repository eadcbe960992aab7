"""kerasnorm.GroupNormalization: Keras's numbers and weights, float64 reference, masks."""

from __future__ import annotations

import numpy as np
import pytest

import keras

import kerasnorm
from tests.kerasnorm.keras_parity import assert_weights_load_both_ways
from tests.kerasnorm.layer_test import run_layer_test

RNG = np.random.default_rng(7)


def _data(shape, loc=2.0, scale=3.0):
    return (RNG.normal(size=shape) * scale + loc).astype("float32")


def group_norm_reference(x, groups, axis=-1, epsilon=1e-3, gamma=None, beta=None, mask=None):
    """Float64 group norm: per sample and group, over the group's channels and all other
    non-batch axes; `mask` (leading axes) drops positions from the statistics; `gamma`
    and `beta` are per-channel vectors."""
    x = np.moveaxis(np.asarray(x, np.float64), axis, -1)
    channels = x.shape[-1]
    g = x.reshape(x.shape[:-1] + (groups, channels // groups))
    w = np.ones(g.shape)
    if mask is not None:
        w = w * np.asarray(mask, np.float64).reshape(mask.shape + (1,) * (g.ndim - mask.ndim))
    axes = tuple(range(1, g.ndim - 2)) + (g.ndim - 1,)
    count = w.sum(axis=axes, keepdims=True)
    mean = (w * g).sum(axis=axes, keepdims=True) / count
    var = (w * (g - mean) ** 2).sum(axis=axes, keepdims=True) / count
    out = ((g - mean) / np.sqrt(var + epsilon)).reshape(x.shape)
    if gamma is not None:
        out = out * gamma
    if beta is not None:
        out = out + beta
    return np.moveaxis(out, -1, axis)


def test_layer_contract(tmp_path):
    run_layer_test(
        kerasnorm.GroupNormalization,
        {"groups": 2},
        input_shape=(4, 5, 6),
        expected_num_trainable_weights=2,
        expected_num_non_trainable_weights=0,
        tmp_path=tmp_path,
    )


CASES = [
    ((4, 8), 4, -1),
    ((3, 5, 8), 2, -1),
    ((3, 5, 8), -1, -1),
    ((3, 5, 8), 1, -1),
    ((2, 6, 4, 3), 3, 1),
    ((2, 3, 4, 6), 2, -1),
]


@pytest.mark.parametrize("shape,groups,axis", CASES)
def test_matches_keras_and_reference(shape, groups, axis):
    x = _data(shape)
    ours = kerasnorm.GroupNormalization(groups=groups, axis=axis)
    theirs = keras.layers.GroupNormalization(groups=groups, axis=axis)
    ours.build(x.shape)
    theirs.build(x.shape)
    channels = shape[axis]
    gamma, beta = RNG.normal(size=channels), RNG.normal(size=channels)
    ours.set_weights([gamma, beta])
    theirs.set_weights([gamma, beta])

    out = keras.ops.convert_to_numpy(ours(x))
    # 1e-4: Keras's own float32 rounding differs by up to 2e-5 under PyTorch; the float64
    # reference below holds both to the same 1e-4.
    np.testing.assert_allclose(out, keras.ops.convert_to_numpy(theirs(x)), rtol=1e-4, atol=1e-4)
    n_groups = channels if groups == -1 else groups
    expected = group_norm_reference(x, n_groups, axis, gamma=gamma, beta=beta)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_weights_load_both_ways_with_keras(tmp_path):
    assert_weights_load_both_ways(
        kerasnorm.GroupNormalization(groups=4), keras.layers.GroupNormalization(groups=4), (3, 5, 8), tmp_path
    )


def test_masked_positions_never_enter_the_statistics():
    x = _data((3, 6, 4))
    mask = np.array([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4], bool)
    x[~mask] = 1e3  # padding far from the data: it would dominate the statistics
    layer = kerasnorm.GroupNormalization(groups=2)
    out = keras.ops.convert_to_numpy(layer(x, mask=mask))
    expected = group_norm_reference(x, 2, mask=mask)
    np.testing.assert_allclose(out[mask], expected[mask], rtol=1e-4, atol=1e-4)
    # A padded sequence's valid steps equal those of the same sequence unpadded.
    alone = keras.ops.convert_to_numpy(layer(x[2:, :2]))
    np.testing.assert_allclose(out[2, :2], alone[0], rtol=1e-5, atol=1e-5)


def test_mask_from_embedding_reaches_the_statistics_and_passes_on():
    tokens = np.array([[3, 1, 4, 0, 0], [2, 7, 1, 8, 2]])
    inputs = keras.Input((None,), dtype="int32")  # any length: with and without the padding
    h = keras.layers.Embedding(10, 4, mask_zero=True)(inputs)
    h = kerasnorm.GroupNormalization(groups=2)(h)
    model = keras.Model(inputs, h)
    out = model.predict(tokens, verbose=0)
    # The first sequence gives the same outputs with or without its padding.
    np.testing.assert_allclose(out[0, :3], model.predict(tokens[:1, :3], verbose=0)[0], rtol=1e-5, atol=1e-5)
    assert h._keras_mask is not None


def test_half_precision_statistics_in_float32():
    # Squares of 300 overflow float16 (max 65504); the statistics are in float32.
    x = (RNG.normal(size=(2, 4, 8)) * 300).astype("float16")
    layer = kerasnorm.GroupNormalization(groups=2, dtype="mixed_float16")
    out = layer(x)
    assert keras.backend.standardize_dtype(out.dtype) == "float16"
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out).astype("float32"), group_norm_reference(x, 2), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"groups": 0}, "groups=0"),
        ({"groups": -2}, "groups=-2"),
        ({"groups": 2.0}, "groups=2.0"),
        ({"groups": True}, "groups=True"),
        ({"axis": [1, 2]}, "axis=[1, 2]"),
        ({"epsilon": 0.0}, "epsilon=0.0"),
        ({"epsilon": -1e-3}, "epsilon=-0.001"),
        ({"center": "yes"}, "center='yes'"),
    ],
)
def test_invalid_arguments_name_the_value(kwargs, needle):
    with pytest.raises(ValueError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        kerasnorm.GroupNormalization(**kwargs)


def test_groups_not_dividing_channels_names_both():
    with pytest.raises(ValueError, match=r"groups=4, channels=6"):
        kerasnorm.GroupNormalization(groups=4)(np.zeros((2, 6), "float32"))
    with pytest.raises(ValueError, match=r"groups=8, channels=6"):
        kerasnorm.GroupNormalization(groups=8)(np.zeros((2, 6), "float32"))


@pytest.mark.parametrize("axis", [3, -4, 0])
def test_bad_axis_for_the_input_rank(axis):
    with pytest.raises(ValueError, match=f"axis={axis}"):
        kerasnorm.GroupNormalization(groups=1, axis=axis)(np.zeros((2, 3, 4), "float32"))


def test_integer_inputs_and_a_mask_over_the_channels_are_refused():
    with pytest.raises(ValueError, match="int32"):
        kerasnorm.GroupNormalization(groups=1)(np.zeros((2, 4), "int32"))
    with pytest.raises(ValueError, match="channel axis"):
        kerasnorm.GroupNormalization(groups=1)(np.zeros((2, 4), "float32"), mask=np.ones((2, 4), bool))
