"""C6: layer norm normalizes all units of a layer per sample, and is the norm of NLP.

Two measurements, both made by one task (``c6_statistics``) on three arms:

- **per sample** (LN eq. 3 of Ba et al. 2016): after training, the logits of the same test
  samples are computed with two different sets of batch-mates, alone (a batch of 1), and
  in training and in inference mode (`batch_independence`); the largest absolute
  difference is recorded. LN's must be float32 rounding; BN's training-mode output must
  depend on the batch-mates.
- **used in NLP** (Shen et al. 2020, PowerNorm): a token model (`token_model`: a per-token
  embedding and two 1-D convolutions over the padded, masked token sequence, each followed
  by the norm, then a masked mean over the tokens, as a small Transformer-free stand-in for
  NLP's per-token layers) trained with BN or LN on the synthetic sequence task; every few
  steps `kerasnorm.BatchStatisticsRecorder` records each BN layer's batch and running
  statistics, and `fluctuation` measures how far apart they are. The same is measured
  in the engine's 1-D CNN with BN on MNIST-1D, the vision-like reference, at the same
  batch size and number of steps.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import matplotlib.ticker
import numpy as np
import pandas
import tensorflow as tf
from keras import ops

import kerasnorm
from studies.claims import Claim, check_profile
from studies.claims._sequence_common import train_keeping_model
from studies.engine import models, tasks, training
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
#: two fluctuations (first BN layer) at least 1.5. Shen et al. (2020, Fig. 2) show a
#: several-fold gap between a Transformer on IWSLT14 and ResNet-20 on CIFAR-10; half again
#: as large is a weak form of their effect, beyond what the seed-to-seed spread can fake.
FLUCTUATION_RATIO = 1.5
CHANCE_PCT = 25.0  # 4 balanced classes in the sequence task
#: The pilot: two seeds of this design (every arm converged, plateau 0.008-0.028; the
#: machine shared, load 10-12 on 2 cores; engine unstacked) gave LN minus BN +1.15 and
#: +1.75 pp (BN 92.8 / 92.6 %, LN 94.0 / 94.35 %; paired sd 0.42 pp), ratios of the mean
#: fluctuation 1.33 and 1.69 (sd 0.26) and of the variance fluctuation 0.65 and 0.65, at
#: 66-68 CPU-s a seed for the three arms. `seeds_needed` asks for 4 seeds (b1: half-width
#: 1 pp), 3 and 2 (the ratios: half-width 0.75). A sd from two seeds is rough, hence the
#: sequential plan: two seeds at a time up to 8 while a check is undecided.
SEED_PLAN = stats.SeedPlan(
    pilot=2, initial=4, block=2, cap=8,
    why="pilot (2 seeds of this design) paired sd of LN minus BN 0.42 pp, of the fluctuation ratios 0.26 and "
        "0.004: 4, 3 and 2 seeds for half-widths of half the thresholds; 4 seeds, the sequential plan adds 2 at "
        "a time up to 8",
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
    model="cnn1d",  # sequences: this module's token model; mnist1d: the engine's cnn1d
    widths=(32, 32, 32),  # units of the embedding, filters of each convolution
    optimizer="adam",
    learning_rate=0.003,
    batch_size=32,  # sequences (about 400 real tokens) or signals per batch
)
#: The majority task (`studies.engine.data.sequences`: which of 4 marker tokens occurs most
#: often) with Gaussian noise of deviation 0.3 on every real token, and test sequences as
#: long as the training ones (5..20 tokens): C6 compares the norms on the training
#: distribution; longer test sequences are C5's question. Without the noise both arms sat
#: at 98-100 % (issue 11); with it, one pilot seed gave 91-92 %. C5's keyed task was tried
#: first: the token model, which sees the key only through the first tokens' convolution
#: windows, learned it too slowly (65 %, loss still falling after 1200 steps).
SEQUENCE_OPTIONS = {"data.max_test_len": 20, "data.token_noise": 0.3}
#: Statistics are recorded (and steps compiled together) every this many optimizer steps.
LOG_EVERY = 5
#: Arms: (dataset, norm) -> label.
ARMS = {
    ("sequences", "batch"): "tokens, BN",
    ("sequences", "layer"): "tokens, LN",
    ("mnist1d", "batch"): "MNIST-1D CNN, BN",
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
    the CNN with BN on MNIST-1D, each over the profile's seeds."""
    p = PROFILES[check_profile(profile)]
    base = dataclasses.replace(
        BASE, epochs=p["epochs"], steps_per_epoch=p["steps_per_epoch"], num_samples=p["num_samples"]
    )
    seeds = list(p["seeds"])
    tokens = product(base, dataset=["sequences"], options=[SEQUENCE_OPTIONS], norm=["batch", "layer"], seed=seeds)
    cnn = product(base, dataset=["mnist1d"], norm=["batch"], seed=seeds)
    return concat(tokens, cnn)


