"""C4b (which small-batch remedy works): its checks and verdicts on synthetic result tables,
its figure, its grid, the FRN arm's model, and its smoke profile end to end."""

import dataclasses
import itertools

import keras
import pandas
import pytest

import kerasnorm
from studies import claims
from studies.claims import c4b_small_batch as c4b
from studies.engine import models, stacked, training
from studies.report import stats
from studies.engine.store import load_rows
from tests.studies.conftest import smoke_rows

CONVERGED = [2.0, 1.0, 0.6, 0.5, 0.49]
STILL_FALLING = [2.0, 1.8, 1.6, 1.4, 1.0]
OFFSETS = (-1, 0, 1)  # per-seed deviations, in units of `spread`
NORMS = {"bn": "batch", "frozen": "batch", "renorm": "batch_renorm", "group": "group", "layer": "layer", "frn": "frn"}
#: C4's runs that C4b reads: plain BN, GN and LN at batch 32.
FROM_C4 = {("bn", 32, 32), ("group", 32, 32), ("layer", 32, 32)}


def _rows(errors, spread=0.3, seeds=range(3), columns=None):
    """Synthetic C4b rows (and C4's reference rows) from `errors` {(model, arm, batch,
    norm_batch): mean error in %}: trained arms become runs, post-hoc arms columns of the
    BN run at the same batches. Runs of plain BN at batch 32 sit at their mean, the others
    deviate by spread x OFFSETS. `columns` {(model, arm, batch, norm_batch): {column: value}}
    adds columns to those runs."""
    records = {}
    for ((model, arm, batch, norm_batch), error), seed in itertools.product(errors.items(), seeds):
        e = error + (0.0 if (arm, batch, norm_batch) == ("bn", 32, 32) else spread * OFFSETS[seed])
        ghost = norm_batch if norm_batch != batch else None
        trained = "bn" if arm in c4b.POST_HOC else arm
        key = (model, trained, batch, norm_batch, seed)
        theirs = (trained, batch, norm_batch) in FROM_C4
        record = records.setdefault(key, {
            "claim": "C4" if theirs else "C4b", "status": "ok", "model": model, "batch_size": batch, "seed": seed,
            "norm": "ghost" if ghost and trained in ("bn", "frozen") else NORMS[trained],
            "virtual_batch_size": ghost, "opt/freeze_at": c4b.FREEZE_AT if trained == "frozen" else None,
            "diverged": False, "train/loss": list(CONVERGED), "num_samples": 2000, "epochs": 10,
            **(columns or {}).get((model, trained, batch, norm_batch), {}),
        })
        column = c4b.POST_HOC.get(arm, c4b.EVAL_MODE)
        record[column] = 1 - e / 100
        if arm not in c4b.POST_HOC:
            record[c4b.C4_BATCH_MODE if theirs else c4b.BATCH_MODE] = 1 - (e + 2.0) / 100
    return pandas.DataFrame(list(records.values()))


def _errors(works=35.0, cnn=5.0, at_2=60.0, **overrides):
    """MLP: BN 35 % at 32, 60 % at ghost batches of 2 and 4 and 45 % at 8; every remedy at
    `works` at 4 and 8 and at `at_2` at 2 (post-hoc and batch renorm) unless overridden
    ({arm: error}); CNN: BN 5 % at 32 and 9 % at 2, its remedies at `cnn`, FRN as `frn`.
    The frozen arm trains where the rule decides (`c4b.DECISIVE`)."""
    errors = {("mlp", "bn", 32, 32): 35.0, ("mlp", "bn", 32, 2): 60.0, ("mlp", "bn", 32, 4): 60.0,
              ("mlp", "bn", 32, 8): 45.0, ("cnn1d", "bn", 32, 32): 5.0, ("cnn1d", "bn", 32, 2): 9.0}
    for model, batches in c4b.DECISIVE.items():
        for arm in c4b.REMEDIES:
            if arm in c4b.INDEPENDENT:
                if arm != "frn" or model != "mlp":
                    errors[(model, arm, 32, 32)] = overrides.get(arm, works if model == "mlp" else cnn)
                continue
            for b in batches:
                errors[(model, arm, 32, b)] = overrides.get(arm, works) if model == "mlp" else cnn
    for arm in ("recalibrated", "weighed", "recalibrated_weighed", "renorm"):
        errors[("mlp", arm, 32, 2)] = overrides.get(f"{arm}_at_2", at_2)
    return errors


