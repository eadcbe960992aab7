"""The MLP claims C1, C3 and C9: their analyses on synthetic result tables (the verdict
follows the stated rule, and flips when the evidence does), their figures, the
measurements their tasks make, and their smoke grids end to end."""

import math

import keras
import numpy as np
import pandas
import pytest

from studies import claims
from studies.claims import c1_speed as c1
from studies.claims import c3_regularization as c3
from studies.claims import c9_covariate_shift as c9
from studies.engine import data as data_module
from studies.engine import models, stacked, training
from studies.report import stats
from tests.studies.conftest import smoke_rows

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
        "final/test/accuracy": curve[-1], "train/loss": tuple(2.3 - a for a in curve),
    }  # fmt: skip


def _ramp(reach_at, final, evaluations=10):
    """A curve rising linearly to `final` at evaluation `reach_at` (1-based), then flat."""
    return [final * min(1.0, (i + 1) / reach_at) for i in range(evaluations)]


def _c1_rows(bn_fast=True, bn_stable_higher=True, bn_reach=None):
    """No norm ends at 0.5 (the target) at evaluation 8; BN rises to 0.55 (give or take a
    jitter) at evaluation 2 (`bn_fast`), or 8 like no norm, or at ``bn_reach[seed]``; at
    rate 1.0 it trains (`bn_stable_higher`) where no norm diverges."""
    rows = []
    for seed in SEEDS:
        j = _jitter(seed)
        reach = bn_reach[seed] if bn_reach else 2 if bn_fast else 8
        rows.append(_c1_row("none", 0.1, seed, _ramp(8, 0.5)))
        rows.append(_c1_row("none", 1.0, seed, [0.2] + [math.nan] * 9))  # diverges
        rows.append(_c1_row("batch", 0.1, seed, _ramp(reach, 0.55 + j)))
        late = _ramp(3, 0.55 + j) if bn_stable_higher else [0.2] + [math.nan] * 9
        rows.append(_c1_row("batch", 1.0, seed, late))
    return pandas.DataFrame(rows)


def test_c1_steps_to_target_counts_censored_runs_at_the_budget():
    assert c1._steps_to([0.1, 0.3, 0.5], 50, 0.3) == (100, True)
    assert c1._steps_to([0.1, 0.2, math.nan], 50, 0.3) == (150, False)


def test_c1_supported_when_batch_norm_is_faster_and_tolerates_a_higher_rate():
    analysis = claims.analyze("C1", _c1_rows())
    assert analysis["verdict"] == "supported"
    assert [c["outcome"] for c in analysis["checks"]] == ["holds", "holds"]
    saved, higher = analysis["checks"]
    assert saved["effect"]["mean"] == pytest.approx(100 * (1 - 2 / 8))  # 100 steps against 400
    assert higher["effect"]["mean"] == pytest.approx(1.0)  # rate 1.0 against 0.1: one decade
    best = pandas.DataFrame(analysis["tables"][c1.BEST]).set_index("norm")
    # The target is the baseline's best mean final accuracy.
    assert best.loc["none", "target"] == pytest.approx(0.5)
    assert best.loc["batch", "learning_rate"] == 0.1
    # BN reaches 0.45 at the 2nd evaluation (100 steps); none at the 8th (400 steps).
    assert best.loc["batch", "mean"] == pytest.approx(100)
    assert best.loc["none", "mean"] == pytest.approx(400, abs=50)
    stable = pandas.DataFrame(analysis["tables"][c1.LARGEST]).set_index("norm")
    assert stable.loc["batch", "mean"] == pytest.approx(1.0)
    assert stable.loc["none", "mean"] == pytest.approx(0.1)


def test_c1_not_supported_when_batch_norm_is_neither_faster_nor_more_stable():
    analysis = claims.analyze("C1", _c1_rows(bn_fast=False, bn_stable_higher=False))
    assert analysis["verdict"] == "not supported"
    assert [c["outcome"] for c in analysis["checks"]] == ["fails", "fails"]


