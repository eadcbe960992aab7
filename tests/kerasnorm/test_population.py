"""kerasnorm.recalibrate: exact population statistics against a float64 NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import keras

import kerasnorm

RNG = np.random.default_rng(5)


def _two_bn_model(estimator="biased"):
    """Dense -> kerasnorm BN -> relu -> Dense -> Keras BN, with non-trivial weights."""
    inputs = keras.Input((4,))
    h = keras.layers.Dense(6, name="dense1")(inputs)
    h = kerasnorm.BatchNormalization(name="bn1", moving_variance_estimator=estimator, gamma_initializer="random_normal")(h)
    h = keras.layers.Dense(3, name="dense2")(keras.layers.ReLU()(h))
    outputs = keras.layers.BatchNormalization(name="bn2")(h)
    return keras.Model(inputs, outputs)


def _reference(model, x, unbiased=False):
    """Float64: bn1's population statistics, then bn2's over inputs computed with them."""
    x = np.asarray(x, np.float64)
    w = {l.name: [np.asarray(v, np.float64) for v in l.weights] for l in model.layers}
    z1 = x @ w["dense1"][0] + w["dense1"][1]
    n = len(x)
    mean1, var1 = z1.mean(0), z1.var(0) * (n / (n - 1) if unbiased else 1.0)
    gamma, beta = w["bn1"][0], w["bn1"][1]
    h = np.maximum((z1 - mean1) / np.sqrt(var1 + 1e-3) * gamma + beta, 0.0)
    z2 = h @ w["dense2"][0] + w["dense2"][1]
    return {"bn1": (mean1, var1), "bn2": (z2.mean(0), z2.var(0))}


def _assert_statistics(model, expected, rtol=1e-5):
    for name, (mean, var) in expected.items():
        layer = model.get_layer(name)
        np.testing.assert_allclose(layer.moving_mean, mean, rtol=rtol, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(layer.moving_variance, var, rtol=rtol, atol=1e-6, err_msg=name)


def test_matches_reference_layer_by_layer_and_reports_changes():
    model = _two_bn_model()
    x = (RNG.normal(size=(50, 4)) * 2 + 1).astype("float32")
    old = {n: (np.asarray(model.get_layer(n).moving_mean), np.asarray(model.get_layer(n).moving_variance)) for n in ("bn1", "bn2")}
    summary = kerasnorm.recalibrate(model, x, batch_size=7)
    expected = _reference(model, x)
    _assert_statistics(model, expected)

    assert list(summary["layer"]) == ["bn1", "bn2"]
    assert list(summary["count"]) == [50, 50]
    row = summary.set_index("layer").loc["bn2"]
    change = np.abs(expected["bn2"][1] - old["bn2"][1])
    np.testing.assert_allclose(row["variance_max_abs_change"], change.max(), rtol=1e-5)
    np.testing.assert_allclose(row["variance_mean_abs_change"], change.mean(), rtol=1e-5)
    np.testing.assert_allclose(row["mean_max_abs_change"], np.abs(expected["bn2"][0]).max(), rtol=1e-5)
    np.testing.assert_allclose(row["variance_max_rel_change"], (change / old["bn2"][1]).max(), rtol=1e-5)


class _Batches:
    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


def test_every_data_form_and_batch_size_gives_the_same_statistics():
    x = (RNG.normal(size=(30, 4)) * 3 - 2).astype("float32")
    y = np.zeros((30, 1))
    forms = {
        "tuple": ((x, y), 8),
        "dataset": (tf.data.Dataset.from_tensor_slices((x, y)).batch(11), None),
        "generator": ((x[i : i + 4] for i in range(0, 30, 4)), None),
        "re-iterable of (x, y) batches": (_Batches([(x[:13], y[:13]), (x[13:], y[13:])]), None),
    }
    model = _two_bn_model()
    expected = _reference(model, x)
    for name, (data, batch_size) in forms.items():
        model.get_layer("bn1").moving_mean.assign(np.full(6, 5.0))
        kerasnorm.recalibrate(model, data, batch_size=batch_size or 32)
        _assert_statistics(model, expected)


def test_unbiased_estimator_and_steps():
    model = _two_bn_model(estimator="unbiased")
    x = RNG.normal(size=(40, 4)).astype("float32")
    kerasnorm.recalibrate(model, x, batch_size=10, steps=2)  # the first 20 samples only
    _assert_statistics(model, _reference(model, x[:20], unbiased=True))


def test_masked_positions_never_count_for_either_layer_type():
    tokens = RNG.integers(1, 9, size=(5, 6))
    tokens[0, 2:] = 0
    tokens[3, 4:] = 0
    inputs = keras.Input((6,), dtype="int32")
    e = keras.layers.Embedding(9, 3, mask_zero=True, name="embedding")(inputs)
    ours, theirs = kerasnorm.BatchNormalization(name="bn1")(e), keras.layers.BatchNormalization(name="bn2b")(e)
    model = keras.Model(inputs, [ours, theirs])
    kerasnorm.recalibrate(model, tokens, batch_size=2)
    table = np.asarray(model.get_layer("embedding").embeddings, np.float64)
    valid = table[tokens[tokens > 0]]
    for name in ("bn1", "bn2b"):
        np.testing.assert_allclose(model.get_layer(name).moving_mean, valid.mean(0), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(model.get_layer(name).moving_variance, valid.var(0), rtol=1e-5)


def test_nested_sequential_conv_and_layer_subset():
    inner = keras.Sequential(
        [keras.Input((5, 5, 2)), keras.layers.Conv2D(3, 3, name="conv"), keras.layers.BatchNormalization(name="inner_bn")],
        name="inner",
    )
    inputs = keras.Input((5, 5, 2))
    h = inner(inputs)
    outputs = kerasnorm.BatchNormalization(name="outer_bn")(keras.layers.Flatten()(h))
    model = keras.Model(inputs, outputs)
    x = RNG.normal(size=(9, 5, 5, 2)).astype("float32")

    before = np.asarray(model.get_layer("outer_bn").moving_mean).copy()
    summary = kerasnorm.recalibrate(model, x, batch_size=4, layers=["inner_bn"])
    assert list(summary["layer"]) == ["inner_bn"]
    np.testing.assert_array_equal(model.get_layer("outer_bn").moving_mean, before)
    conv = np.asarray(inner.get_layer("conv")(x), np.float64)
    bn = inner.get_layer("inner_bn")
    np.testing.assert_allclose(bn.moving_mean, conv.mean((0, 1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance, conv.var((0, 1, 2)), rtol=1e-5)
    assert int(summary["count"][0]) == 9 * 3 * 3


def test_a_shared_layer_takes_every_call():
    bn = kerasnorm.BatchNormalization(name="shared")
    a, b = keras.Input((2,)), keras.Input((2,))
    model = keras.Model([a, b], [bn(a), bn(b)])
    xa, xb = RNG.normal(size=(6, 2)), RNG.normal(size=(6, 2)) + 4
    kerasnorm.recalibrate(model, [xa, xb], batch_size=4)
    both = np.concatenate([xa, xb])
    np.testing.assert_allclose(bn.moving_mean, both.mean(0), rtol=1e-5)
    np.testing.assert_allclose(bn.moving_variance, both.var(0), rtol=1e-5)


def test_renorm_layer_keeps_its_stddev_consistent():
    inputs = keras.Input((3,))
    bn = kerasnorm.BatchNormalization(renorm=True)
    model = keras.Model(inputs, bn(inputs))
    x = RNG.normal(size=(20, 3)) * 2
    kerasnorm.recalibrate(model, x)
    np.testing.assert_allclose(bn.moving_stddev, np.sqrt(x.var(0) + bn.epsilon), rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"batch_size": 0}, "batch_size=0"),
        ({"steps": 0}, "steps=0"),
        ({"layers": ["dense1"]}, "'dense1'"),
        ({"layers": "bn1"}, "layers='bn1'"),
        ({"data": np.zeros((0, 4), "float32")}, "no batch"),
        ({"data": tf.data.Dataset.from_tensors(np.zeros((2, 4), "float32")).repeat()}, "steps"),
        ({"data": 3}, "int"),
    ],
)
def test_invalid_arguments_name_the_value(kwargs, needle):
    model = _two_bn_model()
    args = {"data": np.zeros((4, 4), "float32"), **kwargs}
    with pytest.raises(ValueError, match=needle):
        kerasnorm.recalibrate(model, **args)


def test_unbuilt_model_is_refused():
    with pytest.raises(ValueError, match="built"):
        kerasnorm.recalibrate(keras.Sequential([keras.layers.BatchNormalization()]), np.zeros((2, 3)))
