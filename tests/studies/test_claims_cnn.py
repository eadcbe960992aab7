"""The CNN claims (C2, C7): their analyses on synthetic result tables, their figures, and
their smoke grids end to end (C4 in test_claims_c4.py)."""

import itertools

import keras
import numpy as np
import pandas
import pytest

import kerasnorm
from studies import claims
from studies.claims import _cnn_common as common
from studies.claims import c2_inference_statistics as c2
from studies.claims import c7_cnn as c7
from studies.report import stats
from tests.studies.conftest import smoke_rows


def _figure_files(paths, fig_id):
    names = sorted(p.name for p in paths)
    assert names == sorted(f"{fig_id}.{ext}" for ext in ("csv", "png", "svg"))
    assert all(p.stat().st_size > 0 for p in paths)
    return pandas.read_csv(next(p for p in paths if p.suffix == ".csv"))


# -- the shared helper --------------------------------------------------------------------


def test_batch_statistics_accuracy_uses_each_batch_and_leaves_the_model_unchanged():
    # BN without scale/offset then logits (-z, z): class 1 when the normalized value is > 0.
    # In a batch of two, the larger sample normalizes to +1 whatever the values; with the
    # moving statistics (mean 0, variance 1) the sign of the raw value decides instead.
    inputs = keras.Input((1,))
    z = kerasnorm.BatchNormalization(center=False, scale=False, epsilon=1e-6, momentum=0.5)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, use_bias=False, kernel_initializer=keras.initializers.Constant([[-1.0, 1.0]]))(z))
    x = np.array([[5.0], [6.0], [-6.0], [-5.0]], np.float32)
    y = np.array([0, 1, 0, 1])
    before = [v.numpy().copy() for v in model.non_trainable_variables]

    assert common.batch_statistics_accuracy(model, x, y, batch_size=2) == 1.0
    assert np.mean(np.argmax(model.predict(x, verbose=0), -1) == y) == 0.5
    for b, v in zip(before, model.non_trainable_variables):
        np.testing.assert_array_equal(b, v.numpy())
    # A last incomplete batch is dropped: 3 complete batches of 1 -> every sample is its
    # own mean, normalizes to 0, and both logits tie (argmax picks class 0).
    assert common.batch_statistics_accuracy(model, x[:3], y[:3], batch_size=1) == pytest.approx(2 / 3)


def test_error_pp_counts_diverged_runs_at_chance():
    rows = pandas.DataFrame({"acc": [0.9, float("nan")], "diverged": [False, True]})
    np.testing.assert_allclose(common.error_pp(rows, "acc"), [10.0, 90.0])


# -- C7 -------------------------------------------------------------------------------------

C7_CONVERGED = (2.3, 0.8, 0.3, 0.2, 0.2)  # plateau 0.0
C7_FALLING = (2.3, 1.8, 1.3, 0.8, 0.3)  # plateau 0.25


def _c7_rows(errors, seeds=range(5), spread=0.5, losses=None, rate=c7.SHARED_RATE, criterion=0.1):
    """Synthetic C7 rows at learning rate `rate`: `errors` {(dataset, norm): mean test
    error in %}; each arm's seeds scatter around it in a pattern of its own, so paired
    differences vary; the training-set loss that picks the rate is `criterion`."""
    records = []
    for k, ((dataset, norm), error) in enumerate(errors.items()):
        for seed in seeds:
            e = error + spread * ((seed + k) % 5 - 2)
            records.append({
                "claim": "C7", "status": "ok", "dataset": dataset, "norm": norm, "seed": seed,
                "learning_rate": rate, "bn_momentum": c7.BN_MOMENTUM, c7.CRITERION: criterion,
                "final/test/accuracy": 1 - e / 100, "final/train_eval/accuracy": 1 - max(e - 3, 0) / 100,
                "train/loss": (losses or {}).get((dataset, norm), C7_CONVERGED),
                "diverged": False, "epochs": 20, "num_samples": 4000 if dataset == "mnist1d" else None,
                "opt/data.test_fraction": 0.8 if dataset == "digits" else None,
                "opt/data.num_train": 1500 if dataset == "mnist5k" else None,
            })  # fmt: skip
    return pandas.DataFrame(records)


def _c7_errors(mnist1d_ln, digits_ln, digits_bn=4.0):
    return {
        ("mnist1d", "none"): 12.0, ("mnist1d", "batch"): 8.0, ("mnist1d", "layer"): mnist1d_ln,
        ("mnist1d", "group"): 9.0, ("digits", "none"): 6.0, ("digits", "batch"): digits_bn,
        ("digits", "layer"): digits_ln, ("digits", "group"): 4.5,
    }


