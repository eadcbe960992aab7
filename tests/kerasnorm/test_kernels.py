"""The fast paths (kernels.py) give the numbers of the reference path (moments.py).

The reference path is the one masked, ghost and renorm calls take; here it is forced by
passing an all-ones mask, which changes no number.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerasnorm
from kerasnorm import kernels

RNG = np.random.default_rng(5)


def assert_close(actual, desired, rel=2e-4):
    """Equal up to `rel` of the tensor's largest magnitude: gradients cancel large terms,
    so their rounding error scales with the tensor, not with each element."""
    actual, desired = np.asarray(actual), np.asarray(desired)
    assert actual.shape == desired.shape
    scale = max(float(np.abs(desired).max()), 1.0)
    np.testing.assert_allclose(actual, desired, rtol=0, atol=rel * scale)


def _grads(layer, x, mask, training, jit):
    @tf.function(jit_compile=jit)
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            kwargs = {"training": training} if isinstance(layer, kerasnorm.BatchNormalization) else {}
            if mask is not None:
                kwargs["mask"] = mask
            y = layer(x, **kwargs)
            loss = tf.reduce_sum(tf.sin(y) * tf.range(1.0, y.shape[-1] + 1.0, dtype=y.dtype))
        return [y] + tape.gradient(loss, [x] + layer.trainable_weights)

    return [t.numpy() for t in step(x)]


@pytest.fixture(params=[True, False], ids=["matmul", "reductions"])
def matmul_statistics(request, monkeypatch):
    """Runs a test with the statistics of `rows_by_matmul` (CPU, exact float32 matmuls)
    and with the reductions taken where matmuls may round (GPUs, oneDNN's bf16 mode)."""
    if not request.param:
        monkeypatch.setattr(kernels, "matmul_exact", lambda: False)
    elif not kernels.matmul_exact():
        pytest.skip("matmuls are not exact float32 here")
    return request.param


def _pair(cls, shape, **kwargs):
    fast, ref = cls(**kwargs), cls(**kwargs)
    for layer in (fast, ref):
        layer.build(shape)
        layer.set_weights([RNG.normal(size=w.shape).astype("float32") ** 2 for w in fast.weights])
    ref.set_weights(fast.get_weights())
    return fast, ref


@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "infer"])
@pytest.mark.parametrize("shape", [(6, 4, 4, 3), (32, 5), (4, 7, 6), (64, 2048)])  # the last: fused kernel
def test_batch_norm_fast_path_matches_reference(shape, training, jit, matmul_statistics):
    x = tf.constant((RNG.normal(size=shape) * 2 + 3).astype("float32"))
    assert kernels.available(x, (len(shape) - 1,), None, False)
    fast, ref = _pair(kerasnorm.BatchNormalization, shape, momentum=0.7)
    ones = tf.ones(shape[:-1], bool)
    for a, b in zip(_grads(fast, x, None, training, jit), _grads(ref, x, ones, training, jit)):
        assert_close(a, b)
    for a, b in zip(fast.weights, ref.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("axis", [-1, [1, 2]])
def test_layer_norm_fast_path_matches_reference(jit, axis, matmul_statistics):
    shape = (3, 5, 8)
    x = (RNG.normal(size=shape) * 2 + 3).astype("float32")
    fast, ref = _pair(kerasnorm.LayerNormalization, shape, axis=axis)
    # float64 inputs take the reference path (moments.py), in float64.
    slow = _grads(ref, tf.constant(x.astype("float64")), None, True, jit)
    for a, b in zip(_grads(fast, tf.constant(x), None, True, jit), slow):
        assert_close(a, b)


@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("shape,groups", [((3, 4, 5, 8), 4), ((6, 8), 2), ((5, 1, 8), 4), ((3, 7, 6), -1)])
def test_group_norm_fast_path_matches_reference(shape, groups, jit, matmul_statistics):
    x = tf.constant((RNG.normal(size=shape) * 2 + 3).astype("float32"))
    fast, ref = _pair(kerasnorm.GroupNormalization, shape, groups=groups)
    ones = tf.ones(shape[:1], bool)  # a mask forces the reference path
    for a, b in zip(_grads(fast, x, None, True, jit), _grads(ref, x, ones, True, jit)):
        assert_close(a, b)


@pytest.mark.parametrize("cls,kwargs", [("LayerNormalization", {}), ("GroupNormalization", {"groups": 2})])
def test_per_sample_fast_path_outside_xla_is_exact_at_a_large_mean(cls, kwargs, matmul_statistics):
    # Mean 1e4 standard deviations: the corrected statistics and the deviations from the
    # first-pass mean keep the output within float32 rounding of the float64 answer.
    x = (1e4 + RNG.normal(size=(8, 16, 8))).astype("float32")
    layer = getattr(kerasnorm, cls)(epsilon=1e-6, **kwargs)
    out = tf.function(layer)(tf.constant(x)).numpy()
    x64 = x.astype(np.float64)
    if cls == "LayerNormalization":
        mu, var = x64.mean(-1, keepdims=True), x64.var(-1, keepdims=True)
        expected = (x64 - mu) / np.sqrt(var + 1e-6)
    else:
        g = x64.reshape(8, 16, 2, 4)
        mu, var = g.mean((1, 3), keepdims=True), g.var((1, 3), keepdims=True)
        expected = ((g - mu) / np.sqrt(var + 1e-6)).reshape(x.shape)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("shape", [(8, 16), (8, 16, 8)])
@pytest.mark.parametrize(
    "cls,kwargs",
    [("LayerNormalization", {}), ("GroupNormalization", {"groups": 2}), ("BatchNormalization", {})],
)
def test_fast_paths_outside_xla_have_exact_gradients_at_a_large_mean(cls, kwargs, shape, matmul_statistics):
    # The closed-form backward works from the deviations of the first-pass mean: at mean
    # 1e4 standard deviations its gradients stay at float32 rounding of the float64 ones.
    x = (1e4 + RNG.normal(size=shape)).astype("float32")
    fast = getattr(kerasnorm, cls)(epsilon=1e-6, **kwargs)
    slow = getattr(kerasnorm, cls)(epsilon=1e-6, dtype="float64", **kwargs)  # moments.py in float64
    for layer in (fast, slow):
        layer.build(shape)
    fast.set_weights([RNG.normal(size=w.shape).astype("float32") ** 2 for w in fast.weights])
    slow.set_weights(fast.get_weights())
    expected = _grads(slow, tf.constant(x, tf.float64), None, True, False)
    for a, b in zip(_grads(fast, tf.constant(x), None, True, False), expected):
        assert a.dtype == np.float32 and b.dtype == np.float64
        assert_close(a, b, rel=1e-5)


@pytest.mark.parametrize("value", ["BF16", "tf32", "ANY"])
@pytest.mark.parametrize("variable", kernels._ONEDNN_FPMATH_VARIABLES)
def test_statistics_leave_matmuls_when_onednn_may_round_them(variable, value, monkeypatch):
    monkeypatch.setenv(variable, value)
    assert not kernels.matmul_exact()
    monkeypatch.setenv(variable, "strict")
    assert kernels.matmul_exact() == (not tf.config.list_logical_devices("GPU"))


@pytest.mark.parametrize("cls,kwargs", [("LayerNormalization", {}), ("GroupNormalization", {"groups": 4})])
def test_per_sample_fast_path_under_xla_computes_as_keras(cls, kwargs):
    shape = (4, 6, 8)
    x = tf.constant((RNG.normal(size=shape) * 2 + 3).astype("float32"))
    ours, theirs = getattr(kerasnorm, cls)(**kwargs), getattr(keras.layers, cls)(**kwargs)
    for layer in (ours, theirs):
        layer.build(shape)
    theirs.set_weights([RNG.normal(size=w.shape).astype("float32") for w in theirs.weights])
    ours.set_weights(theirs.get_weights())
    for a, b in zip(_grads(ours, x, None, True, True), _grads(theirs, x, None, True, True)):
        assert_close(a, b, rel=1e-6)


def test_small_inference_subtracts_the_mean_first_when_it_dwarfs_the_spread():
    # Moving mean 1.6e4 standard deviations: x * a + (beta - mean * a) rounds to 1e-3 here.
    layer = kerasnorm.BatchNormalization(epsilon=1e-6)
    layer.build((64, 8))
    layer.moving_mean.assign(np.full(8, 1e4, "float32"))
    layer.moving_variance.assign(np.full(8, 0.37, "float32"))
    x = (1e4 + 0.6 * RNG.normal(size=(64, 8))).astype("float32")
    out = tf.function(lambda x: layer(x, training=False))(tf.constant(x)).numpy()
    expected = (x.astype(np.float64) - 1e4) / np.sqrt(np.float64(np.float32(0.37)) + 1e-6)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)


def test_fused_kernel_falls_back_when_the_mean_dwarfs_the_spread(matmul_statistics):
    # Mean 1e4 standard deviations: the fused kernel's float32 mean is ~1e-2 off here.
    # Large enough (2**17 elements) for the fused kernel to be chosen.
    x = tf.constant((1e4 + RNG.normal(size=(128, 32, 8, 4))).astype("float32"))
    assert kernels._large(x)
    y, mean, variance = kernels.batch_norm_train(x, tf.ones(4), tf.zeros(4), 1e-6)
    x64 = x.numpy().astype(np.float64)
    mu, var = x64.mean((0, 1, 2)), x64.var((0, 1, 2))
    np.testing.assert_allclose(mean, mu, rtol=0, atol=1e-3)  # float32 spacing at 1e4: 1e-3
    np.testing.assert_allclose(y, (x64 - mu) / np.sqrt(var + 1e-6), atol=2e-3)