def _by_name(analysis, start):
    return next(c for c in analysis["checks"] if c["name"].startswith(start))


def test_supported_when_every_remedy_recovers_bn_at_32_where_the_rule_decides():
    analysis = claims.analyze("C4b", _rows(_errors(at_2=35.0)))
    assert analysis["verdict"] == "supported"
    decisive = [c for c in analysis["checks"] if c["decisive"]]
    # MLP at 4 and 8: BN's rise and five remedies each; CNN at 2: five remedies; GN, LN
    # (MLP) and FRN (CNN).
    assert len(decisive) == 6 + 6 + 5 + 3 and all(c["outcome"] == "holds" for c in decisive)
    assert analysis["headline"].startswith("BN (EMA) error with ghost batches of 4")
    # The MLP at 2 is secondary; the CNN at 2 (20 values per statistic) and the MLP at 8 use 1 pp.
    assert not any(c["decisive"] for c in analysis["checks"] if "ghost batches of 2 " in c["name"] and "MLP" in c["name"])
    assert {c["threshold"] for c in decisive if "ghost batches of 8" in c["name"] or "CNN" in c["name"] and "ghost" in c["name"]} == {1.0}
    assert _by_name(analysis, "FRN + TLU")["decisive"] and "CNN" in _by_name(analysis, "FRN + TLU")["name"]


@pytest.mark.parametrize(
    "errors, spread, verdict",
    [
        # Example weighing leaves BN's excess: some remedies work, one does not.
        (_errors(weighed=55.0, at_2=35.0), 0.3, "partly supported"),
        # Frozen statistics 3 pp above BN at 32 with a wide spread: undecided.
        (_errors(frozen=38.0, at_2=35.0), 3.0, "inconclusive"),
        # At a normalization batch of 2 no remedy recovers the MLP: a secondary failure.
        (_errors(), 0.3, "partly supported"),
    ],
)
def test_verdict_paths(errors, spread, verdict):
    analysis = claims.analyze("C4b", _rows(errors, spread=spread))
    assert analysis["verdict"] == verdict


def test_sensitivity_gives_the_verdict_decided_at_batch_2():
    # Example weighing at 2 lies 3 pp above BN at 32, its threshold: undecided, which only
    # the earlier rule (deciding at 2) makes decisive.
    analysis = claims.analyze("C4b", _rows(_errors(at_2=35.0, weighed_at_2=38.0)))
    sensitivity = {s["alternative"]: s["verdict"] for s in analysis["sensitivity"]}
    assert analysis["verdict"] == "supported"
    assert sensitivity["decided at a normalization batch of 2 on the MLP (the rule of the run at 6d7033a)"] == "inconclusive"


def test_not_supported_when_bn_does_not_degrade_and_no_remedy_matches_it():
    errors = _errors(works=50.0, cnn=15.0, frn=15.0)
    errors[("mlp", "bn", 32, 4)] = 35.5
    errors[("mlp", "bn", 32, 8)] = 34.0
    analysis = claims.analyze("C4b", _rows(errors))
    assert {c["outcome"] for c in analysis["checks"] if c["decisive"]} == {"fails"}
    assert analysis["verdict"] == "not supported"


