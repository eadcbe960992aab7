"""C4b — which small-batch remedy for batch norm actually works (beyond the note).

Design: C4's two models (an MLP, whose batch statistics come from the batch alone, and a
1-D CNN, whose statistics pool positions too), data, schedule and epochs, with batch norm
at small normalization batches and the published remedies, the same seeds for every arm:

- normalization batches of `NORM_BATCHES` samples as ghost batches at a gradient batch of
  `REFERENCE_BATCH` (the learning rate fixed: only BN's statistics change), and as true
  batches of `TRUE_BATCH` (the learning rate scaled linearly, as a user with that batch
  would train);
- BN with its moving averages (EMA), and on the very same checkpoints, without retraining:
  BN + `kerasnorm.recalibrate` (exact population statistics), BN + inference example
  weighing (Summers & Dinneen 2020, weight 1/B; EvalNorm's idea), and both;
- BN with frozen statistics for the last `1 - FREEZE_AT` of training
  (`kerasnorm.FreezeBatchStatistics`, recalibrated first; Wu & Johnson 2021);
- batch renorm with Ioffe's (2017) warm-up of its limits (C4's schedule);
- the batch-independent norms GN, LN and FRN + TLU (CNN only: on a dense layer FRN has one
  value per statistic), at the gradient batch of `REFERENCE_BATCH` (a norm without batch
  statistics has no normalization batch to shrink);
- plain BN at `REFERENCE_BATCH`, the reference every remedy is measured against.

Rule (fixed before the full run; `RULE` in words): a remedy "works" at a normalization batch
of 2 when its test error is at most `THRESHOLD_PP` above plain BN's at the reference batch
(paired by seed). Decisive: on the MLP (the direct probe) BN at a ghost batch of 2 is at least
`THRESHOLD_PP` worse than at 32 (there is something to remedy), and each remedy's check at
ghost batches of 2; FRN's on the CNN, its only model. Secondary: the same on the CNN and with
true batches of 2. The verdict reads: supported if every remedy works, partly supported if
some do, not supported if none does (and BN did not degrade), inconclusive while a decisive
check is undecided; the report gives each remedy's outcome.
"""

from __future__ import annotations

import dataclasses

import pandas

import kerasnorm
from studies.claims import Claim, _mlp_common, check_profile
from studies.claims import _cnn_common as common
from studies.engine import tasks
from studies.engine.config import EVAL_BATCH_SIZE, RunConfig, concat
from studies.engine.config import grid as product
from studies.report import plots, stats

CLAIM_ID = "C4b"
TITLE = "(beyond the note) which small-batch remedy for batch norm actually works"

# -- the grid, as data (C4's design: models, data, schedule, epochs) -----------------------
BASE_LR = 0.05  # peak SGD learning rate at REFERENCE_BATCH, scaled linearly for true batches
REFERENCE_BATCH = 32  # samples: plain BN's normal batch and the ghost arms' gradient batch
NORM_BATCHES = (2, 4, 8)  # samples per batch statistic, as ghost batches
TRUE_BATCH = 2  # samples: the true small batch
THRESHOLD_PP = 3.0  # percentage points of test error, see `THRESHOLD_WHY`
MOMENTUM = 0.9  # moving-average momentum of BN and batch renorm, as in C4
WARMUP_EPOCHS = 1.0  # linear learning-rate warm-up, in epochs, then cosine decay to 0
#: Fraction of training after which BN's statistics are frozen. A pilot froze at 0.8: the
#: frozen phase was then exactly the last fifth that `stats.plateau` reads, and the loss,
#: now computed with population statistics, fell through it (plateau 0.55, MLP, ghost batch
#: 2); at 0.6 the last fifth lies inside the frozen phase, which has time to settle.
FREEZE_AT = 0.6
#: Batch renorm's limits ramp from plain BN's to rmax 3, dmax 5 between these fractions of
#: training (Ioffe 2017: from about 3 % to 15-25 % of training), as in C4.
RENORM_WARMUP = (0.05, 0.25)
MODELS = ("mlp", "cnn1d")
WIDTHS = {"mlp": (100, 100, 100), "cnn1d": (32, 32, 32)}
#: Arms: (model norm, the option that selects the remedy in training); post-hoc arms are
#: columns of the "bn" runs.
TRAINED_ARMS = ("bn", "frozen", "renorm")
POST_HOC = {  # arm -> metric column of the BN runs (test accuracy, inference mode)
    "recalibrated": "c4b/accuracy_recalibrated",
    "weighed": "c4b/accuracy_weighed",
    "recalibrated_weighed": "c4b/accuracy_recalibrated_weighed",
}
#: Arms that train one run at a time: the frozen arm freezes mid-run through a callback.
ALONE_ARMS = ("frozen",)
INDEPENDENT = ("group", "layer", "frn")  # batch-independent norms, at REFERENCE_BATCH only
ARM_LABELS = {
    "bn": "BN (EMA)",
    "recalibrated": "BN + recalibrate",
    "weighed": "BN + example weighing",
    "recalibrated_weighed": "BN + recalibrate + weighing",
    "frozen": "BN, frozen late",
    "renorm": "batch renorm",
    "group": "GN",
    "layer": "LN",
    "frn": "FRN + TLU",
}
REMEDIES = tuple(a for a in ARM_LABELS if a != "bn")
MODEL_LABELS = {"mlp": "MLP", "cnn1d": "CNN"}


