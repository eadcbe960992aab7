"""Population statistics: recompute batch normalization's moving statistics exactly.

The moving averages a batch-norm layer keeps during training lag behind the weights and
weigh recent batches most. `recalibrate` replaces them with the statistics of the inputs
each layer sees over a whole data set, in inference mode: the population mean and
variance of the BN paper's inference network.
"""

from __future__ import annotations

import contextlib
import functools
import itertools

import numpy as np

import keras
from keras import ops

from kerasnorm import moments as M
from kerasnorm.batch_normalization import BatchNormalization

BATCH_NORM_TYPES = (BatchNormalization, keras.layers.BatchNormalization)
SUMMARY_COLUMNS = [
    "layer",
    "count",
    "mean_max_abs_change",
    "mean_mean_abs_change",
    "variance_max_abs_change",
    "variance_mean_abs_change",
    "mean_max_shift_in_std",
    "variance_max_rel_change",
]


def batch_norm_layers(model, layers=None, argument="layers"):
    """The batch-norm layers (kerasnorm's and Keras's) of `model`, nested models included,
    or those of them named or given in `layers`. Raises `ValueError` for a name or layer
    that is not one of them."""
    found = [l for l in model._flatten_layers(include_self=False) if isinstance(l, BATCH_NORM_TYPES)]
    if layers is None:
        return found
    if isinstance(layers, (str, keras.layers.Layer)) or not isinstance(layers, (list, tuple)):
        raise ValueError(
            f"Argument `{argument}` must be None or a list of layers or layer names. "
            f"Received: {argument}={layers!r}"
        )
    by_name = {l.name: l for l in found}
    selected = []
    for item in layers:
        layer = by_name.get(item) if isinstance(item, str) else item
        if not any(layer is l for l in found):
            raise ValueError(
                f"Argument `{argument}` names {item!r}, which is not a batch-norm layer of "
                f"model '{model.name}' (those are {sorted(by_name)}). Received: {argument}={layers!r}"
            )
        selected.append(layer)
    return selected


def set_inference_weight(model, weight, layers=None):
    """Sets the inference example weight of the `kerasnorm.BatchNormalization` layers of
    a model, trained or not; None switches example weighing off.

    See `BatchNormalization(inference_weight=...)`: in inference each example is then
    normalized with the mixture of its own moments (weight `weight`) and the moving
    statistics (Summers & Dinneen 2020). Training is unchanged. The model's cached
    predict and evaluate functions are dropped so that the next `predict` or `evaluate`
    traces them with the new weight.

    Args:
        model: A Keras model.
        weight: None, a float in (0, 1] (`1 / B` for a training normalization batch of
            `B`), or `"auto"` (`1 / virtual_batch_size`, for ghost-batch layers).
        layers: Optional list of the layers, or their names, to set (default: every
            `kerasnorm.BatchNormalization` of the model, nested models included).

    Returns:
        The list of layers set.

    Example:
        >>> import keras
        >>> import kerasnorm
        >>> model = keras.Sequential([keras.Input((2,)), kerasnorm.BatchNormalization(name="bn")])
        >>> [layer.name for layer in kerasnorm.set_inference_weight(model, 1 / 8)]
        ['bn']
        >>> model.get_layer("bn").inference_weight
        0.125

    Reference:
        - [Summers and Dinneen, 2020](https://arxiv.org/abs/1906.03548) (inference
          example weighing).
    """
    targets = kerasnorm_batch_norms(model, layers)
    for layer in targets:
        layer.inference_weight = weight
    model.predict_function = None
    model.test_function = None
    return targets


def kerasnorm_batch_norms(model, layers=None):
    """`batch_norm_layers`, refusing Keras's layers, which have no small-batch remedies."""
    targets = batch_norm_layers(model, layers)
    foreign = [l.name for l in targets if not isinstance(l, BatchNormalization)]
    if foreign:
        raise ValueError(
            "Only kerasnorm.BatchNormalization layers have inference example weighing and "
            f"frozen statistics; these are keras.layers.BatchNormalization: {foreign}. "
            "Pass `layers` to select kerasnorm's, or swap the layers in."
        )
    return targets


