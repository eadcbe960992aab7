"""A small layer-test helper in the spirit of Keras's `testing.TestCase.run_layer_test`.

One call checks what every kerasnorm layer owes its users: the config round trip, the
weight counts, a symbolic call, one `fit` step that changes the trainable weights, mixed
precision (float16 compute, float32 weights and statistics), and a `.keras` round trip with
the same predictions.
"""

from __future__ import annotations

import numpy as np

import keras


def run_layer_test(
    layer_cls,
    init_kwargs,
    input_shape,
    expected_num_trainable_weights,
    expected_num_non_trainable_weights,
    tmp_path,
    mixed_precision=True,
):
    """Runs the shared checks on `layer_cls(**init_kwargs)` for inputs of `input_shape`
    (batch axis included). Returns the model trained one step."""
    # Config round trip, directly and through Keras's serialization.
    layer = layer_cls(**init_kwargs)
    config = layer.get_config()
    assert layer_cls.from_config(config).get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is layer_cls and restored.get_config() == config

    # Symbolic call and weight counts.
    inputs = keras.Input(batch_shape=input_shape)
    outputs = layer(inputs)
    assert tuple(outputs.shape) == tuple(input_shape)
    assert len(layer.trainable_weights) == expected_num_trainable_weights
    assert len(layer.non_trainable_weights) == expected_num_non_trainable_weights

    # One fit step: the loss is finite and every trainable weight moves.
    rng = np.random.default_rng(0)
    x = rng.normal(size=input_shape).astype("float32")
    y = rng.normal(size=input_shape).astype("float32")
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    before = [w.numpy().copy() for w in layer.trainable_weights]
    history = model.fit(x, y, batch_size=input_shape[0], epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    for old, new in zip(before, layer.trainable_weights):
        assert not np.allclose(old, new.numpy()), f"weight {new.name} did not train"

    # .keras round trip: same predictions.
    path = tmp_path / f"{layer_cls.__name__}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6, atol=1e-6)

    if mixed_precision:
        half = layer_cls(**{**init_kwargs, "dtype": "mixed_float16"})
        out = half(x.astype("float16"), training=True)
        assert keras.backend.standardize_dtype(out.dtype) == "float16"
        assert all(keras.backend.standardize_dtype(w.dtype) == "float32" for w in half.weights)
        assert np.isfinite(keras.ops.convert_to_numpy(out).astype("float32")).all()
    return model