def test_c1_inconclusive_when_the_steps_saved_span_the_threshold():
    # BN saves 0, 25, 50, 0 and 75 % of the steps: mean 30 %, an interval around 20 %.
    analysis = claims.analyze("C1", _c1_rows(bn_stable_higher=False, bn_reach={0: 8, 1: 6, 2: 4, 3: 8, 4: 2}))
    saved = analysis["checks"][0]
    assert saved["effect"]["low"] < c1.STEPS_SAVED_PCT < saved["effect"]["high"]
    assert saved["outcome"] == "undecided" and analysis["verdict"] == "inconclusive"
    assert stats.more_seeds_needed(analysis, c1.SEED_PLAN, len(SEEDS)) == c1.SEED_PLAN.block


def _never_reach(rows, norm, seed, rates=(0.1,)):
    never = (rows["norm"] == norm) & rows["learning_rate"].isin(rates) & (rows["seed"] == seed)
    rows["test/accuracy"] = [tuple([0.2] * 10) if hit else value for hit, value in zip(never, rows["test/accuracy"])]
    rows.loc[never, "final/test/accuracy"] = 0.2
    return rows


def test_c1_censored_no_norm_runs_give_a_lower_bound_that_may_hold():
    saved = claims.analyze("C1", _never_reach(_c1_rows(), "none", 0))["checks"][0]
    assert saved["outcome"] == "holds" and saved["blockers"] == []
    assert saved["effect"]["mean"] == pytest.approx((75 * 4 + 80) / 5)  # seed 0 counted at the budget


def _saved(none_steps, batch_steps, budget=1000):
    """`c1._steps_saved` of per-seed steps (a step count at `budget` is censored)."""
    runs = pandas.DataFrame([
        {"activation": "relu", "norm": norm, "learning_rate": 0.1, "seed": seed, "steps_to_target": float(steps),
         "reached": steps < budget}
        for norm, counts in (("none", none_steps), ("batch", batch_steps)) for seed, steps in enumerate(counts)
    ])  # fmt: skip
    best = pandas.DataFrame({"activation": ["relu"] * 2, "norm": ["none", "batch"], "learning_rate": [0.1] * 2})
    return c1._steps_saved(runs, best, "relu")


def test_c1_censored_batch_norm_runs_let_the_saving_fail_but_not_hold():
    holds = _saved([900] * 10, [300] * 9 + [1000])  # one never reached the target
    assert holds.effect.low >= c1.STEPS_SAVED_PCT and holds.outcome() == "undecided"
    assert holds.blockers == ("censored: 1 of 10 batch norm runs never reached the target (the saving is an upper bound)",)
    fails = _saved([800] * 10, [800] * 9 + [1000])
    assert fails.blockers == () and fails.outcome() == "fails"


def test_c1_censored_runs_in_both_arms_block_the_steps():
    rows = _never_reach(_never_reach(_c1_rows(), "batch", 0, rates=(0.1, 1.0)), "none", 1)
    saved = claims.analyze("C1", rows)["checks"][0]
    assert saved["outcome"] == "undecided" and len(saved["blockers"]) == 2


def test_c1_the_earlier_target_is_the_alternative():
    # BN reaches 0.5 at evaluation 2 and 0.45 at evaluation 2 too; no norm 0.45 at evaluation 8.
    analysis = claims.analyze("C1", _c1_rows())
    sensitivity = {row["alternative"]: row["verdict"] for row in analysis["sensitivity"]}
    assert sensitivity[c1.ALTERNATIVE] == "supported"
    assert any("edge of the sweep" in c for c in analysis["caveats"])


def test_c1_partly_supported_when_one_activation_of_two_shows_it():
    relu = _c1_rows(bn_fast=False, bn_stable_higher=False).assign(activation="relu")
    analysis = claims.analyze("C1", pandas.concat([_c1_rows(), relu], ignore_index=True))
    assert analysis["verdict"] == "partly supported"


def test_c1_counts_failed_runs_and_leaves_them_out():
    rows = _c1_rows()
    failed = {**rows.iloc[0].to_dict(), "status": "error", "test/accuracy": (), "final/test/accuracy": math.nan}
    analysis = claims.analyze("C1", pandas.concat([rows, pandas.DataFrame([failed])], ignore_index=True))
    assert analysis["verdict"] == "supported"
    assert any("1 of 21 runs failed" in c for c in analysis["caveats"])


