"""C3: "BN has a slight regularization effect, like dropout" (BN §3.4; Hoffer et al. 2017;
Luo et al. 2019).

An MLP that over-fits: 1024 MNIST-1D training examples, trained until it fits them. The
measure is the generalization gap, the accuracy on the training set (inference mode,
after training) minus the test accuracy, in percentage points; the test accuracy is
reported beside it. The arms separate the parts of batch norm:

- no norm, and dropout at p = 0.1 (the regularizer the claim compares with);
- batch norm over the whole mini-batch of 64;
- batch norm *without the noise*: every layer is normalized with the exact statistics of
  the whole training set under the current weights, recomputed after every compiled call
  of the training loop, never with a batch's own (`PopulationBatchNormalization`). The
  normalization and its learned scale and offset stay; what goes is the dependence of an
  example's output on its batch-mates;
- *fixed batch composition*, for batch norm and for no norm: the training set shuffled
  once with the run's seed and the same 16 batches repeated every pass (option
  ``fixed_batches``). Batch norm's noise then stops being noise: each example always meets
  the same batch-mates, so its normalization is a fixed function the network can fit.
  Keras 3's NumPy-array input pipeline does this to every user who seeds their run
  (measured with Keras 3.15.1, TensorFlow 2.21: after `keras.utils.set_random_seed`,
  ``model.fit(x, y, shuffle=True)`` repeats the first epoch's permutation every epoch).

What "slight" means, fixed before the full run (`SLIGHT_PP`): batch norm narrows the gap
against no norm by at least 1 pp; "none" is a narrowing below 1 pp. Wu & He (2018) put
batch norm's 0.5 pp lower ImageNet validation error than group norm's at batch 32 (23.6
vs 24.1 %, 2 % of the error) down to batch norm's regularization; 2 % of this MLP's test
error (about 50 %) is 1 pp.

The runs use the task ``c3_overfit``, which trains on the first `TRAIN_SIZE` examples of the
training split and, for the noise-free arm, swaps in the layer and keeps its statistics
exact (`Recalibrate`). The sweep trains every arm but the noise-free one stacked, 8 seeds a
block (`studies.engine.stacked`); the noise-free arm recalibrates between compiled calls, so its
runs train one at a time.
"""

from __future__ import annotations

import dataclasses
import time

import keras
import numpy as np
import pandas

import kerasnorm
from studies.claims import Claim, check_profile
from studies.claims import _mlp_common as common
from studies.engine import tasks, training
from studies.engine.config import RunConfig, concat
from studies.report import plots, stats

CLAIM_ID = "C3"
TITLE = "BN has a slight regularization effect, like dropout"

# --- The grid (full profile; `PROFILES` shrinks it) ---------------------------------------
# 16 batches of 64: a pass is a whole number of batches, so the fixed-composition arms
# repeat exactly the same batches (the pipeline batches across pass boundaries).
TRAIN_SIZE = 1024  # training examples kept (the test split keeps all of MNIST-1D's 1000)
BATCH_SIZE = 64  # examples per step; batch norm's "full batch"
LEARNING_RATE = 0.05  # SGD, momentum 0.9
EVAL_EVERY = 80  # optimizer steps between evaluations (80 x 64 = 5 passes)
EVALUATIONS = 20  # 1600 steps: every kept arm's training loss levelled off in the pilots (plateau <= 0.04)
#: arm -> the RunConfig fields that make it (all others shared).
ARMS = {
    "none": dict(norm="none"),
    "none, fixed batches": dict(norm="none"),
    "dropout 0.1": dict(norm="none", dropout=0.1),
    "batch 64": dict(norm="batch"),
    "batch 64, fixed batches": dict(norm="batch"),
    "batch, no noise": dict(norm="batch"),  # population statistics, see the module docstring
}
NONE, BN, DROPOUT = "none", "batch 64", "dropout 0.1"
NOISE_FREE = "batch, no noise"
NONE_FIXED, BN_FIXED = "none, fixed batches", "batch 64, fixed batches"
#: arm trained on fixed batches -> the same arm reshuffled every pass.
FIXED = {NONE_FIXED: NONE, BN_FIXED: BN}
#: One colour per arm (Okabe & Ito), the same in every profile.
COLORS = dict(zip(ARMS, [plots.OKABE_ITO[i] for i in (7, 6, 4, 0, 5, 1)]))

