"""What the layers share besides the maths: argument checks that name the bad value, and
the learned scale `gamma` and offset `beta` (their arguments, weights and config), which
BatchNormalization, LayerNormalization and GroupNormalization declare identically.

An error that Keras's layer also raises has Keras's type and starts with Keras's phrase
(code that catches or matches Keras's errors keeps working after a swap), followed by
kerasnorm's detail: "Received: name=value"."""

from __future__ import annotations

import math
import numbers

from keras import constraints, initializers, regularizers

from kerasnorm import moments as M

AFFINE_ARGUMENTS = (
    "beta_initializer",
    "gamma_initializer",
    "beta_regularizer",
    "gamma_regularizer",
    "beta_constraint",
    "gamma_constraint",
)
_GETTERS = {"initializer": initializers, "regularizer": regularizers, "constraint": constraints}


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type. A `TypeError`, as Keras raises, and a `ValueError`,
    as kerasnorm raised before it followed Keras: code written against either still
    catches it."""


def keras_axis_argument(axis):
    """Checks the `axis` of a layer whose Keras twin accepts an int or a list/tuple of
    ints (LayerNormalization, RMSNormalization); returns an int or a list of ints."""
    if isinstance(axis, bool) or not isinstance(axis, (numbers.Integral, list, tuple)):
        raise ArgumentTypeError(
            "Expected an int or a list/tuple of ints for the argument 'axis'. "
            f"Received: axis={axis!r}"
        )
    return M.validate_axis_argument(axis)


def call_axes(axis, inputs_shape, built_rank, weight_shape, layer_name):
    """The axes a layer without an input spec normalizes for inputs of `inputs_shape`.

    Keras's LayerNormalization and RMSNormalization keep `axis` as given and resolve it
    against each call's rank, so a layer built for one rank serves inputs of another
    (`axis=-1` stays the last axis); so does this. Raises `ValueError` naming both shapes
    where that would put the weights on axes of other sizes, or where `axis` mixes
    negative and non-negative entries and the rank differs from the built one (the
    weights' axis order could then change): the weights never silently scale the wrong
    axis.
    """
    ndim = len(inputs_shape)
    axes = M.canonicalize_axes(axis, ndim)
    sizes = tuple(inputs_shape[a] for a in axes)
    given = [axis] if isinstance(axis, numbers.Integral) else list(axis)
    mixed_signs = ndim != built_rank and len({a < 0 for a in given}) > 1
    if mixed_signs or any(s is not None and s != n for s, n in zip(sizes, weight_shape)):
        raise ValueError(
            f"Layer '{layer_name}' was built for inputs of rank {built_rank} with weights of "
            f"shape {tuple(weight_shape)} over axis={axis!r}, which for these inputs names "
            f"axes {axes} of sizes {sizes}. Received: inputs.shape={tuple(inputs_shape)}"
        )
    return axes


def float_in(name, value, low, high, low_open=False, high_open=True):
    """`float(value)` checked against an interval; `ValueError` naming the value if not."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
        raise ValueError(f"Argument `{name}` must be a number. Received: {name}={value!r}")
    value = float(value)
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    if below or above:
        interval = ("(" if low_open else "[") + f"{low}, {high}" + (")" if high_open else "]")
        raise ValueError(f"Argument `{name}` must be in {interval}. Received: {name}={value!r}")
    return value


def positive_float(name, value):
    """A float > 0 (epsilon and the like)."""
    return float_in(name, value, 0.0, math.inf, low_open=True)


def check_bool(name, value):
    if not isinstance(value, bool):
        raise ValueError(f"Argument `{name}` must be True or False. Received: {name}={value!r}")
    return value


class AffineMixin:
    """`gamma` (with `scale`) and `beta` (with `center`) for a `keras.layers.Layer`."""

    def _init_affine(self, center, scale, *arguments):
        """`center`, `scale`, then the six `AFFINE_ARGUMENTS` in that order."""
        self.center = check_bool("center", center)
        self.scale = check_bool("scale", scale)
        for name, value in zip(AFFINE_ARGUMENTS, arguments, strict=True):
            setattr(self, name, _GETTERS[name.split("_", 1)[1]].get(value))
        self.gamma = None
        self.beta = None

    def _build_affine(self, shape, scale=None, center=None):
        """Creates `gamma` then `beta` (Keras's order: the saved files match), each where
        `scale` and `center` (default: the layer's arguments) say so."""
        scale = self.scale if scale is None else scale
        center = self.center if center is None else center
        for weight, enabled in (("gamma", scale), ("beta", center)):
            if enabled:
                setattr(
                    self,
                    weight,
                    self.add_weight(
                        shape=shape,
                        name=weight,
                        initializer=getattr(self, f"{weight}_initializer"),
                        regularizer=getattr(self, f"{weight}_regularizer"),
                        constraint=getattr(self, f"{weight}_constraint"),
                        trainable=True,
                        autocast=False,
                    ),
                )

    def _affine_config(self):
        config = {"center": self.center, "scale": self.scale}
        for name in AFFINE_ARGUMENTS:
            getter = _GETTERS[name.split("_", 1)[1]]
            config[name] = getter.serialize(getattr(self, name))
        return config