@dataclasses.dataclass(frozen=True)
class Profile:
    models: tuple  # of MODELS
    norm_batches: tuple  # ghost batch sizes
    true_batch: int | None  # the true small batch, or None
    seeds: int  # of the arms that train stacked
    alone_seeds: int  # of `ALONE_ARMS`, which train one run at a time
    num_samples: int  # of MNIST-1D, 80 % train
    epochs: dict  # model -> epochs


#: Full profile: C4's epochs (its pilot: 30 MLP / 15 CNN epochs converge at batches 2-128).
#: Cost, unstacked, from the previous full run's per-step times (0.8 ms MLP, 1.2-2.5 ms CNN,
#: 3 s per run): the ghost arms and references about 5 s a run, the true-batch-2 runs
#: 17-21 s, about 240 CPU-s per seed. Every arm but `ALONE_ARMS` now trains stacked, 8
#: seeds a block for about the cost of three runs alone (issue 13): one block; the frozen
#: arm (a mid-run callback) trains alone, 3 seeds for the budget (pairing by seed uses the
#: seeds both arms have). GN, LN and FRN at true batches are left out for the budget (C4
#: has GN and LN there).
PROFILES = {
    # The CNN alone runs every arm (FRN included) and every post-hoc remedy.
    # 5 epochs of 5 steps: the freeze (at step 15) falls on a compiled call's first step.
    "smoke": Profile(("cnn1d",), (2,), None, 1, 1, 200, {"mlp": 5, "cnn1d": 5}),
    "quick": Profile(("cnn1d",), (2,), None, 2, 2, 500, {"mlp": 5, "cnn1d": 5}),
    "full": Profile(MODELS, NORM_BATCHES, TRUE_BATCH, 8, 3, 2000, {"mlp": 30, "cnn1d": 15}),
}
ERROR_TABLE = "test error (%) by model, arm and normalization batch"
DIFFERENCES_TABLE = "test error minus plain BN's, paired by seed (pp)"
CONVERGENCE_TABLE = "convergence per trained arm (plateau of the training loss)"
EVAL_MODE, BATCH_MODE = "final/test/accuracy", "c4b/test_accuracy_batch_stats"


def learning_rate(batch_size):
    """The linear scaling rule: `BASE_LR` at `REFERENCE_BATCH` samples."""
    return BASE_LR * batch_size / REFERENCE_BATCH


def _config(model, arm, batch_size, profile, ghost=None):
    norm = {"bn": "ghost" if ghost else "batch", "frozen": "ghost" if ghost else "batch",
            "renorm": "batch_renorm"}.get(arm, arm)
    return common.small_batch_config(
        CLAIM_ID, "c4b_small_batch", model, norm, batch_size, num_samples=profile.num_samples,
        epochs=profile.epochs[model], learning_rate=learning_rate(batch_size), momentum=MOMENTUM,
        widths=WIDTHS[model], renorm_warmup=RENORM_WARMUP, virtual_batch_size=ghost,
        options={"freeze_at": FREEZE_AT} if arm == "frozen" else None,
    )


