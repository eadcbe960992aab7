"""Root-mean-square normalization: a drop-in for `keras.layers.RMSNormalization`."""

from __future__ import annotations

import keras
from keras import ops

from kerasnorm import kernels
from kerasnorm import moments as M
from kerasnorm._common import call_axes, keras_axis_argument, positive_float


@keras.saving.register_keras_serializable(package="kerasnorm")
class RMSNormalization(keras.layers.Layer):
    """Scales each sample by the inverse root mean square of its features; a drop-in
    `keras.layers.RMSNormalization`.

    Returns `x * rsqrt(mean(x^2) + epsilon) * scale`, the mean taken per sample over
    `axis`, exactly the formula of `keras.ops.rms_normalization` (epsilon inside the
    square root). Unlike layer normalization nothing is subtracted and there is no offset.
    No state, and the same output in training and inference.

    The arguments, defaults, weight (`scale`, shaped like the normalized axes), saved
    files and numbers are those of Keras's layer. The mean square is computed in float32
    (float64 for float64 inputs) by `kerasnorm.moments.mean_square`, also for
    float16/bfloat16 inputs; for a trailing block of axes under JAX and PyTorch, by the
    backend's fast path of `kerasnorm.kernels` (the same maths: PyTorch's `F.rms_norm`,
    as Keras's layer there).
    A mask passes through unchanged (each position is normalized on its own). As Keras's,
    a layer built for inputs of one rank normalizes `axis` of inputs of another (e.g. the
    last axis for `axis=-1`); where `scale` does not fit those axes it raises `ValueError`.

    Args:
        axis: Integer or list of integers, the axes to normalize over (and that `scale`
            spans). Default -1.
        epsilon: Positive float added to the mean square before the square root.
            Default 1e-6.
        **kwargs: Base layer keyword arguments (e.g. `name`, `dtype`).

    Call arguments:
        inputs: Floating-point tensor of any rank.

    Example:
        >>> import keras
        >>> import numpy as np
        >>> import kerasnorm
        >>> x = np.array([[3.0, 4.0]])  # root mean square 3.54
        >>> print(keras.ops.convert_to_numpy(kerasnorm.RMSNormalization()(x)).round(2))
        [[0.85 1.13]]

    Reference:
        - [Zhang and Sennrich, 2019](https://arxiv.org/abs/1910.07467).
    """

    def __init__(self, axis=-1, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.axis = keras_axis_argument(axis)
        self.epsilon = positive_float("epsilon", epsilon)
        self.supports_masking = True
        # The mean square is computed in float32 whatever the policy: no input autocast.
        self.autocast = False
        self.scale = None
        self._built_rank = None

    def build(self, input_shape):
        _, shape = M.weight_axes_and_shape(self.axis, input_shape)
        self._built_rank = len(input_shape)
        # Keras's form, which `get_config` then reports: a sorted list once built.
        self.axis = sorted(self.axis) if isinstance(self.axis, list) else [self.axis]
        self.scale = self.add_weight(name="scale", shape=shape, initializer="ones", autocast=False)

    def call(self, inputs):
        M.check_floating(inputs, self.name)
        ndim = len(inputs.shape)
        axes = call_axes(self.axis, inputs.shape, self._built_rank, self.scale.shape, self.name)
        dtype = M.statistics_dtype(inputs.dtype)
        x = ops.cast(inputs, dtype)
        if kernels.available(x, axes, None, False, trailing_block=True, kernel="rms_norm"):
            outputs = kernels.rms_norm(x, ops.cast(self.scale, dtype), self.epsilon, num_axes=len(axes))
            return ops.cast(outputs, self.compute_dtype)
        mean_square = M.mean_square(x, axes)
        scale_shape = [1] * ndim
        for a, n in zip(axes, self.scale.shape):
            scale_shape[a] = n
        scale = ops.reshape(ops.cast(self.scale, dtype), scale_shape)
        # Zero mean: `normalize` then computes x * rsqrt(mean_square + epsilon) * scale.
        outputs = M.normalize(x, 0.0, mean_square, scale, None, self.epsilon)
        return ops.cast(outputs, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        M.canonicalize_axes(self.axis, len(input_shape))
        return input_shape

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, "epsilon": self.epsilon}
