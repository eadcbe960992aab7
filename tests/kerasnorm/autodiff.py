"""Gradients of a layer's output, with whichever Keras backend runs the tests."""

from __future__ import annotations

import numpy as np

import keras


def layer_gradients(layer, x, g, **call_kwargs):
    """`d sum(layer(x, **call_kwargs) * g) / d x` followed by the gradients of the
    layer's trainable weights, in their order, as NumPy arrays."""
    backend = keras.backend.backend()
    weights = layer.trainable_weights
    if backend == "tensorflow":
        import tensorflow as tf

        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            loss = tf.reduce_sum(layer(xt, **call_kwargs) * g)
        return [np.asarray(t) for t in tape.gradient(loss, [xt] + [w.value for w in weights])]
    if backend == "jax":
        import jax

        state = [v.value for v in layer.non_trainable_weights]

        def f(x_, values):
            out, _ = layer.stateless_call(values, state, x_, **call_kwargs)
            return (out * g).sum()

        dx, dw = jax.grad(f, argnums=(0, 1))(x, [w.value for w in weights])
        return [np.asarray(dx)] + [np.asarray(t) for t in dw]
    import torch

    xt = torch.tensor(x, requires_grad=True)
    loss = (layer(xt, **call_kwargs) * torch.tensor(g, dtype=xt.dtype)).sum()
    loss.backward()
    return [xt.grad.numpy()] + [w.value.grad.numpy() for w in weights]