def _read_csv_and_check_files(paths, fig_id):
    names = {p.name for p in paths}
    assert names == {f"{fig_id}.png", f"{fig_id}.svg", f"{fig_id}.csv"}
    for path in paths:
        assert path.stat().st_size > 0
    return pandas.read_csv(next(p for p in paths if p.suffix == ".csv"))


def test_c1_figures_write_the_plotted_numbers(tmp_path):
    analysis = claims.analyze("C1", _c1_rows())
    paths = c1.CLAIM.figures(analysis, tmp_path)
    csv = _read_csv_and_check_files([p for p in paths if p.stem == "fig-c1-steps-vs-lr"], "fig-c1-steps-vs-lr")
    table = pandas.DataFrame(analysis["tables"][c1.BY_LR])
    assert np.allclose(np.sort(csv["mean"]), np.sort(table["mean"]))
    _read_csv_and_check_files([p for p in paths if p.stem == "fig-c1-curves"], "fig-c1-curves")
    # Regenerating gives the same bytes.
    first = {p.name: p.read_bytes() for p in paths}
    again = c1.CLAIM.figures(analysis, tmp_path / "again")
    assert {p.name: p.read_bytes() for p in again} == first


# --- C3 ---------------------------------------------------------------------------------

CONVERGED = (2.3, 0.9, 0.2, 0.05, 0.04, 0.04)  # plateau 0.0: levelled off
STILL_FALLING = (2.3, 1.9, 1.5, 1.1, 0.7, 0.3)  # plateau 0.2: a fifth of the decrease at the end


def _c3_rows(gaps, train=1.0, spread=None, losses=None, dataset="mnist1d"):
    """Synthetic C3 rows: `gaps` {arm: mean gap in pp}; each arm's seeds scatter around it
    with a pattern of its own (so paired differences have a spread), `spread[arm]` pp wide."""
    rows = []
    for k, (arm, gap) in enumerate(gaps.items()):
        fit = train[arm] if isinstance(train, dict) else train
        for seed in SEEDS:
            wiggle = (spread or {}).get(arm, 0.4) * ((seed + k) % 5 - 2) / 2
            test = (100.0 * fit - gap - wiggle) / 100.0
            rows.append({
                "claim": "C3", "status": "ok", "opt/c3/arm": arm, "seed": seed, "diverged": False,
                "dataset": dataset, "final/train_eval/accuracy": fit,
                "final/test/accuracy": test, "train/loss": (losses or {}).get(arm, CONVERGED),
                "num_samples": None, "epochs": 20, "epoch_steps": 80, "c3/train_examples": 1024,
                "c3/recalibrate_every": 20,
            })  # fmt: skip
    return pandas.DataFrame(rows)


# Gaps in pp: BN narrows no norm's by 3 (>= 1: "slight"), dropout p = 0.1 by 4; no noise
# and fixed batches lose most of it.
REGULARIZES = {
    "none": 50.0, "none, fixed batches": 50.5, "dropout 0.1": 46.0, "batch 64": 47.0,
    "batch 64, fixed batches": 50.0, "batch, no noise": 49.5,
}  # fmt: skip


def _c3_outcomes(analysis):
    return [c["outcome"] for c in analysis["checks"]]


def test_c3_supported_when_every_check_holds():
    analysis = claims.analyze("C3", _c3_rows(REGULARIZES))
    assert analysis["verdict"] == "supported", analysis["checks"]
    assert _c3_outcomes(analysis) == ["holds"] * 4
    headline = analysis["checks"][0]
    assert headline["decisive"] and headline["threshold"] == c3.SLIGHT_PP
    assert headline["effect"]["mean"] == pytest.approx(3.0)
    table = pandas.DataFrame(analysis["tables"][c3.BY_ARM]).set_index("arm")
    assert table.loc["batch, no noise", "gap_mean"] == pytest.approx(49.5)
    # The test accuracy change is reported beside the gap.
    assert analysis["evidence"][1]["label"].startswith("test accuracy of BN minus no norm")
    assert analysis["evidence"][1]["mean"] == pytest.approx(3.0)


def test_c3_not_supported_when_the_narrowing_is_clearly_below_slight():
    none = REGULARIZES | {"batch 64": 49.8}  # narrowing 0.2 pp, interval wholly below 1 pp
    analysis = claims.analyze("C3", _c3_rows(none, spread={"none": 0.1, "batch 64": 0.1}))
    assert analysis["checks"][0]["outcome"] == "fails"
    assert analysis["verdict"] == "not supported"


