"""`python -m studies bench`: kerasnorm's layers timed beside Keras's built-ins.

For each shape (conv, dense, sequence), layer (BN, LN, GN, RMSNorm), mode (inference
forward; training forward+backward) and compilation (`tf.function`, and XLA with
`jit_compile=True`), the Keras layer and the kerasnorm layer run alternately, in one process,
`--repeats` times; a case's speed is the median of the pairwise time ratios (kerasnorm /
Keras), which cancels most of the machine's drift. One elementwise pass over the same tensor
is the floor, and a Conv/Dense + BN block is timed at inference with BN folded into the
kernel (`kerasnorm.fold_batch_norm`). Last, study throughput: the same small sweep run by
the executor with 1 and with 2 workers, in runs per minute over the whole wall time
(start-up included) and in the steady state after each worker's first run. And the
engine: 8 seeds of the study's MLP and CNN through the sweep against a plain Keras loop
(`--engine-only` runs just that).

Writes `<results>/bench.json`, which `python -m studies report` renders (table and figure).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

#: (batch, ...) shapes of the layer bench; `--tiny` swaps in small ones for tests.
SHAPES = {"conv": (128, 32, 32, 64), "dense": (256, 512), "sequence": (64, 128, 256)}
TINY_SHAPES = {"conv": (4, 4, 4, 8), "dense": (8, 16), "sequence": (2, 4, 8)}
LAYERS = ("BatchNormalization", "LayerNormalization", "GroupNormalization", "RMSNormalization")
#: The Keras backends the layer cases run under, each in processes of its own (Keras fixes
#: its backend at import).
BACKENDS = ("tensorflow", "jax", "torch")
#: The compilations timed per backend, as the rows' `xla` flag: TensorFlow in a
#: `tf.function` and under XLA; JAX always under XLA (`jax.jit`); PyTorch eagerly, Keras's
#: default there (`torch.compile` would compile each case for minutes on CPU).
COMPILATIONS = {"tensorflow": (False, True), "jax": (True,), "torch": (False,)}
#: Targets: kerasnorm / Keras time ratio, at most.
TARGET_BN_CONV_TRAIN = 0.6
#: "No slower than the built-in, within noise": a median ratio up to this counts as equal,
#: or up to the largest difference between two copies of the same Keras layer timed the
#: same way in the same run (`noise_band`), when that is larger.
NOISE_RATIO = 1.05
#: Each timing sample lasts at least this long (several calls of a fast case); `--tiny`,
#: a functional check, takes one call per sample.
MIN_SAMPLE_S = 0.05


def _min_sample_s(tiny):
    return 0.0 if tiny else MIN_SAMPLE_S


def time_alternating(functions, repeats, warmup=2, min_sample_s=0.0):
    """Calls each function of the dict `functions` in turn, `repeats` times after `warmup`
    rounds (the order rotates every round so neither side always runs first); returns
    {name: [seconds per call]}. Each call must return something whose `.numpy()` forces the
    computation to finish.

    With `min_sample_s`, each sample times as many consecutive calls as bring the slowest
    function to that duration (the count fixed after the warm-up, the same for every
    function) and reports the time per call: sub-millisecond calls then measure above
    the timer's and the scheduler's jitter, as `timeit` does.
    """
    names = list(functions)
    slowest = 0.0
    for _ in range(warmup):
        slowest = 0.0  # the last round's: the first carries tracing and compilation
        for fn in functions.values():
            start = time.perf_counter()
            _block(fn())
            slowest = max(slowest, time.perf_counter() - start)
    number = max(1, math.ceil(min_sample_s / slowest)) if min_sample_s and slowest > 0 else 1
    times = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            start = time.perf_counter()
            for _ in range(number):
                _block(functions[name]())
            times[name].append((time.perf_counter() - start) / number)
    return times


def _block(result):
    """Waits for `result` (or its first element): a TensorFlow tensor is read back, a
    JAX array waited for; PyTorch on CPU and NumPy values are already there."""
    first = result[0] if isinstance(result, (list, tuple)) else result
    if hasattr(first, "block_until_ready"):
        first.block_until_ready()
    elif hasattr(first, "numpy") and not hasattr(first, "requires_grad"):
        first.numpy()


def median_ratio(numerator, denominator):
    """Median of the pairwise ratios of two equally long lists of times."""
    return statistics.median(a / b for a, b in zip(numerator, denominator))


def machine():
    """The machine in words: processor, cores, OS, TensorFlow."""
    import tensorflow as tf

    cpu = platform.processor() or platform.machine()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, TensorFlow {tf.__version__}"


def _layer_pair(name, shape, control=False):
    """{"keras": ..., "kerasnorm": ...} built for `shape`; with `control`, also
    "keras_again", a second Keras layer (the A/A control of `noise_band`)."""
    import keras

    import kerasnorm

    kwargs = {"groups": 8} if name == "GroupNormalization" else {}
    pair = {"keras": getattr(keras.layers, name)(**kwargs), "kerasnorm": getattr(kerasnorm, name)(**kwargs)}
    if control:
        pair["keras_again"] = getattr(keras.layers, name)(**kwargs)
    for layer in pair.values():
        layer.build(shape)
    return pair


def _step(layer, x, train, xla):
    """TensorFlow: the layer's forward pass, or forward and backward from a fixed upstream
    gradient, in a `tf.function` (`xla`: compiled by XLA)."""
    import tensorflow as tf

    kwargs = {"training": True} if train else {}

    @tf.function(jit_compile=xla)
    def forward():
        return layer(x, **kwargs)

    # The backward pass starts from a fixed upstream gradient: no loss is computed, so
    # the time is the layer's own (a loss would add the same cost to both sides).
    upstream = tf.random.stateless_normal(x.shape, seed=(5, 6))

    @tf.function(jit_compile=xla)
    def forward_backward():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, **kwargs)
        return tape.gradient(y, [x] + layer.trainable_weights, output_gradients=upstream)

    return forward_backward if train else forward


def _model_step(layer, x, train):
    """JAX and PyTorch: a Keras model of the layer alone, compiled as Keras compiles on
    the backend (`jit_compile=True` under JAX; eager under PyTorch), its
    `train_on_batch` (SGD on the mean squared error to a fixed target: forward, backward
    and the update, the same on both sides) or `predict_on_batch`."""
    import keras

    inputs = keras.Input(tuple(x.shape[1:]), batch_size=x.shape[0])
    model = keras.Model(inputs, layer(inputs))
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="mse", jit_compile=keras.backend.backend() == "jax")
    if not train:
        return lambda: model.predict_on_batch(x)
    target = keras.random.normal(tuple(x.shape), seed=6)
    return lambda: model.train_on_batch(x, target)


def _floor(x, xla):
    """One elementwise pass over `x`, compiled as the cases are."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        elementwise = jax.jit(lambda v: v * 1.0001 + 0.5)
        return lambda: elementwise(x)
    if backend != "tensorflow":
        return lambda: x * 1.0001 + 0.5
    import tensorflow as tf

    @tf.function(jit_compile=xla)
    def elementwise():
        return x * 1.0001 + 0.5

    return elementwise