# --- The rule's sizes (fixed before the full run) ----------------------------------------
SLIGHT_PP = 1.0  # a narrowing of the gap of at least this is "slight"; below it, "none"
SLIGHT_WHY = (
    "Wu & He 2018 attribute BN's 0.5 pp lower validation error than GN's at batch 32 (23.6 vs "
    "24.1 %, 2 % of the error) to BN's regularization; 2 % of this MLP's ~50 % test error is 1 pp."
)
#: "Like dropout": batch norm narrows the gap by at least this share of dropout p = 0.1's
#: narrowing (BN §3.4: with batch norm, dropout "can be either removed or reduced in
#: strength", so batch norm stands in for at least part of a light dropout).
LIKE_DROPOUT_SHARE = 0.5
#: An arm "fits" the training set at this training accuracy (%, inference mode); below it
#: the gap measures under-fitting as much as over-fitting.
FIT_PERCENT = 99.0
CHANCE_PERCENT = 10.0

# Cost of `full`: the last full run's C3 took 4.5 s a run (1500 steps, old engine); these
# 1600 steps make about 4.8 s, the noise-free arm about 1.4x that (pilot) -> 60 runs, about
# 5.2 CPU-minutes of C3's 6 (one sequential step more, 14 seeds, about 7). Runs are
# unstacked (custom task). The pilots ran at a load of 10-18 on 2 cores, so their own times
# (9-80 s a run) measure the load, not C3.
SEED_PLAN = stats.SeedPlan(
    pilot=4,
    initial=32,
    block=8,
    cap=48,
    why=(
        "two pilots of 4 seeds (1600 steps, 1024 training examples): sd of the per-seed "
        "narrowing of the gap, no norm minus BN, 1.68 pp (1000 test examples) and 1.40 pp "
        "(4000: a larger test set barely helps, so the full run keeps MNIST-1D's 1000). The "
        "target half-width, 0.5 pp (half the 1 pp threshold), needs 33-46 seeds. The arms "
        "train stacked, 8 seeds a block for about the cost of three runs alone (issue 13): "
        "4 blocks (32 seeds) to start, a block more while the decisive check is undecided, "
        "up to 48; the noise-free arm trains one run at a time, with `ALONE_SEEDS`."
    ),
)
#: Seeds of the noise-free arm (trained one run at a time; a secondary comparison).
ALONE_SEEDS = 10

#: profile -> seeds, evaluations (steps = evaluations x interval), interval, data, arms.
PROFILES = {
    "smoke": dict(seeds=(0,), alone_seeds=(0,), evaluations=2, eval_every=4, train_size=256, num_samples=500,
                  arms=(NONE, BN_FIXED, NOISE_FREE)),
    "quick": dict(seeds=(0, 1), alone_seeds=(0, 1), evaluations=5, eval_every=EVAL_EVERY, train_size=TRAIN_SIZE,
                  num_samples=None, arms=(NONE, BN, BN_FIXED)),
    "full": dict(seeds=tuple(range(SEED_PLAN.initial)), alone_seeds=tuple(range(ALONE_SEEDS)),
                 evaluations=EVALUATIONS, eval_every=EVAL_EVERY, train_size=TRAIN_SIZE, num_samples=None,
                 arms=tuple(ARMS)),
}  # fmt: skip

TASK = "c3_overfit"
# Table names (the report prints them; `figures` reads them back).
BY_ARM = "Train accuracy (inference mode), test accuracy and their gap per arm (%, pp)"
CONVERGENCE = "Convergence per arm (plateau of the training loss)"


def grid(profile):
    """The runs of `profile`: arms x seeds."""
    p = PROFILES[check_profile(profile)]
    base = common.mlp_config(
        CLAIM_ID,
        task=TASK,
        activation="relu",
        learning_rate=LEARNING_RATE,
        batch_size=BATCH_SIZE,
        steps_per_epoch=p["eval_every"],
        epochs=p["evaluations"],
        num_samples=p["num_samples"],
    )

    def options(arm):
        fixed = {"fixed_batches": True} if arm in FIXED else {}
        return {"c3/arm": arm, "c3/train_size": p["train_size"], **fixed}

    return concat(*(
        common.arm_grid(base, ARMS, [arm], p["alone_seeds"] if arm == NOISE_FREE else p["seeds"], options)
        for arm in p["arms"]
    ))  # fmt: skip


