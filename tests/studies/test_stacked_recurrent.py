"""Stacked sequence models: each member trains and predicts as its standalone model."""

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

from studies.engine import models
from studies.engine import stacked_recurrent as sr
from studies.engine.models import token_model

K, T, F, UNITS, CLASSES, BATCH = 3, 6, 5, 4, 3, 8
LEARNING_RATE = 0.5
#: The LSTM's arms: id -> (norm, share_statistics).
ARMS = {"none": ("none", False), "layer": ("layer", False), "batch": ("batch", False), "batch_shared": ("batch", True)}


def _data(seed=0, steps=T):
    """Member-major sequences ``(K, BATCH, steps, F)``, masks and labels. Member 0 has
    lengths 1..steps, member 1 is unpadded, and member 2's sequences end two steps early,
    so that its whole batch is padding at the last two steps."""
    rng = np.random.default_rng(seed)
    lengths = np.stack([rng.integers(1, steps + 1, BATCH), np.full(BATCH, steps), rng.integers(1, steps - 1, BATCH)])
    mask = np.arange(steps) < lengths[..., None]
    x = (rng.standard_normal((K, BATCH, steps, F)) * mask[..., None]).astype(np.float32)
    y = rng.integers(0, CLASSES, (K, BATCH)).astype(np.int32)
    return x, mask, y


def _lstm_members(arm, seeds=(0, 1, 2)):
    norm, share = ARMS[arm]
    options = {"cell": "lstm", "masked": True, "max_steps": T, "share_statistics": share, "widths": (UNITS,)}
    return [models.build_model("rnn", (None, F), CLASSES, norm, seed=s, **options) for s in seeds]


def _stacked_lstm(arm):
    norm, share = ARMS[arm]
    return sr.build_stacked_recurrent_model(
        (None, F), CLASSES, norm, K, masked=True, max_steps=T, share_statistics=share, widths=(UNITS,)
    )


def _token_members(norm, seeds=(0, 1, 2)):
    built = []
    for s in seeds:
        keras.utils.set_random_seed(s)
        built.append(token_model((None, F), CLASSES, norm, widths=(6, 6)))
    return built


def _load(stacked, members):
    for variable, value in zip(stacked.weights, sr.stack_member_weights(stacked, members), strict=True):
        variable.assign(value)


def _standalone_step(model, x, mask, y):
    """One SGD step of a standalone model, as `keras.Model.fit` takes it; its loss."""
    optimizer = keras.optimizers.SGD(LEARNING_RATE)
    with tf.GradientTape() as tape:
        logits = model([x, mask], training=True)
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
    optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
    return float(loss)


@functools.cache
def _compiled(arm):
    """A stacked LSTM of `arm` and its compiled training step, shared by the tests (each
    loads its own weights): XLA's compilation is most of a test's time."""
    model = _stacked_lstm(arm)
    return model, _stacked_step(model)


def _stacked_step(model):
    """The stacked engine's training step, XLA-compiled and traced for any batch size and
    sequence length: the sum of the members' mean losses, one SGD step (stateless: a step
    depends on the weights and the data only). Returns the members' losses ``(K,)``."""
    optimizer = keras.optimizers.SGD(LEARNING_RATE)
    optimizer.build(model.trainable_variables)

    # Any batch and length, as the engine traces its step.
    signature = [
        tf.TensorSpec((None, None, K * F), tf.float32),
        tf.TensorSpec((None, None, K), tf.bool),
        tf.TensorSpec((None, K), tf.int32),
    ]

    @tf.function(input_signature=signature, jit_compile=True)
    def step(x, mask, y):
        with tf.GradientTape() as tape:
            logits = tf.reshape(model([x, mask], training=True), (-1, K, CLASSES))
            losses = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits), axis=0)
            total = tf.reduce_sum(losses)
        optimizer.apply(tape.gradient(total, model.trainable_variables), model.trainable_variables)
        return losses

    def run(x, mask, y):
        folded_x, folded_mask = sr.fold_members(x, mask)
        return step(folded_x, folded_mask, np.ascontiguousarray(y.T)).numpy()

    return run


def _first_steps_agree(stacked, step, members):
    x, mask, y = _data()
    _load(stacked, members)
    before = sr.stack_member_weights(stacked, members)
    losses = step(x, mask, y)
    alone = [_standalone_step(m, x[k], mask[k], y[k]) for k, m in enumerate(members)]
    np.testing.assert_allclose(losses, alone, rtol=2e-6)
    after = sr.stack_member_weights(stacked, members)
    for variable, old, new in zip(stacked.weights, before, after):
        np.testing.assert_allclose(variable.numpy(), new, rtol=1e-5, atol=2e-6, err_msg=variable.path)
        if variable.trainable:
            assert np.abs(new - old).max() > 1e-3, f"{variable.path} did not train"
    return before, after


@pytest.mark.parametrize("arm", list(ARMS))
def test_first_training_step_equals_each_members_own(arm):
    """Loss and every updated weight (moving statistics included) of each member after one
    XLA-compiled stacked step equal those of its standalone model's step, to float32
    rounding, with padding (member 2's whole batch masked at the last steps)."""
    stacked, step = _compiled(arm)
    before, after = _first_steps_agree(stacked, step, _lstm_members(arm))
    if ARMS[arm][0] == "batch":
        moved = {w.path.rsplit("/", 1)[-1]: new - old for w, old, new in zip(stacked.weights, before, after)}
        step_rows = moved["input_moving_mean"].reshape(-1, K, 4 * UNITS)
        assert (np.abs(step_rows).max(axis=-1) > 0).any()
        if not ARMS[arm][1]:
            # member 2's last two steps hold no valid sample: their rows stay untouched
            np.testing.assert_array_equal(step_rows[T - 2 :, 2], 0.0)
            assert (np.abs(step_rows[T - 2 :, 1]).max(axis=-1) > 0).all()


