"""Each backend's fast paths (`kerasnorm.kernels.ROUTES`) against the general path
(`moments.py`) and float64 NumPy, under whichever Keras backend runs the tests.

The general path is forced by emptying the backend's routes; a mask, ghost batches,
renorm or float64 inputs must take it without that.
"""

from __future__ import annotations

import contextlib
import warnings

import keras
import numpy as np
import pytest
from keras import ops

import kerasnorm
from kerasnorm import kernels

from tests.kerasnorm.autodiff import layer_gradients

RNG = np.random.default_rng(11)
BACKEND = keras.backend.backend()

# (layer, constructor arguments, input shape): the cases of every route.
CASES = [
    ("BatchNormalization", {}, (6, 4, 4, 3)),
    ("BatchNormalization", {}, (32, 5)),
    ("BatchNormalization", {"scale": False, "center": False}, (4, 7, 6)),
    ("LayerNormalization", {}, (3, 5, 8)),
    ("LayerNormalization", {"axis": [1, 2]}, (3, 5, 8)),
    ("GroupNormalization", {"groups": 4}, (3, 4, 5, 8)),
    ("GroupNormalization", {"groups": 2}, (6, 8)),
    ("GroupNormalization", {"groups": -1}, (3, 7, 6)),
    ("RMSNormalization", {}, (3, 5, 8)),
    ("RMSNormalization", {"axis": [1, 2]}, (3, 5, 8)),
]


def _ids(case):
    name, kwargs, shape = case
    return f"{name.replace('Normalization', '')}-{'-'.join(f'{k}{v}' for k, v in kwargs.items())}-{shape}"


def assert_close(actual, desired, rel=2e-4):
    """Equal up to `rel` of the tensor's largest magnitude: gradients cancel large terms,
    so their rounding error scales with the tensor, not with each element."""
    actual, desired = np.asarray(actual, np.float64), np.asarray(desired, np.float64)
    assert actual.shape == desired.shape
    scale = max(float(np.abs(desired).max()), 1.0)
    np.testing.assert_allclose(actual, desired, rtol=0, atol=rel * scale)


def _layers(name, kwargs, shape, dtype=None):
    """Two layers of class `name` with the same random weights (positive variances)."""
    layers = [getattr(kerasnorm, name)(dtype=dtype, **kwargs) for _ in range(2)]
    for layer in layers:
        layer.build(shape)
    values = [RNG.uniform(0.5, 2.0, size=w.shape).astype("float32") for w in layers[0].weights]
    for layer in layers:
        layer.set_weights(values)
    return layers


def _call_kwargs(layer, training):
    return {"training": training} if isinstance(layer, kerasnorm.BatchNormalization) else {}


@contextlib.contextmanager
def _general_path(monkeypatch):
    """A context in which the backend has no route: every layer takes `moments.py`."""
    with monkeypatch.context() as m:
        m.setitem(kernels.ROUTES, BACKEND, {})
        yield


@pytest.fixture
def calls(monkeypatch):
    """Counts the calls of each of this backend's routes (which keep working)."""
    counts = {}
    for kernel, route in list(kernels.ROUTES.get(BACKEND, {}).items()):

        def counted(*args, _kernel=kernel, _route=route):
            counts[_kernel] = counts.get(_kernel, 0) + 1
            return _route(*args)

        monkeypatch.setitem(kernels.ROUTES[BACKEND], kernel, counted)
    return counts


def _gradients(layer, x, g, **kwargs):
    """`layer_gradients`, compiled once under JAX (op by op, each new shape of each
    operation compiles on its own: several times slower here)."""
    if BACKEND != "jax":
        return layer_gradients(layer, x, g, **kwargs)
    import jax

    state = [v.value for v in layer.non_trainable_weights]

    @jax.jit
    def grads(x_, values):
        def loss(x_, values):
            return (layer.stateless_call(values, state, x_, **kwargs)[0] * g).sum()

        return jax.grad(loss, argnums=(0, 1))(x_, values)

    dx, dw = grads(x, [w.value for w in layer.trainable_weights])
    return [np.asarray(dx)] + [np.asarray(t) for t in dw]


def _forward(layer, x, **kwargs):
    """`layer(x, **kwargs)` as NumPy, the moving statistics updated; compiled under JAX."""
    if BACKEND != "jax":
        return ops.convert_to_numpy(layer(x, **kwargs))
    import jax

    trainable = [v.value for v in layer.trainable_weights]
    state = [v.value for v in layer.non_trainable_weights]
    y, state = jax.jit(lambda x_, state_: layer.stateless_call(trainable, state_, x_, **kwargs))(x, state)
    for variable, value in zip(layer.non_trainable_weights, state):
        variable.assign(value)
    return np.asarray(y)