class PopulationBatchNormalization(kerasnorm.BatchNormalization):
    """Batch norm that normalizes with its stored statistics in training too: set them to
    the training set's exact statistics (`Recalibrate`) and the normalization is that of
    batch norm with the batch noise removed. `gamma` and `beta` still learn; the stored
    statistics take no gradient and no moving-average update."""

    def call(self, inputs, training=None, mask=None):
        return super().call(inputs, training=False, mask=mask)


class Recalibrate(keras.callbacks.Callback):
    """Sets every batch norm's stored mean and variance to the exact (biased) statistics
    of its inputs over `x`, layer by layer (each layer's inputs computed with the layers
    before it already set), before training and after each compiled call of it."""

    def __init__(self, x):
        super().__init__()
        self.x = x
        self._probe = None

    def recalibrate(self):
        layers = common.batch_norm_layers(self.model)
        if self._probe is None:
            self._probe = keras.Model(self.model.input, [layer.input for layer in layers])
        for i, layer in enumerate(layers):
            outputs = self._probe(self.x, training=False)
            # A model with one output returns it bare, not in a list.
            h = np.asarray(outputs[i] if len(layers) > 1 else outputs, dtype=np.float64)
            layer.moving_mean.assign(h.mean(axis=0).astype(np.float32))
            layer.moving_variance.assign(h.var(axis=0).astype(np.float32))

    def on_train_begin(self, logs=None):
        self.recalibrate()

    def on_train_batch_end(self, batch, logs=None):
        self.recalibrate()


def _first_examples(dataset, n):
    """`dataset` with only its first `n` training examples."""
    return dataclasses.replace(dataset, x_train=dataset.x_train[:n], y_train=dataset.y_train[:n])


def _train_examples(config, dataset):
    return _first_examples(dataset, int(config.option("c3/train_size")))


def _count_examples(config, dataset, model, row):
    row["c3/train_examples"] = len(dataset.x_train)
    row["c3/recalibrate_every"] = None  # not recalibrated: only the noise-free arm is


@tasks.register_task(
    TASK,
    stackable=tasks.Stacking(
        dataset=_train_examples,
        eval_train=True,
        finish=_count_examples,
        applies=lambda config: config.option("c3/arm") != NOISE_FREE,
    ),
)
def overfit(config: RunConfig) -> dict:
    """Trains on the first ``c3/train_size`` training examples and logs, besides the
    engine's columns, the training set's accuracy in inference mode after each
    evaluation interval (``train_eval/*``) and the steps between recalibrations
    (``c3/recalibrate_every``: one compiled call). Arm ``batch, no noise`` swaps its batch
    norms for `PopulationBatchNormalization`, kept exact by `Recalibrate`; option
    ``fixed_batches`` (read by the engine) repeats one shuffle every pass."""
    row = training.base_row(config)
    start = time.perf_counter()
    dataset, model = training.prepare(config)
    dataset = _train_examples(config, dataset)
    callbacks = []
    if config.option("c3/arm") == NOISE_FREE:
        population = common.swap_batch_norms(model, lambda cfg, _: PopulationBatchNormalization(**cfg))
        model = common.recompile(config, population, like=model)
        callbacks.append(Recalibrate(dataset.x_train))
    prepare_s = time.perf_counter() - start
    row.update(training.fit_and_log(config, dataset, model, callbacks=callbacks, eval_train=True))
    row["time/build_s"] += prepare_s
    row["c3/train_examples"] = len(dataset.x_train)
    row["c3/recalibrate_every"] = int(model.steps_per_execution)
    return row


def per_run(rows: pandas.DataFrame) -> pandas.DataFrame:
    """One record per run: arm, seed, final train (inference mode) and test accuracy (%),
    their gap (pp) and the plateau of the training loss."""
    runs = pandas.DataFrame({
        "arm": rows["opt/c3/arm"],
        "seed": rows["seed"],
        "train_accuracy": 100.0 * rows["final/train_eval/accuracy"].astype(float),
        "test_accuracy": 100.0 * rows["final/test/accuracy"].astype(float),
        "plateau": rows["train/loss"].map(stats.plateau) if "train/loss" in rows else np.nan,
    })  # fmt: skip
    runs["gap"] = runs["train_accuracy"] - runs["test_accuracy"]
    return runs


