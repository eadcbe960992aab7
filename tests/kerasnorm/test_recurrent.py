"""Normalized recurrent cells and MaskedRNN: float64 references, masks, step statistics."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import keras

import kerasnorm

RNG = np.random.default_rng(3)
EPS = 1e-3


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _standardize(v, mean, var):
    return (v - mean) / np.sqrt(var + EPS)


def _ln(v):
    return _standardize(v, v.mean(-1, keepdims=True), v.var(-1, keepdims=True))


def _weights(cell):
    return {w.name: np.asarray(w, np.float64) for w in cell.weights}


def _randomize(cell, names):
    for w in cell.weights:
        if w.name in names:
            w.assign(RNG.normal(size=w.shape) * (0.5 if "kernel" in w.name else 1.0) + (1.0 if w.name == "gamma" else 0.0))


def _run(reference_step, x, mask, states):
    """Runs a float64 reference step over time; masked steps keep the state, as the RNN."""
    outputs = []
    for t in range(x.shape[1]):
        new = reference_step(x[:, t], states, t)
        keep = mask[:, t, None] if mask is not None else np.ones((x.shape[0], 1), bool)
        states = [np.where(keep, n, s) for n, s in zip(new, states)]
        outputs.append(states[0])
    return np.stack(outputs, 1), states


def _lstm_update(z, c):
    i, f, g, o = np.split(z, 4, axis=-1)
    c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
    return c, _sigmoid(o)


def ln_lstm_reference(cell, x, mask=None):
    w = _weights(cell)
    k, u, b = w["kernel"], w["recurrent_kernel"], w["bias"]
    gx, gh = (np.asarray(n.gamma, np.float64) for n in (cell.input_norm, cell.recurrent_norm))
    gc, bc = np.asarray(cell.cell_norm.gamma, np.float64), np.asarray(cell.cell_norm.beta, np.float64)

    def step(xt, states, t):
        h, c = states
        z = _ln(xt @ k) * gx + _ln(h @ u) * gh + b
        c, o = _lstm_update(z, c)
        h = o * np.tanh(_ln(c) * gc + bc)
        return [h, c]

    zeros = np.zeros((x.shape[0], cell.units))
    return _run(step, np.asarray(x, np.float64), mask, [zeros, zeros])[0]


def ln_gru_reference(cell, x, mask=None):
    w = _weights(cell)
    k, u, b = w["kernel"], w["recurrent_kernel"], w["bias"]
    gx, gh = (np.asarray(n.gamma, np.float64) for n in (cell.input_norm, cell.recurrent_norm))

    def step(xt, states, t):
        (h,) = states
        a_z, a_r, a_n = np.split(_ln(xt @ k) * gx + b, 3, axis=-1)
        h_z, h_r, h_n = np.split(_ln(h @ u) * gh, 3, axis=-1)
        z, r = _sigmoid(a_z + h_z), _sigmoid(a_r + h_r)
        return [z * h + (1 - z) * np.tanh(a_n + r * h_n)]

    return _run(step, np.asarray(x, np.float64), mask, [np.zeros((x.shape[0], cell.units))])[0]


@pytest.mark.parametrize("cell_cls,reference", [(kerasnorm.LayerNormLSTMCell, ln_lstm_reference), (kerasnorm.LayerNormGRUCell, ln_gru_reference)])
def test_layer_norm_cells_match_reference_with_and_without_padding(cell_cls, reference):
    x = RNG.normal(size=(3, 5, 4)).astype("float32") * 2 + 1
    mask = np.array([[1] * 5, [1] * 3 + [0] * 2, [1] * 2 + [0] * 3], bool)
    x[~mask] = 1e3  # padding far from the data: it must not matter
    cell = cell_cls(6, epsilon=EPS)
    rnn = keras.layers.RNN(cell, return_sequences=True)
    rnn.build(x.shape)
    _randomize(cell, {"kernel", "recurrent_kernel", "bias", "gamma", "beta"})

    out = np.asarray(rnn(x, mask=mask))
    np.testing.assert_allclose(out, reference(cell, x, mask), rtol=1e-4, atol=1e-5)
    # A padded sequence ends as the same sequence unpadded, alone in its batch.
    alone = np.asarray(rnn(x[2:, :2]))
    np.testing.assert_allclose(out[2, 1], alone[0, 1], rtol=1e-5, atol=1e-6)


def bn_lstm_reference(cell, x, mask=None, training=True):
    """Float64 recurrent BN. Training: statistics of each step over the valid samples, and
    the expected moving statistics per row. Inference: each sample reads the row of its own
    step count. Returns (outputs, {name: moving statistic})."""
    w = _weights(cell)
    k, u, b = w["kernel"], w["recurrent_kernel"], w["bias"]
    rows, m = cell._rows, cell.momentum
    moving = {n: w[n].copy() for n in w if "_moving_" in n}

    def bn(v, which, gamma, beta, valid, count):
        if not training:
            row = np.minimum(count, rows - 1)
            mean, var = moving[f"{which}_moving_mean"][row], moving[f"{which}_moving_variance"][row]
            return _standardize(v, mean, var) * gamma + beta
        mean, var = v[valid].mean(0), v[valid].var(0)
        for row in set(np.minimum(count[valid], rows - 1)):
            for stat, value in (("mean", mean), ("variance", var)):
                name = f"{which}_moving_{stat}"
                moving[name][row] = moving[name][row] * m + value * (1 - m)
        return _standardize(v, mean, var) * gamma + beta

    def step(xt, states, t):
        h, c, count = states
        valid = mask[:, t] if mask is not None else np.ones(len(xt), bool)
        n = np.asarray(count[:, 0], int)
        z = bn(xt @ k, "input", w["input_gamma"], 0.0, valid, n) + bn(h @ u, "recurrent", w["recurrent_gamma"], 0.0, valid, n) + b
        c, o = _lstm_update(z, c)
        h = o * np.tanh(bn(c, "cell", w["cell_gamma"], w["cell_beta"], valid, n))
        return [h, c, count + 1]

    zeros = np.zeros((x.shape[0], cell.units))
    out, _ = _run(step, np.asarray(x, np.float64), mask, [zeros, zeros, np.zeros((x.shape[0], 1))])
    return out, moving


def _bn_cell(max_steps=3, **kwargs):
    cell = kerasnorm.BatchNormLSTMCell(5, max_steps=max_steps, momentum=0.5, epsilon=EPS, **kwargs)
    rnn = kerasnorm.MaskedRNN(cell, return_sequences=True)
    return cell, rnn


RIGHT_PADDED = [[1] * 5, [1] * 5, [1] * 4 + [0], [1] * 2 + [0] * 3]
LEFT_PADDED = [[1] * 5, [0, 1, 1, 1, 1], [0, 0, 0, 1, 1], [0, 0, 1, 1, 1]]


@pytest.mark.parametrize(
    "mask,max_steps",
    [
        # A row per step: a finished sample's row must not move with the others' steps.
        (RIGHT_PADDED, 6),
        # Longer than max_steps: the last row takes steps 2, 3 and 4.
        (RIGHT_PADDED, 3),
        # At one iteration the valid samples sit at different steps: their rows move.
        (LEFT_PADDED, 6),
    ],
    ids=["right-padded", "right-padded-beyond-max-steps", "left-padded"],
)
def test_batch_norm_cell_training_excludes_padded_samples_per_step(mask, max_steps):
    x = RNG.normal(size=(4, 5, 3)).astype("float32")
    mask = np.array(mask, bool)
    x[~mask] = 50.0
    cell, rnn = _bn_cell(max_steps)
    rnn.build(x.shape)
    _randomize(cell, {"kernel", "recurrent_kernel", "bias"})
    expected, moving = bn_lstm_reference(cell, x, mask, training=True)
    out = np.asarray(rnn(x, mask=mask, training=True))
    np.testing.assert_allclose(out[mask], expected[mask], rtol=1e-4, atol=1e-4)
    for name, value in moving.items():
        np.testing.assert_allclose(getattr(cell, name), value, rtol=1e-4, atol=1e-5, err_msg=name)


def test_batch_norm_cell_inference_reads_each_samples_own_step_row():
    # Left padding: a sample's index counts its own valid steps, not the RNN iteration.
    x = RNG.normal(size=(3, 5, 3)).astype("float32")
    mask = np.array([[1] * 5, [0, 0, 1, 1, 1], [0, 0, 0, 0, 1]], bool)
    cell, rnn = _bn_cell(max_steps=4)
    rnn.build(x.shape)
    _randomize(cell, {"kernel", "recurrent_kernel", "bias", "input_gamma", "cell_beta"})
    for name in ("input", "recurrent", "cell"):
        mean, var = getattr(cell, f"{name}_moving_mean"), getattr(cell, f"{name}_moving_variance")
        mean.assign(RNG.normal(size=mean.shape))
        var.assign(RNG.uniform(0.5, 2.0, size=var.shape))
    expected, _ = bn_lstm_reference(cell, x, mask, training=False)
    out = np.asarray(rnn(x, mask=mask, training=False))
    np.testing.assert_allclose(out[mask], expected[mask], rtol=1e-4, atol=1e-5)
    # The last sample has one valid step: it equals the same input alone, unpadded.
    alone = np.asarray(rnn(x[2:, 4:]))
    np.testing.assert_allclose(out[2, 4], alone[0, 0], rtol=1e-5, atol=1e-6)
    # Inference needs no step mask: Keras's own RNN gives the same outputs.
    plain = np.asarray(keras.layers.RNN(cell, return_sequences=True)(x, mask=mask))
    np.testing.assert_allclose(plain[mask], out[mask], rtol=1e-6, atol=1e-7)


def test_shared_statistics_use_one_row_for_every_step():
    x = RNG.normal(size=(4, 3, 2)).astype("float32")
    cell = kerasnorm.BatchNormLSTMCell(3, share_statistics=True, momentum=0.5, epsilon=EPS)
    rnn = kerasnorm.MaskedRNN(cell, return_state=True)
    rnn.build(x.shape)
    expected, moving = bn_lstm_reference(cell, x, training=True)
    out, *_, step = rnn(x, training=True)
    assert cell.input_moving_mean.shape == (1, 12)
    np.testing.assert_array_equal(step, 0.0)
    np.testing.assert_allclose(out, expected[:, -1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cell.cell_moving_variance, moving["cell_moving_variance"], rtol=1e-4)


def test_batch_norm_cell_defaults_state_and_frozen_cell():
    cell = kerasnorm.BatchNormLSTMCell(4, max_steps=6)
    assert cell.state_size == [4, 4, 1] and cell.output_size == 4
    rnn = keras.layers.RNN(cell, return_state=True)
    x = RNG.normal(size=(2, 8, 3)).astype("float32")
    _, _, _, step = rnn(x)
    np.testing.assert_array_equal(step, 5.0)  # clipped at max_steps - 1
    np.testing.assert_allclose(cell.input_gamma, 0.1)
    np.testing.assert_allclose(cell.bias[4:8], 1.0)  # unit_forget_bias
    # Trained only inside MaskedRNN; frozen, it runs in inference mode anywhere.
    with pytest.raises(ValueError, match="MaskedRNN"):
        rnn(x, training=True)
    cell.trainable = False
    before = np.asarray(cell.input_moving_mean).copy()
    rnn(x, training=True)
    np.testing.assert_array_equal(cell.input_moving_mean, before)


@pytest.mark.parametrize("unroll", [False, True])
@pytest.mark.parametrize("compiled", [False, True])
def test_training_updates_each_step_row_once(unroll, compiled):
    # Keras's TensorFlow backend probes the first step before its loop: no second update.
    x = RNG.normal(size=(4, 3, 2)).astype("float32")
    cell = kerasnorm.BatchNormLSTMCell(3, max_steps=3, momentum=0.5)
    rnn = kerasnorm.MaskedRNN(cell, unroll=unroll)
    rnn.build(x.shape)
    run = tf.function(lambda v: rnn(v, training=True)) if compiled else (lambda v: rnn(v, training=True))
    run(x)
    # One update of momentum 0.5 from zero: half of each step's batch mean of x W.
    wx = x @ np.asarray(cell.kernel)
    np.testing.assert_allclose(cell.input_moving_mean, 0.5 * wx.mean(0), rtol=1e-4, atol=1e-6)


def test_masked_rnn_without_mask_is_keras_rnn():
    x = RNG.normal(size=(2, 4, 3)).astype("float32")
    cell = kerasnorm.LayerNormLSTMCell(3)
    ours = kerasnorm.MaskedRNN(cell, return_sequences=True)
    theirs = keras.layers.RNN(cell, return_sequences=True)
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], bool)
    np.testing.assert_array_equal(ours(x), theirs(x))
    # A cell that takes no mask gets none: exactly Keras's RNN, mask included.
    np.testing.assert_array_equal(ours(x, mask=mask), theirs(x, mask=mask))


def test_dropout_only_in_training():
    x = RNG.normal(size=(2, 3, 4)).astype("float32")
    rnn = keras.layers.RNN(kerasnorm.LayerNormGRUCell(4, dropout=0.5, recurrent_dropout=0.5, seed=1))
    inference = np.asarray(rnn(x))
    np.testing.assert_array_equal(rnn(x), inference)
    assert not np.allclose(rnn(x, training=True), inference)


@pytest.mark.parametrize(
    "cell", [kerasnorm.LayerNormLSTMCell(4), kerasnorm.LayerNormGRUCell(4), kerasnorm.BatchNormLSTMCell(4, max_steps=3)]
)
def test_cells_train_in_mixed_precision_and_round_trip_config(cell):
    config = cell.get_config()
    assert type(cell).from_config(config).get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(kerasnorm.MaskedRNN(cell)))
    assert type(restored.cell) is type(cell) and restored.cell.get_config() == config

    half = type(cell).from_config({**config, "dtype": "mixed_float16"})
    inputs = keras.Input((5, 3))
    model = keras.Model(inputs, keras.layers.Dense(1, dtype="float32")(kerasnorm.MaskedRNN(half)(inputs)))
    model.compile(keras.optimizers.SGD(0.1), "mse")
    before = [np.asarray(w).copy() for w in half.trainable_weights]
    history = model.fit(RNG.normal(size=(4, 5, 3)), np.ones((4, 1)), verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert all(not np.allclose(b, w) for b, w in zip(before, half.trainable_weights))
    assert all(keras.backend.standardize_dtype(w.dtype) == "float32" for w in half.weights)


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"units": 0}, "units=0"),
        ({"units": 4, "epsilon": 0.0}, "epsilon=0.0"),
        ({"units": 4, "dropout": 1.5}, "dropout=1.5"),
        ({"units": 4, "use_bias": 1}, "use_bias=1"),
        ({"units": 4}, "max_steps=None"),
        ({"units": 4, "max_steps": 0}, "max_steps=0"),
        ({"units": 4, "max_steps": 3, "momentum": 1.0}, "momentum=1.0"),
        ({"units": 4, "max_steps": 3, "share_statistics": "no"}, "share_statistics='no'"),
    ],
)
def test_invalid_arguments_name_the_value(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        kerasnorm.BatchNormLSTMCell(**kwargs)


def test_new_layers_load_from_a_keras_file_in_a_fresh_process(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,), dtype="int32")
    h = keras.layers.Embedding(12, 8, mask_zero=True)(inputs)
    h = kerasnorm.GroupNormalization(groups=2)(h)
    h = kerasnorm.RMSNormalization()(h)
    h = keras.layers.RNN(kerasnorm.LayerNormLSTMCell(8), return_sequences=True)(h)
    h = keras.layers.RNN(kerasnorm.LayerNormGRUCell(8), return_sequences=True)(h)
    h = kerasnorm.MaskedRNN(kerasnorm.BatchNormLSTMCell(4, max_steps=4))(h)
    model = keras.Model(inputs, h)
    for w in model.weights:  # every weight away from its initial value, statistics included
        w.assign(RNG.uniform(0.5, 1.5, size=w.shape))
    x = RNG.integers(0, 12, size=(8, 6))
    x[:3, 4:] = 0  # padding
    model.save(tmp_path / "model.keras")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", model(x))
    script = textwrap.dedent(
        f"""
        import numpy as np, keras
        import kerasnorm  # registers the layers; no custom_objects below
        model = keras.saving.load_model({str(tmp_path / "model.keras")!r})
        y = model(np.load({str(tmp_path / "x.npy")!r}))
        np.testing.assert_allclose(y, np.load({str(tmp_path / "y.npy")!r}), rtol=1e-6, atol=1e-6)
        print("LOADED", type(model.layers[-1].cell).__name__)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LOADED BatchNormLSTMCell" in result.stdout
