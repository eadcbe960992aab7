"""One run of the study: a frozen `RunConfig` in, one long-form result row (a dict) out.

A run is carried out by a *task*, looked up by name in `TASKS`. The default task,
``train``, trains a model and logs per-epoch metrics; a claim module that must measure
something else registers its own task and reuses the helpers here::

    from studies import training

    @training.register_task("c2_eval_statistics")
    def eval_statistics(config):
        row = training.base_row(config)
        dataset, model = training.prepare(config)
        row.update(training.fit_and_log(config, dataset, model))
        row["c2/accuracy_population"] = ...   # the claim's own measurements
        return row

A task registered with ``stackable=True`` (the default ``train`` task is) declares that its
row is the default training's, so the sweep may train its configs as the members of one
stacked model instead (`studies.stacked`). A task that trains with a learning-rate schedule
or measures the trained model afterwards registers a `Stacking` that says how (the rates
per step, a ``finish`` hook on each member's trained model); other tasks always run as
written.

`run(config)` looks the task up (importing the claim's module, which registers its tasks,
when needed), times it, and turns an exception into a row with ``status="error"``: a sweep
records a failure and goes on. A run whose loss becomes NaN or infinite is a result, not a
failure: training stops, ``diverged`` is True and the metrics from that epoch on are NaN.

Rows are JSON-serializable: numbers, strings, lists, None (NaN stays NaN).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import time
import traceback
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from studies import data, models

OPTIMIZERS = ("sgd", "adam")
#: Batch size used for evaluation (in inference mode it does not change the results).
EVAL_BATCH_SIZE = 1000
#: Options with these prefixes are routed: ``data.<name>`` to `studies.data.load`,
#: ``model.<name>`` to `studies.models.build_model`. Other options are free for tasks.
DATA_PREFIX, MODEL_PREFIX = "data.", "model."


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that defines one run; its `key()` names the stored result.

    Claim-specific settings go in `options`, a tuple of ``(name, value)`` pairs (a dict is
    accepted and sorted): ``data.*`` and ``model.*`` names are passed to the dataset and
    model builders (e.g. ``("data.max_test_len", 160)``, ``("model.share_statistics",
    True)``); others are read by the run's task (`option`).
    """

    claim: str
    task: str = "train"
    # Data.
    dataset: str = "mnist1d"  # studies.data.NAMES
    num_samples: int | None = None  # examples in total, 80% train; None: the dataset's default
    # Model.
    model: str = "mlp"  # studies.models.KINDS
    norm: str = "none"  # studies.models.NORMS
    activation: str = "relu"
    widths: tuple[int, ...] | None = None  # units (mlp), filters (cnn), (units,) (rnn)
    cell: str = "gru"  # rnn only: gru | lstm
    dropout: float = 0.0  # rate after each hidden layer
    bn_momentum: float = 0.99  # momentum of the batch norms' moving statistics
    virtual_batch_size: int | None = None  # ghost batch size, for norm="ghost"
    renorm_rmax: float = 3.0  # batch renorm clipping of r to [1/rmax, rmax]
    renorm_dmax: float = 5.0  # batch renorm clipping of d to [-dmax, dmax]
    renorm_momentum: float = 0.99
    # Optimization.
    optimizer: str = "sgd"  # sgd (with `momentum`) | adam
    learning_rate: float = 0.05
    momentum: float = 0.9  # sgd momentum
    batch_size: int = 32
    epochs: int = 1  # logged periods: one pass over the data, or `steps_per_epoch` steps
    steps_per_epoch: int | None = None  # None: one pass (the last partial batch dropped)
    seed: int = 0  # weights, data order, dropout; the data themselves have fixed seeds
    options: tuple[tuple[str, object], ...] = ()

    def __post_init__(self):
        # Canonical types, so that equal configs have equal keys (1 and 1.0, a list and a
        # tuple, numpy and Python numbers) and every config is hashable.
        def coerce(name, kind):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, kind(value))

        for name in ("dropout", "bn_momentum", "renorm_rmax", "renorm_dmax",
                     "renorm_momentum", "learning_rate", "momentum"):  # fmt: skip
            coerce(name, float)
        for name in ("num_samples", "virtual_batch_size", "batch_size", "epochs", "steps_per_epoch", "seed"):
            coerce(name, int)
        coerce("widths", lambda widths: tuple(int(w) for w in widths))
        options = dict(self.options)
        if len(options) != len(self.options):
            raise ValueError(f"RunConfig options name a key twice. Received: {self.options!r}")
        object.__setattr__(
            self, "options", tuple(sorted((str(k), _frozen_value(v)) for k, v in options.items()))
        )
        _check_choice("dataset", self.dataset, data.NAMES)
        _check_choice("model", self.model, models.KINDS)
        _check_choice("norm", self.norm, models.NORMS)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        if self.batch_size < 1 or self.epochs < 1 or (self.steps_per_epoch or 1) < 1:
            raise ValueError(
                "batch_size, epochs and steps_per_epoch must be positive. Received: "
                f"batch_size={self.batch_size}, epochs={self.epochs}, "
                f"steps_per_epoch={self.steps_per_epoch}"
            )

    def to_dict(self) -> dict:
        """The fields as JSON-ready values (tuples as lists, options as a dict)."""
        fields = dataclasses.asdict(self)
        fields["options"] = dict(self.options)
        return json.loads(json.dumps(fields))

    def key(self) -> str:
        """Stable short id: sha256 of the canonical JSON of all fields, 16 hex digits."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def option(self, name, default=None):
        """The value of option `name`, or `default`."""
        return dict(self.options).get(name, default)

    def prefixed_options(self, prefix) -> dict:
        """Options whose name starts with `prefix`, the prefix removed."""
        return {k[len(prefix):]: v for k, v in self.options if k.startswith(prefix)}


def _frozen_value(value):
    """Lists become tuples (hashable); anything JSON cannot hold is refused."""
    if isinstance(value, (list, tuple)):
        return tuple(_frozen_value(v) for v in value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"RunConfig option values must be JSON scalars or lists. Received: {value!r}")


def _check_choice(name, value, known):
    if value not in known:
        raise ValueError(f"Unknown {name} '{value}'. Known: {', '.join(known)}")


# ---------------------------------------------------------------------------------------
# The task registry.

TASKS: dict[str, Callable[[RunConfig], dict]] = {}


@dataclasses.dataclass(frozen=True)
class Stacking:
    """How `studies.stacked` makes the rows of a task that opts in, instead of calling it.

    The stacked engine trains like the default ``train`` task (SGD or Adam, an evaluation
    after each epoch), and then:

    Attributes:
        learning_rates: ``fn(config, epoch_steps) -> array`` of the learning rate of each
            optimizer step (``epochs * epoch_steps`` values, step 0 first), for a task
            that trains with a schedule; None for the config's constant rate.
        finish: ``fn(config, dataset, model, row) -> None``, for a task that measures
            the trained model: called per member with a `build` model holding that
            member's trained weights (moving statistics included) and the member's row,
            to which it adds its columns (the row's ``diverged`` says whether the weights
            are finite).
        applies: ``fn(config) -> bool``, False for the task's configs the engine cannot
            make (e.g. ones that need a per-step callback); those run as written.
        dataset: ``fn(config, dataset) -> dataset``, for a task that trains on other data
            than `load_dataset`'s (e.g. a subset of it); None for those.
        eval_train: whether the task evaluates the training set after each epoch
            (`TRAIN_EVAL_METRICS`) whatever its option ``eval_train`` says.
    """

    learning_rates: Callable | None = None
    finish: Callable | None = None
    applies: Callable | None = None
    dataset: Callable | None = None
    eval_train: bool = False


#: Tasks whose rows the stacked engine (`studies.stacked`) may make instead, and how.
STACKABLE_TASKS: dict[str, Stacking] = {}


def register_task(name: str, stackable: bool | Stacking = False):
    """Decorator: registers `fn(config) -> row` as task `name` (a name is registered once).

    With ``stackable=True`` the task declares that its row is the default ``train`` task's
    row for its config (it trains, evaluates after each epoch and logs, nothing more), so
    `studies.stacked` may train its configs as members of one stacked model instead of
    calling it; with a `Stacking`, that its row is that training's with the schedule and
    the measurements the `Stacking` describes. A task that does anything else leaves it
    False and runs as written."""

    def decorator(fn):
        if name in TASKS and TASKS[name] is not fn:
            raise ValueError(f"Task '{name}' is already registered by {TASKS[name].__module__}.")
        TASKS[name] = fn
        if stackable:
            STACKABLE_TASKS[name] = stackable if isinstance(stackable, Stacking) else Stacking()
        return fn

    return decorator


def stacking(config: RunConfig) -> Stacking | None:
    """How the stacked engine makes `config`'s row (loading its claim's module when
    needed), or None if its task did not opt in or excludes this config."""
    _task(config)
    spec = STACKABLE_TASKS.get(config.task)
    if spec is None or (spec.applies is not None and not spec.applies(config)):
        return None
    return spec


def stackable_task(config: RunConfig) -> bool:
    """True if `config`'s task (loading its claim's module when needed) is stackable for it."""
    return stacking(config) is not None


def _task(config):
    """The task of `config`; imports the claim's module first when the task is not known
    yet (a claim module registers its tasks when imported, also in worker processes)."""
    if config.task not in TASKS:
        from studies import claims

        if config.claim in claims.MODULES:
            claims.load(config.claim)
    if config.task not in TASKS:
        raise ValueError(f"Unknown task '{config.task}'. Registered tasks: {', '.join(sorted(TASKS))}")
    return TASKS[config.task]


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


def run(config: RunConfig) -> dict:
    """Runs `config` with its task and returns the row, ``status="error"`` with the
    traceback in ``error`` if the task raised. Adds ``time/total_s``."""
    start = time.perf_counter()
    try:
        row = _task(config)(config)
    except Exception:  # a failing run is a recorded result; the sweep goes on
        row = base_row(config)
        row["status"] = "error"
        row["error"] = traceback.format_exc(limit=20)
    row["time/total_s"] = time.perf_counter() - start
    return row


# ---------------------------------------------------------------------------------------
# Training helpers, for the default task and for claims' own tasks.


def configure_determinism(seed):
    """Seeds Python, numpy, TensorFlow and Keras, and makes TensorFlow's ops deterministic
    (measured: no slower on CPU for these models; XLA is then off, which is also faster
    here)."""
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
    """The keyword arguments of `studies.models.build_model` for `config` and `dataset`
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
        # Measured on CPU: XLA made these small models slower (and op determinism turns
        # it off anyway).
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
