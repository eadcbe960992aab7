"""What a swap from Keras's layers to kerasnorm's keeps, beyond Keras's own tests
(`test_keras_own_tests.py`): inputs of another rank than the built one, Keras's error
types, the deprecated `rms_scaling`, masks that broadcast, and Keras's configs."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
from keras import ops

import kerasnorm

RNG = np.random.default_rng(5)


def _numpy(x):
    return ops.convert_to_numpy(x)


def _data(shape, loc=2.0, scale=3.0):
    return (RNG.normal(size=shape) * scale + loc).astype("float32")


def _randomize(*layers):
    """Gives every layer the same random weights (the first layer's shapes)."""
    values = [RNG.normal(size=w.shape).astype("float32") for w in layers[0].weights]
    for layer in layers:
        layer.set_weights(values)


# -- inputs of another rank than the built one: Keras's numbers, or an error ----------------


@pytest.mark.parametrize("name", ["LayerNormalization", "RMSNormalization"])
def test_built_for_one_rank_called_on_another_computes_what_keras_computes(name):
    # Keras's own RMSNormalization test does this with `build((2, 2, 2))`: `axis=-1`
    # stays the last axis, whatever the rank of the inputs.
    ours, theirs = getattr(kerasnorm, name)(), getattr(keras.layers, name)()
    ours.build((2, 3, 4))
    theirs.build((2, 3, 4))
    _randomize(ours, theirs)
    for shape in ((5, 4), (6, 2, 3, 4), (1, 3, 1, 2, 4)):
        x = _data(shape)
        np.testing.assert_allclose(_numpy(ours(x)), _numpy(theirs(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["LayerNormalization", "RMSNormalization"])
def test_weights_that_do_not_fit_the_axes_of_another_rank_raise(name):
    layer = getattr(kerasnorm, name)(axis=1)
    layer.build((2, 3, 4))
    # Axis 1 of a rank-4 input of this shape has size 5, not the weights' 3.
    with pytest.raises(ValueError, match=r"built for inputs of rank 3.*inputs.shape=\(2, 5, 3, 4\)"):
        layer(_data((2, 5, 3, 4)))
    # Mixed signs: on another rank, [1, -1] could name the weights' axes in another order.
    mixed = getattr(kerasnorm, name)(axis=[1, -1])
    mixed.build((2, 3, 3))
    with pytest.raises(ValueError, match="rank 3"):
        mixed(_data((2, 3, 3, 3)))


@pytest.mark.parametrize(
    "layer",
    [kerasnorm.BatchNormalization(), kerasnorm.GroupNormalization(groups=2)],
    ids=["BatchNormalization", "GroupNormalization"],
)
def test_layers_with_an_input_spec_refuse_another_rank(layer):
    # As Keras's twins: the input spec built from the first input holds the rank.
    layer.build((2, 3, 4))
    with pytest.raises(ValueError, match="expected ndim=3, found ndim=4"):
        layer(_data((2, 5, 3, 4)))


# -- Keras's error types ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["LayerNormalization", "RMSNormalization"])
def test_an_axis_of_the_wrong_type_is_a_type_error_that_old_code_still_catches(name):
    layer_cls = getattr(kerasnorm, name)
    with pytest.raises(TypeError, match=r"list/tuple of ints for the argument 'axis'.*Received: axis=\{"):
        layer_cls(axis={"axis": -1})
    # kerasnorm raised ValueError before it followed Keras.
    with pytest.raises(ValueError, match="axis='last'"):
        layer_cls(axis="last")


# -- rms_scaling, deprecated as in Keras ---------------------------------------------------


def test_rms_scaling_warns_and_computes_what_keras_computes(tmp_path):
    with pytest.warns(UserWarning, match="RMSNormalization"):
        ours = kerasnorm.LayerNormalization(rms_scaling=True, epsilon=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = keras.layers.LayerNormalization(rms_scaling=True, epsilon=0.1)
    x = _data((4, 3, 6))
    ours.build(x.shape)
    theirs.build(x.shape)
    assert [w.name for w in ours.weights] == [w.name for w in theirs.weights] == ["gamma"]
    _randomize(ours, theirs)
    gamma = _numpy(ours.gamma)
    expected = x / np.sqrt(x.astype("float64").var(axis=-1, keepdims=True) + 0.1) * gamma
    np.testing.assert_allclose(_numpy(ours(x)), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_numpy(ours(x)), _numpy(theirs(x)), rtol=1e-5, atol=1e-5)
    assert ours.get_config()["rms_scaling"] is True


# -- masks that broadcast, as Keras accepts them -------------------------------------------


def test_a_mask_with_size_one_axes_equals_the_mask_broadcast():
    x = _data((4, 3, 5, 2))
    small = np.array([[[1.0], [0.0], [1.0]]], "float32")  # (1, 3, 1): batch and width broadcast
    full = np.broadcast_to(small, (4, 3, 5)).copy()
    results = []
    for mask in (small, full):
        layer = kerasnorm.BatchNormalization(momentum=0.0)
        out = layer(x, training=True, mask=mask)
        results.append((_numpy(out), _numpy(layer.moving_mean), _numpy(layer.moving_variance)))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    # And the statistics are those of the unmasked rows alone.
    kept = x[:, [0, 2]].reshape(-1, 2)
    np.testing.assert_allclose(results[0][1], kept.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(results[0][2], kept.var(axis=0), rtol=1e-4)


def test_a_broadcast_mask_with_ghost_batches_and_group_norm():
    x = _data((4, 6, 2))
    small = np.array([[1, 1, 1, 0, 0, 1]], bool)  # (1, time)
    full = np.broadcast_to(small, (4, 6)).copy()
    for make, kwargs in (
        (kerasnorm.BatchNormalization, {"virtual_batch_size": 2, "momentum": 0.5}),
        (kerasnorm.GroupNormalization, {"groups": 1}),
    ):
        outs = []
        for mask in (small, full):
            layer = make(**kwargs)
            outs.append(_numpy(layer(x, training=True, mask=mask)))
        np.testing.assert_allclose(outs[0], outs[1], rtol=1e-6, atol=1e-6)


def test_a_mask_that_does_not_broadcast_is_refused():
    with pytest.raises(ValueError, match=r"size or 1.*mask.shape=\(2, 3\)"):
        kerasnorm.BatchNormalization()(_data((4, 3, 2)), training=True, mask=np.ones((2, 3), bool))


# -- configs in Keras's form ---------------------------------------------------------------


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("LayerNormalization", {}),
        ("LayerNormalization", {"axis": (-1, -2), "epsilon": 1e-2}),
        ("RMSNormalization", {}),
        ("RMSNormalization", {"axis": [2, 1]}),
        ("GroupNormalization", {"groups": 2, "axis": 1}),
    ],
)
def test_configs_equal_keras_before_and_after_build(name, kwargs):
    ours, theirs = getattr(kerasnorm, name)(**kwargs), getattr(keras.layers, name)(**kwargs)

    def config(layer):
        return {k: v for k, v in layer.get_config().items() if k != "name"}

    assert config(ours) == config(theirs)
    ours.build((2, 4, 6))
    theirs.build((2, 4, 6))
    assert config(ours) == config(theirs)


# -- synchronized=True with one replica, on every backend ----------------------------------


@pytest.mark.parametrize("masked", [False, True])
def test_synchronized_with_one_replica_is_the_plain_layer(masked):
    # No tf.distribute strategy, torch.distributed group or data-parallel distribution:
    # the layer's batch is the whole batch (to rounding: the plain layer may take a fast
    # path of kernels.py). Several replicas: test_distributed.py (TensorFlow) and
    # test_synchronized.py (JAX, PyTorch).
    x = _data((6, 4, 3))
    mask = RNG.random((6, 4)) > 0.3 if masked else None
    synced = kerasnorm.BatchNormalization(momentum=0.5, synchronized=True)
    plain = kerasnorm.BatchNormalization(momentum=0.5)
    outputs = [_numpy(layer(x, training=True, mask=mask)) for layer in (synced, plain)]
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
    for ours, theirs in zip(synced.get_weights(), plain.get_weights(), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


# -- the recurrent cells on every backend --------------------------------------------------


@pytest.mark.parametrize(
    "make_cell",
    [
        lambda: kerasnorm.LayerNormLSTMCell(3),
        lambda: kerasnorm.LayerNormGRUCell(3),
        lambda: kerasnorm.BatchNormLSTMCell(3, max_steps=5),
    ],
    ids=["LayerNormLSTMCell", "LayerNormGRUCell", "BatchNormLSTMCell"],
)
def test_recurrent_cells_fit_save_and_reload_on_padded_sequences(make_cell, tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, 2))
    h = keras.layers.Masking()(inputs)
    cell = make_cell()
    outputs = keras.layers.Dense(1)(kerasnorm.MaskedRNN(cell)(h))
    model = keras.Model(inputs, outputs)
    x = _data((4, 5, 2))
    x[:2, 3:] = 0.0  # two padded sequences
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    y = np.ones((4, 1), "float32")
    history = model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    model.save(tmp_path / "rnn.keras")
    loaded = keras.saving.load_model(tmp_path / "rnn.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6, atol=1e-6)
    # Padding changes nothing: a padded sequence gives its unpadded prefix's output.
    short = loaded.predict(x[:1, :3], verbose=0)
    np.testing.assert_allclose(loaded.predict(x[:1], verbose=0), short, rtol=1e-5, atol=1e-5)