@contextlib.contextmanager
def _without_example_weighing(model):
    """Plain inference (no example weighing) in every kerasnorm batch norm of `model`."""
    weighed = [
        (l, l.inference_weight)
        for l in batch_norm_layers(model)
        if isinstance(l, BatchNormalization) and l.inference_weight is not None
    ]
    try:
        for layer, _ in weighed:
            layer.inference_weight = None
        yield
    finally:
        for layer, weight in weighed:
            layer.inference_weight = weight


# -- data --------------------------------------------------------------------------------


def _inputs_of(element):
    """The model inputs of a batch: Keras's `(x, y[, sample_weight])` convention."""
    if isinstance(element, tuple):
        return keras.utils.unpack_x_y_sample_weight(element)[0]
    return element


def _is_arrays(data):
    leaves = keras.tree.flatten(data)
    return bool(leaves) and all(getattr(a, "shape", None) is not None and len(a.shape) > 0 for a in leaves)


def _batch_source(data, batch_size, steps):
    """A function returning a fresh iterator over the input batches of `data`, at most
    `steps` of them: every BN layer needs its own pass."""
    import tensorflow as tf

    if isinstance(data, tuple):
        data = _inputs_of(data)
    if isinstance(data, tf.data.Dataset):
        if steps is None and data.cardinality() == tf.data.INFINITE_CARDINALITY:
            raise ValueError("An infinite dataset needs `steps`. Received: steps=None")
        return lambda: (_inputs_of(b) for b in itertools.islice(data, steps))
    if _is_arrays(data):
        size = keras.tree.flatten(data)[0].shape[0]
        starts = range(0, size, batch_size)[:steps]
        return lambda: (keras.tree.map_structure(lambda a: a[s : s + batch_size], data) for s in starts)
    try:
        iter(data)
    except TypeError:
        raise ValueError(
            "Argument `data` must be arrays, a tuple (x, y), a tf.data.Dataset or an "
            f"iterable of batches. Received: data of type {type(data).__name__}"
        ) from None
    if iter(data) is data:
        # A one-shot iterator (a generator): read once, then replay from host memory.
        cached = [_inputs_of(b) for b in itertools.islice(data, steps)]
        return lambda: iter(cached)
    return lambda: (_inputs_of(b) for b in itertools.islice(data, steps))


# -- statistics --------------------------------------------------------------------------


class _Population:
    """Count, mean and sum of squared deviations per feature, in float64, merged batch by
    batch with Chan et al.'s parallel algorithm: exact whatever the order and sizes."""

    def __init__(self, shape):
        self.count = np.zeros(shape)
        self.mean = np.zeros(shape)
        self.m2 = np.zeros(shape)

    def add(self, count, mean, variance):
        total = self.count + count
        safe = np.maximum(total, 1.0)
        delta = mean - self.mean
        self.m2 = self.m2 + variance * count + delta**2 * self.count * count / safe
        self.mean = self.mean + delta * count / safe
        self.count = total


def _batch_moments(layer, inputs, mask):
    """Float64 count, mean and biased variance of one call's inputs, shaped as the
    layer's moving statistics; the same `kerasnorm.moments` as the layer's training."""
    x = ops.cast(inputs, "float64")
    stats = M.moments(x, tuple(layer._reduction_axes), M.mask_weights(mask, x))
    shape = tuple(layer.moving_mean.shape)
    # convert_to_numpy, not np.asarray: a PyTorch tensor that carries an autograd graph
    # refuses the latter.
    return tuple(np.reshape(ops.convert_to_numpy(t), shape) for t in (stats.count, stats.mean, stats.variance))


class _Stop(Exception):
    """Ends a forward pass once the layer being recalibrated has seen its inputs."""


@contextlib.contextmanager
def _intercepted(layers, make_call):
    """Replaces each layer's `call` by `make_call(layer, original_call)` for the duration."""
    try:
        for layer in layers:
            object.__setattr__(layer, "call", functools.wraps(layer.call)(make_call(layer, layer.call)))
        yield
    finally:
        for layer in layers:
            if "call" in vars(layer):
                object.__delattr__(layer, "call")


