"""C4 — BN depends on the mini-batch size; too small is unstable.

Design (after Wu & He 2018, Fig. 1): the same 1-D CNN on MNIST-1D trained with each norm at
batch sizes from 2 to 128 for the same number of epochs, the learning rate scaled linearly
with the batch size (SGD with momentum; the linear scaling rule keeps the noise of an
update comparable across sizes, so a norm that does not depend on the batch should come out
flat). Each run logs the test accuracy in inference mode (moving statistics) and in
training mode, where every test batch of the training batch size is normalized with its own
statistics, as during training.

Rule (fixed before looking at results): BN "degrades" when its test error at the smallest
batch size is at least `THRESHOLD_PP` above its error at `REFERENCE_BATCH` with separated
intervals; LN and GN "stay flat" when their mean error changes by less than `THRESHOLD_PP`
between the same two sizes. Supported if BN degrades and LN and GN stay flat; partly
supported if BN degrades but LN or GN changes as much; not supported if BN does not degrade.
"""

from __future__ import annotations

import dataclasses

import pandas

from studies import plots, stats, training
from studies.claims import _cnn_common as common
from studies.claims import check_profile
from studies.sweep import concat, grid as product
from studies.training import RunConfig

CLAIM_ID = "C4"
TITLE = "BN depends on the mini-batch size; too small is unstable"

# -- the grid, as data ------------------------------------------------------------------
BASE_LR = 0.05  # SGD learning rate at batch size BASE_BATCH; scaled linearly with the batch
BASE_BATCH = 32  # samples
REFERENCE_BATCH = 32  # samples: the "normal" batch of Wu & He's comparison
THRESHOLD_PP = 3.0  # percentage points of test error: "several pp worse"
MOMENTUM = 0.9  # moving-average momentum of BN and of batch renorm's statistics (see caveats)
#: profile -> (norms, batch sizes in samples, seeds, num_samples of MNIST-1D (80% train), epochs)
PROFILES = {
    "smoke": (("batch", "layer"), (2, 32), (0,), 200, 1),
    "quick": (("batch", "layer"), (2, 32), (0, 1), 1000, 2),
    "full": (("none", "batch", "layer", "group", "batch_renorm"), (2, 4, 8, 32, 128), tuple(range(5)), 4000, 3),
}
NORM_LABELS = {"none": "none", "batch": "BN", "layer": "LN", "group": "GN", "batch_renorm": "batch renorm"}
ERROR_TABLE = "test error (%) by norm and batch size"
#: The metric columns a run adds to the engine's (test error in two modes).
EVAL_MODE, BATCH_MODE = "final/test/accuracy", "c4/test_accuracy_batch_stats"


def learning_rate(batch_size):
    """The linear scaling rule: `BASE_LR` at `BASE_BATCH` samples, proportional to the batch."""
    return BASE_LR * batch_size / BASE_BATCH


def grid(profile):
    norms, sizes, seeds, num_samples, epochs = PROFILES[check_profile(profile)]
    base = RunConfig(
        claim=CLAIM_ID,
        task="c4_batch_size",
        dataset="mnist1d",
        num_samples=num_samples,
        model="cnn1d",
        epochs=epochs,
        optimizer="sgd",
        bn_momentum=MOMENTUM,
        renorm_momentum=MOMENTUM,
    )
    return concat(*(
        product(dataclasses.replace(base, batch_size=b, learning_rate=learning_rate(b)),
                norm=list(norms), seed=list(seeds))
        for b in sizes
    ))


# -- the task ---------------------------------------------------------------------------


@training.register_task("c4_batch_size")
def batch_size_run(config: RunConfig) -> dict:
    """Trains like the default task, then adds the test accuracy in training mode with
    batches of the training batch size (``c4/test_accuracy_batch_stats``; NaN if the run
    diverged)."""
    row = training.base_row(config)
    dataset, model = training.prepare(config)
    row.update(training.fit_and_log(config, dataset, model))
    row[BATCH_MODE] = float("nan") if row["diverged"] else common.batch_statistics_accuracy(
        model, dataset.x_test, dataset.y_test, config.batch_size
    )
    return row


# -- the analysis -----------------------------------------------------------------------

RULE = (
    "BN degrades when its test error at the smallest batch size is at least "
    f"{THRESHOLD_PP:g} pp above its error at batch {REFERENCE_BATCH}, with separated intervals; LN "
    f"and GN stay flat when their mean error changes by less than {THRESHOLD_PP:g} pp "
    "between the same sizes. Supported if BN degrades and LN and GN stay flat; partly "
    "supported if BN degrades but LN or GN changes as much; not supported if BN does "
    "not degrade. Errors are in inference mode."
)

