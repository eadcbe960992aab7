"""The statistics every kerasnorm layer uses, written once.

Each normalization layer differs only in which axes it reduces over and whether it keeps
state (the shape of Flax's ``linen/normalization.py``). The helpers here:

- validate and canonicalize axis arguments (``canonicalize_axes``);
- turn a Keras mask into per-element weights (``mask_weights``);
- compute masked moments in float32 or better with two passes and, optionally, across
  replicas: ``tf.distribute`` replicas under TensorFlow, the processes of a
  ``torch.distributed`` group under PyTorch (``moments``);
- apply the affine normalization with the same arithmetic as ``keras.ops``
  (``normalize``).

Two-pass means the variance is the mean of squared deviations from the already-computed
mean, never ``E[x^2] - E[x]^2``: the latter loses every significant digit once the mean is
large against the spread (a mean 1e4 times the standard deviation empties float32).
"""

from __future__ import annotations

import collections
import numbers

import keras
from keras import ops

Moments = collections.namedtuple("Moments", ["mean", "variance", "count"])
Moments.__doc__ = """Statistics of a reduction, each with the reduced axes kept (size 1).

`mean` and `variance` (biased: divided by `count`) are float32 (float64 for float64
inputs); `count` is the number of valid (unmasked) elements behind each statistic, with
the same shape as `mean`. Where `count` is zero the mean and variance are zero."""


def validate_axis_argument(axis, name="axis"):
    """Checks an `axis` constructor argument: an int, or a non-empty list of distinct ints.

    Returns an int or a list of ints. The range is checked at build time, when the rank is
    known (`canonicalize_axes`).
    """
    if isinstance(axis, bool) or not isinstance(axis, (numbers.Integral, list, tuple)):
        raise ValueError(
            f"Argument `{name}` must be an int or a list of ints. Received: {name}={axis!r}"
        )
    if isinstance(axis, numbers.Integral):
        return int(axis)
    if not axis or any(isinstance(a, bool) or not isinstance(a, numbers.Integral) for a in axis):
        raise ValueError(
            f"Argument `{name}` must be an int or a non-empty list of ints. "
            f"Received: {name}={axis!r}"
        )
    return [int(a) for a in axis]


def validate_positive_int(value, name, allow_none=False):
    """Checks an argument that counts something (units, steps, a batch size): a positive
    int, or None where `allow_none`. Returns it as an int (or None)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"Argument `{name}` must be a positive int. Received: {name}={value!r}")
    return int(value)


def canonicalize_axes(axis, ndim, name="axis"):
    """Returns `axis` (int or sequence) as a sorted tuple of non-negative axes of an
    `ndim`-rank tensor. Raises `ValueError` for an out-of-range or repeated axis."""
    axes = [axis] if isinstance(axis, numbers.Integral) else list(axis)
    out = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(
                f"Axis {a} is out of range for an input of rank {ndim}. Received: {name}={axis!r}"
            )
        out.append(a % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"Argument `{name}` names an axis twice. Received: {name}={axis!r}")
    return tuple(sorted(out))


def weight_axes_and_shape(axis, input_shape, name="axis"):
    """`(axes, shape)`: the canonical axes of `axis` and the shape of weights spanning
    them. Raises `ValueError` when one of those axes has no known size."""
    axes = canonicalize_axes(axis, len(input_shape), name)
    shape = tuple(input_shape[a] for a in axes)
    if any(d is None for d in shape):
        raise ValueError(
            "The normalized axes must have known sizes to hold weights. "
            f"Received: input_shape={tuple(input_shape)}, {name}={axis!r}"
        )
    return axes, shape


def statistics_dtype(dtype):
    """float32 for half-precision (and float32) inputs, float64 for float64 inputs."""
    return "float64" if keras.backend.standardize_dtype(dtype) == "float64" else "float32"


def check_floating(inputs, layer_name):
    """Raises `ValueError` naming the dtype when `inputs` are not floating point: silently
    casting integers would hide a missing preprocessing step."""
    dtype = keras.backend.standardize_dtype(inputs.dtype)
    if "float" not in dtype:
        raise ValueError(
            f"Layer '{layer_name}' expects floating-point inputs. "
            f"Received: inputs.dtype={dtype}"
        )


def mask_weights(mask, inputs):
    """Returns float weights (1 valid, 0 masked) broadcastable to `inputs`, or None.

    A Keras mask covers the leading axes of the inputs (typically `(batch, time)` for a
    `(batch, time, features)` tensor): any prefix of the input shape is accepted, and the
    trailing axes are expanded so that one mask entry covers a whole feature vector. As
    Keras broadcasts it, an axis of the mask may also have size 1 (one entry for the whole
    axis, e.g. a mask of shape `(1, time)`); the weights are then broadcast to the
    leading shape, so every caller can reshape them like the inputs.
    """
    if mask is None:
        return None
    rank, ndim = len(mask.shape), len(inputs.shape)
    leading = inputs.shape[:rank]
    prefix_ok = rank <= ndim and all(
        m is None or i is None or m in (1, i) for m, i in zip(mask.shape, leading)
    )
    if not prefix_ok:
        raise ValueError(
            "The mask must cover the leading axes of the inputs, each axis of the inputs' "
            "size or 1. "
            f"Received: mask.shape={tuple(mask.shape)}, inputs.shape={tuple(inputs.shape)}"
        )
    weights = ops.cast(mask, statistics_dtype(inputs.dtype))
    if any(m == 1 and i != 1 for m, i in zip(mask.shape, leading)):
        weights = ops.broadcast_to(weights, ops.shape(inputs)[:rank])
    for _ in range(ndim - rank):
        weights = ops.expand_dims(weights, -1)
    return weights


def reduced_count(inputs, axes):
    """Number of elements behind each statistic of an unmasked reduction over `axes`."""
    shape = ops.shape(inputs)
    count = 1
    for a in axes:
        count = count * shape[a]
    return count


def _replica_sum():
    """A function that sums a tensor over the replicas whose statistics should be
    synchronized, or None when there is one replica. The one place that knows how each
    backend distributes a batch:

    - TensorFlow: the replicas of a `tf.distribute` strategy (`ReplicaContext.all_reduce`),
      inside `strategy.run`; None outside a strategy or with one replica.
    - PyTorch: the processes of the default `torch.distributed` process group, each
      holding its part of the batch; None when no group is initialized or it has one
      process. The sum is differentiable (`_torch_all_reduce_sum`).
    - JAX: always None. Keras's distribution API (`keras.distribution.DataParallel`)
      shards one global array over the devices and compiles the step with `jax.jit`, so a
      reduction over the batch axis is already one over the global batch: XLA inserts the
      cross-device sums. (Inside `jax.pmap` or `shard_map`, where each device sees its
      own shard, statistics stay per device.)
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        ctx = tf.distribute.get_replica_context()
        if ctx is None or ctx.num_replicas_in_sync <= 1:
            return None
        return lambda value: ctx.all_reduce(tf.distribute.ReduceOp.SUM, value)
    if backend == "torch":
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
            return None
        return _torch_all_reduce_sum()
    return None