def noise_band(rows):
    """The ratio up to which kerasnorm counts as no slower than Keras: `NOISE_RATIO`, or
    the largest factor by which two copies of the same Keras layer differed in `rows`
    (`keras_vs_keras`, either way), whichever is larger. Identical computations compiled
    twice differ by a few percent on CPU, most under XLA; a kerasnorm ratio inside that
    spread is not a measured slowdown."""
    spread = [max(r["keras_vs_keras"], 1 / r["keras_vs_keras"]) for r in rows if r.get("keras_vs_keras")]
    return max([NOISE_RATIO] + spread)


def bench_layers(shapes, repeats, processes=1, tiny=False, backends=BACKENDS):
    """Rows: one per (backend, shape, layer, mode, compilation), judged against their
    targets.

    Each backend's cases are measured in `processes` fresh Python processes of that
    backend, one after another, and each quantity of a case is the median over the
    processes: the largest part of the noise is from one process to the next (each
    compiles and lays out its own functions), which alternating within a process cannot
    cancel.
    """
    rows = []
    for backend in backends:
        runs = []
        for _ in range(processes):
            with tempfile.TemporaryDirectory() as tmp:
                out = pathlib.Path(tmp) / "layers.json"
                command = [sys.executable, "-m", "studies.bench", "--layers-only", str(out), "--repeats", str(repeats)]
                env = dict(os.environ, KERAS_BACKEND=backend)
                subprocess.run(command + (["--tiny"] if tiny else []), check=True, env=env)
                runs.append(json.loads(out.read_text()))
        rows += combine_processes(runs)
    return judge(rows)


