"""Stacked sequence models: K members of the sequence claims' models trained as one model.

The feed-forward stacked models (`studies.engine.stacked_layers.build_stacked_model`) fold the
members into the channel axis; the sequence models here do the same, with the time axis
kept: inputs are ``(batch, time, K * features)`` with member k's sample in its block of the
last axis, and each member has its own mask, ``(batch, time, K)`` (member k's sequences
have their own lengths). Two architectures:

- `build_stacked_recurrent_model`: `studies.engine.models.build_model` with
  ``kind="rnn"``, ``cell="lstm"``: one LSTM layer (`StackedLSTM`: no norm, the
  `kerasnorm.LayerNormLSTMCell`, or the `kerasnorm.BatchNormLSTMCell` with per-step or
  shared statistics), its last valid output, optional dropout, a dense classifier.
- `build_stacked_token_model`: the token model of claim C6 (a per-token dense embedding and
  1-D convolutions, each ``-> norm -> relu`` with padding zeroed, a mean over the real
  tokens, a dense classifier).

Every member has its own weights (kernels with a leading member axis, contracted with
``einsum``; per-unit weights in the member's block of the last axis), its own
normalization statistics (a member's batch norm reduces over its own batch and its own
valid steps; a member's layer norm over its own units), its own moving statistics and
its own state. `stack_member_weights` and `unstack_member_weights` map K standalone models
onto a stacked one and back.

**Exact, and only to rounding.** A member computes the maths of its standalone model,
operation for operation where the operation acts on one member's values: the gate
arithmetic, the selection that keeps the state over a masked step, the masked moments of
`kerasnorm.moments` and the moving-average updates (elementwise, in the same order), the
layer norms (`kerasnorm.GroupNormalization` with one group per member runs the kernels of
`kerasnorm.LayerNormalization`, over a member's units). A step at which a member's whole
batch is masked behaves as in the standalone cell: empty statistics (mean and variance
zero, no moving update), outputs discarded by the mask; nothing there is approximated.
What differs is the order of floating-point sums, so a member equals its standalone model
to float32 rounding (about 1e-6 relative), not bit for bit:

- the products with the kernels: a batched ``einsum`` over the members instead of one
  ``matmul``, and the LSTM's input projection computed for all steps at once, before the
  recurrence, instead of step by step;
- the token model's convolutions, shifted copies contracted with the kernel
  (`StackedTokenConv`) instead of Keras's convolution;
- the reductions of the norms run over a member's block of a wider tensor, which the
  backend may split differently; and the norms pick their kernel by context
  (`kerasnorm.kernels`: a closed form outside XLA, the plain two pass inside it), so a
  stacked model compiled with XLA and a standalone model without it (the engine's
  standalone runs) round differently;
- the token model's batch norm in inference reads its moving statistics through the
  general path (`kerasnorm.moments.normalize`), the standalone layer through its fast
  kernel (which rounds to ~1e-7 of mean / std).

Members never mix: a member's outputs, statistics and gradients depend on its own weights
and data only, so changing (or poisoning with NaN) one member leaves the others
bit-identical.

Training the stacked LSTM needs the TensorFlow (or PyTorch) backend, as the batch-norm
cell does: its moving statistics are assigned inside the time loop. Under TensorFlow the
layer trains inside `tf.function(jit_compile=True)` (the loop is a `tf.while_loop` over
the fixed, padded number of steps).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import activations, initializers, ops

# Private Keras module, as in `kerasnorm.recurrent`: Keras exposes no public function that
# runs a step function over time.
from keras.src import backend as keras_backend

import kerasnorm
from kerasnorm import moments as M
from studies.engine.models import RNN_NORMS
from studies.engine.stacked_layers import StackedDense

#: Norms of a stacked token model (`build_stacked_token_model`).
TOKEN_NORMS = ("none", "batch", "layer")


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"Argument `{name}` must be a positive int. Received: {name}={value!r}")
    return int(value)


def _per_member(name, members):
    """An initializer for a weight with a leading member axis: each member's slice drawn
    by a new instance of the Keras initializer `name` (an unseeded instance draws its
    seed when made, and would give every member the same values)."""

    def initialize(shape, dtype=None):
        return ops.stack([initializers.get(name)(tuple(shape[1:]), dtype=dtype) for _ in range(members)])

    return initialize


# ---------------------------------------------------------------------------------------
# Per-member normalization layers (folded features).


@keras.saving.register_keras_serializable(package="studies")
class MemberLayerNormalization(kerasnorm.GroupNormalization):
    """Layer normalization of each member's block of the last axis, position by position:
    group normalization with one group per member over a ``(positions, K * units)`` view
    (the same kernels as `kerasnorm.LayerNormalization` over a member's units). ``gamma``
    and ``beta`` are per unit, ``(K * units,)``: member k's layer-norm weights in block k.

    Args:
        members: number of members K.
        epsilon: added to the variances.
        center: whether to add ``beta``.
        **kwargs: base layer keyword arguments (e.g. ``name``).

    Call arguments:
        inputs: ``(batch, ..., K * units)``.
    """

    def __init__(self, members, epsilon=1e-3, center=True, **kwargs):
        kwargs.pop("groups", None)
        super().__init__(groups=_positive_int(members, "members"), epsilon=epsilon, center=center, **kwargs)
        self.members = self.groups

    def build(self, input_shape):
        super().build((None, input_shape[-1]))
        # Any number of leading axes: `call` flattens them.
        self.input_spec = None

    def call(self, inputs):
        if len(inputs.shape) == 2:
            return super().call(inputs)
        rows = ops.reshape(inputs, (-1, inputs.shape[-1]))
        return ops.reshape(super().call(rows), ops.shape(inputs))

    def get_config(self):
        config = super().get_config()
        config.pop("groups")
        config.pop("axis")
        return {**config, "members": self.members}


@keras.saving.register_keras_serializable(package="studies")
class MemberBatchNormalization(kerasnorm.BatchNormalization):
    """Batch normalization of each member's channels over that member's batch and valid
    positions: `kerasnorm.BatchNormalization` on a ``(batch, ..., K, channels)`` view with
    the member and channel axes as feature axes and a mask per member. Its weights
    (``gamma``, ``beta``, the moving statistics) are ``(K, channels)``.

    Args:
        members: number of members K.
        **kwargs: `kerasnorm.BatchNormalization` arguments but ``axis`` (the last axis,
            member-folded).

    Call arguments:
        inputs: ``(batch, ..., K * channels)``.
        training: Python boolean: batch statistics and moving-average updates.
        mask: optional boolean ``(batch, ..., K)``: false where a member's position is
            padding, kept out of that member's statistics.
    """

    def __init__(self, members, **kwargs):
        kwargs.pop("axis", None)
        super().__init__(**kwargs)
        self.members = _positive_int(members, "members")

    def _view_shape(self, shape):
        return (*shape[:-1], self.members, shape[-1] // self.members)

    def build(self, input_shape):
        if input_shape[-1] % self.members:
            raise ValueError(
                f"{self.name}: the channels do not split into {self.members} members. "
                f"Received: input_shape={tuple(input_shape)}"
            )
        ndim = len(input_shape) + 1
        self.axis = [ndim - 2, ndim - 1]
        super().build(self._view_shape(input_shape))
        self.input_spec = None

    def call(self, inputs, training=None, mask=None):
        shape = ops.shape(inputs)
        view = ops.reshape(inputs, self._view_shape(shape))
        return ops.reshape(super().call(view, training=training, mask=mask), shape)

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.pop("axis")
        return {**config, "members": self.members}


# ---------------------------------------------------------------------------------------
# The stacked LSTM.


@keras.saving.register_keras_serializable(package="studies")
class StackedLSTM(keras.layers.Layer):
    """K independent LSTM layers on member-folded sequences, run side by side in one
    recurrence; the last valid output of each.

    Member k is the layer ``kerasnorm.MaskedRNN(cell)`` of `build_model` with the cell of
    `studies.engine.models._recurrent_cell` for `norm` (``keras.layers.LSTMCell``,
    `kerasnorm.LayerNormLSTMCell`, `kerasnorm.BatchNormLSTMCell`), with its maths:

        i, f, g, o = N_x(x W) + N_h(h U) + b
        c' = sigmoid(f) * c + sigmoid(i) * tanh(g)
        h' = sigmoid(o) * tanh(N_c(c'))

    with no N (``norm="none"``); layer norms, ``N_x`` and ``N_h`` over the ``4 * units``
    pre-activations and scale only, ``N_c`` with an offset (``"layer"``); or batch norms
    with gammas starting at 0.1, ``N_c`` with an offset, statistics over the member's
    valid samples at the step, moving statistics per step index (``max_steps`` rows, the
    last reused beyond) or shared (``"batch"``). A masked step keeps the member's previous
    state (its step index included), as `kerasnorm.MaskedRNN` does.

    Weights carry the cell's names: ``kernel`` ``(K, features, 4 * units)``,
    ``recurrent_kernel`` ``(K, units, 4 * units)``, ``bias`` ``(K * 4 * units,)``; layer
    norm: sublayers ``input_norm``, ``recurrent_norm``, ``cell_norm``
    (`MemberLayerNormalization`); batch norm: ``input_gamma``, ``recurrent_gamma``
    ``(K * 4 * units,)``, ``cell_gamma``, ``cell_beta`` ``(K * units,)``, and
    ``{input,recurrent,cell}_moving_{mean,variance}`` ``(rows, K * width)``. Per-unit weights
    hold member k's in block k of their last axis.

    Args:
        members: number of members K.
        units: state units per member.
        norm: ``"none"``, ``"layer"`` or ``"batch"``.
        max_steps: batch norm: steps with their own statistics (required unless
            `share_statistics`).
        share_statistics: batch norm: one set of statistics for every step.
        momentum: batch norm: momentum of the moving statistics.
        epsilon: added to the variances of the norms.
        unit_forget_bias: whether the forget-gate block of the bias starts at one.
        unroll: unroll the time loop (Python loop) instead of a symbolic loop.
        **kwargs: base layer keyword arguments (e.g. ``name``).

    Call arguments:
        inputs: ``(batch, time, K * features)``, member k's features in block k.
        mask: optional boolean ``(batch, time, K)``: false at a member's padded steps.
        training: Python boolean: batch norm uses (and updates the moving averages of)
            the batch statistics only when true and the layer is trainable.

    Returns ``(batch, K * units)``: each member's output at its last valid step.
    """

    def __init__(
        self,
        members,
        units,
        norm="none",
        max_steps=None,
        share_statistics=False,
        momentum=0.99,
        epsilon=1e-3,
        unit_forget_bias=True,
        unroll=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.members = _positive_int(members, "members")
        self.units = _positive_int(units, "units")
        if norm not in RNN_NORMS:
            raise ValueError(f"StackedLSTM supports norms {', '.join(RNN_NORMS)}. Received: norm={norm!r}")
        self.norm = norm
        self.share_statistics = bool(share_statistics)
        if norm == "batch" and max_steps is None and not self.share_statistics:
            raise ValueError("norm='batch' needs max_steps unless share_statistics=True. Received: max_steps=None")
        self.max_steps = None if max_steps is None else _positive_int(max_steps, "max_steps")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Argument `momentum` must be in [0, 1). Received: momentum={momentum!r}")
        if not epsilon > 0:
            raise ValueError(f"Argument `epsilon` must be positive. Received: epsilon={epsilon!r}")
        self.momentum, self.epsilon = float(momentum), float(epsilon)
        self.unit_forget_bias, self.unroll = bool(unit_forget_bias), bool(unroll)
        self.activation = activations.get("tanh")
        self.recurrent_activation = activations.get("sigmoid")
        self._rows = 1 if self.share_statistics else self.max_steps
        if norm == "layer":
            norm_args = {"members": self.members, "epsilon": self.epsilon}
            self.input_norm = MemberLayerNormalization(center=False, name="input_norm", **norm_args)
            self.recurrent_norm = MemberLayerNormalization(center=False, name="recurrent_norm", **norm_args)
            self.cell_norm = MemberLayerNormalization(name="cell_norm", **norm_args)

    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[-1] is None or input_shape[-1] % self.members:
            raise ValueError(
                f"{self.name}: inputs must be (batch, time, {self.members} * features). "
                f"Received: input_shape={tuple(input_shape)}"
            )
        k, u = self.members, self.units
        self.features = input_shape[-1] // k
        self.kernel = self.add_weight(
            shape=(k, self.features, 4 * u), name="kernel", initializer=_per_member("glorot_uniform", k)
        )
        self.recurrent_kernel = self.add_weight(
            shape=(k, u, 4 * u), name="recurrent_kernel", initializer=_per_member("orthogonal", k)
        )
        forget = 1.0 if self.unit_forget_bias else 0.0
        bias = np.tile(np.repeat(np.array([0.0, forget, 0.0, 0.0], np.float32), u), k)
        self.bias = self.add_weight(shape=(k * 4 * u,), name="bias", initializer=initializers.Constant(bias))
        if self.norm == "layer":
            self.input_norm.build((None, k * 4 * u))
            self.recurrent_norm.build((None, k * 4 * u))
            self.cell_norm.build((None, k * u))
        elif self.norm == "batch":
            gamma = initializers.Constant(0.1)
            self.input_gamma = self.add_weight(shape=(k * 4 * u,), name="input_gamma", initializer=gamma)
            self.recurrent_gamma = self.add_weight(shape=(k * 4 * u,), name="recurrent_gamma", initializer=gamma)
            self.cell_gamma = self.add_weight(shape=(k * u,), name="cell_gamma", initializer=gamma)
            self.cell_beta = self.add_weight(shape=(k * u,), name="cell_beta", initializer="zeros")
            for which, width in (("input", 4 * u), ("recurrent", 4 * u), ("cell", u)):
                for stat, initializer in (("mean", "zeros"), ("variance", "ones")):
                    name = f"{which}_moving_{stat}"
                    weight = self.add_weight(
                        shape=(self._rows, k * width),
                        name=name,
                        initializer=initializer,
                        trainable=False,
                        autocast=False,
                    )
                    setattr(self, name, weight)

    # -- one step ---------------------------------------------------------------------

    def _members(self, t):
        """``(batch, K * n)`` -> ``(batch, K, n)``."""
        return ops.reshape(t, (-1, self.members, t.shape[-1] // self.members))

    def _folded(self, t):
        """``(batch, K, n)`` -> ``(batch, K * n)``."""
        return ops.reshape(t, (-1, self.members * t.shape[-1]))

    def _take_rows(self, moving, step, dtype):
        """Each member's sample's row of `moving` ``(rows, K * n)`` at its step index
        ``(batch, K)``: ``(batch, K, n)`` (`kerasnorm.BatchNormLSTMCell`'s ``take``)."""
        per_member = ops.transpose(ops.reshape(ops.cast(moving, dtype), (self._rows, self.members, -1)), (1, 0, 2))
        index = ops.expand_dims(ops.transpose(step), -1)
        index = ops.broadcast_to(index, (self.members, ops.shape(step)[0], per_member.shape[-1]))
        return ops.transpose(ops.take_along_axis(per_member, index, axis=1), (1, 0, 2))

    def _batch_norm(self, x, which, gamma, beta, step, valid, training):
        """`kerasnorm.BatchNormLSTMCell._batch_norm` of each member: `x` ``(batch, K, n)``,
        statistics over the batch of each member, `valid` ``(batch, K)`` or None."""
        moving_mean = getattr(self, f"{which}_moving_mean")
        moving_variance = getattr(self, f"{which}_moving_variance")
        dtype = M.statistics_dtype(x.dtype)
        x = ops.cast(x, dtype)
        width = x.shape[-1]
        gamma = ops.reshape(ops.cast(gamma, dtype), (self.members, width))
        beta = None if beta is None else ops.reshape(ops.cast(beta, dtype), (self.members, width))
        if not (training and self.trainable):
            mean = self._take_rows(moving_mean, step, dtype)
            variance = self._take_rows(moving_variance, step, dtype)
            return M.normalize(x, mean, variance, gamma, beta, self.epsilon)

        weights = None if valid is None else ops.expand_dims(ops.cast(valid, dtype), -1)
        stats = M.moments(x, (0,), weights)
        # Rows to update, per member: the step indices of its samples in the statistics;
        # nothing where its statistics are empty or not finite.
        present = ops.one_hot(step, self._rows, dtype=dtype)
        if weights is not None:
            present = present * weights
        rows = ops.expand_dims(ops.transpose(ops.max(present, axis=0) > 0), -1)
        update = ops.logical_and(rows, ops.logical_and(stats.count > 0, M.is_finite(stats.mean, stats.variance)))
        for variable, value in ((moving_mean, stats.mean), (moving_variance, stats.variance)):
            old = ops.reshape(ops.cast(variable, dtype), (self._rows, self.members, width))
            new = old * self.momentum + value * (1.0 - self.momentum)
            variable.assign(ops.cast(ops.reshape(ops.where(update, new, old), variable.shape), variable.dtype))
        return M.normalize(x, stats.mean, stats.variance, gamma, beta, self.epsilon)

    def _step(self, wx, valid, states, training):
        """One step of every member: `wx` ``(batch, K * 4 * units)`` the input projection,
        `valid` ``(batch, K)`` or None; `states` ``[h, c]`` (and the step index ``(batch,
        K)`` with batch norm). Returns the new states, masked steps keeping the old."""
        h_prev, c_prev = states[0], states[1]
        wh = self._folded(ops.einsum("bku,kuo->bko", self._members(h_prev), self.recurrent_kernel))
        if self.norm == "none":
            # keras.layers.LSTMCell's order: x W, + h U, + b.
            z = wx + wh + self.bias
        elif self.norm == "layer":
            z = self.input_norm(wx) + self.recurrent_norm(wh) + self.bias
        else:
            counter = states[2]
            step = ops.cast(counter, "int32")
            bn = {"step": step, "valid": valid, "training": training}
            z = self._batch_norm(self._members(wx), "input", self.input_gamma, None, **bn)
            z = z + self._batch_norm(self._members(wh), "recurrent", self.recurrent_gamma, None, **bn)
            z = ops.cast(self._folded(z), self.compute_dtype) + self.bias
        i, f, g, o = ops.split(ops.reshape(z, (-1, self.members, 4, self.units)), 4, axis=2)
        c_prev3 = ops.expand_dims(self._members(c_prev), 2)
        c3 = self.recurrent_activation(f) * c_prev3 + self.recurrent_activation(i) * self.activation(g)
        o = self.recurrent_activation(o)
        c = self._folded(ops.squeeze(c3, 2))
        o = self._folded(ops.squeeze(o, 2))
        if self.norm == "none":
            h = o * self.activation(c)
        elif self.norm == "layer":
            h = o * self.activation(self.cell_norm(c))
        else:
            c_hat = self._batch_norm(self._members(c), "cell", self.cell_gamma, self.cell_beta, **bn)
            h = o * self.activation(ops.cast(self._folded(c_hat), self.compute_dtype))
        new = [h, c]
        if valid is not None:
            # A masked step keeps the member's previous state (`kerasnorm.MaskedRNN`).
            keep = ops.expand_dims(valid, -1)
            new = [self._folded(ops.where(keep, self._members(n), self._members(p))) for n, p in zip(new, states)]
        if self.norm == "batch":
            count = ops.minimum(counter + 1.0, float(self._rows - 1))
            new.append(count if valid is None else ops.where(valid, count, counter))
        return new

    def call(self, inputs, mask=None, training=None):
        training = bool(training)
        if training and self.trainable and self.norm == "batch" and keras.backend.backend() == "jax":
            raise NotImplementedError(
                f"Layer '{self.name}' cannot train batch norm under the JAX backend: it updates "
                "its moving statistics inside the recurrence. Received: training=True, backend='jax'"
            )
        k, u = self.members, self.units
        batch, steps = ops.shape(inputs)[0], ops.shape(inputs)[1]
        x = ops.reshape(inputs, (batch, steps, k, self.features))
        # The input projection of every step at once: one product instead of one a step.
        wx = ops.reshape(ops.einsum("btki,kio->btko", x, self.kernel), (batch, steps, k * 4 * u))
        states = [ops.zeros((batch, k * u), self.compute_dtype), ops.zeros((batch, k * u), self.compute_dtype)]
        if self.norm == "batch":
            states.append(ops.zeros((batch, k), self.compute_dtype))
        width = k * 4 * u
        # The mask travels through the time loop as K more input channels (as in
        # `kerasnorm.MaskedRNN`), split off at each step.
        sequences = wx if mask is None else ops.concatenate([wx, ops.cast(mask, wx.dtype)], axis=-1)
        # Keras's TensorFlow backend runs the first step once more, before its loop, to
        # learn the output's shape: in inference mode, so that no moving statistic is
        # updated twice (as `kerasnorm.MaskedRNN`).
        probe = [keras.backend.backend() == "tensorflow" and not self.unroll]

        def step(step_inputs, step_states):
            train = training
            if probe[0]:
                probe[0], train = False, False
            if mask is None:
                wx_t, valid_t = step_inputs, None
            else:
                wx_t, valid_t = step_inputs[:, :width], step_inputs[:, width:] > 0.5
            new = self._step(wx_t, valid_t, list(step_states), train)
            return new[0], new

        last, _, _ = keras_backend.rnn(
            step,
            sequences,
            states,
            mask=None,
            unroll=self.unroll,
            return_all_outputs=False,
        )
        return last

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.members * self.units)

    def get_config(self):
        config = {
            "members": self.members,
            "units": self.units,
            "norm": self.norm,
            "max_steps": self.max_steps,
            "share_statistics": self.share_statistics,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "unit_forget_bias": self.unit_forget_bias,
            "unroll": self.unroll,
        }
        return {**super().get_config(), **config}