def _run(layer, x, training):
    """Output, the gradients of x and of the trainable weights, then the weights before
    and after a forward call (the moving statistics of batch norm updated when
    `training`)."""
    kwargs = _call_kwargs(layer, training)
    g = np.cos(np.arange(x.size, dtype=np.float64)).reshape(x.shape).astype(x.dtype)
    grads = _gradients(layer, x, g, **kwargs)
    # On some backends the gradient pass updates the statistics once already.
    before = [ops.convert_to_numpy(w) for w in layer.weights]
    y = _forward(layer, x, **kwargs)
    after = [ops.convert_to_numpy(w) for w in layer.weights]
    return [y] + grads, before, after


@pytest.mark.parametrize(
    "case,training",
    [(c, True) for c in CASES] + [(c, False) for c in CASES if c[0] == "BatchNormalization"],
    ids=[_ids(c) for c in CASES] + [_ids(c) + "-inference" for c in CASES if c[0] == "BatchNormalization"],
)
def test_fast_path_gives_the_numbers_of_the_general_path(case, training, monkeypatch, calls):
    name, kwargs, shape = case
    x = (RNG.normal(size=shape) * 2 + 3).astype("float32")
    fast, general = _layers(name, kwargs, shape)
    fast_out, fast_before, fast_after = _run(fast, x, training)
    with _general_path(monkeypatch):
        general_out, general_before, general_after = _run(general, x, training)
    if BACKEND == "tensorflow" and name == "RMSNormalization":
        assert not calls  # no TensorFlow route: the general path ran both times
    else:
        assert sum(calls.values()) >= 2
    for a, b in zip(fast_out, general_out):
        assert_close(a, b)
    for a, b in zip(fast_before + fast_after, general_before + general_after):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", [c for c in CASES if c[0] in ("BatchNormalization", "GroupNormalization")], ids=_ids)