@pytest.mark.parametrize(
    "mnist1d_ln, digits_ln, spread, verdict",
    [
        (12.0, 8.0, 0.5, "supported"),  # LN 4 pp worse on both, thresholds ~0.6 and ~0.3 pp
        (12.0, 2.0, 0.5, "partly supported"),  # digits: LN 2 pp better, wholly below
        (6.0, 2.0, 0.5, "not supported"),
        (8.6, 4.5, 2.0, "inconclusive"),  # intervals span the thresholds
    ],
)
def test_c7_verdict_follows_the_checks(mnist1d_ln, digits_ln, spread, verdict):
    analysis = claims.analyze("C7", _c7_rows(_c7_errors(mnist1d_ln, digits_ln), spread=spread))
    assert analysis["verdict"] == verdict, analysis["checks"]
    first = analysis["checks"][0]
    assert first["decisive"] and first["kind"] == "at_least"
    assert first["effect"]["mean"] == pytest.approx(mnist1d_ln - 8.0)
    assert first["threshold"] == pytest.approx(c7.RELATIVE_GAP * 8.0, abs=1e-3)
    assert "LN test error minus BN" in analysis["evidence"][0]["label"]


def test_c7_undecided_at_the_ceiling_and_when_not_converged():
    ceiling = claims.analyze("C7", _c7_rows(_c7_errors(12.0, 0.6, digits_bn=0.2), spread=0.05))
    digits = ceiling["checks"][1]
    assert digits["outcome"] == "undecided" and any("ceiling" in b for b in digits["blockers"])
    assert ceiling["verdict"] == "inconclusive"
    falling = claims.analyze("C7", _c7_rows(_c7_errors(12.0, 8.0), losses={("mnist1d", "layer"): C7_FALLING}))
    assert any("not converged" in b and "layer" in b for b in falling["checks"][0]["blockers"])
    assert falling["checks"][1]["outcome"] == "holds" and falling["verdict"] == "inconclusive"
    table = pandas.DataFrame(falling["convergence"]).set_index(["dataset", "norm"])
    assert table.loc[("mnist1d", "layer"), "converged"] == 0


def test_c7_figure_plots_the_table(tmp_path):
    analysis = claims.analyze("C7", _c7_rows(_c7_errors(12.0, 6.0)))
    data = _figure_files(c7.CLAIM.figures(analysis, tmp_path), "fig-c7-cnn")
    assert len(data) == 8
    # Datasets and arms in the study's order, not the alphabet's.
    assert list(data["dataset"]) == ["mnist1d"] * 4 + ["digits"] * 4
    assert list(data["norm"][:4]) == ["none", "batch", "layer", "group"]
    by = data.set_index(["dataset", "norm"])
    assert by.loc[("mnist1d", "layer"), "mean"] == pytest.approx(12.0)
    assert by.loc[("digits", "batch"), "mean"] == pytest.approx(4.0)
    assert (by["low"] < by["mean"]).all() and (by["mean"] < by["high"]).all()


def test_c7_grid_trains_digits_on_a_fifth_of_the_images():
    digits = [c for c in c7.grid("quick") if c.dataset == "digits"]
    assert digits and all(c.option("data.test_fraction") == c7.DIGITS_TEST_FRACTION for c in digits)
    configs = c7.grid("full")
    # BN and LN on MNIST-1D and real MNIST at every rate; GN on real MNIST at the shared rate.
    assert len(configs) == (2 * 2 * len(c7.LEARNING_RATES) + 1) * c7.SEED_PLAN.initial
    assert {c.bn_momentum for c in configs} == {0.99}  # Keras's default
    real = [c for c in configs if c.dataset == "mnist5k"]
    assert {c.norm for c in real} == {"batch", "layer", "group"}
    assert all(c.option("data.num_train") == c7.MNIST_TRAIN and c.model == "cnn2d" for c in real)