# ---------------------------------------------------------------------------------------
# The token model's per-position layers.


@keras.saving.register_keras_serializable(package="studies")
class StackedTokenDense(keras.layers.Layer):
    """`members` independent ``Dense`` layers applied at every position of member-folded
    sequences (a ``Dense`` on a 3-D input, per member).

    Args:
        members: number of members K.
        units: output units per member.
        use_bias: whether each member adds a bias.
        **kwargs: base layer keyword arguments (e.g. ``name``).

    Call arguments:
        inputs: ``(batch, time, K * in_units)``.

    Weights: ``kernel`` ``(K, in_units, units)``, ``bias`` ``(K * units,)``.
    """

    def __init__(self, members, units, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.members = _positive_int(members, "members")
        self.units = _positive_int(units, "units")
        self.use_bias = bool(use_bias)

    def build(self, input_shape):
        if input_shape[-1] % self.members:
            raise ValueError(
                f"{self.name}: the features do not split into {self.members} members. "
                f"Received: input_shape={tuple(input_shape)}"
            )
        self.in_units = input_shape[-1] // self.members
        self.kernel = self.add_weight(
            shape=(self.members, self.in_units, self.units),
            name="kernel",
            initializer=_per_member("glorot_uniform", self.members),
        )
        self.bias = (
            self.add_weight(shape=(self.members * self.units,), name="bias", initializer="zeros")
            if self.use_bias
            else None
        )

    def call(self, inputs):
        batch, steps = ops.shape(inputs)[0], ops.shape(inputs)[1]
        h = ops.reshape(inputs, (batch, steps, self.members, self.in_units))
        h = ops.reshape(ops.einsum("btki,kio->btko", h, self.kernel), (batch, steps, self.members * self.units))
        return h if self.bias is None else h + self.bias

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.members * self.units)

    def get_config(self):
        return {**super().get_config(), "members": self.members, "units": self.units, "use_bias": self.use_bias}


