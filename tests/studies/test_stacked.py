import dataclasses
import io
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from studies.engine import stacked, stacked_layers, sweep, tasks, training, worker
from studies.engine.config import grid
from studies.engine.store import ResultsStore
from tests.studies.conftest import kill_after_first_result

METRICS = ("train/loss", "train/accuracy", "test/loss", "test/accuracy")


def _metrics(row):
    return {k: row[k] for k in (*METRICS, "steps", "diverged", "stack/members", "stack/block")}


#: The sequence task's lengths for the LSTM members: 4 to 12 tokens in training, up to 20
#: in the test split.
SEQUENCE_DATA = {"data.min_len": 4, "data.max_train_len": 12, "data.max_test_len": 20}


@pytest.mark.parametrize(
    "fields",
    [
        dict(model="mlp", norm="batch", steps_per_epoch=1, epochs=2),  # one repeated stream
        dict(model="mlp", norm="layer", dropout=0.0, epochs=2),  # a new pass per epoch
        dict(model="cnn1d", norm="layer", widths=(4, 4), steps_per_epoch=2),
        dict(model="cnn1d", norm="frn", widths=(4, 4), steps_per_epoch=2),  # FRN + TLU, no activation
        dict(model="cnn2d", norm="group", dataset="digits", num_samples=None, widths=(8, 8), steps_per_epoch=1),
        # The LSTM on masked sequences of their own lengths, the test split longer.
        dict(model="rnn", cell="lstm", dataset="sequences", widths=(8,), batch_size=16, options=SEQUENCE_DATA, norm="layer", epochs=2),
        dict(model="rnn", cell="lstm", dataset="sequences", widths=(8,), batch_size=16, options=SEQUENCE_DATA | {"model.share_statistics": False}, norm="batch", epochs=2),
        dict(model="rnn", cell="lstm", dataset="sequences", widths=(8,), batch_size=16, options=SEQUENCE_DATA | {"model.share_statistics": True}, norm="batch", steps_per_epoch=1),
        dict(model="tokens", dataset="sequences", widths=(8, 8), batch_size=16, options=SEQUENCE_DATA, norm="batch", epochs=2),
    ],
)
def test_members_follow_their_standalone_runs(tiny, fields):
    """Each member starts from its seed's standalone weights and reads its data order: the
    first step's loss matches the standalone run to float32 rounding, and the short
    trajectory stays within rounding of it."""
    configs = stacked.block(tiny(**fields))
    rows = worker.run_group(configs)
    assert [r["seed"] for r in rows] == list(range(stacked.MEMBERS))
    seed = stacked.MEMBERS - 1  # the last member: its channels are the furthest in
    alone = worker.run_one(configs[seed])
    row = rows[seed]
    assert row["status"] == "ok" and row["stack/members"] == stacked.MEMBERS
    assert set(alone) <= set(row)  # every column a standalone row has
    first = "train/loss" if fields.get("steps_per_epoch") == 1 else "test/loss"
    np.testing.assert_allclose(row[first][0], alone[first][0], rtol=2e-6 if first == "train/loss" else 1e-5)
    for column in METRICS:
        np.testing.assert_allclose(row[column], alone[column], rtol=1e-3, atol=1e-3)
    assert row["steps"] == alone["steps"] and row["epoch_steps"] == alone["epoch_steps"]


def _reference_order(config, num_train, epoch_steps):
    """What `keras.Model.fit` reads of the run's shuffled index stream, element by element:
    one repeated stream with ``steps_per_epoch``, else a freshly opened pass per epoch (and
    an unread one opened at each epoch's end)."""
    import tensorflow as tf

    tf.random.set_seed(config.seed)
    reshuffle = not config.option("fixed_batches", False)
    passes = tf.data.Dataset.range(num_train).shuffle(num_train, seed=config.seed, reshuffle_each_iteration=reshuffle)
    per_epoch = epoch_steps * config.batch_size
    if config.steps_per_epoch:
        order = [int(i) for i in passes.repeat().take(config.epochs * per_epoch)]
    else:
        opened = [[int(i) for i in passes] for _ in range(2 * config.epochs - 1)]
        order = [i for epoch in opened[::2] for i in epoch[:per_epoch]]
    return np.reshape(order, (config.epochs, epoch_steps, config.batch_size))


