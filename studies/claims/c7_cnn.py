"""C7 — LN is less effective in CNNs.

Design (after Ba et al. 2016, §6.7, and Wu & He 2018, Table 1): the same small CNN trained
with each norm at batch size 32, with the same optimizer and schedule for every arm, on two
datasets: MNIST-1D with a 1-D CNN and scikit-learn's 8x8 digits with a 2-D CNN. LN
normalizes each sample over all positions and channels of a layer (Ba et al.'s definition
for conv nets); GN over 8 groups of channels and all positions; BN each channel over the
batch and positions. Each run also logs the training set's accuracy in inference mode, so a
gap in test accuracy can be told apart from a gap in fitting.

Rule (fixed before looking at results): on a dataset, "BN beats LN" when BN's mean test
accuracy interval lies wholly above LN's. Supported if BN beats LN on both datasets; partly
supported if on one; not supported if on neither.
"""

from __future__ import annotations

import pandas

from studies import plots, stats
from studies.claims import _cnn_common as common
from studies.claims import check_profile
from studies.sweep import concat, grid as product
from studies.training import RunConfig

CLAIM_ID = "C7"
TITLE = "LN is less effective in CNNs"

# -- the grid, as data ------------------------------------------------------------------
BATCH_SIZE = 32  # samples, Wu & He's Table 1 setting
LEARNING_RATE = 0.05  # SGD with momentum 0.9, every arm and dataset
BN_MOMENTUM = 0.9  # of BN's moving averages: short runs leave a 0.99 average biased (C2)
#: dataset -> (model, num_samples (80% train; None: the fixed size), epochs) per profile
DATASETS = {
    "smoke": {"mnist1d": ("cnn1d", 200, 1), "digits": ("cnn2d", None, 1)},
    "quick": {"mnist1d": ("cnn1d", 1000, 3), "digits": ("cnn2d", None, 4)},
    "full": {"mnist1d": ("cnn1d", 4000, 8), "digits": ("cnn2d", None, 20)},
}
#: profile -> (norms, seeds)
ARMS = {
    "smoke": (("batch", "layer"), (0,)),
    "quick": (("batch", "layer"), (0, 1)),
    "full": (("none", "batch", "layer", "group"), tuple(range(7))),
}
NORM_LABELS = {"none": "none", "batch": "BN", "layer": "LN", "group": "GN"}
DATASET_LABELS = {"mnist1d": "MNIST-1D, 1-D CNN", "digits": "digits 8x8, 2-D CNN"}
TEST, TRAIN = "final/test/accuracy", "final/train_eval/accuracy"
ERROR_TABLE = "test and training error (%) by dataset and norm"


def grid(profile):
    norms, seeds = ARMS[check_profile(profile)]
    return concat(*(
        product(
            RunConfig(
                claim=CLAIM_ID,
                dataset=dataset,
                num_samples=num_samples,
                model=model,
                epochs=epochs,
                batch_size=BATCH_SIZE,
                optimizer="sgd",
                learning_rate=LEARNING_RATE,
                bn_momentum=BN_MOMENTUM,
                options={"eval_train": True},
            ),
            norm=list(norms),
            seed=list(seeds),
        )
        for dataset, (model, num_samples, epochs) in DATASETS[profile].items()
    ))


# -- the analysis -----------------------------------------------------------------------

RULE = (
    "On a dataset, BN beats LN when BN's mean test accuracy interval lies wholly above "
    "LN's. Supported if BN beats LN on both datasets; partly supported if on one; not "
    "supported if on neither."
)

ANCHOR = (
    "Wu & He 2018, Table 1, batch 32: top-1 error BN 23.6 %, LN 25.3 %.\n"
    "Ba et al. 2016, §6.7: BN outperforms LN on convolutional networks (no numbers given). "
    "Wu & He 2018, Table 1 (ResNet-50, ImageNet, batch 32, top-1 error): BN 23.6 %, LN 25.3 %, "
    "IN 28.4 %, GN 24.1 %: LN is 1.7 pp worse than BN."
)


