"""Layer normalization: a drop-in for `keras.layers.LayerNormalization`."""

from __future__ import annotations

import warnings

import keras
from keras import ops

from kerasnorm import kernels
from kerasnorm import moments as M
from kerasnorm._common import AffineMixin, call_axes, check_bool, keras_axis_argument, positive_float


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
    (float64 for float64 inputs) with two passes, also for float16/bfloat16 inputs. As
    Keras's, a layer built for inputs of one rank normalizes `axis` of inputs of another
    (e.g. the last axis for `axis=-1`); where the weights do not fit those axes it raises
    `ValueError`.

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
        rms_scaling: Deprecated, as in Keras (a warning says so): if True, return
            `gamma * x / sqrt(var + epsilon)`, nothing subtracted and no `beta` (the
            variance, not the root mean square: `kerasnorm.RMSNormalization` is the
            real RMS normalization). `gamma` is created whatever `scale`. Default False.
        **kwargs: Base layer keyword arguments (e.g. `name`, `dtype`).

    Call arguments:
        inputs: Floating-point tensor of any rank. A mask, if any, passes through
            unchanged (each position is normalized on its own).

    Example:
        >>> import keras
        >>> import numpy as np
        >>> import kerasnorm
        >>> x = np.array([[1.0, 2.0, 4.0], [10.0, 20.0, 40.0]])
        >>> print(keras.ops.convert_to_numpy(kerasnorm.LayerNormalization()(x)).round(2))
        [[-1.07 -0.27  1.34]
         [-1.07 -0.27  1.34]]

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
        rms_scaling=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.rms_scaling = check_bool("rms_scaling", rms_scaling)
        if rms_scaling:
            warnings.warn(
                "You passed `rms_scaling=True`, which is deprecated (as in Keras): it scales "
                "the input by the variance, not the root mean square. For RMS normalization "
                "use `kerasnorm.RMSNormalization`.",
                stacklevel=2,
            )
        self.axis = keras_axis_argument(axis)
        self.epsilon = positive_float("epsilon", epsilon)
        self._init_affine(
            center, scale, beta_initializer, gamma_initializer,
            beta_regularizer, gamma_regularizer, beta_constraint, gamma_constraint,
        )  # fmt: skip
        self.supports_masking = True
        # Statistics are computed in float32 whatever the policy: no input autocast.
        self.autocast = False
        self._weight_shape = None
        self._built_rank = None

    def build(self, input_shape):
        _, self._weight_shape = M.weight_axes_and_shape(self.axis, input_shape)
        self._built_rank = len(input_shape)
        # Keras's form, which `get_config` then reports: a sorted list once built.
        self.axis = sorted(self.axis) if isinstance(self.axis, list) else [self.axis]
        # As Keras: rms_scaling keeps `gamma` and drops `beta`.
        self._build_affine(
            self._weight_shape, scale=self.scale or self.rms_scaling, center=self.center and not self.rms_scaling
        )

    def call(self, inputs):
        M.check_floating(inputs, self.name)
        ndim = len(inputs.shape)
        axes = call_axes(self.axis, inputs.shape, self._built_rank, self._weight_shape, self.name)
        dtype = M.statistics_dtype(inputs.dtype)
        x = ops.cast(inputs, dtype)
        if not self.rms_scaling and kernels.available(x, axes, None, False, trailing_block=True, kernel="layer_norm"):
            gamma = ops.cast(self.gamma, dtype) if self.gamma is not None else ops.ones(self._weight_shape)
            beta = ops.cast(self.beta, dtype) if self.beta is not None else ops.zeros(self._weight_shape)
            outputs = kernels.layer_norm(x, gamma, beta, self.epsilon, num_axes=len(axes))
        else:
            stats = M.moments(x, axes)
            gamma, beta = (
                None if w is None else _broadcast(ops.cast(w, dtype), axes, ndim) for w in (self.gamma, self.beta)
            )
            # rms_scaling (deprecated): the variance without the mean subtracted.
            mean = 0.0 if self.rms_scaling else stats.mean
            outputs = M.normalize(x, mean, stats.variance, gamma, beta, self.epsilon)
        return ops.cast(outputs, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        M.canonicalize_axes(self.axis, len(input_shape))
        return input_shape

    def get_config(self):
        config = {
            "axis": self.axis,
            "epsilon": self.epsilon,
            **self._affine_config(),
            "rms_scaling": self.rms_scaling,
        }
        return {**super().get_config(), **config}


def _broadcast(weight, axes, ndim):
    """A weight spanning `axes` reshaped to broadcast against rank-`ndim` inputs."""
    shape = [1] * ndim
    for a, n in zip(axes, weight.shape):
        shape[a] = n
    return ops.reshape(weight, shape)