@pytest.mark.parametrize(
    "fields",
    [
        dict(steps_per_epoch=7, epochs=3),  # the stream runs across pass boundaries
        dict(epochs=3),  # a new pass per epoch, the last partial batch dropped
        dict(epochs=2, options=(("fixed_batches", True),)),  # every pass in one order
    ],
)
def test_data_orders_are_what_each_standalone_run_reads(tiny, fields):
    configs = stacked.block(tiny(num_samples=100, batch_size=16, **fields))
    num_train = 80
    epoch_steps = fields.get("steps_per_epoch") or num_train // 16
    orders = stacked.data_orders(configs, num_train, epoch_steps)
    assert orders.shape == (configs[0].epochs, epoch_steps, stacked.MEMBERS, 16) and orders.dtype == np.int32
    for k, config in enumerate(configs):
        reference = _reference_order(config, num_train, epoch_steps)
        np.testing.assert_array_equal(orders[:, :, k], reference)
        np.testing.assert_array_equal(stacked.data_order(config, num_train, epoch_steps), reference)
    assert not np.array_equal(orders[:, :, 0], orders[:, :, 1])  # seeds shuffle differently


def _trainer_inputs(config, seeds, orders_from=None):
    """Weights and data orders of members with `seeds` for `config`'s block trainer."""
    dataset = training.load_dataset(config)
    trainer = stacked.trainer_for(config, dataset)
    members = []
    for seed in seeds:
        training.configure_determinism(seed)
        members.append(training.build(dataclasses.replace(config, seed=seed), dataset))
    weights = stacked.mapping(config).stack_member_weights(trainer.model, members)
    steps = training.epoch_steps(config, dataset)
    orders = np.stack(
        [stacked.data_order(dataclasses.replace(config, seed=s), len(dataset.x_train), steps) for s in orders_from or seeds],
        axis=2,
    )
    return dataset, trainer, weights, orders


@pytest.mark.parametrize(
    "fields",
    [
        dict(model="mlp", norm="batch", dropout=0.2),
        dict(model="cnn1d", norm="group", widths=(8,)),
        dict(model="rnn", cell="lstm", dataset="sequences", widths=(8,), batch_size=16, options=SEQUENCE_DATA | {"model.share_statistics": False}, norm="batch"),
    ],
)
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
        if variable.path.startswith(("conv_0", "rnn")) and variable.path.endswith("kernel"):
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
    first = worker.run_group(stacked.block(config))
    trainer = stacked.trainer_for(config, training.load_dataset(config))
    traces = trainer.traces
    # another architecture and an unstacked run (which clears Keras's session) in between,
    # then another learning rate of this one
    worker.run_group(stacked.block(tiny(norm="layer", steps_per_epoch=1)))
    assert worker.run_one(tiny(norm="rms", steps_per_epoch=1))["status"] == "ok"
    worker.run_group(stacked.block(dataclasses.replace(config, learning_rate=0.2)))
    again = worker.run_group(stacked.block(config))
    assert trainer.traces == traces  # reused, never retraced
    assert [_metrics(r) for r in again] == [_metrics(r) for r in first]
    # one config in a sweep trains and stores its whole block, with the same numbers
    summary = sweep.run_sweep([config], ResultsStore(tmp_path), progress_stream=io.StringIO())
    assert (summary.ok, summary.extra) == (1, stacked.MEMBERS - 1)
    stored = ResultsStore(tmp_path).read(config)
    assert _metrics(stored) == _metrics(first[3]) and stored["stack/block"] == 0


