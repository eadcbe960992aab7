"""C5: batch norm does not suit recurrent networks, whose input length varies.

An LSTM with the norm inside the recurrence (`studies.engine.models`: Keras's `LSTMCell`,
kerasnorm's `BatchNormLSTMCell` with per-step or shared statistics, `LayerNormLSTMCell`)
is trained on the keyed sequence task (`studies.engine.data.sequences` with ``rule="keyed"``: the
first token names one of two marker groups, the label is that group's most frequent
marker, every token blurred by Gaussian noise), padded and masked, on lengths up to T and
tested on lengths up to 4T. The task ``c5_length_buckets`` trains as the engine does and
then scores the test set by sequence length: within the training lengths (<= T), beyond
them ((T, 2T], (2T, 4T]).

The task replaced the plain majority task of earlier runs (issue 11), where every arm
scored 98-100 % within the training lengths: at that ceiling the per-step and the shared
BN arms could not differ. The key carried from the first step to the last is the longer
dependency, and the token noise keeps room below 100 % for a model that has learned the
rule (two pilot seeds: LN 90-91 %, per-step BN 87 %, shared-statistics BN 62-66 % within
T; chance 25 %).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas

from studies.claims import Claim, check_profile
from studies.claims._sequence_common import train_keeping_model
from studies.engine import tasks, training
from studies.engine.config import RunConfig, concat
from studies.engine.config import grid as product
from studies.report import plots, stats

CLAIM_ID = "C5"
TITLE = "BN is not suitable for RNNs because the input size varies"
TASK = "c5_length_buckets"

# ---------------------------------------------------------------------------------------
# The checks (fixed before the full run).

#: Both checks compare accuracies in percentage points, paired by seed, against 3 pp: the
#: study's size of an accuracy difference that matters (C4's threshold too). The anchors
#: are qualitative (Ba et al. 2016 say per-step BN is needed and breaks past T_max; no
#: paper gives a size), so the threshold is a practical one: less would be lost in the
#: seed-to-seed spread of a single model; more would dismiss a handicap users notice.
WORKAROUND_PP = 3.0
DEGRADATION_PP = 3.0
CHANCE_PCT = 25.0  # 4 balanced classes
#: The pilot: two seeds of this design (every arm converged, plateau -0.018 to 0.038; the
#: machine shared, load 10-12 on 2 cores; engine unstacked, as for every custom task; 37-52
#: CPU-s a run). Check (1), per-step minus shared-statistics BN within T: 24.7 and 20.9 pp
#: (sd 2.7 pp: 15 seeds for a half-width of 1.5 pp, but an effect seven times its
#: threshold holds at far fewer); check (2), per-step BN's drop minus LN's: 0.5 and 1.9 pp
#: (sd 1.0 pp: 5 seeds). Five seeds per arm; the sequential plan adds one at a time up to
#: 6 (the cap is C5's share of the 45-minute budget).
SEED_PLAN = stats.SeedPlan(
    pilot=2, initial=5, block=1, cap=6,
    why="pilot (2 seeds of this design) sd of the paired differences 2.7 pp (check 1, effect about 23 pp) and "
        "1.0 pp (check 2): 5 seeds for a half-width of 1.5 pp in check 2; the sequential plan adds 1 at a time "
        "up to 6 (37-52 CPU-s a run)",
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
    """The runs of `profile`: the arms of `RULE_ARMS` (smoke: `SMOKE_ARMS`; `ARMS` also
    names the LSTM without norm, for runs of one's own) x seeds, every arm on the same
    seeds (the same data order), so that the checks compare arms seed by seed."""
    p = PROFILES[check_profile(profile)]
    base = dataclasses.replace(BASE, epochs=p["epochs"], num_samples=p["num_samples"])
    data_options = {**DATA_OPTIONS, "data.test_samples": p["test_samples"]}
    arms = {"smoke": SMOKE_ARMS, "quick": RULE_ARMS, "full": RULE_ARMS}[profile]
    runs = []
    for label in arms:
        norm, options = ARMS[label]
        runs.append(product(base, norm=[norm], options=[{**data_options, **options}], seed=list(p["seeds"])))
    return concat(*runs)


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


@tasks.register_task(TASK)
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
WORKAROUND_CHECK = "(1) per-step BN minus shared-statistics BN, test accuracy on lengths <= T (pp, paired by seed)"
DEGRADATION_CHECK = (
    "(2) per-step BN's accuracy drop from lengths <= T to > T minus LN's (pp, paired by seed)"
)
RULE = (
    "Decided before the runs, from CLAIMS.md; two decisive checks, each a per-seed paired "
    "difference with its 95% interval. (1) BN needs the per-step workaround: on test "
    "sequences within the training lengths (<= T), per-step BN's accuracy minus "
    f"shared-statistics BN's is at least {WORKAROUND_PP:g} pp. (2) Per-step BN still "
    "degrades more than LN past the training length: its drop of accuracy from <= T to > T "
    f"exceeds LN's by at least {DEGRADATION_PP:g} pp. A check is undecided while one of "
    "its two arms has not converged (every run's training loss on a plateau), or when both "
    f"arms sit within {stats.CEILING_MARGIN_PP:g} pp of 100 % or of chance ({CHANCE_PCT:g} %) "
    "(check 1 on lengths <= T, check 2 beyond T). Verdict on the four-way scale."
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


def _paired_check(ok, name, a, b, value, threshold, why, ceiling_value, ceiling_label):
    """Check `name`: arm `a` minus arm `b` in `value`, paired by seed, at least `threshold`
    pp; blocked while either arm has not converged (`stats.unconverged_arms`), or when both arms' `ceiling_value`
    accuracies sit at the ceiling or the floor."""
    arm_a, arm_b = ok[ok["arm"] == a], ok[ok["arm"] == b]
    effect = stats.estimate(stats.paired_differences(arm_a, arm_b, value) if len(arm_a) and len(arm_b) else [])
    pair = ok[ok["arm"].isin([a, b])]
    blockers = stats.unconverged_arms(pair, "arm")
    blockers.append(
        stats.ceiling_blocker(
            stats.estimate(arm_a[ceiling_value]), stats.estimate(arm_b[ceiling_value]), CHANCE_PCT, ceiling_label
        )
    )
    return stats.Check(
        name=name, effect=effect, threshold=threshold, kind="at_least", why=why, unit=" pp", blockers=tuple(blockers)
    )


def analyze(ok: pandas.DataFrame, runs) -> dict:
    """The checks of `RULE` from the claim's usable rows."""
    ok, note = _labelled(ok), runs.summary

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
    degradation = _paired_check(
        ok, DEGRADATION_CHECK, PER_STEP, LN, "drop_pp", DEGRADATION_PP, why,
        "pct_gt_T", "test accuracy > T, per-step BN vs LN",
    )  # fmt: skip
    checks = [workaround, degradation]

    evidence = [
        ("per-step BN's drop from <= T to > T minus LN's (paired by seed)", degradation.effect, " pp"),
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
    convergence = stats.convergence_table(ok, "arm")

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
        "differ only in inference). " + note
    )
    caveats = [
        stats.ceiling_summary(checks),
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
        "The task changed after the previous full run (issue 11): the plain majority task "
        "left every arm at 98-100 % within T, where check (1) could not decide. The noise "
        "level was chosen in a pilot of LN alone (0.6: near chance; 0.3: 82 % within T), "
        "before any BN arm was compared; the training set then grew from 4000 to 16000 "
        "sequences at batch 128 because LN kept fitting the smaller set (its loss never "
        "levelled off). The rules and thresholds were set with the new verdict scale, after "
        "the earlier runs had been seen.",
        "The LSTM without norm, an arm of the earlier runs outside the rule, is left out of "
        "the full profile to pay for seeds of the arms the checks compare.",
        "One small LSTM on one synthetic task; the published gains of recurrent BN are on "
        "larger models and real data.",
    ]
    return dict(
        checks=checks,
        headline=DEGRADATION_CHECK,
        convergence=convergence,
        evidence=evidence,
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