def grid(profile):
    p = PROFILES[check_profile(profile)]
    configs = []
    for model in p.models:
        configs += [_config(model, arm, REFERENCE_BATCH, p, ghost=b) for b in p.norm_batches for arm in TRAINED_ARMS]
        configs += [_config(model, arm, p.true_batch, p) for arm in TRAINED_ARMS if p.true_batch]
        configs.append(_config(model, "bn", REFERENCE_BATCH, p))
        configs += [_config(model, arm, REFERENCE_BATCH, p) for arm in INDEPENDENT if arm != "frn" or model != "mlp"]
    def seeds(config):
        alone = config.option("freeze_at") is not None  # `ALONE_ARMS`: the frozen arm
        return list(range(p.alone_seeds if alone else p.seeds))

    return concat(*(product(c, seed=seeds(c)) for c in configs))


# -- the task ---------------------------------------------------------------------------


def _accuracy(model, dataset):
    return common.inference_accuracy(model, dataset.x_test, dataset.y_test)


def _measure(config, dataset, model, row):
    """Adds the test accuracy in training mode (test batches of the training batch, ghost
    batches splitting them: `BATCH_MODE`) and, for plain BN runs, the post-hoc remedies on
    the trained checkpoint (`POST_HOC`'s columns); NaN where the run diverged."""
    diverged = row["diverged"]
    row[BATCH_MODE] = float("nan") if diverged else common.batch_statistics_accuracy(
        model, dataset.x_test, dataset.y_test, config.batch_size
    )
    if config.norm in ("batch", "ghost") and config.option("freeze_at") is None:
        weight = 1.0 / (config.virtual_batch_size or config.batch_size)  # each example's share of its statistics
        if diverged:
            row.update({column: float("nan") for column in POST_HOC.values()})
        else:
            kerasnorm.set_inference_weight(model, weight)
            row[POST_HOC["weighed"]] = _accuracy(model, dataset)
            kerasnorm.set_inference_weight(model, None)
            kerasnorm.recalibrate(model, dataset.x_train, batch_size=EVAL_BATCH_SIZE)
            row[POST_HOC["recalibrated"]] = _accuracy(model, dataset)
            kerasnorm.set_inference_weight(model, weight)
            row[POST_HOC["recalibrated_weighed"]] = _accuracy(model, dataset)


@tasks.register_task(
    "c4b_small_batch",
    # The frozen arm freezes BN mid-run through a callback: it trains as written.
    stackable=common.warmup_cosine_stacking(
        WARMUP_EPOCHS, finish=_measure, applies=lambda config: config.option("freeze_at") is None
    ),
)
def small_batch_run(config: RunConfig) -> dict:
    """Trains with C4's schedule (freezing BN's statistics from option ``freeze_at`` of
    training on, recalibrated first; ``c4b/frozen_at_step`` says when), then `_measure`.
    The sweep trains the runs without ``freeze_at`` stacked, by blocks of seeds, to the
    same rows."""
    freeze_at = config.option("freeze_at")
    freezer = []

    def make_callbacks(dataset):
        if freeze_at is not None:
            freezer.append(kerasnorm.FreezeBatchStatistics(
                at_fraction=freeze_at, recalibrate_data=dataset.x_train, recalibrate_batch_size=EVAL_BATCH_SIZE))
        return freezer

    row, dataset, model = common.scheduled_run(config, WARMUP_EPOCHS, make_callbacks)
    if freeze_at is not None:
        row["c4b/frozen_at_step"] = freezer[0].frozen_at_step
        # Frozen layers train like inference; the training-mode accuracy is measured with
        # batch statistics, so the flag comes off for it.
        for layer in _mlp_common.batch_norm_layers(model):
            layer.freeze_statistics = False
    _measure(config, dataset, model, row)
    return row


# -- the analysis -----------------------------------------------------------------------