def test_post_hoc_arms_are_the_bn_runs_columns_and_share_their_convergence():
    rows = _rows(_errors(weighed=55.0, at_2=35.0))
    table = pandas.DataFrame(claims.analyze("C4b", rows)["tables"][c4b.ERROR_TABLE]).set_index(["model", "arm", "batch_size", "norm_batch"])
    assert table.loc[("mlp", "weighed", 32, 4), "error_pp"] == pytest.approx(55.0)
    assert table.loc[("mlp", "recalibrated", 32, 4), "error_pp"] == pytest.approx(35.0)
    # C4's plain BN at 32 has no post-hoc columns: no post-hoc arm there.
    assert ("mlp", "recalibrated", 32, 32) not in table.index and ("mlp", "bn", 32, 32) in table.index
    # The BN run behind them did not converge: its post-hoc arms cannot be compared either.
    bn = rows.index[(rows["model"] == "mlp") & (rows["norm"] == "ghost") & rows["opt/freeze_at"].isna()
                    & (rows["virtual_batch_size"] == 4)]
    rows.loc[bn[:2], "train/loss"] = pandas.Series([STILL_FALLING] * 2, index=bn[:2])  # 2 of 3 runs
    analysis = claims.analyze("C4b", rows)
    check = _by_name(analysis, "BN + recalibrate error with ghost batches of 4")
    assert check["outcome"] == "undecided" and any("not converged" in b for b in check["blockers"])
    assert analysis["verdict"] == "inconclusive"
    assert "recalibrated" not in set(pandas.DataFrame(analysis["convergence"])["arm"])


def test_reads_only_c4s_reference_runs():
    rows = _rows(_errors(at_2=35.0))
    stray = rows[(rows["claim"] == "C4") & (rows["norm"] == "batch")].assign(batch_size=2, **{c4b.EVAL_MODE: 0.1})
    analysis = claims.analyze("C4b", pandas.concat([rows, stray], ignore_index=True))
    table = pandas.DataFrame(analysis["tables"][c4b.ERROR_TABLE])
    assert not ((table["arm"] == "bn") & (table["batch_size"] == 2) & (table["model"] == "mlp")).any()
    bn32 = table[(table["model"] == "mlp") & (table["arm"] == "bn") & (table["norm_batch"] == 32)].iloc[0]
    assert bn32["mode_gap_pp"] == pytest.approx(2.0)  # C4's training-mode column, read under C4b's name


def test_reference_configs_are_c4s_but_for_the_claim_and_the_task():
    from studies.claims import c4_batch_size as c4

    for profile in ("smoke", "quick", "full"):
        theirs = {dataclasses.replace(c, claim="-", task="-", seed=0).key() for c in c4.grid(profile)}
        ours = c4b.reference_configs(profile)
        p = c4b.PROFILES[profile]
        assert ours and all(c.batch_size == 32 and not c.virtual_batch_size for c in ours)
        found = [dataclasses.replace(c, claim="-", task="-", seed=0).key() in theirs for c in ours]
        # Every reference of the full profile is C4's run; the smaller profiles' C4 has BN only.
        expected = [profile == "full" or c.norm == "batch" for c in ours]
        assert found == expected, profile
        assert not any(c.norm in ("batch", "group", "layer") and c.batch_size == 32 and not c.virtual_batch_size
                       for c in c4b.grid(profile))
        assert p.epochs["cnn1d"] == c4.PROFILES[profile].epochs["cnn1d"]


def test_weighing_explained_in_tables():
    columns = {c4b.WEIGHT_SWEEP.format(multiple=m): 1 - (40 + 10 * m) / 100 for m in c4b.WEIGHT_MULTIPLES}
    columns[c4b.WEIGHED_FIRST_LAYER] = 0.55
    columns.update({c4b.SECOND_MOMENT.format(mode=mode, layer=k): r for k in range(3)
                    for mode, r in (("ema", 1.0), ("weighed", 0.5 ** (k + 1)))})
    analysis = claims.analyze("C4b", _rows(_errors(at_2=35.0), columns={("mlp", "bn", 32, 4): columns}))
    weighing = pandas.DataFrame(analysis["tables"][c4b.WEIGHING_TABLE]).set_index("weighing")
    assert weighing.loc["every BN layer, weight 2/B", "mean"] == pytest.approx(60.0)
    assert weighing.loc["first BN layer only, weight 1/B", "mean"] == pytest.approx(45.0)
    assert weighing.loc["none (EMA)", "mean"] == pytest.approx(60.0)
    moments = pandas.DataFrame(analysis["tables"][c4b.MOMENT_TABLE]).set_index(["inference", "bn_layer"])
    assert moments.loc[("weighed, 1/B", 2), "mean"] == pytest.approx(0.125)
    assert moments.loc[("EMA", 0), "n"] == 3
    # without the columns the tables are empty
    analysis = claims.analyze("C4b", _rows(_errors(at_2=35.0)))
    assert analysis["tables"][c4b.WEIGHING_TABLE] == [] and analysis["tables"][c4b.MOMENT_TABLE] == []