def test_c3_inconclusive_when_the_narrowing_interval_spans_slight():
    wide = REGULARIZES | {"batch 64": 48.8}  # narrowing 1.2 pp, seeds spread by several pp
    analysis = claims.analyze("C3", _c3_rows(wide, spread={"batch 64": 6.0}))
    first = analysis["checks"][0]
    assert first["effect"]["low"] < c3.SLIGHT_PP < first["effect"]["high"]
    assert first["outcome"] == "undecided" and not first["blockers"]
    assert analysis["verdict"] == "inconclusive"


def test_c3_inconclusive_when_an_arm_has_not_converged_or_does_not_fit():
    unconverged = claims.analyze("C3", _c3_rows(REGULARIZES, losses={"batch 64": STILL_FALLING}))
    assert unconverged["verdict"] == "inconclusive"
    assert any("not converged" in b and "batch 64" in b for b in unconverged["checks"][0]["blockers"])
    conv = pandas.DataFrame(unconverged["convergence"]).set_index("arm")
    assert conv.loc["batch 64", "converged"] == 0 and conv.loc["none", "converged"] == len(SEEDS)
    underfit = claims.analyze("C3", _c3_rows(REGULARIZES, train={a: 0.9 if a == "batch 64" else 1.0 for a in REGULARIZES}))
    assert any("does not fit" in b for b in underfit["checks"][0]["blockers"])
    assert underfit["verdict"] == "inconclusive"


def test_c3_partly_supported_when_the_noise_free_arm_keeps_the_effect():
    kept = REGULARIZES | {"batch, no noise": 47.0}
    analysis = claims.analyze("C3", _c3_rows(kept))
    assert analysis["verdict"] == "partly supported"
    assert _c3_outcomes(analysis) == ["holds", "holds", "fails", "holds"]


def test_c3_fixed_batches_check_is_the_difference_in_differences():
    # Fixed batches widen both gaps by 0.5 pp: no cost to BN beyond what no norm pays.
    same = REGULARIZES | {"batch 64, fixed batches": 47.5}
    check = claims.analyze("C3", _c3_rows(same, spread={a: 0.0 for a in REGULARIZES}))["checks"][3]
    assert "fixed batches" in check["name"]
    assert check["effect"]["mean"] == pytest.approx(0.0) and check["outcome"] == "fails"


def test_c3_pairs_runs_by_seed_when_one_diverged():
    rows = _c3_rows(REGULARIZES, spread={a: 0.0 for a in REGULARIZES})
    diverged = (rows["opt/c3/arm"] == "batch 64") & (rows["seed"] == 0)
    rows.loc[diverged, ["final/test/accuracy", "final/train_eval/accuracy"]] = np.nan
    rows.loc[diverged, "diverged"] = True
    analysis = claims.analyze("C3", rows)
    headline, like_dropout = analysis["checks"][:2]
    assert headline["effect"]["n"] == len(SEEDS) - 1 and headline["effect"]["mean"] == pytest.approx(3.0)
    assert like_dropout["effect"]["n"] == len(SEEDS) - 1 and like_dropout["effect"]["mean"] == pytest.approx(1.0)


def test_c3_figure_csv_holds_each_check_paired_difference_and_threshold(tmp_path):
    rows = pandas.concat([_c3_rows(REGULARIZES), _c3_rows(REAL_NONE, dataset=c3.REAL_DATASET)], ignore_index=True)
    analysis = claims.analyze("C3", rows)
    csv = _read_csv_and_check_files(c3.CLAIM.figures(analysis, tmp_path), "fig-c3-gap")
    assert list(csv["check"]) == [c["name"] for c in analysis["checks"]]
    headline = csv.set_index("check").loc[c3.NARROWING]
    assert headline["mean"] == pytest.approx(3.0) and headline["threshold"] == c3.SLIGHT_PP
    assert list(csv["real"]) == [False] * 4 + [True] * 2


# Real data: BN narrows no norm's gap by 0.2 pp (not "slight"); fixed batches cost BN 2 pp.
REAL_NONE = {"none": 10.0, "none, fixed batches": 10.0, "batch 64": 9.8, "batch 64, fixed batches": 11.8}


