"""kerasnorm.BatchNormalization: the drop-in contract and its extensions."""

from __future__ import annotations

import numpy as np
import pytest

import keras

import kerasnorm
from tests.kerasnorm import reference as ref
from tests.kerasnorm.layer_test import run_layer_test

RNG = np.random.default_rng(1234)


def _data(shape, loc=2.0, scale=3.0):
    return (RNG.normal(size=shape) * scale + loc).astype("float32")


def test_layer_contract(tmp_path):
    run_layer_test(
        kerasnorm.BatchNormalization,
        {"momentum": 0.9},
        input_shape=(8, 5, 3),
        expected_num_trainable_weights=2,
        expected_num_non_trainable_weights=2,
        tmp_path=tmp_path,
    )


def test_layer_contract_with_renorm_warmup_and_ghosts(tmp_path):
    run_layer_test(
        kerasnorm.BatchNormalization,
        {
            "renorm": True,
            "renorm_clipping": {"rmax": 3.0, "dmax": 5.0},
            "renorm_warmup": [0, 10],
            "virtual_batch_size": 4,
        },
        input_shape=(8, 3),
        expected_num_trainable_weights=2,
        expected_num_non_trainable_weights=6,
        tmp_path=tmp_path,
    )


# -- numerics against a float64 reference, over axes and ranks ---------------------------

AXES_CASES = [
    ((16, 4), -1),
    ((6, 5, 3), -1),
    ((6, 5, 3), 1),
    ((6, 5, 3), [1, 2]),
    ((3, 4, 5, 2), -1),
    ((3, 4, 5, 2), [1, 3]),
]


@pytest.mark.parametrize("shape,axis", AXES_CASES)
def test_training_and_inference_match_reference(shape, axis):
    x = _data(shape)
    layer = kerasnorm.BatchNormalization(axis=axis, momentum=0.8, epsilon=1e-3)
    out = layer(x, training=True)
    expected, mean, var, _ = ref.batch_norm_train(x, axis=axis)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)

    feature_shape = layer.moving_mean.shape
    np.testing.assert_allclose(layer.moving_mean, ref.ema(0.0, mean.reshape(feature_shape), 0.8), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.moving_variance, ref.ema(1.0, var.reshape(feature_shape), 0.8), rtol=1e-5)

    x2 = _data(shape)
    keep = [1] * x.ndim
    for i, a in enumerate(layer._feature_axes):
        keep[a] = feature_shape[i]
    expected = ref.normalize(
        x2, np.reshape(layer.moving_mean, keep), np.reshape(layer.moving_variance, keep)
    )
    np.testing.assert_allclose(layer(x2, training=False), expected, rtol=1e-4, atol=1e-4)


def test_large_mean_small_spread_normalizes():
    # Mean 1e4 times the spread: one-pass E[x^2]-E[x]^2 in float32 returns garbage here.
    x = (1e4 + RNG.normal(size=(256, 8))).astype("float32")
    out = np.asarray(kerasnorm.BatchNormalization(epsilon=1e-6)(x, training=True))
    expected, *_ = ref.batch_norm_train(x, epsilon=1e-6)
    np.testing.assert_allclose(out, expected, atol=2e-3)
    np.testing.assert_allclose(out.std(axis=0), 1.0, atol=2e-3)


# -- the mode rules -----------------------------------------------------------------------


def test_inference_by_default_and_when_frozen():
    x = _data((8, 3))
    layer = kerasnorm.BatchNormalization()
    np.testing.assert_allclose(layer(x), ref.normalize(x, 0.0, 1.0), rtol=1e-5)
    np.testing.assert_array_equal(layer.moving_mean, np.zeros(3))

    layer.trainable = False  # fine-tuning: inference mode even when training=True
    np.testing.assert_allclose(layer(x, training=True), ref.normalize(x, 0.0, 1.0), rtol=1e-5)
    np.testing.assert_array_equal(layer.moving_mean, np.zeros(3))
    np.testing.assert_array_equal(layer.moving_variance, np.ones(3))


# -- equivalence with the Keras built-in ---------------------------------------------------


