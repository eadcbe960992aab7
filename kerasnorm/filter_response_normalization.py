"""Filter response normalization with its thresholded linear unit (Singh & Krishnan 2020):
per sample and channel, no batch dependence."""

from __future__ import annotations

import numbers

import keras
from keras import constraints, initializers, ops, regularizers

from kerasnorm import moments as M
from kerasnorm._common import AffineMixin, check_bool, positive_float


def _channel_axis(axis, input_shape, layer):
    """The canonical channel axis of `input_shape`; `ValueError` for the batch axis or a
    channel count unknown at build time."""
    (channel,) = M.canonicalize_axes(axis, len(input_shape))
    if channel == 0:
        raise ValueError(
            f"{layer} normalizes per sample: the channel axis cannot be the batch axis. "
            f"Received: axis={axis}, input_shape={tuple(input_shape)}"
        )
    if input_shape[channel] is None:
        raise ValueError(
            f"Axis {axis} of the input must have a known size to hold weights. "
            f"Received: input_shape={tuple(input_shape)}"
        )
    return channel


def _check_channel_axis(axis):
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise ValueError(f"Argument `axis` must be an int (the channel axis). Received: axis={axis!r}")
    return int(axis)


def _init_tau(layer, initializer, regularizer, constraint):
    layer.tau_initializer = initializers.get(initializer)
    layer.tau_regularizer = regularizers.get(regularizer)
    layer.tau_constraint = constraints.get(constraint)
    layer.tau = None


def _build_tau(layer, channels):
    """The TLU threshold, one per channel; never autocast (the maths runs in float32)."""
    layer.tau = layer.add_weight(
        shape=(channels,),
        name="tau",
        initializer=layer.tau_initializer,
        regularizer=layer.tau_regularizer,
        constraint=layer.tau_constraint,
        trainable=True,
        autocast=False,
    )


def _tau_config(layer):
    return {
        "tau_initializer": initializers.serialize(layer.tau_initializer),
        "tau_regularizer": regularizers.serialize(layer.tau_regularizer),
        "tau_constraint": constraints.serialize(layer.tau_constraint),
    }


def _per_channel(weight, dtype, ndim, channel):
    """A `(channels,)` weight shaped to broadcast against rank-`ndim` inputs."""
    shape = [1] * ndim
    shape[channel] = weight.shape[0]
    return ops.reshape(ops.cast(weight, dtype), shape)


