"""C6: layer norm normalizes all units of a layer per sample, and is the norm of NLP.

Two measurements, both made by one task (``c6_statistics``) after training, on each
trained model (`measure`, the task's `studies.engine.tasks.Stacking` finish hook, so that
the engine may train the seeds of an arm as the members of one stacked model):

- **per sample** (LN eq. 3 of Ba et al. 2016): the logits of the same test samples are
  computed with two different sets of batch-mates, alone (a batch of 1), and in training
  and in inference mode (`batch_independence`); the largest absolute difference is
  recorded. LN's must be float32 rounding; BN's training-mode output must depend on the
  batch-mates.
- **used in NLP** (Shen et al. 2020, PowerNorm): the token model (``model="tokens"``,
  `studies.engine.models.token_model`: a per-token embedding and two 1-D convolutions over
  the padded, masked token sequence, each followed by the norm, then a masked mean over
  the tokens, a small Transformer-free stand-in for NLP's per-token layers) trained with
  BN or LN on a sequence task whose token frequencies are heavy-tailed (Zipfian
  distractors, as words in text). How far the first BN layer's batch statistics fall from
  its running statistics (`matched_fluctuation`) is measured on batches of the training
  data holding the *same number of values per statistic* in the token model and in the
  vision-like reference, the engine's 1-D CNN with BN on MNIST-1D, so that the count of
  values cannot make the difference.

The real-data task: an LSTM with per-step BN or LN inside the recurrence on JapaneseVowels
(the original split: test utterances no longer than the training ones), LN >= BN as in
(b1).
"""

from __future__ import annotations

import dataclasses

import keras
import matplotlib.ticker
import numpy as np
import pandas

from studies.claims import Claim, check_profile
from studies.claims._sequence_common import train_keeping_model
from studies.engine import tasks, training
from studies.engine.config import RunConfig, concat
from studies.engine.config import grid as product
from studies.report import plots, stats

CLAIM_ID = "C6"
TITLE = "LN normalizes all units of a layer per sample; used in NLP"
TASK = "c6_statistics"

# ---------------------------------------------------------------------------------------
# The checks (fixed before the full run).

#: (a) LN's largest output difference must stay within float32 rounding (logits are of
#: order 10), and BN's training-mode batch-mate difference must exceed 100 times that.
LN_TOLERANCE, BN_DEPENDENCE = 1e-4, 1e-2
#: (b1) "LN >= BN" as a non-inferiority margin: LN's test accuracy may trail BN's by less
#: than 2 pp, about the 1.7 pp by which LN trails BN in Wu & He's (2018, Table 1) CNNs at
#: batch 32, the gap the note itself accepts for vision ("LN is less effective in CNNs").
NONINFERIORITY_PP = 2.0
#: (b2) BN's statistics fluctuate more on the sequences than in the CNN: the ratio of the
#: two fluctuations (first BN layer, at the same number of values per statistic) at least
#: 1.5. Shen et al. (2020, Fig. 2) show a several-fold gap between a Transformer on
#: IWSLT14 and ResNet-20 on CIFAR-10; half again as large is a weak form of their effect,
#: beyond what the seed-to-seed spread can fake.
FLUCTUATION_RATIO = 1.5
CHANCE_PCT = 25.0  # 4 balanced classes in the sequence task
REAL_CHANCE_PCT = 100.0 / 9  # 9 speakers
#: Sized from the last full run (4 seeds an arm, every arm converged; 14-31 CPU-s a run
#: alone): LN minus BN +0.65, +0.80, +1.51, +1.83 pp (sd 0.55 pp: 4 seeds give a
#: half-width of 0.9 pp, half the 2 pp margin; 8 give 0.46). The fluctuation ratios were
#: measured there at unmatched counts (seed sd 0.11 of the mean ratio); matched counts
#: on the Zipfian task are new, so their spread is unknown: 8 seeds, one stacked block,
#: and one more block of 8 (cap 16) while a decisive check is undecided for want of
#: precision. The vowels (real) runs take the same seeds.
#:
#: Cost (full profile), assuming the engine's stacking makes a block of 8 seeds cost about
#: 2.5 runs alone (the feed-forward blocks' 2-3x; not yet measured for these models):
#: token model 2 x 2.5 x 23 s, CNN 2.5 x 29 s (the last run's rows), vowels LSTM 2 x 2.5 x
#: 35 s (by analogy with C5's vowels pilot, 40 s a run for 600 steps; here 480) = 6.0
#: CPU-min a block, 12 at the cap. The measurements after training (64 batches at each of
#: 3 counts, and the per-sample comparisons) take a few seconds a run. Alone (stacking not
#: wired), 8 seeds of the five arms cost about 19 CPU-min. Timings on this shared 2-core
#: machine are 2-3x pessimistic.
SEED_PLAN = stats.SeedPlan(
    pilot=4, initial=8, block=8, cap=16,
    why="last full run (4 seeds): paired sd of LN minus BN 0.55 pp, a half-width of half the 2 pp margin at 4 "
        "seeds; the matched-count fluctuation ratios are new (their spread unknown), so one stacked block of 8, "
        "and the sequential plan adds a block of 8 up to 16",
)  # fmt: skip