ANCHOR = (
    "Wu & He 2018, Fig. 1: BN's top-1 error rises from 23.6 % at batch 32 to 34.7 % at 2; "
    "GN stays at 24.1 %.\n"
    "Wu & He 2018, Fig. 1 (ResNet-50, ImageNet top-1 error, batch per GPU 32/16/8/4/2): "
    "BN 23.6/23.7/24.8/27.3/34.7 %, GN 24.1/24.2/24.0/24.2/24.1 %; batch renorm at 4: 26.3 %. "
    "BN loses 11.1 pp from batch 32 to 2, GN stays within 0.2 pp."
)


def _seed_differences(rows, norm, column, small, reference):
    """Per-seed ``error(small) - error(reference)`` of `norm` (seeds present at both)."""
    part = rows[rows["norm"] == norm].pivot_table(index="seed", columns="batch_size", values=column)
    if small not in part or reference not in part:
        return []
    return list((part[small] - part[reference]).dropna())


def analyze(rows: pandas.DataFrame) -> dict:
    ok, failed = common.ok_rows(rows)
    if ok.empty:
        return common.no_runs(CLAIM_ID, TITLE, RULE, ANCHOR, failed)
    ok = ok.assign(
        eval_error=common.error_pp(ok, EVAL_MODE),
        batch_error=common.error_pp(ok, BATCH_MODE),
    )
    by = ["norm", "batch_size"]
    eval_table = stats.summarize(ok, by, "eval_error")
    batch_table = stats.summarize(ok, by, "batch_error")
    table = eval_table.merge(batch_table, on=by, suffixes=("", "_batch_stats"))
    table = table.drop(columns="n_batch_stats").rename(
        columns={"mean": "error_pp", "mean_batch_stats": "batch_stats_error_pp"}
    )
    table = common.ordered(table, {"norm": list(NORM_LABELS)}, by)
    error = common.summary_lookup(eval_table, by)

    sizes = sorted(int(b) for b in ok["batch_size"].unique()) if len(ok) else [REFERENCE_BATCH]
    small, ref = sizes[0], REFERENCE_BATCH
    norms = [n for n in NORM_LABELS if n in set(ok.get("norm", []))]
    bn_small, bn_ref = error("batch", small), error("batch", ref)
    bn_degrades = bn_small.mean - bn_ref.mean >= THRESHOLD_PP and stats.clearly_greater(bn_small, bn_ref)
    parts = {
        f"BN's test error at batch {small} is at least {THRESHOLD_PP:g} pp above its error at "
        f"batch {ref} ({bn_small.mean:.1f} vs {bn_ref.mean:.1f} %), intervals separated": bn_degrades
    }
    for norm in ("layer", "group"):
        if norm in norms:
            a, b = error(norm, small), error(norm, ref)
            flat = a.n > 0 and b.n > 0 and abs(a.mean - b.mean) < THRESHOLD_PP
            parts[
                f"{NORM_LABELS[norm]}'s mean test error changes by less than {THRESHOLD_PP:g} pp "
                f"between batch {small} and {ref} ({a.mean:.1f} vs {b.mean:.1f} %)"
            ] = flat
    flat_parts = list(parts.values())[1:]
    verdict = "not supported" if not bn_degrades else (
        "supported" if all(flat_parts) else "partly supported"
    )

    evidence = [
        (f"{NORM_LABELS[norm]}: test error at batch {small} minus at batch {ref} (same seed)",
         stats.estimate(_seed_differences(ok, norm, "eval_error", small, ref)), " pp")
        for norm in sorted(norms, key=lambda n: n != "batch")  # BN's first: the summary's key number
    ]
    evidence += [(f"{NORM_LABELS[norm]}: test error at batch {b}", error(norm, b), " %")
                 for norm in ("batch", "batch_renorm", "layer", "group") if norm in norms
                 for b in (small, ref)]
    evidence.append((f"BN: test error at batch {small} with the test batch's own statistics",
                     common.summary_lookup(batch_table, by)("batch", small), " %"))

    norms_text = ", ".join(NORM_LABELS[n] for n in norms)
    seeds = ok["seed"].nunique() if len(ok) else 0
    first = ok.iloc[0] if len(ok) else None
    setup = (
        f"1-D CNN (3 conv layers of {_widths(first)} filters, kernel 3, conv -> norm -> ReLU, "
        f"max-pooling, global average pooling) on MNIST-1D "
        f"({_value(first, 'num_samples')} samples, 80% train); norms: {norms_text}; batch "
        f"sizes {', '.join(map(str, sizes))}; SGD with momentum 0.9 at learning rate "
        f"{BASE_LR:g} x batch / {BASE_BATCH} (linear scaling); "
        f"{_value(first, 'epochs')} epochs for every batch size; {seeds} seeds per arm. "
        f"BN and batch renorm moving averages with momentum {MOMENTUM:g}; batch renorm clips "
        f"r to [1/3, 3] and d to [-5, 5] (Keras defaults, no warm-up). Test error is measured "
        f"in inference mode (moving statistics) and, for the figure's right panel, in "
        f"training mode with test batches of the training batch size."
    )
    steps = {int(b): int(s) for b, s in ok.groupby("batch_size")["steps"].max().items()} if len(ok) else {}
    diverged = int(ok["diverged"].astype(bool).sum()) if len(ok) else 0
    caveats = [
        f"{failed} run(s) failed and are left out; {diverged} diverged and count at chance "
        f"accuracy (90 % error).",
        "Equal epochs mean very unequal step counts (" + ", ".join(
            f"batch {b}: {s} steps" for b, s in steps.items()) + "): the largest batches "
        "underfit at this budget, which is why the rule compares the smallest batch with "
        f"batch {ref} only. Even at batch {ref} an arm may not have converged, and then it "
        "gains at the smallest batch from the extra steps alone: read a norm whose error "
        "falls as the batch shrinks that way, not as a benefit of small batches.",
        "In a CNN the batch statistics pool the batch and the positions: at batch 2 each "
        "channel's statistics still average 2 x 40 values in the first layer (2 x 10 in the "
        "last), more than a batch of 2 gives an MLP, so the effect is expected to be milder "
        "than in a deep ImageNet network whose last maps are 7 x 7.",
        f"The moving-average momentum is {MOMENTUM:g} (PyTorch's default) rather than Keras's "
        "0.99: with equal epochs the largest batches take few steps, and a 0.99 average "
        "would still hold much of its initial value (that bias is C2's subject, not C4's).",
        "Only MNIST-1D: the digits set was left out of this claim to keep the batch-2 runs "
        "within the budget; C7 uses it.",
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
        tables={ERROR_TABLE: table},
        figures={
            "fig-c4-batch-size": (
                "Test error against the batch size (log scale), learning rate scaled with the "
                "batch, equal epochs. Left: inference mode (moving statistics); right: "
                "training mode, each test batch of the training batch size normalized with its "
                f"own statistics. Bands: {stats.INTERVAL}."
            )
        },
    )