THRESHOLD_WHY = (
    f"C4's threshold: {THRESHOLD_PP:g} pp is about a quarter of BN's 11.1 pp rise from batch 32 "
    "to 2 in Wu & He's Fig. 1; a remedy that leaves less than that of BN's excess error works "
    "at this scale"
)
CHANCE_PP = 100.0 * common.CHANCE_ACCURACY

SEED_PLAN = stats.SeedPlan(
    pilot=3,
    initial=8,
    block=8,
    cap=16,
    why=(
        "C4's pilot of 3 seeds: sd of BN's per-seed small-minus-32 difference 1.5 pp on both "
        "models -> 7 seeds for a half-width of 1.5 pp (stats.seeds_needed). The arms that "
        "train stacked get one block of 8 seeds; the frozen arm, which trains one run at a "
        "time, 3 (its checks pair on those 3 seeds and may stay undecided); the plan "
        "adds a block of 8 while a decisive check stays undecided."
    ),
)

RULE = (
    f"A remedy works at a normalization batch of 2 when its test error (inference mode) minus "
    f"plain BN's at batch {REFERENCE_BATCH} is at most {THRESHOLD_PP:g} pp, paired by seed. "
    f"Decisive: on the MLP, BN's error with ghost batches of 2 (gradient batch "
    f"{REFERENCE_BATCH}) is at least {THRESHOLD_PP:g} pp above its error at {REFERENCE_BATCH} "
    "(there is something to remedy), and each remedy's check with ghost batches of 2 (GN, LN: "
    f"at batch {REFERENCE_BATCH}, having no batch statistics); FRN's on the CNN, its only "
    "model. Secondary: the same checks on the CNN, and with true batches of 2. Supported if "
    "every decisive check holds (every remedy works), partly supported if some hold and some "
    "fail (the checks say which remedies work), not supported if all fail, inconclusive "
    "while a decisive check is undecided. A check compares end-of-training errors: a "
    "trained arm whose median run had not converged, or two arms at chance, leave it undecided."
)

ANCHOR = (
    "Singh & Shrivastava 2019 (EvalNorm): +6.2 pp top-1 over BN at batch 2 on ImageNet, "
    "inference-only.\n"
    "Summers & Dinneen 2020: inference example weighing; Wu & Johnson 2021: frozen population "
    "statistics late in training remove the train/test inconsistency at small batches; Ioffe "
    "2017: batch renorm at batch 4 gives 76.5 % top-1 against BN's 74.2 % (Inception, "
    "ImageNet; Wu & He's Fig. 1 re-run: 26.3 % error at batch 4); Singh & Krishnan 2020: FRN + "
    "TLU above GN at small batches and above BN at large ones; Wu & He 2018: GN 24.1 % at "
    "every batch where BN rises from 23.6 % to 34.7 %."
)

BY = ["model", "arm", "batch_size", "norm_batch"]


def _arm_of(rows):
    """The trained arm of each run: bn, frozen, renorm or the norm's own name."""
    frozen = rows["opt/freeze_at"].notna() if "opt/freeze_at" in rows else pandas.Series(False, rows.index)
    arm = rows["norm"].map({"batch": "bn", "ghost": "bn", "batch_renorm": "renorm"}).fillna(rows["norm"])
    return arm.where(~frozen, "frozen")


def long_rows(rows: pandas.DataFrame) -> pandas.DataFrame:
    """One record per run and arm: the trained arms, and the post-hoc arms of every BN run
    (its checkpoint with another inference), with ``error`` and ``batch_error`` in % (a
    diverged run at chance)."""
    ok = rows.assign(arm=_arm_of(rows), norm_batch=common.normalization_batch(rows),
                     error=common.error_pp(rows, EVAL_MODE), batch_error=common.error_pp(rows, BATCH_MODE))
    parts = [ok]
    bn = ok[ok["arm"] == "bn"]
    for arm, column in POST_HOC.items():
        if column in bn:
            parts.append(bn.assign(arm=arm, error=common.error_pp(bn, column)))
    return pandas.concat(parts, ignore_index=True)


def _arm(long, model, arm, batch_size, norm_batch):
    return long[(long["model"] == model) & (long["arm"] == arm) & (long["batch_size"] == batch_size)
                & (long["norm_batch"] == norm_batch)]