@keras.saving.register_keras_serializable(package="kerasnorm")
class FilterResponseNormalization(AffineMixin, keras.layers.Layer):
    """Filter response normalization (FRN) followed by a thresholded linear unit (TLU).

    Each channel of each sample is divided by the root mean square of its responses over
    the positions (all axes but the batch and channel axes), then scaled and shifted per
    channel; the TLU then thresholds it at a learned per-channel `tau` (eq. 1-2 of the
    paper):

        nu2 = mean(x**2 over positions)
        y = gamma * x / sqrt(nu2 + epsilon) + beta
        z = max(y, tau)

    Nothing is subtracted: the TLU's learned threshold takes the place of mean centering,
    which is why the paper pairs the two (`use_tlu=False` gives FRN alone, to follow with
    another activation; `kerasnorm.TLU` is the threshold alone, e.g. after another
    normalization). No batch statistics: the output of a sample never depends on its
    batch-mates, the same in training and inference, at any batch size, including 1.

    FRN needs positions: inputs of rank 3 or more (`(batch, positions..., channels)` for
    the default `axis=-1`, the convolutional maps the paper targets). A dense layer's
    `(batch, units)` output has none (each unit would be divided by its own magnitude)
    and raises `ValueError`. With one position (a 1x1 map) `x / sqrt(x**2 + epsilon)` is
    nearly a sign function; the paper then learns epsilon, which this layer does not:
    raise `epsilon` instead (the paper's default for larger maps is 1e-6). The mean
    square is computed in float32 (float64 for float64 inputs), also for float16 inputs.

    Args:
        axis: Integer, the channel axis. Default -1.
        epsilon: Positive float added to the mean square before the square root.
            Default 1e-6, the paper's.
        center: If True, add the learned per-channel offset `beta`.
        scale: If True, multiply by the learned per-channel scale `gamma`.
        use_tlu: If True (default), end with the TLU `max(y, tau)`; adds the weight `tau`.
        beta_initializer: Initializer for `beta`.
        gamma_initializer: Initializer for `gamma`.
        tau_initializer: Initializer for `tau`.
        beta_regularizer: Optional regularizer for `beta`.
        gamma_regularizer: Optional regularizer for `gamma`.
        tau_regularizer: Optional regularizer for `tau`.
        beta_constraint: Optional constraint for `beta`.
        gamma_constraint: Optional constraint for `gamma`.
        tau_constraint: Optional constraint for `tau`.
        **kwargs: Base layer keyword arguments (e.g. `name`, `dtype`).

    Call arguments:
        inputs: Floating-point tensor of rank 3 or more.
        mask: Optional boolean tensor covering leading axes of `inputs` (e.g. `(batch,
            time)` for padded sequences), never the channel axis; masked positions do
            not enter the mean square. The mask passes through to the next layer.

    Example:
        >>> import keras
        >>> import numpy as np
        >>> import kerasnorm
        >>> x = np.array([[[3.0], [-4.0]]])  # (batch, positions, channels)
        >>> frn = kerasnorm.FilterResponseNormalization()
        >>> print(keras.ops.convert_to_numpy(frn(x)).round(2))  # max(x / 3.54, tau = 0)
        [[[0.85]
          [0.  ]]]

    Reference:
        - [Singh and Krishnan, 2020](https://arxiv.org/abs/1911.09737), eq. 1-2.
    """

    def __init__(
        self,
        axis=-1,
        epsilon=1e-6,
        center=True,
        scale=True,
        use_tlu=True,
        beta_initializer="zeros",
        gamma_initializer="ones",
        tau_initializer="zeros",
        beta_regularizer=None,
        gamma_regularizer=None,
        tau_regularizer=None,
        beta_constraint=None,
        gamma_constraint=None,
        tau_constraint=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.axis = _check_channel_axis(axis)
        self.epsilon = positive_float("epsilon", epsilon)
        self._init_affine(
            center, scale, beta_initializer, gamma_initializer,
            beta_regularizer, gamma_regularizer, beta_constraint, gamma_constraint,
        )  # fmt: skip
        self.use_tlu = check_bool("use_tlu", use_tlu)
        _init_tau(self, tau_initializer, tau_regularizer, tau_constraint)
        self.supports_masking = True
        # The mean square is computed in float32 whatever the policy: no input autocast.
        self.autocast = False
        self._channel = None
        self._position_axes = None

    def build(self, input_shape):
        ndim = len(input_shape)
        if ndim < 3:
            raise ValueError(
                "FilterResponseNormalization normalizes each channel over positions, and "
                "inputs of rank 2 (batch, channels) have none: use it on convolutional "
                "maps or sequences (rank 3 or more), or LayerNormalization on dense "
                f"layers. Received: input_shape={tuple(input_shape)}"
            )
        self._channel = _channel_axis(self.axis, input_shape, "FilterResponseNormalization")
        self._position_axes = tuple(a for a in range(1, ndim) if a != self._channel)
        channels = input_shape[self._channel]
        self._build_affine((channels,))
        if self.use_tlu:
            _build_tau(self, channels)
        self.input_spec = keras.layers.InputSpec(ndim=ndim, axes={self._channel: channels})

    def call(self, inputs, mask=None):
        M.check_floating(inputs, self.name)
        ndim = len(inputs.shape)
        dtype = M.statistics_dtype(inputs.dtype)
        x = ops.cast(inputs, dtype)
        weights = M.mask_weights(mask, x)
        if weights is not None and len(mask.shape) > self._channel:
            raise ValueError(
                "The mask must not cover the channel axis. "
                f"Received: mask.shape={tuple(mask.shape)}, axis={self.axis}"
            )
        nu2 = M.mean_square(x, self._position_axes, weights)
        gamma = _per_channel(self.gamma, dtype, ndim, self._channel) if self.scale else None
        beta = _per_channel(self.beta, dtype, ndim, self._channel) if self.center else None
        # Zero mean: `normalize` then computes gamma * x * rsqrt(nu2 + epsilon) + beta.
        outputs = M.normalize(x, 0.0, nu2, gamma, beta, self.epsilon)
        if self.use_tlu:
            outputs = ops.maximum(outputs, _per_channel(self.tau, dtype, ndim, self._channel))
        return ops.cast(outputs, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        M.canonicalize_axes(self.axis, len(input_shape))
        return input_shape

    def get_config(self):
        config = {
            "axis": self.axis,
            "epsilon": self.epsilon,
            **self._affine_config(),
            "use_tlu": self.use_tlu,
            **_tau_config(self),
        }
        return {**super().get_config(), **config}


@keras.saving.register_keras_serializable(package="kerasnorm")
class TLU(keras.layers.Layer):
    """Thresholded linear unit: `max(x, tau)` with a learned threshold `tau` per channel.

    The activation that `FilterResponseNormalization` ends with (`use_tlu=True`), as a
    layer of its own: the paper also reports it helping after batch and group
    normalization. With `tau` at its initial 0 it is a ReLU. A mask passes through.

    Args:
        axis: Integer, the channel axis (`tau` has one value per channel). Default -1.
        tau_initializer: Initializer for `tau`.
        tau_regularizer: Optional regularizer for `tau`.
        tau_constraint: Optional constraint for `tau`.
        **kwargs: Base layer keyword arguments (e.g. `name`, `dtype`).

    Call arguments:
        inputs: Floating-point tensor of rank 2 or more.

    Example:
        >>> import keras
        >>> import numpy as np
        >>> import kerasnorm
        >>> x = np.array([[-1.0, 2.0]])
        >>> print(keras.ops.convert_to_numpy(kerasnorm.TLU()(x)))  # tau starts at 0
        [[0. 2.]]

    Reference:
        - [Singh and Krishnan, 2020](https://arxiv.org/abs/1911.09737), eq. 2.
    """

    def __init__(self, axis=-1, tau_initializer="zeros", tau_regularizer=None, tau_constraint=None, **kwargs):
        super().__init__(**kwargs)
        self.axis = _check_channel_axis(axis)
        _init_tau(self, tau_initializer, tau_regularizer, tau_constraint)
        self.supports_masking = True
        self._channel = None

    def build(self, input_shape):
        self._channel = _channel_axis(self.axis, input_shape, "TLU")
        channels = input_shape[self._channel]
        _build_tau(self, channels)
        self.input_spec = keras.layers.InputSpec(ndim=len(input_shape), axes={self._channel: channels})

    def call(self, inputs):
        M.check_floating(inputs, self.name)
        tau = _per_channel(self.tau, inputs.dtype, len(inputs.shape), self._channel)
        return ops.maximum(inputs, tau)

    def compute_output_shape(self, input_shape):
        M.canonicalize_axes(self.axis, len(input_shape))
        return input_shape

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, **_tau_config(self)}
