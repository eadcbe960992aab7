import keras
import numpy as np
import pytest
import tensorflow as tf

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
    [("resnet", "none", "'resnet'"), ("mlp", "instance", "'instance'"), ("rnn", "group", "norm='group'")],
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


def test_noisy_batch_norm_redraws_its_noise_in_training_only():
    layer = models.NoisyBatchNormalization(noise_shift=1.0, noise_scale=2.0, noise_seed=0)
    x = np.random.default_rng(0).normal(size=(32, 6)).astype("float32")
    first, second = np.asarray(layer(x, training=True)), np.asarray(layer(x, training=True))
    assert not np.allclose(first, second)

    @tf.function
    def compiled(inputs):  # as in the training loop: a new draw at every step
        return layer(inputs, training=True)

    assert not np.allclose(compiled(x), compiled(x))
    # Per unit, the batch's output is the normalized input under an affine map with
    # scale in [1, 2] and shift in [-1, 1] (gamma = 1, beta = 0 at the start).
    scale = first.std(0) / np.sqrt(x.var(0) / (x.var(0) + layer.epsilon))
    assert np.all((scale > 1 - 1e-3) & (scale < 2 + 1e-3))
    assert np.all(np.abs(first.mean(0)) <= 1 + 1e-4)
    # Inference: batch norm with the moving statistics, times the expected scale 1.5.
    mean, variance = layer.moving_mean.numpy(), layer.moving_variance.numpy()
    expected = 1.5 * (x - mean) / np.sqrt(variance + layer.epsilon)
    np.testing.assert_allclose(layer(x, training=False), expected, rtol=1e-5, atol=1e-6)


def test_population_batch_norm_normalizes_with_its_stored_statistics_in_training():
    layer = models.PopulationBatchNormalization()
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(16, 4)).astype("float32")
    layer.build(x.shape)
    mean, variance = np.full(4, 1.5, "float32"), np.full(4, 4.0, "float32")
    layer.moving_mean.assign(mean)
    layer.moving_variance.assign(variance)
    expected = (x - mean) / np.sqrt(variance + layer.epsilon)
    np.testing.assert_allclose(layer(x, training=True), expected, rtol=1e-5, atol=1e-6)
    # The stored statistics take no moving-average update, and a sample's output is the
    # same with any batch-mates (batch norm in training would give it a different one).
    np.testing.assert_allclose(layer.moving_mean.numpy(), mean)
    np.testing.assert_allclose(layer(x[:1], training=True), expected[:1], rtol=1e-5, atol=1e-6)
    assert not np.allclose(kerasnorm.BatchNormalization()(x, training=True), expected, atol=1e-2)


# --- The Transformer and DyT (C10) ---------------------------------------------------------

TRANSFORMER_NORM_CLASSES = {"layer": kerasnorm.LayerNormalization, "rms": kerasnorm.RMSNormalization,
                            "dyt": kerasnorm.DynamicTanh}  # fmt: skip


@pytest.mark.parametrize("norm", models.TRANSFORMER_NORMS)
def test_transformer_has_a_norm_before_each_sublayer_and_at_the_end(norm):
    model = models.build_model("transformer", (None, 5), 3, norm, widths=(8,), masked=True, seed=0)
    assert [i.name for i in model.inputs] == ["x", "mask"]
    norms = [layer for layer in model.layers if layer.name.startswith("norm_")]
    if norm == "none":
        assert not norms
    else:  # 2 blocks x (attention, MLP) + the final norm, all over the last axis
        assert len(norms) == 5 and all(type(layer) is TRANSFORMER_NORM_CLASSES[norm] for layer in norms)
        assert all(np.atleast_1d(layer.axis).tolist() == [-1] for layer in norms)
    x = np.random.default_rng(0).normal(size=(2, 7, 5)).astype("float32")
    mask = np.arange(7)[None, :] < np.array([[4], [7]])
    assert model((x, mask)).shape == (2, 3)


def test_transformer_ignores_padded_steps():
    model = models.build_model("transformer", (None, 4), 3, "dyt", widths=(8,), masked=True, seed=0)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 6, 4)).astype("float32")
    mask = np.arange(6)[None, :] < np.array([[2], [5], [6]])
    changed = np.where(mask[..., None], x, rng.normal(size=x.shape) * 10).astype("float32")
    np.testing.assert_allclose(model((x, mask)), model((changed, mask)), rtol=1e-5, atol=1e-5)
    # Longer test sequences than any in training: the position code has no fixed length.
    longer = np.concatenate([x, np.zeros((3, 4, 4), "float32")], axis=1)
    np.testing.assert_allclose(model((longer, np.pad(mask, ((0, 0), (0, 4))))), model((x, mask)), rtol=1e-5, atol=1e-5)


def test_transformer_refuses_batch_norm_and_uneven_heads():
    with pytest.raises(ValueError, match="Transformers support norms"):
        models.build_model("transformer", (None, 4), 3, "batch", masked=True)
    with pytest.raises(ValueError, match="divide by the heads"):
        models.build_model("transformer", (None, 4), 3, "layer", widths=(9,), masked=True)


def test_dyt_stands_in_for_the_norm_of_a_cnn_per_channel():
    model = models.build_model("cnn1d", (40, 1), 10, "dyt", widths=(8, 8), seed=0)
    layer = model.get_layer("norm_0")
    assert isinstance(layer, kerasnorm.DynamicTanh) and layer.gamma.shape == (8,) and layer.beta.shape == (8,)
    assert not model.get_layer("conv_0").use_bias  # DyT has its own offset
    assert model(np.zeros((2, 40, 1), "float32")).shape == (2, 10)


@pytest.mark.parametrize("norm", ["none", "batch", "layer"])
def test_token_model_ignores_padded_tokens_and_names_its_layers_for_stacking(norm):
    model = models.build_model("tokens", (None, 5), 3, norm, widths=(4, 4), seed=0)
    assert [layer.name for layer in model.layers if layer.weights] == [
        "embedding", *(["norm_0"] if norm != "none" else []), "conv_1", *(["norm_1"] if norm != "none" else []),
        "logits",
    ]  # fmt: skip
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 7, 5)).astype("float32")
    mask = np.arange(7)[None, :] < np.array([[7], [5], [3], [7], [2], [6]])
    garbage = np.where(mask[..., None], x, rng.normal(size=x.shape).astype("float32") * 10)
    for training in (False, True):
        a = model([x * mask[..., None], mask], training=training)
        b = model([garbage, mask], training=training)
        np.testing.assert_allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="Token models support norms"):
        models.build_model("tokens", (None, 5), 3, "group")
