"""Training one run: the engine's default task, ``train``, and the helpers a claim's own
task reuses::

    from studies.engine import tasks, training

    @tasks.register_task("c2_eval_statistics")
    def eval_statistics(config):
        row = training.base_row(config)
        dataset, model = training.prepare(config)
        row.update(training.fit_and_log(config, dataset, model))
        row["c2/accuracy_population"] = ...   # the claim's own measurements
        return row

A run whose loss becomes NaN or infinite is a result, not a failure: training stops,
``diverged`` is True and the metrics from that epoch on are NaN. Rows are
JSON-serializable: numbers, strings, lists, None (NaN stays NaN).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import math
import os
import platform
import subprocess
import time

import keras
import numpy as np
import tensorflow as tf

from studies.engine import data, models
from studies.engine.config import DATA_PREFIX, EVAL_BATCH_SIZE, MODEL_PREFIX, RunConfig
from studies.engine.tasks import register_task

# ---------------------------------------------------------------------------------------
# Rows.


@functools.lru_cache(maxsize=1)
def _environment() -> dict:
    """Provenance columns: package versions (``python``, ``tensorflow``, ``keras``,
    ``numpy``, ``kerasnorm``), the machine (``machine``, ``cpu_count``; no host name: rows
    are committed) and the code (``commit``: ``git describe --always --dirty``, or None)."""

    def version(package):
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    columns = {"python": platform.python_version()}
    columns.update({p: version(p) for p in ("tensorflow", "keras", "numpy", "kerasnorm")})
    columns["machine"] = f"{platform.platform()}, {os.cpu_count()} CPUs"
    columns["cpu_count"] = os.cpu_count()
    columns["commit"] = _git_commit()
    return columns


def _git_commit():
    try:
        result = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=os.path.dirname(os.path.abspath(__file__)),
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def base_row(config: RunConfig) -> dict:
    """The columns every row has: the config's fields (``opt/<name>`` per option), its
    ``key``, provenance (`_environment`), ``status`` (``ok`` unless the run fails) and
    ``error``."""
    fields = config.to_dict()
    options = fields.pop("options")
    row = dict(fields)
    row.update({f"opt/{k}": v for k, v in options.items()})
    row["key"] = config.key()
    row.update(_environment())
    row["status"] = "ok"
    row["error"] = None
    return row


# ---------------------------------------------------------------------------------------
# Training helpers, for the default task and for claims' own tasks.


def configure_determinism(seed):
    """Seeds Python, numpy, TensorFlow and Keras, and makes TensorFlow's ops deterministic
    (measured: no slower on CPU for these models)."""
    keras.utils.set_random_seed(int(seed))
    tf.config.experimental.enable_op_determinism()


def load_dataset(config: RunConfig) -> data.Dataset:
    """The config's dataset, flattened for MLPs, with its ``data.*`` options."""
    return data.load(
        config.dataset,
        config.num_samples,
        flat=config.model == "mlp",
        **config.prefixed_options(DATA_PREFIX),
    )


def model_arguments(config: RunConfig, dataset: data.Dataset) -> dict:
    """The keyword arguments of `studies.engine.models.build_model` for `config` and `dataset`
    (after its kind, input shape, class count and norm), with the ``model.*`` options."""
    return dict(
        activation=config.activation,
        widths=config.widths,
        dropout=config.dropout,
        cell=config.cell,
        masked=dataset.mask_train is not None,
        max_steps=dataset.x_train.shape[1] if config.model == "rnn" else None,
        momentum=config.bn_momentum,
        virtual_batch_size=config.virtual_batch_size,
        renorm_clipping={"rmax": config.renorm_rmax, "dmax": config.renorm_dmax},
        renorm_momentum=config.renorm_momentum,
        **config.prefixed_options(MODEL_PREFIX),
    )


def build(config: RunConfig, dataset: data.Dataset):
    """The config's model for `dataset`, uncompiled, with its ``model.*`` options."""
    return models.build_model(
        config.model, dataset.input_shape, dataset.num_classes, config.norm, **model_arguments(config, dataset)
    )


class StepRates(keras.optimizers.schedules.LearningRateSchedule):
    """A learning rate per optimizer step from a table (the last one after its end): the
    schedule the stacked engine reads step by step (`Stacking.learning_rates`), for a
    standalone run to read the very same numbers.

    Args:
        rates: the rate of step 0, 1, ...
    """

    def __init__(self, rates):
        self.rates = np.asarray(rates, np.float32)
        if self.rates.ndim != 1 or not len(self.rates) or not np.isfinite(self.rates).all():
            raise ValueError(f"StepRates needs a non-empty 1-D table of finite rates. Received: shape {self.rates.shape}")

    def __call__(self, step):
        last = len(self.rates) - 1
        return keras.ops.take(self.rates, keras.ops.minimum(keras.ops.cast(step, "int32"), last))

    def get_config(self):
        return {"rates": self.rates.tolist()}


def make_optimizer(config: RunConfig):
    """The config's optimizer: SGD with its momentum, or Adam."""
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(config.learning_rate, momentum=config.momentum)
    return keras.optimizers.Adam(config.learning_rate)