def _mlp(norm):
    keras.utils.set_random_seed(7)
    return keras.Sequential(
        [
            keras.Input((10,)),
            keras.layers.Dense(16, use_bias=False),
            norm(momentum=0.9),
            keras.layers.Activation("relu"),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )


def _cnn(norm):
    keras.utils.set_random_seed(7)
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, use_bias=False),
            norm(momentum=0.9),
            keras.layers.Activation("relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )


@pytest.mark.parametrize("builder,shape", [(_mlp, (64, 10)), (_cnn, (64, 8, 8, 1))])
def test_trains_like_keras(builder, shape):
    x = _data(shape)
    y = RNG.integers(0, 3, size=shape[0])
    models = []
    for norm in (keras.layers.BatchNormalization, kerasnorm.BatchNormalization):
        model = builder(norm)
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "sparse_categorical_crossentropy")
        model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        models.append(model)
    theirs, ours = models
    # Same maths; the statistics differ in the last bits (two-pass with correction here),
    # and eight SGD steps carry that rounding into the weights.
    for a, b in zip(theirs.weights, ours.weights):
        assert a.name == b.name
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(theirs.predict(x, verbose=0), ours.predict(x, verbose=0), rtol=1e-4, atol=1e-4)


def test_reads_weights_saved_by_keras(tmp_path):
    theirs, ours = _cnn(keras.layers.BatchNormalization), _cnn(kerasnorm.BatchNormalization)
    x = _data((16, 8, 8, 1))
    theirs.compile("adam", "mse")
    theirs.fit(x, RNG.normal(size=(16, 3)), epochs=1, verbose=0)
    theirs.save_weights(tmp_path / "m.weights.h5")
    ours.load_weights(tmp_path / "m.weights.h5")
    np.testing.assert_allclose(ours.predict(x, verbose=0), theirs.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


# -- masking ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,mask_shape", [((6, 7, 3), (6, 7)), ((4, 5, 6, 2), (4, 5)), ((5, 3), (5,))])
def test_masked_positions_never_enter_the_statistics(shape, mask_shape):
    x = _data(shape)
    mask = RNG.random(mask_shape) < 0.6
    mask.flat[0] = True
    garbage = x.copy()
    garbage[~mask] = 1e6  # anything at masked positions
    layer = kerasnorm.BatchNormalization(momentum=0.5)
    out = layer(garbage, training=True, mask=mask)
    expected, mean, var, _ = ref.batch_norm_train(x, mask=mask)
    np.testing.assert_allclose(np.asarray(out)[mask], expected[mask], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.moving_mean, ref.ema(0.0, mean.ravel(), 0.5), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.moving_variance, ref.ema(1.0, var.ravel(), 0.5), rtol=1e-5)


def test_fully_masked_batch_is_finite_and_leaves_state():
    layer = kerasnorm.BatchNormalization()
    x = _data((4, 5, 3))
    out = layer(x, training=True, mask=np.zeros((4, 5), bool))
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(layer.moving_mean, np.zeros(3))
    np.testing.assert_array_equal(layer.moving_variance, np.ones(3))


def test_mask_from_keras_masking_layer_reaches_the_statistics():
    x = _data((4, 6, 2))
    x[:, 4:] = 0.0
    inputs = keras.Input((6, 2))
    bn = kerasnorm.BatchNormalization(momentum=0.0)
    model = keras.Model(inputs, bn(keras.layers.Masking(0.0)(inputs)))
    model(x, training=True)
    np.testing.assert_allclose(bn.moving_mean, x[:, :4].reshape(-1, 2).mean(0), rtol=1e-5)


# -- mixed precision -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_inputs_up_to_the_float16_maximum(dtype):
    x = np.full((8, 4), 65504.0, "float32")
    x[::2] = -65504.0
    layer = kerasnorm.BatchNormalization(dtype=f"mixed_{dtype}")
    out = layer(keras.ops.cast(x, dtype), training=True)
    assert keras.backend.standardize_dtype(out.dtype) == dtype
    assert np.isfinite(np.asarray(keras.ops.cast(out, "float32"))).all()
    np.testing.assert_allclose(np.asarray(keras.ops.cast(out, "float32"))[:2], [[-1] * 4, [1] * 4], rtol=1e-2)
    assert layer.moving_variance.dtype == "float32"
    assert np.isfinite(layer.moving_variance).all()


# -- errors: clear, named, and harmless ------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"momentum": 1.0}, "momentum=1.0"),
        ({"momentum": -0.1}, "momentum=-0.1"),
        ({"momentum": "fast"}, "momentum='fast'"),
        ({"epsilon": 0.0}, "epsilon=0.0"),
        ({"epsilon": -1e-3}, "epsilon=-0.001"),
        ({"axis": "channels"}, "axis='channels'"),
        ({"axis": []}, "axis=[]"),
        ({"center": "yes"}, "center='yes'"),
        ({"renorm": True, "renorm_clipping": {"rmax": 1, "foo": 2}}, "renorm_clipping="),
        ({"renorm": True, "renorm_clipping": {"rmax": 0.5, "rmin": 2}}, "rmax=0.5"),
        ({"renorm": True, "renorm_clipping": {"dmax": -1}}, "dmax=-1.0"),
        ({"renorm_momentum": 2.0}, "renorm_momentum=2.0"),
        ({"renorm_warmup": [0, 10]}, "renorm=True"),
        ({"renorm": True, "renorm_warmup": [10, 5], "renorm_clipping": {"rmax": 3, "dmax": 5}}, "renorm_warmup=[10, 5]"),
        ({"renorm": True, "renorm_warmup": [0, 5]}, "rmax and dmax"),
        ({"virtual_batch_size": 0}, "virtual_batch_size=0"),
        ({"moving_variance_estimator": "sample"}, "moving_variance_estimator='sample'"),
    ],
)
def test_invalid_arguments_name_the_value(kwargs, needle):
    with pytest.raises(ValueError, match="Received") as err:
        kerasnorm.BatchNormalization(**kwargs)
    assert needle in str(err.value)


