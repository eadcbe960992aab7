"""C4 (batch-size dependence): its checks and verdicts on synthetic result tables, its
figures, its grid, and its smoke profile end to end."""

import dataclasses
import itertools

import keras
import numpy as np
import pandas
import pytest

from studies import claims
from studies.claims import c4_batch_size as c4
from studies.engine import training
from studies.report import stats
from tests.studies.conftest import smoke_rows

CONVERGED = [2.0, 1.0, 0.6, 0.5, 0.49]  # the last fifth removed under 1 % of the decrease
STILL_FALLING = [2.0, 1.8, 1.6, 1.4, 1.0]  # the last fifth removed 40 %
OFFSETS = (-2, -1, 0, 1, 2)  # per-seed deviations, in units of `spread`


def _rows(errors, spread=0.4, seeds=range(5), loss=CONVERGED):
    """Synthetic C4 rows: `errors` {(model, norm, batch, ghost): mean test error in %}
    (ghost None for true batches). Runs at the reference batch sit at their mean; the
    others deviate by ``spread x OFFSETS[seed]``, so paired differences have that spread."""
    records = []
    for ((model, norm, batch, ghost), error), seed in itertools.product(errors.items(), seeds):
        at_reference = batch == c4.REFERENCE_BATCH and ghost is None
        e = error + (0.0 if at_reference else spread * OFFSETS[seed])
        records.append({
            "claim": "C4", "status": "ok", "model": model, "norm": norm, "batch_size": batch,
            "virtual_batch_size": ghost, "seed": seed, "final/test/accuracy": 1 - e / 100,
            "c4/test_accuracy_batch_stats": 1 - (e + 4.0) / 100, "diverged": False,
            "steps": 10 * 1600 // batch, "num_samples": 2000, "epochs": 10, "train/loss": list(loss),
        })
    return pandas.DataFrame(records)


def _errors(bn_mlp=20.0, ln_mlp=40.5, gn_mlp=41.0, bn_cnn=12.0, ghost_mlp=18.0):
    """Errors at batch 2 (and ghost 2) against 32: MLP BN 40 %, LN 40 %, GN 41 % at 32."""
    return {
        ("mlp", "batch", 2, None): 40.0 + bn_mlp, ("mlp", "batch", 32, None): 40.0,
        ("mlp", "layer", 2, None): ln_mlp, ("mlp", "layer", 32, None): 40.0,
        ("mlp", "group", 2, None): gn_mlp, ("mlp", "group", 32, None): 41.0,
        ("mlp", "ghost", 32, 2): 40.0 + ghost_mlp,
        ("cnn1d", "batch", 2, None): 8.0 + bn_cnn, ("cnn1d", "batch", 32, None): 8.0,
        ("cnn1d", "layer", 2, None): 9.0, ("cnn1d", "layer", 32, None): 9.5,
        ("cnn1d", "ghost", 32, 2): 14.0,
    }


def _outcomes(analysis):
    return {c["name"]: c["outcome"] for c in analysis["checks"]}


def test_supported_when_bn_rises_with_true_and_ghost_batches_and_ln_gn_stay_flat():
    analysis = claims.analyze("C4", _rows(_errors()))
    assert analysis["verdict"] == "supported"
    outcomes = _outcomes(analysis)
    assert set(outcomes.values()) == {"holds"} and len(outcomes) == 4 + 3
    # Two decisive checks, both BN's on the MLP; the headline is its true-batch rise.
    decisive = [c["name"] for c in analysis["checks"] if c["decisive"]]
    assert len(decisive) == 2 and all(name.endswith("MLP") for name in decisive)
    assert analysis["headline"] == decisive[0] and decisive[0].startswith("BN error at batch 2")
    assert "ghost" in decisive[1]
    first = analysis["evidence"][0]
    assert first["mean"] == pytest.approx(20.0) and first["n"] == 5


@pytest.mark.parametrize(
    "errors, spread, verdict",
    [
        # LN moves as much as BN (a secondary check fails): partly.
        (_errors(ln_mlp=50.0), 0.4, "partly supported"),
        # BN flat with true and with ghost batches: every decisive check fails.
        (_errors(bn_mlp=0.5, ghost_mlp=0.5), 0.4, "not supported"),
        # BN degrades with true batches only: the degradation is SGD's, not BN's.
        (_errors(ghost_mlp=0.0), 0.4, "partly supported"),
        # BN rises by 3 pp with a spread that leaves the interval across the threshold.
        (_errors(bn_mlp=3.0), 3.0, "inconclusive"),
        # A secondary check fails (the CNN's BN stays flat): supported turns partly.
        (_errors(bn_cnn=0.0), 0.4, "partly supported"),
    ],
)
def test_verdict_paths(errors, spread, verdict):
    assert claims.analyze("C4", _rows(errors, spread=spread))["verdict"] == verdict


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
    assert np.allclose(table["mode_gap_pp"], 4.0)
    by = table.set_index(["model", "norm", "batch_size", "norm_batch"])
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
    true_batches = [c for c in full if c.norm != "ghost"]
    ghosts = [c for c in full if c.norm == "ghost"]
    assert {c.model for c in full} == {"mlp", "cnn1d"}
    assert {c.batch_size for c in true_batches} >= {2, 32, 128}
    assert all(c.learning_rate == pytest.approx(0.05 * c.batch_size / 32) for c in true_batches)
    # Ghost arms change the normalization batch only: gradient batch and rate stay at 32's.
    assert {c.virtual_batch_size for c in ghosts} >= {2, 4, 8, 16}
    assert all(c.batch_size == 32 and c.learning_rate == pytest.approx(0.05) for c in ghosts)
    assert all(len({c.epochs for c in full if c.model == m}) == 1 for m in ("mlp", "cnn1d"))
    seeds = {arm: {c.seed for c in group} for arm, group in itertools.groupby(
        sorted(full, key=lambda c: (c.model, c.norm, c.batch_size, c.virtual_batch_size or 0)),
        key=lambda c: (c.model, c.norm, c.batch_size, c.virtual_batch_size))}
    assert len({frozenset(s) for s in seeds.values()}) == 1 and len(next(iter(seeds.values()))) == c4.SEED_PLAN.initial
    renorm = next(c for c in full if c.norm == "batch_renorm" and c.batch_size == 2)
    steps = renorm.epochs * 1600 // 2
    assert renorm.option("model.renorm_warmup") == (round(0.05 * steps), round(0.25 * steps))


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


def test_a_claim_whose_runs_all_failed_is_inconclusive_without_figures(tmp_path):
    rows = pandas.DataFrame([{"claim": "C4", "status": "error", "error": "Traceback ..."}] * 3)
    analysis = claims.analyze("C4", rows)
    assert analysis["verdict"] == "inconclusive" and "All 3 run(s) failed" in analysis["caveats"][0]
    assert c4.CLAIM.figures(analysis, tmp_path) == []