def compile_model(config: RunConfig, model, steps_per_execution=1):
    """Compiles with the config's optimizer, cross-entropy on logits and accuracy."""
    model.compile(
        optimizer=make_optimizer(config),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        # No XLA for a run alone: TensorFlow has no deterministic XLA kernel for some of
        # these models' gradients (max pooling's), and rows must be reproducible. The
        # stacked engine compiles with XLA because its models avoid those ops
        # (`studies.engine.stacked_layers.PairMaxPooling`).
        jit_compile=False,
        steps_per_execution=steps_per_execution,
    )
    model.optimizer.build(model.trainable_variables)
    return model


def prepare(config: RunConfig):
    """Seeds everything, loads the data and builds and compiles the model.

    Returns ``(dataset, model)``; the model is compiled to run several steps per call
    where an epoch allows (see `fit_and_log`). Clears Keras's global state first, so a
    process running many configs in turn neither grows nor lets one run's layer names and
    compiled functions leak into the next."""
    keras.backend.clear_session()
    # Every run compiles new functions; TensorFlow counts their first traces across models
    # and would warn of "excessive retracing" after a few runs.
    tf.get_logger().setLevel("ERROR")
    configure_determinism(config.seed)
    dataset = load_dataset(config)
    model = build(config, dataset)
    compile_model(config, model, steps_per_execution=_steps_per_execution(epoch_steps(config, dataset)))
    return dataset, model


def epoch_steps(config: RunConfig, dataset: data.Dataset) -> int:
    """Optimizer steps per logged epoch."""
    if config.steps_per_epoch:
        return config.steps_per_epoch
    steps = len(dataset.x_train) // config.batch_size
    if steps == 0:
        raise ValueError(
            f"The batch size is larger than the training set. Received: "
            f"batch_size={config.batch_size}, training examples={len(dataset.x_train)}"
        )
    return steps


def _steps_per_execution(steps, most=32):
    """Largest divisor of an epoch's steps up to `most`: several steps per compiled call
    (measured: ~1.7x faster epochs for a small MLP) while epochs still end exactly."""
    return max(d for d in range(1, min(steps, most) + 1) if steps % d == 0)


def inputs(dataset: data.Dataset, split: str):
    """Model inputs of a split (``train`` or ``test``): ``x``, or ``[x, mask]``."""
    x = getattr(dataset, f"x_{split}")
    mask = getattr(dataset, f"mask_{split}")
    return x if mask is None else (x, mask)


def tf_dataset(dataset: data.Dataset, split: str, batch_size: int, shuffle_seed=None, repeat=False,
               reshuffle=True):
    """A `tf.data` pipeline over a split: shuffled with `shuffle_seed` (anew each pass,
    deterministically; with ``reshuffle=False`` once, the same order every pass) and with
    fixed-size batches when training, in order otherwise."""
    ds = tf.data.Dataset.from_tensor_slices((inputs(dataset, split), getattr(dataset, f"y_{split}")))
    training = shuffle_seed is not None
    if training:
        ds = ds.shuffle(len(dataset.x_train), seed=int(shuffle_seed), reshuffle_each_iteration=bool(reshuffle))
    if repeat:
        ds = ds.repeat()
    return ds.batch(batch_size, drop_remainder=training).prefetch(2)


class _Recorder(keras.callbacks.Callback):
    """Times evaluation, counts steps and collects each epoch's logs; with
    `eval_train_data`, evaluates it (inference mode) after each epoch."""

    def __init__(self, eval_train_data=None):
        super().__init__()
        self.eval_train_data = eval_train_data
        self.epochs, self.steps, self.eval_s = [], 0, 0.0
        self._epoch_steps = 0
        self._test_start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self._epoch_steps = batch + 1

    def on_test_begin(self, logs=None):
        self._test_start = time.perf_counter()

    def on_test_end(self, logs=None):
        self.eval_s += time.perf_counter() - self._test_start

    def on_epoch_end(self, epoch, logs=None):
        self.steps += self._epoch_steps
        logs = dict(logs or {})
        if self.eval_train_data is not None:
            start = time.perf_counter()
            train_eval = self.model.evaluate(self.eval_train_data, verbose=0, return_dict=True)
            self.eval_s += time.perf_counter() - start
            logs.update({f"train_eval_{k}": v for k, v in train_eval.items()})
        self.epochs.append(logs)


#: Per-epoch metrics of a row: row column -> Keras log name.
EPOCH_METRICS = {
    "train/loss": "loss",
    "train/accuracy": "accuracy",
    "test/loss": "val_loss",
    "test/accuracy": "val_accuracy",
}
#: With ``eval_train``: the training set evaluated in inference mode after each epoch.
TRAIN_EVAL_METRICS = {"train_eval/loss": "train_eval_loss", "train_eval/accuracy": "train_eval_accuracy"}


