"""Model builders: the same few architectures with the normalization swapped.

The normalization sits between the linear map and the nonlinearity, as in the study note
(and Ioffe & Szegedy 2015, §3.2): ``Dense/Conv (no bias) -> norm -> activation``. The linear
layer drops its bias when the norm that follows has its own offset (``beta``), since the
norm's mean subtraction would cancel it anyway. Recurrent models put the norm inside the
recurrence, through kerasnorm's cells.

Every model ends in a ``Dense`` layer giving logits (train with ``from_logits=True``).
kerasnorm's layers are imported when a model is built, so this module imports (and the
``none`` and ``keras_*`` arms work) even where a layer is not written yet.
"""

from __future__ import annotations

import math

import keras

KINDS = ("mlp", "cnn1d", "cnn2d", "rnn")
NORMS = (
    "none",
    "batch",  # kerasnorm.BatchNormalization
    "layer",  # kerasnorm.LayerNormalization
    "group",  # kerasnorm.GroupNormalization
    "rms",  # kerasnorm.RMSNormalization
    "batch_renorm",  # kerasnorm.BatchNormalization(renorm=True): Ioffe 2017
    "ghost",  # kerasnorm.BatchNormalization(virtual_batch_size=k): Hoffer et al. 2017
    "keras_batch",  # keras.layers.BatchNormalization, for side-by-side comparisons
    "keras_layer",  # keras.layers.LayerNormalization
    "frn",  # kerasnorm.FilterResponseNormalization with its TLU: Singh & Krishnan 2020 (conv maps)
)
#: Norms of recurrent models and the cell each uses (kerasnorm's, or Keras's plain cells).
RNN_NORMS = ("none", "layer", "batch")
CELLS = ("gru", "lstm")
#: Default widths: hidden units (mlp), filters per conv layer (cnn*), state units (rnn).
DEFAULT_WIDTHS = {"mlp": (100, 100, 100), "cnn1d": (32, 32, 32), "cnn2d": (16, 32, 32), "rnn": (64,)}
# RMSNorm rescales without re-centering (Zhang & Sennrich 2019): the bias before it stays.
_NORMS_WITHOUT_OFFSET = ("none", "rms")
# FRN ends in its own activation, the TLU, which replaces the ReLU (Singh & Krishnan 2020).
_NORMS_WITH_ACTIVATION = ("frn",)


def _kerasnorm(name):
    """kerasnorm's layer `name`, with a clear error while it is not written yet."""
    import kerasnorm

    layer = getattr(kerasnorm, name, None)
    if layer is None:
        raise NotImplementedError(f"kerasnorm.{name} is not available in this version of kerasnorm.")
    return layer


def norm_layer(
    norm,
    *,
    feature_axes=(-1,),
    channels=None,
    momentum=0.99,
    epsilon=1e-3,
    groups=None,
    virtual_batch_size=None,
    renorm_clipping=None,
    renorm_momentum=0.99,
    renorm_warmup=None,
    name=None,
):
    """A normalization layer for features on `feature_axes`, or None for ``norm="none"``.

    Batch norms normalize each channel (last axis) over the batch and the other axes. Layer
    and RMS norms normalize each sample over all of `feature_axes`, all the units of the
    layer (for conv nets: positions and channels, as in Ba et al. 2016), with a scale and
    offset per unit (Keras's convention); ``group`` with ``groups=1`` is the per-channel
    variant of Wu & He 2018. Group norm splits the `channels` into `groups` (default: the
    largest divisor of the channel count up to 8).
    """
    if norm not in NORMS:
        raise ValueError(f"Unknown norm '{norm}'. Known norms: {', '.join(NORMS)}")
    axes = list(feature_axes)
    layer_axis = axes[0] if len(axes) == 1 else axes
    batch_args = dict(momentum=momentum, epsilon=epsilon, name=name)
    if norm == "none":
        return None
    if norm == "batch":
        return _kerasnorm("BatchNormalization")(**batch_args)
    if norm == "ghost":
        if not virtual_batch_size:
            raise ValueError("norm='ghost' needs a virtual_batch_size (the ghost batch size).")
        return _kerasnorm("BatchNormalization")(virtual_batch_size=virtual_batch_size, **batch_args)
    if norm == "batch_renorm":
        return _kerasnorm("BatchNormalization")(
            renorm=True,
            renorm_clipping=dict(renorm_clipping or {"rmax": 3.0, "dmax": 5.0}),
            renorm_momentum=renorm_momentum,
            renorm_warmup=None if renorm_warmup is None else tuple(renorm_warmup),
            virtual_batch_size=virtual_batch_size,
            **batch_args,
        )
    if norm == "keras_batch":
        return keras.layers.BatchNormalization(**batch_args)
    if norm == "layer":
        return _kerasnorm("LayerNormalization")(axis=layer_axis, epsilon=epsilon, name=name)
    if norm == "keras_layer":
        return keras.layers.LayerNormalization(axis=layer_axis, epsilon=epsilon, name=name)
    if norm == "frn":  # the paper's epsilon (1e-6), not the study's 1e-3
        return _kerasnorm("FilterResponseNormalization")(name=name)
    if norm == "rms":
        return _kerasnorm("RMSNormalization")(axis=layer_axis, epsilon=epsilon, name=name)
    groups = groups or math.gcd(channels, 8)
    return _kerasnorm("GroupNormalization")(groups=groups, epsilon=epsilon, name=name)