def combine_processes(runs):
    """One row per case from the rows of several processes (lists in the same order):
    each number the median over the processes; the ratios of every process kept too."""
    rows = []
    for case in zip(*runs):
        row = dict(case[0])
        for key, value in case[0].items():
            if isinstance(value, float):
                row[key] = statistics.median(r[key] for r in case)
        row["ratio_per_process"] = [r["ratio"] for r in case]
        row["keras_vs_keras_per_process"] = [r["keras_vs_keras"] for r in case]
        rows.append(row)
    return rows


def _backend(row):
    """The row's Keras backend; rows stored before the other backends were timed are
    TensorFlow's."""
    return row.get("backend", "tensorflow")


def judge(rows):
    """Sets each row's `target` (under TensorFlow, BN conv training's; else the
    `noise_band` of the row's backend), `met`, and `met_at_fixed_ratio` (against
    `NOISE_RATIO` alone). Rows without a backend are TensorFlow's."""
    backends = {_backend(r) for r in rows}
    bands = {b: round(noise_band([r for r in rows if _backend(r) == b]), 3) for b in backends}
    for r in rows:
        case = (r["layer"], r["shape"], r["mode"])
        special = _backend(r) == "tensorflow" and case == ("BatchNormalization", "conv", "train fwd+bwd")
        r["target"] = TARGET_BN_CONV_TRAIN if special else bands[_backend(r)]
        r["met"] = bool(r["ratio"] <= r["target"])
        r["met_at_fixed_ratio"] = bool(r["ratio"] <= min(r["target"], NOISE_RATIO))
    return rows


def measure_layers(shapes, repeats, min_sample_s=MIN_SAMPLE_S):
    """Unjudged rows of one process, under the Keras backend it runs (`COMPILATIONS`:
    `_step` under TensorFlow, `_model_step` elsewhere). Each case also times a second
    copy of the Keras layer (`keras_vs_keras`), the A/A control of `noise_band`."""
    import keras

    backend = keras.backend.backend()
    rows = []
    for shape_name, shape in shapes.items():
        x = keras.random.normal(shape, seed=1)
        for xla in COMPILATIONS[backend]:
            floor = time_alternating({"floor": _floor(x, xla)}, repeats, min_sample_s=min_sample_s)["floor"]
            for layer_name in LAYERS:
                for train in (False, True):
                    pair = _layer_pair(layer_name, shape, control=True)
                    if backend == "tensorflow":
                        fns = {k: _step(layer, x, train, xla) for k, layer in pair.items()}
                    else:
                        fns = {k: _model_step(layer, x, train) for k, layer in pair.items()}
                    times = time_alternating(fns, repeats, min_sample_s=min_sample_s)
                    ratio = median_ratio(times["kerasnorm"], times["keras"])
                    rows.append(
                        {
                            "backend": backend,
                            "shape": shape_name,
                            "layer": layer_name,
                            "mode": "train fwd+bwd" if train else "inference fwd",
                            "xla": xla,
                            "keras_ms": 1e3 * statistics.median(times["keras"]),
                            "kerasnorm_ms": 1e3 * statistics.median(times["kerasnorm"]),
                            "floor_ms": 1e3 * statistics.median(floor),
                            "ratio": ratio,
                            "keras_vs_keras": median_ratio(times["keras_again"], times["keras"]),
                        }
                    )
                    print(_row_text(rows[-1]), flush=True)
    return rows


def bench_folding(shapes, repeats, min_sample_s=MIN_SAMPLE_S):
    """Conv2D/Dense + BN at inference: Keras's BN, kerasnorm's BN, and BN folded away."""
    import keras
    import tensorflow as tf

    import kerasnorm

    rows = []
    blocks = {
        "conv": (shapes["conv"][:1] + (16, 16, shapes["conv"][-1]), lambda: keras.layers.Conv2D(shapes["conv"][-1], 3, padding="same")),
        "dense": (shapes["dense"], lambda: keras.layers.Dense(shapes["dense"][-1])),
    }
    for block_name, (shape, linear) in blocks.items():
        x = tf.random.stateless_normal(shape, seed=(3, 4))
        models = {}
        for name, norm in (("keras", keras.layers.BatchNormalization), ("kerasnorm", kerasnorm.BatchNormalization)):
            keras.utils.set_random_seed(0)
            models[name] = keras.Sequential([keras.Input(shape[1:]), linear(), norm()])
        models["folded"] = kerasnorm.fold_batch_norm(models["kerasnorm"])
        for xla in (False, True):
            fns = {name: tf.function(lambda m=m: m(x, training=False), jit_compile=xla) for name, m in models.items()}
            times = time_alternating(fns, repeats, min_sample_s=min_sample_s)
            rows.append(
                {
                    "block": f"{block_name} + BN",
                    "xla": xla,
                    "keras_ms": 1e3 * statistics.median(times["keras"]),
                    "kerasnorm_ms": 1e3 * statistics.median(times["kerasnorm"]),
                    "folded_ms": 1e3 * statistics.median(times["folded"]),
                    "folded_vs_keras": median_ratio(times["folded"], times["keras"]),
                }
            )
            print(rows[-1], flush=True)
    return rows


