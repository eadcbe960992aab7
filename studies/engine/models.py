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
from keras import ops

import kerasnorm

KINDS = ("mlp", "cnn1d", "cnn2d", "rnn", "transformer", "tokens")
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
    "dyt",  # kerasnorm.DynamicTanh over the last axis (per-channel gamma, beta): Zhu et al. 2025
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
    if norm == "dyt":  # elementwise: no statistics, so only the affine's axis matters
        return kerasnorm.DynamicTanh(axis=-1, name=name)
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
            global average pooling), ``rnn`` (one recurrent layer, its last state classified),
            ``transformer`` (a pre-norm encoder, `transformer_model`), ``tokens`` (a
            per-token model over padded, masked token sequences, `token_model`; it takes
            ``[x, mask]`` and, of the norm options, ``momentum`` and ``epsilon``).
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
    if kind == "tokens":
        return token_model(
            input_shape, num_classes, norm, widths=widths or DEFAULT_TOKEN_WIDTHS, kernel_size=kernel_size,
            momentum=norm_options.get("momentum", 0.99), epsilon=norm_options.get("epsilon", 1e-3),
        )  # fmt: skip
    if kind == "transformer":
        return transformer_model(input_shape, num_classes, norm, widths=widths, masked=masked, **norm_options)
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


# --- Layers a claim swaps into an engine-built model ------------------------------------


class NoisyBatchNormalization(kerasnorm.BatchNormalization):
    """Batch norm followed, in training, by a random affine map per unit redrawn at every
    call: ``y * s + m`` with ``s ~ U(1, noise_scale)`` and ``m ~ U(-noise_shift,
    noise_shift)`` per unit, the same for the whole batch, so the distribution of each
    unit's output moves from step to step with non-zero mean and non-unit variance (C9,
    after Santurkar et al. 2018, §2.1). In inference the map is its expectation,
    ``y * (1 + noise_scale) / 2``.

    Args:
        noise_shift: half-width of the shift's uniform range.
        noise_scale: upper end of the scale's uniform range (the lower end is 1).
        noise_seed: seed of the noise's `keras.random.SeedGenerator`.
        **kwargs: `kerasnorm.BatchNormalization`'s arguments.
    """

    def __init__(self, noise_shift=1.0, noise_scale=2.0, noise_seed=None, **kwargs):
        super().__init__(**kwargs)
        self.noise_shift = float(noise_shift)
        self.noise_scale = float(noise_scale)
        self.noise_seed_generator = keras.random.SeedGenerator(noise_seed)

    def call(self, inputs, training=None, mask=None):
        outputs = super().call(inputs, training=training, mask=mask)
        units = (outputs.shape[-1],)
        if not training:
            return outputs * ((1.0 + self.noise_scale) / 2.0)
        scale = keras.random.uniform(units, 1.0, self.noise_scale, seed=self.noise_seed_generator)
        shift = keras.random.uniform(units, -self.noise_shift, self.noise_shift, seed=self.noise_seed_generator)
        return outputs * scale + shift


class PopulationBatchNormalization(kerasnorm.BatchNormalization):
    """Batch norm that normalizes with its stored statistics in training too (C3): set
    them to the training set's exact statistics under the current weights after every
    compiled call (C3's ``Recalibrate``) and the normalization is batch norm's with the
    batch noise removed, since an example's output no longer depends on its batch-mates.
    `gamma` and `beta` still learn; the stored statistics take no gradient and no
    moving-average update.

    Args:
        **kwargs: `kerasnorm.BatchNormalization`'s arguments.
    """

    def call(self, inputs, training=None, mask=None):
        return super().call(inputs, training=False, mask=mask)


# --- A small Transformer encoder (C10: can the norm be removed, or replaced by DyT?) -----

#: Norms of the Transformer: each sits where a pre-LN Transformer has its layer norms.
TRANSFORMER_NORMS = ("none", "layer", "rms", "dyt")


class SinusoidalPositions(keras.layers.Layer):
    """Adds the sinusoidal position code of Vaswani et al. (2017, §3.5) to ``(batch, time,
    d)`` inputs of any length (no weights, so a test sequence longer than the training ones
    still gets a position code)."""

    def call(self, inputs):
        length, d = ops.shape(inputs)[1], inputs.shape[-1]
        position = ops.cast(ops.arange(length), "float32")[:, None]
        rate = ops.exp(ops.cast(ops.arange(0, d, 2), "float32") * (-math.log(10000.0) / d))
        angles = position * rate[None, :]
        code = ops.reshape(ops.stack([ops.sin(angles), ops.cos(angles)], axis=-1), (length, -1))[:, :d]
        return inputs + ops.cast(code, inputs.dtype)[None]