def test_a_failed_block_is_recorded_and_the_worker_goes_on(tiny, monkeypatch):
    config = tiny(steps_per_epoch=1)
    good = worker.run_group(stacked.block(config))
    real = stacked.data_orders

    def failing(configs, *args):
        if configs[0].learning_rate == 0.5:
            raise RuntimeError("no data today")
        return real(configs, *args)

    monkeypatch.setattr(stacked, "data_orders", failing)
    failed = worker.run_group(stacked.block(dataclasses.replace(config, learning_rate=0.5)))
    assert [r["status"] for r in failed] == ["error"] * stacked.MEMBERS
    assert "no data today" in failed[0]["error"]
    assert [_metrics(r) for r in worker.run_group(stacked.block(config))] == [_metrics(r) for r in good]


def test_what_runs_stacked_and_how_units_are_planned(tiny, monkeypatch):
    monkeypatch.setattr(stacked, "MEMBERS", 4)
    monkeypatch.setitem(tasks.TASKS, "own_task", lambda config: training.base_row(config))
    monkeypatch.setattr(tasks, "STACKABLE_TASKS", dict(tasks.STACKABLE_TASKS))
    monkeypatch.setitem(tasks.TASKS, "own_stacked_task", training.train)  # removed after the test
    tasks.register_task("own_stacked_task", stackable=True)(training.train)  # a task opting in
    plain = tiny()
    assert stacked.stackable(plain) and stacked.stackable(tiny(task="own_stacked_task"))
    unstackable = [
        tiny(task="own_task"),  # a custom task that did not opt in
        tiny(norm="rms"),
        tiny(model="rnn", dataset="sequences"),
        tiny(options={"model.kernel_size": 5}),
    ]
    assert not any(stacked.stackable(c) for c in unstackable)
    configs = grid(plain, seed=[0, 2, 5], learning_rate=[0.1]) + unstackable[:1]
    units = worker.plan(configs)
    assert sorted([c.seed for c in unit] for unit in units) == [[0], [0, 1, 2, 3], [4, 5, 6, 7]]
    assert [r["stack/members"] for r in worker.run_group(unstackable[:1])] == [1]
    assert stacked.block(tiny(seed=6)) == [tiny(seed=s) for s in (4, 5, 6, 7)]


def test_stacked_model_maps_member_weights_to_their_channels(tiny):
    config = tiny(model="cnn1d", norm="layer", widths=(4,))
    dataset = training.load_dataset(config)
    arguments = training.model_arguments(config, dataset)
    for name in ("cell", "masked", "max_steps"):
        arguments.pop(name)
    stacked_model = stacked_layers.build_stacked_model("cnn1d", dataset.input_shape, dataset.num_classes, "layer", 2, **arguments)
    members = [training.build(dataclasses.replace(config, seed=s), dataset) for s in (0, 1)]
    for variable, value in zip(stacked_model.weights, stacked_layers.stack_member_weights(stacked_model, members)):
        variable.assign(value)
    x = dataset.x_test[:5]
    folded = np.concatenate([x, x], axis=-1)
    out = np.asarray(stacked_model(folded, training=False)).reshape(5, 2, -1)
    for k, member in enumerate(members):
        np.testing.assert_allclose(out[:, k], np.asarray(member(x, training=False)), rtol=1e-5, atol=1e-6)
    assert np.abs(out[:, 0] - out[:, 1]).max() > 0  # the members differ


@pytest.mark.parametrize(
    "fields",
    [
        dict(model="mlp", norm="batch", dropout=0.2),
        dict(model="cnn1d", norm="frn", widths=(4, 4)),
        dict(model="cnn2d", norm="group", dataset="digits", num_samples=None, widths=(8, 8)),
    ],
)
def test_uninitialized_members_give_the_initial_weights_of_full_builds(tiny, fields):
    import keras
    from keras.src.backend.common import global_state

    configs = stacked.block(tiny(**fields))
    dataset = training.load_dataset(configs[0])
    trainer = stacked.trainer_for(configs[0], dataset)
    built = stacked_layers.stack_member_weights(trainer.model, stacked.member_models(configs, dataset))
    light = stacked_layers.stack_member_weights(trainer.model, stacked.member_models(configs, dataset, initialized=False))
    for full, fast in zip(built, light, strict=True):
        np.testing.assert_array_equal(fast, full)
    # a block leaves no uninitialized variable for Keras to initialize later
    assert worker.run_group(configs)[0]["status"] == "ok"
    assert not global_state.get_global_attribute("uninitialized_variables")
    keras.layers.Dense(2).build((None, 3))  # and plain Keras works on


