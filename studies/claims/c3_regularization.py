"""C3: "BN has a slight regularization effect, like dropout" (BN §3.4; Hoffer et al. 2017;
Luo et al. 2019).

An MLP that over-fits: 1000 MNIST-1D training examples, trained until it fits them. The
measure is the generalization gap, the accuracy on the training set (inference mode,
after training) minus the test accuracy. The arms separate the parts of batch norm:

- no norm, and dropout at p = 0.1 and 0.3 (the regularizer the claim compares with);
- batch norm over the whole mini-batch of 64, and ghost batch norm over groups of 16 and
  4 of its examples: the same normalization with noisier statistics (Luo et al.: the
  regularization grows as the batch shrinks);
- batch norm *without the noise*: every layer is normalized with the exact statistics of
  the whole training set under the current weights, recomputed after every compiled call
  of the training loop (every 25 steps here), never with a batch's own
  (`PopulationBatchNormalization`). The normalization and its learned scale and offset
  stay; what goes is the dependence of an example's output on its batch-mates.

The runs use the task ``c3_overfit``, which trains on the first `TRAIN_SIZE` examples of the
training split and, for the noise-free arm, swaps in the layer and keeps its statistics
exact (`Recalibrate`).
"""

from __future__ import annotations

import dataclasses
import time

import keras
import numpy as np
import pandas

import kerasnorm
from studies import plots, stats, training
from studies.claims import _mlp_common as common
from studies.claims import check_profile
from studies.training import RunConfig

CLAIM_ID = "C3"
TITLE = "BN has a slight regularization effect, like dropout"

# --- The grid (full profile; `PROFILES` shrinks it) ---------------------------------------
TRAIN_SIZE = 1000  # training examples kept (the test split keeps all of MNIST-1D's 1000)
BATCH_SIZE = 64  # examples per step; batch norm's "full batch"
LEARNING_RATE = 0.05  # SGD, momentum 0.9
EVAL_EVERY = 75  # optimizer steps between evaluations (75 x 64 = 4.8 passes)
#: arm -> the RunConfig fields that make it (all others shared).
ARMS = {
    "none": dict(norm="none"),
    "dropout 0.1": dict(norm="none", dropout=0.1),
    "dropout 0.3": dict(norm="none", dropout=0.3),
    "batch 64": dict(norm="batch"),
    "ghost 16": dict(norm="ghost", virtual_batch_size=16),
    "ghost 4": dict(norm="ghost", virtual_batch_size=4),
    "batch, no noise": dict(norm="batch"),  # population statistics, see the module docstring
}
NOISE_FREE = "batch, no noise"
#: Examples per normalization group of each batch-norm arm (the x of the ghost trend).
GROUP_SIZE = {"batch 64": BATCH_SIZE, "ghost 16": 16, "ghost 4": 4}
DROPOUT_ARMS = ("dropout 0.1", "dropout 0.3")
#: One colour per arm (Okabe & Ito), the same in every profile.
COLORS = dict(zip(ARMS, [plots.OKABE_ITO[i] for i in (7, 4, 3, 0, 5, 2, 1)]))
#: profile -> seeds, evaluations (steps = evaluations x interval), interval, data, arms.
PROFILES = {
    "smoke": dict(seeds=(0,), evaluations=1, eval_every=4, train_size=256, num_samples=500,
                  arms=("none", "ghost 4", NOISE_FREE)),
    "quick": dict(seeds=(0, 1), evaluations=5, eval_every=EVAL_EVERY, train_size=TRAIN_SIZE,
                  num_samples=None, arms=("none", "batch 64", "ghost 4", NOISE_FREE)),
    "full": dict(seeds=tuple(range(8)), evaluations=20, eval_every=EVAL_EVERY,
                 train_size=TRAIN_SIZE, num_samples=None, arms=tuple(ARMS)),
}  # fmt: skip

TASK = "c3_overfit"
# Table names (the report prints them; `figures` reads them back).
BY_ARM = "Train accuracy (inference mode), test accuracy and their gap per arm"


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
    options = lambda arm: {"c3/arm": arm, "c3/train_size": p["train_size"]}  # noqa: E731
    return common.arm_grid(base, ARMS, p["arms"], p["seeds"], options)


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


