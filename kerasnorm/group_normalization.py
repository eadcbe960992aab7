"""Group normalization: a drop-in for `keras.layers.GroupNormalization`, with masks."""

from __future__ import annotations

import numbers

import keras
from keras import ops

from kerasnorm import kernels
from kerasnorm import moments as M
from kerasnorm._common import AffineMixin, positive_float


@keras.saving.register_keras_serializable(package="kerasnorm")
class GroupNormalization(AffineMixin, keras.layers.Layer):
    """Normalizes each sample over groups of channels; a drop-in
    `keras.layers.GroupNormalization`.

    The channels of `axis` are split into `groups` consecutive groups; each sample is
    normalized with the mean and variance of each group, taken over the group's channels
    and every other non-batch axis (for an image: the group's channels at all pixels),
    then scaled and shifted per channel by `gamma` and `beta`. `groups=1` gives layer
    normalization over all non-batch axes; `groups=-1` (one channel per group) gives
    instance normalization. No state, and the same output in training and inference.

    The arguments, defaults, weights (`gamma`, `beta`, shape `(channels,)`, in that
    order), saved files and numbers are those of Keras's layer; the statistics are always
    computed in float32 (float64 for float64 inputs) with two passes, also for
    float16/bfloat16 inputs: the corrected two pass of `kerasnorm.moments`, except
    with TensorFlow inside XLA (`jit_compile=True`), where the plain two pass is faster
    (see `kerasnorm.kernels.plain_normalize`), and, channels last and unmasked, with JAX
    and PyTorch, whose fast paths (`kerasnorm.kernels`) are as exact.

    What kerasnorm adds: a mask over leading axes (e.g. `(batch, time)` for padded
    sequences, as from `Embedding(mask_zero=True)`) keeps masked positions out of the
    statistics, so a sequence's output does not depend on how much padding it carries.
    Keras's layer ignores the mask in its statistics: with a mask, and only then, the
    numbers of the two layers differ. The mask passes through to the next layer.

    Args:
        groups: Positive integer dividing the number of channels, or -1 for one group per
            channel (instance normalization). Default 32.
        axis: Integer, the channel axis. Default -1.
        epsilon: Positive float added to the variance before the square root.
        center: If True, add the learned per-channel offset `beta`.
        scale: If True, multiply by the learned per-channel scale `gamma`.
        beta_initializer: Initializer for `beta`.
        gamma_initializer: Initializer for `gamma`.
        beta_regularizer: Optional regularizer for `beta`.
        gamma_regularizer: Optional regularizer for `gamma`.
        beta_constraint: Optional constraint for `beta`.
        gamma_constraint: Optional constraint for `gamma`.
        **kwargs: Base layer keyword arguments (e.g. `name`, `dtype`).

    Call arguments:
        inputs: Floating-point tensor of rank 2 or more.
        mask: Optional boolean tensor covering leading axes of `inputs` (the batch axis
            first, never the channel axis); masked positions do not enter the statistics.

    Example:
        >>> import keras
        >>> import numpy as np
        >>> import kerasnorm
        >>> x = np.array([[1.0, 3.0, 10.0, 30.0]])  # two groups of two channels
        >>> gn = kerasnorm.GroupNormalization(groups=2)
        >>> print(keras.ops.convert_to_numpy(gn(x)).round(2))
        [[-1.  1. -1.  1.]]

    Reference:
        - [Wu and He, 2018](https://arxiv.org/abs/1803.08494).
    """

    def __init__(
        self,
        groups=32,
        axis=-1,
        epsilon=1e-3,
        center=True,
        scale=True,
        beta_initializer="zeros",
        gamma_initializer="ones",
        beta_regularizer=None,
        gamma_regularizer=None,
        beta_constraint=None,
        gamma_constraint=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if (
            isinstance(groups, bool)
            or not isinstance(groups, numbers.Integral)
            or (groups <= 0 and groups != -1)
        ):
            raise ValueError(
                "Received an invalid value for argument `groups`, expected a positive "
                f"integer (or `-1` for instance normalization). Received: groups={groups!r}"
            )
        if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
            raise ValueError(f"Argument `axis` must be an int (the channel axis). Received: axis={axis!r}")
        self.groups = int(groups)
        self.axis = int(axis)
        self.epsilon = positive_float("epsilon", epsilon)
        self._init_affine(
            center, scale, beta_initializer, gamma_initializer,
            beta_regularizer, gamma_regularizer, beta_constraint, gamma_constraint,
        )  # fmt: skip
        self.supports_masking = True
        # Statistics are computed in float32 whatever the policy: no input autocast.
        self.autocast = False
        self._channel_axis = None
        self._num_groups = None

    def build(self, input_shape):
        ndim = len(input_shape)
        (axis,) = M.canonicalize_axes(self.axis, ndim)
        if axis == 0:
            raise ValueError(
                "The channel axis cannot be the batch axis. "
                f"Received: axis={self.axis}, input_shape={tuple(input_shape)}"
            )
        channels = input_shape[axis]
        if channels is None:
            raise ValueError(
                f"Axis {self.axis} of input tensor should have a defined dimension but the "
                f"layer received an input with shape {tuple(input_shape)}."
            )
        groups = channels if self.groups == -1 else self.groups
        received = (
            f"Received: groups={self.groups}, channels={channels} (axis {self.axis} of "
            f"input_shape={tuple(input_shape)})"
        )
        # Keras's phrases; "a multiple of the number of channels" is Keras's wording for
        # "a divisor".
        if groups > channels:
            raise ValueError(
                f"Number of groups ({groups}) cannot be more than the number of channels "
                f"({channels}). {received}"
            )
        if channels % groups:
            raise ValueError(
                f"Number of groups ({groups}) must be a multiple of the number of channels "
                f"({channels}). {received}"
            )
        self._channel_axis = axis
        self._num_groups = groups
        self._build_affine((channels,))
        self.input_spec = keras.layers.InputSpec(ndim=ndim, axes={axis: channels})

    def call(self, inputs, mask=None):
        M.check_floating(inputs, self.name)
        axis, groups = self._channel_axis, self._num_groups
        ndim = len(inputs.shape)
        dtype = M.statistics_dtype(inputs.dtype)
        x = ops.cast(inputs, dtype)
        weights = M.mask_weights(mask, x)
        if weights is not None and len(mask.shape) > axis:
            raise ValueError(
                "The mask must not cover the channel axis. "
                f"Received: mask.shape={tuple(mask.shape)}, axis={self.axis}"
            )

        if axis == ndim - 1 and kernels.available(x, (axis,), weights, False, kernel="group_norm"):
            shape = (inputs.shape[axis],)
            gamma = ops.cast(self.gamma, dtype) if self.scale else ops.ones(shape)
            beta = ops.cast(self.beta, dtype) if self.center else ops.zeros(shape)
            outputs = kernels.group_norm(x, gamma, beta, self.epsilon, groups)
            return ops.cast(outputs, self.compute_dtype)

        # (..., channels, ...) -> (..., groups, channels // groups, ...): the group axis
        # is kept, everything else but the batch is reduced.
        shape = ops.shape(x)
        grouped_shape = list(shape[:axis]) + [groups, shape[axis] // groups] + list(shape[axis + 1 :])
        gx = ops.reshape(x, grouped_shape)
        if weights is not None:
            weights = ops.expand_dims(weights, axis)
        reduction_axes = tuple(a for a in range(1, ndim + 1) if a != axis)
        stats = M.moments(gx, reduction_axes, weights)

        affine_shape = [1] * (ndim + 1)
        affine_shape[axis], affine_shape[axis + 1] = groups, shape[axis] // groups
        gamma = ops.reshape(ops.cast(self.gamma, dtype), affine_shape) if self.scale else None
        beta = ops.reshape(ops.cast(self.beta, dtype), affine_shape) if self.center else None
        outputs = M.normalize(gx, stats.mean, stats.variance, gamma, beta, self.epsilon)
        return ops.cast(ops.reshape(outputs, shape), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        M.canonicalize_axes(self.axis, len(input_shape))
        return input_shape

    def get_config(self):
        config = {
            "groups": self.groups,
            "axis": self.axis,
            "epsilon": self.epsilon,
            **self._affine_config(),
        }
        return {**super().get_config(), **config}
