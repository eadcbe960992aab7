"""kerasnorm.WeightStandardizedConv1D/2D and fold_weight_standardization: a plain Keras
convolution with the standardized kernel, Keras's weights, folding, saving."""

from __future__ import annotations

import numpy as np
import pytest

import keras

import kerasnorm
from tests.kerasnorm.layer_test import run_layer_test

RNG = np.random.default_rng(23)

WS1D, WS2D = kerasnorm.WeightStandardizedConv1D, kerasnorm.WeightStandardizedConv2D
WS_TO_KERAS = {WS1D: keras.layers.Conv1D, WS2D: keras.layers.Conv2D}


def standardize_reference(kernel, epsilon):
    """Float64: per output channel (last axis), over the fan-in (all other axes), biased
    variance inside the square root."""
    k = np.asarray(kernel, np.float64)
    axes = tuple(range(k.ndim - 1))
    mean = k.mean(axis=axes, keepdims=True)
    var = ((k - mean) ** 2).mean(axis=axes, keepdims=True)
    return (k - mean) / np.sqrt(var + epsilon)


def _np(value):
    return keras.ops.convert_to_numpy(value)


def _randomize(layer):
    """Random weights, the kernel with a per-channel mean and a scale far from 1."""
    kernel = RNG.normal(size=layer.kernel.shape) * 0.05 + RNG.normal(size=layer.kernel.shape[-1])
    layer.kernel.assign(kernel)
    if layer.use_bias:
        layer.bias.assign(RNG.normal(size=layer.bias.shape))


@pytest.mark.parametrize("ws_type", list(WS_TO_KERAS))
def test_layer_contract(ws_type, tmp_path):
    rank = 1 if ws_type is WS1D else 2
    run_layer_test(
        ws_type,
        {"filters": 3, "kernel_size": 3, "padding": "same", "epsilon": 1e-5},
        input_shape=(2,) + (5,) * rank + (3,),
        expected_num_trainable_weights=2,
        expected_num_non_trainable_weights=0,
        tmp_path=tmp_path,
    )


CASES = [
    (WS1D, (2, 9, 4), {"filters": 5, "kernel_size": 3}),
    (WS1D, (2, 9, 4), {"filters": 4, "kernel_size": 2, "padding": "causal", "dilation_rate": 2}),
    (WS1D, (2, 9, 4), {"filters": 6, "kernel_size": 3, "groups": 2, "use_bias": False}),
    (WS2D, (2, 6, 7, 3), {"filters": 4, "kernel_size": 3, "strides": 2, "padding": "same"}),
    (WS2D, (2, 6, 7, 4), {"filters": 4, "kernel_size": (1, 3), "groups": 2, "activation": "relu"}),
]


@pytest.mark.parametrize("ws_type,shape,kwargs", CASES)
def test_equals_a_keras_conv_with_the_standardized_kernel(ws_type, shape, kwargs):
    x = RNG.normal(size=shape).astype("float32")
    ws = ws_type(**kwargs)
    ws.build(shape)
    _randomize(ws)
    expected_kernel = standardize_reference(_np(ws.kernel), ws.epsilon)
    np.testing.assert_allclose(_np(ws.standardized_kernel()), expected_kernel, rtol=1e-5, atol=1e-5)

    conv = WS_TO_KERAS[ws_type](**kwargs)
    conv.build(shape)
    conv.set_weights([expected_kernel] + ws.get_weights()[1:])
    np.testing.assert_allclose(_np(ws(x)), _np(conv(x)), rtol=1e-5, atol=1e-5)


def test_output_ignores_the_scale_and_per_channel_mean_of_the_kernel():
    x = RNG.normal(size=(2, 5, 5, 3)).astype("float32")
    # Epsilon far below the kernel's variance: invariance to float32 rounding.
    layer = kerasnorm.WeightStandardizedConv2D(4, 3, epsilon=1e-12)
    layer.build(x.shape)
    _randomize(layer)
    before = _np(layer(x))
    layer.kernel.assign(_np(layer.kernel) * 7.0 + RNG.normal(size=4))
    np.testing.assert_allclose(_np(layer(x)), before, rtol=1e-5, atol=1e-5)


def test_takes_a_keras_convs_weights(tmp_path):
    def model(conv2d, conv1d):
        return keras.Sequential([keras.Input((6, 6, 3)), conv2d(4, 3), keras.layers.Reshape((16, 4)), conv1d(2, 2)])

    conv_model = model(keras.layers.Conv2D, keras.layers.Conv1D)
    ws_model = model(WS2D, WS1D)
    for conv, ws in zip(conv_model.layers[::2], ws_model.layers[::2]):
        _randomize(conv)
        assert [(w.name, tuple(w.shape)) for w in ws.weights] == [(w.name, tuple(w.shape)) for w in conv.weights]
        ws.set_weights(conv.get_weights())
        np.testing.assert_array_equal(_np(ws.kernel), _np(conv.kernel))

    # A saved Keras model's weights, copied over whole.
    conv_model.save(tmp_path / "conv.keras")
    _randomize(ws_model.layers[0])
    ws_model.set_weights(keras.saving.load_model(tmp_path / "conv.keras").get_weights())
    for conv, ws in zip(conv_model.layers[::2], ws_model.layers[::2]):
        for a, b in zip(ws.get_weights(), conv.get_weights()):
            np.testing.assert_array_equal(a, b)