def _value(row, column):
    # Columns holding NaN elsewhere (another claim's rows) come back as floats.
    return "?" if row is None else int(row[column])


def _widths(row):
    widths = None if row is None else row.get("widths")
    return "x".join(map(str, widths)) if widths else "32"


# -- the figure -------------------------------------------------------------------------


def figures(analysis, out_dir):
    if not analysis["tables"].get(ERROR_TABLE):
        return []  # no run finished
    table = pandas.DataFrame(analysis["tables"][ERROR_TABLE])
    panels = (("inference mode (moving statistics)", "error_pp", "low", "high"),
              ("training mode (test batch statistics)", "batch_stats_error_pp",
               "low_batch_stats", "high_batch_stats"))
    fig, axes = plots.new_axes(width=4.2, height=3.2, ncols=2)
    plotted = []
    for ax, (title, mean, low, high) in zip(axes, panels):
        for i, (norm, part) in enumerate(table.groupby("norm", sort=False)):
            plots.interval_line(part["batch_size"], part[mean], part[low], part[high],
                                NORM_LABELS.get(norm, norm), ax=ax, color_name=norm, index=i)
            plotted.append(pandas.DataFrame({
                "mode": title, "norm": norm, "batch_size": part["batch_size"],
                "mean": part[mean], "low": part[low], "high": part[high], "n": part["n"],
            }))
        ax.set_xscale("log", base=2)
        sizes = sorted(table["batch_size"].unique())
        ax.set_xticks(sizes)
        ax.set_xticklabels([str(int(b)) for b in sizes])
        ax.set_xlabel("batch size (samples, log scale)")
        ax.set_ylabel("test error (%)")
        ax.set_title(title, fontsize=9)
    # One scale for both panels, so the modes compare by eye.
    low = min(ax.get_ylim()[0] for ax in axes)
    high = max(ax.get_ylim()[1] for ax in axes)
    for ax in axes:
        ax.set_ylim(low, high)
    axes[0].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    data = pandas.concat(plotted, ignore_index=True) if plotted else pandas.DataFrame()
    return plots.save_figure(fig, "fig-c4-batch-size", out_dir, data)
