"""The stacked models: K independent members of one architecture as one Keras model.

The members are folded into the channel axis: activations are ``(batch, ..., K * C)``
with member k's channels in block k. The linear layers hold one kernel per member
(`StackedDense`, `StackedConv`); per-channel norms act on each member as they are; group
norm with g groups per member is group norm with K * g groups; layer norm of a member is
group norm with K groups followed by the per-unit scale and offset (`UnitAffine`) layer
norm keeps. `stack_member_weights` and `unstack_member_weights` map K standalone models
(`studies.engine.models.build_model`) onto a stacked one and back. The sequence models'
stacked forms are in `studies.engine.stacked_recurrent`; the trainer that uses both is
`studies.engine.stacked`.
"""

from __future__ import annotations

import math

import keras
import numpy as np

import kerasnorm
from studies.engine import models

#: Norms a stacked model can hold (the others, per-sample norms over all units with a
#: weight layout group norm cannot express, train unstacked).
STACKED_NORMS = ("none", "batch", "batch_renorm", "ghost", "keras_batch", "layer", "group", "frn")
STACKED_KINDS = ("mlp", "cnn1d", "cnn2d")
#: ``model.*`` options (`build_model` arguments) a stacked model takes as they are.
STACKED_OPTIONS = ("renorm_warmup",)


class StackedDense(keras.layers.Layer):
    """`members` independent ``Dense`` layers on member-folded features.

    Args:
        members: number of members K.
        units: output units per member.
        use_bias: whether each member adds a bias.

    Call arguments:
        inputs: ``(batch, members * in_units)``; member k reads its own block of inputs.

    Weights: ``kernel`` ``(members, in_units, units)``, ``bias`` ``(members * units,)``.
    """

    def __init__(self, members, units, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.members, self.units, self.use_bias = int(members), int(units), bool(use_bias)

    def build(self, input_shape):
        if input_shape[-1] % self.members:
            raise ValueError(
                f"{self.name}: the features do not split into {self.members} members. "
                f"Received: input_shape={tuple(input_shape)}"
            )
        self.in_units = input_shape[-1] // self.members
        self.kernel = self.add_weight(
            shape=(self.members, self.in_units, self.units), name="kernel", initializer="glorot_uniform"
        )
        self.bias = (
            self.add_weight(shape=(self.members * self.units,), name="bias", initializer="zeros")
            if self.use_bias
            else None
        )

    def call(self, inputs):
        h = keras.ops.reshape(inputs, (-1, self.members, self.in_units))
        h = keras.ops.einsum("bki,kio->bko", h, self.kernel)
        h = keras.ops.reshape(h, (-1, self.members * self.units))
        return h if self.bias is None else h + self.bias

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.members * self.units)


class StackedConv(keras.layers.Layer):
    """`members` independent stride-1 ``same``-padded convolutions (1-D or 2-D) on
    member-folded channels, as shifted copies of the input contracted with each member's
    kernel (grouped convolutions are not available on every TensorFlow CPU build).

    Args:
        members: number of members K.
        filters: output channels per member.
        kernel_size: odd kernel size (the same on every spatial axis).
        rank: 1 or 2 spatial axes.
        use_bias: whether each member adds a bias.

    Call arguments:
        inputs: ``(batch, *spatial, members * in_channels)``.

    Weights: ``kernel`` ``(members, kernel_size ** rank, in_channels, filters)`` (a Keras
    conv kernel with its spatial axes flattened row-major), ``bias`` ``(members * filters,)``.
    """

    def __init__(self, members, filters, kernel_size, rank, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        if kernel_size % 2 != 1 or rank not in (1, 2):
            raise ValueError(f"StackedConv needs an odd kernel_size and rank 1 or 2. Received: {kernel_size}, {rank}")
        self.members, self.filters, self.kernel_size, self.rank = int(members), int(filters), int(kernel_size), rank
        self.use_bias = bool(use_bias)

    def build(self, input_shape):
        self.spatial = tuple(input_shape[1:-1])
        self.in_channels = input_shape[-1] // self.members
        self.kernel = self.add_weight(
            shape=(self.members, self.kernel_size**self.rank, self.in_channels, self.filters),
            name="kernel",
            initializer="glorot_uniform",
        )
        self.bias = (
            self.add_weight(shape=(self.members * self.filters,), name="bias", initializer="zeros")
            if self.use_bias
            else None
        )

    def call(self, inputs):
        k, half = self.kernel_size, self.kernel_size // 2
        x = keras.ops.reshape(inputs, (-1, *self.spatial, self.members, self.in_channels))
        x = keras.ops.pad(x, [(0, 0)] + [(half, half)] * self.rank + [(0, 0), (0, 0)])
        if self.rank == 1:
            (length,) = self.spatial
            shifts = [x[:, i : i + length] for i in range(k)]
            equation = "blski,ksio->blko"
        else:
            height, width = self.spatial
            shifts = [x[:, i : i + height, j : j + width] for i in range(k) for j in range(k)]
            equation = "bhwski,ksio->bhwko"
        h = keras.ops.einsum(equation, keras.ops.stack(shifts, axis=-3), self.kernel)
        h = keras.ops.reshape(h, (-1, *self.spatial, self.members * self.filters))
        return h if self.bias is None else h + self.bias

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.members * self.filters)