#: Target: 2 workers give at least this multiple of 1 worker's throughput.
TARGET_SPEEDUP_2_WORKERS = 1.7


def throughput_configs(tiny):
    """A small sweep of typical study runs: MLP and 1-D CNN on MNIST-1D with BN and LN,
    sized like the full profile's average run (about 3 s of one core)."""
    from studies.engine.config import RunConfig, grid

    base = RunConfig(claim="bench", num_samples=500 if tiny else 4000, epochs=1 if tiny else 4)
    seeds = [0] if tiny else list(range(6))
    return grid(base, model=["mlp", "cnn1d"], norm=["batch", "layer"], seed=seeds)


def steady_rate(arrivals, workers):
    """Runs per minute once every worker has finished its first run (which carries its
    start-up: process, imports, first traces): the runs after the first `workers`
    arrivals, over the time since the last of them. NaN with no run after that."""
    if len(arrivals) <= workers or arrivals[-1] <= arrivals[workers - 1]:
        return float("nan")
    return 60 * (len(arrivals) - workers) / (arrivals[-1] - arrivals[workers - 1])


def bench_throughput(executor, tiny):
    """Runs per minute of `throughput_configs` with 1 and 2 workers (fresh stores): over
    the whole wall time, and in the steady state (`steady_rate`)."""
    from studies.engine import sweep
    from studies.engine.store import ResultsStore

    class TimedStore(ResultsStore):
        """Notes when each row arrives."""

        def __init__(self, root):
            super().__init__(root)
            self.arrivals = []

        def write(self, row):
            self.arrivals.append(time.perf_counter())
            return super().write(row)

    configs = throughput_configs(tiny)
    rows = []
    for jobs in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            store = TimedStore(tmp)
            start = time.perf_counter()
            summary = sweep.run_sweep(configs, store, executor=executor, jobs=jobs, progress_stream=open(os.devnull, "w"))
            wall = time.perf_counter() - start
        rows.append(
            {
                "executor": executor,
                "workers": jobs,
                "runs": summary.ok,
                "wall_s": wall,
                "runs_per_min": 60 * summary.ok / wall,
                "steady_runs_per_min": steady_rate(store.arrivals, jobs),
            }
        )
        print(rows[-1], flush=True)
    for r in rows:
        r["wall_speedup_vs_1"] = r["runs_per_min"] / rows[0]["runs_per_min"]
        r["speedup_vs_1"] = r["steady_runs_per_min"] / rows[0]["steady_runs_per_min"]
    rows[1]["target"] = TARGET_SPEEDUP_2_WORKERS
    rows[1]["met"] = bool(rows[1]["speedup_vs_1"] >= TARGET_SPEEDUP_2_WORKERS)
    return rows


#: Targets: the engine's wall time for a sweep of 8 seeds, per model, at most this fraction
#: of a plain Keras loop's over the same seeds.
TARGETS_ENGINE_VS_PLAIN = {"mlp": 0.15, "cnn1d": 0.20, "lstm": 0.30}