def fit_and_log(config: RunConfig, dataset, model, callbacks=None, eval_train=None) -> dict:
    """Trains a `prepare`d model for ``config.epochs`` and returns the metric columns.

    Columns: per-epoch lists `EPOCH_METRICS` (training loss/accuracy are the means over
    the epoch's batches in training mode; test ones are after the epoch, inference mode),
    ``final/<metric>`` (the last epoch's), ``steps`` (optimizer steps run),
    ``epoch_steps``, ``diverged``, ``time/build_s`` (the first step's tracing: add the
    model's build time to it), ``time/train_s`` and ``time/eval_s``. With `eval_train`
    (default: option ``eval_train``) also `TRAIN_EVAL_METRICS`.

    Tracing is paid before training, on a throwaway step whose effects on the weights,
    the optimizer and the random state are undone, so ``time/train_s`` is steady-state.
    Extra Keras `callbacks` see batch ends once per compiled call (several steps): compile
    with ``steps_per_execution=1`` (`compile_model`) where a callback needs every step.
    """
    if eval_train is None:
        eval_train = bool(config.option("eval_train", False))
    steps = epoch_steps(config, dataset)
    repeat = config.steps_per_epoch is not None
    # Option ``fixed_batches``: shuffled once, so every pass repeats the same batches (C3).
    reshuffle = not config.option("fixed_batches", False)
    train_ds = tf_dataset(dataset, "train", config.batch_size, shuffle_seed=config.seed, repeat=repeat,
                          reshuffle=reshuffle)
    test_ds = tf_dataset(dataset, "test", EVAL_BATCH_SIZE)
    train_eval_ds = tf_dataset(dataset, "train", EVAL_BATCH_SIZE) if eval_train else None

    start = time.perf_counter()
    _trace(model, dataset, config.batch_size, test_ds)
    build_s = time.perf_counter() - start

    recorder = _Recorder(train_eval_ds)
    start = time.perf_counter()
    model.fit(
        train_ds,
        shuffle=False,  # tf_dataset shuffles, with the run's seed
        epochs=config.epochs,
        steps_per_epoch=steps if repeat else None,
        validation_data=test_ds,
        callbacks=[keras.callbacks.TerminateOnNaN(), recorder, *(callbacks or [])],
        verbose=0,
    )
    fit_s = time.perf_counter() - start

    names = {**EPOCH_METRICS, **(TRAIN_EVAL_METRICS if eval_train else {})}
    columns = {column: [float(e.get(log, math.nan)) for e in recorder.epochs] for column, log in names.items()}
    return metric_columns(
        config, columns, recorder.steps, steps, build_s, fit_s - recorder.eval_s, recorder.eval_s
    )


def metric_columns(config: RunConfig, columns, steps, epoch_steps, build_s, train_s, eval_s) -> dict:
    """A run's metric columns (see `fit_and_log`) from its per-epoch `columns` (column ->
    values of the epochs run): after the first epoch whose training loss is not finite,
    every value is NaN (``diverged``); epochs not run are NaN."""
    columns = {column: list(values) for column, values in columns.items()}
    diverged = not all(math.isfinite(v) for v in columns["train/loss"])
    if diverged:
        first_bad = next(i for i, v in enumerate(columns["train/loss"]) if not math.isfinite(v))
        for values in columns.values():
            values[first_bad:] = [math.nan] * (len(values) - first_bad)
    for values in columns.values():
        values.extend([math.nan] * (config.epochs - len(values)))
    row = dict(columns)
    row.update({f"final/{column}": values[-1] for column, values in columns.items()})
    row.update(
        {
            "steps": steps,
            "epoch_steps": epoch_steps,
            "diverged": diverged,
            "time/build_s": build_s,
            "time/train_s": train_s,
            "time/eval_s": eval_s,
        }
    )
    return row


def _trace(model, dataset, batch_size, test_ds):
    """Runs one compiled training call and one evaluation batch so that tracing happens
    here, then restores every variable (weights, optimizer, seed generators)."""
    variables = list(model.variables) + list(model.optimizer.variables)
    saved = [v.numpy() for v in variables]
    n = batch_size * model.steps_per_execution
    first = dataclasses.replace(
        dataset,
        x_train=dataset.x_train[:n],
        y_train=dataset.y_train[:n],
        mask_train=None if dataset.mask_train is None else dataset.mask_train[:n],
    )
    # Shuffling with a seed of its own keeps the run's shuffle order untouched.
    warmup = tf_dataset(first, "train", batch_size, shuffle_seed=0, repeat=True)
    model.fit(warmup, shuffle=False, epochs=1, steps_per_epoch=model.steps_per_execution, verbose=0)
    model.evaluate(test_ds.take(1), verbose=0)
    for variable, value in zip(variables, saved):
        variable.assign(value)


@register_task("train", stackable=True)
def train(config: RunConfig) -> dict:
    """The default task: train, evaluate after each epoch, log."""
    row = base_row(config)
    start = time.perf_counter()
    dataset, model = prepare(config)
    prepare_s = time.perf_counter() - start
    row.update(fit_and_log(config, dataset, model))
    row["time/build_s"] += prepare_s
    return row