# ---------------------------------------------------------------------------------------
# The models.


def token_model(input_shape, num_classes, norm, widths=(32, 32, 32), momentum=0.99, kernel_size=3):
    """A per-token classifier over padded one-hot token sequences, taking ``[x, mask]``.

    ``Dense`` embedding, then ``Conv1D`` layers, each ``-> norm -> relu`` (the norm as in
    `studies.engine.models.norm_layer`: BN over the real tokens of the batch, its mask keeping
    padding out of the statistics; LN over each token's features), padded positions reset
    to zero after each layer (so the convolutions see them as zero padding), then the mean
    over the real tokens and a ``Dense`` layer giving logits.
    """
    x = keras.Input(shape=tuple(input_shape), name="x")
    mask = keras.Input(shape=tuple(input_shape)[:1], dtype="bool", name="mask")
    valid = ops.expand_dims(ops.cast(mask, "float32"), -1)
    use_bias = norm == "none"
    h = x
    for i, width in enumerate(widths):
        if i == 0:
            h = keras.layers.Dense(width, use_bias=use_bias, name="embedding")(h)
        else:
            h = keras.layers.Conv1D(width, kernel_size, padding="same", use_bias=use_bias, name=f"conv_{i}")(h)
        layer = models.norm_layer(norm, momentum=momentum, name=f"norm_{i}")
        if layer is not None:
            h = layer(h, mask=mask) if norm == "batch" else layer(h)
        h = keras.layers.Activation("relu", name=f"act_{i}")(h) * valid
    pooled = ops.sum(h, axis=1) / ops.maximum(ops.sum(valid, axis=1), 1.0)
    logits = keras.layers.Dense(num_classes, name="logits")(pooled)
    return keras.Model([x, mask], logits, name=f"tokens_{norm}")


def _prepare(config):
    """`studies.engine.training.prepare` with this claim's model on the sequences, and compiled
    to run `LOG_EVERY` steps per call (the recorder sees the last step of each)."""
    if config.dataset != "sequences":
        dataset, model = training.prepare(config)
    else:
        keras.backend.clear_session()
        tf.get_logger().setLevel("ERROR")
        training.configure_determinism(config.seed)
        dataset = training.load_dataset(config)
        model = token_model(dataset.input_shape, dataset.num_classes, config.norm, config.widths, config.bn_momentum)
    return dataset, training.compile_model(config, model, steps_per_execution=LOG_EVERY)


# ---------------------------------------------------------------------------------------
# The measurements.


