"""Helpers shared by the CNN claims (C2, C4, C7): accuracy with batch statistics, errors in
percentage points, and lookups in summary tables."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pandas

from studies import stats
from studies.claims import _mlp_common

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


def ok_rows(rows: pandas.DataFrame):
    """``(rows with status ok, number of other rows)``."""
    ok = rows[rows["status"] == "ok"] if len(rows) else rows
    return ok.reset_index(drop=True), len(rows) - len(ok)


def no_runs(claim, title, rule, anchor, failed) -> dict:
    """The analysis of a claim none of whose `failed` runs finished (not supported, no
    figure): the MLP claims' helper, with the count in its note."""
    return _mlp_common.no_runs(
        claim, title, rule, anchor, f"All {failed} run(s) failed; their errors are in the stored rows."
    )


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
