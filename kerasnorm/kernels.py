"""Fast paths for the commonest case: one feature axis (or, for layer and RMS norm, one
block of trailing axes), no mask, one replica, float32 (half-precision inputs reach here
already cast to float32 by the layers, and their outputs are cast back).

One place chooses per backend: `ROUTES` maps each backend to the function that runs each
normalization there (`batch_norm_train`, `batch_norm_inference`, `layer_norm`,
`group_norm`, `rms_norm`); `available()` tells a layer whether its case and backend have
one, and the public functions of the same names dispatch through it. A case without a
route (a mask, ghost batches, renorm, a cross-replica reduction, float64, a backend or a
normalization missing from `ROUTES`) takes the general path of `moments.py`, which the
fast paths reproduce: float32 statistics, biased variance, epsilon inside the square
root, and a mean as exact as the general path's even when it is large against the
spread. Tests check every route against `moments.py` and Keras, on its backend.

TensorFlow (`_tensorflow_*`). The maths is that of `moments.py` (two passes with
correction, subtract-the-mean-first normalization), except for training statistics under
XLA (the plain two pass, see `plain_normalize`); what changes is how many passes over the
data the backend makes.

- `closed_form_normalize`: statistics over rows or columns of a 2-D view, with the
  closed-form backward pass of Ioffe & Szegedy (2015) through `tf.custom_gradient`
  instead of differentiating each elementwise op, outside XLA on small tensors; where
  float32 matmuls are exact (`matmul_exact`) the same maths with every sum over the rows
  a matmul (`columns_by_matmul`).
- Layer norm and group norm outside XLA: the corrected two pass and a closed-form
  backward (`per_sample_closed_form`) on a `(rows, positions, groups, channels)` view;
  for rows of one position (layer norm, group norm of dense inputs), every sum a matmul
  (`rows_by_matmul`) where float32 matmuls are exact.
- Under XLA, layer norm, group norm and batch norm in training: the plain two pass
  (`plain_normalize`), which XLA fuses and differentiates faster than anything written
  around it.
- Batch norm in training outside XLA, on large tensors: TensorFlow's fused batch-norm
  kernel, which reads the input twice forward and twice backward. Its float32 mean
  accumulates rounding of order 1e-7 times the mean; when the mean is large against the
  spread (over `_FUSED_MAX_MEAN_TO_STD` standard deviations) that error becomes visible
  in the output, and the closed form (corrected two-pass) runs instead.
- RMS normalization has no TensorFlow route: the general path runs.

JAX (`_two_pass_*`, written with `keras.ops`, which are `jax.numpy` there), always
compiled by XLA: two passes that XLA fuses with their elementwise producers, the first a
mean of the deviations from one sample of each reduction (`sample_shift`), as exact as
the corrected two pass of `moments.py`, which reads the input a third time; the second
the mean squared deviation from that mean. The output takes the form XLA runs fastest
with its backward pass, which differs with the reduction (measured against Keras's form,
forward and backward, on the bench's shapes):

- batch and group norm: Keras's form `x * a + (beta - mean * a)`, `a = rsqrt(var + eps)
  * gamma` (0.8 to 1.05x). A form from the deviations, `(x - s) * a + ...`, would keep
  the output and gradients exact at any mean, but XLA's CPU reductions then take the
  deviations as a tensor of their own, one more pass over the data (1.3 to 1.7x); in
  Keras's form the output rounds to about `1e-7 * |mean| / std`, twice the general
  path's (which subtracts a float32 mean), and the gradients like Keras's layer's.
- layer norm: `(d - mean(d)) * rsqrt(var + eps) * gamma + beta` from the deviations `d`,
  exact at any mean (0.45 to 0.85x: XLA fuses this product, whose factors broadcast
  apart, better into the backward pass than Keras's full-size multiplier).
- RMS normalization: Keras's form, `x * rsqrt(mean(x**2) + eps) * scale`; the general
  path's full-size multiplier took 2.2x its time.

PyTorch (`_torch_*`), run eagerly: PyTorch's fused kernels, which read the input once or
twice each way where a composition of elementwise operations reads it a dozen times:
`F.batch_norm` (training: its statistics returned through running buffers of momentum
1, the unbiased variance scaled back to the biased one), `F.layer_norm`
(`torch.native_layer_norm`, which returns its statistics), `F.group_norm`
(`torch.native_group_norm`) and `F.rms_norm` (measured, one thread, forward and backward
against Keras's layers: batch norm 0.4 to 0.6x, group norm 0.6 to 0.85x, layer and RMS
norm Keras's own kernels).

- Group norm gets the channels first and contiguous, copied there: for channels-last
  inputs PyTorch's CPU kernel accumulates the sum of squares in float32 (no significant
  digit left at a mean 1000 standard deviations), for contiguous ones it uses Welford's
  algorithm.
- Batch norm runs on the input minus its first row: PyTorch's kernel for features last
  accumulates in float32 row after row, and the shift keeps its error at about 1e-5 of
  the output whatever the mean (the general path's: 1e-6 at a small mean, 5e-4 at 1e4
  standard deviations). Exact statistics cost more than the kernel saves: its
  channels-first path (double accumulators) needs two transposing copies, 1.2 to 1.3x
  Keras's time.
- Layer and group norm and batch norm in inference compute `x * a + b'` with `b' = beta
  - mean * a`, which cancels when the mean is large against the spread
  (`_torch_ill_conditioned`): where a mean exceeds `_FUSED_MAX_MEAN_TO_STD` standard
  deviations the kernel runs again on the input minus one sample of each reduction
  (`sample_shift`), or inference subtracts the mean first. Below that limit their
  rounding stays within a few times the general path's (tested at 20).
"""

