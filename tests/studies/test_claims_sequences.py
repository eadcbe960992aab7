"""The sequence claims (C5, C6): their measurements, their analyses on synthetic result
tables, their figures, and their smoke grids end to end."""

import dataclasses
import math

import numpy as np
import pandas
import pytest

from studies import claims
from studies.claims import c5_recurrent as c5
from studies.claims import c6_layer_norm_sequences as c6
from studies.report import stats
from tests.studies.conftest import smoke_rows


def _figure_files(paths, fig_id):
    mine = [p for p in paths if p.stem == fig_id]
    assert sorted(p.suffix for p in mine) == [".csv", ".png", ".svg"]
    assert all(p.stat().st_size > 0 for p in mine)
    return pandas.read_csv(next(p for p in mine if p.suffix == ".csv"))


def _assert_regenerates_identically(module, analysis, tmp_path):
    first = module.figures(analysis, tmp_path / "a")
    second = module.figures(analysis, tmp_path / "b")
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), a.name


# -- shared -------------------------------------------------------------------------------


def test_the_framework_keeps_ok_rows_and_counts_failed_and_diverged(monkeypatch):
    seen = {}

    def analyze(ok, runs):
        seen.update(ok=ok, runs=runs)
        return claims.no_runs(runs)

    monkeypatch.setattr(c5, "CLAIM", dataclasses.replace(c5.CLAIM, analyze=analyze))
    rows = pandas.DataFrame({
        "claim": ["C5", "C5", "C5", "C5", "C6"], "status": ["ok", "ok", "error", "ok", "ok"],
        "diverged": [False, True, None, False, False], "x": [1, 2, 3, 4, 5],
    })  # fmt: skip
    claims.analyze("C5", rows)
    assert seen["ok"]["x"].tolist() == [1, 2, 4]
    assert "3 runs ok, 1 failed" in seen["runs"].summary and "1 of the ok runs diverged" in seen["runs"].summary


def test_a_claim_without_finished_runs_is_inconclusive_one_way_for_all():
    for claim_id in claims.CLAIM_IDS:
        rows = pandas.DataFrame({"claim": [claim_id], "status": ["error"], "key": ["k"]})
        analysis = claims.analyze(claim_id, rows)
        assert analysis["verdict"] == "inconclusive"
        assert analysis["caveats"] == ["All 1 run(s) failed; their errors are in the stored rows."]


# -- C5 -----------------------------------------------------------------------------------


def test_c5_accuracy_by_length_buckets_and_bins():
    T = c5.TRAIN_LEN
    lengths = np.array([5, T, T + 1, 2 * T, 2 * T + 1, 4 * T])
    correct = np.array([True, False, True, True, False, False])
    row = c5.accuracy_by_length(correct, lengths)
    assert row["c5/accuracy_le_T"] == 0.5 and row["c5/count_le_T"] == 2
    assert row["c5/accuracy_T_2T"] == 1.0 and row["c5/count_T_2T"] == 2
    assert row["c5/accuracy_2T_4T"] == 0.0 and row["c5/count_2T_4T"] == 2
    assert row["c5/accuracy_gt_T"] == 0.5 and row["c5/count_gt_T"] == 4
    uppers = row["c5/length_bin_upper"]
    assert uppers[0] == c5.LENGTH_BIN and uppers[-1] == 4 * T
    by_bin = dict(zip(uppers, row["c5/accuracy_by_length"]))
    assert by_bin[10] == 1.0 and by_bin[20] == 0.0 and by_bin[30] == 1.0 and by_bin[80] == 0.0
    assert math.isnan(by_bin[60])  # no test sequence there


#: Training-loss curves: on a plateau at the end, and still falling.
CONVERGED, FALLING = (1.2, 0.7, 0.5, 0.45, 0.44, 0.438), (1.2, 1.0, 0.8, 0.6, 0.4, 0.2)


