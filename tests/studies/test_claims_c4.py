"""C4 (batch-size dependence): its checks and verdicts on synthetic result tables, its
figures, its grid, and its smoke profile end to end."""

import dataclasses
import itertools

import keras
import numpy as np
import pandas
import pytest
import scipy.stats

from studies import claims
from studies.claims import c4_batch_size as c4
from studies.engine import stacked, training
from studies.report import stats
from tests.studies.conftest import smoke_rows

CONVERGED = [2.0, 1.0, 0.6, 0.5, 0.49]  # the last fifth removed under 1 % of the decrease
STILL_FALLING = [2.0, 1.8, 1.6, 1.4, 1.0]  # the last fifth removed 40 %
OFFSETS = (-2, -1, 0, 1, 2)  # per-seed deviations, in units of an arm's spread
REFERENCE_OFFSETS = (0, 2, -2, 1, -1)  # the same spread, another order: differences keep a spread
MODE_GAP_AT_2 = 10.0  # training-mode minus inference-mode error at a normalization batch of 2 (4 elsewhere)


def _rows(errors, spread=0.4, seeds=range(5), loss=CONVERGED, spreads=None, reference_spread=0.2):
    """Synthetic C4 rows: `errors` {(model, norm, batch, ghost): mean test error in %}
    (ghost None for true batches). Runs at the reference batch deviate by
    ``reference_spread x REFERENCE_OFFSETS[seed]``, the others by ``spread x OFFSETS[seed]``
    (``spreads[arm]`` where given). Training-mode errors lie 4 pp above, `MODE_GAP_AT_2` at
    a normalization batch of 2."""
    records = []
    for ((model, norm, batch, ghost), error), seed in itertools.product(errors.items(), seeds):
        at_reference = batch == c4.REFERENCE_BATCH and ghost is None
        arm_spread = (spreads or {}).get((model, norm, batch, ghost), reference_spread if at_reference else spread)
        e = error + arm_spread * (REFERENCE_OFFSETS if at_reference else OFFSETS)[seed]
        gap = MODE_GAP_AT_2 if (ghost or batch) == 2 else 4.0
        records.append({
            "claim": "C4", "status": "ok", "model": model, "norm": norm, "batch_size": batch,
            "virtual_batch_size": ghost, "seed": seed, "final/test/accuracy": 1 - e / 100,
            "c4/test_accuracy_batch_stats": 1 - (e + gap) / 100, "diverged": False,
            "steps": 10 * 1600 // batch, "num_samples": 2000, "epochs": 10, "train/loss": list(loss),
            "opt/data.num_train": 1000 if model == "cnn2d" else None,
        })
    return pandas.DataFrame(records)


#: BN at a normalization batch of 2 scatters 6x as much as at 32: "unstable".
UNSTABLE = {("mlp", "batch", 2, None): 1.2, ("cnn1d", "batch", 2, None): 1.2}


def _errors(bn_mlp=20.0, ln_mlp=40.5, gn_mlp=41.0, bn_cnn=12.0, ghost_mlp=18.0, bn_mlp_4=8.0, bn_mlp_8=3.0):
    """Errors at batches 2, 4, 8 (and ghost batches) against 32: MLP BN 40 %, LN 40 %, GN 41 % at 32."""
    return {
        ("mlp", "batch", 2, None): 40.0 + bn_mlp, ("mlp", "batch", 32, None): 40.0,
        ("mlp", "batch", 4, None): 40.0 + bn_mlp_4, ("mlp", "batch", 8, None): 40.0 + bn_mlp_8,
        ("mlp", "layer", 2, None): ln_mlp, ("mlp", "layer", 32, None): 40.0,
        ("mlp", "group", 2, None): gn_mlp, ("mlp", "group", 32, None): 41.0,
        ("mlp", "ghost", 32, 2): 40.0 + ghost_mlp,
        ("mlp", "ghost", 32, 4): 40.0 + bn_mlp_4, ("mlp", "ghost", 32, 8): 40.0 + bn_mlp_8,
        ("cnn1d", "batch", 2, None): 8.0 + bn_cnn, ("cnn1d", "batch", 32, None): 8.0,
        ("cnn1d", "layer", 2, None): 9.0, ("cnn1d", "layer", 32, None): 9.5,
        ("cnn1d", "ghost", 32, 2): 14.0,
    }