def analyze(rows: pandas.DataFrame) -> dict:
    ok, failed = common.ok_rows(rows)
    if ok.empty:
        return common.no_runs(CLAIM_ID, TITLE, RULE, ANCHOR, failed)
    ok = ok.assign(test_error=common.error_pp(ok, TEST), train_error=common.error_pp(ok, TRAIN))
    by = ["dataset", "norm"]
    test = stats.summarize(ok, by, "test_error")
    train = stats.summarize(ok, by, "train_error")
    table = test.merge(train[by + ["mean"]].rename(columns={"mean": "train_error_pp"}), on=by)
    table = table.rename(columns={"mean": "test_error_pp"})
    table = common.ordered(table, {"dataset": list(DATASET_LABELS), "norm": list(NORM_LABELS)}, by)
    error = common.summary_lookup(test, by)

    datasets = [d for d in DATASET_LABELS if d in set(ok["dataset"])]
    parts, evidence = {}, []
    for dataset in datasets:
        bn, ln = error(dataset, "batch"), error(dataset, "layer")
        # Lower error is higher accuracy: BN beats LN when LN's error interval lies above.
        parts[
            f"{DATASET_LABELS[dataset]}: BN's test accuracy interval lies wholly above LN's "
            f"(error {bn.mean:.1f} vs {ln.mean:.1f} %)"
        ] = stats.clearly_greater(ln, bn)
        paired = ok[ok["dataset"] == dataset].pivot_table(index="seed", columns="norm", values="test_error")
        if {"batch", "layer"} <= set(paired):
            evidence.append((f"{DATASET_LABELS[dataset]}: LN test error minus BN (same seed)",
                             stats.estimate((paired["layer"] - paired["batch"]).dropna()), " pp"))
    for dataset in datasets:
        evidence += [(f"{DATASET_LABELS[dataset]}: {NORM_LABELS[n]} test error", error(dataset, n), " %")
                     for n in NORM_LABELS if n in set(ok[ok["dataset"] == dataset]["norm"])]
    verdict = stats.verdict_from(parts)

    settings = ok.groupby("dataset").first()
    data_text = "; ".join(
        f"{DATASET_LABELS[d]} ({_size(settings.loc[d])}, {settings.loc[d, 'epochs']} epochs)"
        for d in datasets
    )
    norms_text = ", ".join(NORM_LABELS[n] for n in NORM_LABELS if n in set(ok["norm"]))
    seeds = ok["seed"].nunique() if len(ok) else 0
    diverged = int(ok["diverged"].astype(bool).sum()) if len(ok) else 0
    return stats.make_analysis(
        claim=CLAIM_ID,
        title=TITLE,
        verdict=verdict,
        rule=RULE,
        parts=parts,
        evidence=evidence,
        anchor=ANCHOR,
        setup=(
            f"{data_text}. 1-D CNN: 3 conv layers of 32 filters; 2-D CNN: 16, 32, 32 filters; "
            f"kernel 3, conv -> norm -> ReLU, 2x max-pooling, global average pooling. Norms: "
            f"{norms_text}. LN normalizes each sample over all positions and channels of a layer "
            f"(Ba et al.) with a scale and offset per unit; GN uses 8 groups per layer; BN's "
            f"moving averages have momentum {BN_MOMENTUM:g}. Batch {BATCH_SIZE}, SGD with momentum 0.9 "
            f"at learning rate "
            f"{LEARNING_RATE:g}, the same for every arm; {seeds} seeds per arm."
        ),
        caveats=[
            f"{failed} run(s) failed and are left out; {diverged} diverged and count at chance "
            f"accuracy (90 % error).",
            "One learning rate for all arms (as in the published comparisons), not each arm's "
            "best: an arm that prefers another rate is handicapped.",
            "Small networks (3 conv layers, a few thousand weights) on small data: the "
            "published gap was measured on ResNet-50 and ImageNet, where LN's single statistic "
            "per sample must serve channels of very different scales.",
            f"BN's moving averages use momentum {BN_MOMENTUM:g} (PyTorch's default) rather than "
            "Keras's 0.99, whose average would still lean on its initial value after the few "
            "hundred steps of the short runs and so handicap BN at test time for a reason C2 "
            "studies, not this claim.",
            "Training-set error (inference mode) is in the table to show whether a gap comes "
            "from fitting or from generalization.",
        ],
        tables={ERROR_TABLE: table},
        figures={
            "fig-c7-cnn": (
                "Test error of the same CNN with each norm, per dataset (lower is better). "
                f"Whiskers: {stats.INTERVAL}."
            )
        },
    )


def _size(settings):
    n = settings["num_samples"]
    return "all 1797 samples, 75% train" if pandas.isna(n) else f"{int(n)} samples, 80% train"


# -- the figure -------------------------------------------------------------------------


def figures(analysis, out_dir):
    if not analysis["tables"].get(ERROR_TABLE):
        return []  # no run finished
    table = pandas.DataFrame(analysis["tables"][ERROR_TABLE])
    datasets = list(dict.fromkeys(table["dataset"]))
    fig, axes = plots.new_axes(width=3.4, height=3.0, ncols=max(1, len(datasets)))
    axes = axes if isinstance(axes, list) else [axes]
    for ax, dataset in zip(axes, datasets):
        part = table[table["dataset"] == dataset]
        plots.interval_bars([NORM_LABELS.get(n, n) for n in part["norm"]], part["test_error_pp"],
                            part["low"], part["high"], ax=ax,
                            colors=[plots.color(n, i) for i, n in enumerate(part["norm"])])
        ax.set_title(DATASET_LABELS.get(dataset, dataset), fontsize=9)
        ax.set_xlabel("normalization")
        ax.set_ylabel("test error (%)")
    fig.tight_layout()
    data = table[["dataset", "norm", "test_error_pp", "low", "high", "n"]].rename(
        columns={"test_error_pp": "mean"})
    return plots.save_figure(fig, "fig-c7-cnn", out_dir, data)