@training.register_task(TASK)
def overfit(config: RunConfig) -> dict:
    """Trains on the first ``c3/train_size`` training examples and logs, besides the
    engine's columns, the training set's accuracy in inference mode after each
    evaluation interval (``train_eval/*``). Arm ``batch, no noise`` swaps its batch norms
    for `PopulationBatchNormalization`, kept exact by `Recalibrate`."""
    row = training.base_row(config)
    start = time.perf_counter()
    dataset, model = training.prepare(config)
    dataset = _first_examples(dataset, int(config.option("c3/train_size")))
    callbacks = []
    if config.option("c3/arm") == NOISE_FREE:
        population = common.swap_batch_norms(model, lambda cfg, _: PopulationBatchNormalization(**cfg))
        model = common.recompile(config, population, like=model)
        callbacks.append(Recalibrate(dataset.x_train))
    prepare_s = time.perf_counter() - start
    row.update(training.fit_and_log(config, dataset, model, callbacks=callbacks, eval_train=True))
    row["time/build_s"] += prepare_s
    row["c3/train_examples"] = len(dataset.x_train)
    return row


def per_run(rows: pandas.DataFrame) -> pandas.DataFrame:
    """One record per run: arm, seed, final train (inference mode) and test accuracy, gap."""
    runs = pandas.DataFrame({
        "arm": rows["opt/c3/arm"],
        "seed": rows["seed"],
        "train_accuracy": rows["final/train_eval/accuracy"].astype(float),
        "test_accuracy": rows["final/test/accuracy"].astype(float),
    })  # fmt: skip
    runs["gap"] = runs["train_accuracy"] - runs["test_accuracy"]
    return runs


def _by_arm(runs):
    records = []
    for arm in [a for a in ARMS if a in set(runs["arm"])]:
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


def _overlaps(a: stats.Estimate, low, high):
    return a.n >= 2 and a.low <= high and a.high >= low


RULE = (
    "Four conditions, each on the final train-test accuracy gap with 95% intervals "
    "over seeds (\"clearly\": intervals separated): batch norm shrinks the gap "
    "against no norm; smaller ghost batches shrink it further; the noise-free arm "
    "loses most of the effect; the effect is comparable to dropout's. Supported if "
    "all hold, partly supported if some, not supported if none."
)

ANCHOR = (
    "BN paper §3.4 and §4.2.1: with BN, dropout can be reduced or removed. Wu & He "
    "2018: at batch 32, group norm has lower training error but higher validation "
    "error than BN (BN's batch noise regularizes). Hoffer et al. 2017: ghost batches "
    "improve generalization of large-batch training. Luo et al. 2019: BN's "
    "regularization strength grows roughly as 1/batch size."
)


