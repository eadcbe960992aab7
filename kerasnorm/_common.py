"""What the layers share besides the maths: argument checks that name the bad value, and
the learned scale `gamma` and offset `beta` (their arguments, weights and config), which
BatchNormalization, LayerNormalization and GroupNormalization declare identically."""

from __future__ import annotations

import math
import numbers

from keras import constraints, initializers, regularizers

AFFINE_ARGUMENTS = (
    "beta_initializer",
    "gamma_initializer",
    "beta_regularizer",
    "gamma_regularizer",
    "beta_constraint",
    "gamma_constraint",
)
_GETTERS = {"initializer": initializers, "regularizer": regularizers, "constraint": constraints}


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

    def _build_affine(self, shape):
        """Creates `gamma` then `beta` (Keras's order: the saved files match)."""
        for weight, enabled in (("gamma", self.scale), ("beta", self.center)):
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