def _by_member(h, members):
    """``(batch, time, K * n)`` -> ``(batch, time, K, n)``."""
    batch, steps = ops.shape(h)[0], ops.shape(h)[1]
    return ops.reshape(h, (batch, steps, members, h.shape[-1] // members))


@keras.saving.register_keras_serializable(package="studies")
class StackedTokenConv(keras.layers.Layer):
    """`members` independent stride-1 ``same``-padded ``Conv1D`` layers on member-folded
    sequences of any length: `studies.engine.stacked_layers.StackedConv` (shifted copies of the
    input contracted with each member's kernel) for a time axis known only at call time.

    Args:
        members: number of members K.
        filters: output channels per member.
        kernel_size: odd kernel size.
        use_bias: whether each member adds a bias.
        **kwargs: base layer keyword arguments (e.g. ``name``).

    Call arguments:
        inputs: ``(batch, time, K * in_channels)``.

    Weights: ``kernel`` ``(K, kernel_size, in_channels, filters)`` (member k's Keras
    ``Conv1D`` kernel in slice k), ``bias`` ``(K * filters,)``.
    """

    def __init__(self, members, filters, kernel_size, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size % 2 != 1:
            raise ValueError(f"StackedTokenConv needs an odd int kernel_size. Received: kernel_size={kernel_size!r}")
        self.members, self.filters = _positive_int(members, "members"), _positive_int(filters, "filters")
        self.kernel_size, self.use_bias = kernel_size, bool(use_bias)

    def build(self, input_shape):
        if input_shape[-1] % self.members:
            raise ValueError(
                f"{self.name}: the channels do not split into {self.members} members. "
                f"Received: input_shape={tuple(input_shape)}"
            )
        self.in_channels = input_shape[-1] // self.members
        self.kernel = self.add_weight(
            shape=(self.members, self.kernel_size, self.in_channels, self.filters),
            name="kernel",
            initializer=_per_member("glorot_uniform", self.members),
        )
        self.bias = (
            self.add_weight(shape=(self.members * self.filters,), name="bias", initializer="zeros")
            if self.use_bias
            else None
        )

    def call(self, inputs):
        half = self.kernel_size // 2
        x = _by_member(inputs, self.members)
        batch, steps = ops.shape(x)[0], ops.shape(x)[1]
        x = ops.pad(x, [(0, 0), (half, half), (0, 0), (0, 0)])
        window = (batch, steps, self.members, self.in_channels)
        shifts = [ops.slice(x, (0, i, 0, 0), window) for i in range(self.kernel_size)]
        h = ops.einsum("btski,ksio->btko", ops.stack(shifts, axis=-3), self.kernel)
        h = ops.reshape(h, (batch, steps, self.members * self.filters))
        return h if self.bias is None else h + self.bias

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.members * self.filters)

    def get_config(self):
        config = {
            "members": self.members,
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "use_bias": self.use_bias,
        }
        return {**super().get_config(), **config}


@keras.saving.register_keras_serializable(package="studies")
class MemberPaddingToZero(keras.layers.Layer):
    """Sets each member's padded positions to zero (the token model's ``h * valid``).

    Call arguments:
        inputs: ``(batch, time, K * n)``.
        valid: boolean ``(batch, time, K)``, false at a member's padded positions.
    """

    def call(self, inputs, valid):
        members = valid.shape[-1]
        h = _by_member(inputs, members) * ops.expand_dims(ops.cast(valid, inputs.dtype), -1)
        return ops.reshape(h, ops.shape(inputs))


@keras.saving.register_keras_serializable(package="studies")
class MemberMaskedMean(keras.layers.Layer):
    """Each member's mean over its real positions: ``sum(h) / max(count, 1)`` (the
    token model's pooling; `h` is zero at padding already).

    Call arguments:
        inputs: ``(batch, time, K * n)``, zero at padded positions.
        valid: boolean ``(batch, time, K)``.

    Returns ``(batch, K * n)``.
    """

    def call(self, inputs, valid):
        members = valid.shape[-1]
        count = ops.sum(ops.cast(valid, inputs.dtype), axis=1)
        pooled = ops.sum(_by_member(inputs, members), axis=1) / ops.maximum(ops.expand_dims(count, -1), 1.0)
        return ops.reshape(pooled, (ops.shape(inputs)[0], inputs.shape[-1]))


# ---------------------------------------------------------------------------------------
# Model builders.


def sequence_inputs(input_shape, members, masked):
    """The inputs of a stacked sequence model: ``x`` ``(time, K * features)`` and, if
    `masked`, ``mask`` ``(time, K)`` (boolean). Returns ``(x, mask or None)``."""
    steps, features = tuple(input_shape)
    x = keras.Input(shape=(steps, members * features), name="x")
    mask = keras.Input(shape=(steps, members), dtype="bool", name="mask") if masked else None
    return x, mask


def build_stacked_recurrent_model(
    input_shape,
    num_classes,
    norm,
    members,
    *,
    activation="relu",
    widths=None,
    dropout=0.0,
    cell="lstm",
    masked=False,
    max_steps=None,
    share_statistics=False,
    momentum=0.99,
    epsilon=1e-3,
    unroll=False,
    **norm_options,
):
    """`studies.engine.models.build_model` with ``kind="rnn"`` and ``cell="lstm"`` for
    `members` members at once.

    Args are those of `build_model` for an rnn (`activation` is ignored there too: the
    cell keeps its own; of the norm options only `momentum` and `epsilon` apply, the
    others are accepted and ignored as `build_model` does), plus `members`, K, and
    `unroll` (`StackedLSTM`). The model takes ``x`` ``(batch, time, K * features)``
    (member k's sequence in block k) and, if `masked`, ``mask`` ``(batch, time, K)``;
    it returns ``(batch, K * num_classes)`` logits. Layers are named as in `build_model`
    (``rnn``, ``logits``), for `stack_member_weights`.
    """
    del activation, norm_options
    if cell != "lstm":
        raise ValueError(f"Stacked recurrent models have LSTM cells. Received: cell={cell!r}")
    if norm == "batch" and max_steps is None:
        raise ValueError("norm='batch' in a recurrent model needs max_steps (the training length).")
    widths = tuple(widths or (64,))
    if len(widths) != 1:
        raise ValueError(f"An rnn has one recurrent layer: widths=(units,). Received: widths={widths}")
    if len(tuple(input_shape)) != 2 or (unroll and input_shape[0] is None):
        raise ValueError(
            f"A stacked rnn takes (time, features) samples, with a fixed time to unroll. "
            f"Received: input_shape={input_shape}, unroll={unroll}"
        )
    x, mask = sequence_inputs(input_shape, members, masked)
    rnn = StackedLSTM(
        members, widths[0], norm, max_steps=max_steps, share_statistics=share_statistics,
        momentum=momentum, epsilon=epsilon, unroll=unroll, name="rnn",
    )  # fmt: skip
    h = rnn(x, mask=mask)
    if dropout:
        h = keras.layers.Dropout(dropout)(h)
    outputs = StackedDense(members, num_classes, name="logits")(h)
    return keras.Model([x, mask] if masked else x, outputs, name=f"stacked_rnn_{norm}_{members}")


def build_stacked_token_model(
    input_shape, num_classes, norm, members, widths=(32, 32, 32), momentum=0.99, kernel_size=3, epsilon=1e-3
):
    """Claim C6's token model (`studies.claims.c6_layer_norm_sequences.token_model`) for
    `members` members at once: a per-token ``Dense`` embedding, then ``Conv1D`` layers,
    each ``-> norm -> relu`` with each member's padded positions reset to zero, the mean
    over each member's real tokens, a dense classifier.

    Args:
        input_shape: ``(time, features)`` of one member's sample.
        num_classes: logits per member.
        norm: one of `TOKEN_NORMS`: batch norm over each member's real tokens, or layer
            norm over each token's units.
        members: K.
        widths: units of the embedding, filters of each convolution.
        momentum: batch norm's momentum.
        kernel_size: odd convolution size.
        epsilon: added to the norms' variances.

    The model takes ``[x, mask]``, ``(batch, time, K * features)`` and ``(batch, time,
    K)``, and returns ``(batch, K * num_classes)`` logits; layers are named as in the
    standalone model (``embedding``, ``conv_i``, ``norm_i``, ``logits``).
    """
    if norm not in TOKEN_NORMS:
        raise ValueError(f"Stacked token models support norms {', '.join(TOKEN_NORMS)}. Received: norm={norm!r}")
    x, mask = sequence_inputs(input_shape, members, masked=True)
    use_bias = norm == "none"
    h = x
    for i, width in enumerate(widths):
        if i == 0:
            h = StackedTokenDense(members, width, use_bias=use_bias, name="embedding")(h)
        else:
            h = StackedTokenConv(members, width, kernel_size, use_bias=use_bias, name=f"conv_{i}")(h)
        if norm == "batch":
            h = MemberBatchNormalization(members, momentum=momentum, epsilon=epsilon, name=f"norm_{i}")(h, mask=mask)
        elif norm == "layer":
            h = MemberLayerNormalization(members, epsilon=epsilon, name=f"norm_{i}")(h)
        h = keras.layers.Activation("relu", name=f"act_{i}")(h)
        h = MemberPaddingToZero(name=f"padding_{i}")(h, mask)
    pooled = MemberMaskedMean(name="mean")(h, mask)
    logits = StackedDense(members, num_classes, name="logits")(pooled)
    return keras.Model([x, mask], logits, name=f"stacked_tokens_{norm}_{members}")


def fold_members(x, mask=None):
    """Member-major data to a stacked model's inputs: ``x`` ``(K, batch, time, features)``
    -> ``(batch, time, K * features)``, and ``mask`` ``(K, batch, time)`` -> ``(batch,
    time, K)``. Returns ``x`` or ``(x, mask)``; works on arrays and tensors."""
    members, features = x.shape[0], x.shape[-1]
    x = ops.transpose(x, (1, 2, 0, 3))
    folded = ops.reshape(x, (ops.shape(x)[0], ops.shape(x)[1], members * features))
    return folded if mask is None else (folded, ops.transpose(mask, (1, 2, 0)))


# ---------------------------------------------------------------------------------------
# Member weights.


def _member_weights(stacked, member_models):
    """Yields, for each weight of `stacked` in order, ``(weight, kind, variables)``: the
    members' variables of the same layer and the same path within it (a member's
    recurrent layer nests its cell one level deeper: matched by the path's end), and the
    layout: ``"members"`` (one member per slice of a leading axis, the weight one rank
    above the member's) or ``"channels"`` (the members' blocks along the last axis)."""
    for layer in stacked.layers:
        if not layer.weights:
            continue
        members = [m.get_layer(layer.name) for m in member_models]
        for weight in layer.weights:
            within = weight.path[len(layer.path) + 1 :]
            variables = []
            for member in members:
                found = [w for w in member.weights if w.path.endswith(f"/{within}")]
                if len(found) != 1:
                    raise ValueError(
                        f"{weight.path}: expected one weight '{within}' in the member's layer "
                        f"'{member.name}', found {[w.path for w in found]}"
                    )
                variables.append(found[0])
            member_rank = len(variables[0].shape)
            if len(weight.shape) == member_rank + 1:
                kind = "members"
            elif len(weight.shape) == member_rank and member_rank:
                kind = "channels"
            else:
                raise ValueError(
                    f"{weight.path}: shape {weight.shape} does not hold members of shape {variables[0].shape}"
                )
            yield weight, kind, variables


def stack_member_weights(stacked, member_models):
    """The values of `stacked`'s weights (`build_stacked_recurrent_model`,
    `build_stacked_token_model`) holding each of `member_models` (the standalone models
    of the same architecture, in member order) as its member k. Returns a list of arrays
    in the order of ``stacked.weights``."""
    values = []
    for weight, kind, variables in _member_weights(stacked, member_models):
        parts = [v.numpy() for v in variables]
        if kind == "members":
            value = np.stack([p.reshape(weight.shape[1:]) for p in parts])
        else:
            value = np.concatenate(parts, axis=-1)
        if tuple(value.shape) != tuple(weight.shape):
            raise ValueError(f"{weight.path}: members give shape {value.shape}, the stacked model {weight.shape}")
        values.append(value)
    return values


def unstack_member_weights(stacked, member_models):
    """Sets each of `member_models` to its member of `stacked`: the inverse of
    `stack_member_weights`."""
    k = len(member_models)
    for weight, kind, variables in _member_weights(stacked, member_models):
        value = weight.numpy()
        parts = list(value) if kind == "members" else np.split(value, k, axis=-1)
        for variable, part in zip(variables, parts):
            variable.assign(np.reshape(part, variable.shape))