def _c5_rows(le_T, gt_T, seeds=5, noise=1.0, diverged=(), falling=()):
    """Synthetic C5 rows: `le_T`/`gt_T` map arm label -> accuracy (%) within / beyond T;
    the arms in `falling` have training losses still falling at the end."""
    rng = np.random.default_rng(0)
    rows = []
    for label, (norm, options) in c5.ARMS.items():
        for seed in range(seeds):
            inside = (le_T[label] + rng.normal(0, noise)) / 100
            beyond = (gt_T[label] + rng.normal(0, noise)) / 100
            bad = (label, seed) in diverged
            row = {
                "claim": "C5", "status": "ok", "seed": seed, "norm": norm, "epochs": 8, "steps": 1000,
                "opt/model.share_statistics": options.get("model.share_statistics", math.nan),
                "diverged": bad,
                "train/loss": (*CONVERGED[:-1], math.nan) if bad else FALLING if label in falling else CONVERGED,
                "c5/accuracy_le_T": math.nan if bad else inside,
                "c5/accuracy_T_2T": math.nan if bad else beyond + 0.05,
                "c5/accuracy_2T_4T": math.nan if bad else beyond - 0.05,
                "c5/accuracy_gt_T": math.nan if bad else beyond,
                "c5/length_bin_upper": tuple(range(10, 81, 10)),
                "c5/accuracy_by_length": tuple([inside] * 2 + [beyond] * 6),
            }  # fmt: skip
            row.update({f"c5/count_{b}": 10 for b in c5.BUCKETS})
            rows.append(row)
    return pandas.DataFrame(rows)


NONE, SHARED, STEP, LN = c5.ARMS


def _outcomes(analysis):
    return {c["name"]: c["outcome"] for c in analysis["checks"]}


def test_c5_supported_when_bn_needs_per_step_statistics_and_still_degrades_more():
    rows = _c5_rows(le_T={NONE: 85, SHARED: 60, STEP: 85, LN: 85}, gt_T={NONE: 65, SHARED: 40, STEP: 50, LN: 70})
    analysis = claims.analyze("C5", rows)
    assert analysis["verdict"] == "supported"
    assert _outcomes(analysis) == {c5.WORKAROUND_CHECK: "holds", c5.DEGRADATION_CHECK: "holds"}
    assert analysis["headline"] == c5.DEGRADATION_CHECK
    drop = analysis["evidence"][0]  # (85 - 50) - (85 - 70), paired by seed
    assert drop["mean"] == pytest.approx(20, abs=2) and drop["n"] == 5
    assert analysis["seed_plan"] == c5.SEED_PLAN.to_dict()
    assert {r["arm"]: r["converged"] for r in analysis["convergence"]} == dict.fromkeys(c5.ARMS, 5)


def test_c5_not_supported_when_bn_arms_match_ln_and_partly_when_one_check_holds():
    rows = _c5_rows(le_T={NONE: 85, SHARED: 85, STEP: 85, LN: 85}, gt_T={NONE: 70, SHARED: 70, STEP: 70, LN: 70})
    analysis = claims.analyze("C5", rows)
    assert set(_outcomes(analysis).values()) == {"fails"}  # intervals wholly below 3 pp
    assert analysis["verdict"] == "not supported"
    rows = _c5_rows(le_T={NONE: 85, SHARED: 85, STEP: 85, LN: 85}, gt_T={NONE: 70, SHARED: 70, STEP: 55, LN: 70})
    analysis = claims.analyze("C5", rows)
    assert _outcomes(analysis) == {c5.WORKAROUND_CHECK: "fails", c5.DEGRADATION_CHECK: "holds"}
    assert analysis["verdict"] == "partly supported"


def test_c5_inconclusive_when_an_arm_has_not_converged_or_both_sit_at_the_ceiling():
    rows = _c5_rows(
        le_T={NONE: 85, SHARED: 60, STEP: 85, LN: 85}, gt_T={NONE: 65, SHARED: 40, STEP: 50, LN: 70}, falling={LN}
    )
    analysis = claims.analyze("C5", rows)
    degradation = next(c for c in analysis["checks"] if c["name"] == c5.DEGRADATION_CHECK)
    assert degradation["outcome"] == "undecided" and degradation["effect"]["low"] > c5.DEGRADATION_PP
    assert any(b.startswith("not converged: arm=LN") for b in degradation["blockers"])
    assert analysis["verdict"] == "inconclusive"
    # Within T both BN arms at 99.8 %: check (1) cannot show a difference there.
    rows = _c5_rows(
        le_T={NONE: 99.8, SHARED: 99.8, STEP: 99.8, LN: 99.8}, gt_T={NONE: 65, SHARED: 40, STEP: 50, LN: 70}, noise=0.1
    )
    workaround = next(c for c in claims.analyze("C5", rows)["checks"] if c["name"] == c5.WORKAROUND_CHECK)
    assert workaround["outcome"] == "undecided" and workaround["blockers"][0].startswith("at the ceiling")