from __future__ import annotations

import keras
import numpy as np

from kerasnorm import moments

_FUSED_MAX_MEAN_TO_STD = 30.0
#: The fused kernel has a fixed cost of a few hundred microseconds on CPU; below about
#: 2**17 elements the closed form is faster (measured: (256, 100) 0.6 ms closed form vs
#: 1.2 ms fused; (1024, 256) 3.3 ms vs 1.8 ms).
_FUSED_MIN_ELEMENTS = 2**17
#: At inference the fused kernel is one pass against the plain form's three, but its
#: fixed cost repays only from about 2**18 elements (measured, tf.function: (256, 512)
#: 1.24x Keras's time fused vs 1.00x plain; (1024, 512) 0.88x vs 1.13x).
_FUSED_INFERENCE_MIN_ELEMENTS = 2**18
#: When the batch size is unknown at trace time, decide on the elements per sample.
_FUSED_MIN_ELEMENTS_PER_SAMPLE = 4096


def available(inputs, feature_axes, weights, synchronized, trailing_block=False, kernel=None):
    """True when a fast path applies: the backend has a route for `kernel` (a key of
    `ROUTES`; None: any of the backend's routes, as batch norm asks, which needs both its
    training and inference routes), float32 inputs, no mask (`weights` None), no
    cross-replica reduction, and `feature_axes` the last axis (or, with `trailing_block`,
    any block of trailing axes: layer norm over (positions, channels) flattens them).

    With `synchronized`, the routes apply only where the batch is not split across
    replicas (`moments._replica_sum` is None): otherwise the general path makes the
    reduction across them."""
    routes = ROUTES.get(keras.backend.backend())
    if not routes or (kernel is not None and kernel not in routes) or weights is not None:
        return False
    ndim = len(inputs.shape)
    axes = tuple(feature_axes)
    if trailing_block:
        if not axes or axes != tuple(range(ndim - len(axes), ndim)):
            return False
    elif axes != (ndim - 1,):
        return False
    if any(inputs.shape[a] is None for a in axes):
        return False
    if keras.backend.standardize_dtype(inputs.dtype) != "float32":
        return False
    if synchronized and moments._replica_sum() is not None:
        return False
    return True


def _route(kernel):
    return ROUTES[keras.backend.backend()][kernel]


def batch_norm_train(x, gamma, beta, epsilon):
    """Training-mode batch norm of float32 `x` over every axis but the last.

    `gamma`/`beta` are `(C,)` tensors (ones/zeros when the layer has none). Returns
    `(y, mean, variance)` with `mean`/`variance` of shape `(C,)`, biased and without
    gradient (they feed the moving averages only)."""
    return _route("batch_norm_train")(x, gamma, beta, epsilon)


def batch_norm_inference(x, mean, variance, gamma, beta, epsilon):
    """Inference-mode batch norm of float32 `x` (features last) with the given `(C,)`
    statistics."""
    return _route("batch_norm_inference")(x, mean, variance, gamma, beta, epsilon)


def layer_norm(x, gamma, beta, epsilon, num_axes=1):
    """Layer norm of float32 `x` over its last `num_axes` axes; `gamma`/`beta` have the
    shape of those axes."""
    return _route("layer_norm")(x, gamma, beta, epsilon, num_axes)


def group_norm(x, gamma, beta, epsilon, groups):
    """Group norm of float32 `x` (channels last) with `groups` groups; `gamma`/`beta`
    have shape `(channels,)`."""
    return _route("group_norm")(x, gamma, beta, epsilon, groups)


def rms_norm(x, scale, epsilon, num_axes=1):
    """RMS norm of float32 `x` over its last `num_axes` axes, `x * rsqrt(mean(x**2) +
    epsilon) * scale`; `scale` has the shape of those axes."""
    return _route("rms_norm")(x, scale, epsilon, num_axes)


