"""C5: batch norm does not suit recurrent networks, whose input length varies.

An LSTM with the norm inside the recurrence (`studies.models`: Keras's `LSTMCell`,
kerasnorm's `BatchNormLSTMCell` with per-step or shared statistics, `LayerNormLSTMCell`)
is trained on the synthetic sequence task (`studies.data.sequences`: which marker token
occurs most often), padded and masked, on lengths up to T and tested on lengths up to 4T.
The task ``c5_length_buckets`` trains as the engine does and then scores the test set by
sequence length: within the training lengths (<= T), beyond them ((T, 2T], (2T, 4T]).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas

from studies import plots, stats, sweep, training
from studies.claims import check_profile
from studies.claims._sequence_common import train_keeping_model, usable_rows
from studies.training import RunConfig

CLAIM_ID = "C5"
TITLE = "BN is not suitable for RNNs because the input size varies"
TASK = "c5_length_buckets"

# ---------------------------------------------------------------------------------------
# The grid.

TRAIN_LEN = 20  # T: the longest training sequence (tokens); BN keeps statistics for T steps
TEST_LEN = 4 * TRAIN_LEN  # the longest test sequence
PROFILES = {
    # seeds; passes over the training set; num_samples (80% train, 20% test)
    "smoke": dict(seeds=(0,), epochs=1, num_samples=300),
    "quick": dict(seeds=(0, 1), epochs=3, num_samples=1000),
    "full": dict(seeds=tuple(range(5)), epochs=8, num_samples=5000),
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
    batch_size=32,  # sequences per batch
)
DATA_OPTIONS = {"data.max_train_len": TRAIN_LEN, "data.max_test_len": TEST_LEN}
#: Arms: label -> (norm, model options).
ARMS = {
    "LSTM, no norm": ("none", {}),
    "BN, statistics shared over time": ("batch", {"model.share_statistics": True}),
    "BN, per-step statistics (T reused beyond)": ("batch", {}),
    "LN": ("layer", {}),
}
#: The arms the rule compares; the quick profile runs only these.
RULE_ARMS = ("BN, statistics shared over time", "BN, per-step statistics (T reused beyond)", "LN")
SMOKE_ARMS = ("BN, per-step statistics (T reused beyond)", "LN")
#: Test-length buckets: column suffix -> (shortest, longest) length, in tokens.
BUCKETS = {
    "le_T": (1, TRAIN_LEN),
    "T_2T": (TRAIN_LEN + 1, 2 * TRAIN_LEN),
    "2T_4T": (2 * TRAIN_LEN + 1, TEST_LEN),
    "gt_T": (TRAIN_LEN + 1, TEST_LEN),
}
BUCKET_LABELS = {"le_T": "<= T", "T_2T": "(T, 2T]", "2T_4T": "(2T, 4T]", "gt_T": "> T"}
#: Width of the length bins of the accuracy-by-length curve, in tokens.
LENGTH_BIN = 10


def grid(profile) -> list[RunConfig]:
    """The runs of `profile`: each arm of `ARMS` x seeds (quick: `RULE_ARMS`, smoke:
    `SMOKE_ARMS`; each RNN run spends about 10 s tracing its functions)."""
    p = PROFILES[check_profile(profile)]
    base = dataclasses.replace(BASE, epochs=p["epochs"], num_samples=p["num_samples"])
    arms = {"smoke": SMOKE_ARMS, "quick": RULE_ARMS, "full": tuple(ARMS)}[profile]
    runs = []
    for label in arms:
        norm, options = ARMS[label]
        runs.append(sweep.grid(base, norm=[norm], options=[{**DATA_OPTIONS, **options}], seed=list(p["seeds"])))
    return sweep.concat(*runs)


# ---------------------------------------------------------------------------------------
# The measurement.


def accuracy_by_length(correct, lengths) -> dict:
    """Row columns from per-sample correctness and sequence lengths: ``c5/accuracy_<bucket>``
    and ``c5/count_<bucket>`` for each of `BUCKETS`, ``c5/accuracy_by_length`` (per bin of
    `LENGTH_BIN` tokens, NaN for an empty bin) and ``c5/length_bin_upper`` (the bins'
    longest lengths)."""
    correct, lengths = np.asarray(correct, bool), np.asarray(lengths)
    row = {}
    for name, (low, high) in BUCKETS.items():
        inside = (lengths >= low) & (lengths <= high)
        row[f"c5/accuracy_{name}"] = float(correct[inside].mean()) if inside.any() else float("nan")
        row[f"c5/count_{name}"] = int(inside.sum())
    uppers = list(range(LENGTH_BIN, TEST_LEN + 1, LENGTH_BIN))
    row["c5/accuracy_by_length"] = [
        float(correct[(lengths > u - LENGTH_BIN) & (lengths <= u)].mean())
        if ((lengths > u - LENGTH_BIN) & (lengths <= u)).any()
        else float("nan")
        for u in uppers
    ]
    row["c5/length_bin_upper"] = uppers
    return row


@training.register_task(TASK)
def length_buckets_task(config: RunConfig) -> dict:
    """The engine's training run, then the test accuracy by sequence length
    (`accuracy_by_length`; NaN for a run that diverged)."""
    row, dataset, model = train_keeping_model(config)
    logits = model.predict(training.inputs(dataset, "test"), batch_size=training.EVAL_BATCH_SIZE, verbose=0)
    correct = np.argmax(logits, axis=-1) == dataset.y_test
    columns = accuracy_by_length(correct, dataset.mask_test.sum(axis=1))
    if row["diverged"]:
        columns = {k: (float("nan") if k.startswith("c5/accuracy_") else v) for k, v in columns.items()}
        columns["c5/accuracy_by_length"] = [float("nan")] * len(columns["c5/length_bin_upper"])
    row.update(columns)
    return row


# ---------------------------------------------------------------------------------------
# The analysis.

SHARED, PER_STEP, LN = RULE_ARMS
RULE = (
    "Decided before the runs, from CLAIMS.md. (1) BN needs the per-step workaround: on test "
    "sequences within the training lengths (<= T) per-step BN's accuracy interval lies "
    "wholly above shared-statistics BN's, or shared-statistics BN is unstable (a run "
    "diverged or failed while none of per-step BN's did). (2) Per-step BN still degrades "
    "more than LN past the training length: the drop of accuracy from <= T to > T, per "
    "run, is larger for per-step BN with the intervals separated. Both -> supported, one "
    "-> partly supported, none -> not supported."
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
    column = "opt/model.share_statistics"
    shared = rows[column].eq(True) if column in rows else [False] * len(rows)
    rows["arm"] = [_arm_of(n, s) for n, s in zip(rows["norm"], shared)]
    for name in BUCKETS:
        column = f"c5/accuracy_{name}"
        rows[f"pct_{name}"] = rows[column] * 100.0 if column in rows else np.nan
    rows["drop_pp"] = rows["pct_le_T"] - rows["pct_gt_T"]
    return rows


def _arm_order(arms):
    known = [a for a in ARMS if a in set(arms)]
    return known + sorted(set(arms) - set(known))


def analyze(rows: pandas.DataFrame) -> dict:
    """The verdict of `RULE` from the claim's rows (only ``status == "ok"``)."""
    ok, note = usable_rows(rows)
    failed = rows[rows["status"] != "ok"] if len(rows) else rows
    ok = _labelled(ok) if len(ok) else ok.assign(arm=[], drop_pp=[], **{f"pct_{b}": [] for b in BUCKETS})
    failed_arms = _labelled(failed)["arm"].tolist() if len(failed) else []

    def est(arm, column):
        return stats.estimate(ok.loc[ok["arm"] == arm, column])

    def unstable(arm):
        diverged = ok.loc[ok["arm"] == arm, "diverged"].fillna(False).astype(bool).sum() if len(ok) else 0
        return bool(diverged) or arm in failed_arms

    in_shared, in_step = est(SHARED, "pct_le_T"), est(PER_STEP, "pct_le_T")
    drop_step, drop_ln = est(PER_STEP, "drop_pp"), est(LN, "drop_pp")
    part_1 = stats.clearly_greater(in_step, in_shared) or (unstable(SHARED) and not unstable(PER_STEP))
    part_2 = stats.clearly_greater(drop_step, drop_ln)
    parts = {
        "(1) BN needs the per-step workaround: per-step BN clearly above shared-statistics "
        "BN on test lengths <= T, or shared-statistics BN unstable": part_1,
        "(2) per-step BN's accuracy drops more than LN's from <= T to > T (intervals separated)": part_2,
    }
    verdict = stats.verdict_from(parts)

    evidence = [
        ("accuracy drop from <= T to > T, per-step BN", drop_step, " pp"),
        ("accuracy drop from <= T to > T, LN", drop_ln, " pp"),
        ("test accuracy <= T, per-step BN", in_step, "%"),
        ("test accuracy <= T, shared-statistics BN", in_shared, "%"),
        ("accuracy drop from <= T to > T, shared-statistics BN", est(SHARED, "drop_pp"), " pp"),
        ("accuracy drop from <= T to > T, LSTM without norm", est("LSTM, no norm", "drop_pp"), " pp"),
    ]

    long = pandas.concat(
        [
            pandas.DataFrame({"arm": ok["arm"], "bucket": BUCKET_LABELS[name], "value": ok[f"pct_{name}"]})
            for name in BUCKETS
        ]
        + [pandas.DataFrame({"arm": ok["arm"], "bucket": "drop <= T to > T (pp)", "value": ok["drop_pp"]})],
        ignore_index=True,
    )
    buckets_table = stats.summarize(long, ["arm", "bucket"], "value")
    by_length = pandas.DataFrame.from_records(
        [
            {"arm": arm, "length_upper": int(u), "value": float(v) * 100.0}
            for arm, uppers, values in zip(
                ok["arm"], ok.get("c5/length_bin_upper", []), ok.get("c5/accuracy_by_length", [])
            )
            for u, v in zip(uppers, values)
        ],
        columns=["arm", "length_upper", "value"],
    )
    length_table = stats.summarize(by_length, ["arm", "length_upper"], "value")
    counts = {name: int(ok[f"c5/count_{name}"].iloc[0]) for name in BUCKETS if f"c5/count_{name}" in ok and len(ok)}

    seeds = sorted(ok["seed"].unique()) if len(ok) else []
    epochs = int(ok["epochs"].max()) if len(ok) else 0
    steps = int(ok["steps"].max()) if len(ok) else 0
    setup = (
        f"An LSTM (32 units, one layer, its last state classified) with the norm inside the "
        "recurrence, trained with Adam (learning rate 0.003, batch 32) for "
        f"{epochs} epochs ({steps} steps) on the synthetic sequence task (which of 4 "
        f"marker tokens occurs most often), padded and masked: training lengths 5 to T = "
        f"{TRAIN_LEN}, test lengths 5 to 4T = {TEST_LEN} (test sequences per bucket: "
        + ", ".join(f"{BUCKET_LABELS[k]} {v}" for k, v in counts.items())
        + f"). Arms: {', '.join(_arm_order(ok['arm'].unique()) if len(ok) else [])}; "
        f"{len(seeds)} seed(s) each. BN is Cooijmans et al.'s cell (kerasnorm.BatchNormLSTMCell: "
        "gammas start at 0.1, padded steps kept out of the batch statistics); per-step BN "
        f"keeps moving statistics for steps 1..T and reuses step T's beyond; the shared arm "
        "keeps one set for all steps (in training both normalize each step with its own "
        "batch statistics, so they differ only in inference). " + note
    )
    caveats = [
        "Per-step BN updates each step's moving statistics once per batch, shared BN its "
        "single set once per step of every sequence, so per-step estimates need more "
        "training steps to converge (momentum 0.99): in a short run (the quick profile) "
        "per-step BN can be near chance in inference while training well.",
        "Part (1) compares the BN arms within the training lengths, where per-step "
        "statistics exist for every step; if every arm is near 100% there it cannot "
        "separate them, and how the two BN arms differ beyond T (in the table) is not "
        "part of the rule.",
        "The task needs a count carried over the whole sequence, so every arm loses accuracy "
        "on longer test sequences; the claim is about BN's extra loss, hence the drop "
        "compared with LN's.",
        "One small LSTM on one synthetic task; the published gains of recurrent BN are on "
        "larger models and real data.",
    ]
    return stats.make_analysis(
        claim=CLAIM_ID,
        title=TITLE,
        verdict=verdict,
        rule=RULE,
        parts=parts,
        evidence=evidence,
        anchor=ANCHOR,
        setup=setup,
        caveats=caveats,
        tables={"test accuracy (%) by length bucket": buckets_table, "test accuracy (%) by length": length_table},
        figures={
            "fig-c5-length": "Test accuracy by sequence length (bins of "
            f"{LENGTH_BIN} tokens), training lengths up to T = {TRAIN_LEN} (dashed line) "
            f"(mean, {stats.INTERVAL}; axis 0-100%).",
            "fig-c5-drop": f"Accuracy drop from test lengths <= T to > T per arm (mean, {stats.INTERVAL}).",
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
}
#: Arm -> (palette name, fallback index) for `plots.color`.
_COLORS = {
    "LSTM, no norm": ("none", 7),
    "BN, statistics shared over time": ("keras_batch", 5),
    "BN, per-step statistics (T reused beyond)": ("batch", 0),
    "LN": ("layer", 1),
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
    drop = buckets[buckets["bucket"] == "drop <= T to > T (pp)"] if len(buckets) else buckets
    drop = drop.set_index("arm").reindex(_arm_order(drop["arm"].unique()) if len(drop) else []).reset_index()
    fig, ax = plots.new_axes(width=4.0)
    colors = [plots.color(*_COLORS.get(arm, (arm, 2))) for arm in drop["arm"]]
    labels = [_SHORT.get(arm, arm) for arm in drop["arm"]]
    plots.interval_bars(labels, list(drop["mean"]), list(drop["low"]), list(drop["high"]), ax=ax, colors=colors)
    ax.axhline(0, color="#888888", linewidth=0.8)
    ax.set_ylabel("accuracy drop, <= T to > T (pp)")
    paths += plots.save_figure(fig, "fig-c5-drop", out_dir, drop)
    return paths