def _by_arm(runs, arms):
    records = []
    for arm in arms:
        group = runs[runs["arm"] == arm]
        test = stats.estimate(group["test_accuracy"])
        gap = stats.estimate(group["gap"])
        records.append({
            "arm": arm, "train_accuracy": float(group["train_accuracy"].mean()),
            "test_mean": test.mean, "test_low": test.low, "test_high": test.high,
            "gap_mean": gap.mean, "gap_low": gap.low, "gap_high": gap.high, "n": gap.n,
        })  # fmt: skip
    return pandas.DataFrame.from_records(
        records,
        columns=["arm", "train_accuracy", "test_mean", "test_low", "test_high", "gap_mean", "gap_low", "gap_high", "n"],
    )


def _arm(runs, arm):
    return runs[runs["arm"] == arm]


def _per_seed(runs, value):
    """`value` with a row per seed and a column per arm of `ARMS` (NaN where an arm has no
    such run): arithmetic on its columns pairs the arms by seed (they share initial
    weights and data order), and a missing or diverged run drops out of its pairs only."""
    return runs.pivot(index="seed", columns="arm", values=value).reindex(columns=list(ARMS))


def _blockers(runs, arms, unconverged):
    """Why a comparison of `arms` cannot decide: an arm that has not converged, does not
    fit the training set, or arms whose test accuracies both sit at the ceiling or floor."""
    blockers = [text for arm in arms for text in unconverged.get(arm, [])]
    for arm in arms:
        train = _arm(runs, arm)["train_accuracy"].mean()
        if train < FIT_PERCENT:
            blockers.append(f"does not fit the training set: {arm} (train accuracy {train:.1f} %)")
    tests = [stats.estimate(_arm(runs, arm)["test_accuracy"]) for arm in arms]
    for i, a in enumerate(tests):
        for j in range(i + 1, len(tests)):
            label = f"test accuracy, {arms[i]} vs {arms[j]}"
            blockers.append(stats.ceiling_blocker(a, tests[j], CHANCE_PERCENT, label))
    return tuple(b for b in blockers if b)


def _secondary_checks(gap):
    """The secondary checks as ``(name, arms compared, per-seed effect, threshold, why)``,
    from the per-seed gaps `gap` (`_per_seed`)."""
    narrowing = gap[NONE] - gap[BN]
    return [
        (f"like dropout: BN's narrowing minus {LIKE_DROPOUT_SHARE:g} x dropout p = 0.1's (same seed)",
         (NONE, BN, DROPOUT), narrowing - LIKE_DROPOUT_SHARE * (gap[NONE] - gap[DROPOUT]), 0.0,
         "BN §3.4: with BN, dropout can be reduced, so BN must stand in for part of a light dropout."),
        ("the batch noise carries it: gap of the noise-free BN minus BN's (same seed)",
         (NOISE_FREE, BN), gap[NOISE_FREE] - gap[BN], SLIGHT_PP,
         "the note's mechanism is the mini-batch noise; removing it must lose a 'slight' effect."),
        ("fixed batches cost BN's regularization: gap widening with fixed batches, BN minus no norm (same seed)",
         (BN, BN_FIXED, NONE, NONE_FIXED),
         (gap[BN_FIXED] - gap[BN]) - (gap[NONE_FIXED] - gap[NONE]), SLIGHT_PP,
         "batch-mates that never change make BN's noise a fixed function of the example."),
    ]  # fmt: skip


RULE = (
    "Each check is a per-seed paired difference of the final train-test accuracy gap (pp), "
    "with its 95% interval, against its threshold. Decisive: batch norm narrows the gap "
    f"against no norm by at least {SLIGHT_PP:g} pp (\"slight\"; a narrowing below it is "
    "\"none\"). Secondary: the narrowing is at least "
    f"{LIKE_DROPOUT_SHARE:g} of dropout p = 0.1's (\"like dropout\"); removing the batch noise "
    f"(population statistics) widens the gap by at least {SLIGHT_PP:g} pp; fixed batch "
    f"composition widens batch norm's gap by at least {SLIGHT_PP:g} pp more than no norm's. "
    "A comparison is undecided when an arm in it has not converged or does not fit the "
    f"training set ({FIT_PERCENT:g} % train accuracy)."
)