def engine_configs(model, tiny):
    """The 8 seeds of one study arm: the study's MLP as C1 runs it (3x100, BN, SGD with
    momentum, batch 32, 25 evaluations every 50 steps: 1250 steps), the 1-D CNN as C7
    does (BN, 4000 samples, 8 epochs) or the LSTM as C5 does (64 units, Cooijmans's BN
    cell with per-step statistics, on masked token sequences of 5 to 20 steps, the test
    split up to 40; 2000 samples, 6 epochs); `tiny`: a few steps of small ones."""
    from studies.engine import stacked
    from studies.engine.config import RunConfig, grid

    if model == "mlp":
        base = RunConfig(claim="bench", model="mlp", norm="batch", widths=(100, 100, 100), learning_rate=0.1,
                         steps_per_epoch=5 if tiny else 50, epochs=2 if tiny else 25, num_samples=500 if tiny else None)
    elif model == "cnn1d":
        base = RunConfig(claim="bench", model="cnn1d", norm="batch", learning_rate=0.05,
                         num_samples=300 if tiny else 4000, epochs=1 if tiny else 8)  # fmt: skip
    else:
        lengths = {"data.min_len": 5, "data.max_train_len": 20, "data.max_test_len": 40}
        base = RunConfig(claim="bench", dataset="sequences", model="rnn", cell="lstm", norm="batch",
                         widths=(8,) if tiny else (64,), learning_rate=0.05, batch_size=32,
                         num_samples=200 if tiny else 2000, epochs=1 if tiny else 6, options=lengths)  # fmt: skip
    return grid(base, seed=list(range(stacked.MEMBERS)))


def plain_keras_loop(configs):
    """The seeds as a careful user trains them one by one: for each, a clean session, the
    seed set, the model built and compiled (several steps per compiled call), and `fit`
    over a shuffled `tf.data` pipeline with the test set evaluated after each epoch.
    Returns ``(wall_s, train_s)``, `train_s` being `fit`'s time less its evaluations."""
    import keras

    from studies.engine import training

    class EvalTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.eval_s, self._start = 0.0, 0.0

        def on_test_begin(self, logs=None):
            self._start = time.perf_counter()

        def on_test_end(self, logs=None):
            self.eval_s += time.perf_counter() - self._start

    start = time.perf_counter()
    train_s = 0.0
    for config in configs:
        keras.backend.clear_session()
        keras.utils.set_random_seed(config.seed)
        dataset = training.load_dataset(config)
        steps = training.epoch_steps(config, dataset)
        model = training.build(config, dataset)
        model.compile(
            optimizer=keras.optimizers.SGD(config.learning_rate, momentum=config.momentum),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
            steps_per_execution=max(d for d in range(1, min(steps, 32) + 1) if steps % d == 0),
        )
        train = training.tf_dataset(dataset, "train", config.batch_size, config.seed, repeat=True)
        test = training.tf_dataset(dataset, "test", training.EVAL_BATCH_SIZE)
        timer = EvalTimer()
        fit_start = time.perf_counter()
        model.fit(train, epochs=config.epochs, steps_per_epoch=steps, validation_data=test, shuffle=False,
                  callbacks=[timer], verbose=0)
        train_s += time.perf_counter() - fit_start - timer.eval_s
    return time.perf_counter() - start, train_s


def engine_sweep(configs):
    """The same seeds through `studies.engine.sweep.run_sweep` (one worker, in this process, a
    fresh store, no compiled model kept from before). Returns ``(wall_s, train_s)``, the
    training time summed over the rows."""
    from studies.engine import stacked, sweep
    from studies.engine.store import ResultsStore, load_rows

    stacked._TRAINERS.clear()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        sweep.run_sweep(configs, ResultsStore(tmp), progress_stream=open(os.devnull, "w"))
        wall_s = time.perf_counter() - start
        rows = load_rows(tmp)
    if set(rows["status"]) != {"ok"}:
        raise RuntimeError(f"the engine's bench sweep failed: {rows['error'].dropna().iloc[0]}")
    return wall_s, float(rows["time/train_s"].sum())


def bench_engine(tiny, repeats):
    """The engine against `plain_keras_loop` on the same 8 seeds of the study's MLP and 1-D
    CNN, alternating `repeats` times; medians of the wall times and of the overheads (the
    share of the wall time not spent training)."""
    rows = []
    for model, target in TARGETS_ENGINE_VS_PLAIN.items():
        configs = engine_configs(model, tiny)
        times = {"plain": [], "engine": []}
        for i in range(repeats):
            for side in (("plain", "engine") if i % 2 == 0 else ("engine", "plain")):
                times[side].append(plain_keras_loop(configs) if side == "plain" else engine_sweep(configs))
        wall = {side: statistics.median(w for w, _ in t) for side, t in times.items()}
        overhead = {side: statistics.median(1 - s / w for w, s in t) for side, t in times.items()}
        ratio = statistics.median(e[0] / p[0] for e, p in zip(times["engine"], times["plain"]))
        rows.append(
            {
                "model": model,
                "seeds": len(configs),
                "steps_per_seed": configs[0].epochs * (configs[0].steps_per_epoch or 0) or None,
                "epochs": configs[0].epochs,
                "repeats": repeats,
                "plain_wall_s": wall["plain"],
                "engine_wall_s": wall["engine"],
                "ratio": ratio,
                "plain_overhead": overhead["plain"],
                "engine_overhead": overhead["engine"],
                "target": target,
                "met": bool(ratio <= target),
            }
        )
        print(rows[-1], flush=True)
    return rows


