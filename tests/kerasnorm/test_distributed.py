"""synchronized=True under tf.distribute: statistics of the global batch, masks weighted.

Runs in a subprocess: the two logical CPU devices must be configured before TensorFlow
initializes, which the rest of the suite has already done.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, kerasnorm

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(8, 5, 3)) * 2 + 1).astype("float32")
    mask = np.ones((8, 5), bool)
    mask[:4, 2:] = False  # replica 0 holds 8 valid steps, replica 1 holds 20

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        synced = kerasnorm.BatchNormalization(momentum=0.0, synchronized=True)
        local = kerasnorm.BatchNormalization(momentum=0.0, synchronized=False)
        synced.build(x.shape)
        local.build(x.shape)

    def step(xs, ms):
        return synced(xs, training=True, mask=ms), local(xs, training=True, mask=ms)

    dataset = tf.data.Dataset.from_tensor_slices((x, mask)).batch(8)
    batch = next(iter(strategy.experimental_distribute_dataset(dataset)))
    strategy.run(tf.function(step), args=batch)

    plain = kerasnorm.BatchNormalization(momentum=0.0)
    plain(x, training=True, mask=mask)
    np.testing.assert_allclose(synced.moving_mean.numpy(), plain.moving_mean.numpy(), rtol=1e-5)
    np.testing.assert_allclose(synced.moving_variance.numpy(), plain.moving_variance.numpy(), rtol=1e-5)
    # Unsynchronized replicas disagree with the global batch: the test can tell them apart.
    assert not np.allclose(local.moving_mean.numpy(), plain.moving_mean.numpy(), rtol=1e-3)
    print("SYNCED")
    """
)


def test_synchronized_statistics_equal_one_large_batch():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SYNCED" in result.stdout
