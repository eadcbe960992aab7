"""kerasnorm.BatchStatisticsRecorder: batch statistics during fit, for both BN layer types."""

from __future__ import annotations

import numpy as np
import pytest

import keras

import kerasnorm

RNG = np.random.default_rng(9)
X = (RNG.normal(size=(24, 3)) * 2 + 1).astype("float32")
Y = np.zeros((24, 1), "float32")


def _model(steps_per_execution=1, theirs=True):
    """The BNs read the raw inputs, so each step's batch statistics are those of its
    slice of X (no shuffling)."""
    inputs = keras.Input((3,))
    branches = [kerasnorm.BatchNormalization(momentum=0.9, name="ours")(inputs)]
    if theirs:
        branches.append(keras.layers.BatchNormalization(momentum=0.9, name="theirs")(inputs))
    h = keras.layers.Concatenate()(branches) if theirs else branches[0]
    model = keras.Model(inputs, keras.layers.Dense(1)(h))
    model.compile("sgd", "mse", steps_per_execution=steps_per_execution)
    return model


def _fit(model, recorder, epochs=2):
    model.fit(X, Y, batch_size=8, shuffle=False, epochs=epochs, verbose=0, callbacks=[recorder])


def _expected_batches(steps):
    """Float64 batch mean and variance, and the moving averages after each step."""
    mean, var = np.zeros(3), np.ones(3)
    out = []
    for step in range(steps):
        batch = np.asarray(X[(step % 3) * 8 : (step % 3) * 8 + 8], np.float64)
        mean, var = 0.9 * mean + 0.1 * batch.mean(0), 0.9 * var + 0.1 * batch.var(0)
        out.append((batch.mean(0), batch.var(0), mean, var))
    return out


def test_records_both_layer_types_after_an_earlier_fit_traced_the_train_function():
    model = _model()
    model.fit(X, Y, batch_size=8, shuffle=False, verbose=0)  # traced without the recorder
    recorder = kerasnorm.BatchStatisticsRecorder()
    _fit(model, recorder)
    frame = recorder.to_dataframe()
    assert list(frame.columns) == ["step", "epoch", "layer", "feature", "batch_mean", "batch_variance", "moving_mean", "moving_variance"]
    assert len(frame) == 6 * 2 * 3  # steps x layers x features
    expected = _expected_batches(9)[3:]  # the first fit took three steps
    for name, tolerance in (("ours", 1e-5), ("theirs", 1e-4)):
        rows = frame[frame.layer == name].sort_values(["step", "feature"])
        assert list(rows.step.unique()) == list(range(6))
        assert list(rows.epoch) == [0] * 9 + [1] * 9
        for column, index in (("batch_mean", 0), ("batch_variance", 1), ("moving_mean", 2), ("moving_variance", 3)):
            got = rows[column].to_numpy().reshape(6, 3)
            np.testing.assert_allclose(got, [e[index] for e in expected], rtol=tolerance, atol=tolerance, err_msg=f"{name} {column}")


def test_every_and_detaching_after_training():
    model = _model(theirs=False)
    recorder = kerasnorm.BatchStatisticsRecorder(layers=["ours"], every=2)
    _fit(model, recorder)
    assert sorted(recorder.to_dataframe().step.unique()) == [0, 2, 4]
    layer = model.get_layer("ours")
    assert layer._statistics_sink is None
    # A second fit keeps counting steps; a fit without the recorder records nothing.
    _fit(model, recorder, epochs=1)
    assert sorted(recorder.to_dataframe().step.unique()) == [0, 2, 4, 6, 8]
    model.fit(X, Y, batch_size=8, verbose=0)
    assert len(recorder.to_dataframe()) == 5 * 3
    assert len(model.get_layer("ours").weights) == 4  # saved files unchanged


@pytest.mark.tensorflow_only  # PyTorch's trainer takes steps_per_execution=1 only
def test_steps_per_execution_records_the_last_step_of_each_execution():
    model = _model(steps_per_execution=2, theirs=False)
    recorder = kerasnorm.BatchStatisticsRecorder()
    model.fit(X, Y, batch_size=8, shuffle=False, epochs=2, verbose=0, callbacks=[recorder])
    frame = recorder.to_dataframe()
    # Three steps an epoch: executions hold steps (0, 1), (2), (3, 4), (5).
    assert sorted(frame.step.unique()) == [1, 2, 4, 5]
    expected = _expected_batches(6)
    for step in (1, 2, 4, 5):
        got = frame[frame.step == step].sort_values("feature").batch_mean.to_numpy()
        np.testing.assert_allclose(got, expected[step][0], rtol=1e-5)


def test_keras_layers_refused_where_statistics_cannot_be_derived():
    with pytest.raises(ValueError, match="steps_per_execution=2"):
        _fit(_model(steps_per_execution=2), kerasnorm.BatchStatisticsRecorder())
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.BatchNormalization(renorm=True, name="rn")(inputs))
    model.compile("sgd", "mse")
    with pytest.raises(ValueError, match="renorm=True"):
        model.fit(X, np.zeros((24, 3)), verbose=0, callbacks=[kerasnorm.BatchStatisticsRecorder()])


def test_frozen_layers_record_nan_batch_statistics():
    model = _model()
    model.get_layer("ours").trainable = False
    model.get_layer("theirs").trainable = False
    model.compile("sgd", "mse")
    recorder = kerasnorm.BatchStatisticsRecorder()
    _fit(model, recorder, epochs=1)
    frame = recorder.to_dataframe()
    assert frame.batch_mean.isna().all() and frame.moving_mean.notna().all()


@pytest.mark.parametrize("kwargs,needle", [({"every": 0}, "every=0"), ({"layers": "ours"}, "layers='ours'")])
def test_invalid_arguments_name_the_value(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        kerasnorm.BatchStatisticsRecorder(**kwargs)


def test_unknown_layer_name_is_refused_at_train_begin():
    with pytest.raises(ValueError, match="'dense'"):
        _fit(_model(theirs=False), kerasnorm.BatchStatisticsRecorder(layers=["dense"]))