def _recurrent_cell(cell, norm, units, max_steps, share_statistics, momentum=0.99, epsilon=1e-3, **_):
    """The cell of an rnn; of the norm options only `momentum` and `epsilon` apply."""
    if cell not in CELLS:
        raise ValueError(f"Unknown cell '{cell}'. Known cells: {', '.join(CELLS)}")
    if norm not in RNN_NORMS:
        raise ValueError(
            f"Recurrent models support norms {', '.join(RNN_NORMS)}. Received: norm='{norm}'"
        )
    if norm == "none":
        return keras.layers.GRUCell(units) if cell == "gru" else keras.layers.LSTMCell(units)
    if norm == "layer":
        name = "LayerNormGRUCell" if cell == "gru" else "LayerNormLSTMCell"
        return _kerasnorm(name)(units, epsilon=epsilon)
    if cell != "lstm":
        raise ValueError("norm='batch' in a recurrent model needs cell='lstm' (BatchNormLSTMCell).")
    if max_steps is None:
        raise ValueError("norm='batch' in a recurrent model needs max_steps (the training length).")
    return _kerasnorm("BatchNormLSTMCell")(
        units, max_steps=max_steps, share_statistics=share_statistics, momentum=momentum, epsilon=epsilon
    )


def build_model(
    kind,
    input_shape,
    num_classes,
    norm="none",
    *,
    activation="relu",
    widths=None,
    dropout=0.0,
    cell="gru",
    masked=False,
    max_steps=None,
    share_statistics=False,
    kernel_size=3,
    seed=None,
    **norm_options,
):
    """Builds an uncompiled classifier returning logits.

    Args:
        kind: ``mlp`` (Dense stack; inputs are flattened), ``cnn1d`` / ``cnn2d`` (conv
            stack, each layer followed by 2x max-pooling while the positions allow, then
            global average pooling), ``rnn`` (one recurrent layer, its last state classified).
        input_shape: shape of one sample; for ``rnn`` ``(time, features)`` with time None
            allowed.
        num_classes: number of logits.
        norm: one of ``NORMS`` (``RNN_NORMS`` for ``rnn``).
        activation: nonlinearity of the hidden layers (mlp, cnn; an rnn's cell keeps its
            own), a Keras name.
        widths: hidden units (mlp), filters per layer (cnn), ``(units,)`` (rnn); None for
            ``DEFAULT_WIDTHS[kind]``.
        dropout: rate of dropout after each hidden activation (and before the classifier).
        cell: ``gru`` or ``lstm`` for rnn.
        masked: rnn only: the model takes ``[x, mask]``, the boolean ``(batch, time)`` mask
            passed to the recurrent layer (and by it to the cell), which keeps its state
            over padded steps.
        max_steps: rnn with batch norm: steps with their own statistics (the training
            length; later steps reuse the last, Cooijmans et al. 2016).
        share_statistics: rnn with batch norm: one set of statistics for all steps.
        kernel_size: conv kernel size.
        seed: if given, seeds Keras (`keras.utils.set_random_seed`) first, so the initial
            weights are a function of the seed.
        **norm_options: passed to each norm layer (`norm_layer`: ``momentum``,
            ``epsilon``, ``groups``, ``virtual_batch_size``, ``renorm_clipping``,
            ``renorm_momentum``, ``renorm_warmup``).
    """
    if kind not in KINDS:
        raise ValueError(f"Unknown model kind '{kind}'. Known kinds: {', '.join(KINDS)}")
    if seed is not None:
        keras.utils.set_random_seed(int(seed))
    widths = tuple(widths or DEFAULT_WIDTHS[kind])
    inputs = keras.Input(shape=tuple(input_shape), name="x")
    model_inputs = inputs
    if kind == "rnn":
        if len(widths) != 1:
            raise ValueError(f"An rnn has one recurrent layer: widths=(units,). Received: widths={widths}")
        # kerasnorm's MaskedRNN is keras.layers.RNN that also hands each step's mask to a
        # cell that takes one: batch norm must keep padded steps out of its statistics.
        rnn = _kerasnorm("MaskedRNN")(
            _recurrent_cell(cell, norm, widths[0], max_steps, share_statistics, **norm_options),
            name="rnn",
        )
        if masked:
            mask = keras.Input(shape=tuple(input_shape)[:1], dtype="bool", name="mask")
            model_inputs = [inputs, mask]
            h = rnn(inputs, mask=mask)
        else:
            h = rnn(inputs)
    else:
        h = _feedforward(kind, inputs, norm, activation, widths, dropout, kernel_size, norm_options)
    if dropout:
        h = keras.layers.Dropout(dropout)(h)
    outputs = keras.layers.Dense(num_classes, name="logits")(h)
    return keras.Model(model_inputs, outputs, name=f"{kind}_{norm}")