def test_real_data_checks_give_a_verdict_of_their_own():
    errors = _errors(at_2=35.0)
    errors.update({("cnn2d", "bn", 32, 32): 3.0, ("cnn2d", "bn", 32, 2): 6.0, ("cnn2d", "recalibrated", 32, 2): 3.0,
                   ("cnn2d", "weighed", 32, 2): 3.0, ("cnn2d", "recalibrated_weighed", 32, 2): 3.0,
                   ("cnn2d", "renorm", 32, 2): 9.0})
    analysis = claims.analyze("C4b", _rows(errors))
    real = [c for c in analysis["checks"] if c["real"]]
    assert real and all(c["name"].endswith("2-D CNN, MNIST") for c in real)
    assert sum(c["decisive"] for c in real) == 4  # BN's rise, recalibration, weighing, batch renorm
    assert analysis["verdict"] == "supported" and analysis["real_verdict"] == "partly supported"


def test_differences_table_pairs_each_arm_with_bn():
    table = pandas.DataFrame(claims.analyze("C4b", _rows(_errors(at_2=35.0)))["tables"][c4b.DIFFERENCES_TABLE])
    row = table[(table["model"] == "mlp") & (table["arm"] == "renorm") & (table["norm_batch"] == 4)].iloc[0]
    assert row["minus_bn_same_batch_pp"] == pytest.approx(-25.0) and row["minus_bn_reference_pp"] == pytest.approx(0.0)


def test_figure_plots_the_error_table(tmp_path):
    analysis = claims.analyze("C4b", _rows(_errors()))
    paths = c4b.CLAIM.figures(analysis, tmp_path)
    assert sorted(p.name for p in paths) == [f"fig-c4b-remedies.{ext}" for ext in ("csv", "png", "svg")]
    data = pandas.read_csv(tmp_path / "fig-c4b-remedies.csv").set_index(["model", "arm", "norm_batch"])
    assert data.loc[("mlp", "bn", 4), "mean"] == pytest.approx(60.0)
    assert data.loc[("cnn1d", "frn", 32), "mean"] == pytest.approx(5.0)
    assert ("mlp", "frn", 32) not in data.index


def test_grid_pairs_seeds_and_keeps_frn_to_the_cnn():
    full = c4b.grid("full")
    assert {c.seed for c in full} == set(range(c4b.SEED_PLAN.initial))
    for c in full:
        alone = c.option("freeze_at") is not None
        assert alone != stacked.stackable(c)
    mnist1d = [c for c in full if c.dataset == "mnist1d"]
    ghosts = [c for c in mnist1d if c.virtual_batch_size]
    assert {c.virtual_batch_size for c in ghosts} == {2, 4, 8}
    assert all(c.batch_size == 32 and c.learning_rate == pytest.approx(0.05) for c in ghosts)
    assert {c.norm for c in ghosts} == {"ghost", "batch_renorm"}
    true = [c for c in mnist1d if c.batch_size == 2]
    assert all(c.learning_rate == pytest.approx(0.05 * 2 / 32) for c in true)
    frozen = [c for c in full if c.option("freeze_at") is not None]
    # The frozen arm where the rule decides, with every seed.
    assert {(c.model, c.virtual_batch_size) for c in frozen} == {(m, b) for m, bs in c4b.DECISIVE.items() for b in bs}
    assert len(frozen) == 3 * c4b.SEED_PLAN.initial
    assert all(c.option("freeze_at") == c4b.FREEZE_AT and c.norm == "ghost" for c in frozen)
    for c in frozen:  # the freeze falls on the first step of a compiled call, not after it
        steps = 1600 // c.batch_size
        assert c.epochs * steps * c4b.FREEZE_AT % training._steps_per_execution(steps) == 0
    assert {c.model for c in full if c.norm == "frn"} == {"cnn1d"}
    real = [c for c in full if c.dataset == "mnist5k"]
    assert {(c.norm, c.virtual_batch_size) for c in real} == {("ghost", 2), ("batch_renorm", 2)}
    assert all(stacked.stackable(c) for c in real)