def _check(long, trained, name, a, b, kind, decisive, threshold=THRESHOLD_PP):
    runs_a, runs_b = _arm(long, *a), _arm(long, *b)
    effect = stats.estimate(stats.paired_differences(runs_a, runs_b, "error"))
    # Convergence is the trained runs' (a post-hoc arm's checkpoint is its BN run's).
    sources = [_arm(trained, a[0], "bn" if a[1] in POST_HOC else a[1], *a[2:]), _arm(trained, *b)]
    both = pandas.concat(sources)
    blockers = list(stats.unconverged_arms(both, BY)) if len(both) else []
    blockers.append(stats.ceiling_blocker(100.0 - runs_a["error"].mean(), 100.0 - runs_b["error"].mean(),
                                          CHANCE_PP, f"{name}"))
    return stats.Check(name=name, effect=effect, threshold=threshold, kind=kind, why=THRESHOLD_WHY,
                       unit=" pp", decisive=decisive, blockers=tuple(blockers))


def _checks(long, trained):
    ref = REFERENCE_BATCH
    checks = []
    for model in MODELS:
        label = MODEL_LABELS[model]
        reference = (model, "bn", ref, ref)
        present = set(long.loc[long["model"] == model, "arm"])
        settings = [("ghost", (ref, 2))]
        if len(_arm(long, model, "bn", TRUE_BATCH, TRUE_BATCH)):
            settings.append(("true", (TRUE_BATCH, TRUE_BATCH)))
        for kind, (batch, norm_batch) in settings:
            words = f"ghost batches of 2 (gradient batch {ref})" if kind == "ghost" else "true batches of 2"
            primary = model == "mlp" and kind == "ghost"
            checks.append(_check(long, trained, f"BN (EMA) error with {words} minus BN at {ref}, {label}",
                                 (model, "bn", batch, norm_batch), reference, "at_least", primary))
            for arm in REMEDIES:
                if arm not in present or arm in INDEPENDENT and kind == "true":
                    continue
                a = (model, arm, ref, ref) if arm in INDEPENDENT else (model, arm, batch, norm_batch)
                where = f"at batch {ref}" if arm in INDEPENDENT else f"with {words}"
                checks.append(_check(long, trained, f"{ARM_LABELS[arm]} error {where} minus BN at {ref}, {label}",
                                     a, reference, "at_most", primary or (arm == "frn" and kind == "ghost")))
    return checks


def _error_table(long):
    long = long.assign(mode_gap=long["batch_error"] - long["error"])
    table = stats.summarize(long, BY, "error").rename(columns={"mean": "error_pp"})
    gap = stats.summarize(long, BY, "mode_gap").rename(
        columns={"mean": "mode_gap_pp", "low": "low_mode_gap", "high": "high_mode_gap"}).drop(columns="n")
    spread = long.groupby(BY)["error"].std(ddof=1).rename("seed_sd_pp").reset_index()
    diverged = long.groupby(BY)["diverged"].apply(lambda d: int(d.astype(bool).sum())).rename("diverged").reset_index()
    for part in (gap, spread, diverged):
        table = table.merge(part, on=BY)
    return common.ordered(table, {"model": list(MODELS), "arm": list(ARM_LABELS)}, BY)


def _differences_table(long):
    """Per arm: error minus plain BN's at the same normalization batch and at the reference."""
    records = []
    for (model, arm, batch, norm_batch), runs in long.groupby(BY, sort=False):
        same = _arm(long, model, "bn", batch, norm_batch)
        ref = _arm(long, model, "bn", REFERENCE_BATCH, REFERENCE_BATCH)
        d_same = stats.estimate(stats.paired_differences(runs, same, "error"))
        d_ref = stats.estimate(stats.paired_differences(runs, ref, "error"))
        records.append({"model": model, "arm": arm, "batch_size": batch, "norm_batch": norm_batch,
                        "minus_bn_same_batch_pp": d_same.mean, "low_same": d_same.low, "high_same": d_same.high,
                        "minus_bn_reference_pp": d_ref.mean, "low_reference": d_ref.low,
                        "high_reference": d_ref.high, "n": d_ref.n})
    table = pandas.DataFrame.from_records(records)
    return common.ordered(table, {"model": list(MODELS), "arm": list(ARM_LABELS)}, BY) if len(table) else table