def transformer_model(
    input_shape, num_classes, norm="layer", *, widths=None, masked=True, heads=2, blocks=2,
    mlp_ratio=2, epsilon=1e-6, **_,
):  # fmt: skip
    """A pre-norm Transformer encoder classifier over padded sequences (C10).

    ``Dense(d)`` embedding + sinusoidal positions, then `blocks` pre-norm blocks
    (``h + MHA(norm(h))``, ``h + MLP(norm(h))`` with a GELU MLP of ``mlp_ratio * d``
    units), a final norm, the mean over the real steps and a ``Dense`` layer giving logits:
    the layout of ViT's encoder (Dosovitskiy et al. 2021), with mean pooling for the class
    token. The norm is one of `TRANSFORMER_NORMS` (`norm_layer`'s layer, RMS or DyT over
    the last axis; ``none`` drops every norm, the final one included).

    Args:
        input_shape: ``(time, features)``, time None allowed.
        num_classes: number of logits.
        norm: one of `TRANSFORMER_NORMS`.
        widths: ``(d,)``, the model width (default 32).
        masked: the model takes ``[x, mask]``, the boolean ``(batch, time)`` mask of real
            steps: attention ignores padded keys and the pooling padded steps.
        heads: attention heads (``d`` must divide by it).
        blocks: encoder blocks.
        mlp_ratio: hidden units of each block's MLP over ``d``.
        epsilon: of the layer and RMS norms (1e-6, as in ViT's code).
        **_: the other norm options of `build_model` (batch norms'), which do not apply.
    """
    if norm not in TRANSFORMER_NORMS:
        raise ValueError(f"Transformers support norms {', '.join(TRANSFORMER_NORMS)}. Received: norm='{norm}'")
    (d,) = tuple(widths or (32,))
    if d % heads:
        raise ValueError(f"The width must divide by the heads. Received: widths=({d},), heads={heads}")

    def normed(h, name):
        layer = norm_layer(norm, epsilon=epsilon, name=name)
        return h if layer is None else layer(h)

    x = keras.Input(shape=tuple(input_shape), name="x")
    model_inputs = x
    h = SinusoidalPositions(name="positions")(keras.layers.Dense(d, name="embedding")(x))
    attention_mask, valid = None, None
    if masked:
        mask = keras.Input(shape=tuple(input_shape)[:1], dtype="bool", name="mask")
        model_inputs = [x, mask]
        attention_mask = ops.logical_and(mask[:, None, :], ops.ones_like(mask)[:, :, None])
        valid = ops.expand_dims(ops.cast(mask, "float32"), -1)
    for i in range(blocks):
        a = normed(h, f"norm_{i}_attention")
        a = keras.layers.MultiHeadAttention(heads, d // heads, name=f"attention_{i}")(
            a, a, attention_mask=attention_mask
        )
        h = h + a
        m = keras.layers.Dense(mlp_ratio * d, activation="gelu", name=f"mlp_{i}_hidden")(normed(h, f"norm_{i}_mlp"))
        h = h + keras.layers.Dense(d, name=f"mlp_{i}_out")(m)
    h = normed(h, "norm_final")
    if valid is None:
        pooled = ops.mean(h, axis=1)
    else:
        pooled = ops.sum(h * valid, axis=1) / ops.maximum(ops.sum(valid, axis=1), 1.0)
    outputs = keras.layers.Dense(num_classes, name="logits")(pooled)
    return keras.Model(model_inputs, outputs, name=f"transformer_{norm}")


# --- The token model: per-token layers over padded, masked token sequences (C6) ----------

#: Norms of a token model, and its default widths (embedding units, filters of each conv).
TOKEN_NORMS = ("none", "batch", "layer")
DEFAULT_TOKEN_WIDTHS = (32, 32, 32)


def token_model(input_shape, num_classes, norm, widths=DEFAULT_TOKEN_WIDTHS, momentum=0.99, kernel_size=3,
                epsilon=1e-3):
    """A per-token classifier over padded one-hot token sequences, taking ``[x, mask]``
    (``build_model(kind="tokens")``; its stacked form, with the same arguments and layer
    names, is `studies.engine.stacked_recurrent.build_stacked_token_model`).

    ``Dense`` embedding, then ``Conv1D`` layers, each ``-> norm -> relu`` (the norm as in
    `norm_layer`: BN over the real tokens of the batch, its mask keeping padding out of the
    statistics; LN over each token's features), padded positions reset to zero after each
    layer (so the convolutions see them as zero padding), then the mean over the real
    tokens and a ``Dense`` layer giving logits: a small, Transformer-free stand-in for
    NLP's per-token layers.

    Args:
        input_shape: ``(time, features)`` of one sample (time may be None).
        num_classes: number of logits.
        norm: one of `TOKEN_NORMS`.
        widths: units of the embedding, filters of each convolution.
        momentum: batch norm's momentum.
        kernel_size: convolution size.
        epsilon: added to the norms' variances.
    """
    if norm not in TOKEN_NORMS:
        raise ValueError(f"Token models support norms {', '.join(TOKEN_NORMS)}. Received: norm={norm!r}")
    x = keras.Input(shape=tuple(input_shape), name="x")
    mask = keras.Input(shape=tuple(input_shape)[:1], dtype="bool", name="mask")
    valid = ops.expand_dims(ops.cast(mask, "float32"), -1)
    use_bias = norm == "none"
    h = x
    for i, width in enumerate(widths):
        if i == 0:
            h = keras.layers.Dense(width, use_bias=use_bias, name="embedding")(h)
        else:
            h = keras.layers.Conv1D(width, kernel_size, padding="same", use_bias=use_bias, name=f"conv_{i}")(h)
        layer = norm_layer(norm, momentum=momentum, epsilon=epsilon, name=f"norm_{i}")
        if layer is not None:
            h = layer(h, mask=mask) if norm == "batch" else layer(h)
        h = keras.layers.Activation("relu", name=f"act_{i}")(h) * valid
    pooled = ops.sum(h, axis=1) / ops.maximum(ops.sum(valid, axis=1), 1.0)
    logits = keras.layers.Dense(num_classes, name="logits")(pooled)
    return keras.Model([x, mask], logits, name=f"tokens_{norm}")