def test_a_task_with_a_schedule_and_a_finish_hook_stacks_to_its_standalone_row():
    """C4's task: warm-up and cosine learning rates per step, batch renorm with its limits'
    warm-up (a ``model.*`` option stacked models take), and a measurement of each member's
    trained model (`Stacking.finish`)."""
    from studies.claims import c4_batch_size as c4

    full = next(c for c in c4.grid("full") if c.model == "mlp" and c.norm == "batch_renorm")
    config = dataclasses.replace(full, num_samples=200, epochs=2, widths=(16, 16), options={"model.renorm_warmup": (2, 10)})
    assert stacked.stackable(config)
    rows = worker.run_group(stacked.block(config))
    seed = 6
    alone = worker.run_one(stacked.block(config)[seed])
    row = rows[seed]
    assert row["status"] == "ok" and alone["status"] == "ok"
    for column in ("train/loss", "test/loss"):
        np.testing.assert_allclose(row[column], alone[column], rtol=1e-4)
    assert row[c4.BATCH_MODE] == pytest.approx(alone[c4.BATCH_MODE], abs=0.01)
    assert row["time/eval_s"] > 0


def test_a_task_can_exclude_configs_and_change_the_data(tiny, monkeypatch):
    monkeypatch.setattr(tasks, "STACKABLE_TASKS", dict(tasks.STACKABLE_TASKS))
    monkeypatch.setitem(tasks.TASKS, "half_data", training.train)
    spec = tasks.Stacking(
        dataset=lambda config, dataset: dataclasses.replace(dataset, x_train=dataset.x_train[:96], y_train=dataset.y_train[:96]),
        applies=lambda config: config.learning_rate < 1,
    )
    tasks.register_task("half_data", stackable=spec)(training.train)
    assert not stacked.stackable(tiny(task="half_data", learning_rate=2.0))
    rows = worker.run_group(stacked.block(tiny(task="half_data", steps_per_epoch=None)))
    assert {r["epoch_steps"] for r in rows} == {96 // 32}


KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    from studies.engine import sweep
    from studies.engine.config import RunConfig, grid
    from studies.engine.store import ResultsStore

    configs = grid(RunConfig(claim="K", num_samples=200, widths=(8,), epochs=3),
                         learning_rate=[0.05, 0.1, 0.2], seed=list(range(8)))
    summary = sweep.run_sweep(configs, ResultsStore(sys.argv[1]))
    print("SKIPPED", summary.skipped, "RAN", summary.ok + summary.extra)
    """
)


def test_a_killed_stacked_sweep_reruns_only_its_unfinished_blocks(tmp_path):
    script = tmp_path / "sweep_script.py"
    script.write_text(KILL_SCRIPT)
    results = tmp_path / "results"
    before = kill_after_first_result(script, results, "K/*.json")
    assert 1 <= len(before) < 3 * stacked.MEMBERS  # killed mid-sweep

    resumed = subprocess.run([sys.executable, str(script), str(results)], capture_output=True, text=True, check=True)
    files = sorted(results.glob("K/*"))  # temp files included: none may remain
    assert len(files) == 3 * stacked.MEMBERS and all(p.suffix == ".json" for p in files)
    rows = {p.name: json.loads(p.read_text()) for p in files}
    assert {r["status"] for r in rows.values()} == {"ok"}
    assert {r["stack/members"] for r in rows.values()} == {stacked.MEMBERS}
    by_rate = {}
    for name, content in before.items():
        by_rate.setdefault(json.loads(content)["learning_rate"], []).append(name)
    for names in by_rate.values():
        for name in names:
            if len(names) == stacked.MEMBERS:  # a finished block is not redone
                assert (results / "K" / name).read_bytes() == before[name]
            else:  # a block killed while writing reruns whole, to the same numbers
                assert rows[name]["test/loss"] == json.loads(before[name])["test/loss"]
    assert f"SKIPPED {len(before)}" in resumed.stdout