def analyze(ok: pandas.DataFrame, runs) -> dict:
    failed = runs.failed
    long = long_rows(ok)
    trained = long[long["arm"].isin(TRAINED_ARMS + INDEPENDENT)]
    checks = _checks(long, trained)
    convergence = common.ordered(stats.convergence_table(trained, BY), {"model": list(MODELS), "arm": list(ARM_LABELS)}, BY)
    table = _error_table(long)
    error = common.summary_lookup(table.rename(columns={"error_pp": "mean"}), BY)
    ref = REFERENCE_BATCH

    evidence = [(c.name, c.effect, " pp") for c in checks]
    evidence += [(f"{ARM_LABELS[a]}: test error at normalization batch {nb} (batch {b}), {MODEL_LABELS[m]}",
                  error(m, a, b, nb), " %")
                 for m, a, b, nb in table[BY].itertuples(index=False, name=None)]

    ghosts = sorted(int(b) for b in ok.loc[ok["norm"].isin(["ghost"]), "virtual_batch_size"].dropna().unique())
    seeds = int(long.groupby(BY)["seed"].nunique().max())
    epochs = ", ".join(f"{int(e)} epochs ({MODEL_LABELS[m]})" for m, e in ok.groupby("model")["epochs"].max().items())
    true_batches = sorted(int(b) for b in ok.loc[ok["batch_size"] != ref, "batch_size"].unique())
    setup = (
        f"C4's models, data and schedule: MNIST-1D ({_mlp_common.data_words(ok)}), an MLP (3 x 100 "
        f"units) and a 1-D CNN (3 x 32 filters), SGD with momentum 0.9, peak learning rate "
        f"{BASE_LR:g} x batch / {ref}, a {WARMUP_EPOCHS:g}-epoch warm-up and a cosine decay to 0, "
        f"{epochs}. Normalization batches {', '.join(map(str, ghosts)) or '-'} as ghost batches at a "
        f"gradient batch of {ref}" + (f", and true batches of {', '.join(map(str, true_batches))} "
                                      "(rate scaled)" if true_batches else "") + ". Arms: "
        "BN with its moving averages (momentum 0.9); on the same checkpoints, recalibrated "
        "population statistics (kerasnorm.recalibrate over the training set), inference example "
        "weighing with weight 1/B (B the normalization batch), and both; BN with statistics "
        f"frozen for the last {1 - FREEZE_AT:.0%} of training (kerasnorm.FreezeBatchStatistics, "
        f"recalibrated first); batch renorm (r in [1/3, 3], d in [-5, 5], limits ramped from "
        f"{RENORM_WARMUP[0]:.0%} to {RENORM_WARMUP[1]:.0%} of training); GN (8 groups), LN and "
        f"FRN + TLU (CNN only; the TLU replaces the ReLU) at batch {ref}; plain BN at batch {ref} "
        f"as the reference. {seeds} seeds per arm, the same for every arm."
    )
    unconverged = [r for r in convergence.to_dict(orient="records") if r["converged"] < r["runs"] - r["diverged"]]
    diverged = int(ok["diverged"].astype(bool).sum())
    caveats = [
        stats.ceiling_summary(checks),
        f"{failed} run(s) failed and are left out; {diverged} diverged and count at chance "
        "accuracy (90 % error).",
        "Convergence (`stats.plateau` of the training loss, threshold "
        f"{stats.PLATEAU_THRESHOLD:g}): " + ("; ".join(
            f"{MODEL_LABELS.get(r['model'], r['model'])} {ARM_LABELS.get(r['arm'], r['arm'])} at batch "
            f"{r['batch_size']} (norm batch {r['norm_batch']}): {r['converged']} of "
            f"{r['runs'] - r['diverged']} converged" for r in unconverged)
            + "; checks on the arms where fewer than half did are undecided." if unconverged
            else "every trained run converged.")
        + " Post-hoc arms share their BN run's training.",
        "Power: " + SEED_PLAN.why,
        "GN, LN and FRN have no batch statistics, so their checks use their runs at the "
        f"reference batch of {ref} for every normalization batch; with true small batches only "
        "SGD's noise would change for them (C4 measures GN and LN there).",
        "Example weighing in the MLP mixes each example's own value (its mean, variance 0) into "
        "the moving statistics: the paper's form for a layer without positions.",
        "A claim beyond the note: which remedy works is read from the checks, one per remedy; "
        "the verdict only summarizes them.",
    ]
    return dict(
        checks=checks,
        convergence=convergence,
        evidence=evidence,
        setup=setup,
        caveats=caveats,
        tables={ERROR_TABLE: table, DIFFERENCES_TABLE: _differences_table(long), CONVERGENCE_TABLE: convergence},
        figures={
            "fig-c4b-remedies": (
                "Test error (inference mode) against the normalization batch per remedy, ghost "
                f"batches at a gradient batch of {ref}; hollow markers: true batches. Grey line: "
                f"plain BN at batch {ref}; GN, LN and FRN (no batch statistics) as horizontal "
                f"lines at their batch-{ref} error. Bars: {stats.INTERVAL}."
            )
        },
    )


