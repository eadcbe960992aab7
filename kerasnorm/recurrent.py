"""Normalized recurrent cells for `keras.layers.RNN`, and `MaskedRNN` for the batch-norm cell.

- `LayerNormLSTMCell`, `LayerNormGRUCell` (Ba et al., 2016): layer normalization of the
  input-to-hidden and hidden-to-hidden pre-activations, each separately, and (LSTM) of
  the cell state before the output nonlinearity. Statistics are per sample, so padded
  steps need nothing special: the RNN computes them and then keeps the previous state.
- `BatchNormLSTMCell` (Cooijmans et al., 2016): batch normalization of the same three
  quantities, with moving statistics per time step. Batch statistics mix samples, so a
  padded sample must stay out of the statistics of the step it pads; `keras.layers.RNN`
  gives its cells no mask, and `MaskedRNN` (a drop-in `keras.layers.RNN`) does.

All normalization maths is that of `kerasnorm.moments`.
"""

from __future__ import annotations


import keras
from keras import activations, constraints, initializers, ops, regularizers

# Private Keras modules, imported on purpose: `keras.layers.RNN` recognizes dropout cells
# by this mixin (to draw one dropout mask per sequence and reset it after), and Keras
# exposes no public function that runs a step function over time.
from keras.src import backend as keras_backend
from keras.src import tree
from keras.src.layers.rnn.dropout_rnn_cell import DropoutRNNCell

from kerasnorm import moments as M
from kerasnorm._common import check_bool, float_in, positive_float
from kerasnorm.layer_normalization import LayerNormalization