def analyze(rows: pandas.DataFrame) -> dict:
    """The gap per arm and the four conditions of the rule."""
    ok, note = common.usable_rows(rows)
    if not len(ok):
        return common.no_runs(CLAIM_ID, TITLE, RULE, ANCHOR, note)
    runs = per_run(ok)
    gap = {arm: stats.estimate(runs.loc[runs["arm"] == arm, "gap"]) for arm in ARMS}

    regularizes = stats.clearly_greater(gap["none"], gap["batch 64"])
    ghost_means = [gap[a].mean for a in ("batch 64", "ghost 16", "ghost 4")]
    ghost_trend = (
        all(np.isfinite(ghost_means)) and ghost_means[0] > ghost_means[1] > ghost_means[2]
        and stats.clearly_greater(gap["batch 64"], gap["ghost 4"])
    )  # fmt: skip
    reduction = gap["none"].mean - gap["batch 64"].mean
    kept = (gap["none"].mean - gap[NOISE_FREE].mean) / reduction if reduction > 0 else float("nan")
    noise_matters = stats.clearly_greater(gap[NOISE_FREE], gap["batch 64"]) and bool(kept < 0.5)
    dropout = [gap[a] for a in DROPOUT_ARMS if gap[a].n >= 2]
    like_dropout = bool(dropout) and _overlaps(
        gap["batch 64"], min(d.low for d in dropout), max(d.high for d in dropout)
    )
    parts = {
        "batch norm (statistics over the batch of 64) leaves a clearly smaller train-test gap than no norm": regularizes,
        "smaller ghost batches shrink the gap: it falls from 64 to 16 to 4 examples per "
        "group (means), and is clearly smaller at 4 than at 64": ghost_trend,
        "removing the batch noise (population statistics) loses most of the effect: its gap "
        "is clearly larger than batch norm's and keeps less than half of batch norm's "
        "reduction of the gap": noise_matters,
        "the effect is comparable to dropout's: batch norm's gap interval overlaps the span "
        "of the dropout arms' intervals (p = 0.1, 0.3)": like_dropout,
    }
    table = _by_arm(runs)
    # Batch norm first: the report's summary quotes the first number.
    order = ["batch 64"] + [arm for arm in ARMS if arm != "batch 64"]
    evidence = [(f"train-test accuracy gap (fraction), {arm}", gap[arm], "") for arm in order if gap[arm].n]
    caveats = [
        "The gap is measured once, after the last step; train accuracy is evaluated in "
        "inference mode (moving averages for the batch-norm arms, exact population "
        "statistics for the noise-free one, no dropout), over the training examples used.",
        "The noise-free arm also drops the gradient through the batch statistics (they are "
        "constants between recalibrations), which is part of how batch norm changes "
        "optimization, not only its noise; its statistics lag the weights by at most one "
        "compiled call (25 steps).",
        "One learning rate for all arms (chosen for the unnormalized network to fit the "
        "training set); batch norm and dropout change the effective step size, so a gap "
        "difference mixes regularization with how far each arm got in the same budget.",
    ]
    if note:
        caveats.insert(0, note)
    if gap["none"].n and gap["batch 64"].n and gap[NOISE_FREE].n:
        caveats.append(
            f"Against no norm, batch norm narrows the gap by {reduction:+.3f} and the noise-free "
            f"arm by {gap['none'].mean - gap[NOISE_FREE].mean:+.3f} (differences of means)."
        )
    steps = int(ok["epochs"].iloc[0] * ok["epoch_steps"].iloc[0]) if len(ok) else 0
    train_examples = int(ok["c3/train_examples"].iloc[0]) if len(ok) else 0
    setup = (
        f"MNIST-1D, the first {train_examples} training examples ({common.data_words(ok)} in "
        "the full split; the test split is used whole); MLP with three hidden layers of 100 "
        "ReLU units (linear -> norm -> activation, dropout after each hidden activation); "
        f"SGD with momentum 0.9, learning rate {LEARNING_RATE:g}, batch {BATCH_SIZE}, {steps} "
        f"steps; arms {', '.join(a for a in ARMS if gap[a].n)}; seeds per arm: "
        f"{runs['seed'].nunique()}. Ghost batch norm normalizes each group of 16 or 4 "
        "examples of the batch with the group's statistics (kerasnorm "
        "`virtual_batch_size`). The noise-free arm normalizes with the exact statistics of "
        "the whole training set under the current weights, recomputed every 25 steps "
        "(inference-mode batch norm whose stored statistics are reset to the population's), "
        "so an example's output never depends on its batch-mates."
    )
    return stats.make_analysis(
        claim=CLAIM_ID,
        title=TITLE,
        verdict=stats.verdict_from(parts),
        rule=RULE,
        parts=parts,
        evidence=evidence,
        anchor=ANCHOR,
        setup=setup,
        caveats=caveats,
        tables={BY_ARM: table},
        figures={
            "fig-c3-gap": (
                "Left: train-test accuracy gap after training, per arm. Right: test accuracy. "
                f"Mean and {stats.INTERVAL}."
            )
        },
    )


def figures(analysis, out_dir):
    """fig-c3-gap, from the analysis' table."""
    if not analysis["tables"]:  # no run finished: nothing to draw
        return []
    table = pandas.DataFrame.from_records(analysis["tables"][BY_ARM])
    fig, (left, right) = plots.new_axes(ncols=2)
    colors = [COLORS[arm] for arm in table["arm"]]
    plots.interval_bars(list(table["arm"]), table["gap_mean"], table["gap_low"], table["gap_high"], ax=left, colors=colors)
    left.set_ylabel("train - test accuracy (fraction)")
    left.set_title("generalization gap")
    plots.interval_bars(list(table["arm"]), table["test_mean"], table["test_low"], table["test_high"], ax=right, colors=colors)
    right.set_ylabel("test accuracy (fraction)")
    right.set_title("test accuracy")
    plotted = table[["arm", "gap_mean", "gap_low", "gap_high", "test_mean", "test_low", "test_high", "n"]]
    return plots.save_figure(fig, "fig-c3-gap", out_dir, plotted)
