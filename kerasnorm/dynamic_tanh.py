"""Dynamic Tanh (Zhu et al. 2025): an elementwise stand-in for layer normalization, and the
converter that swaps it into a model."""

from __future__ import annotations

import keras
from keras import initializers, ops

from kerasnorm import moments as M
from kerasnorm._cloning import replace_layers
from kerasnorm._common import AFFINE_ARGUMENTS, AffineMixin, call_axes, keras_axis_argument, positive_float
from kerasnorm.layer_normalization import LayerNormalization, _broadcast

LAYER_NORM_TYPES = (keras.layers.LayerNormalization, LayerNormalization)


@keras.saving.register_keras_serializable(package="kerasnorm")
class DynamicTanh(AffineMixin, keras.layers.Layer):
    """Dynamic Tanh (DyT): `gamma * tanh(alpha * x) + beta`, where layer normalization goes.

    A learned scalar `alpha` sets how much of the input lies in tanh's near-linear range
    and how much is squashed, the S-shaped input-output map that layer normalization
    shows in trained transformers; `gamma` and `beta` are the per-feature affine of layer
    normalization. There are no statistics: each element is mapped on its own, so a
    sample's output never depends on other samples or on the other features.

    The arguments follow `kerasnorm.LayerNormalization` (`axis`, `center`, `scale` and
    the affine's initializers, regularizers and constraints), less `epsilon`, which has no
    role here, plus `alpha_init`. `gamma` and `beta` span `axis`, as in layer
    normalization; `convert_to_dynamic_tanh` puts the layer in place of each layer
    normalization of a model. The map is computed in float32 (float64 for float64
    inputs), also for float16/bfloat16 inputs; the output has the layer's compute dtype.

    Args:
        axis: Integer or list of integers, the axes that `gamma` and `beta` span. Default
            -1.
        alpha_init: Positive float, the initial `alpha`. Default 0.5, the paper's for
            vision transformers; it reports that large language models train better with
            smaller values, and smaller still the wider the model.
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
            unchanged (each element is mapped on its own).

    Example:
        >>> import keras
        >>> import numpy as np
        >>> import kerasnorm
        >>> x = np.array([[-4.0, 0.0, 1.0, 4.0]])
        >>> print(keras.ops.convert_to_numpy(kerasnorm.DynamicTanh()(x)).round(2))  # tanh(0.5 * x)
        [[-0.96  0.    0.46  0.96]]

    Reference:
        - [Zhu et al., 2025](https://arxiv.org/abs/2503.10622), "Transformers without
          Normalization".
    """

    def __init__(
        self,
        axis=-1,
        alpha_init=0.5,
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
        self.axis = keras_axis_argument(axis)
        self.alpha_init = positive_float("alpha_init", alpha_init)
        self._init_affine(
            center, scale, beta_initializer, gamma_initializer,
            beta_regularizer, gamma_regularizer, beta_constraint, gamma_constraint,
        )  # fmt: skip
        self.alpha = None
        self.supports_masking = True
        # The map is computed in float32 whatever the policy: no input autocast.
        self.autocast = False
        self._weight_shape = None
        self._built_rank = None

    def build(self, input_shape):
        _, self._weight_shape = M.weight_axes_and_shape(self.axis, input_shape)
        self._built_rank = len(input_shape)
        # The paper's order: alpha, then the affine.
        self.alpha = self.add_weight(
            shape=(),
            name="alpha",
            initializer=initializers.Constant(self.alpha_init),
            trainable=True,
            autocast=False,
        )
        self._build_affine(self._weight_shape)

    def call(self, inputs):
        M.check_floating(inputs, self.name)
        ndim = len(inputs.shape)
        axes = call_axes(self.axis, inputs.shape, self._built_rank, self._weight_shape, self.name)
        dtype = M.statistics_dtype(inputs.dtype)
        x = ops.cast(inputs, dtype)
        outputs = ops.tanh(ops.cast(self.alpha, dtype) * x)
        if self.gamma is not None:
            outputs = outputs * _broadcast(ops.cast(self.gamma, dtype), axes, ndim)
        if self.beta is not None:
            outputs = outputs + _broadcast(ops.cast(self.beta, dtype), axes, ndim)
        return ops.cast(outputs, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        M.canonicalize_axes(self.axis, len(input_shape))
        return input_shape

    def get_config(self):
        config = {"axis": self.axis, "alpha_init": self.alpha_init, **self._affine_config()}
        return {**super().get_config(), **config}


def convert_to_dynamic_tanh(model, alpha_init=0.5):
    """Returns a new model with each layer normalization replaced by `DynamicTanh`.

    Every `keras.layers.LayerNormalization` and `kerasnorm.LayerNormalization` becomes a
    `DynamicTanh` of the same name, dtype policy, `axis`, `center` and `scale` (and the
    same initializers, regularizers and constraints for `gamma` and `beta`), with a fresh
    `alpha` of `alpha_init`. Its `gamma` and `beta` are copied from the layer
    normalization: in an untrained model they are the ones and zeros the paper's
    converter starts from; in a trained one the learned affine is kept, as a starting
    point for fine-tuning (the paper's converter re-initializes it). Every other layer
    keeps its weights, and the original model is untouched. Works for Sequential and
    functional models, nested ones included.

    The new model is not the old one: DyT does not normalize, so its predictions differ
    where the layer normalizations were; it is meant to be trained.

    Args:
        model: A built Sequential or functional Keras model.
        alpha_init: Positive float, the initial `alpha` of every `DynamicTanh`. Default
            0.5.

    Returns:
        The new model.

    Raises:
        ValueError: For a layer normalization with `rms_scaling=True`, which scales by the
            variance without centering: DyT has nothing to stand in for that.

    Example:
        >>> import keras
        >>> import kerasnorm
        >>> model = keras.Sequential(
        ...     [keras.Input((3, 4)), keras.layers.Dense(4), keras.layers.LayerNormalization()]
        ... )
        >>> dyt_model = kerasnorm.convert_to_dynamic_tanh(model, alpha_init=0.5)
        >>> [type(layer).__name__ for layer in dyt_model.layers]
        ['Dense', 'DynamicTanh']
        >>> dyt_model.layers[-1].axis, float(keras.ops.convert_to_numpy(dyt_model.layers[-1].alpha))
        ([-1], 0.5)

    Reference:
        - [Zhu et al., 2025](https://arxiv.org/abs/2503.10622), "Transformers without
          Normalization".
    """
    alpha_init = positive_float("alpha_init", alpha_init)

    def replace(layer):
        if not isinstance(layer, LAYER_NORM_TYPES):
            return None
        if getattr(layer, "rms_scaling", False):
            raise ValueError(
                f"Layer '{layer.name}' scales by the variance without centering "
                "(rms_scaling=True), which DynamicTanh does not replace. "
                "Received: rms_scaling=True"
            )
        config = layer.get_config()
        kept = ("name", "trainable", "dtype", "axis", "center", "scale", *AFFINE_ARGUMENTS)
        new = DynamicTanh(alpha_init=alpha_init, **{k: config[k] for k in kept})

        def set_affine(new):
            for weight in ("gamma", "beta"):
                if getattr(layer, weight) is not None:
                    # A copy: on JAX, assigning the variable itself would share its buffer.
                    getattr(new, weight).assign(ops.convert_to_numpy(getattr(layer, weight)))

        return new, set_affine

    return replace_layers(model, replace, "converting to DynamicTanh")
