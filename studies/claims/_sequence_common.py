"""What the sequence claims (C5, C6) share: a training run that keeps its model for
measurements after training, and the usable rows of a results table."""

from __future__ import annotations

import time

from studies.engine import training


def train_keeping_model(config, prepare=training.prepare, callbacks_for=None):
    """The engine's default task (`studies.engine.training.train`), returning the trained model.

    Args:
        config: the run's `RunConfig`.
        prepare: ``config -> (dataset, compiled model)``; the engine's `prepare` by default.
        callbacks_for: optional ``model -> list of Keras callbacks`` for the fit (called
            before training, so a callback may hook into the model's layers).

    Returns:
        ``(row, dataset, model)``: the row has the engine's columns (`base_row`,
        `fit_and_log`; ``time/build_s`` includes building the model).
    """
    row = training.base_row(config)
    start = time.perf_counter()
    dataset, model = prepare(config)
    prepare_s = time.perf_counter() - start
    callbacks = callbacks_for(model) if callbacks_for else None
    row.update(training.fit_and_log(config, dataset, model, callbacks=callbacks))
    row["time/build_s"] += prepare_s
    return row, dataset, model