def _outcomes(analysis):
    return {c["name"]: c["outcome"] for c in analysis["checks"]}


def _check(analysis, start, decisive=None):
    return next(c for c in analysis["checks"] if c["name"].startswith(start)
                and (decisive is None or c["decisive"] == decisive))


def test_supported_when_bn_rises_at_2_4_8_with_true_and_ghost_batches_and_scatters_and_ln_gn_stay_flat():
    analysis = claims.analyze("C4", _rows(_errors(), spreads=UNSTABLE))
    assert analysis["verdict"] == "supported"
    outcomes = _outcomes(analysis)
    assert set(outcomes.values()) == {"holds"}
    # Seven decisive checks, all on the MLP: BN's rise at 2, 4, 8 with true and ghost
    # batches, and its spread at 2; the headline is its true-batch rise at 2.
    decisive = [c for c in analysis["checks"] if c["decisive"]]
    assert len(decisive) == 7 and all(c["name"].endswith("MLP") for c in decisive)
    assert {c["threshold"] for c in decisive if "minus" in c["name"]} == {3.0, 1.0}
    assert analysis["headline"] == decisive[0]["name"] and decisive[0]["name"].startswith("BN error at batch 2")
    spread = _check(analysis, "BN seed sd", decisive=True)
    assert spread["effect"]["mean"] == pytest.approx(6.0) and spread["unit"] == "x"
    first = analysis["evidence"][0]
    assert first["mean"] == pytest.approx(20.0) and first["n"] == 5


@pytest.mark.parametrize(
    "errors, spread, spreads, verdict",
    [
        # LN moves as much as BN (a secondary check fails): partly.
        (_errors(ln_mlp=50.0), 0.4, UNSTABLE, "partly supported"),
        # BN flat with true and with ghost batches at 2, 4 and 8, and steadier at 2: every
        # decisive check fails.
        (_errors(bn_mlp=0.5, ghost_mlp=0.5, bn_mlp_4=0.5, bn_mlp_8=-0.5), 0.4,
         {("mlp", "batch", 2, None): 0.05}, "not supported"),
        # BN degrades with true batches only: the degradation is SGD's, not BN's.
        (_errors(ghost_mlp=0.0), 0.4, UNSTABLE, "partly supported"),
        # BN rises by 3 pp with a spread that leaves the interval across the threshold.
        (_errors(bn_mlp=3.0), 3.0, UNSTABLE, "inconclusive"),
        # BN at 8 rises by 0.3 pp only (Wu & He: 1.2): the batch-8 checks fail, partly.
        (_errors(bn_mlp_8=0.3), 0.1, UNSTABLE, "partly supported"),
        # BN degrades but scatters no more than at 32: not "unstable", partly.
        (_errors(), 0.4, {("mlp", "batch", 2, None): 0.05}, "partly supported"),
        # A secondary check fails (the CNN's BN stays flat): supported turns partly.
        (_errors(bn_cnn=0.0), 0.4, UNSTABLE, "partly supported"),
    ],
)
def test_verdict_paths(errors, spread, spreads, verdict):
    assert claims.analyze("C4", _rows(errors, spread=spread, spreads=spreads))["verdict"] == verdict


def test_spread_ratio_is_the_sd_ratio_with_the_f_interval():
    a, b = np.array([0.0, 2.0, 4.0, 6.0]), np.array([0.0, 1.0, 2.0, 3.0])
    ratio = c4.spread_ratio(a, b)
    q = scipy.stats.f.ppf(0.975, 3, 3)
    assert ratio.mean == pytest.approx(2.0) and ratio.n == 4
    assert ratio.low == pytest.approx(2.0 / np.sqrt(q)) and ratio.high == pytest.approx(2.0 * np.sqrt(q))
    # NaN bounds without two values on each side or without a reference spread
    assert np.isnan(c4.spread_ratio([1.0, 2.0], [3.0]).low)
    assert np.isnan(c4.spread_ratio([1.0, 2.0], [3.0, 3.0]).high)


@pytest.mark.parametrize("bn2_spread, outcome", [(1.2, "holds"), (0.05, "fails"), (0.3, "undecided")])
def test_spread_check_holds_fails_or_undecides(bn2_spread, outcome):
    rows = _rows(_errors(), spreads={("mlp", "batch", 2, None): bn2_spread})
    assert _check(claims.analyze("C4", rows), "BN seed sd", decisive=True)["outcome"] == outcome


