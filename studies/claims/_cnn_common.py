"""Helpers shared by the CNN claims (C2, C4, C4b, C7): accuracy with batch statistics, errors
in percentage points, lookups in summary tables, and the scheduled training run of the
small-batch claims (C4, C4b)."""

from __future__ import annotations

import contextlib
import math
import time

import numpy as np
import pandas

from studies.engine import tasks, training
from studies.report import stats

#: Accuracy of a model that always predicts one class of ten (balanced test sets).
CHANCE_ACCURACY = 0.1


@contextlib.contextmanager
def state_restored(model):
    """Within the block the model may be called in training mode; on leaving it, its
    non-trainable variables (the moving statistics that such calls update) are restored."""
    variables = list(model.non_trainable_variables)
    saved = [v.numpy() for v in variables]
    try:
        yield model
    finally:
        for variable, value in zip(variables, saved):
            variable.assign(value)


def batch_statistics_accuracy(model, x, y, batch_size):
    """Accuracy of `model` on ``(x, y)`` called in training mode, so that every batch norm
    normalizes each consecutive batch of `batch_size` samples with that batch's own
    statistics. A last incomplete batch is dropped. The moving statistics (all
    non-trainable variables) are restored afterwards, so the model is left as it was.

    Training mode also switches on dropout: use it on models without dropout.
    """
    import tensorflow as tf

    n = len(x) // batch_size * batch_size
    if n == 0:
        raise ValueError(f"No complete batch of {batch_size} in {len(x)} samples.")
    forward = tf.function(lambda batch: model(batch, training=True))
    batches = tf.data.Dataset.from_tensor_slices(np.asarray(x[:n])).batch(batch_size)
    with state_restored(model):
        predicted = np.concatenate([np.argmax(forward(batch).numpy(), axis=-1) for batch in batches])
    return float(np.mean(predicted == np.asarray(y[:n])))


def inference_accuracy(model, x, y):
    """Accuracy of `model` on ``(x, y)`` in inference mode, calling it eagerly in chunks of
    `studies.engine.config.EVAL_BATCH_SIZE` (for a model measured once, ``predict``'s tracing
    costs ten times the call)."""
    hits = 0
    for start in range(0, len(x), training.EVAL_BATCH_SIZE):
        stop = start + training.EVAL_BATCH_SIZE
        logits = np.asarray(model(np.asarray(x[start:stop]), training=False))
        hits += int(np.sum(np.argmax(logits, axis=-1) == np.asarray(y[start:stop])))
    return hits / len(x)


def error_pp(rows: pandas.DataFrame, accuracy_column: str) -> pandas.Series:
    """Test error in percentage points from an accuracy column; a run that diverged (NaN
    loss, so NaN metrics) counts as chance accuracy, the accuracy of its constant
    prediction, rather than being dropped: instability is part of what is measured."""
    accuracy = rows[accuracy_column].astype(float)
    if "diverged" in rows:
        accuracy = accuracy.where(~rows["diverged"].astype(bool), CHANCE_ACCURACY)
    return 100.0 * (1.0 - accuracy)


def summary_lookup(table: pandas.DataFrame, by: list[str]):
    """``lookup(*key) -> Estimate`` over a `stats.summarize` table (n=0 when absent)."""
    index = {tuple(r[c] for c in by): r for r in table.to_dict(orient="records")}

    def lookup(*key):
        r = index.get(tuple(key))
        if r is None:
            return stats.Estimate(math.nan, math.nan, math.nan, 0)
        return stats.Estimate(r["mean"], r["low"], r["high"], int(r["n"]))

    return lookup


def ordered(table: pandas.DataFrame, order: dict, by: list[str]) -> pandas.DataFrame:
    """`table` sorted by the columns `by`, each in the order listed in ``order[column]``
    (arms in the study's order rather than the alphabet's) or by value if not listed."""
    keys = pandas.DataFrame({c: table[c].map(order[c].index) if c in order else table[c] for c in by})
    return table.loc[keys.sort_values(by).index].reset_index(drop=True)