ANCHOR = (
    "BN paper §3.4 and §4.2.1: with BN, dropout can be reduced or removed. Wu & He "
    "2018: at batch 32, group norm has lower training error but higher validation "
    "error than BN (24.1 vs 23.6 %; BN's batch noise regularizes). Hoffer et al. 2017: "
    "ghost batches improve generalization of large-batch training. Luo et al. 2019: BN's "
    "regularization strength grows roughly as 1/batch size."
)


def analyze(ok: pandas.DataFrame, runs) -> dict:
    """The gap per arm, the convergence of every arm, and the checks of the rule."""
    note = runs.note
    runs = per_run(ok)
    arms = [a for a in ARMS if a in set(runs["arm"])]
    convergence = stats.convergence_table(ok.assign(arm=ok["opt/c3/arm"]), "arm")
    convergence = convergence.set_index("arm").loc[arms].reset_index()
    unconverged = {
        arm: stats.unconverged_arms(ok[ok["opt/c3/arm"] == arm].assign(arm=arm), "arm") for arm in arms
    }

    def check(name, effect, threshold, why, compared, decisive=False):
        return stats.Check(
            name=name, effect=stats.estimate(effect), threshold=threshold, kind="at_least", why=why,
            unit=" pp", decisive=decisive, blockers=_blockers(runs, compared, unconverged),
        )  # fmt: skip

    gap, test = _per_seed(runs, "gap"), _per_seed(runs, "test_accuracy")
    narrowing = gap[NONE] - gap[BN]
    checks = [
        check("BN narrows the train-test gap: gap of no norm minus BN's (same seed)", narrowing,
              SLIGHT_PP, SLIGHT_WHY, [NONE, BN], decisive=True),
    ]  # fmt: skip
    for name, compared, effect, threshold, why in _secondary_checks(gap):
        if all(arm in arms for arm in compared):
            checks.append(check(name, effect, threshold, why, list(compared)))

    evidence = [
        ("narrowing of the train-test gap by BN against no norm (same seed)", stats.estimate(narrowing), " pp"),
        ("test accuracy of BN minus no norm (same seed)", stats.estimate(test[BN] - test[NONE]), " pp"),
    ]  # fmt: skip
    for fixed, shuffled in FIXED.items():
        if fixed in arms and shuffled in arms:
            evidence.append((
                f"test accuracy with fixed batches minus reshuffled, {shuffled} (same seed)",
                stats.estimate(test[fixed] - test[shuffled]), " pp",
            ))  # fmt: skip
    evidence += [(f"train-test gap, {arm}", stats.estimate(_arm(runs, arm)["gap"]), " pp") for arm in arms]
    evidence += [(f"test accuracy, {arm}", stats.estimate(_arm(runs, arm)["test_accuracy"]), " %") for arm in arms]

    test_means = runs.groupby("arm")["test_accuracy"].mean()
    train_means = runs.groupby("arm")["train_accuracy"].mean()
    caveats = [
        f"Convergence: the plateau of the training loss (share of its decrease in the last fifth "
        f"of training) is at most {stats.PLATEAU_THRESHOLD:g} in "
        f"{int(convergence['converged'].sum())} of {int((convergence['runs'] - convergence['diverged']).sum())} "
        f"runs that did not diverge (worst arm median {convergence['median_plateau'].max():.3f}); an arm "
        "where fewer than half the runs converged blocks the checks it is in.",
        f"Ceiling and floor: the arms' test accuracies lie between {test_means.min():.1f} and "
        f"{test_means.max():.1f} %, against 100 % and chance ({CHANCE_PERCENT:g} %); their training "
        f"accuracies between {train_means.min():.1f} and {train_means.max():.1f} %: the design wants "
        "them at 100 % (an MLP that fits its training set, so the gap measures over-fitting), "
        f"and an arm below {FIT_PERCENT:g} % blocks the checks it is in.",
        "The gap is measured once, after the last step; train accuracy is evaluated in "
        "inference mode (moving averages for the batch-norm arms, exact population "
        "statistics for the noise-free one, no dropout), over the training examples used.",
        "The noise-free arm also drops the gradient through the batch statistics (they are "
        "constants between recalibrations), which is part of how batch norm changes "
        "optimization, not only its noise; its statistics lag the weights by at most one "
        f"compiled call ({_recalibrate_every(ok)} steps).",
        "One learning rate for all arms (chosen for the unnormalized network to fit the "
        "training set); batch norm and dropout change the effective step size, so a gap "
        "difference mixes regularization with how far each arm got in the same budget.",
        "Arms dropped after the pilots, for convergence and power: ghost batch norm over 4 "
        "examples did not fit the training set (68 % train accuracy, plateau 0.10), so its gap "
        "would measure under-fitting; over 16 it fitted but levelled off just too late (plateau "
        "up to 0.053) and would have cost the seeds the decisive check needs (C4b studies ghost "
        "batches); dropout 0.3 went for the budget (p = 0.1 is the yardstick of 'like dropout'). "
        "So Luo et al.'s 1/batch-size trend is not tested here; the fixed-batch arms probe the "
        "same mechanism, the noise of changing batch-mates.",
    ]
    if note:
        caveats.insert(0, note)
    steps = int(ok["epochs"].iloc[0] * ok["epoch_steps"].iloc[0])
    train_examples = int(ok["c3/train_examples"].iloc[0])
    setup = (
        f"MNIST-1D, the first {train_examples} training examples ({common.data_words(ok)} in "
        "the full split; the test split is used whole); MLP with three hidden layers of 100 "
        "ReLU units (linear -> norm -> activation, dropout after each hidden activation); "
        f"SGD with momentum 0.9, learning rate {LEARNING_RATE:g}, batch {BATCH_SIZE}, {steps} "
        f"steps; arms (names contain commas, so separated by semicolons): {'; '.join(arms)}; seeds per arm: {runs['seed'].nunique()} (plan: "
        f"{SEED_PLAN.initial}, +{SEED_PLAN.block} up to {SEED_PLAN.cap}). The noise-free arm normalizes with the exact "
        "statistics of the whole training set under the current weights, recomputed every "
        f"{_recalibrate_every(ok)} steps, so an example's output never depends on its "
        "batch-mates. Fixed batches: the training set shuffled once with the run's seed and "
        "the same batches repeated every pass, as Keras 3's NumPy-array input does once "
        "`keras.utils.set_random_seed` has been called (seen with Keras 3.15.1, TensorFlow 2.21)."
    )
    return dict(
        checks=checks,
        convergence=convergence,
        evidence=evidence,
        setup=setup,
        caveats=caveats,
        tables={BY_ARM: _by_arm(runs, arms), CONVERGENCE: convergence},
        figures={
            "fig-c3-gap": (
                "Left: train-test accuracy gap after training, per arm (pp). Right: test accuracy "
                f"(%). Mean and {stats.INTERVAL}."
            )
        },
    )


