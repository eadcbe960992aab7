"""Copies of a model with some of its layers replaced: the one walk behind the converters
(`convert_to_dynamic_tanh`, `fold_weight_standardization`)."""

from __future__ import annotations

import keras

# Private Keras module, imported on purpose: functional models are instances of this class.
from keras.src.models.functional import Functional


def check_model(model, action):
    """Raises `ValueError` unless `model` is a built Sequential or functional model: a
    subclassed model has no graph to copy, and an unbuilt one has no weights to copy."""
    if not isinstance(model, (keras.Sequential, Functional)):
        raise ValueError(
            "Argument `model` must be a Sequential or functional Keras model. "
            f"Received: model of type {type(model).__name__}"
        )
    if not model.built or (isinstance(model, keras.Sequential) and model._functional is None):
        raise ValueError(f"Model '{model.name}' must be built with a known input shape before {action}.")


def replace_layers(model, replace, action):
    """A copy of `model` with some layers replaced; the original is untouched.

    `replace(layer)` is asked about every layer, those of nested models included, once
    each (a shared layer stays shared). It returns None to keep the layer, which is then
    copied with its weights, or a pair `(new_layer, set_up)`: `new_layer` (unbuilt) takes
    the layer's place, and `set_up(new_layer)` is called once the copy is built, e.g. to
    set its weights.

    Args:
        model: A built Sequential or functional Keras model.
        replace: The callable above.
        action: What the caller does, for the error message (e.g. "folding").

    Returns:
        The new model.
    """
    check_model(model, action)
    copies, replaced = [], []

    def clone_layer(layer):
        result = replace(layer)
        if result is None:
            new = layer.__class__.from_config(layer.get_config())
            copies.append((layer, new))
            return new
        new, set_up = result
        replaced.append((new, set_up))
        return new

    # recursive=True: nested models are walked too, and Keras's cache calls `clone_layer`
    # once per layer however many models share it.
    new_model = keras.models.clone_model(model, clone_function=clone_layer, recursive=True)
    for layer, new in copies:
        new.set_weights(layer.get_weights())
    for new, set_up in replaced:
        set_up(new)
    return new_model