# Built on first use, so that importing kerasnorm imports no backend.
_torch_all_reduce = None


def _torch_all_reduce_sum():
    """`torch.distributed.all_reduce` (sum over the default group) as a differentiable
    function. Every replica's loss depends on every replica's contribution to the sum,
    so the backward pass all-reduces the incoming gradients: each replica's input
    gradient is then that of the sum of all replicas' losses, and the parameter
    gradients averaged across replicas (`DistributedDataParallel`'s convention) are
    those of one large batch. `torch.distributed.nn.functional.all_reduce` does the same
    but is deprecated (a `FutureWarning`)."""
    global _torch_all_reduce
    if _torch_all_reduce is None:
        import torch
        import torch.distributed as dist

        class AllReduceSum(torch.autograd.Function):
            @staticmethod
            def forward(ctx, value):
                value = value.clone(memory_format=torch.contiguous_format)
                dist.all_reduce(value)
                return value

            @staticmethod
            def backward(ctx, grad):
                return AllReduceSum.apply(grad)

        _torch_all_reduce = AllReduceSum.apply
    return _torch_all_reduce


def _all_reduce_sum(replica_sum, value):
    return value if replica_sum is None else replica_sum(value)


def moments(inputs, axes, weights=None, synchronized=False):
    """Mean, biased variance and count of `inputs` over `axes`, reduced axes kept.

    The corrected two-pass algorithm (Chan, Golub & LeVeque, 1983): a first pass gives a
    rough mean `m0`; the second pass reduces the deviations `d = x - m0`, so that
    `mean = m0 + mean(d)` and `variance = mean(d^2) - mean(d)^2`. The second term corrects
    the rounding error of the first pass, which in float32 is large when the mean is large
    against the spread; the deviations are small, so nothing cancels.

    Args:
        inputs: floating tensor, any dtype; statistics are computed in float32 (float64
            for float64 inputs).
        axes: tuple of non-negative axes to reduce over.
        weights: optional 0/1 float weights broadcastable to `inputs` (see
            `mask_weights`); elements of weight 0 never enter the statistics.
        synchronized: with several replicas (a `tf.distribute` strategy under
            TensorFlow, an initialized `torch.distributed` group under PyTorch; see
            `_replica_sum`), reduce over the global batch: each replica contributes its
            sums and valid counts, so replicas holding more valid elements weigh more,
            exactly as one large batch, and gradients flow through the reduction. Under
            JAX, Keras's data parallelism already reduces over the global batch.

    Returns:
        `Moments(mean, variance, count)`.
    """
    dtype = statistics_dtype(inputs.dtype)
    x = ops.cast(inputs, dtype)
    replica_sum = _replica_sum() if synchronized else None

    if weights is None and replica_sum is None:
        # Unmasked, one replica: the backend's mean reductions.
        shift = ops.stop_gradient(ops.mean(x, axis=axes, keepdims=True))
        deviation = x - shift
        first = ops.mean(deviation, axis=axes, keepdims=True)
        second = ops.mean(ops.square(deviation), axis=axes, keepdims=True)
        count = ops.cast(reduced_count(x, axes), dtype) * ops.ones_like(shift)
    else:
        if weights is None:
            weights = ops.ones_like(x)
        weights = ops.cast(weights, dtype)
        # The count has the statistics' shape even when the weights broadcast along
        # some of the reduced axes: sum a full-shape weight tensor.
        full_weights = ops.broadcast_to(weights, ops.shape(x))
        count = _all_reduce_sum(replica_sum, ops.sum(full_weights, axis=axes, keepdims=True))
        safe_count = ops.maximum(count, 1.0)
        total = _all_reduce_sum(replica_sum, ops.sum(x * weights, axis=axes, keepdims=True))
        shift = ops.stop_gradient(total / safe_count)
        deviation = (x - shift) * weights
        sums = ops.stack(
            [
                ops.sum(deviation, axis=axes, keepdims=True),
                ops.sum(ops.square(deviation), axis=axes, keepdims=True),
            ]
        )
        # One all-reduce carries both sums.
        sums = _all_reduce_sum(replica_sum, sums) / safe_count
        first, second = sums[0], sums[1]
    mean = shift + first
    variance = ops.maximum(second - ops.square(first), 0.0)
    return Moments(mean, variance, count)