def test_c3_real_data_checks_give_a_verdict_of_their_own():
    rows = pandas.concat([
        _c3_rows(REGULARIZES),
        _c3_rows(REAL_NONE, spread={a: 0.1 for a in REAL_NONE}, dataset=c3.REAL_DATASET),
    ], ignore_index=True)  # fmt: skip
    analysis = claims.analyze("C3", rows)
    real = [c for c in analysis["checks"] if c["real"]]
    assert [c["name"] for c in real] == [c3.REAL_PREFIX + c3.NARROWING, real[1]["name"]]
    assert "fixed batches" in real[1]["name"] and real[1]["outcome"] == "holds"
    assert real[0]["outcome"] == "fails" and real[0]["effect"]["mean"] == pytest.approx(0.2)
    # The claim's verdict comes from MNIST-1D alone; the real task's sits beside it.
    assert analysis["verdict"] == "supported" and analysis["real_verdict"] == "not supported"
    assert analysis["real_agrees"] == "disagrees"
    conv = pandas.DataFrame(analysis["convergence"])
    assert set(conv["dataset"]) == {"mnist1d", c3.REAL_DATASET}
    assert len(conv[conv["dataset"] == c3.REAL_DATASET]) == len(REAL_NONE)


def test_c3_real_data_check_undecided_when_its_own_arm_has_not_converged():
    rows = pandas.concat([
        _c3_rows(REGULARIZES),
        _c3_rows(REAL_NONE, losses={"batch 64": STILL_FALLING}, dataset=c3.REAL_DATASET),
    ], ignore_index=True)  # fmt: skip
    analysis = claims.analyze("C3", rows)
    real = next(c for c in analysis["checks"] if c["real"])
    assert real["outcome"] == "undecided" and any("not converged" in b for b in real["blockers"])
    assert analysis["real_verdict"] == "inconclusive" and analysis["verdict"] == "supported"
    # MNIST-1D's batch 64 arm converged: its checks are not blocked by the real arm's.
    assert not analysis["checks"][0]["blockers"]


def test_c3_grid_fixes_the_batches_of_the_fixed_arms_only():
    configs = c3.grid("full")
    mnist1d = [c for c in configs if c.dataset == "mnist1d"]
    real = [c for c in configs if c.dataset == c3.REAL_DATASET]
    assert len(mnist1d) == (len(c3.ARMS) - 1) * c3.SEED_PLAN.initial + c3.ALONE_SEEDS
    assert len(real) == len(c3.REAL_ARMS) * c3.REAL_SEEDS
    assert {c.option("data.num_train") for c in real} == {c3.TRAIN_SIZE}
    # The sequential plan extends the arms of the grid's first seed: not the noise-free one.
    assert 0 not in {c.seed for c in configs if c.option("c3/arm") == c3.NOISE_FREE}
    for config in configs:  # every arm but the noise-free one trains stacked
        assert stacked.stackable(config) == (config.option("c3/arm") != c3.NOISE_FREE)
    for config in configs:
        assert config.option("fixed_batches", False) == (config.option("c3/arm") in c3.FIXED)
        # Whole batches per pass, so the fixed arms repeat exactly the same batches.
        assert config.option("c3/train_size") % config.batch_size == 0


def test_c3_fixed_batches_repeat_one_shuffle_every_pass():
    x = np.arange(8, dtype="float32")[:, None]
    dataset = data_module.Dataset("t", x, np.zeros(8, "int32"), x[:2], np.zeros(2, "int32"), 2)

    def batches(reshuffle):
        ds = training.tf_dataset(dataset, "train", 4, shuffle_seed=3, repeat=True, reshuffle=reshuffle)
        return [tuple(b[0].numpy().ravel().astype(int)) for b in ds.take(6)]

    fixed = batches(reshuffle=False)
    assert fixed[:2] == fixed[2:4] == fixed[4:6] and sorted(sum(fixed[:2], ())) == list(range(8))
    reshuffled = batches(reshuffle=True)
    assert reshuffled[:2] != reshuffled[2:4] or reshuffled[2:4] != reshuffled[4:6]


def test_c3_population_batch_norm_uses_exact_training_set_statistics():
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(64, 5)).astype("float32")
    inputs = keras.Input((5,))
    h = keras.layers.Dense(4, use_bias=False)(inputs)
    h = models.PopulationBatchNormalization()(h)
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


