"""Layer normalization: a drop-in for `keras.layers.LayerNormalization`."""

from __future__ import annotations

import math

import keras
from keras import constraints, initializers, ops, regularizers

from kerasnorm import kernels
from kerasnorm import moments as M
from kerasnorm.batch_normalization import _check_bool, _float_in


@keras.saving.register_keras_serializable(package="kerasnorm")
class LayerNormalization(keras.layers.Layer):
    """Normalizes each sample over the features of a layer; a drop-in
    `keras.layers.LayerNormalization`.

    Returns `gamma * (x - mean) / sqrt(var + epsilon) + beta` where the mean and variance
    are taken per sample over `axis`. There is no state and no batch dependence: a sample's
    output is the same whatever its batch-mates, in training and in inference, at any
    batch size (batch size 1 included).

    The arguments, weights (`gamma`, `beta` shaped like the normalized axes), saved files
    and numbers are those of Keras's layer. The statistics are always computed in float32
    (float64 for float64 inputs) with two passes, also for float16/bfloat16 inputs.

    Args:
        axis: Integer or list of integers, the axes to normalize over (and that `gamma`
            and `beta` span). Default -1.
        epsilon: Positive float added to the variance before the square root.
        center: If True, add the learned offset `beta`.
        scale: If True, multiply by the learned scale `gamma`.
        beta_initializer: Initializer for `beta`.
        gamma_initializer: Initializer for `gamma`.
        beta_regularizer: Optional regularizer for `beta`.
        gamma_regularizer: Optional regularizer for `gamma`.
        beta_constraint: Optional constraint for `beta`.
        gamma_constraint: Optional constraint for `gamma`.
        **kwargs: Base layer keyword arguments (e.g. `name`, `dtype`).

    Call arguments:
        inputs: Floating-point tensor of any rank. A mask, if any, passes through
            unchanged (each position is normalized on its own).

    Reference:
        - [Ba et al., 2016](https://arxiv.org/abs/1607.06450).
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
        if kwargs.pop("rms_scaling", False):
            raise ValueError(
                "kerasnorm.LayerNormalization does not take rms_scaling=True (Keras deprecated "
                "it: it scales by the variance, not the root mean square). Use "
                "kerasnorm.RMSNormalization. Received: rms_scaling=True"
            )
        super().__init__(**kwargs)
        self.axis = M.validate_axis_argument(axis)
        self.epsilon = _float_in("epsilon", epsilon, 0.0, math.inf, low_open=True)
        self.center = _check_bool("center", center)
        self.scale = _check_bool("scale", scale)
        self.beta_initializer = initializers.get(beta_initializer)
        self.gamma_initializer = initializers.get(gamma_initializer)
        self.beta_regularizer = regularizers.get(beta_regularizer)
        self.gamma_regularizer = regularizers.get(gamma_regularizer)
        self.beta_constraint = constraints.get(beta_constraint)
        self.gamma_constraint = constraints.get(gamma_constraint)
        self.supports_masking = True
        # Statistics are computed in float32 whatever the policy: no input autocast.
        self.autocast = False
        self.gamma = None
        self.beta = None
        self._axes = None

    def build(self, input_shape):
        self._axes = M.canonicalize_axes(self.axis, len(input_shape))
        shape = tuple(input_shape[a] for a in self._axes)
        if any(d is None for d in shape):
            raise ValueError(
                "The normalized axes must have known sizes to hold weights. "
                f"Received: input_shape={tuple(input_shape)}, axis={self.axis!r}"
            )
        if self.scale:
            self.gamma = self.add_weight(
                name="gamma",
                shape=shape,
                initializer=self.gamma_initializer,
                regularizer=self.gamma_regularizer,
                constraint=self.gamma_constraint,
                trainable=True,
                autocast=False,
            )
        if self.center:
            self.beta = self.add_weight(
                name="beta",
                shape=shape,
                initializer=self.beta_initializer,
                regularizer=self.beta_regularizer,
                constraint=self.beta_constraint,
                trainable=True,
                autocast=False,
            )

    def _broadcast(self, weight, ndim):
        shape = [1] * ndim
        for i, a in enumerate(self._axes):
            shape[a] = weight.shape[i]
        return ops.reshape(weight, shape)

    def call(self, inputs):
        M.check_floating(inputs, self.name)
        ndim = len(inputs.shape)
        dtype = M.statistics_dtype(inputs.dtype)
        x = ops.cast(inputs, dtype)
        if kernels.available(x, self._axes, None, False, trailing_block=True):
            shape = tuple(x.shape[a] for a in self._axes)
            gamma = ops.cast(self.gamma, dtype) if self.scale else ops.ones(shape)
            beta = ops.cast(self.beta, dtype) if self.center else ops.zeros(shape)
            outputs = kernels.layer_norm(x, gamma, beta, self.epsilon, num_axes=len(self._axes))
        else:
            stats = M.moments(x, self._axes)
            gamma = self._broadcast(ops.cast(self.gamma, dtype), ndim) if self.scale else None
            beta = self._broadcast(ops.cast(self.beta, dtype), ndim) if self.center else None
            outputs = M.normalize(x, stats.mean, stats.variance, gamma, beta, self.epsilon)
        return ops.cast(outputs, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        M.canonicalize_axes(self.axis, len(input_shape))
        return input_shape

    def get_config(self):
        config = {
            "axis": self.axis,
            "epsilon": self.epsilon,
            "center": self.center,
            "scale": self.scale,
            "beta_initializer": initializers.serialize(self.beta_initializer),
            "gamma_initializer": initializers.serialize(self.gamma_initializer),
            "beta_regularizer": regularizers.serialize(self.beta_regularizer),
            "gamma_regularizer": regularizers.serialize(self.gamma_regularizer),
            "beta_constraint": constraints.serialize(self.beta_constraint),
            "gamma_constraint": constraints.serialize(self.gamma_constraint),
        }
        return {**super().get_config(), **config}