def test_mode_gap_check_reads_training_against_inference_mode():
    analysis = claims.analyze("C4", _rows(_errors(), spreads=UNSTABLE))
    check = _check(analysis, "BN training-mode minus inference-mode error at batch 2")
    assert not check["decisive"] and check["effect"]["mean"] == pytest.approx(MODE_GAP_AT_2 - 4.0)
    assert check["outcome"] == "holds"


def test_sensitivity_gives_the_verdict_decided_at_batch_2_only():
    # BN at 8 rises by 1 pp, its threshold: undecided there, but the rule of the earlier
    # run decided at 2 only.
    analysis = claims.analyze("C4", _rows(_errors(bn_mlp_8=1.0), spreads=UNSTABLE))
    sensitivity = {s["alternative"]: s["verdict"] for s in analysis["sensitivity"]}
    assert analysis["verdict"] == "inconclusive" and sensitivity[c4.DECIDED_AT_2] == "supported"


def test_real_data_checks_give_a_verdict_of_their_own():
    errors = _errors()
    errors.update({("cnn2d", "batch", 2, None): 12.0, ("cnn2d", "batch", 8, None): 6.0,
                   ("cnn2d", "batch", 32, None): 4.0, ("cnn2d", "layer", 2, None): 6.0,
                   ("cnn2d", "layer", 32, None): 6.2})
    analysis = claims.analyze("C4", _rows(errors, spreads=UNSTABLE))
    real = [c for c in analysis["checks"] if c["real"]]
    assert real and all(c["name"].endswith("2-D CNN, MNIST") for c in real)
    assert {c["name"].split(" minus")[0] for c in real if c["decisive"]} == {"BN error at batch 2", "BN error at batch 8"}
    assert analysis["verdict"] == "supported" and analysis["real_verdict"] == "supported"
    assert "cnn2d" in set(pandas.DataFrame(analysis["convergence"])["model"])
    errors[("cnn2d", "batch", 8, None)] = 3.5  # no rise at 8 on the real data: its verdict alone changes
    analysis = claims.analyze("C4", _rows(errors, spreads=UNSTABLE))
    assert analysis["verdict"] == "supported" and analysis["real_verdict"] == "partly supported"


def test_an_unconverged_arm_leaves_its_checks_undecided():
    rows = _rows(_errors())
    bn2 = rows.index[(rows["model"] == "mlp") & (rows["norm"] == "batch") & (rows["batch_size"] == 2)]
    # one unconverged run of five: the arm's median run converged, the check decides
    rows.loc[bn2[:1], "train/loss"] = pandas.Series([STILL_FALLING], index=bn2[:1])
    check = next(c for c in claims.analyze("C4", rows)["checks"] if c["name"].startswith("BN error at batch 2") and c["decisive"])
    assert check["outcome"] == "holds"
    # three of five: it has not
    rows.loc[bn2[:3], "train/loss"] = pandas.Series([STILL_FALLING] * 3, index=bn2[:3])
    analysis = claims.analyze("C4", rows)
    check = next(c for c in analysis["checks"] if c["name"].startswith("BN error at batch 2") and c["decisive"])
    assert check["outcome"] == "undecided"
    assert any("not converged" in b and "norm=batch" in b for b in check["blockers"])
    assert analysis["verdict"] == "inconclusive"
    convergence = pandas.DataFrame(analysis["convergence"]).set_index(["model", "norm", "batch_size"])
    assert convergence.loc[("mlp", "batch", 2), "converged"].item() == 2


def test_two_arms_at_chance_cannot_show_a_difference():
    errors = _errors()
    errors[("mlp", "layer", 2, None)] = 89.6
    errors[("mlp", "layer", 32, None)] = 89.8
    check = next(c for c in claims.analyze("C4", _rows(errors, spread=0.05))["checks"] if c["name"].startswith("LN"))
    assert check["outcome"] == "undecided" and any("at the floor" in b for b in check["blockers"])


