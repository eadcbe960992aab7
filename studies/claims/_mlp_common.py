"""Pieces shared by the MLP claims on MNIST-1D (C1, C3, C9): which rows count, model
surgery that swaps the batch norms of an engine-built model for a variant, and the
figure panels they draw alike."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pandas

import kerasnorm
from studies.engine import training
from studies.engine.config import RunConfig, concat, grid
from studies.report import plots, stats


def mlp_config(claim, **fields) -> RunConfig:
    """The MLP these claims train (three hidden layers of 100 units, SGD with momentum
    0.9), with `fields` for the rest."""
    return RunConfig(claim=claim, model="mlp", widths=(100, 100, 100), optimizer="sgd", momentum=0.9, **fields)


def arm_grid(base: RunConfig, arms: dict, names, seeds, options) -> list:
    """For each arm of `names` (`arms` maps a name to its RunConfig fields): `base` with
    those fields and ``options=options(name)``, times `seeds`."""
    return concat(*(
        grid(dataclasses.replace(base, **arms[name], options=options(name)), seed=list(seeds))
        for name in names
    ))  # fmt: skip


def swap_batch_norms(model: keras.Model, make_layer) -> keras.Model:
    """A copy of functional `model` whose `kerasnorm.BatchNormalization` layers are
    replaced by ``make_layer(config, index)`` (`config` the layer's config, `index` its
    position among the batch norms), with the same weights: the variant starts from
    exactly the initial weights the engine drew for the plain model."""
    index = iter(range(len(model.layers)))

    def clone(layer):
        if isinstance(layer, kerasnorm.BatchNormalization):
            return make_layer(layer.get_config(), next(index))
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def recompile(config, model, like):
    """Compiles `model` as the engine compiled `like` (the config's optimizer, the same
    steps per execution)."""
    return training.compile_model(config, model, steps_per_execution=like.steps_per_execution)


def batch_norm_layers(model):
    return [layer for layer in model.layers if isinstance(layer, kerasnorm.BatchNormalization)]


def estimate_columns(values) -> dict:
    """``mean``, ``low``, ``high``, ``n`` of `stats.estimate(values)`."""
    return stats.estimate(values).to_dict()


def curve_table(rows, by, column, steps_column="steps_axis", every=1):
    """Long table of a per-log list `column` of `rows` averaged over seeds: one record per
    group of `by` and logged step (every `every`-th log kept, the last always), with
    ``step`` and the estimate columns."""
    records = []
    for key, group in rows.groupby(by, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        curves = np.array([list(c) for c in group[column]], dtype=float)
        steps = list(group[steps_column].iloc[0])
        keep = sorted(set(range(0, len(steps), every)) | {len(steps) - 1})
        for i in keep:
            records.append({**dict(zip(by, key)), "step": int(steps[i]), **estimate_columns(curves[:, i])})
    return pandas.DataFrame.from_records(records, columns=list(by) + ["step", "mean", "low", "high", "n"])


def interval_panel(ax, table, x, group, labels=None, order=None, colors=None, log_x=False):
    """Draws one interval line per value of `group` in `table` (columns `x`, mean, low,
    high) on `ax`, in `order`, labelled by `labels` and coloured by `colors` (names of
    `studies.report.plots.COLORS`; default: the value itself)."""
    order = order or sorted(table[group].unique())
    for i, name in enumerate(order):
        part = table[table[group] == name].sort_values(x)
        if not len(part):
            continue
        plots.interval_line(
            part[x].to_numpy(float),
            part["mean"].to_numpy(float),
            part["low"].to_numpy(float),
            part["high"].to_numpy(float),
            label=(labels or {}).get(name, name),
            ax=ax,
            color_name=(colors or {}).get(name, name),
            index=i,
        )
    if log_x:
        ax.set_xscale("log")
    return ax


def data_words(rows) -> str:
    """The MNIST-1D split sizes of `rows` in words (from their ``num_samples``)."""
    sizes = sorted({5000 if n is None or n != n else int(n) for n in rows["num_samples"]}) if len(rows) else []
    return ", ".join(f"{int(n * 0.8)} train / {n - int(n * 0.8)} test" for n in sizes) or "no runs"
