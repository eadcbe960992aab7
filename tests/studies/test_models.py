import keras
import numpy as np
import pytest

import kerasnorm
from studies.engine import models

# norm -> kerasnorm / Keras class of the layer between each linear map and its activation
NORM_CLASSES = {
    "batch": "BatchNormalization",
    "ghost": "BatchNormalization",
    "batch_renorm": "BatchNormalization",
    "layer": "LayerNormalization",
    "group": "GroupNormalization",
    "rms": "RMSNormalization",
}
FEEDFORWARD = {"mlp": (40,), "cnn1d": (40, 1), "cnn2d": (8, 8, 1)}


def _norm_class(norm):
    if norm == "keras_batch":
        return keras.layers.BatchNormalization
    if norm == "keras_layer":
        return keras.layers.LayerNormalization
    return getattr(kerasnorm, NORM_CLASSES[norm])


def _available_norms():
    norms = [n for n in models.NORMS if n == "none" or n.startswith("keras_")]
    return norms + list(NORM_CLASSES)


@pytest.mark.parametrize("kind", sorted(FEEDFORWARD))
@pytest.mark.parametrize("norm", _available_norms())
def test_feedforward_norm_sits_between_linear_and_activation(kind, norm):
    model = models.build_model(
        kind, FEEDFORWARD[kind], 10, norm, widths=(8, 8), virtual_batch_size=2, seed=0
    )
    x = np.random.default_rng(0).normal(size=(4, *FEEDFORWARD[kind])).astype("float32")
    assert model(x, training=True).shape == (4, 10)
    linear = [l for l in model.layers if isinstance(l, (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D))]
    hidden = [l for l in linear if l.name != "logits"]
    assert len(hidden) == 2
    for i, layer in enumerate(hidden):
        after = model.layers[model.layers.index(layer) + 1]
        if norm == "none":
            assert isinstance(after, keras.layers.Activation) and layer.use_bias
        else:
            assert isinstance(after, _norm_class(norm)), (after, norm)
            assert isinstance(model.layers[model.layers.index(layer) + 2], keras.layers.Activation)
            # the bias is redundant before a norm with its own offset (RMSNorm has none)
            assert layer.use_bias == (norm == "rms")


def test_ghost_and_renorm_configure_the_batch_norm():
    ghost = models.build_model("mlp", (40,), 10, "ghost", widths=(8,), virtual_batch_size=4)
    assert ghost.get_layer("norm_0").virtual_batch_size == 4
    renorm = models.build_model("mlp", (40,), 10, "batch_renorm", widths=(8,), renorm_momentum=0.9)
    assert renorm.get_layer("norm_0").renorm and renorm.get_layer("norm_0").renorm_momentum == 0.9
    with pytest.raises(ValueError, match="virtual_batch_size"):
        models.build_model("mlp", (40,), 10, "ghost")


def test_conv_layer_norm_normalizes_all_units_of_a_sample():
    model = models.build_model("cnn1d", (40, 1), 10, "keras_layer", widths=(4,))
    assert model.get_layer("norm_0").axis == [1, 2]


def test_dropout_after_each_hidden_layer():
    model = models.build_model("mlp", (40,), 10, widths=(8, 8, 8), dropout=0.3)
    assert sum(isinstance(l, keras.layers.Dropout) for l in model.layers) == 3


def test_seed_fixes_the_initial_weights():
    a = models.build_model("mlp", (40,), 10, widths=(8,), seed=1).get_weights()
    b = models.build_model("mlp", (40,), 10, widths=(8,), seed=1).get_weights()
    c = models.build_model("mlp", (40,), 10, widths=(8,), seed=2).get_weights()
    for wa, wb in zip(a, b):
        np.testing.assert_array_equal(wa, wb)
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize(
    "kind, norm, message",
    [("transformer", "none", "'transformer'"), ("mlp", "instance", "'instance'"), ("rnn", "group", "norm='group'")],
)
def test_unknown_choices_are_named(kind, norm, message):
    with pytest.raises(ValueError, match=message):
        models.build_model(kind, (40, 1), 10, norm)


RNN_ARMS = [
    ("none", "gru"),
    ("none", "lstm"),
    ("layer", "gru"),
    ("layer", "lstm"),
    ("batch", "lstm"),
]


@pytest.mark.parametrize("norm, cell", RNN_ARMS)
def test_rnn_ignores_padding_through_the_mask(norm, cell):
    """A padded sequence gives the same logits as the unpadded one, whatever the padding
    holds: the mask reaches the recurrence (and, for batch norm, the cell's statistics)."""
    model = models.build_model("rnn", (None, 3), 4, norm, cell=cell, widths=(8,), masked=True, max_steps=5, seed=0)
    rng = np.random.default_rng(0)
    short = rng.normal(size=(2, 5, 3)).astype("float32")
    padded = np.concatenate([short, rng.normal(size=(2, 4, 3)).astype("float32")], axis=1)
    mask_short = np.ones((2, 5), bool)
    mask_padded = np.concatenate([mask_short, np.zeros((2, 4), bool)], axis=1)
    for training in (False, True):
        np.testing.assert_allclose(
            model([padded, mask_padded], training=training),
            model([short, mask_short], training=training),
            rtol=1e-5,
            atol=1e-6,
        )
    if norm == "none":
        expected = keras.layers.GRUCell if cell == "gru" else keras.layers.LSTMCell
        assert type(model.get_layer("rnn").cell) is expected


def test_rnn_batch_norm_per_step_or_shared():
    per_step = models.build_model("rnn", (None, 3), 4, "batch", cell="lstm", masked=True, max_steps=7, momentum=0.9)
    assert per_step.get_layer("rnn").cell.max_steps == 7
    assert per_step.get_layer("rnn").cell.momentum == 0.9
    shared = models.build_model("rnn", (None, 3), 4, "batch", cell="lstm", max_steps=7, share_statistics=True)
    assert shared.get_layer("rnn").cell.share_statistics
    with pytest.raises(ValueError, match="cell='lstm'"):
        models.build_model("rnn", (None, 3), 4, "batch", cell="gru", max_steps=7)
