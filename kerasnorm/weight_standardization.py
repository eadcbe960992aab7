"""Weight-standardized convolutions (Qiao et al. 2019) and their folding into plain ones."""

from __future__ import annotations

import keras
from keras import ops

from kerasnorm import moments as M
from kerasnorm._cloning import replace_layers
from kerasnorm._common import positive_float

# The default epsilon, 1e-6. Where the kernel's variance is far above it, as under Keras's
# initializers (about 1 / fan-in, 1e-4 for a 3x3 convolution of 1024 channels), the
# standardization is exact to 1% or better; epsilon only keeps a kernel of zero variance
# (a constant one, or a fan-in of one) finite. 1e-6 is timm's StdConv2d's, which computes
# the same (w - mean) / sqrt(var + eps) with the biased variance; Qiao et al.'s code adds
# 1e-5 to the unbiased standard deviation instead.


class WeightStandardizationMixin:
    """The standardized kernel and the convolution that uses it, for a Keras `Conv1D` or
    `Conv2D` subclass (the Keras class comes second in the bases)."""

    def _init_standardization(self, epsilon):
        self.epsilon = positive_float("epsilon", epsilon)

    def add_weight(self, *args, **kwargs):
        # The kernel is standardized from its float32 value: autocast would first round it
        # to float16 under mixed precision, and a kernel of small norm (as weight decay
        # leaves scale-invariant weights) to float16's subnormals or zero. Keras's `build`
        # creates it; only its autocast differs, its name, shape and order are Keras's.
        if kwargs.get("name") == "kernel":
            kwargs["autocast"] = False
        return super().add_weight(*args, **kwargs)

    def standardized_kernel(self):
        """The kernel the layer convolves with: `(kernel - mean) / sqrt(var + epsilon)`,
        the mean and biased variance taken per output channel (the last axis) over its
        fan-in (all other axes), in float32 (float64 for a float64 layer)."""
        kernel = self.kernel
        k = ops.cast(kernel, M.statistics_dtype(kernel.dtype))
        stats = M.moments(k, tuple(range(len(k.shape) - 1)))
        return M.normalize(k, stats.mean, stats.variance, None, None, self.epsilon)

    def call(self, inputs):
        # Keras's Conv1D/Conv2D `call`, with the standardized kernel.
        padding = self.padding
        if padding == "causal":
            inputs = ops.pad(inputs, self._compute_causal_padding())
            padding = "valid"
        outputs = ops.conv(
            inputs,
            ops.cast(self.standardized_kernel(), self.compute_dtype),
            strides=list(self.strides),
            padding=padding,
            dilation_rate=self.dilation_rate,
            data_format=self.data_format,
        )
        if self.use_bias:
            if self.data_format == "channels_last":
                bias_shape = (1,) * (self.rank + 1) + (self.filters,)
            else:
                bias_shape = (1, self.filters) + (1,) * self.rank
            outputs = outputs + ops.reshape(self.bias, bias_shape)
        if self.activation is not None:
            return self.activation(outputs)
        return outputs

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


_DOC = """{rank}-D convolution with weight standardization; a drop-in `keras.layers.{base}`.

    At every call the kernel is standardized per output channel over its fan-in (the
    kernel's axes but the last: the window and the input channels of a group):

        w_hat = (w - mean(w)) / sqrt(var(w) + epsilon)

    with the biased variance, in float32 (float64 for a float64 layer), also under mixed
    precision; the convolution then uses `w_hat` (`standardized_kernel()` returns it).
    The output no longer depends on the scale or the per-channel mean of the kernel; the
    paper shows that this smooths the loss landscape, and pairs it with group
    normalization for training with small batches.

    Everything else is Keras's `{base}`: the arguments (plus `epsilon`), the weights
    (`kernel`, `bias`: same names, shapes and order, the raw kernel stored, standardized
    at each call) and LoRA (`lora_rank`: the kernel is standardized with its low-rank
    update). So `set_weights` takes a `{base}`'s weights, and a model of the same
    architecture takes a Keras model's: `ws_model.set_weights(conv_model.get_weights())`,
    `conv_model` loaded from its file if need be (`load_weights` does not match the two:
    `.keras` and `.weights.h5` files store a layer's weights under its class name).
    `fold_weight_standardization` turns a trained model's layers into plain `{base}`
    layers with the standardized kernel, for inference.

    Args:
        epsilon: Positive float added to the kernel's variance before the square root.
            Default 1e-6 (as timm's StdConv2d): it only keeps a kernel of zero variance
            finite, and is far below the variance of kernels from Keras's initializers.
        *args, **kwargs: Those of `keras.layers.{base}` (`filters`, `kernel_size`,
            `strides`, `padding`, `data_format`, `activation`, `use_bias`, ...).

    Call arguments:
        inputs: Tensor of rank {rank_plus_2}, as for `keras.layers.{base}`.

    Example:
{example}

    Reference:
        - [Qiao et al., 2019](https://arxiv.org/abs/1903.10520), "Micro-Batch Training with
          Batch-Channel Normalization and Weight Standardization".
    """