# --- C9 ---------------------------------------------------------------------------------


def _c9_rows(bn_shift, noisy_accuracy, logs=4, loss=(2.3, 1.0, 0.6, 0.59), bn_raw=None):
    """Rows of the three arms; every shift measure of batch norm is `bn_shift` (no norm's
    0.05) but the raw ‖G - G'‖, which is `bn_raw` when given."""
    arms = {"none": (0.05, 0.45), "batch": (bn_shift, 0.65), "noisy batch": (0.08, noisy_accuracy)}
    raw = {"none": 0.05, "batch": bn_shift if bn_raw is None else bn_raw, "noisy batch": 0.08}
    rows = []
    for arm, (shift, accuracy) in arms.items():
        for seed in SEEDS:
            j = _jitter(seed)
            curve = tuple(np.linspace(0.1, accuracy + j, logs + 1))
            rows.append({
                "claim": "C9", "status": "ok", "opt/c9/arm": arm, "seed": seed, "diverged": False,
                "num_samples": None, "epochs": logs, "epoch_steps": 100,
                "final/test/accuracy": curve[-1], "test/accuracy": curve,
                "c9/steps": tuple(range(0, 100 * logs + 1, 100)),
                "c9/ics_steps": tuple(range(0, 100 * logs, 100)),
                "c9/drift": (0.5,) * logs, "train/loss": loss,
                "c9/p15": (-1.0,) * (logs + 1), "c9/p50": (0.0,) * (logs + 1), "c9/p85": (1.0,) * (logs + 1),
                **{f"c9/{m}/{layer}": ((raw[arm] if m == "ics_l2" else shift) * (1 + j),) * logs
                   for m in ("ics_l2", "ics_rel", "ics_cos") for layer in c9.MEASURED},
            })  # fmt: skip
    return pandas.DataFrame(rows)


def test_c9_replicating_santurkar_is_not_supported():
    analysis = claims.analyze("C9", _c9_rows(bn_shift=0.10, noisy_accuracy=0.65))
    assert analysis["verdict"] == "not supported"
    shift, lost = analysis["checks"]
    assert "‖G - G'‖ / ‖G‖" in shift["name"]  # the scale-free measure decides
    assert shift["effect"]["mean"] == pytest.approx(-100.0)  # twice no norm's shift
    assert lost["effect"]["mean"] == pytest.approx(0.0) and lost["outcome"] == "fails"


def test_c9_the_relative_shift_decides_and_the_raw_one_is_the_alternative():
    # Batch norm's raw ‖G - G'‖ is twice no norm's while its relative shift is a fifth.
    analysis = claims.analyze("C9", _c9_rows(bn_shift=0.01, noisy_accuracy=0.45, bn_raw=0.10))
    assert analysis["verdict"] == "supported"
    assert analysis["checks"][0]["effect"]["mean"] == pytest.approx(80.0)
    sensitivity = {row["alternative"]: row["verdict"] for row in analysis["sensitivity"]}
    assert sensitivity[c9.ALTERNATIVE_RAW] == "partly supported"  # raw shift fails, accuracy holds
    summary = pandas.DataFrame(analysis["tables"][c9.SUMMARY]).set_index(["measure", "arm"])
    assert summary.loc[(c9.MEASURES["accuracy"], "batch"), "mean"] == pytest.approx(65.0, abs=1.0)  # in %


def test_c9_supported_when_batch_norm_lowers_the_shift_and_noise_removes_the_benefit():
    analysis = claims.analyze("C9", _c9_rows(bn_shift=0.01, noisy_accuracy=0.45))
    assert analysis["verdict"] == "supported"
    assert [c["outcome"] for c in analysis["checks"]] == ["holds"] * 2
    assert analysis["checks"][1]["effect"]["mean"] == pytest.approx(20.0)


def test_c9_accuracy_check_waits_for_convergence():
    analysis = claims.analyze("C9", _c9_rows(bn_shift=0.01, noisy_accuracy=0.45, loss=(2.3, 2.0, 1.7, 1.4)))
    assert analysis["verdict"] == "inconclusive"
    lost = analysis["checks"][1]
    assert lost["outcome"] == "undecided" and len(lost["blockers"]) == 2  # batch and noisy batch
    assert analysis["checks"][0]["outcome"] == "holds"  # a mean over training: not blocked


