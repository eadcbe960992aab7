"""`fold_batch_norm`: an inference model with batch normalization folded into the weights."""

from __future__ import annotations

import numpy as np

import keras

# Private Keras module, imported on purpose: functional models are instances of this class
# (Sequential ones hold one), and their graph (`_nodes_by_depth`) says who feeds whom.
from keras.src.models.functional import Functional

from kerasnorm.batch_normalization import BatchNormalization
from kerasnorm.population import BATCH_NORM_TYPES

FOLDABLE_TYPES = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)


def _graphs(model):
    """The functional graphs of `model` and of the functional and Sequential models nested
    in it (a Sequential model's graph is the functional model it builds)."""
    graphs = []
    for layer in [model] + model._flatten_layers(include_self=False):
        graph = layer._functional if isinstance(layer, keras.Sequential) else layer
        if isinstance(graph, Functional):
            graphs.append(graph)
    return graphs


def _feature_axis_is_last(bn, ndim):
    if isinstance(bn, BatchNormalization):
        return tuple(bn._feature_axes) == (ndim - 1,)
    return bn.axis % ndim == ndim - 1


def _producer_is_foldable(layer):
    """A linear Dense or channels-last convolution with plain float weights."""
    return (
        isinstance(layer, FOLDABLE_TYPES)
        and layer.activation is keras.activations.linear
        and getattr(layer, "data_format", "channels_last") == "channels_last"
        and getattr(layer, "quantization_mode", None) is None
        and not getattr(layer, "lora_enabled", False)
    )


def foldable_pairs(model):
    """`[(producer, bn)]`: each batch-norm layer of `model` that can be folded into the
    Dense or convolution feeding it. Both must be called once in the model, the producer's
    output must feed only the BN (and not be a model output), the BN must normalize the
    last axis, take no explicit mask tensor and not be called with `training=True`."""
    graphs = _graphs(model)
    nodes = [n for g in graphs for depth in g._nodes_by_depth.values() for n in depth if not n.is_input]
    calls, consumers = {}, {}
    for node in nodes:
        calls[id(node.operation)] = calls.get(id(node.operation), 0) + 1
        for t in node.input_tensors:
            consumers[id(t)] = consumers.get(id(t), 0) + 1
    outputs = {id(t) for g in graphs for t in g.outputs}

    pairs = []
    for node in nodes:
        bn = node.operation
        if not isinstance(bn, BATCH_NORM_TYPES) or calls[id(bn)] != 1 or len(node.input_tensors) != 1:
            continue
        if node.arguments.kwargs.get("training") is True:
            continue
        if getattr(bn, "inference_weight", None) is not None:
            # Example weighing makes inference depend on each example: not an affine map.
            continue
        tensor = node.input_tensors[0]
        producer = tensor._keras_history.operation
        if (
            _producer_is_foldable(producer)
            and calls.get(id(producer)) == 1
            and consumers[id(tensor)] == 1
            and id(tensor) not in outputs
            and _feature_axis_is_last(bn, len(tensor.shape))
        ):
            pairs.append((producer, bn))
    return pairs


def _folded_weights(producer, bn):
    """`w' = w * s`, `b' = (b - mean) * s + beta` with `s = gamma / sqrt(var + epsilon)`,
    in float64: the BN's inference-mode affine map applied to the layer's outputs."""
    kernel = np.asarray(producer.kernel, np.float64)
    bias = np.asarray(producer.bias, np.float64) if producer.use_bias else 0.0
    mean = np.asarray(bn.moving_mean, np.float64)
    s = 1.0 / np.sqrt(np.asarray(bn.moving_variance, np.float64) + bn.epsilon)
    if bn.scale:
        s = s * np.asarray(bn.gamma, np.float64)
    shift = np.asarray(bn.beta, np.float64) if bn.center else 0.0
    return [kernel * s, (bias - mean) * s + shift]