def test_c5_a_diverged_run_drops_out_of_the_pairs_and_is_counted():
    rows = _c5_rows(
        le_T={NONE: 85, SHARED: 60, STEP: 85, LN: 85}, gt_T={NONE: 65, SHARED: 40, STEP: 50, LN: 70},
        diverged={(SHARED, 0)},
    )  # fmt: skip
    errored = rows.iloc[[0]].assign(status="error", seed=99)
    analysis = claims.analyze("C5", pandas.concat([rows, errored], ignore_index=True))
    workaround = next(c for c in analysis["checks"] if c["name"] == c5.WORKAROUND_CHECK)
    assert workaround["effect"]["n"] == 4
    assert {r["arm"]: r["diverged"] for r in analysis["convergence"]}[SHARED] == 1
    assert "1 failed" in analysis["setup"] and "1 of the ok runs diverged" in analysis["setup"]


def test_c5_figures_plot_the_analysis_tables(tmp_path):
    rows = _c5_rows(le_T={NONE: 85, SHARED: 60, STEP: 85, LN: 85}, gt_T={NONE: 65, SHARED: 40, STEP: 50, LN: 70})
    analysis = claims.analyze("C5", rows)
    paths = c5.CLAIM.figures(analysis, tmp_path)
    assert set(analysis["figures"]) == {p.stem for p in paths}
    curve = _figure_files(paths, "fig-c5-length")
    table = pandas.DataFrame(analysis["tables"]["test accuracy (%) by length"])
    pandas.testing.assert_frame_equal(curve, table, check_dtype=False)
    drop = _figure_files(paths, "fig-c5-drop")
    assert drop["arm"].tolist() == list(c5.ARMS)
    assert drop.loc[drop["arm"] == STEP, "mean"].item() == pytest.approx(35, abs=2)
    _assert_regenerates_identically(c5, analysis, tmp_path)


# -- C6 -----------------------------------------------------------------------------------


def _records(steps, batch_mean, batch_variance, keep=0.9, mean_0=0.0, var_0=1.0, epochs=2):
    """BatchStatisticsRecorder-shaped records of one one-feature layer whose moving
    averages start at (mean_0, var_0) and follow the given batch statistics."""
    rows, mean, var = [], mean_0, var_0
    for step in range(steps):
        mean = keep * mean + (1 - keep) * batch_mean[step]
        var = keep * var + (1 - keep) * batch_variance[step]
        rows.append(
            {"step": step, "epoch": step * epochs // steps, "layer": "bn", "feature": 0,
             "batch_mean": batch_mean[step], "batch_variance": batch_variance[step],
             "moving_mean": mean, "moving_variance": var}  # fmt: skip
        )
    return pandas.DataFrame(rows)


def test_c6_fluctuation_is_zero_for_constant_statistics_whatever_the_start():
    # The running variance starts at 1 and the batches have variance 0.01: undebiased,
    # the measure would be ~1 for a long time.
    steps = 40
    records = _records(steps, [3.0] * steps, [0.01] * steps)
    layers = {"bn": (0.9, 1e-3, np.zeros(1), np.ones(1))}
    out = c6.fluctuation(records, layers, epochs=2)
    assert out["c6/fluctuation_mean"] == pytest.approx(0.0, abs=1e-9)
    assert out["c6/fluctuation_variance"] == pytest.approx(0.0, abs=1e-9)
    assert len(out["c6/fluctuation_mean_epochs"]) == 2


def test_c6_fluctuation_measures_batch_deviation_in_running_std():
    # Batch means alternate 1 +- 0.1 with variance 0.04 (std 0.2): the debiased running
    # mean stays near 1, so each batch is ~0.1 / 0.2 = 0.5 running std away.
    steps = 400
    means = [1.1 if s % 2 else 0.9 for s in range(steps)]
    records = _records(steps, means, [0.04] * steps, keep=0.99)
    out = c6.fluctuation(records, {"bn": (0.99, 0.0, np.zeros(1), np.ones(1))}, epochs=2)
    assert out["c6/fluctuation_mean"] == pytest.approx(0.5, rel=0.05)
    assert out["c6/fluctuation_variance"] == pytest.approx(0.0, abs=1e-6)
    empty = c6.fluctuation(records.iloc[:0], {}, epochs=2)
    assert math.isnan(empty["c6/fluctuation_mean"]) and empty["c6/fluctuation_mean_layers"] == []


