"""Float64 NumPy references for the layers' maths, written from the papers' formulas."""

from __future__ import annotations

import numpy as np


def reduce_axes(ndim, feature_axes):
    feature_axes = {a % ndim for a in np.atleast_1d(feature_axes)}
    return tuple(a for a in range(ndim) if a not in feature_axes)


def batch_norm_train(x, axis=-1, epsilon=1e-3, gamma=1.0, beta=0.0, mask=None):
    """Training-mode BN output and the biased batch mean and variance (kept dims)."""
    x = np.asarray(x, dtype=np.float64)
    axes = reduce_axes(x.ndim, axis)
    if mask is None:
        w = np.ones_like(x)
    else:
        w = np.asarray(mask, dtype=np.float64).reshape(mask.shape + (1,) * (x.ndim - mask.ndim))
        w = np.broadcast_to(w, x.shape)
    count = w.sum(axis=axes, keepdims=True)
    mean = (w * x).sum(axis=axes, keepdims=True) / np.maximum(count, 1)
    var = (w * (x - mean) ** 2).sum(axis=axes, keepdims=True) / np.maximum(count, 1)
    return gamma * (x - mean) / np.sqrt(var + epsilon) + beta, mean, var, count


def normalize(x, mean, var, epsilon=1e-3, gamma=1.0, beta=0.0):
    return gamma * (np.asarray(x, np.float64) - mean) / np.sqrt(var + epsilon) + beta


def ema(old, value, momentum):
    return old * momentum + value * (1.0 - momentum)


def layer_norm(x, axis=-1, epsilon=1e-3, gamma=1.0, beta=0.0):
    x = np.asarray(x, dtype=np.float64)
    axes = tuple(a % x.ndim for a in np.atleast_1d(axis))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    return gamma * (x - mean) / np.sqrt(var + epsilon) + beta