def fold_batch_norm(model):
    """Returns a new inference model with batch normalization folded into the layers
    before it.

    Each batch-norm layer (`kerasnorm.BatchNormalization` or
    `keras.layers.BatchNormalization`) that directly follows a `Dense` or a
    channels-last `Conv1D`/`Conv2D`/`Conv3D` without activation, whose output feeds
    only that BN, is folded into that layer's kernel and bias:

        w' = w * gamma / sqrt(moving_variance + epsilon)
        b' = (b - moving_mean) * gamma / sqrt(moving_variance + epsilon) + beta

    (computed in float64; a layer without bias gains one). The folded BN is replaced by
    a `keras.layers.Identity` of the same name, a no-op that keeps the structure and
    layer names of the model. Other batch-norm layers (after an activation, a shared or
    multiply-used layer, a non-last feature axis, called with `training=True`, or with
    an `inference_weight`, which makes inference depend on each example) stay
    as they are. In inference mode the new model gives the same predictions as the
    original, within float32 rounding; it is meant for inference (in training mode the
    folded layers no longer normalize with batch statistics). The original model is
    untouched. Works for Sequential and functional models, nested ones included.

    Args:
        model: A built Sequential or functional Keras model.

    Returns:
        The new model, with copies of all the other layers' weights.

    Example:
        >>> import keras
        >>> import numpy as np
        >>> import kerasnorm
        >>> model = keras.Sequential(
        ...     [keras.Input((3,)), keras.layers.Dense(2), kerasnorm.BatchNormalization()]
        ... )
        >>> folded = kerasnorm.fold_batch_norm(model)
        >>> [type(layer).__name__ for layer in folded.layers]
        ['Dense', 'Identity']
        >>> x = np.array([[1.0, 2.0, 3.0]])
        >>> y, y_folded = (keras.ops.convert_to_numpy(m(x)) for m in (model, folded))
        >>> bool(np.allclose(y, y_folded, atol=1e-6))
        True

    Reference:
        - [Jacob et al., 2018](https://arxiv.org/abs/1712.05877), section 3.2 (folding
          batch normalization into the preceding weights for inference).
    """
    if not isinstance(model, (keras.Sequential, Functional)):
        raise ValueError(
            "Argument `model` must be a Sequential or functional Keras model. "
            f"Received: model of type {type(model).__name__}"
        )
    if not model.built or (isinstance(model, keras.Sequential) and model._functional is None):
        raise ValueError(f"Model '{model.name}' must be built with a known input shape before folding.")

    pairs = foldable_pairs(model)
    folded = {id(bn): producer for producer, bn in pairs}
    producers = {id(producer): bn for producer, bn in pairs}
    clones, cache = [], {}

    def call_layer(layer, *args, **kwargs):
        # The graph may have called the BN with `mask=` or `training=`; Identity takes none.
        if isinstance(layer, keras.layers.Identity):
            return layer(args[0])
        return layer(*args, **kwargs)

    def clone_graph(graph_model):
        # Keras takes `call_function` for functional models only: a Sequential model calls
        # its layers with their inputs alone.
        call_function = None if isinstance(graph_model, keras.Sequential) else call_layer
        return keras.models.clone_model(graph_model, clone_function=clone_layer, call_function=call_function)

    def clone_layer(layer):
        if id(layer) in cache:  # a layer shared between nested models
            return cache[id(layer)]
        if isinstance(layer, (keras.Sequential, Functional)):
            new = clone_graph(layer)
        elif id(layer) in folded:
            new = keras.layers.Identity(name=layer.name, dtype=layer.dtype_policy.name)
        else:
            config = layer.get_config()
            if id(layer) in producers:
                config["use_bias"] = True
            new = layer.__class__.from_config(config)
            clones.append((layer, new))
        cache[id(layer)] = new
        return new

    new_model = clone_graph(model)
    for layer, new in clones:
        if id(layer) in producers:
            weights = _folded_weights(layer, producers[id(layer)])
            new.set_weights([w.astype(v.dtype) for w, v in zip(weights, new.weights)])
        else:
            new.set_weights(layer.get_weights())
    return new_model
