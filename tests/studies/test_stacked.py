import dataclasses
import io

import numpy as np
import pytest

from studies import models, stacked, sweep, training
from studies.training import RunConfig

METRICS = ("train/loss", "train/accuracy", "test/loss", "test/accuracy")


def _metrics(row):
    return {k: row[k] for k in (*METRICS, "steps", "diverged", "stack/members", "stack/block")}


@pytest.mark.parametrize(
    "fields",
    [
        dict(model="mlp", norm="batch", steps_per_epoch=1, epochs=2),  # one repeated stream
        dict(model="mlp", norm="layer", dropout=0.0, epochs=2),  # a new pass per epoch
        dict(model="cnn1d", norm="layer", widths=(4, 4), steps_per_epoch=2),
        dict(model="cnn2d", norm="group", dataset="digits", num_samples=None, widths=(8, 8), steps_per_epoch=1),
    ],
)
def test_members_follow_their_standalone_runs(tiny, fields):
    """Each member starts from its seed's standalone weights and reads its data order: the
    first step's loss matches the standalone run to float32 rounding, and the short
    trajectory stays within rounding of it."""
    configs = stacked.block(tiny(**fields))
    rows = stacked.run_group(configs)
    assert [r["seed"] for r in rows] == list(range(stacked.MEMBERS))
    seed = stacked.MEMBERS - 1  # the last member: its channels are the furthest in
    alone = training.run(configs[seed])
    row = rows[seed]
    assert row["status"] == "ok" and row["stack/members"] == stacked.MEMBERS
    assert set(alone) <= set(row)  # every column a standalone row has
    first = "train/loss" if fields.get("steps_per_epoch") == 1 else "test/loss"
    np.testing.assert_allclose(row[first][0], alone[first][0], rtol=2e-6 if first == "train/loss" else 1e-5)
    for column in METRICS:
        np.testing.assert_allclose(row[column], alone[column], rtol=1e-3, atol=1e-3)
    assert row["steps"] == alone["steps"] and row["epoch_steps"] == alone["epoch_steps"]


def _trainer_inputs(config, seeds, orders_from=None):
    """Weights and data orders of members with `seeds` for `config`'s block trainer."""
    dataset = training.load_dataset(config)
    trainer = stacked.trainer_for(config, dataset)
    members = []
    for seed in seeds:
        training.configure_determinism(seed)
        members.append(training.build(dataclasses.replace(config, seed=seed), dataset))
    weights = models.stack_member_weights(trainer.model, members)
    steps = training.epoch_steps(config, dataset)
    orders = np.stack(
        [stacked.data_order(dataclasses.replace(config, seed=s), len(dataset.x_train), steps) for s in orders_from or seeds],
        axis=2,
    )
    return dataset, trainer, weights, orders


@pytest.mark.parametrize("fields", [dict(model="mlp", norm="batch", dropout=0.2), dict(model="cnn1d", norm="group", widths=(8,))])
def test_changing_one_member_leaves_the_others_bit_identical(tiny, fields):
    config = tiny(epochs=2, steps_per_epoch=3, **fields)
    seeds = list(range(stacked.MEMBERS))
    dataset, trainer, weights, orders = _trainer_inputs(config, seeds)
    base = trainer.fit(dataset, weights, orders, 0.05)
    # member 3 gets another seed's weights and another seed's data
    changed = seeds.copy()
    changed[3] = 100
    _, _, weights2, orders2 = _trainer_inputs(config, changed)
    other = trainer.fit(dataset, weights2, orders2, 0.05)
    # member 5 gets NaN weights: it diverges, alone
    poisoned = [w.copy() for w in weights]
    for value, variable in zip(poisoned, trainer.model.weights):
        if variable.path.endswith("kernel") and variable.path.startswith("dense_0"):
            value[5] = np.nan
        if variable.path.startswith("conv_0") and variable.path.endswith("kernel"):
            value[5] = np.nan
    sick = trainer.fit(dataset, poisoned, orders, 0.05)
    not_3, not_5 = [k for k in seeds if k != 3], [k for k in seeds if k != 5]
    for column, values in base["columns"].items():
        np.testing.assert_array_equal(other["columns"][column][:, not_3], values[:, not_3])
        np.testing.assert_array_equal(sick["columns"][column][:, not_5], values[:, not_5])
    assert not np.array_equal(other["columns"]["train/loss"][:, 3], base["columns"]["train/loss"][:, 3])
    assert np.isnan(sick["columns"]["train/loss"][:, 5]).all()
    assert sick["steps"][5] == 1 and list(sick["steps"][not_5]) == [6] * len(not_5)