def in_xla():
    """True while tracing a function that XLA will compile (`jit_compile=True`)."""
    import tensorflow as tf
    from tensorflow.python.ops import control_flow_util

    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def closed_form_normalize(x, gamma, beta, epsilon, stat_axes):
    """Normalizes float32 `x` over `stat_axes` (a tuple); `gamma` and `beta` broadcast
    against `x` with the same rank (size 1 on the axes they do not span).

    Returns `(y, mean, variance)` with the reduced axes kept. Gradients flow to `x`,
    `gamma` and `beta` through the closed form
    `dx = inv * (g - mean(g) - x_hat * mean(g * x_hat))` with `g = dy * gamma` and the
    means over `stat_axes`; the returned statistics carry no gradient (they feed moving
    averages only).
    """
    import tensorflow as tf

    param_axes = [a for a in range(len(x.shape)) if gamma.shape[a] == 1]

    @tf.custom_gradient
    def _normalize(x, gamma, beta):
        shift = tf.reduce_mean(x, axis=stat_axes, keepdims=True)
        deviation = x - shift
        first = tf.reduce_mean(deviation, axis=stat_axes, keepdims=True)
        second = tf.reduce_mean(tf.square(deviation), axis=stat_axes, keepdims=True)
        mean = shift + first
        variance = tf.maximum(second - tf.square(first), 0.0)
        inv = tf.math.rsqrt(variance + epsilon)
        # From the deviations: x - mean would round to the spacing of float32 at the mean.
        x_hat = (deviation - first) * inv
        y = x_hat * gamma + beta

        def grad(dy, *_unused_statistics_grads):
            g = dy * gamma
            mean_g = tf.reduce_mean(g, axis=stat_axes, keepdims=True)
            mean_gx = tf.reduce_mean(g * x_hat, axis=stat_axes, keepdims=True)
            dx = inv * (g - mean_g - x_hat * mean_gx)
            dgamma = tf.reduce_sum(dy * x_hat, axis=param_axes, keepdims=True)
            dbeta = tf.reduce_sum(dy, axis=param_axes, keepdims=True)
            return dx, tf.reshape(dgamma, tf.shape(gamma)), tf.reshape(dbeta, tf.shape(beta))

        return (y, mean, variance), grad

    return _normalize(x, gamma, beta)


def _closed_form_over_rows(x2, gamma, beta, epsilon):
    """Batch norm of a 2-D `x2` over its rows; statistics of shape `(columns,)`."""
    if matmul_exact():
        return columns_by_matmul(x2, gamma, beta, epsilon)
    y, mean, variance = closed_form_normalize(x2, gamma[None], beta[None], epsilon, (0,))
    return y, mean[0], variance[0]


def columns_by_matmul(x2, gamma, beta, epsilon):
    """Batch norm of float32 `x2`, shape `(rows, columns)`, over its rows: the maths of
    `closed_form_normalize` with every sum over the rows a product with a row of ones,
    which TensorFlow's CPU kernels run faster than a reduction (see `rows_by_matmul`;
    measured, training (128, 256): 0.85x the time of the closed form with reductions).
    `gamma`/`beta` have shape `(columns,)`; returns `(y, mean, variance)`, the
    statistics of shape `(columns,)` and without gradient. Where `matmul_exact()`.
    """
    import tensorflow as tf

    @tf.custom_gradient
    def _normalize(x2, gamma, beta):
        ones = tf.ones((1, tf.shape(x2)[0]))
        n = tf.cast(tf.shape(x2)[0], tf.float32)

        def column_sum(t):
            return tf.matmul(ones, t)

        shift = column_sum(x2) / n
        d = x2 - shift
        first = column_sum(d) / n
        variance = tf.maximum(column_sum(tf.square(d)) / n - tf.square(first), 0.0)
        inv = tf.math.rsqrt(variance + epsilon)
        a = inv * gamma
        # (d - first) * a + beta with one pass fewer: d and first are small against
        # the spread, nothing cancels.
        y = d * a + (beta - first * a)
        statistics = (tf.reshape(shift + first, (-1,)), tf.reshape(variance, (-1,)))

        def grad(dy, *_unused_statistics_grads):
            q = column_sum(dy)
            p = column_sum(dy * d)
            # mean(g) and inv**2 * mean(g * x_hat), g = dy * gamma, over the rows
            mean_g = q * gamma / n
            b = inv * inv * a * (p - first * q) / n
            dx = dy * a - (d * b + (inv * mean_g - b * first))
            dgamma = inv * (p - first * q)
            return dx, tf.reshape(dgamma, (-1,)), tf.reshape(q, (-1,))

        return (y,) + statistics, grad

    return _normalize(x2, gamma, beta)


def _fused(x2, gamma, beta, epsilon):
    import tensorflow as tf

    x4 = tf.reshape(x2, (1, 1, -1, tf.shape(x2)[-1]))
    y, mean, unbiased = tf.compat.v1.nn.fused_batch_norm(
        x4, gamma, beta, epsilon=epsilon, is_training=True
    )
    # The kernel returns the Bessel-corrected variance; the layers want the biased one.
    n = tf.cast(tf.shape(x2)[0], tf.float32)
    variance = unbiased * ((n - 1.0) / tf.maximum(n, 1.0))
    return tf.reshape(y, tf.shape(x2)), tf.stop_gradient(mean), tf.stop_gradient(variance)