def _feedforward(kind, inputs, norm, activation, widths, dropout, kernel_size, norm_args):
    """The hidden stack of an mlp or cnn: linear -> norm -> activation (-> dropout)."""
    h = inputs
    if kind == "mlp":
        if len(inputs.shape) > 2:
            h = keras.layers.Flatten()(h)
        linear, pool, rank = keras.layers.Dense, None, 1
    elif kind == "cnn1d":
        linear, pool, rank = keras.layers.Conv1D, keras.layers.MaxPooling1D, 2
    else:
        linear, pool, rank = keras.layers.Conv2D, keras.layers.MaxPooling2D, 3
    if len(inputs.shape) - 1 < rank:
        raise ValueError(
            f"A {kind} needs inputs of rank {rank} per sample. Received: input_shape={inputs.shape[1:]}"
        )
    feature_axes = tuple(range(1, len(h.shape)))
    use_bias = norm in _NORMS_WITHOUT_OFFSET
    for i, width in enumerate(widths):
        if kind == "mlp":
            h = linear(width, use_bias=use_bias, name=f"dense_{i}")(h)
        else:
            h = linear(width, kernel_size, padding="same", use_bias=use_bias, name=f"conv_{i}")(h)
        layer = norm_layer(
            norm, feature_axes=feature_axes, channels=width, name=f"norm_{i}", **norm_args
        )
        if layer is not None:
            h = layer(h)
        if norm not in _NORMS_WITH_ACTIVATION:
            h = keras.layers.Activation(activation, name=f"act_{i}")(h)
        if dropout and i < len(widths) - 1:
            h = keras.layers.Dropout(dropout)(h)
        if pool is not None and i < len(widths) - 1 and min(h.shape[1:-1]) >= 4:
            h = pool(2)(h)
    if pool is not None:
        h = (keras.layers.GlobalAveragePooling1D if rank == 2 else keras.layers.GlobalAveragePooling2D)()(h)
    return h


# ---------------------------------------------------------------------------------------
# Stacked models: K independent members of one architecture trained as one model.
#
# The members are folded into the channel axis: activations are ``(batch, ..., K * C)``
# and member k owns channels ``[k * C, (k + 1) * C)``. Per-channel layers (batch norms and
# their variants, activations, dropout, pooling) then act on each member unchanged: a batch
# norm's statistics of a channel are over that member's batch only. The linear layers hold
# one kernel per member (`StackedDense`, `StackedConv`); group norm with g groups per
# member is group norm with K * g groups; layer norm of a member is group norm with K
# groups followed by the per-unit scale and offset (`UnitAffine`) layer norm keeps.

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
    widths = tuple(widths or DEFAULT_WIDTHS[kind])
    rank = {"mlp": 1, "cnn1d": 2, "cnn2d": 3}[kind]
    if len(input_shape) != rank:
        raise ValueError(f"A stacked {kind} needs inputs of rank {rank} per sample. Received: {input_shape}")
    inputs = keras.Input(shape=(*input_shape[:-1], members * input_shape[-1]), name="x")
    h = inputs
    use_bias = norm in _NORMS_WITHOUT_OFFSET
    for i, width in enumerate(widths):
        if kind == "mlp":
            h = StackedDense(members, width, use_bias=use_bias, name=f"dense_{i}")(h)
        else:
            h = StackedConv(members, width, kernel_size, rank - 1, use_bias=use_bias, name=f"conv_{i}")(h)
        if norm == "layer":
            h = _kerasnorm("GroupNormalization")(
                groups=members, epsilon=epsilon, center=False, scale=False, name=f"norm_{i}_statistics"
            )(h)
            h = UnitAffine(name=f"norm_{i}")(h)
        elif norm == "group":
            per_member = groups or math.gcd(width, 8)
            h = _kerasnorm("GroupNormalization")(groups=members * per_member, epsilon=epsilon, name=f"norm_{i}")(h)
        elif norm != "none":  # per-channel norms (FRN: per sample too) act on each member as is
            h = norm_layer(norm, epsilon=epsilon, name=f"norm_{i}", **norm_options)(h)
        if norm not in _NORMS_WITH_ACTIVATION:
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
    import numpy as np

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
    import numpy as np

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
    import numpy as np

    k = len(member_models)
    for weight, kind, variables in _member_weights(stacked, member_models):
        value = weight.numpy()
        if kind == "kernel":
            parts = list(value)
        else:
            parts = [value] * k if kind == "scalar" else np.split(value, k, axis=-1)
        for variable, part in zip(variables, parts):
            variable.assign(np.reshape(part, variable.shape))