def test_c9_figures_write_the_plotted_numbers(tmp_path):
    analysis = claims.analyze("C9", _c9_rows(bn_shift=0.10, noisy_accuracy=0.65))
    paths = c9.CLAIM.figures(analysis, tmp_path)
    shift = _read_csv_and_check_files([p for p in paths if p.stem == "fig-c9-shift"], "fig-c9-shift")
    drift, gradient = c9.MEASURES["drift"], c9.MEASURES[f"ics_rel/{c9.MEASURED[-1]}"]
    assert set(shift["measure"]) == {"test accuracy", drift, gradient}
    assert len(shift) == len(analysis["tables"][c9.CURVES]) + 2 * len(c9.ARMS)
    bn_shift = shift[(shift["measure"] == gradient) & (shift["arm"] == "batch")]["mean"]
    assert bn_shift.iloc[0] == pytest.approx(0.10)
    unit = _read_csv_and_check_files([p for p in paths if p.stem == "fig-c9-unit"], "fig-c9-unit")
    assert set(unit["arm"]) == set(c9.ARMS)


def _tiny_run(learning_rate):
    config = training.RunConfig(
        claim="C9", task=c9.TASK, num_samples=200, widths=(8, 8, 8), activation="sigmoid",
        norm="batch", batch_size=16, learning_rate=learning_rate, steps_per_epoch=2, epochs=1,
    )  # fmt: skip
    dataset, model = training.prepare(config)
    return c9._Run(config, dataset, model), dataset


def test_c9_measuring_the_gradient_shift_does_not_change_the_step():
    run, dataset = _tiny_run(0.5)
    x, y = dataset.x_train[:16], dataset.y_train[:16]
    variables = run.trainable + run.state + list(run.model.optimizer.variables)
    start = [v.numpy() for v in variables]
    _, shifts = run.step_with_shift(x, y)
    measured = [v.numpy() for v in variables]
    for variable, value in zip(variables, start):
        variable.assign(value)
    run.train_step(x, y)
    for variable, value in zip(variables, measured):
        np.testing.assert_allclose(variable.numpy(), value, rtol=1e-6, atol=1e-7)
    assert all(l2 > 0 for l2, _, _ in shifts)  # the earlier layers moved, so G changed


def test_c9_gradient_shift_is_zero_when_earlier_layers_do_not_move():
    run, dataset = _tiny_run(0.0)
    _, shifts = run.step_with_shift(dataset.x_train[:16], dataset.y_train[:16])
    for l2, relative, cosine in shifts:
        assert l2 == pytest.approx(0.0, abs=1e-7) and cosine == pytest.approx(1.0)


# --- All three -------------------------------------------------------------------------


@pytest.mark.parametrize("module", [c1, c3, c9], ids=lambda m: m.CLAIM_ID)
def test_a_claim_whose_runs_all_failed_is_reported_not_analyzed(module, tmp_path):
    failed = pandas.DataFrame([{"claim": module.CLAIM_ID, "status": "error", "error": "boom", "seed": s} for s in SEEDS])
    analysis = claims.analyze(module.CLAIM_ID, failed)
    assert analysis["verdict"] == "inconclusive"
    assert [c["outcome"] for c in analysis["checks"]] == ["undecided"]
    assert "All 5 run(s) failed" in analysis["caveats"][0]
    assert module.CLAIM.figures(analysis, tmp_path) == []


# --- End to end -------------------------------------------------------------------------


def test_smoke_grids_run_end_to_end_and_analyze(smoke_results, tmp_path):
    for module in (c1, c3, c9):
        claim_rows = smoke_rows(smoke_results, module.CLAIM_ID)
        analysis = claims.analyze(module.CLAIM_ID, claim_rows)
        assert analysis["verdict"] in stats.VERDICTS
        written = module.figures(analysis, tmp_path / "figures")
        assert {p.stem for p in written} == set(analysis["figures"])
    c3_rows = smoke_rows(smoke_results, "C3")
    assert (c3_rows["c3/train_examples"] == 256).all()
    assert c3_rows["train_eval/accuracy"].map(len).eq(2).all()