def warmup_cosine(config, steps_per_epoch: int, warmup_epochs: float) -> np.ndarray:
    """The learning rate of each step of the small-batch claims: a linear warm-up from 0
    to ``config.learning_rate`` over the first `warmup_epochs` epochs (Goyal et al. 2017,
    for the large batches' linearly scaled rates), then a cosine decay to 0 at the last
    step (Keras's ``CosineDecay`` with ``warmup_target``, in float32). In epochs, so that
    every batch size gets the same schedule over its data. ``(epochs * steps_per_epoch,)``."""
    total = config.epochs * steps_per_epoch
    warmup = min(total - 1, max(1, round(warmup_epochs * steps_per_epoch)))
    step = np.arange(total, dtype=np.float64)
    peak = config.learning_rate
    rising = peak * step / warmup
    done = np.minimum(step - warmup, total - warmup) / (total - warmup)
    falling = peak * 0.5 * (1.0 + np.cos(np.pi * done))
    return np.where(step < warmup, rising, falling).astype(np.float32)


def warmup_cosine_stacking(warmup_epochs: float, finish=None, applies=None) -> tasks.Stacking:
    """How the stacked engine trains a task of `scheduled_run` with `warmup_epochs`."""
    return tasks.Stacking(
        learning_rates=lambda config, steps: warmup_cosine(config, steps, warmup_epochs),
        finish=finish,
        applies=applies,
    )


def scheduled_run(config, warmup_epochs: float, make_callbacks=None):
    """Trains `config` like the default task but with `warmup_cosine`'s learning rates;
    ``make_callbacks(dataset) -> list`` gives extra Keras callbacks.

    Returns ``(row, dataset, model)``: the row with the engine's columns, and the trained
    model for the claim's own measurements."""
    row = training.base_row(config)
    start = time.perf_counter()
    dataset, model = training.prepare(config)
    rates = warmup_cosine(config, training.epoch_steps(config, dataset), warmup_epochs)
    model.optimizer.learning_rate = training.StepRates(rates)
    prepare_s = time.perf_counter() - start
    callbacks = make_callbacks(dataset) if make_callbacks else None
    row.update(training.fit_and_log(config, dataset, model, callbacks=callbacks))
    row["time/build_s"] += prepare_s
    return row, dataset, model


def normalization_batch(rows: pandas.DataFrame) -> pandas.Series:
    """The samples behind each batch statistic of a run: its ghost batch size
    (``virtual_batch_size``) where it has one, else its batch size."""
    ghost = rows["virtual_batch_size"] if "virtual_batch_size" in rows else pandas.Series(np.nan, rows.index)
    return ghost.where(ghost.notna(), rows["batch_size"]).astype(int)


def small_batch_config(claim, task, model, norm, batch_size, *, num_samples, epochs, learning_rate, momentum,
                       widths, renorm_warmup, virtual_batch_size=None, options=None):
    """A run of the small-batch claims (C4, C4b) on MNIST-1D: SGD with momentum 0.9 (the
    rate's schedule is the task's), BN and batch renorm moving averages with `momentum`,
    and for ``norm="batch_renorm"`` Ioffe's warm-up of the limits between the fractions
    `renorm_warmup` of the run's optimizer steps."""
    options = dict(options or {})
    if norm == "batch_renorm":
        total = epochs * (int(0.8 * num_samples) // batch_size)  # MNIST-1D keeps 80 % for training
        options["model.renorm_warmup"] = tuple(int(round(f * total)) for f in renorm_warmup)
    return training.RunConfig(
        claim=claim, task=task, dataset="mnist1d", num_samples=num_samples, model=model, widths=widths,
        norm=norm, epochs=epochs, optimizer="sgd", momentum=0.9, batch_size=batch_size,
        learning_rate=learning_rate, bn_momentum=momentum, renorm_momentum=momentum,
        virtual_batch_size=virtual_batch_size, options=options,
    )
