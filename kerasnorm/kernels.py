"""Fast paths for the commonest case: one feature axis, last, no mask, one replica.

The maths is that of `moments.py` (float32 statistics, two passes with correction,
subtract-the-mean-first normalization), except for training statistics under XLA (the
plain two pass, see `plain_normalize`); what changes is how many passes over the data
the backend makes. Tests check every path here against `moments.py` and Keras.

- `closed_form_normalize`: statistics over rows or columns of a 2-D view, with the
  closed-form backward pass of Ioffe & Szegedy (2015) through `tf.custom_gradient`
  instead of differentiating each elementwise op, outside XLA on small tensors; where
  float32 matmuls are exact (`matmul_exact`) the same maths with every sum over the rows
  a matmul (`columns_by_matmul`).
- `layer_norm` and `group_norm` outside XLA: the corrected two pass and a closed-form
  backward (`per_sample_closed_form`) on a `(rows, positions, groups, channels)` view;
  for rows of one position (layer norm, group norm of dense inputs), every sum a matmul
  (`rows_by_matmul`) where float32 matmuls are exact.
- Under XLA, layer norm, group norm and batch norm in training: the plain two pass
  (`plain_normalize`), which XLA fuses and differentiates faster than anything written
  around it.
- `batch_norm_train` outside XLA, on large tensors: TensorFlow's fused batch-norm kernel,
  which reads the input twice forward and twice backward. Its float32 mean accumulates rounding of
  order 1e-7 times the mean; when the mean is large against the spread (over
  `_FUSED_MAX_MEAN_TO_STD` standard deviations) that error becomes visible in the output,
  and the closed form (corrected two-pass) runs instead.

Only the TensorFlow backend has these paths; `available()` tells the layers.
"""

from __future__ import annotations

import keras
import numpy as np

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


def available(inputs, feature_axes, weights, synchronized, trailing_block=False):
    """True when a fast path applies: TensorFlow, float32 inputs, no mask, no
    cross-replica reduction, and `feature_axes` the last axis (or, with `trailing_block`,
    any block of trailing axes: layer norm over (positions, channels) flattens them)."""
    if keras.backend.backend() != "tensorflow" or weights is not None:
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
    if synchronized:
        import tensorflow as tf

        ctx = tf.distribute.get_replica_context()
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            return False
    return True


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


def batch_norm_train(x, gamma, beta, epsilon):
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


def layer_norm(x, gamma, beta, epsilon, num_axes=1):
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


def group_norm(x, gamma, beta, epsilon, groups):
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


def batch_norm_inference(x, mean, variance, gamma, beta, epsilon):
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