def test_rows_are_the_same_alone_in_a_sweep_and_in_a_reused_worker(tiny, tmp_path):
    config = tiny(seed=3, steps_per_epoch=2, epochs=2)
    first = stacked.run_group(stacked.block(config))
    trainer = stacked.trainer_for(config, training.load_dataset(config))
    traces = trainer.traces
    # another architecture and an unstacked run (which clears Keras's session) in between,
    # then another learning rate of this one
    stacked.run_group(stacked.block(tiny(norm="layer", steps_per_epoch=1)))
    assert training.run(tiny(norm="rms", steps_per_epoch=1))["status"] == "ok"
    stacked.run_group(stacked.block(dataclasses.replace(config, learning_rate=0.2)))
    again = stacked.run_group(stacked.block(config))
    assert trainer.traces == traces  # reused, never retraced
    assert [_metrics(r) for r in again] == [_metrics(r) for r in first]
    # one config in a sweep trains and stores its whole block, with the same numbers
    summary = sweep.run_sweep([config], sweep.ResultsStore(tmp_path), progress_stream=io.StringIO())
    assert (summary.ok, summary.extra) == (1, stacked.MEMBERS - 1)
    stored = sweep.ResultsStore(tmp_path).read(config)
    assert _metrics(stored) == _metrics(first[3]) and stored["stack/block"] == 0


def test_a_failed_block_is_recorded_and_the_worker_goes_on(tiny, monkeypatch):
    config = tiny(steps_per_epoch=1)
    good = stacked.run_group(stacked.block(config))
    real = stacked.data_order

    def failing(config, *args):
        if config.learning_rate == 0.5:
            raise RuntimeError("no data today")
        return real(config, *args)

    monkeypatch.setattr(stacked, "data_order", failing)
    failed = stacked.run_group(stacked.block(dataclasses.replace(config, learning_rate=0.5)))
    assert [r["status"] for r in failed] == ["error"] * stacked.MEMBERS
    assert "no data today" in failed[0]["error"]
    assert [_metrics(r) for r in stacked.run_group(stacked.block(config))] == [_metrics(r) for r in good]


def test_what_runs_stacked_and_how_units_are_planned(tiny, monkeypatch):
    monkeypatch.setattr(stacked, "MEMBERS", 4)
    monkeypatch.setitem(training.TASKS, "own_task", lambda config: training.base_row(config))
    monkeypatch.setattr(training, "STACKABLE_TASKS", set(training.STACKABLE_TASKS))
    monkeypatch.setitem(training.TASKS, "own_stacked_task", training.train)  # removed after the test
    training.register_task("own_stacked_task", stackable=True)(training.train)  # a task opting in
    plain = tiny()
    assert stacked.stackable(plain) and stacked.stackable(tiny(task="own_stacked_task"))
    unstackable = [
        tiny(task="own_task"),  # a custom task that did not opt in
        tiny(norm="rms"),
        tiny(model="rnn", dataset="sequences"),
        tiny(options={"model.kernel_size": 5}),
    ]
    assert not any(stacked.stackable(c) for c in unstackable)
    configs = sweep.grid(plain, seed=[0, 2, 5], learning_rate=[0.1]) + unstackable[:1]
    units = stacked.plan(configs)
    assert sorted([c.seed for c in unit] for unit in units) == [[0], [0, 1, 2, 3], [4, 5, 6, 7]]
    assert [r["stack/members"] for r in stacked.run_group(unstackable[:1])] == [1]
    assert stacked.block(tiny(seed=6)) == [tiny(seed=s) for s in (4, 5, 6, 7)]


def test_stacked_model_maps_member_weights_to_their_channels(tiny):
    config = tiny(model="cnn1d", norm="layer", widths=(4,))
    dataset = training.load_dataset(config)
    arguments = training.model_arguments(config, dataset)
    for name in ("cell", "masked", "max_steps"):
        arguments.pop(name)
    stacked_model = models.build_stacked_model("cnn1d", dataset.input_shape, dataset.num_classes, "layer", 2, **arguments)
    members = [training.build(dataclasses.replace(config, seed=s), dataset) for s in (0, 1)]
    for variable, value in zip(stacked_model.weights, models.stack_member_weights(stacked_model, members)):
        variable.assign(value)
    x = dataset.x_test[:5]
    folded = np.concatenate([x, x], axis=-1)
    out = np.asarray(stacked_model(folded, training=False)).reshape(5, 2, -1)
    for k, member in enumerate(members):
        np.testing.assert_allclose(out[:, k], np.asarray(member(x, training=False)), rtol=1e-5, atol=1e-6)
    assert np.abs(out[:, 0] - out[:, 1]).max() > 0  # the members differ