def test_half_precision_standardizes_the_float32_kernel():
    # A kernel of norm 1e-7 is float16's subnormals (or zero) once autocast: standardized
    # from float32 it gives the float32 layer's outputs to float16 rounding.
    x = RNG.normal(size=(2, 6, 3)).astype("float32")
    kernel = RNG.normal(size=(3, 3, 4)) * 1e-7
    outputs = {}
    for dtype in ("float32", "mixed_float16"):
        layer = kerasnorm.WeightStandardizedConv1D(4, 3, epsilon=1e-20, use_bias=False, dtype=dtype)
        layer.build(x.shape)
        layer.kernel.assign(kernel)
        outputs[dtype] = layer(x.astype(layer.compute_dtype))
    assert keras.backend.standardize_dtype(outputs["mixed_float16"].dtype) == "float16"
    half = _np(outputs["mixed_float16"]).astype("float32")
    np.testing.assert_allclose(half, _np(outputs["float32"]), rtol=1e-2, atol=1e-2)


def _check_folding(model, x):
    """Folds; same predictions, the original untouched, no kerasnorm convolution left."""
    before = model.predict(x, verbose=0)
    weights = [w.copy() for w in model.get_weights()]
    folded = kerasnorm.fold_weight_standardization(model)
    # 1e-4: inside XLA (JAX's predict) a convolution with a computed kernel is rearranged
    # and rounds differently, by a few 1e-6 of its outputs' scale, which the layers after
    # it compound.
    np.testing.assert_allclose(folded.predict(x, verbose=0), before, rtol=1e-4, atol=1e-4)
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))
    assert not [l for l in folded._flatten_layers() if isinstance(l, tuple(WS_TO_KERAS))]
    return folded


def test_folding_a_sequential_model(tmp_path):
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            kerasnorm.WeightStandardizedConv2D(4, 3, use_bias=False, name="ws_a"),
            kerasnorm.GroupNormalization(groups=2, name="gn"),
            keras.layers.ReLU(),
            kerasnorm.WeightStandardizedConv2D(6, 3, strides=2, padding="same", name="ws_b"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(2, name="head"),
        ]
    )
    for layer in model.layers:
        if isinstance(layer, tuple(WS_TO_KERAS)):
            _randomize(layer)
    x = RNG.normal(size=(3, 8, 8, 3)).astype("float32")
    folded = _check_folding(model, x)
    ws_a, plain_a = model.get_layer("ws_a"), folded.get_layer("ws_a")
    assert type(plain_a) is keras.layers.Conv2D and not plain_a.use_bias
    assert plain_a.strides == ws_a.strides and plain_a.padding == ws_a.padding
    np.testing.assert_allclose(_np(plain_a.kernel), _np(ws_a.standardized_kernel()), rtol=1e-6, atol=1e-6)
    assert type(folded.get_layer("ws_b")) is keras.layers.Conv2D
    assert type(folded.get_layer("gn")) is kerasnorm.GroupNormalization

    folded.save(tmp_path / "folded.keras")
    loaded = keras.saving.load_model(tmp_path / "folded.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), folded.predict(x, verbose=0), rtol=1e-6, atol=1e-6)


def test_folding_a_functional_model_with_a_nested_one_and_lora():
    inner = keras.Sequential([keras.Input((7, 4)), WS1D(4, 2, padding="causal", name="inner_ws")], name="inner")
    inputs = keras.Input((7, 4))
    lora = WS1D(4, 3, padding="same", lora_rank=2, name="lora_ws")
    outputs = keras.layers.Add()([inner(inputs), lora(inputs)])
    model = keras.Model(inputs, outputs)
    _randomize(inner.layers[0])
    lora.lora_kernel_b.assign(RNG.normal(size=lora.lora_kernel_b.shape))  # a non-zero update
    x = RNG.normal(size=(2, 7, 4)).astype("float32")
    folded = _check_folding(model, x)
    assert type(folded.get_layer("inner").get_layer("inner_ws")) is keras.layers.Conv1D
    assert not folded.get_layer("lora_ws").lora_enabled


def test_saving_keeps_epsilon_and_predictions(tmp_path):
    inputs = keras.Input((5, 5, 2))
    outputs = kerasnorm.WeightStandardizedConv2D(3, 2, epsilon=1e-3, name="ws")(inputs)
    model = keras.Model(inputs, outputs)
    _randomize(model.get_layer("ws"))
    config = model.get_layer("ws").get_config()
    assert config["epsilon"] == 1e-3
    assert kerasnorm.WeightStandardizedConv2D.from_config(config).get_config() == config
    model.save(tmp_path / "ws.keras")
    loaded = keras.saving.load_model(tmp_path / "ws.keras")
    assert type(loaded.get_layer("ws")) is kerasnorm.WeightStandardizedConv2D
    assert loaded.get_layer("ws").epsilon == 1e-3
    x = RNG.normal(size=(2, 5, 5, 2)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("ws_type", list(WS_TO_KERAS))
@pytest.mark.parametrize(
    "epsilon,needle", [(0.0, "epsilon=0.0"), (-1e-5, "epsilon=-1e-05"), ("small", "epsilon='small'")]
)
def test_invalid_epsilon_names_the_value(ws_type, epsilon, needle):
    with pytest.raises(ValueError, match=needle):
        ws_type(4, 3, epsilon=epsilon)


def test_fold_refuses_an_unbuilt_model():
    with pytest.raises(ValueError, match="must be built"):
        kerasnorm.fold_weight_standardization(keras.Sequential([kerasnorm.WeightStandardizedConv2D(2, 3)]))
