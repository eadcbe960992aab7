"""The MLP claims C1 and C3: their analyses on synthetic result tables (the verdict
follows the stated rule, and flips when the evidence does), their figures, the
measurements their tasks make, and their smoke grids end to end."""

import math

import keras
import numpy as np
import pandas
import pytest

from studies import stats, sweep
from studies.__main__ import main
from studies.claims import c1_speed as c1
from studies.claims import c3_regularization as c3

SEEDS = (0, 1, 2, 3, 4)


def _jitter(seed, scale=0.01):
    return scale * (seed - 2) / 2


# --- C1 ---------------------------------------------------------------------------------


def _c1_row(norm, lr, seed, curve, activation="sigmoid", every=50):
    diverged = any(math.isnan(a) for a in curve)
    return {
        "claim": "C1", "status": "ok", "activation": activation, "norm": norm,
        "learning_rate": lr, "seed": seed, "epoch_steps": every, "diverged": diverged,
        "batch_size": 32, "num_samples": None, "test/accuracy": tuple(curve),
        "final/test/accuracy": curve[-1],
    }  # fmt: skip


def _ramp(reach_at, final, evaluations=10):
    """A curve rising linearly to `final` at evaluation `reach_at` (1-based), then flat."""
    return [final * min(1.0, (i + 1) / reach_at) for i in range(evaluations)]


def _c1_rows(bn_fast=True, bn_stable_higher=True):
    rows = []
    for seed in SEEDS:
        j = _jitter(seed)
        rows.append(_c1_row("none", 0.1, seed, _ramp(8, 0.5 + j)))
        rows.append(_c1_row("none", 1.0, seed, [0.2] + [math.nan] * 9))  # diverges
        rows.append(_c1_row("batch", 0.1, seed, _ramp(2 if bn_fast else 8, 0.5 + j)))
        late = _ramp(3, 0.5 + j) if bn_stable_higher else [0.2] + [math.nan] * 9
        rows.append(_c1_row("batch", 1.0, seed, late))
    return pandas.DataFrame(rows)


def test_c1_steps_to_target_counts_censored_runs_at_the_budget():
    assert c1._steps_to([0.1, 0.3, 0.5], 50, 0.3) == (100, True)
    assert c1._steps_to([0.1, 0.2, math.nan], 50, 0.3) == (150, False)


def test_c1_supported_when_batch_norm_is_faster_and_tolerates_a_higher_rate():
    analysis = c1.analyze(_c1_rows())
    assert analysis["verdict"] == "supported"
    assert all(analysis["parts"].values())
    best = pandas.DataFrame(analysis["tables"][c1.BEST]).set_index("norm")
    # The target is 90% of the baseline's best final accuracy (0.5 on average).
    assert best.loc["none", "target"] == pytest.approx(0.45)
    assert best.loc["batch", "learning_rate"] == 0.1
    # BN reaches 0.45 at the 2nd evaluation (100 steps); none at the 8th (400 steps).
    assert best.loc["batch", "mean"] == pytest.approx(100)
    assert best.loc["none", "mean"] == pytest.approx(400, abs=50)
    stable = pandas.DataFrame(analysis["tables"][c1.LARGEST]).set_index("norm")
    assert stable.loc["batch", "mean"] == pytest.approx(1.0)
    assert stable.loc["none", "mean"] == pytest.approx(0.1)


def test_c1_not_supported_when_batch_norm_is_neither_faster_nor_more_stable():
    analysis = c1.analyze(_c1_rows(bn_fast=False, bn_stable_higher=False))
    assert analysis["verdict"] == "not supported"
    assert not any(analysis["parts"].values())


def test_c1_partly_supported_when_one_activation_of_two_shows_it():
    relu = _c1_rows(bn_fast=False, bn_stable_higher=False).assign(activation="relu")
    analysis = c1.analyze(pandas.concat([_c1_rows(), relu], ignore_index=True))
    assert analysis["verdict"] == "partly supported"


def test_c1_counts_failed_runs_and_leaves_them_out():
    rows = _c1_rows()
    failed = {**rows.iloc[0].to_dict(), "status": "error", "test/accuracy": (), "final/test/accuracy": math.nan}
    analysis = c1.analyze(pandas.concat([rows, pandas.DataFrame([failed])], ignore_index=True))
    assert analysis["verdict"] == "supported"
    assert any("1 of 21 runs failed" in c for c in analysis["caveats"])


def _read_csv_and_check_files(paths, fig_id):
    names = {p.name for p in paths}
    assert names == {f"{fig_id}.png", f"{fig_id}.svg", f"{fig_id}.csv"}
    for path in paths:
        assert path.stat().st_size > 0
    return pandas.read_csv(next(p for p in paths if p.suffix == ".csv"))