class PairMaxPooling(keras.layers.Layer):
    """``MaxPooling1D(2)`` / ``MaxPooling2D(2)`` (valid padding) as a reshape and a max,
    whose gradient XLA compiles deterministically (TensorFlow has no deterministic XLA
    kernel for the max-pool gradient). The outputs are the pooling layer's, exactly; the
    gradients too wherever the maxima are unique (after a ReLU, tied zeros pass no
    gradient either way).

    Args:
        rank: spatial axes, 1 or 2.
    """

    def __init__(self, rank, **kwargs):
        super().__init__(**kwargs)
        if rank not in (1, 2):
            raise ValueError(f"PairMaxPooling needs rank 1 or 2. Received: rank={rank}")
        self.rank = rank

    def call(self, x):
        spatial = x.shape[1 : 1 + self.rank]
        kept = [2 * (n // 2) for n in spatial]
        x = x[:, : kept[0]] if self.rank == 1 else x[:, : kept[0], : kept[1]]
        channels = x.shape[-1]
        if self.rank == 1:
            return keras.ops.max(keras.ops.reshape(x, (-1, kept[0] // 2, 2, channels)), axis=2)
        x = keras.ops.reshape(x, (-1, kept[0] // 2, 2, kept[1] // 2, 2, channels))
        return keras.ops.max(x, axis=(2, 4))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *(n // 2 for n in input_shape[1 : 1 + self.rank]), input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "rank": self.rank}


class UnitAffine(keras.layers.Layer):
    """A scale ``gamma`` and offset ``beta`` per unit (every non-batch position), the
    affine part of a layer norm whose statistics a layer before it computed."""

    def build(self, input_shape):
        shape = tuple(input_shape[1:])
        self.gamma = self.add_weight(shape=shape, name="gamma", initializer="ones")
        self.beta = self.add_weight(shape=shape, name="beta", initializer="zeros")

    def call(self, inputs):
        return inputs * self.gamma + self.beta


def build_stacked_model(
    kind,
    input_shape,
    num_classes,
    norm,
    members,
    *,
    activation="relu",
    widths=None,
    dropout=0.0,
    kernel_size=3,
    epsilon=1e-3,
    groups=None,
    **norm_options,
):
    """The `build_model` classifier for `members` independent members at once.

    Args are those of `build_model` (``mlp``, ``cnn1d`` and ``cnn2d`` with `STACKED_NORMS`),
    plus `members`, K. The model takes ``(batch, *input_shape[:-1], K * channels)``
    (member k's sample in its channel block) and returns ``(batch, K * num_classes)``
    logits. Layers are named as in `build_model` (``dense_i``/``conv_i``, ``norm_i``,
    ``logits``) so `stack_member_weights` can map each member's weights onto it.
    """
    if kind not in STACKED_KINDS or norm not in STACKED_NORMS:
        raise ValueError(
            f"Stacked models support kinds {', '.join(STACKED_KINDS)} and norms "
            f"{', '.join(STACKED_NORMS)}. Received: kind='{kind}', norm='{norm}'"
        )
    widths = tuple(widths or models.DEFAULT_WIDTHS[kind])
    rank = {"mlp": 1, "cnn1d": 2, "cnn2d": 3}[kind]
    if len(input_shape) != rank:
        raise ValueError(f"A stacked {kind} needs inputs of rank {rank} per sample. Received: {input_shape}")
    inputs = keras.Input(shape=(*input_shape[:-1], members * input_shape[-1]), name="x")
    h = inputs
    use_bias = norm in models.NORMS_WITHOUT_OFFSET
    for i, width in enumerate(widths):
        if kind == "mlp":
            h = StackedDense(members, width, use_bias=use_bias, name=f"dense_{i}")(h)
        else:
            h = StackedConv(members, width, kernel_size, rank - 1, use_bias=use_bias, name=f"conv_{i}")(h)
        if norm == "layer":
            h = kerasnorm.GroupNormalization(
                groups=members, epsilon=epsilon, center=False, scale=False, name=f"norm_{i}_statistics"
            )(h)
            h = UnitAffine(name=f"norm_{i}")(h)
        elif norm == "group":
            per_member = groups or math.gcd(width, 8)
            h = kerasnorm.GroupNormalization(groups=members * per_member, epsilon=epsilon, name=f"norm_{i}")(h)
        elif norm != "none":  # per-channel norms (FRN: per sample too) act on each member as is
            h = models.norm_layer(norm, epsilon=epsilon, name=f"norm_{i}", **norm_options)(h)
        if norm not in models.NORMS_WITH_ACTIVATION:
            h = keras.layers.Activation(activation, name=f"act_{i}")(h)
        if dropout and i < len(widths) - 1:
            h = keras.layers.Dropout(dropout)(h)
        if kind != "mlp" and i < len(widths) - 1 and min(h.shape[1:-1]) >= 4:
            h = PairMaxPooling(rank - 1)(h)
    if kind != "mlp":
        h = (keras.layers.GlobalAveragePooling1D if rank == 2 else keras.layers.GlobalAveragePooling2D)()(h)
    if dropout:
        h = keras.layers.Dropout(dropout)(h)
    outputs = StackedDense(members, num_classes, name="logits")(h)
    return keras.Model(inputs, outputs, name=f"stacked_{kind}_{norm}_{members}")


def _member_weights(stacked, member_models):
    """Yields, for each weight of `stacked` in order, ``(weight, kind, variables)``: its
    layout (``"kernel"``: one slice per member on a leading axis; ``"scalar"``: shared;
    ``"channels"``: the members' blocks along the last axis) and the members' variables of
    the same layer and name."""
    for layer in stacked.layers:
        if not layer.weights:
            continue
        members = [m.get_layer(layer.name) for m in member_models]
        for weight in layer.weights:
            name = weight.path.rsplit("/", 1)[-1]
            variables = [next(w for w in m.weights if w.path.rsplit("/", 1)[-1] == name) for m in members]
            if isinstance(layer, (StackedDense, StackedConv)) and name == "kernel":
                kind = "kernel"
            else:
                kind = "scalar" if not np.ndim(variables[0]) else "channels"
            yield weight, kind, variables


def stack_member_weights(stacked, member_models):
    """The values of `stacked`'s weights (`build_stacked_model`) holding each of
    `member_models` (`build_model` models of the same architecture) as its member k.

    Linear kernels stack on a leading member axis (conv kernels with their spatial axes
    flattened); every other weight is per channel or per unit and concatenates along its
    last axis. Returns a list of arrays in the order of ``stacked.weights``."""
    values = []
    for weight, kind, variables in _member_weights(stacked, member_models):
        parts = [v.numpy() for v in variables]
        if kind == "kernel":
            value = np.stack([p.reshape(weight.shape[1:]) for p in parts])
        else:
            value = parts[0] if kind == "scalar" else np.concatenate(parts, axis=-1)
        if tuple(value.shape) != tuple(weight.shape):
            raise ValueError(f"{weight.path}: members give shape {value.shape}, the stacked model {weight.shape}")
        values.append(value)
    return values


def unstack_member_weights(stacked, member_models):
    """Sets each of `member_models` (`build_model` models of `stacked`'s architecture) to
    its member of `stacked` (`build_stacked_model`): the inverse of `stack_member_weights`."""
    k = len(member_models)
    for weight, kind, variables in _member_weights(stacked, member_models):
        value = weight.numpy()
        if kind == "kernel":
            parts = list(value)
        else:
            parts = [value] * k if kind == "scalar" else np.split(value, k, axis=-1)
        for variable, part in zip(variables, parts):
            variable.assign(np.reshape(part, variable.shape))