def _c6_rows(acc, fluct_mean, fluct_var, ln_diff=0.0, bn_diff=1.0, seeds=6, noise=0.002, falling=()):
    """Synthetic C6 rows; `acc`, `fluct_*` map arm label -> value (fluctuation NaN for LN);
    the arms in `falling` have training losses still falling at the end."""
    rng = np.random.default_rng(1)
    rows = []
    for (dataset, norm), label in c6.ARMS.items():
        for seed in range(seeds):
            is_bn = norm == "batch"
            fm = fluct_mean.get(label, math.nan) + rng.normal(0, noise) if is_bn else math.nan
            fv = fluct_var.get(label, math.nan) + rng.normal(0, noise) if is_bn else math.nan
            row = {
                "claim": "C6", "status": "ok", "seed": seed, "dataset": dataset, "norm": norm,
                "epochs": 6, "steps_per_epoch": 100, "diverged": False,
                "train/loss": FALLING if label in falling else CONVERGED,
                "final/test/accuracy": acc[label] + rng.normal(0, 0.005),
                "c6/fluctuation_mean": fm, "c6/fluctuation_variance": fv,
                "c6/fluctuation_mean_all_layers": fm, "c6/fluctuation_variance_all_layers": fv,
                "c6/fluctuation_mean_layers": (fm, fm) if is_bn else (),
                "c6/fluctuation_variance_layers": (fv, fv) if is_bn else (),
                "c6/fluctuation_mean_epochs": (fm,) * 6 if is_bn else (),
                "c6/fluctuation_variance_epochs": (fv,) * 6 if is_bn else (),
            }  # fmt: skip
            diff = bn_diff if is_bn else ln_diff
            row.update({c: diff for c in c6.INDEPENDENCE})
            row["c6/diff_batchmates_eval"] = 0.0
            rows.append(row)
    return pandas.DataFrame(rows)


TOK_BN, TOK_LN, CNN_BN = c6.ARMS.values()
MEAN_CHECK, VARIANCE_CHECK = c6.FLUCTUATION_CHECKS.values()


def test_c6_supported_when_ln_holds_up_and_bn_fluctuates_more_on_tokens():
    rows = _c6_rows(
        acc={TOK_BN: 0.75, TOK_LN: 0.77, CNN_BN: 0.9},
        fluct_mean={TOK_BN: 0.2, CNN_BN: 0.05},
        fluct_var={TOK_BN: 0.3, CNN_BN: 0.1},
    )
    analysis = claims.analyze("C6", rows)
    assert analysis["verdict"] == "supported"
    assert set(_outcomes(analysis).values()) == {"holds"}
    assert analysis["headline"] == c6.ACCURACY_CHECK
    assert analysis["evidence"][0]["mean"] == pytest.approx(2.0, abs=0.5)  # LN minus BN, pp
    ratio = next(c for c in analysis["checks"] if c["name"] == MEAN_CHECK)["effect"]
    assert ratio["mean"] == pytest.approx(4.0, rel=0.1) and ratio["n"] == 6


def test_c6_verdict_flips_with_the_fluctuation_and_the_accuracy():
    # BN clearly better and fluctuating less on the tokens: every (b) check fails.
    rows = _c6_rows(
        acc={TOK_BN: 0.80, TOK_LN: 0.70, CNN_BN: 0.9},
        fluct_mean={TOK_BN: 0.05, CNN_BN: 0.2},
        fluct_var={TOK_BN: 0.1, CNN_BN: 0.3},
    )
    outcomes = _outcomes(claims.analyze("C6", rows))
    assert outcomes[c6.ACCURACY_CHECK] == outcomes[MEAN_CHECK] == outcomes[VARIANCE_CHECK] == "fails"
    assert outcomes[c6.INDEPENDENT_CHECK] == outcomes[c6.DEPENDENT_CHECK] == "holds"
    assert claims.analyze("C6", rows)["verdict"] == "partly supported"
    # The mean fluctuating more but the variance less: partly supported.
    rows = _c6_rows(
        acc={TOK_BN: 0.75, TOK_LN: 0.75, CNN_BN: 0.9},
        fluct_mean={TOK_BN: 0.2, CNN_BN: 0.05},
        fluct_var={TOK_BN: 0.05, CNN_BN: 0.1},
    )
    analysis = claims.analyze("C6", rows)
    assert _outcomes(analysis)[VARIANCE_CHECK] == "fails" and analysis["verdict"] == "partly supported"


def test_c6_not_supported_when_every_check_fails():
    rows = _c6_rows(
        acc={TOK_BN: 0.80, TOK_LN: 0.70, CNN_BN: 0.9},
        fluct_mean={TOK_BN: 0.05, CNN_BN: 0.2},
        fluct_var={TOK_BN: 0.1, CNN_BN: 0.3},
        ln_diff=1e-2,
        bn_diff=1e-3,
    )
    analysis = claims.analyze("C6", rows)
    assert set(_outcomes(analysis).values()) == {"fails"}
    assert analysis["verdict"] == "not supported"