def test_diverged_runs_count_at_chance():
    rows = _rows(_errors(bn_mlp=0.0))
    bn2 = (rows["model"] == "mlp") & (rows["norm"] == "batch") & (rows["batch_size"] == 2)
    rows.loc[bn2, "diverged"] = True
    rows.loc[bn2, ["final/test/accuracy", "c4/test_accuracy_batch_stats"]] = float("nan")
    failed = rows.iloc[:1].assign(status="error")
    analysis = claims.analyze("C4", pandas.concat([rows, failed], ignore_index=True))
    table = pandas.DataFrame(analysis["tables"][c4.ERROR_TABLE]).set_index(["model", "norm", "batch_size", "norm_batch"])
    bn = table.loc[("mlp", "batch", 2, 2)]
    assert bn["error_pp"] == pytest.approx(90.0) and bn["diverged"] == 5 and bn["n"] == 5
    assert any("1 run(s) failed" in c and "5 diverged" in c for c in analysis["caveats"])


def test_error_table_has_the_mode_gap_and_the_values_per_statistic():
    table = pandas.DataFrame(claims.analyze("C4", _rows(_errors()))["tables"][c4.ERROR_TABLE])
    by = table.set_index(["model", "norm", "batch_size", "norm_batch"])
    assert by.loc[("mlp", "batch", 32, 32), "mode_gap_pp"] == pytest.approx(4.0)
    assert by.loc[("mlp", "ghost", 32, 2), "mode_gap_pp"] == pytest.approx(MODE_GAP_AT_2)
    assert by.loc[("cnn1d", "ghost", 32, 2), "values_per_statistic"] == 2 * c4.POSITIONS["cnn1d"]
    assert by.loc[("mlp", "batch", 2, 2), "seed_sd_pp"] == pytest.approx(0.4 * np.std(OFFSETS, ddof=1))


def test_figures_plot_the_tables(tmp_path):
    analysis = claims.analyze("C4", _rows(_errors()))
    paths = c4.CLAIM.figures(analysis, tmp_path)
    assert sorted(p.name for p in paths) == sorted(
        f"{fig}.{ext}" for fig in ("fig-c4-batch-size", "fig-c4-values-per-statistic") for ext in ("png", "svg", "csv"))
    sizes = pandas.read_csv(tmp_path / "fig-c4-batch-size.csv")
    mlp = sizes[sizes["panel"] == "MLP"].set_index(["series", "batch"])
    assert mlp.loc[("batch", 2), "mean"] == pytest.approx(60.0)
    # The ghost line ends at plain BN at the reference batch.
    assert mlp.loc[("ghost", 32), "mean"] == pytest.approx(40.0)
    relative = sizes[sizes["panel"] == "relative"].set_index(["series", "batch"])
    assert relative.loc[("MLP BN", 2), "mean"] == pytest.approx(1.5)
    assert relative.loc[("Wu & He BN", 2), "mean"] == pytest.approx(34.7 / 23.6)
    values = pandas.read_csv(tmp_path / "fig-c4-values-per-statistic.csv").set_index(["model", "batches", "values_per_statistic"])
    assert values.loc[("cnn1d", "batch", 20), "mean"] == pytest.approx(20.0)
    again = c4.CLAIM.figures(analysis, tmp_path / "again")
    for a, b in zip(sorted(paths), sorted(again)):
        assert a.read_bytes() == b.read_bytes()