def _tensorflow_batch_norm_train(x, gamma, beta, epsilon):
    """Training-mode batch norm of float32 `x` over every axis but the last.

    `gamma`/`beta` are `(C,)` tensors (ones/zeros when the layer has none). Returns
    `(y, mean, variance)` with `mean`/`variance` of shape `(C,)`, biased.
    """
    import tensorflow as tf

    x2 = tf.reshape(x, (-1, x.shape[-1]))
    if in_xla():
        # XLA fuses the plain form over the 2-D view best (measured, training: conv
        # shape 0.31x Keras's time, against 0.47x for the closed form; (4096, 512)
        # 0.98x against 1.63x).
        y, mean, variance = plain_normalize(x2, (0,), gamma, beta, epsilon)
        mean, variance = tf.stop_gradient(mean[0]), tf.stop_gradient(variance[0])
    elif not _large(x):
        y, mean, variance = _closed_form_over_rows(x2, gamma, beta, epsilon)
    else:
        y, mean, variance = _fused(x2, gamma, beta, epsilon)
        # Large mean against the spread: the fused float32 mean is not exact enough.
        accurate = tf.reduce_all(tf.abs(mean) <= _FUSED_MAX_MEAN_TO_STD * tf.sqrt(variance + epsilon))
        y, mean, variance = tf.cond(
            accurate,
            lambda: (y, mean, variance),
            lambda: _closed_form_over_rows(x2, gamma, beta, epsilon),
        )
    return tf.reshape(y, tf.shape(x)), mean, variance


def _large(x, min_elements=_FUSED_MIN_ELEMENTS):
    """Whether `x` is large enough for the fused kernel to pay off (static shapes)."""
    per_sample = 1
    for d in x.shape[1:]:
        per_sample *= d
    if x.shape[0] is None:
        return per_sample >= _FUSED_MIN_ELEMENTS_PER_SAMPLE
    return per_sample * x.shape[0] >= min_elements


def _sum_positions(t):
    """Sums a `(rows, positions, groups, channels)` tensor over its positions (axis 1)."""
    import tensorflow as tf

    return t if t.shape[1] == 1 else tf.reduce_sum(t, axis=1, keepdims=True)


def _sum_group(t):
    """Sums a `(rows, positions, groups, channels)` tensor over each group: positions
    first, then channels. Two reductions over adjacent axes beat one over the non-adjacent
    pair (1, 3), which TensorFlow's CPU kernels run through a slow general path (measured,
    (128, 1024, 8, 8): 23 ms one reduction vs 11 ms two)."""
    import tensorflow as tf

    t = _sum_positions(t)
    return t if t.shape[3] == 1 else tf.reduce_sum(t, axis=3, keepdims=True)


def per_sample_closed_form(x4, gamma, beta, epsilon):
    """Normalizes float32 `x4` of shape `(rows, positions, groups, channels)` over the
    positions and channels of each (row, group); `gamma`/`beta` have shape
    `(1, 1, groups, channels)`. Layer norm is one group and one position per row; group
    norm is one row per sample. For graphs outside XLA.

    The statistics are the corrected two pass of `moments.py`; the deviations `d` from
    the first-pass mean serve the output and the backward pass. Gradients go through the
    closed form `dx = inv * (g - mean(g) - x_hat * mean(g * x_hat))`, `g = dy * gamma`,
    with every group mean assembled from per-channel sums over the positions
    (`P = sum(dy * d)`, `Q = sum(dy)`), which also give `dgamma` and `dbeta` (rows of
    one position: `_one_position`).
    """
    import tensorflow as tf

    @tf.custom_gradient
    def _normalize(x4, gamma, beta):
        n = tf.cast(tf.shape(x4)[1] * x4.shape[3], tf.float32)
        shift = _sum_group(x4) / n
        d = x4 - shift
        first = _sum_group(d) / n
        variance = tf.maximum(_sum_group(tf.square(d)) / n - tf.square(first), 0.0)
        inv = tf.math.rsqrt(variance + epsilon)
        if x4.shape[1] == 1:
            return _one_position(d, first, inv, gamma, beta)
        a = inv * gamma
        # (d - first) * a + beta with one pass fewer, `a` being small: d and first are
        # small, nothing cancels.
        y = d * a + (beta - first * a)

        def grad(dy):
            q = tf.reduce_sum(dy, axis=1, keepdims=True)
            p = tf.reduce_sum(dy * d, axis=1, keepdims=True)
            mean_g = tf.reduce_sum(q * gamma, axis=3, keepdims=True) / n
            mean_gd = tf.reduce_sum(p * gamma, axis=3, keepdims=True) / n
            mean_gx = inv * (mean_gd - first * mean_g)
            b = inv * inv * mean_gx
            dx = dy * a - (d * b + (inv * mean_g - b * first))
            dgamma = tf.reduce_sum(inv * (p - first * q), axis=(0, 1), keepdims=True)
            dbeta = tf.reduce_sum(q, axis=(0, 1), keepdims=True)
            return dx, dgamma, dbeta

        return y, grad

    return _normalize(x4, gamma, beta)


