"""C5: batch norm does not suit recurrent networks, whose input length varies.

An LSTM with the norm inside the recurrence (`studies.engine.models`: Keras's `LSTMCell`,
kerasnorm's `BatchNormLSTMCell` with per-step or shared statistics, `LayerNormLSTMCell`)
is trained on the keyed sequence task (`studies.engine.data.sequences` with ``rule="keyed"``: the
first token names one of two marker groups, the label is that group's most frequent
marker, every token blurred by Gaussian noise), padded and masked, on lengths up to T and
tested on lengths up to 4T. The task ``c5_length_buckets`` trains as the engine does and
then (`measure`, its `studies.engine.tasks.Stacking` finish hook, so that the engine may
train the seeds of an arm as the members of one stacked model) scores the test set by
sequence length: within the training lengths (<= T), beyond them ((T, 2T], (2T, 4T]). For
per-step BN it scores a second time after re-estimating the statistics of the steps
beyond T on unlabeled long sequences (`recalibrated_beyond_T`): the arm that isolates the
mechanism the note names, statistics missing beyond T.

The task replaced the plain majority task of earlier runs, where every arm
scored 98-100 % within the training lengths: at that ceiling the per-step and the shared
BN arms could not differ. The key carried from the first step to the last is the longer
dependency, and the token noise keeps room below 100 % for a model that has learned the
rule (two pilot seeds: LN 90-91 %, per-step BN 87 %, shared-statistics BN 62-66 % within
T; chance 25 %).
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pandas

from studies.claims import Claim, check_profile
from studies.claims._sequence_common import train_keeping_model
from studies.engine import data, models, tasks, training
from studies.engine.config import DATA_PREFIX, RunConfig, concat
from studies.engine.config import grid as product
from studies.report import plots, stats

CLAIM_ID = "C5"
TITLE = "BN is not suitable for RNNs because the input size varies"
TASK = "c5_length_buckets"

# ---------------------------------------------------------------------------------------
# The checks (fixed before the full run).

#: Check (1) compares accuracies in percentage points, paired by seed, against 3 pp: the
#: study's size of an accuracy difference that matters (C4's threshold too). The anchors
#: are qualitative (Ba et al. 2016 say per-step BN is needed and breaks past T_max; no
#: paper gives a size), so the threshold is a practical one: less would be lost in the
#: seed-to-seed spread of a single model; more would dismiss a handicap users notice.
WORKAROUND_PP = 3.0
#: Checks (2) and (3) compare *relative* drops (`relative_drop`: the share of the accuracy
#: above chance within T that is lost beyond T, in %), so that arms starting from different
#: accuracies within T are compared on a common footing (the last run: LN 90.4 %, per-step
#: BN 86.3 % within T). 5 points of that share is the 3 pp above at the last run's
#: accuracy above chance within T (about 62 pp: 3 / 62 = 4.8 %).
DEGRADATION_PCT = 5.0
MECHANISM_PCT = 5.0
#: The earlier rule's threshold on the absolute drop, kept for the sensitivity table.
DEGRADATION_PP = 3.0
CHANCE_PCT = 25.0  # 4 balanced classes
REAL_CHANCE_PCT = 100.0 / 9  # 9 speakers
#: Sized from the last full run (5 seeds an arm, every arm converged; 33-59 CPU-s a run
#: alone, median 51). Check (1), per-step minus shared-statistics BN within T: 20.0 pp,
#: sd 3.4 pp (far above its 3 pp: any n decides it). Check (2) on relative drops, per-step
#: BN's minus LN's: 5.8, sd 2.5 (per seed 2.3, 4.6, 7.2, 8.7, 6.2): a half-width of 2.5
#: (half the threshold) needs 6 seeds (`stats.seeds_needed`), 8 give 2.1, 16 give 1.3; an
#: effect this close to its threshold may still straddle it at 8, hence one more block.
#: Seeds come in stacked blocks of 8 (one stacked model of 8 members an arm).
#:
#: Cost (full profile), assuming the engine's stacking makes a block of 8 LSTM seeds cost
#: about 2.5 runs alone (the 2-3x of the feed-forward blocks; not yet measured for the
#: LSTM): synthetic 3 arms x 2.5 x 51 s = 6.4 CPU-min, vowels 3 arms x 2.5 x 27 s (the
#: pilot's 40 s a run at 60 epochs, scaled to 40) = 3.4 CPU-min: 9.8 CPU-min for the
#: initial block, about as much again for the block the plan may add (cap 16). The
#: re-estimation beyond T (per-step BN only) is one eager inference pass over 8000
#: sequences, a few seconds a seed. Run alone (stacking not wired) the initial seeds cost
#: 8 x (3 x 51 + 3 x 27) s = 31 CPU-min. Timings on this shared 2-core machine are 2-3x
#: pessimistic.
SEED_PLAN = stats.SeedPlan(
    pilot=5, initial=8, block=8, cap=16,
    why="last full run (5 seeds an arm): sd of the paired differences 3.4 pp (check 1, effect 20 pp) and 2.5 "
        "(check 2, relative drops, effect 5.8 against 5): 6 seeds for a half-width of half the threshold; one "
        "stacked block of 8, the sequential plan adds a block of 8 up to 16 (about 2.5 runs' time a block, "
        "51 CPU-s a run alone)",
)  # fmt: skip

# ---------------------------------------------------------------------------------------
# The grid.

TRAIN_LEN = 20  # T: the longest training sequence (tokens); BN keeps statistics for T steps
TEST_LEN = 4 * TRAIN_LEN  # the longest test sequence
#: Deviation of the Gaussian noise on every component of a real step's one-hot token (12
#: components). 0.6 left every arm near chance in a pilot, 0.3 left LN at 82 % within T.
TOKEN_NOISE = 0.3
#: Passes over 16000 training sequences (125 steps each). In a pilot at 8 passes per-step
#: BN had levelled off (plateau 0.044) and LN nearly (0.065, the threshold is 0.05); at 10
#: every arm had (0.025-0.038). With 4000 sequences LN kept fitting its training set past
#: 12 passes.
EPOCHS = 10
PROFILES = {
    # seeds; passes over the training set; num_samples (80% train); test sequences
    "smoke": dict(seeds=(0,), epochs=1, num_samples=300, test_samples=100),
    "quick": dict(seeds=(0, 1), epochs=3, num_samples=3000, test_samples=1000),
    "full": dict(seeds=tuple(range(SEED_PLAN.initial)), epochs=EPOCHS, num_samples=20000, test_samples=4000),
}
BASE = RunConfig(
    claim=CLAIM_ID,
    task=TASK,
    dataset="sequences",
    model="rnn",
    cell="lstm",
    widths=(32,),  # LSTM units
    optimizer="adam",
    learning_rate=0.003,
    # 128 sequences per batch: the RNN's cost is mostly per step, so four times the batch
    # costs little more per step and sees four times the data (measured in the pilot).
    batch_size=128,
)
DATA_OPTIONS = {
    "data.max_train_len": TRAIN_LEN,
    "data.max_test_len": TEST_LEN,
    "data.rule": "keyed",
    "data.token_noise": TOKEN_NOISE,
}
#: Arms: label -> (norm, model options).
ARMS = {
    "LSTM, no norm": ("none", {}),
    "BN, statistics shared over time": ("batch", {"model.share_statistics": True}),
    "BN, per-step statistics (T reused beyond)": ("batch", {}),
    "LN": ("layer", {}),
}
#: The arms the rule compares; the quick and full profiles run only these (the LSTM without
#: norm, a reference outside the rule, costs a quarter of the budget that buys seeds).
RULE_ARMS = ("BN, statistics shared over time", "BN, per-step statistics (T reused beyond)", "LN")
SMOKE_ARMS = ("BN, per-step statistics (T reused beyond)", "LN")
BUCKET_LABELS = {"le_T": "<= T", "T_2T": "(T, 2T]", "2T_4T": "(2T, 4T]", "gt_T": "> T"}
#: Width of the length bins of the accuracy-by-length curve, in tokens (frames for the vowels).
LENGTH_BIN = 10
REAL_LENGTH_BIN = 2

#: The real-data task: JapaneseVowels (`studies.engine.real_data.japanese_vowels`; which of
#: 9 speakers said /ae/, 12 LPC coefficients a frame) split by length: train on the
#: utterances of at most REAL_T frames, test on the longer ones (16 to 29 frames: up to
#: about 2T). T = 15 is the middle of the allowed 13..16 and keeps at least 5 utterances of
#: every speaker on each side (344 train, 296 test). The test split holds no utterance
#: within T, so the real task measures accuracy beyond T only (see the real checks).
REAL_T = 15
#: Passes over the 344 training utterances (10 steps each at batch 32). A one-seed pilot at
#: 60 passes had every arm's loss level off (plateau 0.001-0.007, the threshold 0.05; 32-53
#: CPU-s a run); 40 keep the claim within its budget, and the convergence rule shows it
#: should that be too few.
REAL_EPOCHS = 40
REAL_BASE = dataclasses.replace(BASE, dataset="vowels", num_samples=None, batch_size=32, epochs=REAL_EPOCHS)
REAL_OPTIONS = {"data.max_train_length": REAL_T}
REAL_PROFILES = {"smoke": (), "quick": (0,), "full": tuple(range(SEED_PLAN.initial))}


def grid(profile) -> list[RunConfig]:
    """The runs of `profile`: the arms of `RULE_ARMS` (smoke: `SMOKE_ARMS`; `ARMS` also
    names the LSTM without norm, for runs of one's own) x seeds, every arm on the same
    seeds (the same data order), so that the checks compare arms seed by seed; and (quick,
    full) the same arms on the vowels (`REAL_PROFILES` seeds)."""
    p = PROFILES[check_profile(profile)]
    base = dataclasses.replace(BASE, epochs=p["epochs"], num_samples=p["num_samples"])
    data_options = {**DATA_OPTIONS, "data.test_samples": p["test_samples"]}
    arms = {"smoke": SMOKE_ARMS, "quick": RULE_ARMS, "full": RULE_ARMS}[profile]
    runs = []
    for label in arms:
        norm, options = ARMS[label]
        runs.append(product(base, norm=[norm], options=[{**data_options, **options}], seed=list(p["seeds"])))
    real_seeds = list(REAL_PROFILES[profile])
    for label in RULE_ARMS if real_seeds else ():
        norm, options = ARMS[label]
        runs.append(product(REAL_BASE, norm=[norm], options=[{**REAL_OPTIONS, **options}], seed=real_seeds))
    return concat(*runs)


# ---------------------------------------------------------------------------------------
# The measurement.


def buckets(train_len=TRAIN_LEN):
    """Test-length buckets for training lengths up to `train_len`: column suffix ->
    (shortest, longest) length (`BUCKETS` for the synthetic task's T)."""
    return {
        "le_T": (1, train_len),
        "T_2T": (train_len + 1, 2 * train_len),
        "2T_4T": (2 * train_len + 1, 4 * train_len),
        "gt_T": (train_len + 1, 4 * train_len),
    }


#: Test-length buckets of the synthetic task: column suffix -> (shortest, longest) length, in tokens.
BUCKETS = buckets()


def accuracy_by_length(correct, lengths, train_len=TRAIN_LEN, length_bin=LENGTH_BIN) -> dict:
    """Row columns from per-sample correctness and sequence lengths: ``c5/accuracy_<bucket>``
    and ``c5/count_<bucket>`` for each of `buckets` (NaN for an empty bucket),
    ``c5/accuracy_by_length`` (per bin of `length_bin` steps up to 4 x `train_len`, NaN
    for an empty bin) and ``c5/length_bin_upper`` (the bins' longest lengths)."""
    correct, lengths = np.asarray(correct, bool), np.asarray(lengths)
    row = {}
    for name, (low, high) in buckets(train_len).items():
        inside = (lengths >= low) & (lengths <= high)
        row[f"c5/accuracy_{name}"] = float(correct[inside].mean()) if inside.any() else float("nan")
        row[f"c5/count_{name}"] = int(inside.sum())
    uppers = list(range(length_bin, 4 * train_len + 1, length_bin))
    row["c5/accuracy_by_length"] = [
        float(correct[(lengths > u - length_bin) & (lengths <= u)].mean())
        if ((lengths > u - length_bin) & (lengths <= u)).any()
        else float("nan")
        for u in uppers
    ]
    row["c5/length_bin_upper"] = uppers
    return row


#: Unlabeled sequences of lengths up to 4T whose statistics replace the reused step-T
#: statistics beyond T, drawn from the task's distribution with another data seed (not the
#: test set): the oracle that has the statistics the note says BN lacks.
POOL_SEQUENCES = 8000
#: Smaller profiles draw this many per test sequence instead, up to `POOL_SEQUENCES`.
POOL_PER_TEST_SEQUENCE = 2
#: A step beyond T whose statistics would come from fewer running sequences than this
#: keeps the statistics of the step before it (Cooijmans et al.'s reuse, from the last
#: well-estimated step): with lengths uniform over 5..4T, 8000 sequences leave about 100
#: at step 4T; the vowels' 296 long test utterances thin out to a handful at 29 frames.
POOL_MIN_RUNNING = 50
#: Offset of the pool's data seed from the task's (``data.seed``, default 0).
POOL_SEED_OFFSET = 1000


def unlabeled_pool(config: RunConfig, dataset):
    """Inputs ``(x, mask)`` of unlabeled sequences as long as the test set's: on the
    synthetic task `POOL_SEQUENCES` (or `POOL_PER_TEST_SEQUENCE` per test sequence, if
    fewer) from its generator with a data seed of their own
    (`POOL_SEED_OFFSET`); on the vowels, which have no other long utterances, the test
    inputs themselves (without their labels: a transductive oracle)."""
    if config.dataset != "sequences":
        return training.inputs(dataset, "test")
    options = config.prefixed_options(DATA_PREFIX)
    size = min(POOL_SEQUENCES, POOL_PER_TEST_SEQUENCE * len(dataset.x_test))
    options.update(seed=int(options.get("seed", 0)) + POOL_SEED_OFFSET, test_samples=size)
    pool = data.sequences(num_samples=10, **options)
    if pool.x_test.shape[1] != dataset.x_test.shape[1]:
        raise ValueError(f"The pool's sequences must be as long as the test set's. Received: {pool.x_test.shape}")
    return pool.x_test, pool.mask_test


def recalibrated_beyond_T(config: RunConfig, dataset, model, pool):
    """A copy of `model` (per-step BN, statistics for steps 1..T) with statistics of its own
    for every step up to the test length: steps 1..T keep the trained moving statistics;
    each step beyond T takes the statistics of its inputs over the unlabeled `pool`, as the
    inference network computes them (`_estimating_beyond`): one inference pass over the
    pool in which step t's statistics are estimated, stored and used before step t + 1 is
    computed, so every step's inputs come from the network with the statistics it will
    use. Nothing else changes: the weights are copied."""
    arguments = training.model_arguments(config, dataset)
    arguments["max_steps"] = dataset.x_test.shape[1]
    oracle = models.build_model(config.model, dataset.input_shape, dataset.num_classes, config.norm, **arguments)
    oracle(tuple(a[:1] for a in pool), training=False)
    trained_steps = model.get_layer("rnn").cell.max_steps
    for source, target in zip(model.weights, oracle.weights):
        value = keras.ops.convert_to_numpy(source)
        if tuple(source.shape) != tuple(target.shape):  # a moving statistic: (T, features) -> (4T, features)
            value = np.concatenate([value, keras.ops.convert_to_numpy(target)[trained_steps:]])
        target.assign(value)
    cell = oracle.get_layer("rnn").cell
    object.__setattr__(cell, "_batch_norm", _estimating_beyond(cell, trained_steps, POOL_MIN_RUNNING))
    try:
        oracle(pool, training=False)  # eager: the recurrence runs step by step in Python
    finally:
        object.__delattr__(cell, "_batch_norm")
    return oracle


def _estimating_beyond(cell, first, min_running):
    """`kerasnorm.BatchNormLSTMCell._batch_norm` in inference that first sets the moving
    statistics of its step (rows `first` and later) to the mean and variance of its inputs
    over the sequences still running there, or, with fewer than `min_running` of them, to
    the statistics of the step before. Sequences are padded after their ends, so the
    running ones share the step index, the largest in the batch."""
    normalize = cell._batch_norm

    def estimate_then_normalize(x, which, gamma, beta, step, valid, training):
        index = int(np.max(keras.ops.convert_to_numpy(step)))
        keep = np.ones(x.shape[0], bool) if valid is None else keras.ops.convert_to_numpy(valid).astype(bool)
        if index >= first:
            values = keras.ops.convert_to_numpy(x).astype(np.float64)[keep]
            for stat, reduce in (("mean", np.mean), ("variance", np.var)):
                variable = getattr(cell, f"{which}_moving_{stat}")
                table = keras.ops.convert_to_numpy(variable).copy()
                table[index] = reduce(values, axis=0) if len(values) >= min_running else table[index - 1]
                variable.assign(table)
        return normalize(x, which, gamma, beta, step, valid, training)

    return estimate_then_normalize


def _test_accuracy_columns(model, dataset, diverged):
    logits = model.predict(training.inputs(dataset, "test"), batch_size=training.EVAL_BATCH_SIZE, verbose=0)
    correct = np.argmax(logits, axis=-1) == dataset.y_test
    train_len = dataset.x_train.shape[1]
    length_bin = LENGTH_BIN if train_len == TRAIN_LEN else REAL_LENGTH_BIN
    columns = accuracy_by_length(correct, dataset.mask_test.sum(axis=1), train_len, length_bin)
    if diverged:
        columns = {k: (float("nan") if k.startswith("c5/accuracy_") else v) for k, v in columns.items()}
        columns["c5/accuracy_by_length"] = [float("nan")] * len(columns["c5/length_bin_upper"])
    return columns


def measure(config: RunConfig, dataset, model, row) -> None:
    """Adds to a trained model's row its test accuracy by sequence length
    (`accuracy_by_length`; NaN for a run that diverged) and, for per-step BN, the same
    after `recalibrated_beyond_T` (columns ``c5/recalibrated/...``)."""
    row.update(_test_accuracy_columns(model, dataset, row["diverged"]))
    if config.norm == "batch" and not config.option("model.share_statistics", False):
        if row["diverged"]:
            oracle = model
        else:
            oracle = recalibrated_beyond_T(config, dataset, model, unlabeled_pool(config, dataset))
        columns = _test_accuracy_columns(oracle, dataset, row["diverged"])
        columns = {k.replace("c5/", "c5/recalibrated/", 1): v for k, v in columns.items() if k.startswith("c5/accuracy")}
        row.update(columns)


@tasks.register_task(TASK, stackable=tasks.Stacking(finish=measure))
def length_buckets_task(config: RunConfig) -> dict:
    """The engine's training run, then `measure`. The engine trains an arm's seeds stacked,
    as the members of one model, where it can, and calls `measure` on each member's
    trained model: the same row."""
    row, dataset, model = train_keeping_model(config)
    measure(config, dataset, model, row)
    return row


# ---------------------------------------------------------------------------------------
# The analysis.

SHARED, PER_STEP, LN = RULE_ARMS
#: Per-step BN's runs scored again with the statistics beyond T re-estimated (`measure`).
RECALIBRATED = "BN, per-step statistics (re-estimated beyond T)"
RELATIVE_BUCKET = "relative drop <= T to > T (% of accuracy above chance)"
WORKAROUND_CHECK = "(1) per-step BN minus shared-statistics BN, test accuracy on lengths <= T (pp, paired by seed)"
DEGRADATION_CHECK = (
    "(2) per-step BN's relative accuracy drop from lengths <= T to > T minus LN's (% of the accuracy above "
    "chance within T, paired by seed)"
)
MECHANISM_CHECK = (
    "(3) per-step BN's relative drop with step T's statistics reused beyond T minus with the statistics "
    "re-estimated beyond T (same runs)"
)
ABSOLUTE_CHECK = "(2) per-step BN's accuracy drop from lengths <= T to > T minus LN's (pp, paired by seed)"
REAL_WORKAROUND_CHECK = (
    "(real 1) per-step BN minus shared-statistics BN, JapaneseVowels test accuracy beyond T (pp, paired by seed)"
)
REAL_DEGRADATION_CHECK = "(real 2) LN minus per-step BN, JapaneseVowels test accuracy beyond T (pp, paired by seed)"
REAL_MECHANISM_CHECK = (
    "(real 3) per-step BN with the statistics re-estimated beyond T minus reused, JapaneseVowels test accuracy "
    "beyond T (pp, same runs)"
)
RULE = (
    "Decided before the runs; two decisive checks and a secondary one, each a per-seed "
    "paired difference with its 95% interval. A drop is relative: the share of an arm's "
    "accuracy above chance within the training lengths that it loses beyond them, "
    "100 x (acc<=T - acc>T) / (acc<=T - chance), so that arms starting from different "
    "accuracies are compared on a common footing. (1) BN needs the per-step workaround: on "
    "test sequences within the training lengths (<= T), per-step BN's accuracy minus "
    f"shared-statistics BN's is at least {WORKAROUND_PP:g} pp. (2) Per-step BN still "
    "degrades more than LN past the training length: its relative drop from <= T to > T "
    f"exceeds LN's by at least {DEGRADATION_PCT:g} points. (3, secondary: the mechanism) "
    "The missing statistics cause it: per-step BN's relative drop with step T's statistics "
    "reused beyond T exceeds that of the same trained runs with the statistics of the steps "
    "beyond T re-estimated on unlabeled long sequences by at least "
    f"{MECHANISM_PCT:g} points. The real-data task (JapaneseVowels, trained on utterances of "
    f"at most T = {REAL_T} frames and tested on the longer ones, so no drop can be measured), "
    "with a verdict of its own, compares accuracies beyond T: (real 1) per-step minus "
    f"shared-statistics BN at least {WORKAROUND_PP:g} pp; (real 2) LN minus per-step BN at "
    f"least {DEGRADATION_PP:g} pp; (real 3, secondary) per-step BN with the statistics "
    f"re-estimated beyond T minus reused at least {WORKAROUND_PP:g} pp (chance "
    f"{REAL_CHANCE_PCT:.1f} %). A check is undecided while one of its arms has not converged "
    "(its median run's training loss on a plateau: at least half of the runs that did not "
    "diverge), or when both arms sit within "
    f"{stats.CEILING_MARGIN_PP:g} pp of 100 % or of chance ({CHANCE_PCT:g} %) (check 1 on "
    "lengths <= T, checks 2 and 3 beyond T). Verdict on the four-way scale."
)
ANCHOR = (
    "Ba et al. 2016 (LN) §1, §3.1: in an RNN the summed inputs change with the time step, "
    "so BN needs separate statistics per step, and a test sequence longer than every "
    "training sequence has steps without statistics; LN's per-sample statistics need "
    "neither. Cooijmans et al. 2016 made per-step BN work in LSTMs (statistics per step up "
    "to T_max, reused beyond; gamma initialized to 0.1): sequential MNIST 99.0% / permuted "
    "95.4% (LSTM 98.9% / 90.2%), text8 1.36 bits per character. Laurent et al. 2016: BN on "
    "the input-to-hidden transition speeds up training but does not improve generalization; "
    "on the hidden-to-hidden transition it does not help."
)


def _arm_of(norm, shared):
    for label, (arm_norm, options) in ARMS.items():
        if arm_norm == norm and options.get("model.share_statistics", False) == bool(shared):
            return label
    return norm


def _labelled(rows):
    rows = rows.copy()
    if "dataset" not in rows:
        rows["dataset"] = "sequences"
    column = "opt/model.share_statistics"
    shared = rows[column].eq(True) if column in rows else [False] * len(rows)
    rows["arm"] = [_arm_of(n, s) for n, s in zip(rows["norm"], shared)]
    for name in BUCKETS:
        column = f"c5/accuracy_{name}"
        rows[f"pct_{name}"] = rows[column] * 100.0 if column in rows else np.nan
        column = f"c5/recalibrated/accuracy_{name}"
        rows[f"recal_pct_{name}"] = rows[column] * 100.0 if column in rows else np.nan
    rows["drop_pp"] = rows["pct_le_T"] - rows["pct_gt_T"]
    rows["relative_drop"] = relative_drop(rows["pct_le_T"], rows["pct_gt_T"])
    rows["recal_relative_drop"] = relative_drop(rows["recal_pct_le_T"], rows["recal_pct_gt_T"])
    rows["mechanism"] = rows["relative_drop"] - rows["recal_relative_drop"]
    return rows


def relative_drop(within, beyond):
    """The share (%) of the accuracy above chance within T lost beyond T:
    ``100 (within - beyond) / (within - chance)``, accuracies in %; NaN where the accuracy
    within T is at or below chance (nothing to lose)."""
    within, beyond = np.asarray(within, float), np.asarray(beyond, float)
    above = within - CHANCE_PCT
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(above > 0, 100.0 * (within - beyond) / above, np.nan)


def _arm_order(arms):
    order = [a for label in ARMS for a in ((label, RECALIBRATED) if label == PER_STEP else (label,))]
    known = [a for a in order if a in set(arms)]
    return known + sorted(set(arms) - set(known))


def _paired_check(ok, name, a, b, value, threshold, why, ceiling_value, ceiling_label, unit=" pp", decisive=True,
                  real=False):
    """Check `name`: arm `a` minus arm `b` in `value`, paired by seed, at least `threshold`
    pp; blocked while either arm has not converged (`stats.unconverged_arms`), or when both arms' `ceiling_value`
    accuracies sit at the ceiling or the floor."""
    arm_a, arm_b = ok[ok["arm"] == a], ok[ok["arm"] == b]
    effect = stats.estimate(stats.paired_differences(arm_a, arm_b, value) if len(arm_a) and len(arm_b) else [])
    pair = ok[ok["arm"].isin([a, b])]
    blockers = stats.unconverged_arms(pair, "arm")
    blockers.append(
        stats.ceiling_blocker(
            stats.estimate(arm_a[ceiling_value]), stats.estimate(arm_b[ceiling_value]),
            REAL_CHANCE_PCT if real else CHANCE_PCT, ceiling_label,
        )
    )  # fmt: skip
    return stats.Check(
        name=name, effect=effect, threshold=threshold, kind="at_least", why=why, unit=unit, blockers=tuple(blockers),
        decisive=decisive, real=real,
    )


def _real_checks(real, why):
    """The real-data task's checks (JapaneseVowels, every test utterance longer than T):
    accuracies beyond T, paired by seed (or within a run, for the re-estimation)."""
    workaround = _paired_check(
        real, REAL_WORKAROUND_CHECK, PER_STEP, SHARED, "pct_gt_T", WORKAROUND_PP, why,
        "pct_gt_T", "vowels test accuracy > T, per-step vs shared-statistics BN", real=True,
    )  # fmt: skip
    degradation = _paired_check(
        real, REAL_DEGRADATION_CHECK, LN, PER_STEP, "pct_gt_T", DEGRADATION_PP, why,
        "pct_gt_T", "vowels test accuracy > T, LN vs per-step BN", real=True,
    )  # fmt: skip
    arm = real[real["arm"] == PER_STEP]
    gain = (arm["recal_pct_gt_T"] - arm["pct_gt_T"]).to_numpy(float) if len(arm) else np.array([])
    blockers = stats.unconverged_arms(arm, "arm")
    blockers.append(
        stats.ceiling_blocker(
            stats.estimate(arm["pct_gt_T"]), stats.estimate(arm["recal_pct_gt_T"]), REAL_CHANCE_PCT,
            "vowels test accuracy > T, per-step BN with reused vs re-estimated statistics",
        )
    )  # fmt: skip
    mechanism = stats.Check(
        name=REAL_MECHANISM_CHECK, effect=stats.estimate(gain[np.isfinite(gain)]), threshold=WORKAROUND_PP,
        kind="at_least", why=why, unit=" pp", decisive=False, blockers=tuple(blockers), real=True,
    )  # fmt: skip
    return [workaround, degradation, mechanism]


def _mechanism_check(ok):
    """Check (3): per-step BN's relative drop minus the same runs' after the statistics
    beyond T are re-estimated (paired within each run); blocked while the arm has not
    converged, or when both versions sit at the ceiling or the floor beyond T."""
    arm = ok[ok["arm"] == PER_STEP]
    values = arm["mechanism"].to_numpy(float) if len(arm) else np.array([])
    blockers = stats.unconverged_arms(arm, "arm")
    blockers.append(
        stats.ceiling_blocker(
            stats.estimate(arm["pct_gt_T"]), stats.estimate(arm["recal_pct_gt_T"]), CHANCE_PCT,
            "test accuracy > T, per-step BN with reused vs re-estimated statistics",
        )
    )  # fmt: skip
    return stats.Check(
        name=MECHANISM_CHECK, effect=stats.estimate(values[np.isfinite(values)]), threshold=MECHANISM_PCT,
        kind="at_least", unit=" points", decisive=False, blockers=tuple(blockers),
        why="the same size as check (2): the re-estimated statistics must remove a drop as large as the one "
        "that counts against BN",
    )  # fmt: skip


def analyze(ok: pandas.DataFrame, runs) -> dict:
    """The checks of `RULE` from the claim's usable rows."""
    rows, note = _labelled(ok), runs.summary
    real, ok = rows[rows["dataset"] == "vowels"], rows[rows["dataset"] != "vowels"]

    def est(arm, column):
        return stats.estimate(ok.loc[ok["arm"] == arm, column])

    why = (
        "no paper gives a size; 3 pp is the study's accuracy difference that matters (as "
        "for C4), above a single small model's seed-to-seed noise"
    )
    workaround = _paired_check(
        ok, WORKAROUND_CHECK, PER_STEP, SHARED, "pct_le_T", WORKAROUND_PP, why,
        "pct_le_T", "test accuracy <= T, per-step vs shared-statistics BN",
    )  # fmt: skip
    relative_why = (
        f"{DEGRADATION_PCT:g} points of the accuracy above chance within T: the study's 3 pp at the last run's "
        "accuracy above chance within T (about 62 pp)"
    )
    degradation = _paired_check(
        ok, DEGRADATION_CHECK, PER_STEP, LN, "relative_drop", DEGRADATION_PCT, relative_why,
        "pct_gt_T", "test accuracy > T, per-step BN vs LN", unit=" points",
    )  # fmt: skip
    absolute = _paired_check(
        ok, ABSOLUTE_CHECK, PER_STEP, LN, "drop_pp", DEGRADATION_PP, why,
        "pct_gt_T", "test accuracy > T, per-step BN vs LN",
    )  # fmt: skip
    mechanism = _mechanism_check(ok)
    real_checks = _real_checks(real, why)
    checks = [workaround, degradation, mechanism, *real_checks]

    evidence = [
        ("per-step BN's relative drop from <= T to > T minus LN's (paired by seed)", degradation.effect, " points"),
        ("per-step BN's relative drop, statistics reused minus re-estimated beyond T", mechanism.effect, " points"),
        ("relative drop, per-step BN", est(PER_STEP, "relative_drop"), " %"),
        ("relative drop, per-step BN with the statistics re-estimated beyond T",
         est(PER_STEP, "recal_relative_drop"), " %"),  # fmt: skip
        ("relative drop, LN", est(LN, "relative_drop"), " %"),
        ("test accuracy > T, per-step BN with the statistics re-estimated beyond T",
         est(PER_STEP, "recal_pct_gt_T"), "%"),  # fmt: skip
        ("per-step BN's drop from <= T to > T minus LN's (paired by seed)", absolute.effect, " pp"),
        ("per-step BN minus shared-statistics BN, accuracy <= T (paired by seed)", workaround.effect, " pp"),
        ("accuracy drop from <= T to > T, per-step BN", est(PER_STEP, "drop_pp"), " pp"),
        ("accuracy drop from <= T to > T, LN", est(LN, "drop_pp"), " pp"),
        ("test accuracy <= T, per-step BN", est(PER_STEP, "pct_le_T"), "%"),
        ("test accuracy <= T, shared-statistics BN", est(SHARED, "pct_le_T"), "%"),
        ("test accuracy <= T, LN", est(LN, "pct_le_T"), "%"),
        ("test accuracy > T, per-step BN", est(PER_STEP, "pct_gt_T"), "%"),
        ("test accuracy > T, LN", est(LN, "pct_gt_T"), "%"),
        ("accuracy drop from <= T to > T, shared-statistics BN", est(SHARED, "drop_pp"), " pp"),
        ("accuracy drop from <= T to > T, LSTM without norm", est("LSTM, no norm", "drop_pp"), " pp"),
    ]

    long = pandas.concat(
        [
            pandas.DataFrame({"arm": ok["arm"], "bucket": BUCKET_LABELS[name], "value": ok[f"pct_{name}"]})
            for name in BUCKETS
        ]
        + [
            pandas.DataFrame({"arm": RECALIBRATED, "bucket": BUCKET_LABELS[name], "value": ok[f"recal_pct_{name}"]})
            for name in BUCKETS
        ]
        + [pandas.DataFrame({"arm": ok["arm"], "bucket": "drop <= T to > T (pp)", "value": ok["drop_pp"]})]
        + [pandas.DataFrame({"arm": ok["arm"], "bucket": RELATIVE_BUCKET, "value": ok["relative_drop"]})]
        + [pandas.DataFrame({"arm": RECALIBRATED, "bucket": RELATIVE_BUCKET, "value": ok["recal_relative_drop"]})],
        ignore_index=True,
    )
    long = long[np.isfinite(long["value"].astype(float))]
    buckets_table = stats.summarize(long, ["arm", "bucket"], "value")
    curves = [(ok["arm"], ok.get("c5/accuracy_by_length", []))]
    if "c5/recalibrated/accuracy_by_length" in ok:
        curves.append(([RECALIBRATED] * len(ok), ok["c5/recalibrated/accuracy_by_length"]))
    by_length = pandas.DataFrame.from_records(
        [
            {"arm": arm, "length_upper": int(u), "value": float(v) * 100.0}
            for arms, values_of in curves
            for arm, uppers, values in zip(arms, ok.get("c5/length_bin_upper", []), values_of)
            if isinstance(values, (list, tuple))
            for u, v in zip(uppers, values)
        ],
        columns=["arm", "length_upper", "value"],
    )
    by_length = by_length[np.isfinite(by_length["value"].astype(float))]
    length_table = stats.summarize(by_length, ["arm", "length_upper"], "value")
    counts = {name: int(ok[f"c5/count_{name}"].iloc[0]) for name in BUCKETS if f"c5/count_{name}" in ok and len(ok)}
    convergence = stats.convergence_table(rows, ["dataset", "arm"])
    real_long = pandas.concat(
        [pandas.DataFrame({"arm": real["arm"], "value": real["pct_gt_T"]}),
         pandas.DataFrame({"arm": RECALIBRATED, "value": real["recal_pct_gt_T"]})],
        ignore_index=True,
    )  # fmt: skip
    real_table = stats.summarize(real_long[np.isfinite(real_long["value"].astype(float))], "arm", "value")

    seeds = sorted(ok["seed"].unique()) if len(ok) else []
    epochs = int(ok["epochs"].max()) if len(ok) else 0
    steps = int(ok["steps"].max()) if len(ok) else 0
    setup = (
        f"An LSTM (32 units, one layer, its last state classified) with the norm inside the "
        "recurrence, trained with Adam (learning rate 0.003, batch 128) for "
        f"{epochs} epochs ({steps} steps) on the keyed sequence task: the first token names "
        "one of two groups of 4 marker tokens, the label is the most frequent marker of that "
        "group (ties redrawn), the other tokens are markers of either group or distractors, "
        f"and every real step's one-hot token carries Gaussian noise of deviation {TOKEN_NOISE:g}; "
        f"padded and masked, training lengths 5 to T = {TRAIN_LEN}, test lengths 5 to 4T = "
        f"{TEST_LEN} (test sequences per bucket: "
        + ", ".join(f"{BUCKET_LABELS[k]} {v}" for k, v in counts.items())
        + f"). Arms: {', '.join(_arm_order(ok['arm'].unique()) if len(ok) else [])}; "
        f"{len(seeds)} seed(s) each, the same seeds (data order) in every arm. BN is "
        "Cooijmans et al.'s cell (kerasnorm.BatchNormLSTMCell: gammas start at 0.1, padded "
        "steps kept out of the batch statistics); per-step BN keeps moving statistics for "
        "steps 1..T and reuses step T's beyond; the shared arm keeps one set for all steps "
        "(in training both normalize each step with its own batch statistics, so they "
        "differ only in inference). Per-step BN's runs are scored a second time with the "
        f"statistics of the steps beyond T re-estimated on {POOL_SEQUENCES} unlabeled sequences of the test "
        "lengths (another data seed; steps 1..T keep their trained statistics; a step with fewer than "
        f"{POOL_MIN_RUNNING} running sequences reuses the step before's). Real data: the same LSTM arms on "
        f"JapaneseVowels (12 LPC coefficients a frame, 9 speakers), trained on the {REAL_T}-frame or shorter "
        f"utterances (344, batch 32, {REAL_EPOCHS} epochs) and tested on the longer ones (296, 16-29 frames), "
        f"{len(sorted(real['seed'].unique()))} seed(s) an arm; there the statistics beyond T are re-estimated on "
        "the test utterances' inputs. " + note
    )
    caveats = [
        stats.ceiling_summary(checks),
        "Changed after the run at 6d7033a: (i) check (2) compared absolute drops from "
        "different starting points (LN 90.4 %, per-step BN 86.3 % within T), so it now "
        "compares relative drops (the share of the accuracy above chance lost beyond T; "
        "the absolute comparison is in the sensitivity table); (ii) no arm isolated the "
        "mechanism the note names, so per-step BN is also scored with the statistics of "
        "the steps beyond T re-estimated on unlabeled long sequences (check 3); (iii) the "
        "rule said every run must converge where the median run decides; (iv) seeds come "
        "in stacked blocks of 8 (8, up to 16), sized from that run's spreads; (v) a real-data "
        "task. The real checks were written after a one-seed pilot of the vowels (60 epochs; "
        "the full profile runs 40) and not changed by it: accuracy beyond T 95.9 % with "
        "per-step BN, 87.2 % shared, 88.9 % LN, 75.3 % with the statistics re-estimated.",
        "The re-estimated statistics are an oracle: a deployed model would need such "
        "unlabeled long sequences. On the vowels the only long utterances are the test "
        "set's, whose inputs (not labels) are used.",
        "Per-step BN updates each step's moving statistics once per batch, shared BN its "
        "single set once per step of every sequence, so per-step estimates need more "
        "training steps to converge (momentum 0.99): in a short run (the quick profile) "
        "per-step BN can be near chance in inference while training well.",
        "Check (1) compares the BN arms within the training lengths, where per-step "
        "statistics exist for every step; how the two BN arms differ beyond T (in the "
        "table) is not part of the rule. A shared-statistics arm that diverged would count "
        "for the claim in words but drops out of the paired difference (its accuracy is "
        "NaN); the convergence table counts divergences per arm.",
        "The task needs the key and the counts carried over the whole sequence, so every "
        "arm loses accuracy on longer test sequences; the claim is about BN's extra loss, "
        "hence the drop compared with LN's.",
        "The task changed after the full run before 6d7033a: the plain majority task "
        "left every arm at 98-100 % within T, where check (1) could not decide. The noise "
        "level was chosen in a pilot of LN alone (0.6: near chance; 0.3: 82 % within T), "
        "before any BN arm was compared; the training set then grew from 4000 to 16000 "
        "sequences at batch 128 because LN kept fitting the smaller set (its loss never "
        "levelled off). The rules and thresholds were set with the new verdict scale, after "
        "the earlier runs had been seen.",
        "The LSTM without norm, an arm of the earlier runs outside the rule, is left out of "
        "the full profile to pay for seeds of the arms the checks compare.",
        "On the vowels the long utterances come mostly from a few speakers (4 and 6 speak "
        "long), so statistics re-estimated on them may subtract part of what tells the "
        "speakers apart: (real 3) is the oracle of the synthetic task only in intent.",
        "One small LSTM on one synthetic task; the published gains of recurrent BN are on "
        "larger models and real data.",
        "Real data: the vowels' length split tests on utterances longer than every "
        "training one only, so accuracy within T (and a drop) cannot be measured there; "
        "the real checks compare arms beyond T, where a difference may also come from how "
        "well each arm learned the speakers at all. Length goes with the speaker (speakers "
        "3 and 8 speak short, 4 and 6 long), so the test set's speaker shares differ from "
        "training's.",
    ]
    return dict(
        checks=checks,
        alternatives={
            "drops compared in absolute pp (the earlier rule, 3 pp)": [workaround, absolute, mechanism, *real_checks]
        },
        headline=DEGRADATION_CHECK,
        convergence=convergence,
        evidence=evidence,
        setup=setup,
        caveats=caveats,
        tables={
            "test accuracy (%) by length bucket": buckets_table,
            "test accuracy (%) by length": length_table,
            f"JapaneseVowels test accuracy (%), utterances longer than T = {REAL_T} frames": real_table,
        },
        figures={
            "fig-c5-length": "Test accuracy by sequence length (bins of "
            f"{LENGTH_BIN} tokens), training lengths up to T = {TRAIN_LEN} (dashed line) "
            f"(mean, {stats.INTERVAL}; axis 0-100%).",
            "fig-c5-drop": "Relative accuracy drop from test lengths <= T to > T per arm (the share of the "
            f"accuracy above chance within T lost beyond it; mean, {stats.INTERVAL}).",
        },
    )


# ---------------------------------------------------------------------------------------
# The figures.

#: Arm -> short label for tick labels.
_SHORT = {
    "LSTM, no norm": "no norm",
    "BN, statistics shared over time": "BN shared",
    "BN, per-step statistics (T reused beyond)": "BN per step",
    "LN": "LN",
    RECALIBRATED: "BN per step,\nre-estimated",
}
#: Arm -> (palette name, fallback index) for `plots.color`.
_COLORS = {
    "LSTM, no norm": ("none", 7),
    "BN, statistics shared over time": ("keras_batch", 5),
    "BN, per-step statistics (T reused beyond)": ("batch", 0),
    "LN": ("layer", 1),
    RECALIBRATED: ("batch_recalibrated", 3),
}


def figures(analysis: dict, out_dir) -> list:
    """Writes the two figures of `analysis` (from its tables only); returns the paths."""
    tables = {name: pandas.DataFrame.from_records(records) for name, records in analysis["tables"].items()}
    paths = []

    by_length = tables["test accuracy (%) by length"]
    fig, ax = plots.new_axes(width=5.6)
    arms = _arm_order(by_length["arm"].unique()) if len(by_length) else []
    for arm in arms:
        group = by_length[by_length["arm"] == arm].sort_values("length_upper")
        name, index = _COLORS.get(arm, (arm, 2))
        plots.interval_line(
            group["length_upper"], group["mean"], group["low"], group["high"], arm, ax=ax, color_name=name, index=index
        )
    ax.axvline(TRAIN_LEN, color="#888888", linestyle="--", linewidth=0.8)
    # Intervals of few seeds can pass the possible range; the CSV keeps them whole.
    ax.set_ylim(0, 100)
    ax.set_xlabel(f"test sequence length (tokens, bins of {LENGTH_BIN}; upper edge)")
    ax.set_ylabel("test accuracy (%)")
    if arms:
        ax.legend(fontsize=7, frameon=False)
    paths += plots.save_figure(fig, "fig-c5-length", out_dir, by_length)

    buckets = tables["test accuracy (%) by length bucket"]
    drop = buckets[buckets["bucket"] == RELATIVE_BUCKET] if len(buckets) else buckets
    drop = drop.set_index("arm").reindex(_arm_order(drop["arm"].unique()) if len(drop) else []).reset_index()
    fig, ax = plots.new_axes(width=4.0)
    colors = [plots.color(*_COLORS.get(arm, (arm, 2))) for arm in drop["arm"]]
    labels = [_SHORT.get(arm, arm) for arm in drop["arm"]]
    plots.interval_bars(labels, list(drop["mean"]), list(drop["low"]), list(drop["high"]), ax=ax, colors=colors)
    ax.axhline(0, color="#888888", linewidth=0.8)
    ax.set_ylabel("relative drop, <= T to > T (%)")
    paths += plots.save_figure(fig, "fig-c5-drop", out_dir, drop)
    return paths


#: What a practitioner should take from each verdict (the report's front page).
PRACTICE = {
    'supported': (
        "For recurrent networks on sequences of varying length, prefer LN: BN's per-step statistics fail beyond the lengths seen in training."
    ),
    'partly supported': (
        "BN's per-step statistics hurt on longer sequences in some of the tests: prefer LN in recurrent networks on variable lengths."
    ),
    'inconclusive': (
        'The study could not decide whether BN fails recurrent networks on varying lengths here: LN avoids the question.'
    ),
    'not supported': (
        'BN in the recurrent cell held up beyond the training lengths here: variable length alone is no reason to avoid it.'
    ),
}


CLAIM = Claim(
    id=CLAIM_ID,
    title=TITLE,
    rule=RULE,
    anchor=ANCHOR,
    seed_plan=SEED_PLAN,
    grid=grid,
    analyze=analyze,
    figures=figures,
    practice=PRACTICE,
)
