"""kerasnorm.InstanceNormalization: group normalization's and PyTorch's numbers, masks,
float32 statistics, errors."""

from __future__ import annotations

import numpy as np
import pytest

import keras

import kerasnorm
from tests.kerasnorm.layer_test import run_layer_test

RNG = np.random.default_rng(17)


def instance_norm_reference(x, axis=-1, epsilon=1e-3, gamma=None, beta=None, mask=None):
    """Float64 instance norm: per sample and channel, over every other non-batch axis;
    `mask` (over the leading axes, channels last) drops positions from the statistics."""
    x = np.moveaxis(np.asarray(x, np.float64), axis, -1)
    w = np.ones(x.shape[:-1] + (1,))
    if mask is not None:
        w = w * np.asarray(mask, np.float64).reshape(mask.shape + (1,) * (x.ndim - mask.ndim))
    axes = tuple(range(1, x.ndim - 1))
    count = w.sum(axis=axes, keepdims=True)
    mean = (w * x).sum(axis=axes, keepdims=True) / count
    var = (w * (x - mean) ** 2).sum(axis=axes, keepdims=True) / count
    out = (x - mean) / np.sqrt(var + epsilon)
    if gamma is not None:
        out = out * gamma
    if beta is not None:
        out = out + beta
    return np.moveaxis(out, -1, axis)


def _data(shape, loc=2.0, scale=3.0):
    return (RNG.normal(size=shape) * scale + loc).astype("float32")


def _with_affine(layer, shape):
    """Builds `layer` for `shape` with random `gamma` and `beta`; returns them."""
    layer.build(shape)
    channels = layer.gamma.shape[0]
    gamma, beta = RNG.normal(size=channels), RNG.normal(size=channels)
    layer.set_weights([gamma, beta])
    return gamma, beta


def test_layer_contract(tmp_path):
    run_layer_test(
        kerasnorm.InstanceNormalization,
        {},
        input_shape=(4, 5, 6),
        expected_num_trainable_weights=2,
        expected_num_non_trainable_weights=0,
        tmp_path=tmp_path,
    )


@pytest.mark.parametrize("shape,axis", [((3, 7, 4), -1), ((2, 5, 4, 3), -1), ((2, 3, 5, 4), 1)])
def test_equals_group_normalization_with_one_channel_per_group(shape, axis):
    x = _data(shape)
    channels = shape[axis]
    ours = kerasnorm.InstanceNormalization(axis=axis)
    gamma, beta = _with_affine(ours, shape)
    out = keras.ops.convert_to_numpy(ours(x))
    for group_norm_type in (keras.layers.GroupNormalization, kerasnorm.GroupNormalization):
        group_norm = group_norm_type(groups=channels, axis=axis)
        group_norm.build(shape)
        group_norm.set_weights([gamma, beta])
        # 1e-4: Keras's layer rounds differently in float32 (up to 2e-5 under PyTorch).
        np.testing.assert_allclose(out, keras.ops.convert_to_numpy(group_norm(x)), rtol=1e-4, atol=1e-4)
    expected = instance_norm_reference(x, axis, gamma=gamma, beta=beta)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(3, 4, 7), (2, 3, 5, 4)])
def test_equals_torch_instance_norm(shape):
    # PyTorch is channels first: the layer takes axis=1 as is, and axis=-1 transposed.
    import torch

    x = _data(shape)
    gamma, beta = RNG.normal(size=shape[1]).astype("float32"), RNG.normal(size=shape[1]).astype("float32")
    expected = torch.nn.functional.instance_norm(
        torch.from_numpy(x), weight=torch.from_numpy(gamma), bias=torch.from_numpy(beta), eps=1e-3
    ).numpy()

    channels_first = kerasnorm.InstanceNormalization(axis=1)
    channels_first.build(shape)
    channels_first.set_weights([gamma, beta])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(channels_first(x)), expected, rtol=1e-5, atol=1e-5)

    channels_last = kerasnorm.InstanceNormalization()
    x_last = np.moveaxis(x, 1, -1)
    channels_last.build(x_last.shape)
    channels_last.set_weights([gamma, beta])
    out = keras.ops.convert_to_numpy(channels_last(x_last))
    np.testing.assert_allclose(np.moveaxis(out, -1, 1), expected, rtol=1e-5, atol=1e-5)