def test_c1_figures_write_the_plotted_numbers(tmp_path):
    analysis = c1.analyze(_c1_rows())
    paths = c1.figures(analysis, tmp_path)
    csv = _read_csv_and_check_files([p for p in paths if p.stem == "fig-c1-steps-vs-lr"], "fig-c1-steps-vs-lr")
    table = pandas.DataFrame(analysis["tables"][c1.BY_LR])
    assert np.allclose(np.sort(csv["mean"]), np.sort(table["mean"]))
    _read_csv_and_check_files([p for p in paths if p.stem == "fig-c1-curves"], "fig-c1-curves")
    # Regenerating gives the same bytes.
    first = {p.name: p.read_bytes() for p in paths}
    again = c1.figures(analysis, tmp_path / "again")
    assert {p.name: p.read_bytes() for p in again} == first


# --- C3 ---------------------------------------------------------------------------------


def _c3_rows(gaps, train=1.0):
    rows = []
    for arm, gap in gaps.items():
        for seed in SEEDS:
            test = train - gap - _jitter(seed)
            rows.append({
                "claim": "C3", "status": "ok", "opt/c3/arm": arm, "seed": seed, "diverged": False,
                "final/train_eval/accuracy": train, "final/test/accuracy": test,
                "num_samples": None, "epochs": 20, "epoch_steps": 75, "c3/train_examples": 1000,
            })  # fmt: skip
    return pandas.DataFrame(rows)


REGULARIZES = {
    "none": 0.50, "dropout 0.1": 0.45, "dropout 0.3": 0.40, "batch 64": 0.44,
    "ghost 16": 0.40, "ghost 4": 0.30, "batch, no noise": 0.49,
}  # fmt: skip


def test_c3_supported_when_the_gap_follows_the_batch_noise():
    analysis = c3.analyze(_c3_rows(REGULARIZES))
    assert analysis["verdict"] == "supported", analysis["parts"]
    table = pandas.DataFrame(analysis["tables"][c3.BY_ARM]).set_index("arm")
    assert table.loc["ghost 4", "gap_mean"] == pytest.approx(0.30)


def test_c3_verdict_flips_when_batch_norm_does_not_regularize():
    flat = {arm: 0.50 for arm in REGULARIZES} | {"dropout 0.1": 0.40, "dropout 0.3": 0.30}
    analysis = c3.analyze(_c3_rows(flat))
    assert analysis["verdict"] == "not supported", analysis["parts"]


def test_c3_noise_free_arm_keeping_the_effect_is_only_partly_supported():
    kept = REGULARIZES | {"batch, no noise": 0.44}
    analysis = c3.analyze(_c3_rows(kept))
    assert analysis["verdict"] == "partly supported"
    assert [held for held in analysis["parts"].values()] == [True, True, False, True]


def test_c3_figure_csv_holds_each_arm_gap(tmp_path):
    analysis = c3.analyze(_c3_rows(REGULARIZES))
    csv = _read_csv_and_check_files(c3.figures(analysis, tmp_path), "fig-c3-gap")
    assert list(csv["arm"]) == list(c3.ARMS)
    assert csv.set_index("arm").loc["batch 64", "gap_mean"] == pytest.approx(0.44)


def test_c3_population_batch_norm_uses_exact_training_set_statistics():
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(64, 5)).astype("float32")
    inputs = keras.Input((5,))
    h = keras.layers.Dense(4, use_bias=False)(inputs)
    h = c3.PopulationBatchNormalization()(h)
    model = keras.Model(inputs, keras.layers.Dense(4, use_bias=False)(h))
    callback = c3.Recalibrate(x)
    callback.set_model(model)
    callback.recalibrate()
    layer = model.layers[2]
    dense = np.asarray(model.layers[1](x))
    np.testing.assert_allclose(layer.moving_mean.numpy(), dense.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.moving_variance.numpy(), dense.var(0), rtol=1e-4)
    # No batch noise: in training, a sample's output does not depend on its batch-mates.
    alone = np.asarray(model(x[:1], training=True))
    together = np.asarray(model(x[:8], training=True))[:1]
    np.testing.assert_allclose(alone, together, rtol=1e-5, atol=1e-6)


# --- End to end -------------------------------------------------------------------------


def test_smoke_grids_run_end_to_end_and_analyze(tmp_path):
    assert main(["run", "--claims", "C1,C3", "--profile", "smoke", "--results", str(tmp_path)]) == 0
    rows = sweep.load_rows(tmp_path)
    assert (rows["status"] == "ok").all(), rows["error"].dropna().tolist()
    for module in (c1, c3):
        claim_rows = rows[rows["claim"] == module.CLAIM_ID].reset_index(drop=True)
        assert len(claim_rows) == len(module.grid("smoke"))
        analysis = module.analyze(claim_rows)
        assert analysis["verdict"] in stats.VERDICTS
        written = module.figures(analysis, tmp_path / "figures")
        assert {p.stem for p in written} == set(analysis["figures"])
    c3_rows = rows[rows["claim"] == "C3"]
    assert (c3_rows["c3/train_examples"] == 256).all()
    assert c3_rows["train_eval/accuracy"].map(len).eq(1).all()
