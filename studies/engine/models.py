"""Model builders: the same few architectures with the normalization swapped.

The normalization sits between the linear map and the nonlinearity, as in the study note
(and Ioffe & Szegedy 2015, §3.2): ``Dense/Conv (no bias) -> norm -> activation``. The linear
layer drops its bias when the norm that follows has its own offset (``beta``), since the
norm's mean subtraction would cancel it anyway. Recurrent models put the norm inside the
recurrence, through kerasnorm's cells.

Every model ends in a ``Dense`` layer giving logits (train with ``from_logits=True``).
The stacked forms of these models (K seeds as the members of one model) live with the
stacked trainer, in `studies.engine.stacked`.
"""

from __future__ import annotations

import math

import keras

import kerasnorm

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
NORMS_WITHOUT_OFFSET = ("none", "rms")
# FRN ends in its own activation, the TLU, which replaces the ReLU (Singh & Krishnan 2020).
NORMS_WITH_ACTIVATION = ("frn",)


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
        return kerasnorm.BatchNormalization(**batch_args)
    if norm == "ghost":
        if not virtual_batch_size:
            raise ValueError("norm='ghost' needs a virtual_batch_size (the ghost batch size).")
        return kerasnorm.BatchNormalization(virtual_batch_size=virtual_batch_size, **batch_args)
    if norm == "batch_renorm":
        return kerasnorm.BatchNormalization(
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
        return kerasnorm.LayerNormalization(axis=layer_axis, epsilon=epsilon, name=name)
    if norm == "keras_layer":
        return keras.layers.LayerNormalization(axis=layer_axis, epsilon=epsilon, name=name)
    if norm == "frn":  # the paper's epsilon (1e-6), not the study's 1e-3
        return kerasnorm.FilterResponseNormalization(name=name)
    if norm == "rms":
        return kerasnorm.RMSNormalization(axis=layer_axis, epsilon=epsilon, name=name)
    groups = groups or math.gcd(channels, 8)
    return kerasnorm.GroupNormalization(groups=groups, epsilon=epsilon, name=name)


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
        return getattr(kerasnorm, name)(units, epsilon=epsilon)
    if cell != "lstm":
        raise ValueError("norm='batch' in a recurrent model needs cell='lstm' (BatchNormLSTMCell).")
    if max_steps is None:
        raise ValueError("norm='batch' in a recurrent model needs max_steps (the training length).")
    return kerasnorm.BatchNormLSTMCell(
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
        rnn = kerasnorm.MaskedRNN(
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
    use_bias = norm in NORMS_WITHOUT_OFFSET
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
        if norm not in NORMS_WITH_ACTIVATION:
            h = keras.layers.Activation(activation, name=f"act_{i}")(h)
        if dropout and i < len(widths) - 1:
            h = keras.layers.Dropout(dropout)(h)
        if pool is not None and i < len(widths) - 1 and min(h.shape[1:-1]) >= 4:
            h = pool(2)(h)
    if pool is not None:
        h = (keras.layers.GlobalAveragePooling1D if rank == 2 else keras.layers.GlobalAveragePooling2D)()(h)
    return h