@keras.saving.register_keras_serializable(package="kerasnorm")
class WeightStandardizedConv1D(WeightStandardizationMixin, keras.layers.Conv1D):
    __doc__ = _DOC.format(
        rank=1,
        rank_plus_2=3,
        base="Conv1D",
        example="""\
        >>> import keras
        >>> import numpy as np
        >>> import kerasnorm
        >>> conv = kerasnorm.WeightStandardizedConv1D(filters=1, kernel_size=2, use_bias=False)
        >>> conv.build((None, 3, 1))
        >>> conv.set_weights([np.array([[[1.0]], [[3.0]]])])  # mean 2, variance 1
        >>> print(keras.ops.convert_to_numpy(conv.standardized_kernel()).ravel().round(3))
        [-1.  1.]
        >>> x = np.array([[[1.0], [2.0], [4.0]]])  # (batch, steps, channels)
        >>> print(keras.ops.convert_to_numpy(conv(x)).ravel().round(3))  # -x[t] + x[t + 1]
        [1. 2.]""",
    )

    def __init__(self, *args, epsilon=1e-6, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_standardization(epsilon)


@keras.saving.register_keras_serializable(package="kerasnorm")
class WeightStandardizedConv2D(WeightStandardizationMixin, keras.layers.Conv2D):
    __doc__ = _DOC.format(
        rank=2,
        rank_plus_2=4,
        base="Conv2D",
        example="""\
        >>> import keras
        >>> import numpy as np
        >>> import kerasnorm
        >>> conv = kerasnorm.WeightStandardizedConv2D(filters=4, kernel_size=3)
        >>> conv.build((None, 8, 8, 3))
        >>> kernel = keras.ops.convert_to_numpy(conv.standardized_kernel())  # (3, 3, 3, 4)
        >>> fan_in = (0, 1, 2)  # per output channel: over the window and input channels
        >>> bool(np.abs(kernel.mean(axis=fan_in)).max() < 1e-6), kernel.std(axis=fan_in).round(3).tolist()
        (True, [1.0, 1.0, 1.0, 1.0])""",
    )

    def __init__(self, *args, epsilon=1e-6, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_standardization(epsilon)


WEIGHT_STANDARDIZED_TYPES = {
    WeightStandardizedConv1D: keras.layers.Conv1D,
    WeightStandardizedConv2D: keras.layers.Conv2D,
}


def fold_weight_standardization(model):
    """Returns a new inference model with weight standardization folded into the kernels.

    Each `WeightStandardizedConv1D`/`WeightStandardizedConv2D` becomes a plain
    `keras.layers.Conv1D`/`Conv2D` of the same name and configuration (less `epsilon`;
    a LoRA update is folded in too) whose kernel is the layer's `standardized_kernel()`
    and whose bias is the layer's: the same predictions within float32 rounding, without
    standardizing the kernel at every call, and a model that loads without kerasnorm as
    far as these layers go. Every other layer keeps its weights; the original model is
    untouched. Works for Sequential and functional models, nested ones included. Meant
    for inference: training the plain convolutions no longer standardizes them.

    Args:
        model: A built Sequential or functional Keras model.

    Returns:
        The new model.

    Example:
        >>> import keras
        >>> import numpy as np
        >>> import kerasnorm
        >>> model = keras.Sequential(
        ...     [keras.Input((5, 2)), kerasnorm.WeightStandardizedConv1D(3, 2), keras.layers.ReLU()]
        ... )
        >>> folded = kerasnorm.fold_weight_standardization(model)
        >>> [type(layer).__name__ for layer in folded.layers]
        ['Conv1D', 'ReLU']
        >>> x = np.random.default_rng(0).normal(size=(1, 5, 2))
        >>> y, y_folded = (keras.ops.convert_to_numpy(m(x)) for m in (model, folded))
        >>> bool(np.allclose(y, y_folded, atol=1e-6))
        True
    """

    def replace(layer):
        base = WEIGHT_STANDARDIZED_TYPES.get(type(layer))
        if base is None:
            return None
        config = layer.get_config()
        for key in ("epsilon", "lora_rank", "lora_alpha"):
            config.pop(key, None)
        kernel = ops.convert_to_numpy(layer.standardized_kernel())
        weights = [kernel] + ([ops.convert_to_numpy(layer.bias)] if layer.use_bias else [])

        def set_weights(new):
            new.set_weights([w.astype(v.dtype) for w, v in zip(weights, new.weights)])

        return base.from_config(config), set_weights

    return replace_layers(model, replace, "folding")