def fluctuation(records: pandas.DataFrame, layers: dict, epochs: int) -> dict:
    """How far BN's batch statistics are from its running statistics, from the records of a
    `kerasnorm.BatchStatisticsRecorder` (``to_dataframe()``).

    Per recorded step and layer, averaged over the layer's features:
    ``|batch mean - running mean| / sqrt(running variance + epsilon)`` and
    ``|batch variance - running variance| / (running variance + epsilon)``. Shen et al.
    (2020, Fig. 2) plot the same distances, unscaled, for the first BN layer. The running
    statistics are those the step's batch is compared with: before the step's own update
    (recovered exactly from the momentum) and *debiased*, i.e. without the weight
    ``momentum ** step`` that the moving averages still give their initial values (as
    in Adam's bias correction). Without that, a running variance starting at 1 takes
    thousands of steps to forget its start when the batch variances are small, and the
    measure would show the initialization rather than the batches.

    Args:
        records: the recorder's rows (``step`` is the 0-based global step index: the
            number of updates before that step).
        layers: ``{layer name: (momentum, epsilon, initial mean, initial variance)}`` in
            the model's order (the first is "the first BN layer"); the initial values are
            per feature.
        epochs: the run's epochs; the summary reads the second half (``epoch >=
            epochs // 2``).

    Returns:
        Row columns, for each measure of `FLUCTUATION` (NaN and empty lists without
        layers or records): ``<measure>`` the first layer's over the second half,
        ``<measure>_all_layers`` the mean over the layers, ``<measure>_layers`` per layer
        and ``<measure>_epochs`` the first layer's per epoch.
    """
    out = {}
    for name in FLUCTUATION:
        out.update({name: math.nan, f"{name}_all_layers": math.nan, f"{name}_layers": [], f"{name}_epochs": []})
    records = records[records["step"] >= 1] if len(records) else records
    if not layers or not len(records):
        return out
    per_step = []
    for name, (keep, epsilon, mean_0, var_0) in layers.items():
        r = records[records["layer"] == name].sort_values(["step", "feature"])
        features = np.asarray(r["feature"], int)
        start = keep ** np.asarray(r["step"], np.float64)
        running = {}
        for stat, initial in (("mean", mean_0), ("variance", var_0)):
            batch = np.asarray(r[f"batch_{stat}"], np.float64)
            # moving = old * keep + batch * (1 - keep), and old = start * initial + (1 - start) * running.
            old = (np.asarray(r[f"moving_{stat}"], np.float64) - (1 - keep) * batch) / keep
            running[stat] = (old - start * np.asarray(initial, np.float64).ravel()[features]) / (1 - start)
        scale = np.maximum(running["variance"], 0.0) + epsilon
        per_step.append(
            pandas.DataFrame(
                {
                    "layer": name,
                    "step": r["step"].to_numpy(),
                    "epoch": r["epoch"].to_numpy(),
                    "c6/fluctuation_mean": np.abs(r["batch_mean"].to_numpy() - running["mean"]) / np.sqrt(scale),
                    "c6/fluctuation_variance": np.abs(r["batch_variance"].to_numpy() - running["variance"]) / scale,
                }
            )
            .groupby(["layer", "step", "epoch"], sort=False)[list(FLUCTUATION)]
            .mean()
            .reset_index()
        )
    steps = pandas.concat(per_step, ignore_index=True)
    later = steps[steps["epoch"] >= epochs // 2]
    first = steps[steps["layer"] == next(iter(layers))]
    for name in FLUCTUATION:
        per_layer = [float(later.loc[later["layer"] == layer, name].mean()) for layer in layers]
        out[name] = per_layer[0]
        out[f"{name}_all_layers"] = float(np.mean(per_layer))
        out[f"{name}_layers"] = per_layer
        out[f"{name}_epochs"] = [float(first.loc[first["epoch"] == e, name].mean()) for e in range(epochs)]
    return out


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


@tasks.register_task(TASK)
def statistics_task(config: RunConfig) -> dict:
    """Trains (`_prepare`) with a `kerasnorm.BatchStatisticsRecorder` on the BN layers
    (every `LOG_EVERY` steps), then adds the `fluctuation` and `batch_independence`
    columns."""
    recorder = kerasnorm.BatchStatisticsRecorder(every=LOG_EVERY)
    layers = {}

    def callbacks_for(model):
        for layer in model.layers:
            if isinstance(layer, kerasnorm.BatchNormalization):
                shape = layer.moving_mean.shape
                initializers = (layer.moving_mean_initializer, layer.moving_variance_initializer)
                layers[layer.name] = (layer.momentum, layer.epsilon, *(np.asarray(i(shape)) for i in initializers))
        return [recorder] if layers else []

    row, dataset, model = train_keeping_model(config, _prepare, callbacks_for)
    row.update(fluctuation(recorder.to_dataframe(), layers, config.epochs))
    row.update(batch_independence(model, dataset))
    return row


# ---------------------------------------------------------------------------------------
# The analysis.

INDEPENDENT_CHECK = "(a1) LN: largest logit difference of a sample across batch-mates, batch size and mode (per run)"
DEPENDENT_CHECK = "(a2) BN (both models): logit difference of a sample with other batch-mates, training mode (per run)"
ACCURACY_CHECK = "(b1) LN minus BN, test accuracy on the sequence task (pp, paired by seed)"
#: (b2) checks: fluctuation measure -> check name.
FLUCTUATION_CHECKS = {
    "c6/fluctuation_mean": "(b2) BN's batch-mean fluctuation (first BN layer), sequence task over the CNN (ratio per seed)",
    "c6/fluctuation_variance": "(b2) BN's batch-variance fluctuation (first BN layer), sequence task over the CNN "
    "(ratio per seed)",
}
RULE = (
    "Decided before the runs, from CLAIMS.md; every check is decisive, each an effect with "
    "its 95% interval over seeds against a stated size. (a1) Per sample: LN's largest logit "
    "difference of a sample with other batch-mates (training and inference mode), alone vs "
    f"in a batch, and between the modes is at most {LN_TOLERANCE:g} (float32 rounding); "
    f"(a2) BN's training-mode output changes with the batch-mates by at least {BN_DEPENDENCE:g}. "
    f"(b1) LN >= BN on the sequence task: LN's test accuracy minus BN's, paired by seed, is "
    f"at least -{NONINFERIORITY_PP:g} pp (a non-inferiority margin). (b2) BN's statistics "
    "fluctuate more on the sequence task than in the MNIST-1D CNN: the first BN layer's "
    "batch-mean and batch-variance deviations from its running statistics, each as the "
    f"ratio sequence task / CNN per seed, at least {FLUCTUATION_RATIO:g}. (b1) and (b2) are "
    "undecided while one of their arms has not converged (every run's training loss on a "
    f"plateau); (b1) also when both arms sit within {stats.CEILING_MARGIN_PP:g} pp of 100 % "
    f"or of chance ({CHANCE_PCT:g} %). Verdict on the four-way scale."
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


def _ratios(a, b, value):
    """Per-seed ratios ``a[value] / b[value]`` of two arms' runs (seeds both have, finite)."""
    merged = a[["seed", value]].merge(b[["seed", value]], on="seed", suffixes=("_a", "_b"), validate="one_to_one")
    ratio = merged[f"{value}_a"].astype(float) / merged[f"{value}_b"].astype(float)
    return ratio[np.isfinite(ratio)].to_numpy()


def analyze(ok: pandas.DataFrame, runs) -> dict:
    """The checks of `RULE` from the claim's usable rows."""
    ok, note = _label_arms(ok), runs.summary
    bn_tokens, ln_tokens, bn_cnn = (_arm(ok, label) for label in ARMS.values())
    tok_bn, tok_ln, cnn_bn = ARMS.values()

    def est(frame, column):
        return stats.estimate(frame[column]) if column in frame else stats.estimate([])

    ln_diffs = ln_tokens[list(INDEPENDENCE)].max(axis=1) if len(ln_tokens) else pandas.Series(dtype=float)
    bn_rows = ok[ok["norm"] == "batch"]
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
    fluct = {}
    for name, check_name in FLUCTUATION_CHECKS.items():
        fluct[name] = (est(bn_tokens, name), est(bn_cnn, name))
        ratio = _ratios(bn_tokens, bn_cnn, name) if len(bn_tokens) and len(bn_cnn) and name in ok else []
        checks.append(
            stats.Check(
                name=check_name, effect=stats.estimate(ratio), threshold=FLUCTUATION_RATIO, kind="at_least",
                why="half again as large: a weak form of the several-fold gap between a Transformer on "
                "IWSLT14 and ResNet-20 on CIFAR-10 in Shen et al. 2020, Fig. 2",
                unit="x", blockers=tuple(stats.unconverged_arms(bn_both, "arm")),
            )
        )  # fmt: skip
    checks += [
        stats.Check(
            name=INDEPENDENT_CHECK, effect=stats.estimate(ln_diffs), threshold=LN_TOLERANCE, kind="at_most",
            why="float32 rounding of logits of order 10 (LN eq. 3: the statistics are the sample's own)",
        ),
        stats.Check(
            name=DEPENDENT_CHECK, effect=stats.estimate(bn_dependence), threshold=BN_DEPENDENCE, kind="at_least",
            why="100 times LN's tolerance: BN's training-mode statistics are the batch's",
        ),
    ]  # fmt: skip

    (mean_tokens, mean_cnn), (var_tokens, var_cnn) = fluct.values()
    evidence = [
        ("LN minus BN, test accuracy on the sequence task (paired by seed)", accuracy_gap, " pp"),
        ("test accuracy on the sequences, token model with LN", acc_ln, "%"),
        ("test accuracy on the sequences, token model with BN", acc_bn, "%"),
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
    measures.update({f"{name}_all_layers": f"all BN layers: {label}" for name, label in FLUCTUATION.items()})
    arms_table = stats.summarize(_long(ok, list(measures), measures), ["arm", "measure"], "value")
    independence = _long(ok, list(INDEPENDENCE), INDEPENDENCE)
    independence_table = stats.summarize(independence, ["arm", "measure"], "value")
    largest = independence.groupby(["arm", "measure"], sort=True)["value"].max().reset_index(drop=True)
    independence_table["largest"] = largest.to_numpy() if len(independence) else []
    per_layer, per_epoch = [], []
    for name, label in FLUCTUATION.items():
        for suffix, index_name, frames in (("_layers", "layer", per_layer), ("_epochs", "epoch", per_epoch)):
            if name + suffix in ok:
                table = stats.summarize(_exploded(ok, name + suffix, index_name), ["arm", index_name], "value")
                columns = ["arm", "measure", index_name, "mean", "low", "high", "n"]
                frames.append(table.assign(measure=label)[columns])

    seeds = sorted(ok["seed"].unique()) if len(ok) else []
    steps = int((ok["epochs"] * ok["steps_per_epoch"]).max()) if len(ok) else 0
    samples = int(ok["num_samples"].max()) if len(ok) and "num_samples" in ok else 0
    setup = (
        f"Three arms, {len(seeds)} seed(s) each (the same seeds in every arm), {steps} Adam "
        f"steps (learning rate 0.003) at batch size 32, {samples} samples per data set (80 % "
        "train): "
        "a token model (one-hot tokens -> Dense(32) embedding -> norm -> ReLU "
        "-> 2 x [Conv1D(32, 3) -> norm -> ReLU] -> mean over the real tokens -> logits; "
        "padding masked out of BN's statistics and zeroed after each layer) with BN or LN "
        "on the synthetic sequence task (which of 4 marker tokens occurs most often; every "
        "real token's one-hot vector carries Gaussian noise of deviation 0.3; 5-20 tokens, "
        "padded; test sequences as long as the training ones), and the engine's "
        "1-D CNN with BN (3 x Conv1D(32, 3), max-pooling) on MNIST-1D. Every "
        f"{LOG_EVERY} steps each BN layer's batch statistics are compared with its running "
        "statistics (momentum 0.99; debiased for their initial values, see caveats); the "
        "numbers are the means over the recorded steps of the second half of training. "
        "After training, the logits of 16 test samples are compared with other "
        "batch-mates, alone and across modes. " + note
    )
    caveats = [
        stats.ceiling_summary(checks),
        "The running statistics are debiased (the weight momentum**step that the moving "
        "averages still give their initial values 0 and 1 is removed, as in Adam): the "
        "first layers' batch variances are far below 1, and without it the measure showed "
        "the slowly fading initial variance, not the batches. The correction was added "
        "after a two-seed trial at full size showed the artefact (a measure falling "
        "steadily over the epochs), before any verdict was computed.",
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
        "The task changed after the previous full run (issue 11): without the noise both "
        "token arms sat at 98-100 %, where (b1) could not decide. The noise level was "
        "taken from C5's pilot; the thresholds were set with the new verdict scale, after "
        "the earlier runs had been seen. The verdict is now the four-way scale's: a "
        "failing (a) check no longer overrides (b) as it did in the earlier rule.",
        "The fluctuation is measured at one batch size (32 sequences, about 400 real tokens; "
        "32 signals of 40 positions); PowerNorm's batches held 4K tokens.",
    ]
    return dict(
        checks=checks,
        headline=ACCURACY_CHECK,
        convergence=convergence,
        evidence=evidence,
        setup=setup,
        caveats=caveats,
        tables={
            "accuracy and fluctuation by arm": arms_table,
            "per-sample comparisons (largest absolute logit difference)": independence_table,
            "fluctuation by BN layer (second half of training)": _concat(per_layer),
            "fluctuation of the first BN layer by epoch": _concat(per_epoch),
        },
        figures={
            "fig-c6-fluctuation": "Deviation of the first BN layer's batch statistics from its "
            "running statistics per epoch, token model on the sequences vs CNN on MNIST-1D "
            f"(mean, {stats.INTERVAL}).",
            "fig-c6-per-sample": "Largest absolute difference of a sample's logits between two "
            "sets of batch-mates, alone vs in a batch, and training vs inference mode (the "
            "largest over seeds; exact zeros drawn at the floor).",
            "fig-c6-accuracy": f"Test accuracy on the sequence task, BN vs LN (mean, {stats.INTERVAL}).",
        },
    )


def _concat(frames):
    return pandas.concat(frames, ignore_index=True) if frames else pandas.DataFrame()


# ---------------------------------------------------------------------------------------
# The figures.

#: Differences below this are drawn at it (a log axis has no zero).
FLOOR = 1e-9
_COLORS = {"tokens, BN": ("batch", 0), "tokens, LN": ("layer", 1), "MNIST-1D CNN, BN": ("cnn", 2)}


def _color(arm):
    name, index = _COLORS.get(arm, (arm, 3))
    return plots.color(name, index)


def figures(analysis: dict, out_dir) -> list:
    """Writes the three figures of `analysis` (from its tables only); returns the paths."""
    tables = {name: pandas.DataFrame.from_records(records) for name, records in analysis["tables"].items()}
    paths = []

    by_epoch = tables["fluctuation of the first BN layer by epoch"]
    fig, axes = plots.new_axes(ncols=2)
    for ax, label in zip(axes, FLUCTUATION.values()):
        subset = by_epoch[by_epoch["measure"] == label] if len(by_epoch) else by_epoch
        for arm, group in subset.groupby("arm", sort=True):
            group = group.sort_values("epoch")
            name, index = _COLORS.get(arm, (arm, 3))
            plots.interval_line(
                group["epoch"], group["mean"], group["low"], group["high"], arm, ax=ax, color_name=name, index=index
            )
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        if ax.lines:
            ax.legend(fontsize=7, frameon=False)
    paths += plots.save_figure(fig, "fig-c6-fluctuation", out_dir, by_epoch)

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
    accuracy = accuracy[accuracy["arm"].str.startswith("tokens")] if len(accuracy) else accuracy
    fig, ax = plots.new_axes(width=3.2)
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