def _call_order(model, layers, first_batch):
    """The layers in the order a forward pass first calls them, and how often each is
    called per pass (a shared layer more than once). Layers never called are left out."""
    calls = {}

    def make_call(layer, original):
        def call(*args, **kwargs):
            calls[id(layer)] = calls.get(id(layer), 0) + 1
            return original(*args, **kwargs)

        return call

    with _intercepted(layers, make_call):
        model(first_batch, training=False)
    by_id = {id(l): l for l in layers}
    return [(by_id[i], n) for i, n in calls.items()]


def _population_of(model, layer, calls_per_pass, batches):
    population = _Population(tuple(layer.moving_mean.shape))
    # A layer called once per pass ends the pass: nothing after it matters here.
    stop = calls_per_pass == 1

    def make_call(layer, original):
        def call(inputs, *args, **kwargs):
            population.add(*_batch_moments(layer, inputs, kwargs.get("mask")))
            if stop:
                raise _Stop()
            return original(inputs, *args, **kwargs)

        return call

    with _intercepted([layer], make_call):
        for x in batches():
            try:
                model(x, training=False)
            except _Stop:
                pass
    return population


def _assign(layer, population):
    """Writes the population statistics (features without data keep theirs); returns
    (old mean, old variance, new mean, new variance)."""
    seen = population.count > 0
    unbiased = getattr(layer, "moving_variance_estimator", "biased") == "unbiased"
    divisor = np.maximum(population.count - 1.0, 1.0) if unbiased else np.maximum(population.count, 1.0)
    old_mean, old_var = np.asarray(layer.moving_mean, np.float64), np.asarray(layer.moving_variance, np.float64)
    new_mean = np.where(seen, population.mean, old_mean)
    new_var = np.where(seen, population.m2 / divisor, old_var)
    layer.moving_mean.assign(new_mean.astype(layer.moving_mean.dtype))
    layer.moving_variance.assign(new_var.astype(layer.moving_variance.dtype))
    if getattr(layer, "renorm", False):
        # Renorm layers track the standard deviation and derive the variance from it
        # at every training step: keep the two consistent.
        layer.moving_stddev.assign(np.sqrt(new_var + layer.epsilon).astype(layer.moving_stddev.dtype))
    return old_mean, old_var, new_mean, new_var