def test_masked_inputs_take_the_general_path_and_are_right(case, calls):
    name, kwargs, shape = case
    x = (RNG.normal(size=shape) * 2 + 3).astype("float32")
    mask = np.ones(shape[:2] if len(shape) > 2 else shape[:1], bool)
    mask[-1] = False
    (layer, _) = _layers(name, kwargs, shape)
    training = {"training": True} if name == "BatchNormalization" else {}
    y = _forward(layer, x, mask=mask, **training)
    assert not calls.get("batch_norm_train") and not calls.get("group_norm")
    # The valid samples: normalized with statistics that leave the masked one out.
    gamma = ops.convert_to_numpy(layer.gamma).astype(np.float64) if layer.scale else 1.0
    beta = ops.convert_to_numpy(layer.beta).astype(np.float64) if layer.center else 0.0
    if name == "BatchNormalization":
        valid = x[:-1].reshape(-1, shape[-1]).astype(np.float64)
        mean, var = valid.mean(0), valid.var(0)
        expected = gamma * (x[:-1] - mean) / np.sqrt(var + layer.epsilon) + beta
    else:
        groups = shape[-1] if kwargs["groups"] == -1 else kwargs["groups"]
        g = x[:-1].astype(np.float64).reshape(x[:-1].shape[:1] + (-1, groups, shape[-1] // groups))
        mean, var = g.mean((1, 3), keepdims=True), g.var((1, 3), keepdims=True)
        expected = (((g - mean) / np.sqrt(var + layer.epsilon)).reshape(x[:-1].shape)) * gamma + beta
    np.testing.assert_allclose(y[:-1], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "name,kwargs,call",
    [
        ("BatchNormalization", {"virtual_batch_size": 4}, {"training": True}),
        ("BatchNormalization", {"renorm": True}, {"training": True}),
        ("BatchNormalization", {"inference_weight": 0.25}, {"training": False}),
        ("BatchNormalization", {"axis": 1}, {"training": True}),
        pytest.param(
            "BatchNormalization", {"dtype": "float64"}, {"training": True},
            marks=pytest.mark.skipif(BACKEND == "jax", reason="JAX computes float64 in float32 by default"),
        ),
        ("LayerNormalization", {"axis": 1}, {}),
        ("LayerNormalization", {"rms_scaling": True}, {}),
        ("GroupNormalization", {"groups": 2, "axis": 1}, {}),
        ("RMSNormalization", {"axis": 1}, {}),
    ],
)
def test_other_cases_take_the_general_path(name, kwargs, call, calls):
    x = (RNG.normal(size=(8, 4, 6)) * 2 + 3).astype("float32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rms_scaling's deprecation
        layer = getattr(kerasnorm, name)(**kwargs)
    layer.build(x.shape)
    y = _forward(layer, x, **call)
    assert np.isfinite(y).all()
    assert not calls


@pytest.mark.parametrize("case", [c for c in CASES if c[2] == (3, 5, 8) or c[0] == "BatchNormalization"], ids=_ids)
def test_float16_inputs_take_the_fast_path_with_float32_statistics(case, monkeypatch, calls):
    name, kwargs, shape = case
    x = (RNG.normal(size=shape) * 2 + 3).astype("float16")
    fast, general = _layers(name, kwargs, shape, dtype="mixed_float16")
    training = {"training": True} if name == "BatchNormalization" else {}
    y_fast = _forward(fast, x, **training)
    with _general_path(monkeypatch):
        y_general = _forward(general, x, **training)
    assert y_fast.dtype == np.float16
    if not (BACKEND == "tensorflow" and name == "RMSNormalization"):
        assert calls
    # float16 outputs: equal to within one rounding of the result.
    np.testing.assert_allclose(y_fast.astype(np.float32), y_general.astype(np.float32), rtol=2e-3, atol=2e-3)
    for a, b in zip(fast.weights, general.weights):
        assert keras.backend.standardize_dtype(a.dtype) == "float32"
        np.testing.assert_allclose(ops.convert_to_numpy(a), ops.convert_to_numpy(b), rtol=1e-5, atol=1e-6)


def _bounds(name, mean, factor):
    """`(output factor, output floor, gradient factor, gradient floor)`: a fast path's
    error may be the general path's times the factor, plus the floor (the gradient's
    relative to its largest magnitude). The floors are float32 rounding: a few ulps of
    the unit-scale output; for the gradients, sums over thousands of terms. Two routes
    trade exactness for speed (`kerasnorm.kernels` says why) and keep looser bounds."""
    if BACKEND == "jax" and name in ("BatchNormalization", "GroupNormalization") and mean > 1e3:
        # Keras's form, x * a + (beta - mean * a): with a mean far beyond the spread the
        # output rounds to about twice the general path's error, the gradients like
        # Keras's own layer's.
        return 2.0, 1e-6, factor, 2e-4
    if BACKEND == "torch" and name == "BatchNormalization":
        # PyTorch's kernel accumulates in float32: about 1e-5 of the output, any mean.
        return factor, 3e-5, factor, 1e-5
    return factor, 1e-6, factor, 3e-6


def _float64_reference(name, kwargs, x, g, epsilon):
    """Float64 output of a layer with unit weights (training mode for batch norm) and the
    gradient of `sum(output * g)` with respect to `x`."""
    x, g = x.astype(np.float64), g.astype(np.float64)
    view = x
    if name == "BatchNormalization":
        axes = tuple(range(x.ndim - 1))
    elif name == "GroupNormalization":
        groups = kwargs["groups"]
        view = x.reshape(x.shape[:-1] + (groups, x.shape[-1] // groups))
        axes = tuple(range(1, view.ndim - 2)) + (view.ndim - 1,)
    else:
        axes = tuple(range(x.ndim - (2 if kwargs.get("axis") == [1, 2] else 1), x.ndim))
    g = g.reshape(view.shape)
    if name == "RMSNormalization":
        inv = 1.0 / np.sqrt((view * view).mean(axes, keepdims=True) + epsilon)
        x_hat = view * inv
        dx = inv * (g - x_hat * (g * x_hat).mean(axes, keepdims=True))
    else:
        inv = 1.0 / np.sqrt(view.var(axes, keepdims=True) + epsilon)
        x_hat = (view - view.mean(axes, keepdims=True)) * inv
        dx = inv * (g - g.mean(axes, keepdims=True) - x_hat * (g * x_hat).mean(axes, keepdims=True))
    return x_hat.reshape(x.shape), dx.reshape(x.shape)


@pytest.mark.parametrize(
    "mean,factor",
    # 1e4 standard deviations: the float32 mean alone rounds to 5e-4 of the spread, and
    # the fast paths must do no worse. 20: within the limit up to which PyTorch's kernels
    # compute x * a + (beta - mean * a), which rounds up to a few times more.
    [(1e4, 1.05), (20.0, 3.0)],
    ids=["mean1e4", "mean20"],
)
@pytest.mark.parametrize(
    "name,kwargs,shape",
    [
        ("BatchNormalization", {}, (512, 8, 16)),
        ("LayerNormalization", {}, (16, 8, 512)),
        ("LayerNormalization", {"axis": [1, 2]}, (16, 32, 64)),
        ("GroupNormalization", {"groups": 4}, (8, 256, 32)),
        ("RMSNormalization", {}, (16, 8, 512)),
    ],
)
def test_fast_path_is_as_exact_as_the_general_path_at_a_large_mean(name, kwargs, shape, mean, factor, monkeypatch, calls):
    x = (mean + RNG.normal(size=shape)).astype("float32")
    fast = getattr(kerasnorm, name)(epsilon=1e-6, **kwargs)
    general = getattr(kerasnorm, name)(epsilon=1e-6, **kwargs)
    fast.build(shape)
    general.build(shape)
    training = {"training": True} if name == "BatchNormalization" else {}
    g = np.cos(np.arange(x.size, dtype=np.float64)).reshape(x.shape).astype("float32")
    y_fast = _forward(fast, x, **training)
    dx_fast = _gradients(fast, x, g, **training)[0]
    with _general_path(monkeypatch):
        y_general = _forward(general, x, **training)
        dx_general = _gradients(general, x, g, **training)[0]
    if not (BACKEND == "tensorflow" and name == "RMSNormalization"):
        assert calls
    y, dx = _float64_reference(name, kwargs, x, g, 1e-6)
    output_factor, output_floor, gradient_factor, gradient_floor = _bounds(name, mean, factor)
    checks = (
        (y_fast, y_general, y, output_factor, output_floor),
        (dx_fast, dx_general, dx, gradient_factor, gradient_floor * np.abs(dx).max()),
    )
    for fast_value, general_value, exact, bound, floor in checks:
        error_fast = np.abs(fast_value - exact).max()
        error_general = np.abs(general_value - exact).max()
        assert error_fast <= bound * error_general + floor
    if name == "BatchNormalization":
        moving_mean = ops.convert_to_numpy(fast.moving_mean)
        np.testing.assert_allclose(moving_mean, ops.convert_to_numpy(general.moving_mean), rtol=1e-6)


@pytest.mark.parametrize("shape", [(1, 6), (1, 1, 1, 6)])
def test_batch_norm_of_one_value_per_feature_trains(shape):
    # PyTorch's kernel refuses it; the variance is zero and the output beta.
    layer = kerasnorm.BatchNormalization(momentum=0.5, beta_initializer="ones")
    x = RNG.normal(size=shape).astype("float32")
    y = ops.convert_to_numpy(layer(x, training=True))
    np.testing.assert_allclose(y, np.ones(shape), atol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(layer.moving_mean), 0.5 * x.reshape(6), rtol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(layer.moving_variance), 0.5 * np.ones(6), rtol=1e-6)


def test_batch_statistics_that_are_not_finite_leave_the_moving_statistics(calls):
    layer = kerasnorm.BatchNormalization(momentum=0.5)
    x = RNG.normal(size=(16, 4)).astype("float32")
    x[3, 1] = np.nan
    layer(x, training=True)
    assert calls.get("batch_norm_train") == 1
    mean = ops.convert_to_numpy(layer.moving_mean)
    assert mean[1] == 0.0 and np.all(mean[[0, 2, 3]] != 0.0)
    assert np.isfinite(ops.convert_to_numpy(layer.moving_variance)).all()


def test_large_moving_mean_at_inference_is_exact():
    # Moving mean 1.6e4 standard deviations: x * a + (beta - mean * a) would round to 1e-3.
    layer = kerasnorm.BatchNormalization(epsilon=1e-6)
    layer.build((64, 8))
    layer.moving_mean.assign(np.full(8, 1e4, "float32"))
    layer.moving_variance.assign(np.full(8, 0.37, "float32"))
    x = (1e4 + 0.6 * RNG.normal(size=(64, 8))).astype("float32")
    y = ops.convert_to_numpy(layer(x, training=False))
    expected = (x.astype(np.float64) - 1e4) / np.sqrt(np.float64(np.float32(0.37)) + 1e-6)
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-5)