@pytest.mark.parametrize("axis", [3, -4, [1, 1], [1, -2]])
def test_bad_axis_for_the_input_rank(axis):
    with pytest.raises(ValueError, match="axis"):
        kerasnorm.BatchNormalization(axis=axis)(_data((2, 3, 4)))


def _state(layer):
    return [w.numpy().copy() for w in layer.non_trainable_weights]


def test_bad_input_never_corrupts_the_moving_statistics():
    layer = kerasnorm.BatchNormalization(virtual_batch_size=4)
    layer(_data((8, 3)), training=True)
    state = _state(layer)
    with pytest.raises(ValueError, match="int32"):
        layer(np.ones((8, 3), "int32"), training=True)
    with pytest.raises(ValueError, match="virtual_batch_size=4"):
        layer(_data((6, 3)), training=True)
    with pytest.raises(ValueError):
        layer(_data((8, 4)), training=True)  # wrong feature size
    with pytest.raises(ValueError, match="mask"):
        layer(_data((8, 3)), training=True, mask=np.ones((9,), bool))
    for old, new in zip(state, _state(layer)):
        np.testing.assert_array_equal(old, new)


# -- extensions: renorm, ghost batches, estimator, non-finite guard -------------------------


def test_renorm_matches_keras_over_several_steps():
    kwargs = {"renorm": True, "renorm_clipping": {"rmax": 1.5, "rmin": 0.5, "dmax": 0.5}, "renorm_momentum": 0.8, "momentum": 0.7}
    theirs, ours = keras.layers.BatchNormalization(**kwargs), kerasnorm.BatchNormalization(**kwargs)
    for step in range(4):
        x = _data((16, 3), loc=step, scale=1 + step)
        np.testing.assert_allclose(ours(x, training=True), theirs(x, training=True), rtol=1e-5, atol=1e-5)
    for a, b in zip(theirs.weights, ours.weights):
        assert a.name == b.name
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_renorm_warmup_is_plain_batch_norm_before_start_then_ramps():
    clip = {"rmax": 3.0, "rmin": 1 / 3.0, "dmax": 5.0}
    layer = kerasnorm.BatchNormalization(renorm=True, renorm_clipping=clip, renorm_warmup=[2, 6], renorm_momentum=0.0)
    plain = kerasnorm.BatchNormalization()
    for step in range(2):
        # renorm_momentum=0: the renorm averages are last batch's; a shifted batch would
        # get r != 1, d != 0 without the warm-up's (1, 1, 0) limits.
        x = _data((16, 3), loc=10 * step, scale=1 + 5 * step)
        np.testing.assert_allclose(layer(x, training=True), plain(x, training=True), rtol=1e-5, atol=1e-5)
    assert float(layer.renorm_step) == 2.0
    for _ in range(6):
        layer(_data((16, 3)), training=True)
    rmin, rmax, dmax = (float(v) for v in layer._renorm_limits())
    assert (rmin, rmax, dmax) == pytest.approx((1 / 3.0, 3.0, 5.0))