class _GatedCell(DropoutRNNCell, keras.layers.Layer):
    """What the three cells share: `gates` blocks of `units` pre-activations computed as
    `x W` and `h U` (kept apart, each to be normalized on its own), an optional bias,
    dropout on the inputs and on the recurrent state as in Keras's cells, and the config."""

    gates = None  # 4 for an LSTM, 3 for a GRU.

    def __init__(
        self,
        units,
        activation="tanh",
        recurrent_activation="sigmoid",
        use_bias=True,
        kernel_initializer="glorot_uniform",
        recurrent_initializer="orthogonal",
        bias_initializer="zeros",
        kernel_regularizer=None,
        recurrent_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        recurrent_constraint=None,
        bias_constraint=None,
        dropout=0.0,
        recurrent_dropout=0.0,
        seed=None,
        epsilon=1e-3,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = M.validate_positive_int(units, "units")
        self.activation = activations.get(activation)
        self.recurrent_activation = activations.get(recurrent_activation)
        self.use_bias = check_bool("use_bias", use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.recurrent_initializer = initializers.get(recurrent_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.recurrent_regularizer = regularizers.get(recurrent_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.kernel_constraint = constraints.get(kernel_constraint)
        self.recurrent_constraint = constraints.get(recurrent_constraint)
        self.bias_constraint = constraints.get(bias_constraint)
        self.dropout = float_in("dropout", dropout, 0.0, 1.0)
        self.recurrent_dropout = float_in("recurrent_dropout", recurrent_dropout, 0.0, 1.0)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed=seed)
        self.epsilon = positive_float("epsilon", epsilon)
        self.output_size = self.units

    def _bias_initializer(self):
        return self.bias_initializer

    def build(self, input_shape):
        width = self.units * self.gates
        self.kernel = self.add_weight(
            shape=(input_shape[-1], width),
            name="kernel",
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )
        self.recurrent_kernel = self.add_weight(
            shape=(self.units, width),
            name="recurrent_kernel",
            initializer=self.recurrent_initializer,
            regularizer=self.recurrent_regularizer,
            constraint=self.recurrent_constraint,
        )
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                shape=(width,),
                name="bias",
                initializer=self._bias_initializer(),
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )

    def _projections(self, inputs, h, training):
        """`(x W, h U)` with Keras's dropout: one mask per sequence, in training only."""
        if training and 0.0 < self.dropout < 1.0:
            inputs = inputs * self.get_dropout_mask(inputs)
        if training and 0.0 < self.recurrent_dropout < 1.0:
            h = h * self.get_recurrent_dropout_mask(h)
        return ops.matmul(inputs, self.kernel), ops.matmul(h, self.recurrent_kernel)

    def _add_bias(self, z):
        return z if self.bias is None else z + self.bias

    def _lstm_update(self, z, c_prev):
        """New cell state and output gate from the gate pre-activations (Keras's order:
        input, forget, candidate, output)."""
        i, f, g, o = ops.split(z, 4, axis=-1)
        c = self.recurrent_activation(f) * c_prev + self.recurrent_activation(i) * self.activation(g)
        return c, self.recurrent_activation(o)

    def get_initial_state(self, batch_size=None):
        return [ops.zeros((batch_size, d), dtype=self.compute_dtype) for d in self.state_size]

    def get_config(self):
        config = {
            "units": self.units,
            "activation": activations.serialize(self.activation),
            "recurrent_activation": activations.serialize(self.recurrent_activation),
            "use_bias": self.use_bias,
            "kernel_initializer": initializers.serialize(self.kernel_initializer),
            "recurrent_initializer": initializers.serialize(self.recurrent_initializer),
            "bias_initializer": initializers.serialize(self.bias_initializer),
            "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
            "recurrent_regularizer": regularizers.serialize(self.recurrent_regularizer),
            "bias_regularizer": regularizers.serialize(self.bias_regularizer),
            "kernel_constraint": constraints.serialize(self.kernel_constraint),
            "recurrent_constraint": constraints.serialize(self.recurrent_constraint),
            "bias_constraint": constraints.serialize(self.bias_constraint),
            "dropout": self.dropout,
            "recurrent_dropout": self.recurrent_dropout,
            "seed": self.seed,
            "epsilon": self.epsilon,
        }
        return {**super().get_config(), **config}


class _LSTMBias:
    """Keras's `unit_forget_bias`: the forget block of the bias starts at one."""

    def _bias_initializer(self):
        if not self.unit_forget_bias:
            return self.bias_initializer

        def initializer(shape, dtype=None):
            u = self.units
            return ops.concatenate(
                [
                    self.bias_initializer((u,), dtype=dtype),
                    ops.ones((u,), dtype=dtype),
                    self.bias_initializer((2 * u,), dtype=dtype),
                ]
            )

        return initializer


_CELL_ARGS_DOC = """
        units: Positive integer, dimensionality of the output and of each state.
        activation: Activation of the candidate and of the output (default tanh).
        recurrent_activation: Activation of the gates (default sigmoid).
        use_bias: Whether the cell adds a bias to the gate pre-activations.
        kernel_initializer, recurrent_initializer, bias_initializer: Initializers of
            `kernel` (inputs), `recurrent_kernel` (state) and `bias`.
        kernel_regularizer, recurrent_regularizer, bias_regularizer: Optional
            regularizers of the same weights.
        kernel_constraint, recurrent_constraint, bias_constraint: Optional constraints.
        dropout: Fraction of the inputs dropped in training (one mask per sequence).
        recurrent_dropout: Fraction of the recurrent state dropped in training.
        seed: Optional random seed for dropout.
        epsilon: Positive float added to the variances before the square root."""


@keras.saving.register_keras_serializable(package="kerasnorm")
class LayerNormLSTMCell(_LSTMBias, _GatedCell):
    __doc__ = f"""LSTM cell with layer normalization (Ba et al., 2016), for `keras.layers.RNN`.

    With `x` the step input and `(h, c)` the state:

        i, f, g, o = LN_x(x W) + LN_h(h U) + b
        c' = sigmoid(f) * c + sigmoid(i) * tanh(g)
        h' = sigmoid(o) * tanh(LN_c(c'))

    `LN_x` and `LN_h` normalize the `4 * units` pre-activations jointly and only scale
    (learned `gamma`, no offset: the bias `b` is the offset, and keeps Keras's
    `unit_forget_bias`); `LN_c` scales and shifts. The state carries the un-normalized
    `c'`, as in the paper. The three normalizations are `kerasnorm.LayerNormalization`
    sublayers (`input_norm`, `recurrent_norm`, `cell_norm`).

    Masking needs nothing special: each sample is normalized on its own, so with
    `keras.layers.RNN(cell)(x, mask=mask)` padded steps change neither the statistics of
    other samples nor (the RNN keeps the previous state) their own state.

    Args:{_CELL_ARGS_DOC}
        unit_forget_bias: If True, the forget-gate block of the bias starts at one.
        **kwargs: Base layer keyword arguments (e.g. `name`, `dtype`).

    Call arguments:
        inputs: The step input, shape `(batch, features)`.
        states: `[h, c]`, each of shape `(batch, units)`.
        training: Python boolean; enables dropout.

    Example:
        >>> import keras
        >>> import numpy as np
        >>> import kerasnorm
        >>> rnn = keras.layers.RNN(kerasnorm.LayerNormLSTMCell(4))
        >>> tuple(rnn(np.ones((2, 3, 5))).shape)  # (batch, time, features) -> (batch, units)
        (2, 4)

    Reference:
        - [Ba et al., 2016](https://arxiv.org/abs/1607.06450), section 3.1 and the
          LN-LSTM of its experiments.
    """

    gates = 4

    def __init__(self, units, unit_forget_bias=True, **kwargs):
        super().__init__(units, **kwargs)
        self.unit_forget_bias = check_bool("unit_forget_bias", unit_forget_bias)
        self.state_size = [self.units, self.units]
        norm = dict(epsilon=self.epsilon, dtype=self.dtype_policy)
        self.input_norm = LayerNormalization(center=False, name="input_norm", **norm)
        self.recurrent_norm = LayerNormalization(center=False, name="recurrent_norm", **norm)
        self.cell_norm = LayerNormalization(name="cell_norm", **norm)

    def build(self, input_shape):
        super().build(input_shape)
        self.input_norm.build((None, 4 * self.units))
        self.recurrent_norm.build((None, 4 * self.units))
        self.cell_norm.build((None, self.units))

    def call(self, inputs, states, training=False):
        h_prev, c_prev = states[0], states[1]
        wx, wh = self._projections(inputs, h_prev, training)
        z = self._add_bias(self.input_norm(wx) + self.recurrent_norm(wh))
        c, o = self._lstm_update(z, c_prev)
        h = o * self.activation(self.cell_norm(c))
        return h, [h, c]

    def get_config(self):
        return {**super().get_config(), "unit_forget_bias": self.unit_forget_bias}


@keras.saving.register_keras_serializable(package="kerasnorm")
class LayerNormGRUCell(_GatedCell):
    __doc__ = f"""GRU cell with layer normalization (Ba et al., 2016), for `keras.layers.RNN`.

    With `x` the step input and `h` the state (Keras's gate order and `reset_after`
    form, the one cuDNN uses):

        a = LN_x(x W),  r_h = LN_h(h U)        (each 3 * units, normalized jointly)
        z = sigmoid(a_z + r_h,z + b_z),  r = sigmoid(a_r + r_h,r + b_r)
        n = tanh(a_n + b_n + r * r_h,n)
        h' = z * h + (1 - z) * n

    The reset gate multiplies the already normalized recurrent candidate term, so both
    projections are normalized once per step. `LN_x` and `LN_h` only scale (the bias is
    the offset); they are `kerasnorm.LayerNormalization` sublayers (`input_norm`,
    `recurrent_norm`). Masking needs nothing special (per-sample statistics).

    Args:{_CELL_ARGS_DOC}
        **kwargs: Base layer keyword arguments (e.g. `name`, `dtype`).

    Call arguments:
        inputs: The step input, shape `(batch, features)`.
        states: `[h]`, shape `(batch, units)`.
        training: Python boolean; enables dropout.

    Example:
        >>> import keras
        >>> import numpy as np
        >>> import kerasnorm
        >>> rnn = keras.layers.RNN(kerasnorm.LayerNormGRUCell(4), return_sequences=True)
        >>> tuple(rnn(np.ones((2, 3, 5))).shape)
        (2, 3, 4)

    Reference:
        - [Ba et al., 2016](https://arxiv.org/abs/1607.06450).
        - [Cho et al., 2014](https://arxiv.org/abs/1406.1078) (the GRU).
    """

    gates = 3

    def __init__(self, units, **kwargs):
        super().__init__(units, **kwargs)
        self.state_size = [self.units]
        norm = dict(epsilon=self.epsilon, center=False, dtype=self.dtype_policy)
        self.input_norm = LayerNormalization(name="input_norm", **norm)
        self.recurrent_norm = LayerNormalization(name="recurrent_norm", **norm)

    def build(self, input_shape):
        super().build(input_shape)
        self.input_norm.build((None, 3 * self.units))
        self.recurrent_norm.build((None, 3 * self.units))

    def call(self, inputs, states, training=False):
        h_prev = states[0] if tree.is_nested(states) else states
        wx, wh = self._projections(inputs, h_prev, training)
        a = self._add_bias(self.input_norm(wx))
        r_h = self.recurrent_norm(wh)
        a_z, a_r, a_n = ops.split(a, 3, axis=-1)
        h_z, h_r, h_n = ops.split(r_h, 3, axis=-1)
        z = self.recurrent_activation(a_z + h_z)
        r = self.recurrent_activation(a_r + h_r)
        n = self.activation(a_n + r * h_n)
        h = z * h_prev + (1.0 - z) * n
        return h, [h]


@keras.saving.register_keras_serializable(package="kerasnorm")
class BatchNormLSTMCell(_LSTMBias, _GatedCell):
    __doc__ = f"""LSTM cell with recurrent batch normalization (Cooijmans et al., 2016).

    With `x` the step input and `(h, c)` the state:

        i, f, g, o = BN_h(h U; gamma_h) + BN_x(x W; gamma_x) + b
        c' = sigmoid(f) * c + sigmoid(i) * tanh(g)
        h' = sigmoid(o) * tanh(BN_c(c'; gamma_c, beta_c))

    In training each BN uses the statistics of the current step over the batch and
    updates moving statistics kept *per time step*: `input_moving_mean` etc. have shape
    `(max_steps, features)`, and steps at or beyond `max_steps` share the last row, in
    training and in inference. `share_statistics=True` keeps one row for all steps.
    The `gamma`s start at 0.1 (the paper's remedy for vanishing gradients through tanh),
    `beta_c` at zero; the pre-activation BNs have no offset (the bias `b` is it).

    **Time step.** The step index is a third state entry, `step` (shape `(batch, 1)`,
    starting at 0 from `get_initial_state`; pass it too when giving an initial state). It
    counts the steps a sample has *processed*: where the RNN masks a step it keeps the
    previous state, the count included, so with padding a sample's index is its position
    in its own sequence. It is stored clipped at `max_steps - 1`, which keeps it exact in
    float16.

    **Masks, and training inside `MaskedRNN`.** `keras.layers.RNN` calls its cell
    without the mask, so padded samples would enter the batch statistics of the steps
    they pad, and (TensorFlow and PyTorch backends) it runs the first step twice, which
    would update step 0's moving statistics twice. The cell therefore trains only inside
    `kerasnorm.MaskedRNN(cell)`, a drop-in `keras.layers.RNN` that hands each step's mask
    to the cell (`mask` below) and runs its shape probe in inference mode; training under
    another driver raises a `ValueError`. Inference (moving statistics, no update) works
    under either. Inside `MaskedRNN` the statistics of a step are those of the samples
    valid at that step, and only the moving statistics of the step indices present among
    them are updated. Batches of aligned sequences (unpadded, or right-padded,
    `padding="post"`) give exactly the per-step statistics of the paper; in a left-padded
    batch the samples valid at one RNN iteration may be at different indices, and share
    that iteration's statistics. Under JAX, where `jax.lax.scan` runs the steps and
    cannot assign a variable inside them, `MaskedRNN` carries the moving statistics
    through the loop with the state and assigns them once after it: the same numbers,
    update by update, as the other backends.

    Args:{_CELL_ARGS_DOC}
        unit_forget_bias: If True, the forget-gate block of the bias starts at one.
        max_steps: Positive int, the number of time steps with their own statistics.
            Required unless `share_statistics=True`.
        share_statistics: If True, one set of moving statistics for every step.
        momentum: Momentum of the moving statistics, in [0, 1).
        gamma_initializer: Initializer of the three `gamma`s (default `Constant(0.1)`).
        beta_initializer: Initializer of the cell-state offset `beta_c`.
        **kwargs: Base layer keyword arguments (e.g. `name`, `dtype`).

    Call arguments:
        inputs: The step input, shape `(batch, features)`.
        states: `[h, c, step]`, shapes `(batch, units)` twice and `(batch, 1)`.
        training: Python boolean. Batch statistics are used, and the moving statistics
            updated, only when true and the cell is trainable.
        mask: Optional boolean tensor of shape `(batch,)`, true for the samples whose
            step is valid; given by `kerasnorm.MaskedRNN`.

    Example:
        >>> import numpy as np
        >>> import kerasnorm
        >>> rnn = kerasnorm.MaskedRNN(kerasnorm.BatchNormLSTMCell(4, max_steps=3))
        >>> tuple(rnn(np.ones((2, 3, 5))).shape)  # inference: the moving statistics
        (2, 4)

    Reference:
        - [Cooijmans et al., 2016](https://arxiv.org/abs/1603.09025).
    """

    gates = 4
    #: The weights holding moving statistics, each `(rows, features)`.
    MOVING_STATISTICS = tuple(f"{w}_moving_{s}" for w in ("input", "recurrent", "cell") for s in ("mean", "variance"))

    def __init__(
        self,
        units,
        max_steps=None,
        share_statistics=False,
        momentum=0.99,
        gamma_initializer=None,
        beta_initializer="zeros",
        unit_forget_bias=True,
        **kwargs,
    ):
        super().__init__(units, **kwargs)
        self.share_statistics = check_bool("share_statistics", share_statistics)
        self.max_steps = M.validate_positive_int(max_steps, "max_steps", allow_none=share_statistics)
        self.momentum = float_in("momentum", momentum, 0.0, 1.0)
        self.gamma_initializer = initializers.get(
            initializers.Constant(0.1) if gamma_initializer is None else gamma_initializer
        )
        self.beta_initializer = initializers.get(beta_initializer)
        self.unit_forget_bias = check_bool("unit_forget_bias", unit_forget_bias)
        self.state_size = [self.units, self.units, 1]
        self._rows = 1 if share_statistics else self.max_steps
        # Set by `MaskedRNN` while it runs this cell (see `call`).
        object.__setattr__(self, "_in_masked_rnn", False)
        # Set by `MaskedRNN` when the moving statistics travel with the loop's state
        # (`MOVING_STATISTICS` -> value) instead of being assigned at every step.
        object.__setattr__(self, "_statistics_carry", None)

    def build(self, input_shape):
        super().build(input_shape)
        width = 4 * self.units
        self.input_gamma = self.add_weight(shape=(width,), name="input_gamma", initializer=self.gamma_initializer)
        self.recurrent_gamma = self.add_weight(shape=(width,), name="recurrent_gamma", initializer=self.gamma_initializer)
        self.cell_gamma = self.add_weight(shape=(self.units,), name="cell_gamma", initializer=self.gamma_initializer)
        self.cell_beta = self.add_weight(shape=(self.units,), name="cell_beta", initializer=self.beta_initializer)
        for which, features in (("input", width), ("recurrent", width), ("cell", self.units)):
            for stat, initializer in (("mean", "zeros"), ("variance", "ones")):
                name = f"{which}_moving_{stat}"
                weight = self.add_weight(
                    shape=(self._rows, features),
                    name=name,
                    initializer=initializer,
                    trainable=False,
                    autocast=False,
                )
                setattr(self, name, weight)

    def compute_mask(self, inputs, mask=None):
        # The cell consumes the step mask; the RNN masks the sequence.
        return None

    def _batch_norm(self, x, which, gamma, beta, step, valid, training):
        moving_mean = getattr(self, f"{which}_moving_mean")
        moving_variance = getattr(self, f"{which}_moving_variance")
        dtype = M.statistics_dtype(x.dtype)
        x = ops.cast(x, dtype)
        gamma = ops.cast(gamma, dtype)
        beta = None if beta is None else ops.cast(beta, dtype)
        if not (training and self.trainable):
            mean = ops.take(ops.cast(moving_mean, dtype), step, axis=0)
            variance = ops.take(ops.cast(moving_variance, dtype), step, axis=0)
            return M.normalize(x, mean, variance, gamma, beta, self.epsilon)

        weights = None if valid is None else ops.expand_dims(ops.cast(valid, dtype), -1)
        stats = M.moments(x, (0,), weights)
        # Rows to update: the step indices of the samples in the statistics; nothing
        # where the statistics are empty or not finite.
        present = ops.one_hot(step, self._rows, dtype=dtype)
        if weights is not None:
            present = present * weights
        rows = ops.expand_dims(ops.max(present, axis=0) > 0, -1)
        update = ops.logical_and(rows, ops.logical_and(stats.count > 0, M.is_finite(stats.mean, stats.variance)))
        carry = self._statistics_carry
        for stat, value in (("mean", stats.mean), ("variance", stats.variance)):
            name = f"{which}_moving_{stat}"
            variable = getattr(self, name)
            old = ops.cast(variable if carry is None else carry[name], dtype)
            new = ops.cast(ops.where(update, old * self.momentum + value * (1.0 - self.momentum), old), variable.dtype)
            if carry is None:
                variable.assign(new)
            else:
                carry[name] = new
        return M.normalize(x, stats.mean, stats.variance, gamma, beta, self.epsilon)

    def moving_statistics(self):
        """The moving statistics, `MOVING_STATISTICS` in order: the state a training run
        updates."""
        return [getattr(self, name) for name in self.MOVING_STATISTICS]

    def call(self, inputs, states, training=False, mask=None):
        if training and self.trainable and not self._in_masked_rnn:
            raise ValueError(
                f"Cell '{self.name}' trains only inside kerasnorm.MaskedRNN: keras.layers.RNN "
                "gives its cell no mask (padded samples would enter the batch statistics) "
                "and, with the TensorFlow and PyTorch backends, runs the first step twice (step 0's moving "
                "statistics would be updated twice). Received: training=True outside MaskedRNN"
            )
        h_prev, c_prev, counter = states[0], states[1], states[2]
        step = ops.cast(counter[:, 0], "int32")
        wx, wh = self._projections(inputs, h_prev, training)
        bn = dict(step=step, valid=mask, training=training)
        z = self._batch_norm(wx, "input", self.input_gamma, None, **bn)
        z = z + self._batch_norm(wh, "recurrent", self.recurrent_gamma, None, **bn)
        z = self._add_bias(ops.cast(z, self.compute_dtype))
        c, o = self._lstm_update(z, c_prev)
        c_hat = self._batch_norm(c, "cell", self.cell_gamma, self.cell_beta, **bn)
        h = o * self.activation(ops.cast(c_hat, self.compute_dtype))
        next_counter = ops.minimum(counter + 1.0, float(self._rows - 1))
        return h, [h, c, next_counter]

    def get_config(self):
        config = {
            "unit_forget_bias": self.unit_forget_bias,
            "max_steps": self.max_steps,
            "share_statistics": self.share_statistics,
            "momentum": self.momentum,
            "gamma_initializer": initializers.serialize(self.gamma_initializer),
            "beta_initializer": initializers.serialize(self.beta_initializer),
        }
        return {**super().get_config(), **config}


@keras.saving.register_keras_serializable(package="kerasnorm")
class MaskedRNN(keras.layers.RNN):
    """A drop-in `keras.layers.RNN` that also hands each step's mask to its cell.

    Keras's RNN uses the mask itself (a masked step keeps the previous state and output)
    but calls the cell without it. A cell whose `call` takes a `mask` argument (as
    `BatchNormLSTMCell`) receives here, at every step, a boolean `(batch,)` tensor: true
    for the samples whose step is valid (None when the RNN has no mask). The mask travels
    through the RNN's time loop as one extra input channel, split off before the cell
    sees its inputs.

    For such a cell one more thing differs from `keras.layers.RNN`: Keras's TensorFlow
    and PyTorch backends run the first step once more, before their time loop (unless
    unrolled), only to learn the
    output's shape; here that extra run is made in inference mode, so that it updates no
    moving statistics. For a cell that takes no mask (a `StackedRNNCells` among them:
    stack `MaskedRNN` layers with `return_sequences=True` instead), this layer is exactly
    `keras.layers.RNN`.

    And under JAX, for a cell with moving statistics (`moving_statistics()`, as
    `BatchNormLSTMCell`) in training and not unrolled: `jax.lax.scan` runs the steps,
    inside which no variable can be assigned, so the statistics travel through the loop
    as extra state (the cell updates those values, step by step, as it would update the
    variables) and are assigned once after it. The masking of Keras's JAX loop (a masked
    step keeps the previous state, and outputs the previous first state or, with
    `zero_output_for_mask`, zeros) is then applied here, to the cell's state only: the
    statistics follow their own rule, the step mask the cell receives.

    Args:
        cell: The RNN cell, as for `keras.layers.RNN`.
        **kwargs: Every argument of `keras.layers.RNN` (`return_sequences`,
            `return_state`, `go_backwards`, `stateful`, `unroll`,
            `zero_output_for_mask`, and base layer arguments).

    Call arguments:
        sequences: A 3D tensor `(batch, time, features)`.
        initial_state: Optional list of initial state tensors.
        mask: Optional boolean tensor `(batch, time)`.
        training: Python boolean, passed to the cell.

    Example:
        >>> import numpy as np
        >>> import kerasnorm
        >>> x = np.ones((2, 3, 5))
        >>> mask = np.array([[True, True, True], [True, True, False]])  # padded after 2 steps
        >>> cell = kerasnorm.BatchNormLSTMCell(4, max_steps=3)
        >>> rnn = kerasnorm.MaskedRNN(cell, return_sequences=True)
        >>> tuple(rnn(x, mask=mask).shape)
        (2, 3, 4)

    Reference:
        - `keras.layers.RNN`, whose arguments and outputs this layer keeps.
    """

    def inner_loop(self, sequences, initial_state, mask, training=False):
        if not getattr(self.cell, "_call_has_mask_arg", False):
            return super().inner_loop(sequences, initial_state, mask, training=training)
        cell_kwargs = {"training": training} if self.cell._call_has_training_arg else {}
        if mask is not None:
            valid = ops.expand_dims(ops.cast(mask, sequences.dtype), -1)
            sequences_and_mask = ops.concatenate([sequences, valid], axis=-1)
        # Keras's TensorFlow and PyTorch backends call the step function once before
        # their time loop, to learn the output's shape and dtype: that probe runs in
        # inference mode, so that a cell with moving statistics does not update step 0's
        # twice.
        probe = [keras.backend.backend() in ("tensorflow", "torch") and not self.unroll]

        def step(inputs, states):
            kwargs = dict(cell_kwargs)
            if probe[0]:
                probe[0] = False
                kwargs["training"] = False
            step_mask = None
            if mask is not None:
                inputs, step_mask = inputs[:, :-1], inputs[:, -1] > 0.5
            output, new_states = self.cell(inputs, states, mask=step_mask, **kwargs)
            if not tree.is_nested(new_states):
                new_states = [new_states]
            return output, new_states

        if not tree.is_nested(initial_state):
            initial_state = [initial_state]
        carry = self._carries_statistics(training)
        if carry:
            step = self._step_carrying_statistics(step, len(initial_state), mask is not None)
            initial_state = list(initial_state) + [ops.convert_to_tensor(v) for v in self.cell.moving_statistics()]
        object.__setattr__(self.cell, "_in_masked_rnn", True)
        try:
            last_output, outputs, states = keras_backend.rnn(
                step,
                sequences if mask is None else sequences_and_mask,
                initial_state,
                go_backwards=self.go_backwards,
                # Carrying the statistics, the step function masks the state itself.
                mask=None if carry else mask,
                unroll=self.unroll,
                input_length=sequences.shape[1],
                zero_output_for_mask=self.zero_output_for_mask,
                return_all_outputs=self.return_sequences,
            )
        finally:
            object.__setattr__(self.cell, "_in_masked_rnn", False)
        if carry:
            cell_states = len(states) - len(self.cell.MOVING_STATISTICS)
            for variable, value in zip(self.cell.moving_statistics(), states[cell_states:]):
                variable.assign(value)
            states = states[:cell_states]
        return last_output, outputs, states

    def _carries_statistics(self, training):
        """Whether the cell's moving statistics travel with the loop's state: under JAX,
        training a cell that has them, in `jax.lax.scan` (not unrolled)."""
        return (
            bool(training)
            and keras.backend.backend() == "jax"
            and not self.unroll
            and hasattr(self.cell, "moving_statistics")
            and self.cell.trainable
        )

    def _step_carrying_statistics(self, step, num_states, masked):
        """Wraps `step` (inputs and the cell's states in, output and new states out) for
        a loop state extended by the cell's moving statistics: hands them to the cell as
        its `_statistics_carry`, returns what the cell made of them, and masks the cell's
        state (and output) as Keras's JAX loop does."""
        names = self.cell.MOVING_STATISTICS

        def carrying(inputs, states):
            states = list(states)
            cell_states, statistics = states[:num_states], states[num_states:]
            values = dict(zip(names, statistics))
            object.__setattr__(self.cell, "_statistics_carry", values)
            try:
                output, new_states = step(inputs, cell_states)
            finally:
                object.__setattr__(self.cell, "_statistics_carry", None)
            if masked:
                valid = ops.expand_dims(inputs[:, -1] > 0.5, -1)
                previous = ops.zeros_like(output) if self.zero_output_for_mask else cell_states[0]
                output = ops.where(valid, output, previous)
                new_states = [ops.where(valid, new, old) for new, old in zip(new_states, cell_states)]
            return output, list(new_states) + [values[name] for name in names]

        return carrying