def test_c7_each_arm_is_compared_at_the_rate_its_training_loss_picks():
    # LN fits best at 0.1 (training-set loss 0.05), where its test error is 4 pp above BN's;
    # at the shared rate it is 2 pp below: the test error must not pick the rate.
    shared = _c7_rows(_c7_errors(6.0, 2.0), criterion=0.1)
    fast = _c7_rows(_c7_errors(12.0, 8.0), rate=0.1, criterion=0.05)
    fast = fast[fast["norm"] == "layer"]
    analysis = claims.analyze("C7", pandas.concat([shared, fast], ignore_index=True))
    table = pandas.DataFrame(analysis["tables"][c7.ERROR_TABLE]).set_index(["dataset", "norm"])
    assert table.loc[("mnist1d", "layer"), "learning_rate"] == 0.1
    assert table.loc[("mnist1d", "batch"), "learning_rate"] == c7.SHARED_RATE
    assert analysis["checks"][0]["effect"]["mean"] == pytest.approx(4.0)
    assert analysis["verdict"] == "supported"
    sensitivity = {row["alternative"]: row["verdict"] for row in analysis["sensitivity"]}
    assert sensitivity[c7.ALTERNATIVE] == "not supported"  # both at 0.05: LN 2 pp better


def test_c7_real_data_gives_its_own_verdict():
    errors = {**_c7_errors(12.0, 8.0), ("mnist5k", "batch"): 5.0, ("mnist5k", "layer"): 3.0,
              ("mnist5k", "group"): 5.0}
    analysis = claims.analyze("C7", _c7_rows(errors))
    real = [c for c in analysis["checks"] if c["real"]]
    assert len(real) == 1 and "MNIST 28x28" in real[0]["name"]
    assert analysis["verdict"] == "supported"  # from the synthetic tasks alone
    assert analysis["real_verdict"] == "not supported" and analysis["real_agrees"] == "disagrees"
    assert any("GN test error minus BN" in e["label"] for e in analysis["evidence"])
    table = pandas.DataFrame(analysis["convergence"])
    assert "mnist5k" in set(table["dataset"])


def test_c7_smoke_runs_end_to_end(smoke_results, tmp_path):
    rows = smoke_rows(smoke_results, "C7")
    assert set(rows["dataset"]) == {"mnist1d", "digits"}
    assert rows["final/train_eval/accuracy"].between(0, 1).all()
    assert claims.analyze("C7", rows)["verdict"] in stats.VERDICTS


# -- C2 -------------------------------------------------------------------------------------


LEVELLED = (2.3, 1.0, 0.6, 0.5, 0.49, 0.49)  # plateau 0.0
FALLING = (2.3, 2.0, 1.7, 1.4, 1.1, 0.8)  # plateau 0.2: still falling


def _c2_rows(ema_gap_099=0.2, single_cnn=11.0, inference_diff=0.0, seeds=range(5), population=80.0,
             mlp_loss=LEVELLED):
    """Synthetic C2 rows: accuracies in % per source; the EMA trails the population
    statistics by `ema_gap_099` pp at momentum 0.99 and by 10 pp at 0.999."""
    records = []
    for model, momentum, seed in itertools.product(("mlp", "cnn1d"), (0.9, 0.99, 0.999), seeds):
        pop = population + 0.3 * (seed - 2)
        gap = {0.9: 0.1, 0.99: ema_gap_099 + 0.1 * (seed % 2), 0.999: 10.0}[momentum]
        records.append({
            "claim": "C2", "status": "ok", "model": model, "bn_momentum": momentum, "seed": seed,
            "momentum": 0.9, "diverged": False, "steps": 500, "num_samples": 4000, "epochs": 5,
            "train/loss": mlp_loss if model == "mlp" else LEVELLED,
            "c2/accuracy_ema": (pop - gap) / 100,
            "c2/accuracy_population": pop / 100,
            "c2/accuracy_test_batch": (pop - 1) / 100,
            "c2/accuracy_single": (single_cnn if model == "cnn1d" else 10.0) / 100,
            "c2/batchmate_max_abs_diff_inference": inference_diff,
            "c2/batchmate_max_abs_diff_training": 2.0,
            "c2/ema_mean_shift_in_std": 0.01, "c2/ema_variance_rel_change": 0.02,
        })  # fmt: skip
    return pandas.DataFrame(records)


def _outcomes(analysis):
    return [c["outcome"] for c in analysis["checks"]]