# ---------------------------------------------------------------------------------------
# The grid. Both models see the same number of optimizer steps at the same batch size.

#: 24 x 100 steps: in a pilot the token model with BN was still improving at 1200 steps
#: (its loss fell 9 % of its total decrease in the last fifth); at 2400 every arm had
#: levelled off (plateau 0.017-0.028, the threshold is 0.05).
EPOCHS = 24
PROFILES = {
    # seeds; epochs x steps_per_epoch = optimizer steps; num_samples (80% train)
    "smoke": dict(seeds=(0,), epochs=1, steps_per_epoch=5, num_samples=500),
    "quick": dict(seeds=(0, 1), epochs=2, steps_per_epoch=40, num_samples=2000),
    "full": dict(seeds=tuple(range(SEED_PLAN.initial)), epochs=EPOCHS, steps_per_epoch=100, num_samples=20000),
}
BASE = RunConfig(
    claim=CLAIM_ID,
    task=TASK,
    model="tokens",  # sequences: `studies.engine.models.token_model`; mnist1d: the engine's cnn1d
    widths=(32, 32, 32),  # units of the embedding, filters of each convolution
    optimizer="adam",
    learning_rate=0.003,
    batch_size=32,  # sequences (about 400 real tokens) or signals per batch
)
#: The majority task (`studies.engine.data.sequences`: which of 4 marker tokens occurs most
#: often) with heavy-tailed token frequencies (``rule="zipf"``: 60 distractor tokens, the
#: k-th most frequent drawn with probability proportional to 1/k, as words in text), with
#: Gaussian noise of deviation 0.3 on every real token, and test sequences as long as the
#: training ones (5..20 tokens): C6 compares the norms on the training distribution;
#: longer test sequences are C5's question. Without the noise the token arms sat at
#: 98-100 %; with it (8 uniform tokens, the last run) at 93-95 %.
SEQUENCE_OPTIONS = {"data.max_test_len": 20, "data.token_noise": 0.3, "data.rule": "zipf", "data.num_distractors": 60}
#: Values per statistic (a channel's values in one batch: real tokens, or signals x 40
#: positions) at which the fluctuation is measured; the checks read `DECIDING_VALUES`,
#: about a training batch of the token model (32 sequences of 12.5 real tokens on average).
MATCHED_VALUES = (120, 400, 1280)
DECIDING_VALUES = 400
#: Batches drawn (without replacement, from a shuffled training set) per count.
FLUCTUATION_BATCHES = 64
#: The first BN layer's input: the layer of each model kind that computes it.
FIRST_LINEAR = {"tokens": "embedding", "cnn1d": "conv_0"}
#: The real-data task: JapaneseVowels, original split (270 train, 370 test utterances of
#: 7-29 frames), an LSTM of 32 units with per-step BN (statistics for each of the 29
#: steps) or LN inside the recurrence; 60 passes of 8 steps at batch 32 (a one-seed pilot:
#: plateau 0.026 with BN, 0.001 with LN, the threshold 0.05).
REAL_BASE = RunConfig(
    claim=CLAIM_ID, task=TASK, dataset="vowels", model="rnn", cell="lstm", widths=(32,), optimizer="adam",
    learning_rate=0.003, batch_size=32, epochs=60,
)  # fmt: skip
REAL_SEEDS = {"smoke": (), "quick": (0,), "full": tuple(range(SEED_PLAN.initial))}
#: Arms: (dataset, norm) -> label.
ARMS = {
    ("sequences", "batch"): "tokens, BN",
    ("sequences", "layer"): "tokens, LN",
    ("mnist1d", "batch"): "MNIST-1D CNN, BN",
    ("vowels", "batch"): "vowels LSTM, per-step BN",
    ("vowels", "layer"): "vowels LSTM, LN",
}
#: The comparisons of part (a): row column -> what it compares.
INDEPENDENCE = {
    "c6/diff_batchmates_train": "other batch-mates, training mode",
    "c6/diff_batchmates_eval": "other batch-mates, inference mode",
    "c6/diff_alone_train": "batch of 1 vs in a batch, training mode",
    "c6/diff_train_eval": "training vs inference mode",
}
#: The fluctuation measures: row column prefix -> label.
FLUCTUATION = {
    "c6/fluctuation_mean": "|batch mean - running mean| / running std",
    "c6/fluctuation_variance": "|batch var - running var| / running var",
}


def grid(profile) -> list[RunConfig]:
    """The runs of `profile`: the token model with BN and with LN on the sequences, and
    the CNN with BN on MNIST-1D, each over the profile's seeds; (quick, full) the LSTM
    with per-step BN and with LN on the vowels."""
    p = PROFILES[check_profile(profile)]
    base = dataclasses.replace(
        BASE, epochs=p["epochs"], steps_per_epoch=p["steps_per_epoch"], num_samples=p["num_samples"]
    )
    seeds = list(p["seeds"])
    tokens = product(base, dataset=["sequences"], options=[SEQUENCE_OPTIONS], norm=["batch", "layer"], seed=seeds)
    cnn = product(base, dataset=["mnist1d"], model=["cnn1d"], norm=["batch"], seed=seeds)
    real = product(REAL_BASE, norm=["batch", "layer"], seed=list(REAL_SEEDS[profile])) if REAL_SEEDS[profile] else []
    return concat(tokens, cnn, real)