def test_ghost_batches_normalize_groups_and_update_in_order():
    x = _data((12, 3))
    layer = kerasnorm.BatchNormalization(virtual_batch_size=4, momentum=0.6)
    out = np.asarray(layer(x, training=True))
    mean, var = 0.0, 1.0
    for g in range(3):
        xs = x[4 * g : 4 * g + 4]
        expected, m, v, _ = ref.batch_norm_train(xs)
        np.testing.assert_allclose(out[4 * g : 4 * g + 4], expected, rtol=1e-4, atol=1e-4)
        mean, var = ref.ema(mean, m.ravel(), 0.6), ref.ema(var, v.ravel(), 0.6)
    np.testing.assert_allclose(layer.moving_mean, mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.moving_variance, var, rtol=1e-5)


def test_ghost_batch_of_full_size_equals_plain_batch_norm():
    x = _data((8, 5, 3))
    a, b = kerasnorm.BatchNormalization(virtual_batch_size=8), kerasnorm.BatchNormalization()
    np.testing.assert_allclose(a(x, training=True), b(x, training=True), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a.moving_variance, b.moving_variance, rtol=1e-6)


def test_unbiased_estimator_corrects_the_stored_variance_only():
    x = _data((5, 2))
    biased = kerasnorm.BatchNormalization(momentum=0.0)
    unbiased = kerasnorm.BatchNormalization(momentum=0.0, moving_variance_estimator="unbiased")
    np.testing.assert_allclose(biased(x, training=True), unbiased(x, training=True), rtol=1e-6)
    np.testing.assert_allclose(unbiased.moving_variance, x.astype("float64").var(axis=0, ddof=1), rtol=1e-5)
    np.testing.assert_allclose(biased.moving_variance, x.astype("float64").var(axis=0), rtol=1e-5)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_batch_leaves_the_moving_statistics_untouched(bad):
    layer = kerasnorm.BatchNormalization(momentum=0.5)
    x = _data((8, 3))
    x[3, 1] = bad
    layer(x, training=True)
    mean, var = np.asarray(layer.moving_mean), np.asarray(layer.moving_variance)
    assert (mean[1], var[1]) == (0.0, 1.0)
    np.testing.assert_allclose(mean[[0, 2]], 0.5 * x[:, [0, 2]].mean(0), rtol=1e-5)
    assert np.isfinite(layer(_data((8, 3)))).all()


@pytest.mark.parametrize("dtype", ["float32", "float64", "mixed_float16"])
@pytest.mark.parametrize("renorm", [False, True])
def test_weights_mirror_keras_names_shapes_and_dtypes(dtype, renorm):
    # Keras's BN takes an int axis only: the last axis there, two axes here.
    theirs = keras.layers.BatchNormalization(renorm=renorm, dtype=dtype)
    ours = kerasnorm.BatchNormalization(axis=[1, 2], renorm=renorm, dtype=dtype)
    theirs.build((4, 5, 3))
    ours.build((4, 5, 3))
    assert [(w.name, w.dtype) for w in ours.weights] == [(w.name, w.dtype) for w in theirs.weights]
    assert all(w.shape == (5, 3) for w in ours.weights)