def _one_position(d, first, inv, gamma, beta):
    """`per_sample_closed_form`'s output and backward when each row holds one position
    and matmuls are not exact (`matmul_exact`): there the per-channel sums are the
    full-size tensors themselves, and the closed form on `x_hat` takes fewer full-size
    passes (six against ten backward)."""
    import tensorflow as tf

    x_hat = (d - first) * inv
    y = x_hat * gamma + beta

    def grad(dy):
        g = dy * gamma
        mean_g = tf.reduce_mean(g, axis=3, keepdims=True)
        mean_gx = tf.reduce_mean(g * x_hat, axis=3, keepdims=True)
        dx = inv * (g - mean_g - x_hat * mean_gx)
        dgamma = tf.reduce_sum(dy * x_hat, axis=(0, 1), keepdims=True)
        dbeta = tf.reduce_sum(dy, axis=(0, 1), keepdims=True)
        return dx, dgamma, dbeta

    return y, grad


#: Environment variables by which a user lets oneDNN round float32 matmul inputs to
#: bfloat16 or TF32; any value but these leaves `matmul_exact` false.
_ONEDNN_FPMATH_VARIABLES = ("TF_SET_ONEDNN_FPMATH_MODE", "ONEDNN_DEFAULT_FPMATH_MODE", "DNNL_DEFAULT_FPMATH_MODE")
_STRICT_FPMATH = ("", "STRICT", "F32", "FP32")


def matmul_exact():
    """True when float32 matmuls run in full float32: no GPU is visible (GPUs round
    matmul inputs to TF32 by default) and oneDNN's reduced-precision math mode is not
    switched on. `rows_by_matmul` computes statistics with matmuls only then."""
    import os

    import tensorflow as tf

    if any(os.environ.get(v, "").strip().upper() not in _STRICT_FPMATH for v in _ONEDNN_FPMATH_VARIABLES):
        return False
    return not tf.config.list_logical_devices("GPU") or not tf.config.experimental.tensor_float_32_execution_enabled()


def rows_by_matmul(x2, gamma, beta, epsilon, groups=1):
    """Normalizes each row of float32 `x2`, shape `(rows, channels)`, over each of
    `groups` equal blocks of its channels; `gamma`/`beta` have shape `(channels,)`.
    Layer norm is one group; group norm of samples with one position is several. For
    graphs outside XLA, where `matmul_exact()`.

    The maths is `per_sample_closed_form`'s: the corrected two pass, the output from
    `x_hat = (d - first) * inv`, the closed-form backward. What differs is that every
    sum is a matmul: the row means against a `(channels, groups)` matrix of `1 / size`
    on each group's channels, and `dgamma`/`dbeta` (sums over the rows) against the
    per-row factors. On CPU, TensorFlow's reduction over the rows of a matrix takes 1.3
    to 2.7x the time of a matrix-vector product reading the same data, and over each
    row's columns 1.0 to 1.4x (measured, (256, 512) to (131072, 64)); layer norm
    training took 0.75x (dense (256, 512)) and 0.70x (conv (128, 32, 32, 64)) the time
    of the same closed form with reductions. Float32 matmuls accumulate no worse than
    the reductions (measured against float64: the same or a smaller error in `x`'s and
    `gamma`'s gradients).
    """
    import tensorflow as tf

    channels = x2.shape[1]
    size = channels // groups
    # (channels, groups): 1 / size where the channel belongs to the group.
    to_mean = tf.constant(np.repeat(np.eye(groups, dtype=np.float32) / size, size, axis=0))
    # One group (layer norm) works on `x2` itself, statistics of shape (rows, 1); several
    # on a (rows, groups, size) view, statistics (rows, groups, 1). Reshapes only there:
    # each is a graph op to trace.
    if groups == 1:
        view = flat = stat = lambda t: t
    else:

        def view(t):
            return tf.reshape(t, (-1, groups, size))

        def flat(t):
            return tf.reshape(t, (-1, channels))

        def stat(t):
            return tf.reshape(t, (-1, groups, 1))

    def group_mean(t, weights=to_mean):
        return stat(tf.matmul(flat(t), weights))

    def over_rows(t, per_row):
        """sum_r per_row[r, group of c] * t[r, c], shape (channels,)."""
        if groups > 1:
            # Scale first: a (groups, channels) product would cost `groups`
            # multiply-adds per element (measured slower at 8 groups).
            t, per_row = t * per_row, tf.ones_like(per_row[:, 0])
        return tf.reshape(tf.matmul(per_row, flat(t), transpose_a=True), (channels,))

    @tf.custom_gradient
    def _normalize(x, gamma, beta):
        shift = group_mean(x)
        d = x - shift
        first = group_mean(d)
        variance = tf.maximum(group_mean(tf.square(d)) - tf.square(first), 0.0)
        inv = tf.math.rsqrt(variance + epsilon)
        y = (d - first) * inv * view(gamma) + view(beta)

        def grad(dy):
            dy_d = dy * d
            gamma_mean = to_mean * gamma[:, None]
            mean_g = group_mean(dy, gamma_mean)
            mean_gd = group_mean(dy_d, gamma_mean)
            # x_hat * inv * mean(g * x_hat) = (d - first) * b
            b = inv * inv * inv * (mean_gd - first * mean_g)
            dx = dy * view(gamma) * inv - (d * b + (inv * mean_g - b * first))
            dgamma = over_rows(dy_d, inv) - over_rows(dy, first * inv)
            dbeta = over_rows(dy, tf.ones_like(inv))
            return dx, dgamma, dbeta

        return y, grad

    return flat(_normalize(view(x2), gamma, beta))