# -- the figure -------------------------------------------------------------------------


def figures(analysis, out_dir):
    if not analysis["tables"].get(ERROR_TABLE):
        return []  # no run finished
    table = pandas.DataFrame(analysis["tables"][ERROR_TABLE])
    models = [m for m in MODELS if m in set(table["model"])]
    fig, axes = plots.new_axes(width=4.2, height=3.2, ncols=len(models))
    axes = axes if isinstance(axes, list) else [axes]
    ref = REFERENCE_BATCH
    plotted = []
    for ax, model in zip(axes, models):
        part = table[table["model"] == model]
        bn_ref = part[(part["arm"] == "bn") & (part["norm_batch"] == ref)]
        arms = [a for a in ARM_LABELS if a in set(part["arm"])]
        for i, arm in enumerate(arms):
            rows = part[part["arm"] == arm]
            color = plots.OKABE_ITO[i % len(plots.OKABE_ITO)]
            shift = 2 ** (0.05 * (i - len(arms) / 2))  # side by side at each batch, so no arm hides another
            if arm in INDEPENDENT:
                ax.axhline(float(rows["error_pp"].iloc[0]), color=color, linestyle="--", linewidth=1.0,
                           label=ARM_LABELS[arm])
                kept = rows
            else:
                ghost = rows[rows["batch_size"] == ref].sort_values("norm_batch")
                true = rows[rows["batch_size"] != ref]
                for kept_rows, face in ((ghost, color), (true, "white")):
                    if not len(kept_rows):
                        continue
                    mean = kept_rows["error_pp"].to_numpy(float)
                    ax.errorbar(kept_rows["norm_batch"].to_numpy(float) * shift, mean,
                                yerr=[mean - kept_rows["low"].to_numpy(float), kept_rows["high"].to_numpy(float) - mean],
                                marker="o", markersize=4, capsize=2, linewidth=1.1, color=color,
                                markerfacecolor=face, linestyle="-" if face != "white" else "none",
                                label=ARM_LABELS[arm] if face != "white" else None)
                kept = rows
            plotted.append(kept.assign(model=model)[["model", "arm", "batch_size", "norm_batch", "error_pp", "low", "high", "n"]])
        if len(bn_ref):
            ax.axhline(float(bn_ref["error_pp"].iloc[0]), color="#888888", linewidth=1.4, alpha=0.6)
        ticks = sorted(int(b) for b in part["norm_batch"].unique())
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(t) for t in ticks], fontsize=7)
        ax.set_xlabel("normalization batch (samples)")
        ax.set_ylabel("test error (%)")
        ax.set_title(MODEL_LABELS[model], fontsize=9)
    axes[-1].legend(fontsize=6, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    data = pandas.concat(plotted, ignore_index=True).rename(columns={"error_pp": "mean"})
    return plots.save_figure(fig, "fig-c4b-remedies", out_dir, data)


CLAIM = Claim(
    id=CLAIM_ID,
    title=TITLE,
    rule=RULE,
    anchor=ANCHOR,
    seed_plan=SEED_PLAN,
    grid=grid,
    analyze=analyze,
    figures=figures,
)
