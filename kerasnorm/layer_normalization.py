"""Layer normalization: a drop-in for `keras.layers.LayerNormalization`."""

from __future__ import annotations

import keras
from keras import ops

from kerasnorm import kernels
from kerasnorm import moments as M
from kerasnorm._common import AffineMixin, positive_float


@keras.saving.register_keras_serializable(package="kerasnorm")
class LayerNormalization(AffineMixin, keras.layers.Layer):
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
        self.epsilon = positive_float("epsilon", epsilon)
        self._init_affine(
            center, scale, beta_initializer, gamma_initializer,
            beta_regularizer, gamma_regularizer, beta_constraint, gamma_constraint,
        )  # fmt: skip
        self.supports_masking = True
        # Statistics are computed in float32 whatever the policy: no input autocast.
        self.autocast = False
        self._axes = None

    def build(self, input_shape):
        self._axes, shape = M.weight_axes_and_shape(self.axis, input_shape)
        self._build_affine(shape)

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
            **self._affine_config(),
        }
        return {**super().get_config(), **config}