ENGINE_DESCRIPTION = (
    "The study engine (`studies.engine.sweep.run_sweep`, one worker: the 8 seeds train as the members "
    "of one stacked model) against a plain Keras loop over the same 8 seeds (per seed: clean "
    "session, build, compile, `fit` with the test set evaluated after each epoch), alternating "
    "the two; medians over the repeats of the wall times, of the ratio engine / plain, and of "
    "the overheads (1 - training time / wall time). Targets: the engine at most "
    + ", ".join(f"{t}x the plain loop's wall time for the {m.upper()}" for m, t in TARGETS_ENGINE_VS_PLAIN.items())
    + "."
)


def _row_text(r):
    return (
        f"{_backend(r):10s} {r['shape']:8s} {r['layer']:19s} {r['mode']:14s} xla={str(r['xla']):5s} keras {r['keras_ms']:8.2f} ms"
        f"  kerasnorm {r['kerasnorm_ms']:8.2f} ms  ratio {r['ratio']:.3f}, keras/keras {r['keras_vs_keras']:.3f}"
    )


DESCRIPTION = (
    "Each backend times its cases its own way: TensorFlow the layer alone in a `tf.function` "
    "and under XLA (`xla`), training as forward and backward from a fixed upstream gradient; "
    "JAX (always XLA) and PyTorch (eager, Keras's default there) a Keras model of the layer "
    "alone, `predict_on_batch`, and `train_on_batch` with SGD on the mean squared error. "
    "Median time of one call and the median of pairwise time ratios (kerasnorm / Keras), "
    "alternating the two in one process, each sample at least "
    f"{int(MIN_SAMPLE_S * 1000)} ms long (consecutive calls of a fast case, time per call "
    "reported; one call with `--tiny`, a functional check); `floor_ms` is one elementwise pass over the same tensor. Each "
    "backend's cases run in {processes} process(es), one after another; every number of the table is the "
    "median over them (`ratio_per_process` in bench.json keeps each). Each case also "
    "times a second copy of the Keras layer, alternating with the other two: "
    "`keras_vs_keras` is its median ratio to the first, the spread between identical "
    "computations. Targets: under TensorFlow, BatchNormalization training on the conv "
    f"shape at most {TARGET_BN_CONV_TRAIN}x the built-in's time; every other case no slower than "
    f"the built-in within noise: a ratio at most {NOISE_RATIO}, or at most the largest "
    "`keras_vs_keras` of the backend's cases (either way, as a factor) when that is larger "
    "(the `target` column). `met_at_fixed_ratio` applies the fixed "
    f"{NOISE_RATIO} alone."
)


def run(shapes, repeats, executor="ray", tiny=False, processes=1, backends=BACKENDS):
    """Runs the three benchmarks (the layers under each of `backends`); returns the
    JSON-ready result."""
    layer_rows = bench_layers(shapes, repeats, processes, tiny, backends)
    folding_rows = bench_folding(shapes, repeats, _min_sample_s(tiny))
    throughput_rows = bench_throughput(executor, tiny)
    return {
        "description": DESCRIPTION.format(processes=processes),
        "processes": processes,
        "backends": list(backends),
        "machine": machine(),
        "repeats": repeats,
        "shapes": {k: list(v) for k, v in shapes.items()},
        "table": layer_rows,
        "folding": folding_rows,
        "throughput": throughput_rows,
        "figures": {
            "fig-bench-layers": "Time ratio kerasnorm / Keras per case (median of pairwise "
            "ratios; below 1 is faster); the dashed line marks parity.",
        },
    }


