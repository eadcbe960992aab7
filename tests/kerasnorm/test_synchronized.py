"""synchronized=True under JAX and PyTorch: statistics of the global batch.

Each test runs a script in a subprocess with its own backend and devices (two host CPU
devices for JAX, two gloo processes for PyTorch), whatever the backend of this pytest
run; the tests therefore run once, in the TensorFlow run (`tensorflow_only`). The
TensorFlow counterpart, under `tf.distribute`, is `test_distributed.py`.

Each script builds data whose replicas' local statistics differ from the global ones
and checks that they do, so that a reduction over one replica's part alone would fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.tensorflow_only

JAX_SCRIPT = textwrap.dedent(
    """
    import jax
    import keras
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    import kerasnorm

    assert jax.device_count() == 2, jax.devices()
    STEPS, MOMENTUM = 3, 0.5

    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4)).astype("float32")
    x[:8] += 3.0  # the two devices' halves have different means
    y = rng.normal(size=(16, 1)).astype("float32")

    seen = []  # the input shardings the compiled train steps see

    class ShardingProbe(keras.layers.Layer):
        def call(self, inputs):
            jax.debug.inspect_array_sharding(inputs, callback=seen.append)
            return inputs

    def trained(synchronized):
        keras.utils.set_random_seed(1)
        inputs = keras.Input((4,))
        h = ShardingProbe()(inputs)
        h = kerasnorm.BatchNormalization(momentum=MOMENTUM, synchronized=synchronized, name="bn_in")(h)
        h = keras.layers.Dense(3)(h)
        h = kerasnorm.BatchNormalization(momentum=MOMENTUM, synchronized=synchronized)(h)
        model = keras.Model(inputs, keras.layers.Dense(1)(h))
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        model.fit(x, y, batch_size=16, epochs=STEPS, shuffle=False, verbose=0)
        return model

    one_device = trained(synchronized=True)
    assert all(len(s.device_set) == 1 for s in seen), seen
    one_device_predictions = one_device.predict(x, batch_size=16, verbose=0)
    distribution = keras.distribution.DataParallel(devices=keras.distribution.list_devices())
    with distribution.scope():
        for synchronized in (True, False):
            seen.clear()
            model = trained(synchronized)
            # The data-parallel step did split the batch: half on each device.
            assert seen and all(
                len(s.device_set) == 2 and s.shard_shape(x.shape) == (8, 4) for s in seen
            ), seen
            for ours, reference in zip(model.get_weights(), one_device.get_weights(), strict=True):
                np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(
                model.predict(x, batch_size=16, verbose=0), one_device_predictions, rtol=1e-5, atol=1e-6
            )

    # The first layer normalizes the fixed inputs: after STEPS updates from (0, 1) its
    # moving statistics are known in closed form from the global batch's.
    decay = MOMENTUM**STEPS
    bn_in = one_device.get_layer("bn_in")
    np.testing.assert_allclose(bn_in.moving_mean.numpy(), (1 - decay) * x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(bn_in.moving_variance.numpy(), decay + (1 - decay) * x.var(0), rtol=1e-5)
    # Per-device statistics would not give those numbers.
    local_variance = (x[:8].var(0) + x[8:].var(0)) / 2
    assert np.all(decay + (1 - decay) * local_variance < 0.5 * bn_in.moving_variance.numpy())

    # One layer call with a mask, jitted on inputs sharded over the two devices: the
    # valid counts differ between the halves (8 and 20 steps), as one large batch weighs them.
    xs = (rng.normal(size=(8, 5, 3)) * 2 + 1).astype("float32")
    xs[4:] += 3.0
    mask = np.ones((8, 5), bool)
    mask[:4, 2:] = False
    layer = kerasnorm.BatchNormalization(momentum=0.0, synchronized=True)
    layer.build(xs.shape)
    trainable, non_trainable = layer.trainable_variables, layer.non_trainable_variables

    @jax.jit
    def step(trainable_values, non_trainable_values, inputs, mask):
        return layer.stateless_call(trainable_values, non_trainable_values, inputs, training=True, mask=mask)

    def run(inputs, mask):
        outputs, statistics = step([v.value for v in trainable], [v.value for v in non_trainable], inputs, mask)
        return np.asarray(outputs), [np.asarray(s) for s in statistics]

    batch = NamedSharding(Mesh(np.array(jax.devices()), ("batch",)), PartitionSpec("batch"))
    sharded_x, sharded_mask = jax.device_put(xs, batch), jax.device_put(mask, batch)
    assert len(sharded_x.sharding.device_set) == 2
    outputs, statistics = run(sharded_x, sharded_mask)
    expected_outputs, expected_statistics = run(xs, mask)
    np.testing.assert_allclose(outputs, expected_outputs, rtol=1e-5, atol=1e-5)
    for ours, reference in zip(statistics, expected_statistics, strict=True):
        np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-6)
    valid = xs[mask]
    np.testing.assert_allclose(statistics[0], valid.mean(0), rtol=1e-5)
    np.testing.assert_allclose(statistics[1], valid.var(0), rtol=1e-5)
    print("GLOBAL")
    """
)

TORCH_SCRIPT = textwrap.dedent(
    """
    import os
    import socket
    import sys
    from datetime import timedelta

    import numpy as np
    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp

    WORLD = 2
    OUT = sys.argv[1]

    rng = np.random.default_rng(0)
    X = (rng.normal(size=(8, 5, 3)) * 2 + 1).astype("float32")
    X[4:] += 3.0  # the two replicas' halves have different means
    MASK = np.ones((8, 5), bool)
    MASK[:4, 2:] = False  # replica 0 holds 8 valid steps, replica 1 holds 20
    # Each replica's loss is the mean over its elements of outputs * UPSTREAM; with equal
    # halves the large batch's loss is the replicas' average.
    UPSTREAM = rng.normal(size=X.shape).astype("float32")

    def train_call(x, mask, upstream, synchronized):
        \"\"\"One training call: outputs, gradients and moving statistics, as numpy.\"\"\"
        import keras
        import kerasnorm

        layer = kerasnorm.BatchNormalization(
            momentum=0.5, synchronized=synchronized, gamma_initializer=keras.initializers.Constant([0.5, 1.0, 2.0])
        )
        layer.build(x.shape)
        inputs = torch.tensor(x, requires_grad=True)
        outputs = layer(inputs, training=True, mask=None if mask is None else torch.tensor(mask))
        (outputs * torch.tensor(upstream)).mean().backward()
        return {
            "outputs": outputs.detach().numpy(),
            "inputs_grad": inputs.grad.numpy(),
            "gamma_grad": layer.gamma.value.grad.numpy(),
            "beta_grad": layer.beta.value.grad.numpy(),
            "moving_mean": layer.moving_mean.numpy(),
            "moving_variance": layer.moving_variance.numpy(),
        }

    CASES = {"masked": MASK, "unmasked": None}

    def replica(rank, port):
        torch.set_num_threads(1)
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60)
        )
        part = slice(rank * 4, rank * 4 + 4)
        for case, mask in CASES.items():
            for synchronized in (True, False):
                result = train_call(X[part], None if mask is None else mask[part], UPSTREAM[part], synchronized)
                np.savez(os.path.join(OUT, f"{case}-{synchronized}-{rank}.npz"), **result)
        dist.destroy_process_group()

    if __name__ == "__main__":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        # This process is replica 0 and then, its group destroyed, the one large batch.
        other = mp.get_context("spawn").Process(target=replica, args=(1, port))
        other.start()
        replica(0, port)
        other.join()
        assert other.exitcode == 0, other.exitcode
        assert not dist.is_initialized()
        for case, mask in CASES.items():
            close = dict(rtol=1e-5, atol=1e-6, err_msg=case)
            # Without a process group, synchronized=True is one replica: the plain layer
            # (to rounding: the plain layer may take a fast path of kernels.py).
            large = train_call(X, mask, UPSTREAM, synchronized=True)
            plain = train_call(X, mask, UPSTREAM, synchronized=False)
            for key in large:
                np.testing.assert_allclose(large[key], plain[key], **close)

            synced = [dict(np.load(os.path.join(OUT, f"{case}-True-{r}.npz"))) for r in range(WORLD)]
            local = [dict(np.load(os.path.join(OUT, f"{case}-False-{r}.npz"))) for r in range(WORLD)]
            np.testing.assert_allclose(np.concatenate([s["outputs"] for s in synced]), large["outputs"], **close)
            # Each replica's input gradient carries every replica's loss (their sum); the
            # large batch's loss is their average.
            np.testing.assert_allclose(
                np.concatenate([s["inputs_grad"] for s in synced]) / WORLD, large["inputs_grad"], **close
            )
            for key in ("gamma_grad", "beta_grad"):
                averaged = np.mean([s[key] for s in synced], axis=0)
                np.testing.assert_allclose(averaged, large[key], **close)
            for key in ("moving_mean", "moving_variance"):
                np.testing.assert_array_equal(synced[0][key], synced[1][key], err_msg=case)
                np.testing.assert_allclose(synced[0][key], large[key], **close)
                # The replicas' own statistics differ from the global ones.
                assert not np.allclose(local[0][key], large[key], rtol=1e-2), (case, key)
                assert not np.allclose(local[1][key], large[key], rtol=1e-2), (case, key)
        print("GLOBAL")
    """
)


def _run(script, tmp_path, env):
    path = tmp_path / "script.py"
    path.write_text(script)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env}
    result = subprocess.run(
        [sys.executable, str(path), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "GLOBAL" in result.stdout


def test_jax_data_parallel_statistics_are_the_global_batch(tmp_path):
    # The host platform's device count is read when JAX starts.
    env = {
        "KERAS_BACKEND": "jax",
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
    }
    _run(JAX_SCRIPT, tmp_path, env)


def test_torch_distributed_synchronized_equals_one_large_batch(tmp_path):
    _run(TORCH_SCRIPT, tmp_path, {"KERAS_BACKEND": "torch", "CUDA_VISIBLE_DEVICES": ""})