def mean_square(inputs, axes, weights=None):
    """Mean of `x**2` over `axes` (kept), in float32 or better: the statistic of RMS
    normalization and of filter response normalization. One pass suffices: a sum of
    squares has no cancellation, its relative rounding error stays at the float32 level
    whatever the mean. With 0/1 `weights` (see `mask_weights`) only valid elements count;
    where none is valid the result is zero."""
    x = ops.cast(inputs, statistics_dtype(inputs.dtype))
    if weights is None:
        return ops.mean(ops.square(x), axis=axes, keepdims=True)
    weights = ops.cast(weights, x.dtype)
    count = ops.sum(ops.broadcast_to(weights, ops.shape(x)), axis=axes, keepdims=True)
    return ops.sum(ops.square(x) * weights, axis=axes, keepdims=True) / ops.maximum(count, 1.0)


def example_moments(inputs, axes, weights=None):
    """`moments` of each example on its own: over `axes`, which exclude the batch axis.
    With no axis to reduce (a dense layer's units) an example's mean is its value and
    its variance zero (`ops.mean` over no axis is not the identity on every backend)."""
    if axes:
        return moments(inputs, axes, weights)
    x = ops.cast(inputs, statistics_dtype(inputs.dtype))
    count = ops.ones_like(x) if weights is None else ops.broadcast_to(ops.cast(weights, x.dtype), ops.shape(x))
    return Moments(x * ops.minimum(count, 1.0), ops.zeros_like(x), count)


def mix_with_example(example, mean, variance, weight):
    """Mean and variance of the mixture that gives weight `weight` to an example's own
    statistics (`example`, a `Moments`) and `1 - weight` to `mean` and `variance`:

        mu  = mean + w * (mu_e - mean)
        var = w * var_e + (1 - w) * variance + w * (1 - w) * (mu_e - mean)**2

    the moments of the union of the two distributions (Summers & Dinneen 2020, inference
    example weighing), written with the deviation `mu_e - mean` rather than as
    `E[x^2] - mu^2`, which cancels. An example with no valid element keeps `mean` and
    `variance`."""
    w = ops.where(example.count > 0, weight, 0.0)
    deviation = example.mean - mean
    mixed_mean = mean + w * deviation
    mixed_variance = w * example.variance + (1.0 - w) * variance + w * (1.0 - w) * ops.square(deviation)
    return mixed_mean, mixed_variance


def normalize(inputs, mean, variance, scale, offset, epsilon):
    """`(inputs - mean) / sqrt(variance + epsilon) * scale + offset`, broadcasting.

    The mean is subtracted before scaling, `(x - mean) * inv + offset` with
    `inv = rsqrt(variance + epsilon) * scale`, rather than Keras's `x * inv + (offset -
    mean * inv)`: when the mean is large against the spread the latter cancels two large
    products and keeps only the last few bits (a mean 1e4 times the spread leaves ~1e-3
    resolution in float32). Elsewhere the two agree to rounding. `scale` and `offset`
    may be None.
    """
    inv = ops.rsqrt(variance + epsilon)
    if scale is not None:
        inv = inv * scale
    outputs = (inputs - mean) * inv
    if offset is not None:
        outputs = outputs + offset
    return outputs


def is_finite(*tensors):
    """Elementwise: True where every given tensor is finite (tensors broadcast)."""
    finite = None
    for t in tensors:
        f = ops.isfinite(t)
        finite = f if finite is None else ops.logical_and(finite, f)
    return finite