# ---------------------------------------------------------------------------------------
# The measurements.


def _values_per_statistic(values, mask):
    """A BN layer's inputs ``(samples, positions, channels)`` -> ``(values, channels)``: the
    values that enter a channel's statistics, sample by sample (the real positions only)."""
    values = np.asarray(values, np.float64)
    if mask is None:
        return values.reshape(-1, values.shape[-1])
    return values[np.asarray(mask, bool)]


def matched_fluctuation(values, moving_mean, moving_variance, epsilon, counts=MATCHED_VALUES,
                        batches=FLUCTUATION_BATCHES) -> dict:
    """How far a BN layer's batch statistics fall from its running statistics, at a given
    number of values per statistic.

    `values` ``(n, channels)`` are the layer's inputs as they enter its statistics, in the
    order of shuffled training samples (`_values_per_statistic`); for each count ``m`` of
    `counts` they are cut into consecutive batches of ``m`` values (up to `batches` of them;
    a sequence may be split between two batches), and per batch and channel
    ``|batch mean - running mean| / sqrt(running var + epsilon)`` and
    ``|batch var - running var| / (running var + epsilon)`` are averaged over channels and
    batches. Shen et al. (2020, Fig. 2) plot the same distances for the first BN layer;
    here the count of values is the same for every model, so that a difference comes from
    the data, not from how many values a batch holds.

    Returns: for each measure of `FLUCTUATION`, ``<measure>`` at `DECIDING_VALUES` (if in
    `counts`) and ``<measure>_by_values`` (one per count; NaN where the data hold no full
    batch), and ``c6/values_per_statistic`` (the counts).
    """
    values = np.asarray(values, np.float64)
    mean = np.asarray(moving_mean, np.float64)
    variance = np.maximum(np.asarray(moving_variance, np.float64), 0.0) + epsilon
    out = {"c6/values_per_statistic": list(counts)}
    by_count = {name: [] for name in FLUCTUATION}
    for m in counts:
        k = min(batches, len(values) // m)
        if k == 0:
            for name in FLUCTUATION:
                by_count[name].append(float("nan"))
            continue
        chunks = values[: k * m].reshape(k, m, -1)
        batch_mean, batch_var = chunks.mean(axis=1), chunks.var(axis=1)
        by_count["c6/fluctuation_mean"].append(float(np.mean(np.abs(batch_mean - mean) / np.sqrt(variance))))
        by_count["c6/fluctuation_variance"].append(float(np.mean(np.abs(batch_var - (variance - epsilon)) / variance)))
    for name in FLUCTUATION:
        out[f"{name}_by_values"] = by_count[name]
        out[name] = by_count[name][list(counts).index(DECIDING_VALUES)] if DECIDING_VALUES in counts else float("nan")
    return out


def first_layer_fluctuation(config: RunConfig, dataset, model) -> dict:
    """`matched_fluctuation` of the first BN layer (``norm_0``) of a trained token model or
    CNN, on its inputs for the training samples in an order shuffled with the run's seed
    (enough of them for `FLUCTUATION_BATCHES` batches at the largest count)."""
    layer = model.get_layer("norm_0")
    probe = keras.Model(model.inputs, model.get_layer(FIRST_LINEAR[config.model]).output)
    x = training.inputs(dataset, "train")
    arrays = x if isinstance(x, tuple) else (x,)
    order = np.random.default_rng(config.seed).permutation(len(arrays[0]))
    mask = dataset.mask_train
    per_sample = mask.sum(axis=1).mean() if mask is not None else arrays[0].shape[1]
    order = order[: int(np.ceil(1.2 * FLUCTUATION_BATCHES * max(MATCHED_VALUES) / per_sample))]
    inputs = tuple(a[order] for a in arrays)
    features = probe.predict(inputs if len(inputs) > 1 else inputs[0], batch_size=training.EVAL_BATCH_SIZE, verbose=0)
    values = _values_per_statistic(features, None if mask is None else mask[order])
    moving = (keras.ops.convert_to_numpy(layer.moving_mean), keras.ops.convert_to_numpy(layer.moving_variance))
    return matched_fluctuation(values, *moving, layer.epsilon)


def batch_independence(model, dataset, n=16, alone=4) -> dict:
    """The largest absolute difference of the logits of the first `n` test samples between
    two batches (each sample with `n` other batch-mates in each), in training and in
    inference mode; alone (first `alone` samples, a batch of 1) vs in a batch, training
    mode; and training vs inference mode. Columns of `INDEPENDENCE`.

    Inference-mode outputs are computed first: a training-mode call updates BN's moving
    statistics."""
    x = training.inputs(dataset, "test")

    def take(index):
        return tuple(a[index] for a in x) if isinstance(x, tuple) else x[index]

    first = np.arange(2 * n)
    second = np.concatenate([np.arange(n), np.arange(2 * n, 3 * n)])

    def logits(index, train):
        return np.asarray(model(take(index), training=train), np.float64)

    eval_first, eval_second = logits(first, False)[:n], logits(second, False)[:n]
    train_first, train_second = logits(first, True)[:n], logits(second, True)[:n]
    train_alone = np.concatenate([logits(np.array([i]), True) for i in range(alone)])
    return {
        "c6/diff_batchmates_train": float(np.max(np.abs(train_first - train_second))),
        "c6/diff_batchmates_eval": float(np.max(np.abs(eval_first - eval_second))),
        "c6/diff_alone_train": float(np.max(np.abs(train_alone - train_first[:alone]))),
        "c6/diff_train_eval": float(np.max(np.abs(train_first - eval_first))),
    }


def measure(config: RunConfig, dataset, model, row) -> None:
    """Adds to a trained model's row the `batch_independence` columns (not for the vowels'
    LSTMs: part (a) is measured on the sequence task's models) and, for a BN token model
    or CNN, `first_layer_fluctuation`'s."""
    if config.dataset == "vowels":
        return
    row.update(batch_independence(model, dataset))
    if config.norm == "batch":  # a diverged run's weights are not finite: so are its measures
        row.update(first_layer_fluctuation(config, dataset, model))


@tasks.register_task(TASK, stackable=tasks.Stacking(finish=measure))
def statistics_task(config: RunConfig) -> dict:
    """The engine's training run, then `measure`. The engine trains an arm's seeds stacked,
    as the members of one model, where it can, and calls `measure` on each member's
    trained model: the same row."""
    row, dataset, model = train_keeping_model(config)
    measure(config, dataset, model, row)
    return row


# ---------------------------------------------------------------------------------------
# The analysis.

INDEPENDENT_CHECK = "(a1) LN: largest logit difference of a sample across batch-mates, batch size and mode (per run)"
DEPENDENT_CHECK = "(a2) BN (both models): logit difference of a sample with other batch-mates, training mode (per run)"
ACCURACY_CHECK = "(b1) LN minus BN, test accuracy on the sequence task (pp, paired by seed)"
#: (b2) checks: fluctuation measure -> check name.
FLUCTUATION_CHECKS = {
    "c6/fluctuation_mean": f"(b2) BN's batch-mean fluctuation (first BN layer, {DECIDING_VALUES} values per "
    "statistic), sequence task over the CNN (ratio per seed)",
    "c6/fluctuation_variance": f"(b2) BN's batch-variance fluctuation (first BN layer, {DECIDING_VALUES} values per "
    "statistic), sequence task over the CNN (ratio per seed)",
}
REAL_ACCURACY_CHECK = "(real) LN minus per-step BN, LSTM test accuracy on JapaneseVowels (pp, paired by seed)"
RULE = (
    "Decided before the runs, from CLAIMS.md; every check is decisive, each an effect with "
    "its 95% interval over seeds against a stated size. (a1) Per sample: LN's largest logit "
    "difference of a sample with other batch-mates (training and inference mode), alone vs "
    f"in a batch, and between the modes is at most {LN_TOLERANCE:g} (float32 rounding); "
    f"(a2) BN's training-mode output changes with the batch-mates by at least {BN_DEPENDENCE:g}. "
    f"(b1) LN >= BN on the sequence task: LN's test accuracy minus BN's, paired by seed, is "
    f"at least -{NONINFERIORITY_PP:g} pp (a non-inferiority margin). (b2) BN's statistics "
    "fluctuate more on the sequence task (heavy-tailed token frequencies) than in the "
    "MNIST-1D CNN at the same number of values per statistic: after training, the first BN "
    "layer's batch-mean and batch-variance deviations from its running statistics over "
    f"batches of the training data holding {DECIDING_VALUES} values per statistic, each as "
    f"the ratio sequence task / CNN per seed, at least {FLUCTUATION_RATIO:g}. (b1) and (b2) "
    "are undecided while one of their arms has not converged (its median run's training "
    "loss on a plateau: at least half of the runs that did not diverge); (b1) also when "
    f"both arms sit within {stats.CEILING_MARGIN_PP:g} pp of 100 % or of chance "
    f"({CHANCE_PCT:g} %). Verdict on the four-way scale. The real-data task, with a verdict "
    "of its own: LN minus per-step BN test accuracy of an LSTM on JapaneseVowels, paired "
    f"by seed, at least -{NONINFERIORITY_PP:g} pp, under the same convergence and ceiling "
    f"rules (chance {REAL_CHANCE_PCT:.1f} %)."
)
ANCHOR = (
    "LN eq. 3 (Ba et al. 2016): the statistics are over the H hidden units of a layer for "
    "each sample, so LN works at batch size 1 and computes the same at training and test "
    "time. Shen et al. 2020 (PowerNorm), Fig. 2: the average distance between batch and "
    "running statistics of the first BN layer is close to zero for ResNet-20 on CIFAR-10 "
    "and large, with extreme outliers, for a Transformer with BN on IWSLT14 (4K tokens per "
    "batch); naive BN degrades Transformers on NLP tasks, LN is their standard norm."
)


def _label_arms(rows):
    rows = rows.copy()
    rows["arm"] = [ARMS.get((d, n), f"{d}, {n}") for d, n in zip(rows["dataset"], rows["norm"])]
    rows["test_accuracy_pct"] = rows["final/test/accuracy"] * 100.0
    return rows


def _arm(rows, label):
    return rows[rows["arm"] == label]


def _long(rows, columns, measure_names):
    """Rows x `columns` -> long form (arm, measure, value) for `stats.summarize`."""
    frames = [
        pandas.DataFrame({"arm": rows["arm"], "measure": measure_names[c], "value": rows[c].astype(float)})
        for c in columns
        if c in rows
    ]
    frames = [f[np.isfinite(f["value"])] for f in frames]
    if not frames:
        return pandas.DataFrame(columns=["arm", "measure", "value"])
    return pandas.concat(frames, ignore_index=True)


def _exploded(rows, column, index_name):
    """A list-valued column -> one row per element: arm, `index_name` (from 1), value."""
    records = [
        {"arm": arm, index_name: i + 1, "value": float(v)}
        for arm, values in zip(rows["arm"], rows[column])
        if isinstance(values, (list, tuple))
        for i, v in enumerate(values)
    ]
    return pandas.DataFrame.from_records(records, columns=["arm", index_name, "value"])


FLUCTUATION_TABLE = "fluctuation of the first BN layer by values per statistic"


def _fluctuation_checks(ok, bn_tokens, bn_cnn, bn_both, count):
    """The (b2) checks at `count` values per statistic (`MATCHED_VALUES`)."""
    checks = []
    for name, check_name in FLUCTUATION_CHECKS.items():
        column = f"{name}_by_values"
        at = MATCHED_VALUES.index(count)

        def pick(frame):
            cells = frame[column] if column in frame else [np.nan] * len(frame)
            values = [v[at] if isinstance(v, (list, tuple)) else np.nan for v in cells]
            return frame.assign(value=np.asarray(values, float))

        ratio = _ratios(pick(bn_tokens), pick(bn_cnn), "value") if len(bn_tokens) and len(bn_cnn) else []
        checks.append(
            stats.Check(
                name=check_name if count == DECIDING_VALUES else check_name.replace(str(DECIDING_VALUES), str(count)),
                effect=stats.estimate(ratio), threshold=FLUCTUATION_RATIO, kind="at_least",
                why="half again as large: a weak form of the several-fold gap between a Transformer on "
                "IWSLT14 and ResNet-20 on CIFAR-10 in Shen et al. 2020, Fig. 2",
                unit="x", blockers=tuple(stats.unconverged_arms(bn_both, "arm")),
            )
        )  # fmt: skip
    return checks


def _real_check(ok):
    """The real-data check: LN minus per-step BN, LSTM test accuracy on the vowels."""
    bn, ln = _arm(ok, ARMS[("vowels", "batch")]), _arm(ok, ARMS[("vowels", "layer")])
    gap = stats.paired_differences(ln, bn, "test_accuracy_pct") if len(ln) and len(bn) else []
    blockers = stats.unconverged_arms(pandas.concat([bn, ln]), "arm")
    blockers.append(
        stats.ceiling_blocker(
            stats.estimate(ln["test_accuracy_pct"]), stats.estimate(bn["test_accuracy_pct"]), REAL_CHANCE_PCT,
            "JapaneseVowels test accuracy, LN vs per-step BN",
        )
    )  # fmt: skip
    return stats.Check(
        name=REAL_ACCURACY_CHECK, effect=stats.estimate(gap), threshold=-NONINFERIORITY_PP, kind="at_least",
        why="(b1)'s non-inferiority margin", unit=" pp", blockers=tuple(blockers), real=True,
    )


def _ratios(a, b, value):
    """Per-seed ratios ``a[value] / b[value]`` of two arms' runs (seeds both have, finite)."""
    merged = a[["seed", value]].merge(b[["seed", value]], on="seed", suffixes=("_a", "_b"), validate="one_to_one")
    ratio = merged[f"{value}_a"].astype(float) / merged[f"{value}_b"].astype(float)
    return ratio[np.isfinite(ratio)].to_numpy()


def analyze(ok: pandas.DataFrame, runs) -> dict:
    """The checks of `RULE` from the claim's usable rows."""
    ok, note = _label_arms(ok), runs.summary
    tok_bn, tok_ln, cnn_bn, real_bn, real_ln = ARMS.values()
    bn_tokens, ln_tokens, bn_cnn = _arm(ok, tok_bn), _arm(ok, tok_ln), _arm(ok, cnn_bn)

    def est(frame, column):
        return stats.estimate(frame[column]) if column in frame else stats.estimate([])

    ln_diffs = ln_tokens[list(INDEPENDENCE)].max(axis=1) if len(ln_tokens) else pandas.Series(dtype=float)
    bn_rows = ok[ok["arm"].isin([tok_bn, cnn_bn])]
    bn_dependence = bn_rows["c6/diff_batchmates_train"] if len(bn_rows) else pandas.Series(dtype=float)
    acc_bn, acc_ln = est(bn_tokens, "test_accuracy_pct"), est(ln_tokens, "test_accuracy_pct")
    tokens = ok[ok["arm"].isin([tok_bn, tok_ln])]
    bn_both = ok[ok["arm"].isin([tok_bn, cnn_bn])]
    accuracy_gap = stats.estimate(
        stats.paired_differences(ln_tokens, bn_tokens, "test_accuracy_pct") if len(ln_tokens) and len(bn_tokens) else []
    )
    checks = [
        stats.Check(
            name=ACCURACY_CHECK, effect=accuracy_gap, threshold=-NONINFERIORITY_PP, kind="at_least",
            why="a non-inferiority margin about the 1.7 pp by which LN trails BN in CNNs at batch 32 "
            "(Wu & He 2018, Table 1), a gap the note accepts for vision",
            unit=" pp",
            blockers=(*stats.unconverged_arms(tokens, "arm"),
                      stats.ceiling_blocker(acc_ln, acc_bn, CHANCE_PCT, "sequence-task test accuracy, LN vs BN")),
        ),
    ]  # fmt: skip
    fluct = {name: (est(bn_tokens, name), est(bn_cnn, name)) for name in FLUCTUATION_CHECKS}
    checks += _fluctuation_checks(ok, bn_tokens, bn_cnn, bn_both, DECIDING_VALUES)
    real_check = _real_check(ok)
    checks += [
        stats.Check(
            name=INDEPENDENT_CHECK, effect=stats.estimate(ln_diffs), threshold=LN_TOLERANCE, kind="at_most",
            why="float32 rounding of logits of order 10 (LN eq. 3: the statistics are the sample's own)",
        ),
        stats.Check(
            name=DEPENDENT_CHECK, effect=stats.estimate(bn_dependence), threshold=BN_DEPENDENCE, kind="at_least",
            why="100 times LN's tolerance: BN's training-mode statistics are the batch's",
        ),
        real_check,
    ]  # fmt: skip
    alternatives = {
        f"fluctuation compared at {count} values per statistic": [
            c for c in checks if c.name not in FLUCTUATION_CHECKS.values()
        ] + _fluctuation_checks(ok, bn_tokens, bn_cnn, bn_both, count)
        for count in MATCHED_VALUES
        if count != DECIDING_VALUES
    }  # fmt: skip

    (mean_tokens, mean_cnn), (var_tokens, var_cnn) = fluct.values()
    evidence = [
        ("LN minus BN, test accuracy on the sequence task (paired by seed)", accuracy_gap, " pp"),
        ("test accuracy on the sequences, token model with LN", acc_ln, "%"),
        ("test accuracy on the sequences, token model with BN", acc_bn, "%"),
        ("LN minus per-step BN, LSTM test accuracy on JapaneseVowels (paired by seed)", real_check.effect, " pp"),
        ("LSTM test accuracy on JapaneseVowels, LN", est(_arm(ok, real_ln), "test_accuracy_pct"), "%"),
        ("LSTM test accuracy on JapaneseVowels, per-step BN", est(_arm(ok, real_bn), "test_accuracy_pct"), "%"),
        ("first BN layer's batch-mean fluctuation, sequences over CNN (ratio per seed)", checks[1].effect, "x"),
        ("first BN layer's batch-variance fluctuation, sequences over CNN (ratio per seed)", checks[2].effect, "x"),
        ("first BN layer, |batch mean - running mean| / running std, token model on sequences", mean_tokens, ""),
        ("the same, CNN on MNIST-1D", mean_cnn, ""),
        ("first BN layer, |batch var - running var| / running var, token model on sequences", var_tokens, ""),
        ("the same, CNN on MNIST-1D", var_cnn, ""),
        ("test accuracy of the CNN with BN on MNIST-1D", est(bn_cnn, "test_accuracy_pct"), "%"),
        ("LN: largest logit difference over the per-sample comparisons", stats.estimate(ln_diffs), ""),
        ("BN (both models): logit difference with other batch-mates, training mode",
         stats.estimate(bn_dependence), ""),  # fmt: skip
    ]
    convergence = stats.convergence_table(ok, "arm")

    measures = {"test_accuracy_pct": "test accuracy (%)"}
    measures.update({name: f"first BN layer: {label}" for name, label in FLUCTUATION.items()})
    arms_table = stats.summarize(_long(ok, list(measures), measures), ["arm", "measure"], "value")
    independence = _long(ok, list(INDEPENDENCE), INDEPENDENCE)
    independence_table = stats.summarize(independence, ["arm", "measure"], "value")
    largest = independence.groupby(["arm", "measure"], sort=True)["value"].max().reset_index(drop=True)
    independence_table["largest"] = largest.to_numpy() if len(independence) else []
    by_values = []
    for name, label in FLUCTUATION.items():
        if f"{name}_by_values" in ok:
            exploded = _exploded(ok, f"{name}_by_values", "count")
            exploded = exploded[np.isfinite(exploded["value"].astype(float))]
            exploded["values_per_statistic"] = [MATCHED_VALUES[i - 1] for i in exploded["count"]]
            table = stats.summarize(exploded, ["arm", "values_per_statistic"], "value")
            by_values.append(table.assign(measure=label)[["arm", "measure", "values_per_statistic", "mean", "low",
                                                          "high", "n"]])  # fmt: skip

    synthetic = ok[ok["dataset"] != "vowels"]
    seeds = sorted(synthetic["seed"].unique()) if len(synthetic) else []
    steps = int((synthetic["epochs"] * synthetic["steps_per_epoch"]).max()) if len(synthetic) else 0
    samples = int(synthetic["num_samples"].max()) if len(synthetic) and "num_samples" in synthetic else 0
    real_seeds = sorted(ok.loc[ok["dataset"] == "vowels", "seed"].unique())
    setup = (
        f"Three arms, {len(seeds)} seed(s) each (the same seeds in every arm), {steps} Adam "
        f"steps (learning rate 0.003) at batch size 32, {samples} samples per data set (80 % "
        "train): "
        "a token model (one-hot tokens -> Dense(32) embedding -> norm -> ReLU "
        "-> 2 x [Conv1D(32, 3) -> norm -> ReLU] -> mean over the real tokens -> logits; "
        "padding masked out of BN's statistics and zeroed after each layer) with BN or LN "
        "on the synthetic sequence task (which of 4 marker tokens occurs most often, among "
        "60 distractor tokens of Zipfian frequencies, the k-th most frequent with "
        "probability proportional to 1/k; every real token's one-hot vector carries "
        "Gaussian noise of deviation 0.3; 5-20 tokens, padded; test sequences as long as the "
        "training ones), and the engine's 1-D CNN with BN (3 x Conv1D(32, 3), max-pooling) "
        "on MNIST-1D. After training, the first BN layer's inputs for shuffled training "
        f"samples are cut into up to {FLUCTUATION_BATCHES} batches of "
        f"{', '.join(str(c) for c in MATCHED_VALUES)} values per statistic (real tokens; "
        "signals x 40 positions) and each batch's statistics compared with the layer's "
        "running statistics (momentum 0.99); the logits of 16 test samples are compared "
        "with other batch-mates, alone and across modes. Real data: an LSTM (32 units, "
        "kerasnorm's per-step BN cell with statistics for each of the 29 steps, or its LN "
        "cell) on JapaneseVowels (original split, 270 train and 370 test utterances of 7-29 "
        f"frames, 9 speakers), Adam 0.003, batch 32, 60 epochs, {len(real_seeds)} seed(s) "
        "an arm. " + note
    )
    caveats = [
        stats.ceiling_summary(checks),
        "Changed after the run at 6d7033a: (i) (b2) compared about 400 values per statistic "
        "(32 sequences' real tokens) with 1280 (32 signals x 40 positions), so the counts "
        "alone predicted a ratio of sqrt(3.2) = 1.8; it now compares both models at the same "
        "counts (400 decides; 120 and 1280 in the sensitivity table), measured after "
        "training on batches of the training data instead of during training (which also "
        "lets the engine train the seeds stacked); (ii) the 8-token vocabulary had none of "
        "the heavy tails PowerNorm describes, so the distractor tokens are now 60 with "
        "Zipfian frequencies; (iii) the rule said every run must converge where the median "
        "run decides; (iv) a real-data task (JapaneseVowels) was added; (v) seeds come in "
        "stacked blocks of 8 (8, up to 16). The rules were written after a one-seed pilot of "
        "this design at full size and were not changed by it: token model 88.4 % with BN "
        "and with LN (plateaus -0.02 and 0.03), CNN 96.9 %; at 400 values per statistic "
        "the fluctuations of the tokens over the CNN's were 0.72 (mean) and 0.58 (variance); "
        "vowels LSTM 96.5 % with per-step BN, 94.9 % with LN.",
        "The fluctuation is measured at the trained weights, against the trained running "
        "statistics: it is the spread of batch statistics BN would see at the end of "
        "training, not a trace over training as in Shen et al.'s Fig. 2.",
        "The rule reads the first BN layer, as Shen et al. (2020, Fig. 2) do (chosen after "
        "short trial runs, to follow the anchor): its inputs are the data, so its "
        "fluctuation is the data's; the running statistics of deeper "
        "layers also lag behind the drift of the layers below, which the all-layer means "
        "in the table mix in.",
        "The token model is a small stand-in for NLP's per-token layers, not a Transformer; "
        "the task (a majority count) is solvable by the mean over tokens, and the room "
        "below 100 % comes from the token noise: a model that had learned the rule exactly "
        "would still err where the noise hides a close count, so two arms near that limit "
        "would agree for want of room, which (b1), a non-inferiority check, would count "
        "for LN.",
        "The task changed after the full run before 6d7033a: without the noise both "
        "token arms sat at 98-100 %, where (b1) could not decide. The noise level was "
        "taken from C5's pilot; the thresholds were set with the new verdict scale, after "
        "the earlier runs had been seen. The verdict is now the four-way scale's: a "
        "failing (a) check no longer overrides (b) as it did in the earlier rule.",
        "PowerNorm's batches held 4K tokens; the largest count here is 1280.",
        "Real data: the vowels LSTMs test on utterances no longer than the training ones, "
        "so per-step BN has statistics for every test step; their part (a) is not measured.",
    ]
    return dict(
        checks=checks,
        alternatives=alternatives,
        headline=ACCURACY_CHECK,
        convergence=convergence,
        evidence=evidence,
        setup=setup,
        caveats=caveats,
        tables={
            "accuracy and fluctuation by arm": arms_table,
            "per-sample comparisons (largest absolute logit difference)": independence_table,
            FLUCTUATION_TABLE: _concat(by_values),
        },
        figures={
            "fig-c6-fluctuation": "Deviation of the first BN layer's batch statistics from its "
            "running statistics after training, by the number of values per statistic, token "
            f"model on the Zipfian sequences vs CNN on MNIST-1D (mean, {stats.INTERVAL}).",
            "fig-c6-per-sample": "Largest absolute difference of a sample's logits between two "
            "sets of batch-mates, alone vs in a batch, and training vs inference mode (the "
            "largest over seeds; exact zeros drawn at the floor).",
            "fig-c6-accuracy": "Test accuracy, BN vs LN: the token model on the sequence task and the LSTM on "
            f"JapaneseVowels (mean, {stats.INTERVAL}).",
        },
    )


def _concat(frames):
    return pandas.concat(frames, ignore_index=True) if frames else pandas.DataFrame()


# ---------------------------------------------------------------------------------------
# The figures.

#: Differences below this are drawn at it (a log axis has no zero).
FLOOR = 1e-9
_COLORS = {
    "tokens, BN": ("batch", 0),
    "tokens, LN": ("layer", 1),
    "MNIST-1D CNN, BN": ("cnn", 2),
    "vowels LSTM, per-step BN": ("batch", 0),
    "vowels LSTM, LN": ("layer", 1),
}


def _color(arm):
    name, index = _COLORS.get(arm, (arm, 3))
    return plots.color(name, index)


def figures(analysis: dict, out_dir) -> list:
    """Writes the three figures of `analysis` (from its tables only); returns the paths."""
    tables = {name: pandas.DataFrame.from_records(records) for name, records in analysis["tables"].items()}
    paths = []

    by_values = tables[FLUCTUATION_TABLE]
    fig, axes = plots.new_axes(ncols=2)
    for ax, label in zip(axes, FLUCTUATION.values()):
        subset = by_values[by_values["measure"] == label] if len(by_values) else by_values
        for arm, group in subset.groupby("arm", sort=True):
            group = group.sort_values("values_per_statistic")
            name, index = _COLORS.get(arm, (arm, 3))
            plots.interval_line(
                group["values_per_statistic"], group["mean"], group["low"], group["high"], arm, ax=ax,
                color_name=name, index=index,
            )  # fmt: skip
        ax.set_xscale("log")
        ax.set_xticks(list(MATCHED_VALUES))
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel("values per statistic (batch)")
        ax.set_ylabel(label)
        if ax.lines:
            ax.legend(fontsize=7, frameon=False)
    paths += plots.save_figure(fig, "fig-c6-fluctuation", out_dir, by_values)

    independence = tables["per-sample comparisons (largest absolute logit difference)"]
    fig, ax = plots.new_axes(width=6.0)
    columns = ["arm", "measure", "largest"]
    plotted = independence[columns].copy() if len(independence) else pandas.DataFrame(columns=columns)
    plotted["plotted"] = plotted["largest"].clip(lower=FLOOR)
    comparisons = list(INDEPENDENCE.values())
    arms = sorted(plotted["arm"].unique())
    for j, arm in enumerate(arms):
        group = plotted[plotted["arm"] == arm].set_index("measure").reindex(comparisons)
        x = np.arange(len(comparisons)) + (j - (len(arms) - 1) / 2) * 0.2
        ax.scatter(x, group["plotted"], color=_color(arm), label=arm, s=22, zorder=3)
    ax.set_yscale("log")
    ax.axhline(LN_TOLERANCE, color="#888888", linewidth=0.8, linestyle="--", label=f"LN's tolerance {LN_TOLERANCE:g}")
    ax.set_xticks(range(len(comparisons)))
    ax.set_xticklabels(comparisons, rotation=15, ha="right", fontsize=7)
    ax.set_ylabel(f"largest |logit difference| (floor {FLOOR:g})")
    ax.legend(fontsize=7, frameon=False)
    paths += plots.save_figure(fig, "fig-c6-per-sample", out_dir, plotted)

    arms_table = tables["accuracy and fluctuation by arm"]
    accuracy = arms_table[arms_table["measure"] == "test accuracy (%)"] if len(arms_table) else arms_table
    accuracy = accuracy[accuracy["arm"].str.startswith(("tokens", "vowels"))] if len(accuracy) else accuracy
    order = [arm for arm in ARMS.values() if arm in set(accuracy["arm"])]
    accuracy = accuracy.set_index("arm").reindex(order).reset_index() if len(accuracy) else accuracy
    fig, ax = plots.new_axes(width=max(3.2, 1.3 * len(accuracy)))
    plots.interval_bars(
        list(accuracy["arm"]),
        list(accuracy["mean"]),
        list(accuracy["low"]),
        list(accuracy["high"]),
        ax=ax,
        colors=[_color(a) for a in accuracy["arm"]],
    )
    ax.set_ylabel("test accuracy (%)")
    paths += plots.save_figure(fig, "fig-c6-accuracy", out_dir, accuracy)
    return paths


#: What a practitioner should take from each verdict (the report's front page).
PRACTICE = {
    'supported': (
        "For sequence models, LN matches BN's accuracy without batch statistics that fluctuate with the tokens in a batch: use LN."
    ),
    'partly supported': (
        "LN's advantages on sequences held in some of the tests only: LN remains the safe default for sequence models."
    ),
    'inconclusive': (
        'The study could not decide whether LN suits sequences better than BN here: LN remains the common default.'
    ),
    'not supported': (
        'On these sequence tasks LN showed no advantage over BN: choose by measurement, not by convention.'
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