def test_c6_inconclusive_at_the_ceiling_or_unconverged():
    rows = _c6_rows(
        acc={TOK_BN: 0.996, TOK_LN: 0.995, CNN_BN: 0.9},
        fluct_mean={TOK_BN: 0.2, CNN_BN: 0.05},
        fluct_var={TOK_BN: 0.3, CNN_BN: 0.1},
        noise=0.0001,
    )
    analysis = claims.analyze("C6", rows)
    accuracy = next(c for c in analysis["checks"] if c["name"] == c6.ACCURACY_CHECK)
    assert accuracy["outcome"] == "undecided" and accuracy["blockers"][0].startswith("at the ceiling")
    assert analysis["verdict"] == "inconclusive"
    rows = _c6_rows(
        acc={TOK_BN: 0.75, TOK_LN: 0.77, CNN_BN: 0.9},
        fluct_mean={TOK_BN: 0.2, CNN_BN: 0.05},
        fluct_var={TOK_BN: 0.3, CNN_BN: 0.1},
        falling={CNN_BN},
    )
    outcomes = _outcomes(claims.analyze("C6", rows))
    assert outcomes[MEAN_CHECK] == outcomes[VARIANCE_CHECK] == "undecided"
    assert outcomes[c6.ACCURACY_CHECK] == "holds"  # the CNN is not part of (b1)


def test_c6_figures_plot_the_analysis_tables(tmp_path):
    rows = _c6_rows(
        acc={TOK_BN: 0.75, TOK_LN: 0.77, CNN_BN: 0.9},
        fluct_mean={TOK_BN: 0.2, CNN_BN: 0.05},
        fluct_var={TOK_BN: 0.3, CNN_BN: 0.1},
    )
    analysis = claims.analyze("C6", rows)
    paths = c6.CLAIM.figures(analysis, tmp_path)
    assert set(analysis["figures"]) == {p.stem for p in paths}
    by_epoch = _figure_files(paths, "fig-c6-fluctuation")
    assert set(by_epoch["arm"]) == {TOK_BN, CNN_BN} and len(by_epoch) == 2 * 2 * 6
    per_sample = _figure_files(paths, "fig-c6-per-sample")
    ln = per_sample[per_sample["arm"] == TOK_LN]
    assert (ln["largest"] == 0).all() and (ln["plotted"] == c6.FLOOR).all()
    accuracy = _figure_files(paths, "fig-c6-accuracy")
    assert accuracy["arm"].tolist() == [TOK_BN, TOK_LN]
    assert accuracy["mean"].tolist() == pytest.approx([75.0, 77.0], abs=1.0)
    _assert_regenerates_identically(c6, analysis, tmp_path)


# -- the smoke grids end to end -----------------------------------------------------------


def test_smoke_grids_run_end_to_end_and_measure_what_the_claims_need(smoke_results, tmp_path):
    rows = pandas.concat([smoke_rows(smoke_results, "C5"), smoke_rows(smoke_results, "C6")], ignore_index=True)

    c5_rows = rows[rows["claim"] == "C5"]
    assert sorted(c5_rows["norm"]) == ["batch", "layer"]
    counts = c5_rows[[f"c5/count_{b}" for b in ("le_T", "T_2T", "2T_4T")]].sum(axis=1)
    assert (counts == c5_rows["c5/count_gt_T"] + c5_rows["c5/count_le_T"]).all()
    assert ((c5_rows["c5/accuracy_le_T"] >= 0) & (c5_rows["c5/accuracy_le_T"] <= 1)).all()

    c6_rows = rows[rows["claim"] == "C6"]
    ln = c6_rows[c6_rows["norm"] == "layer"].iloc[0]
    bn = c6_rows[c6_rows["norm"] == "batch"]
    assert max(ln[c] for c in c6.INDEPENDENCE) <= c6.LN_TOLERANCE
    assert (bn["c6/diff_batchmates_train"] > c6.BN_DEPENDENCE).all()
    assert (bn["c6/diff_batchmates_eval"] <= c6.LN_TOLERANCE).all()
    assert bn["c6/fluctuation_mean"].notna().all() and math.isnan(ln["c6/fluctuation_mean"])

    for module, claim_id in ((c5, "C5"), (c6, "C6")):
        assert claims.load(claim_id) is module
        analysis = claims.analyze(claim_id, rows)
        assert analysis["verdict"] in stats.VERDICTS and len(analysis["checks"]) >= 2
        assert {p.stem for p in module.figures(analysis, tmp_path / "figures")} == set(analysis["figures"])