def recalibrate(model, data, batch_size=32, steps=None, layers=None):
    """Recomputes the moving mean and variance of every batch-norm layer over `data`.

    For each `kerasnorm.BatchNormalization` and `keras.layers.BatchNormalization` layer of
    `model` (nested functional and Sequential models included), the moving statistics
    become the exact population statistics of the layer's inputs over all of `data`:
    every value of every sample weighs the same, whatever the batch sizes (the mean and
    variance over all samples of Algorithm 2 of the BN paper, without its average of
    per-batch variances). Per batch the statistics come from `kerasnorm.moments` in
    float64; batches are merged on the host in float64 with Chan et al.'s parallel
    algorithm. Masks are honoured: masked positions never count. The stored variance is
    biased, or unbiased (`m / (m - 1)`) for a kerasnorm layer with
    `moving_variance_estimator="unbiased"`. For a layer with `renorm=True` the moving
    standard deviation is set to match. Features that receive no data keep their values.

    **Upstream layers, layer by layer.** The model runs in inference mode. Layers are
    recalibrated one after the other in the order a forward pass first calls them, one
    pass over `data` each, and that pass stops at the layer being recalibrated. So the
    inputs of a layer are computed with the *recalibrated* statistics of every batch-norm
    layer before it: the result is the statistics the inference network actually feeds
    each layer (recalibrating all layers from one pass would leave each layer with
    statistics of inputs computed with its predecessors' old statistics). A layer shared
    within the model is fed by all its calls, and its passes run the whole model. Example
    weighing (`inference_weight`) is off during these passes: the statistics are those of
    the plain inference network, and a layer's weight applies on top of them afterwards.

    The layers' inputs are captured by temporarily wrapping their `call` and running the
    model eagerly; any Keras model works, subclassed ones included. Cost: one forward pass
    over `data` per batch-norm layer (each stopping at that layer).

    Args:
        model: A built Keras model.
        data: The inputs: arrays (a NumPy array, a tensor, or a list or dict of them for
            a multi-input model), a tuple `(x, y)` or `(x, y, sample_weight)` of which
            only `x` is used, a `tf.data.Dataset` of batches, or any iterable of batches
            (each batch `x` or `(x, y, ...)`). A one-shot iterator (a generator) is read
            once and its batches kept in host memory, since every layer needs a pass.
        batch_size: Batch size for array inputs; ignored for batched data. Affects only
            speed and memory, never the result.
        steps: Optional number of batches per pass (required for an infinite dataset).
        layers: Optional list of batch-norm layers, or their names, to recalibrate
            (default: all). The others keep their statistics, and are used as they are.

    Returns:
        A pandas DataFrame, one row per recalibrated layer, in order: `layer` (name),
        `count` (values behind each statistic; the least over features), the largest and
        mean absolute change of the mean (`mean_max_abs_change`, `mean_mean_abs_change`)
        and of the variance (`variance_max_abs_change`, `variance_mean_abs_change`), and
        relative changes: `mean_max_shift_in_std`, the largest mean change in old
        standard deviations `|new - old| / sqrt(old_variance + epsilon)`, and
        `variance_max_rel_change`, the largest `|new - old| / old_variance`.

    Example:
        >>> import keras
        >>> import numpy as np
        >>> import kerasnorm
        >>> model = keras.Sequential([keras.Input((2,)), kerasnorm.BatchNormalization(name="bn")])
        >>> _ = kerasnorm.recalibrate(model, np.array([[1.0, 10.0], [3.0, 30.0]]))
        >>> bn = model.get_layer("bn")
        >>> print(keras.ops.convert_to_numpy(bn.moving_mean))
        [ 2. 20.]
        >>> print(keras.ops.convert_to_numpy(bn.moving_variance))
        [  1. 100.]

    Reference:
        - [Ioffe and Szegedy, 2015](https://arxiv.org/abs/1502.03167), Algorithm 2.
        - Chan, Golub and LeVeque, 1979, "Updating formulae and a pairwise algorithm
          for computing sample variances" (the merge of counts, means and sums of
          squared deviations).
    """
    import pandas as pd

    if not isinstance(model, keras.Model):
        raise ValueError(f"Argument `model` must be a Keras model. Received: model of type {type(model).__name__}")
    if not model.built:
        raise ValueError(f"Model '{model.name}' must be built (called once, or given an Input) before recalibration.")
    batch_size = M.validate_positive_int(batch_size, "batch_size")
    steps = M.validate_positive_int(steps, "steps", allow_none=True)
    targets = batch_norm_layers(model, layers)
    batches = _batch_source(data, batch_size, steps)
    first = next(iter(batches()), None)
    if first is None:
        raise ValueError("Argument `data` holds no batch. Received: an empty data set")

    rows = []
    # Population statistics are those of the plain inference network, the one whose
    # statistics training's moving averages estimate: example weighing stays off.
    with _without_example_weighing(model):
        for layer, calls_per_pass in _call_order(model, targets, first):
            population = _population_of(model, layer, calls_per_pass, batches)
            old_mean, old_var, new_mean, new_var = _assign(layer, population)
            mean_change, var_change = np.abs(new_mean - old_mean), np.abs(new_var - old_var)
            rows.append(
                {
                    "layer": layer.name,
                    "count": int(population.count.min()),
                    "mean_max_abs_change": float(mean_change.max()),
                    "mean_mean_abs_change": float(mean_change.mean()),
                    "variance_max_abs_change": float(var_change.max()),
                    "variance_mean_abs_change": float(var_change.mean()),
                    "mean_max_shift_in_std": float((mean_change / np.sqrt(old_var + layer.epsilon)).max()),
                    "variance_max_rel_change": float((var_change / np.maximum(old_var, np.finfo("float32").tiny)).max()),
                }
            )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