def plain_normalize(x, axes, gamma, beta, epsilon):
    """The plain two pass over `axes` (mean, then the mean squared deviation from it),
    differentiated by the backend; `gamma`/`beta` broadcast against `x`. For XLA.
    Returns `(y, mean, variance)`, the statistics with the reduced axes kept.

    XLA fuses each reduction with its elementwise producer, but neither sibling
    reductions with each other nor across a conditional: the correction of `moments.py`
    would cost a third read of the input (measured: 1.3x the time, with or without a
    `tf.cond` running it only for large means), and XLA differentiates this form faster
    than it runs the closed form (measured, (64, 128, 256) group norm: 1.0x Keras's time
    against 1.5x). The float32 mean of this path was measured within 7 ulp of the exact
    one (mean 1e4, rows of 64 to 4096 and groups of 8192), against 0.5 ulp corrected;
    the variance is a mean of squared deviations either way.
    """
    import tensorflow as tf

    mean = tf.reduce_mean(x, axis=axes, keepdims=True)
    variance = tf.reduce_mean(
        tf.math.squared_difference(x, tf.stop_gradient(mean)), axis=axes, keepdims=True
    )
    a = tf.math.rsqrt(variance + epsilon) * gamma
    # XLA fuses the expression into one pass whatever its form; this form's gradient it
    # fuses best. Its rounding, ~1e-7 of mean / std, is below that of the plain mean.
    return x * a + (beta - mean * a), mean, variance


def _tensorflow_layer_norm(x, gamma, beta, epsilon, num_axes=1):
    """Layer norm of float32 `x` over its last `num_axes` axes; `gamma`/`beta` have the
    shape of those axes."""
    import tensorflow as tf

    ndim = len(x.shape)
    if in_xla():
        return plain_normalize(x, tuple(range(ndim - num_axes, ndim)), gamma, beta, epsilon)[0]
    columns = 1
    for d in x.shape[ndim - num_axes:]:
        columns *= d
    if matmul_exact():
        y = rows_by_matmul(tf.reshape(x, (-1, columns)), tf.reshape(gamma, (-1,)), tf.reshape(beta, (-1,)), epsilon)
        return tf.reshape(y, tf.shape(x))
    shape = (1, 1, 1, columns)
    x4 = tf.reshape(x, (-1,) + shape[1:])
    y = per_sample_closed_form(x4, tf.reshape(gamma, shape), tf.reshape(beta, shape), epsilon)
    return tf.reshape(y, tf.shape(x))