def test_grid_pairs_seeds_and_separates_the_two_batch_sizes():
    full = c4.grid("full")
    mnist1d = [c for c in full if c.dataset == "mnist1d"]
    true_batches = [c for c in mnist1d if c.norm != "ghost"]
    ghosts = [c for c in mnist1d if c.norm == "ghost"]
    assert {c.model for c in mnist1d} == {"mlp", "cnn1d"}
    assert {c.batch_size for c in true_batches} == {2, 4, 8, 32, 128}
    assert {c.norm for c in true_batches if c.batch_size in (4, 8)} == {"batch"}
    assert all(c.learning_rate == pytest.approx(0.05 * c.batch_size / 32) for c in true_batches)
    # Ghost arms change the normalization batch only: gradient batch and rate stay at 32's.
    assert {c.virtual_batch_size for c in ghosts} >= {2, 4, 8, 16}
    assert all(c.batch_size == 32 and c.learning_rate == pytest.approx(0.05) for c in ghosts)
    # Equal epochs up to batch 32; the CNN's batch 128 trains longer (its few steps had not converged).
    for model in ("mlp", "cnn1d"):
        assert len({c.epochs for c in mnist1d if c.model == model and c.batch_size <= 32}) == 1
    assert {c.epochs for c in mnist1d if c.model == "cnn1d" and c.batch_size == 128} == {45}
    seeds = {arm: {c.seed for c in group} for arm, group in itertools.groupby(
        sorted(full, key=lambda c: (c.model, c.norm, c.batch_size, c.virtual_batch_size or 0)),
        key=lambda c: (c.model, c.norm, c.batch_size, c.virtual_batch_size))}
    assert len({frozenset(s) for s in seeds.values()}) == 1 and len(next(iter(seeds.values()))) == c4.SEED_PLAN.initial
    renorm = next(c for c in full if c.norm == "batch_renorm" and c.batch_size == 2)
    steps = renorm.epochs * 1600 // 2
    assert renorm.option("model.renorm_warmup") == (round(0.05 * steps), round(0.25 * steps))
    # The real-data task: the 2-D CNN on MNIST digits, stacked, fewer passes at small batches.
    real = [c for c in full if c.dataset == "mnist5k"]
    assert {c.model for c in real} == {"cnn2d"} and {c.norm for c in real} == {"batch", "layer", "group"}
    assert {c.batch_size for c in real} == {2, 8, 32, 128} and all(stacked.stackable(c) for c in real)
    assert all(c.learning_rate == pytest.approx(0.05 * c.batch_size / 32) for c in real)
    profile = c4.PROFILES["full"].real
    for c in real:
        assert c.epochs * c.steps_per_epoch * c.batch_size == pytest.approx(
            profile.passes[c.batch_size] * profile.num_train, rel=0.15)


def test_real_data_runs_test_on_the_first_thousand_digits(tiny):
    config = c4.real_config("batch", 32, c4.PROFILES["full"].real)
    dataset = training.load_dataset(config)
    subset = c4.real_test(config, dataset)
    assert len(subset.x_test) == c4.REAL_TEST_SAMPLES and len(subset.x_train) == len(dataset.x_train)
    assert np.array_equal(subset.y_test, dataset.y_test[: c4.REAL_TEST_SAMPLES])
    mnist1d = tiny()
    assert c4.real_test(mnist1d, training.load_dataset(mnist1d)) is not None
    assert len(c4.real_test(mnist1d, training.load_dataset(mnist1d)).x_test) == 40


def test_schedule_warms_up_then_decays_to_zero_as_keras_cosine_decay():
    config = dataclasses.replace(c4.grid("full")[0], epochs=10)
    rates = c4.common.warmup_cosine(config, steps_per_epoch=100, warmup_epochs=1.0)
    assert rates.shape == (1000,) and rates.dtype == np.float32
    lr = rates[[0, 50, 100, 550, 999]]
    assert lr[0] == 0.0 and lr[1] == pytest.approx(config.learning_rate / 2)
    assert lr[2] == pytest.approx(config.learning_rate) and lr[3] == pytest.approx(config.learning_rate / 2)
    assert lr[4] == pytest.approx(0.0, abs=1e-6)
    keras_schedule = keras.optimizers.schedules.CosineDecay(
        0.0, 900, warmup_target=config.learning_rate, warmup_steps=100
    )
    steps = [0, 1, 37, 99, 100, 101, 500, 998, 999]
    np.testing.assert_allclose(rates[steps], [float(keras_schedule(s)) for s in steps], rtol=1e-6, atol=1e-9)
    # a standalone run reads the same table through `StepRates`
    schedule = training.StepRates(rates)
    assert [float(schedule(s)) for s in (0, 550, 999, 5000)] == [rates[0], rates[550], rates[999], rates[999]]


def test_smoke_runs_end_to_end(smoke_results):
    rows = smoke_rows(smoke_results, "C4")
    assert rows["c4/test_accuracy_batch_stats"].between(0, 1).all()
    analysis = claims.analyze("C4", rows)
    assert analysis["verdict"] in stats.VERDICTS
    assert {c["name"].split(",")[-1].strip() for c in analysis["checks"]} == {"MLP", "CNN"}
    assert analysis["real_verdict"] is None  # the smoke profile has no real-data task


def test_a_claim_whose_runs_all_failed_is_inconclusive_without_figures(tmp_path):
    rows = pandas.DataFrame([{"claim": "C4", "status": "error", "error": "Traceback ..."}] * 3)
    analysis = claims.analyze("C4", rows)
    assert analysis["verdict"] == "inconclusive" and "All 3 run(s) failed" in analysis["caveats"][0]
    assert c4.CLAIM.figures(analysis, tmp_path) == []