def test_masked_positions_never_enter_the_statistics():
    x = _data((3, 6, 4))
    mask = np.array([[1] * 6, [1] * 4 + [0] * 2, [1] * 3 + [0] * 3], bool)
    x[~mask] = 1e3  # padding far from the data: it would dominate the statistics
    layer = kerasnorm.InstanceNormalization()
    gamma, beta = _with_affine(layer, x.shape)
    out = keras.ops.convert_to_numpy(layer(x, mask=mask))
    expected = instance_norm_reference(x, gamma=gamma, beta=beta, mask=mask)
    np.testing.assert_allclose(out[mask], expected[mask], rtol=1e-5, atol=1e-5)
    # A padded sequence's valid steps equal those of the same sequence unpadded.
    alone = keras.ops.convert_to_numpy(layer(x[2:, :3]))
    np.testing.assert_allclose(out[2, :3], alone[0], rtol=1e-5, atol=1e-5)


def test_a_mask_over_the_pixels_of_an_image():
    x = _data((2, 4, 5, 3))
    mask = RNG.uniform(size=(2, 4, 5)) < 0.6
    out = keras.ops.convert_to_numpy(kerasnorm.InstanceNormalization()(x, mask=mask))
    expected = instance_norm_reference(x, mask=mask)
    np.testing.assert_allclose(out[mask], expected[mask], rtol=1e-5, atol=1e-5)


def test_mask_from_embedding_reaches_the_statistics_and_passes_on():
    tokens = np.array([[3, 1, 4, 0, 0], [2, 7, 1, 8, 2]])
    inputs = keras.Input((None,), dtype="int32")
    h = keras.layers.Embedding(10, 4, mask_zero=True)(inputs)
    h = kerasnorm.InstanceNormalization()(h)
    model = keras.Model(inputs, h)
    out = model.predict(tokens, verbose=0)
    np.testing.assert_allclose(out[0, :3], model.predict(tokens[:1, :3], verbose=0)[0], rtol=1e-5, atol=1e-5)
    assert h._keras_mask is not None


def test_half_precision_statistics_in_float32():
    # Squares of 300 overflow float16 (max 65504); the statistics are in float32.
    x = (RNG.normal(size=(2, 8, 4)) * 300).astype("float16")
    out = kerasnorm.InstanceNormalization(dtype="mixed_float16")(x)
    assert keras.backend.standardize_dtype(out.dtype) == "float16"
    expected = instance_norm_reference(x)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out).astype("float32"), expected, rtol=1e-2, atol=1e-2)


def test_config_round_trip_keeps_every_argument():
    layer = kerasnorm.InstanceNormalization(
        axis=1, epsilon=1e-5, center=False, gamma_initializer="he_normal", gamma_regularizer="l2", name="inorm"
    )
    config = layer.get_config()
    assert (config["axis"], config["epsilon"], config["center"], config["scale"]) == (1, 1e-5, False, True)
    restored = kerasnorm.InstanceNormalization.from_config(config)
    assert restored.get_config() == config
    restored.build((2, 3, 5))
    assert [w.name for w in restored.weights] == ["gamma"]
    assert len(restored.losses) == 1  # the gamma regularizer survived the round trip


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"axis": [1, 2]}, r"axis=\[1, 2\]"),
        ({"axis": 1.0}, "axis=1.0"),
        ({"epsilon": 0.0}, "epsilon=0.0"),
        ({"epsilon": -1e-3}, "epsilon=-0.001"),
        ({"scale": "no"}, "scale='no'"),
    ],
)
def test_invalid_arguments_name_the_value(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        kerasnorm.InstanceNormalization(**kwargs)


def test_inputs_it_cannot_normalize_are_refused():
    with pytest.raises(ValueError, match=r"Received: input_shape=\(2, 4\)"):
        kerasnorm.InstanceNormalization()(np.zeros((2, 4), "float32"))
    with pytest.raises(ValueError, match=r"Received: input_shape=\(None, 5, None\)"):
        kerasnorm.InstanceNormalization()(keras.Input((5, None)))
    with pytest.raises(ValueError, match="axis=0"):
        kerasnorm.InstanceNormalization(axis=0)(np.zeros((2, 3, 4), "float32"))
    with pytest.raises(ValueError, match="axis=3"):
        kerasnorm.InstanceNormalization(axis=3)(np.zeros((2, 3, 4), "float32"))
    with pytest.raises(ValueError, match="int32"):
        kerasnorm.InstanceNormalization()(np.zeros((2, 3, 4), "int32"))
    with pytest.raises(ValueError, match="channel axis"):
        kerasnorm.InstanceNormalization()(np.zeros((2, 3, 4), "float32"), mask=np.ones((2, 3, 4), bool))