def _recalibrate_every(rows):
    """The noise-free arm's recalibration interval (steps per compiled call), or None
    without that arm."""
    every = rows.loc[rows["opt/c3/arm"] == NOISE_FREE, "c3/recalibrate_every"] if "opt/c3/arm" in rows else []
    return int(every.iloc[0]) if len(every) else None


def figures(analysis, out_dir):
    """fig-c3-gap, from the analysis' table."""
    if not analysis["tables"]:  # no run finished: nothing to draw
        return []
    table = pandas.DataFrame.from_records(analysis["tables"][BY_ARM])
    fig, (left, right) = plots.new_axes(ncols=2)
    colors = [COLORS[arm] for arm in table["arm"]]
    plots.interval_bars(list(table["arm"]), table["gap_mean"], table["gap_low"], table["gap_high"], ax=left, colors=colors)
    left.set_ylabel("train - test accuracy (pp)")
    left.set_title("generalization gap")
    plots.interval_bars(list(table["arm"]), table["test_mean"], table["test_low"], table["test_high"], ax=right, colors=colors)
    right.set_ylabel("test accuracy (%)")
    right.set_title("test accuracy")
    plotted = table[["arm", "gap_mean", "gap_low", "gap_high", "test_mean", "test_low", "test_high", "n"]]
    return plots.save_figure(fig, "fig-c3-gap", out_dir, plotted)


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