def _tensorflow_group_norm(x, gamma, beta, epsilon, groups):
    """Group norm of float32 `x` (channels last) with `groups` groups; `gamma`/`beta`
    have shape `(channels,)`."""
    import tensorflow as tf

    ndim = len(x.shape)
    split = (groups, x.shape[-1] // groups)
    if in_xla():
        # XLA reduces the non-adjacent axes of (batch, ..., groups, channels per group)
        # in one reduction, as fast as the 4-D view's two.
        gx = tf.reshape(x, tf.concat([tf.shape(x)[:-1], split], axis=0))
        axes = tuple(range(1, ndim - 1)) + (ndim,)
        y, _, _ = plain_normalize(gx, axes, tf.reshape(gamma, split), tf.reshape(beta, split), epsilon)
        return tf.reshape(y, tf.shape(x))
    positions = 1
    for d in x.shape[1:-1]:
        positions = -1 if d is None else positions * d
    if positions == 1 and matmul_exact():
        y = rows_by_matmul(tf.reshape(x, (-1, x.shape[-1])), gamma, beta, epsilon, groups)
        return tf.reshape(y, tf.shape(x))
    x4 = tf.reshape(x, (tf.shape(x)[0], max(positions, -1)) + split)
    shape = (1, 1) + split
    y = per_sample_closed_form(x4, tf.reshape(gamma, shape), tf.reshape(beta, shape), epsilon)
    return tf.reshape(y, tf.shape(x))


def _tensorflow_batch_norm_inference(x, mean, variance, gamma, beta, epsilon):
    """Inference-mode batch norm of float32 `x` (features last) with given statistics:
    one pass through the fused kernel for large tensors outside XLA."""
    import tensorflow as tf

    if in_xla():
        # XLA fuses the expression into one pass whatever its form.
        return (x - mean) * (tf.math.rsqrt(variance + epsilon) * gamma) + beta
    if not _large(x, _FUSED_INFERENCE_MIN_ELEMENTS):
        # Small tensors do not repay the fused kernel's fixed cost. Keras's form,
        # x * a + (beta - mean * a), takes one elementwise pass fewer than subtracting
        # the mean first and rounds to ~1e-7 * |mean| / std of the output's scale:
        # negligible while every mean is within `_FUSED_MAX_MEAN_TO_STD` standard
        # deviations (measured, (256, 512): 1.03x Keras's time, this check included,
        # against 1.07x always subtracting first).
        inv = tf.math.rsqrt(variance + epsilon)
        a = inv * gamma
        return tf.cond(
            tf.reduce_all(tf.abs(mean) * inv <= _FUSED_MAX_MEAN_TO_STD),
            lambda: x * a + (beta - mean * a),
            lambda: (x - mean) * a + beta,
        )
    x4 = tf.reshape(x, (1, 1, -1, x.shape[-1]))
    y, _, _ = tf.compat.v1.nn.fused_batch_norm(
        x4, gamma, beta, mean=mean, variance=variance, epsilon=epsilon, is_training=False
    )
    return tf.reshape(y, tf.shape(x))


# -- JAX: two fused passes ------------------------------------------------------------


def sample_shift(x, axes):
    """The first element of each reduction of `x` over `axes`, reduced axes kept, without
    gradient: a shift that makes the deviations `x - shift` of the order of the spread.

    Subtracting it is exact (Sterbenz) for every element within a factor two of it, and
    a sample lies at most `sqrt(n - 1)` standard deviations from the mean of `n`, which
    bounds the deviations whatever the data. Their float32 sums round like the corrected
    two pass of `moments.moments`, which reads the input a third time for the same end.
    """
    from keras import ops

    index = tuple(slice(0, 1) if a in axes else slice(None) for a in range(len(x.shape)))
    return ops.stop_gradient(x[index])


def shifted_moments(x, axes):
    """Mean and biased variance of float32 `x` over `axes` (a tuple), reduced axes kept,
    in two passes that XLA fuses with their producers: `mean = s + mean(x - s)` with `s`
    the `sample_shift`, then `variance = mean((x - mean)**2)`. The mean is as exact as
    that of `moments.moments` (measured under JAX, a mean 1e4 standard deviations over
    32768 rows: both 0.5 ulp off; the plain mean of `x`, 1.3 ulp). Gradients flow
    through both; the one of the mean inside the variance is exactly zero and stopped."""
    from keras import ops

    shift = sample_shift(x, axes)
    mean = shift + ops.mean(x - shift, axis=axes, keepdims=True)
    variance = ops.mean(ops.square(x - ops.stop_gradient(mean)), axis=axes, keepdims=True)
    return mean, variance


def _trailing(x, num_axes):
    ndim = len(x.shape)
    return tuple(range(ndim - num_axes, ndim))


def _two_pass_batch_norm_train(x, gamma, beta, epsilon):
    from keras import ops

    # Reduced over the leading axes as they are: a 2-D view of a conv tensor took 1.5x
    # the time here (XLA reduced it through a copy).
    mean, variance = shifted_moments(x, tuple(range(len(x.shape) - 1)))
    a = ops.rsqrt(variance + epsilon) * gamma
    y = x * a + (beta - mean * a)
    channels = (x.shape[-1],)
    return y, ops.stop_gradient(ops.reshape(mean, channels)), ops.stop_gradient(ops.reshape(variance, channels))


def _two_pass_batch_norm_inference(x, mean, variance, gamma, beta, epsilon):
    from keras import ops

    return (x - mean) * (ops.rsqrt(variance + epsilon) * gamma) + beta


def _two_pass_layer_norm(x, gamma, beta, epsilon, num_axes):
    from keras import ops

    axes = _trailing(x, num_axes)
    d = x - sample_shift(x, axes)
    d_mean = ops.mean(d, axis=axes, keepdims=True)
    variance = ops.mean(ops.square(d - ops.stop_gradient(d_mean)), axis=axes, keepdims=True)
    return (d - d_mean) * ops.rsqrt(variance + epsilon) * gamma + beta


def _two_pass_group_norm(x, gamma, beta, epsilon, groups):
    from keras import ops

    # (batch, ..., groups, channels per group), reduced over all but the batch and group
    # axes: XLA reduces the non-adjacent axes in one reduction.
    ndim = len(x.shape)
    split = (groups, x.shape[-1] // groups)
    gx = ops.reshape(x, tuple(ops.shape(x)[:-1]) + split)
    mean, variance = shifted_moments(gx, tuple(range(1, ndim - 1)) + (ndim,))
    a = ops.rsqrt(variance + epsilon) * ops.reshape(gamma, split)
    y = gx * a + (ops.reshape(beta, split) - mean * a)
    return ops.reshape(y, ops.shape(x))


def _two_pass_rms_norm(x, scale, epsilon, num_axes):
    from keras import ops

    mean_square = ops.mean(ops.square(x), axis=_trailing(x, num_axes), keepdims=True)
    return x * ops.rsqrt(mean_square + epsilon) * scale


# -- PyTorch: its fused kernels --------------------------------------------------------


def _torch_ill_conditioned(mean, rstd):
    """Whether a mean exceeds `_FUSED_MAX_MEAN_TO_STD` standard deviations (`rstd` is
    `1 / sqrt(variance + epsilon)`), where `x * a + (beta - mean * a)` would cancel
    visibly. Never on the meta device, where Keras infers shapes without values; a NaN
    statistic compares false and keeps the kernel's (NaN) output, as the general path
    gives."""
    import torch

    if mean.device.type == "meta" or mean.numel() == 0:
        return False
    # Two operations, the fastest found (measured, 131072 rows: 45 us, against 325 us for
    # an infinity norm): the check runs at every call.
    low, high = torch.aminmax(mean.detach() * rstd.detach())
    return max(-float(low), float(high)) > _FUSED_MAX_MEAN_TO_STD


def _torch_batch_norm_train(x, gamma, beta, epsilon):
    import torch.nn.functional as F

    channels = x.shape[-1]
    x2 = x.reshape(-1, channels)
    rows = x2.shape[0]
    if rows < 2:
        # PyTorch refuses one value per channel in training; the variance is zero.
        return _two_pass_batch_norm_train(x, gamma, beta, epsilon)
    # The kernel accumulates its statistics in float32, row after row: on the
    # deviations from the first row, whose sums stay of the order of the spread, its
    # rounding no longer grows with the mean (the output does not change: a constant
    # shift per channel leaves batch norm as it is).
    shift = x2[:1].detach()
    # Running buffers of momentum 1 receive the batch's mean and unbiased variance.
    mean = x2.new_zeros(channels)
    unbiased = x2.new_zeros(channels)
    y = F.batch_norm(x2 - shift, mean, unbiased, gamma, beta, training=True, momentum=1.0, eps=epsilon)
    return y.reshape(x.shape), mean + shift[0], unbiased * ((rows - 1) / rows)


def _torch_batch_norm_inference(x, mean, variance, gamma, beta, epsilon):
    import torch
    import torch.nn.functional as F

    x2 = x.reshape(-1, x.shape[-1])
    inv = torch.rsqrt(variance + epsilon)
    if _torch_ill_conditioned(mean, inv):
        y = (x2 - mean) * (inv * gamma) + beta
    else:
        y = F.batch_norm(x2, mean, variance, gamma, beta, training=False, eps=epsilon)
    return y.reshape(x.shape)


def _torch_layer_norm(x, gamma, beta, epsilon, num_axes):
    import torch

    shape = tuple(x.shape[len(x.shape) - num_axes:])
    y, mean, rstd = torch.native_layer_norm(x, shape, gamma, beta, epsilon)
    if _torch_ill_conditioned(mean, rstd):
        shift = x[(Ellipsis,) + (slice(0, 1),) * num_axes].detach()
        y = torch.native_layer_norm(x - shift, shape, gamma, beta, epsilon)[0]
    return y


def _torch_group_norm(x, gamma, beta, epsilon, groups):
    import torch

    batch, channels = x.shape[0], x.shape[-1]
    positions = x.numel() // max(batch * channels, 1)
    # (batch, channels, positions), contiguous: the kernel's path with Welford's
    # statistics.
    x3 = x.reshape(batch, positions, channels).transpose(1, 2).contiguous()
    y, mean, rstd = torch.native_group_norm(x3, gamma, beta, batch, channels, positions, groups, epsilon)
    if _torch_ill_conditioned(mean, rstd):
        by_group = x3.reshape(batch, groups, -1)
        shifted = (by_group - by_group[:, :, :1].detach()).reshape(x3.shape)
        y = torch.native_group_norm(shifted, gamma, beta, batch, channels, positions, groups, epsilon)[0]
    return y.transpose(1, 2).reshape(x.shape)


def _torch_rms_norm(x, scale, epsilon, num_axes):
    import torch.nn.functional as F

    return F.rms_norm(x, tuple(x.shape[len(x.shape) - num_axes:]), scale, epsilon)


#: The fast path of each normalization, per backend (the module docstring says why each
#: is the fastest there). `available` consults it: a backend or a normalization missing
#: here takes the general path of `moments.py`.
ROUTES = {
    "tensorflow": {
        "batch_norm_train": _tensorflow_batch_norm_train,
        "batch_norm_inference": _tensorflow_batch_norm_inference,
        "layer_norm": _tensorflow_layer_norm,
        "group_norm": _tensorflow_group_norm,
    },
    "jax": {
        "batch_norm_train": _two_pass_batch_norm_train,
        "batch_norm_inference": _two_pass_batch_norm_inference,
        "layer_norm": _two_pass_layer_norm,
        "group_norm": _two_pass_group_norm,
        "rms_norm": _two_pass_rms_norm,
    },
    "torch": {
        "batch_norm_train": _torch_batch_norm_train,
        "batch_norm_inference": _torch_batch_norm_inference,
        "layer_norm": _torch_layer_norm,
        "group_norm": _torch_group_norm,
        "rms_norm": _torch_rms_norm,
    },
}
