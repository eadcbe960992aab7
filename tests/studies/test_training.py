import dataclasses
import json
import math

import numpy as np
import pytest

from studies.engine import tasks, training, worker
from studies.engine.config import RunConfig

METRICS = tuple(training.EPOCH_METRICS)


def test_key_is_stable_and_canonical():
    a = RunConfig(claim="C1", learning_rate=1, widths=[8, 8], options={"b": [1, 2], "a": "x"})
    b = RunConfig(claim="C1", learning_rate=1.0, widths=(8, 8), options=(("a", "x"), ("b", (1, 2))))
    assert a == b and hash(a) == hash(b) and a.key() == b.key()
    assert len(a.key()) == 16
    assert RunConfig(claim="C1", seed=np.int64(2)).key() == RunConfig(claim="C1", seed=2).key()
    assert dataclasses.replace(a, seed=1).key() != a.key()
    assert dataclasses.replace(a, options=(("a", "y"),)).key() != a.key()
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.seed = 3


def test_config_rejects_unknown_names_and_bad_sizes():
    with pytest.raises(ValueError, match="'vit'"):
        RunConfig(claim="C1", model="vit")
    with pytest.raises(ValueError, match="'weight'"):
        RunConfig(claim="C1", norm="weight")
    with pytest.raises(ValueError, match="batch_size=0"):
        RunConfig(claim="C1", batch_size=0)
    with pytest.raises(ValueError, match="JSON"):
        RunConfig(claim="C1", options={"f": object()})


def test_run_row_has_config_metrics_timing_and_provenance(tiny):
    config = tiny(epochs=2, options={"note": "x"})
    row = worker.run_one(config)
    assert row["status"] == "ok" and row["error"] is None
    assert row["key"] == config.key() and row["seed"] == 0 and row["opt/note"] == "x"
    for name, value in config.to_dict().items():
        if name != "options":
            assert row[name] == value
    for metric in METRICS:
        assert len(row[metric]) == 2 and all(math.isfinite(v) for v in row[metric])
        assert row[f"final/{metric}"] == row[metric][-1]
    assert 0 <= row["final/test/accuracy"] <= 1
    assert row["epoch_steps"] == 160 // 32 and row["steps"] == 2 * 5
    assert row["diverged"] is False
    for part in ("build", "train", "eval", "total"):
        assert row[f"time/{part}_s"] > 0
    assert row["time/total_s"] >= row["time/build_s"] + row["time/train_s"]
    for package in ("python", "tensorflow", "keras", "numpy", "kerasnorm"):
        assert row[package]
    assert row["cpu_count"] >= 1 and "CPUs" in row["machine"]
    json.dumps(row)  # storable as is


def test_identical_configs_give_identical_numbers(tiny):
    config = tiny(norm="keras_batch", dropout=0.2, epochs=2)
    first, second = worker.run_one(config), worker.run_one(config)
    for metric in METRICS:
        assert first[metric] == second[metric]
    other_seed = worker.run_one(dataclasses.replace(config, seed=1))
    assert other_seed["train/loss"] != first["train/loss"]


def test_training_learns(tiny):
    row = worker.run_one(
        tiny(dataset="digits", num_samples=None, widths=(32,), epochs=3, optimizer="adam", learning_rate=0.01)
    )
    assert row["train/loss"][-1] < row["train/loss"][0]
    assert row["final/test/accuracy"] > 0.8  # 10 classes: chance is 0.1


def test_the_throwaway_tracing_step_changes_nothing(tiny):
    config = tiny(norm="keras_batch", dropout=0.5)
    dataset, model = training.prepare(config)
    before = [v.numpy().copy() for v in model.variables + model.optimizer.variables]
    training._trace(model, dataset, config.batch_size, training.tf_dataset(dataset, "test", 100))
    after = [v.numpy() for v in model.variables + model.optimizer.variables]
    assert len(before) == len(after)
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a, b)


def test_divergence_is_a_result_not_an_error(tiny):
    row = worker.run_one(tiny(epochs=3, learning_rate=1e12, activation="relu"))
    assert row["status"] == "ok" and row["diverged"] is True
    assert all(math.isnan(row[m][-1]) for m in METRICS)
    assert math.isnan(row["final/test/accuracy"]) and len(row["test/accuracy"]) == 3
    assert row["steps"] < 3 * 5  # stopped early


def test_steps_per_epoch_logs_fixed_periods(tiny):
    row = worker.run_one(tiny(epochs=3, steps_per_epoch=2, batch_size=64))
    assert row["epoch_steps"] == 2 and row["steps"] == 6 and len(row["test/loss"]) == 3


def test_eval_train_option_adds_inference_mode_train_metrics(tiny):
    row = worker.run_one(tiny(epochs=2, options={"eval_train": True}))
    assert len(row["train_eval/accuracy"]) == 2 and row["final/train_eval/loss"] > 0


def test_data_and_model_options_reach_their_builders(tiny):
    config = tiny(norm="keras_batch", options={"model.kernel_size": 5, "data.seed": 7})
    dataset = training.load_dataset(config)
    assert not np.array_equal(dataset.x_train, training.load_dataset(tiny()).x_train)
    wrong = worker.run_one(tiny(options={"model.kernel_sise": 5}))
    assert wrong["status"] == "error" and "kernel_sise" in wrong["error"]


def test_failing_task_gives_an_error_row():
    @tasks.register_task("test_fails")
    def fails(config):
        raise RuntimeError("boom in task")

    try:
        row = worker.run_one(RunConfig(claim="T", task="test_fails"))
    finally:
        del tasks.TASKS["test_fails"]
    assert row["status"] == "error" and "boom in task" in row["error"]
    assert row["key"] == RunConfig(claim="T", task="test_fails").key()
    unknown = worker.run_one(RunConfig(claim="T", task="no_such_task"))
    assert unknown["status"] == "error" and "no_such_task" in unknown["error"]


def test_custom_task_reuses_the_helpers(tiny):
    @tasks.register_task("test_extra")
    def extra(config):
        row = training.base_row(config)
        dataset, model = training.prepare(config)
        row.update(training.fit_and_log(config, dataset, model))
        row["extra/params"] = model.count_params()
        return row

    try:
        row = worker.run_one(tiny(task="test_extra"))
        with pytest.raises(ValueError, match="already registered"):
            tasks.register_task("test_extra")(lambda config: {})
    finally:
        del tasks.TASKS["test_extra"]
    assert row["status"] == "ok" and row["extra/params"] > 0 and len(row["test/accuracy"]) == 1


def test_rnn_on_variable_length_sequences(tiny):
    config = tiny(
        dataset="sequences", model="rnn", norm="batch", cell="lstm", widths=(8,),
        options={"data.max_train_len": 8, "data.max_test_len": 16},
    )
    row = worker.run_one(config)
    assert row["status"] == "ok", row["error"]
    assert all(math.isfinite(v) for v in row["test/loss"])
