"""Instance normalization: per sample and channel, over the positions, with masks."""

from __future__ import annotations

import numbers

import keras
from keras import ops

from kerasnorm import moments as M
from kerasnorm._common import AffineMixin, positive_float
from kerasnorm.layer_normalization import _broadcast


@keras.saving.register_keras_serializable(package="kerasnorm")
class InstanceNormalization(AffineMixin, keras.layers.Layer):
    """Normalizes each channel of each sample over its positions.

    Returns `gamma * (x - mean) / sqrt(var + epsilon) + beta` where the mean and variance
    are taken per sample and per channel over all positions (every axis but the batch and
    channel axes: the pixels of an image, the steps of a sequence), and `gamma` and
    `beta` are per channel. This is `GroupNormalization` with one channel per group, and
    gives the same numbers as `keras.layers.GroupNormalization(groups=channels)` (without
    a mask, which Keras's layer leaves out of its statistics). No state, and the same
    output in training and inference, at any batch size.

    Instance normalization needs positions: inputs of rank 3 or more. For a dense layer's
    `(batch, units)` output each statistic would cover one element (the output would be
    `beta`), so rank 2 raises `ValueError`. The statistics are computed in float32
    (float64 for float64 inputs) with two passes, also for float16/bfloat16 inputs.

    A mask over leading axes (e.g. `(batch, time)` for padded sequences, as from
    `Embedding(mask_zero=True)`, or `(batch, height, width)`) keeps masked positions out
    of the statistics, so a sequence's output does not depend on how much padding it
    carries. The mask passes through to the next layer.

    Args:
        axis: Integer, the channel axis. Default -1.
        epsilon: Positive float added to the variance before the square root. Default
            1e-3, as Keras's `GroupNormalization`.
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
        inputs: Floating-point tensor of rank 3 or more.
        mask: Optional boolean tensor covering leading axes of `inputs` (the batch axis
            first, never the channel axis); masked positions do not enter the statistics.

    Example:
        >>> import keras
        >>> import numpy as np
        >>> import kerasnorm
        >>> x = np.array([[[1.0, 10.0], [3.0, 50.0], [5.0, 30.0]]])  # (batch, positions, channels)
        >>> print(keras.ops.convert_to_numpy(kerasnorm.InstanceNormalization()(x)).round(2))
        [[[-1.22 -1.22]
          [ 0.    1.22]
          [ 1.22  0.  ]]]

    Reference:
        - [Ulyanov et al., 2016](https://arxiv.org/abs/1607.08022), "Instance
          Normalization: The Missing Ingredient for Fast Stylization".
    """

    def __init__(
        self,
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
        if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
            raise ValueError(f"Argument `axis` must be an int (the channel axis). Received: axis={axis!r}")
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
        self._position_axes = None

    def build(self, input_shape):
        ndim = len(input_shape)
        if ndim < 3:
            raise ValueError(
                "InstanceNormalization normalizes each channel over positions, and inputs "
                "of rank 2 (batch, channels) have none: use it on convolutional maps or "
                "sequences (rank 3 or more), or LayerNormalization on dense layers. "
                f"Received: input_shape={tuple(input_shape)}"
            )
        (axis,) = M.canonicalize_axes(self.axis, ndim)
        if axis == 0:
            raise ValueError(
                "The channel axis cannot be the batch axis. "
                f"Received: axis={self.axis}, input_shape={tuple(input_shape)}"
            )
        channels = input_shape[axis]
        if channels is None:
            raise ValueError(
                f"Axis {self.axis} of the input (the channels) must have a known size to "
                f"hold weights. Received: input_shape={tuple(input_shape)}"
            )
        self._channel_axis = axis
        self._position_axes = tuple(a for a in range(1, ndim) if a != axis)
        self._build_affine((channels,))
        self.input_spec = keras.layers.InputSpec(ndim=ndim, axes={axis: channels})

    def call(self, inputs, mask=None):
        M.check_floating(inputs, self.name)
        ndim = len(inputs.shape)
        dtype = M.statistics_dtype(inputs.dtype)
        x = ops.cast(inputs, dtype)
        weights = M.mask_weights(mask, x)
        if weights is not None and len(mask.shape) > self._channel_axis:
            raise ValueError(
                "The mask must not cover the channel axis. "
                f"Received: mask.shape={tuple(mask.shape)}, axis={self.axis}"
            )
        stats = M.moments(x, self._position_axes, weights)
        channel = (self._channel_axis,)
        gamma = _broadcast(ops.cast(self.gamma, dtype), channel, ndim) if self.scale else None
        beta = _broadcast(ops.cast(self.beta, dtype), channel, ndim) if self.center else None
        outputs = M.normalize(x, stats.mean, stats.variance, gamma, beta, self.epsilon)
        return ops.cast(outputs, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        M.canonicalize_axes(self.axis, len(input_shape))
        return input_shape

    def get_config(self):
        config = {"axis": self.axis, "epsilon": self.epsilon, **self._affine_config()}
        return {**super().get_config(), **config}