def test_token_model_first_training_step_equals_each_members_own():
    """Claim C6's token model with batch norm, whose statistics are each member's real
    tokens (its layer norm is the LSTM's `MemberLayerNormalization`, checked above and
    in inference below)."""
    members = _token_members("batch")
    stacked = sr.build_stacked_token_model((None, F), CLASSES, "batch", K, widths=(6, 6))
    _first_steps_agree(stacked, _stacked_step(stacked), members)


@pytest.mark.parametrize("arm", ["batch", "layer"])
def test_changing_one_member_leaves_the_others_bit_identical(arm):
    stacked, step = _compiled(arm)
    x, mask, y = _data()

    def train(members, x, y):
        _load(stacked, members)
        losses = step(x, mask, y)
        containers = _lstm_members(arm)
        sr.unstack_member_weights(stacked, containers)
        return losses, [[w.numpy() for w in m.weights] for m in containers]

    base_losses, base = train(_lstm_members(arm), x, y)
    # member 1: another seed's weights and other data
    other_x, other_y = x.copy(), y.copy()
    other_x[1], other_y[1] = _data(seed=5)[0][1], (y[1] + 1) % CLASSES
    losses, changed = train(_lstm_members(arm, seeds=(0, 9, 2)), other_x, other_y)
    # member 1 poisoned: a NaN kernel
    poisoned = _lstm_members(arm)
    kernel = poisoned[1].get_layer("rnn").cell.kernel
    kernel.assign(np.full(kernel.shape, np.nan, np.float32))
    sick_losses, sick = train(poisoned, x, y)
    for k in (0, 2):
        assert losses[k] == base_losses[k] and sick_losses[k] == base_losses[k]
        for a, b, c in zip(base[k], changed[k], sick[k], strict=True):
            np.testing.assert_array_equal(b, a)
            np.testing.assert_array_equal(c, a)
    assert losses[1] != base_losses[1] and np.isnan(sick_losses[1])


@pytest.mark.parametrize("arm", list(ARMS))
def test_inference_equals_each_members_own_beyond_the_training_length(arm):
    """Inference with the moving statistics after a training step, on sequences twice as
    long as the training ones (batch norm reuses its last step's statistics)."""
    members = _lstm_members(arm)
    x, mask, y = _data()
    for k, member in enumerate(members):
        _standalone_step(member, x[k], mask[k], y[k])
    stacked = _stacked_lstm(arm)
    _load(stacked, members)
    long_x, long_mask, _ = _data(seed=1, steps=2 * T)
    out = stacked(list(sr.fold_members(long_x, long_mask)), training=False).numpy().reshape(BATCH, K, CLASSES)
    for k, member in enumerate(members):
        np.testing.assert_allclose(out[:, k], member([long_x[k], long_mask[k]], training=False), rtol=1e-5, atol=1e-6)
    assert np.abs(out[:, 0] - out[:, 1]).max() > 1e-3  # the members differ


@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_token_model_inference_equals_each_members_own(norm):
    members = _token_members(norm)
    x, mask, y = _data()
    for k, member in enumerate(members):
        _standalone_step(member, x[k], mask[k], y[k])
    stacked = sr.build_stacked_token_model((None, F), CLASSES, norm, K, widths=(6, 6))
    _load(stacked, members)
    out = stacked(list(sr.fold_members(x, mask)), training=False).numpy().reshape(BATCH, K, CLASSES)
    for k, member in enumerate(members):
        np.testing.assert_allclose(out[:, k], member([x[k], mask[k]], training=False), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("build", ["batch", "layer", "tokens"])
def test_member_weights_round_trip(build):
    if build == "tokens":
        members, fresh = _token_members("layer"), _token_members("layer", seeds=(3, 4, 5))
        stacked = sr.build_stacked_token_model((None, F), CLASSES, "layer", K, widths=(6, 6))
    else:
        members, fresh = _lstm_members(build), _lstm_members(build, seeds=(3, 4, 5))
        stacked = _stacked_lstm(build)
    _load(stacked, members)
    sr.unstack_member_weights(stacked, fresh)
    for member, copy in zip(members, fresh):
        for a, b in zip(member.weights, copy.weights, strict=True):
            np.testing.assert_array_equal(b.numpy(), a.numpy())
    for value, variable in zip(sr.stack_member_weights(stacked, fresh), stacked.weights):
        np.testing.assert_array_equal(value, variable.numpy())
    with pytest.raises(ValueError, match="members give shape"):
        sr.stack_member_weights(stacked, members[:2])


def test_unknown_choices_are_named():
    with pytest.raises(ValueError, match="LSTM cells"):
        sr.build_stacked_recurrent_model((T, F), CLASSES, "layer", K, cell="gru")
    with pytest.raises(ValueError, match="needs max_steps"):
        sr.build_stacked_recurrent_model((T, F), CLASSES, "batch", K)
    with pytest.raises(ValueError, match="norms none, layer, batch"):
        sr.StackedLSTM(K, UNITS, "rms")
    with pytest.raises(ValueError, match="fixed time to unroll"):
        sr.build_stacked_recurrent_model((None, F), CLASSES, "none", K, unroll=True)