def figures(bench, out_dir):
    """Draws the ratio per case from a stored bench result; returns the written paths."""
    import pandas

    from studies.report import plots

    table = pandas.DataFrame(bench["table"])
    if "backend" not in table:
        table["backend"] = "tensorflow"
    table["case"] = table["shape"] + " " + table["mode"].str.split().str[0]
    # One panel per backend and compilation, in `COMPILATIONS`' order.
    panels = [
        (backend, xla)
        for backend, flags in COMPILATIONS.items()
        for xla in flags
        if ((table["backend"] == backend) & (table["xla"] == xla)).any()
    ]
    fig, axes = plots.new_axes(width=4.2, height=3.4, ncols=len(panels))
    axes = axes if isinstance(axes, list) else [axes]
    names = {"tensorflow": "TensorFlow", "jax": "JAX", "torch": "PyTorch"}
    for ax, (backend, xla) in zip(axes, panels):
        part = table[(table["backend"] == backend) & (table["xla"] == xla)]
        cases = sorted(part["case"].unique())
        for i, layer in enumerate(LAYERS):
            sub = part[part["layer"] == layer].set_index("case").reindex(cases)
            ax.scatter(sub["ratio"], range(len(cases)), color=plots.OKABE_ITO[i], label=layer.replace("Normalization", ""), s=18)
        ax.axvline(1.0, color="#444444", linestyle="--", linewidth=1)
        ax.set_yticks(range(len(cases)))
        ax.set_yticklabels(cases, fontsize=7)
        ax.set_xlabel("time ratio kerasnorm / Keras (1 = parity)")
        compiled = {"tensorflow": "XLA" if xla else "tf.function", "jax": "XLA", "torch": "eager"}[backend]
        ax.set_title(f"{names[backend]}, {compiled}", fontsize=9)
    axes[0].legend(fontsize=7, frameon=False)
    columns = ["backend", "shape", "layer", "mode", "xla", "ratio"]
    plotted = table[columns].sort_values(["backend", "xla", "shape", "layer", "mode"])
    return plots.save_figure(fig, "fig-bench-layers", out_dir, plotted)


def write(result, results_dir):
    """Writes `bench.json` atomically under `results_dir`."""
    from studies.engine.store import write_text

    return write_text(pathlib.Path(results_dir) / "bench.json", json.dumps(result, indent=1, sort_keys=True) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m studies bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=pathlib.Path, default=pathlib.Path("reports/results"))
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per side (default 15)")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (a functional check, not a benchmark)")
    parser.add_argument("--executor", choices=("ray", "local"), default="ray",
                        help="executor whose 1- and 2-worker throughput is measured (default ray)")
    parser.add_argument("--processes", type=int, default=3,
                        help="fresh processes the layer cases run in, one after another; the "
                        "table gives the median over them (default 3)")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS),
                        help="Keras backends the layer cases run under (default: all three)")
    parser.add_argument("--layers-only", type=pathlib.Path, help=argparse.SUPPRESS)
    parser.add_argument("--engine-only", action="store_true",
                        help="only the engine against a plain Keras loop (`engine` in bench.json, "
                        "the rest of an existing bench.json kept)")
    parser.add_argument("--engine-repeats", type=int, default=3,
                        help="alternations of the engine and the plain loop (default 3)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, not {args.repeats}")
    if args.processes < 1:
        parser.error(f"--processes must be at least 1, not {args.processes}")
    if args.engine_repeats < 1:
        parser.error(f"--engine-repeats must be at least 1, not {args.engine_repeats}")
    shapes = TINY_SHAPES if args.tiny else SHAPES
    if args.layers_only:  # one process of `bench_layers`
        args.layers_only.write_text(json.dumps(measure_layers(shapes, args.repeats, _min_sample_s(args.tiny))))
        return 0
    engine = {"description": ENGINE_DESCRIPTION, "table": bench_engine(args.tiny, args.engine_repeats)}
    if args.engine_only:
        previous = args.results / "bench.json"
        result = json.loads(previous.read_text()) if previous.exists() else {"machine": machine()}
        result["engine"] = engine
        path = write(result, args.results)
        ratios = ", ".join(f"{r['model']} {r['ratio']:.2f}x" for r in engine["table"])
        print(f"engine / plain Keras loop: {ratios}; wrote {path}")
        return 0
    result = run(shapes, args.repeats, args.executor, args.tiny, args.processes, args.backends)
    result["engine"] = engine
    path = write(result, args.results)
    met = sum(r["met"] for r in result["table"])
    fixed = sum(r["met_at_fixed_ratio"] for r in result["table"])
    print(f"{met}/{len(result['table'])} cases meet their target ({fixed} at the fixed {NOISE_RATIO}); wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