def test_frn_arm_ends_in_its_own_tlu_and_needs_positions():
    model = models.build_model("cnn1d", (40, 1), 10, "frn", widths=(4, 4))
    assert sum(isinstance(l, kerasnorm.FilterResponseNormalization) for l in model.layers) == 2
    assert not any(isinstance(l, keras.layers.Activation) for l in model.layers)
    with pytest.raises(ValueError):
        models.build_model("mlp", (40,), 10, "frn", widths=(4,))


def test_smoke_runs_end_to_end(smoke_results):
    rows = smoke_rows(smoke_results, "C4b")
    references = load_rows(smoke_results, claims=["C4"])
    bn = rows[(rows["norm"] == "ghost") & rows["opt/freeze_at"].isna()]
    for column in c4b.POST_HOC.values():
        assert bn[column].between(0, 1).all()
    frozen = rows[rows["opt/freeze_at"].notna()]
    assert (frozen["c4b/frozen_at_step"] >= 0).all()
    analysis = claims.analyze("C4b", pandas.concat([rows, references], ignore_index=True))
    assert analysis["verdict"] in stats.VERDICTS
    # C4's plain BN at 32 is the reference: the CNN's checks have their pairs.
    assert _by_name(analysis, "BN (EMA) error with ghost batches of 2")["effect"]["n"] == 1


def test_c4b_is_registered_after_c4_in_any_case():
    from studies import claims

    assert claims.CLAIM_IDS.index("C4b") == claims.CLAIM_IDS.index("C4") + 1
    assert claims.parse_claims("c4b, C4") == ["C4", "C4b"]
    assert claims.parse_claims("all") == list(claims.CLAIM_IDS)
    assert claims.load("C4b") is c4b


def test_a_claim_whose_runs_all_failed_is_inconclusive_without_figures(tmp_path):
    rows = pandas.DataFrame([{"claim": "C4b", "status": "error", "error": "Traceback ..."}] * 2)
    analysis = claims.analyze("C4b", rows)
    assert analysis["verdict"] == "inconclusive" and "All 2 run(s) failed" in analysis["caveats"][0]
    assert c4b.CLAIM.figures(analysis, tmp_path) == []


def test_weighing_is_explained_on_the_mlps_bn_runs_at_a_normalization_batch_of_4():
    config = dataclasses.replace(c4b._config("mlp", "bn", 32, c4b.PROFILES["smoke"], ghost=4), epochs=1, widths=(8, 8))
    dataset, model = training.prepare(config)
    row = {"diverged": False}
    c4b._measure(config, dataset, model, row)
    assert row[c4b.WEIGHT_SWEEP.format(multiple=1.0)] == row[c4b.POST_HOC["weighed"]]
    assert all(0 <= row[c4b.WEIGHT_SWEEP.format(multiple=m)] <= 1 for m in c4b.WEIGHT_MULTIPLES)
    assert 0 <= row[c4b.WEIGHED_FIRST_LAYER] <= 1
    ratios = [row[c4b.SECOND_MOMENT.format(mode=mode, layer=k)] for mode in ("ema", "weighed") for k in range(2)]
    assert all(r > 0 for r in ratios)
    # elsewhere (another normalization batch) only the post-hoc remedies are measured
    other = dataclasses.replace(config, virtual_batch_size=2)
    row = {"diverged": False}
    c4b._measure(other, dataset, training.build(other, dataset), row)
    assert c4b.WEIGHED_FIRST_LAYER not in row and c4b.POST_HOC["recalibrated"] in row