def test_c2_verdict_follows_the_rule():
    supported = claims.analyze("C2", _c2_rows())
    assert supported["verdict"] == "supported"
    assert _outcomes(supported) == ["holds"] * 5  # 2 equivalences, independence, 2 collapses
    first = supported["evidence"][0]
    assert "EMA minus population" in first["label"] and first["mean"] == pytest.approx(-0.24)
    # The EMA lags by 2 pp at the default momentum (wholly outside +-1 pp) and a CNN's batch
    # of one keeps 60 %: the equivalences fail, independence holds, a secondary check fails.
    partly = claims.analyze("C2", _c2_rows(ema_gap_099=2.0, single_cnn=60.0))
    assert partly["verdict"] == "partly supported"
    assert _outcomes(partly) == ["fails", "fails", "holds", "holds", "fails"]
    # No decisive check holds.
    assert claims.analyze("C2", _c2_rows(ema_gap_099=2.0, inference_diff=0.5))["verdict"] == "not supported"


def test_c2_an_unconverged_or_saturated_model_leaves_the_equivalence_undecided():
    falling = claims.analyze("C2", _c2_rows(mlp_loss=FALLING))
    assert falling["checks"][0]["blockers"] == ["not converged: model=mlp (0 of 5 runs)"]
    assert falling["checks"][1]["outcome"] == "holds"
    # The MLP's equivalence is secondary: the CNN's decides; decisive, it would block the verdict.
    assert not falling["checks"][0]["decisive"] and falling["checks"][1]["decisive"]
    assert falling["verdict"] == "supported"
    sensitivity = {s["alternative"]: s["verdict"] for s in falling["sensitivity"]}
    assert sensitivity[c2.MLP_DECISIVE] == "inconclusive"
    cnn_falling = _c2_rows()
    cnn_falling["train/loss"] = [FALLING if m == "cnn1d" else LEVELLED for m in cnn_falling["model"]]
    assert claims.analyze("C2", cnn_falling)["verdict"] == "inconclusive"
    ceiling = claims.analyze("C2", _c2_rows(population=99.4))
    assert ceiling["verdict"] == "inconclusive"
    assert all(c["blockers"][0].startswith("at the ceiling") for c in ceiling["checks"][:2])


def test_c2_figure_plots_the_accuracy_table(tmp_path):
    analysis = claims.analyze("C2", _c2_rows())
    data = _figure_files(c2.CLAIM.figures(analysis, tmp_path), "fig-c2-inference-statistics")
    assert len(data) == 2 * 3 * 4
    by = data.set_index(["model", "bn_momentum", "statistics"])
    assert by.loc[("cnn1d", 0.999, "ema"), "mean"] == pytest.approx(70.0)
    assert by.loc[("mlp", 0.99, "single"), "mean"] == pytest.approx(10.0)


def test_c2_batchmate_dependence_sees_batch_statistics_only_in_training_mode():
    inputs = keras.Input((3,))
    model = keras.Model(inputs, kerasnorm.BatchNormalization()(inputs))
    x = np.random.default_rng(0).normal(size=(150, 3)).astype("float32")
    x[100:] += 5.0  # other batch-mates, other batch statistics
    assert c2.batchmate_dependence(model, x, training=False) == 0.0
    moving = [v.numpy().copy() for v in model.non_trainable_variables]
    assert c2.batchmate_dependence(model, x, training=True) > 1.0
    for before, v in zip(moving, model.non_trainable_variables):
        np.testing.assert_array_equal(before, v.numpy())


def test_c2_smoke_runs_end_to_end(smoke_results, tmp_path):
    rows = smoke_rows(smoke_results, "C2")
    for column in ("c2/accuracy_ema", "c2/accuracy_population", "c2/accuracy_test_batch", "c2/accuracy_single"):
        assert rows[column].between(0, 1).all()
    assert (rows["c2/batchmate_max_abs_diff_inference"] <= c2.INDEPENDENCE_TOLERANCE).all()
    assert (rows["c2/batchmate_max_abs_diff_training"] > 0).all()
    # (a) is the accuracy Keras reports after training, with the moving averages.
    assert (rows["c2/accuracy_ema"] == rows["final/test/accuracy"]).all()


# -- all three ------------------------------------------------------------------------------


@pytest.mark.parametrize("module", [c2, c7], ids=lambda m: m.CLAIM_ID)
def test_a_claim_whose_runs_all_failed_is_reported_not_analyzed(module, tmp_path):
    rows = pandas.DataFrame([{"claim": module.CLAIM_ID, "status": "error", "error": "Traceback ..."}] * 3)
    analysis = claims.analyze(module.CLAIM_ID, rows)
    assert analysis["verdict"] == "inconclusive"
    assert [c["outcome"] for c in analysis["checks"]] == ["undecided"]
    assert "All 3 run(s) failed" in analysis["caveats"][0]
    assert module.figures(analysis, tmp_path) == []
