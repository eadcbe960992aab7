"""C1: "BN speeds up learning" (Ioffe & Szegedy 2015, §4.2.2 and Fig. 3).

A 3x100 MLP on MNIST-1D, with sigmoid and with ReLU, without a norm, with batch norm and
with layer norm, trained by SGD with momentum over a sweep of learning rates. The test
accuracy is logged every `EVAL_EVERY` steps, which resolves two measures of speed:

- *steps to target*: the first logged step at which the test accuracy reaches the target,
  the best mean final test accuracy of the unnormalized network over the sweep (the BN
  paper's definition: the accuracy the baseline reaches at its best); a run that never does
  is censored at the step budget; each arm at its best learning rate;
- *largest stable learning rate*: the largest rate of the sweep at which a run neither
  diverges nor ends near chance.

The runs are the engine's default ``train`` task; this module only declares the grid and
reads the curves.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas

from studies.claims import Claim, check_profile
from studies.claims import _mlp_common as common
from studies.engine.config import grid as product
from studies.report import plots, stats

CLAIM_ID = "C1"
TITLE = "BN speeds up learning"

# --- The checks (fixed before the full run) ------------------------------------------------
#: Steps to target that batch norm saves, in % of no norm's steps (each at its best rate).
#: The BN paper's smallest speed-up is 2.3x (57 % of the steps saved) at an unchanged rate;
#: 20 % (a 1.25x speed-up) is the least that we would call "speeds up" at this scale.
STEPS_SAVED_PCT = 20.0
#: Batch norm's largest stable learning rate over no norm's, in decades (log10 of the ratio).
#: The BN paper trains at 5x (0.7 decades) and 30x the rate; 0.4 decades is less than one
#: step of the half-decade sweep, so any step up counts and no step does not.
STABLE_LR_DECADES = 0.4
#: The pilot is the previous full run (8 seeds at this grid, its target at 90 % of the one
#: now): seed-to-seed sd of the steps saved 9.3 pp (ReLU) and 37 pp (sigmoid: its target fell
#: within a few evaluations, so the 50-step resolution was a large share), of the
#: stable-rate difference 0 decades (every seed the same step). At the later target now the
#: counts span more evaluations, so the resolution's share shrinks; `seeds_needed` gives 6
#: seeds for ReLU's spread at a half-width of 10 pp (sigmoid's old spread would need 57). The engine trains seeds in blocks of 8
#: as one stacked model (`studies.engine.stacked`); the sequential plan adds one more block
#: of 8 (the cap is the claim's time budget).
SEED_PLAN = stats.SeedPlan(
    pilot=8, initial=8, block=8, cap=16,
    why="pilot (the previous full run, target at 90 % of today's) sd of the steps saved 9.3 pp (ReLU), 37 pp "
        "(sigmoid, its early target a few evaluations away): 6 seeds for ReLU's at a half-width of 10 pp; "
        "one more stacked block of 8 for the rest, the cap the claim's budget allows",
)  # fmt: skip
# Table names (the report prints them; `figures` reads them back).
BY_LR = "Steps to target by learning rate (mean, interval, n; share of runs reaching the target and stable)"
BEST = "Each arm at its best learning rate"
LARGEST = "Largest stable learning rate (geometric mean over seeds, interval)"
CURVES = "Test accuracy at the best learning rate (about six evaluations per curve)"

# --- The grid (full profile; `PROFILES` shrinks it) ---------------------------------------
ACTIVATIONS = ("sigmoid", "relu")
#: Layer norm (not in the rule) was measured beside them until the run at 6d7033a; it left to
#: pay for the lower learning rate and the seed plan's second block.
NORMS = ("none", "batch")
#: SGD step size (momentum 0.9), half-decades; 0.003 added after the run at 6d7033a, whose
#: best rate for ReLU with batch norm, 0.01, was the smallest of the sweep.
LEARNING_RATES = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
BATCH_SIZE = 32  # examples per step
EVAL_EVERY = 50  # optimizer steps between test evaluations (one logged "epoch")
#: profile -> seeds, evaluations (steps = evaluations x eval interval), axes, data size.
#: Cost of `full`, from the run at 6d7033a (240 runs at 0.72 CPU-seconds each, stacked by 8:
#: 2.9 CPU-minutes): 2 x 2 x 6 x 8 = 192 runs, 2.3 CPU-minutes; 4.6 with the plan's second
#: block. Same model, data and steps per run, so the per-run cost carries over.
PROFILES = {
    "smoke": dict(seeds=(0,), evaluations=2, eval_every=5, num_samples=500,
                  activations=("sigmoid",), norms=("none", "batch"), learning_rates=(0.1,)),
    "quick": dict(seeds=(0, 1), evaluations=12, eval_every=EVAL_EVERY, num_samples=None,
                  activations=("sigmoid",), norms=("none", "batch"), learning_rates=(0.03, 1.0)),
    "full": dict(seeds=tuple(range(SEED_PLAN.initial)), evaluations=25, eval_every=EVAL_EVERY, num_samples=None,
                 activations=ACTIVATIONS, norms=NORMS, learning_rates=LEARNING_RATES),
}  # fmt: skip

# --- The measures ----------------------------------------------------------------------
#: The target is this fraction of the best mean final test accuracy that the unnormalized
#: network reaches over the learning-rate sweep (per activation): all of it, the BN paper's
#: definition (72.2 % was the unnormalized Inception's own final accuracy). Until the run at
#: 6d7033a it was 90 %, which every arm reached late in training (sigmoid: 29.3 %, where batch
#: norm ended at 42-46 % and no norm at most 32.5 %), so the steps hid batch norm's gain; that
#: rule is the claim's alternative (`ALTERNATIVE_FRACTION`).
TARGET_FRACTION = 1.0
ALTERNATIVE_FRACTION = 0.9
CHANCE = 0.1  # 10 balanced classes
#: A run is stable if it does not diverge and ends at least this far above chance.
STABLE_MARGIN = 0.1
NAMES = {"none": "no norm", "batch": "batch norm", "layer": "layer norm"}
#: The sensitivity table's row for the previous target.
ALTERNATIVE = f"target {ALTERNATIVE_FRACTION:.0%} of no norm's best mean final accuracy (not all of it)"



def grid(profile):
    """The runs of `profile`: activations x norms x learning rates x seeds."""
    p = PROFILES[check_profile(profile)]
    base = common.mlp_config(
        CLAIM_ID,
        batch_size=BATCH_SIZE,
        steps_per_epoch=p["eval_every"],
        epochs=p["evaluations"],
        num_samples=p["num_samples"],
    )
    return product(
        base,
        activation=list(p["activations"]),
        norm=list(p["norms"]),
        learning_rate=list(p["learning_rates"]),
        seed=list(p["seeds"]),
    )


def _steps_to(curve, epoch_steps, target):
    """(steps, reached): the first logged step whose accuracy is >= `target`, or the step
    budget (censored) with reached False."""
    for i, accuracy in enumerate(curve):
        if accuracy >= target:  # NaN (after a divergence) compares False
            return (i + 1) * epoch_steps, True
    return len(curve) * epoch_steps, False


def per_run(rows: pandas.DataFrame) -> pandas.DataFrame:
    """One record per run: its final accuracy (chance after a divergence), whether it is
    stable, and its test-accuracy curve with the step of each evaluation."""
    runs = rows[["activation", "norm", "learning_rate", "seed", "epoch_steps", "diverged"]].copy()
    runs["diverged"] = runs["diverged"].astype(bool)
    final = rows["final/test/accuracy"].astype(float)
    runs["final_accuracy"] = final.where(np.isfinite(final), CHANCE)
    runs["stable"] = ~runs["diverged"] & (runs["final_accuracy"] >= CHANCE + STABLE_MARGIN)
    runs["curve"] = rows["test/accuracy"]
    runs["steps_axis"] = [tuple((i + 1) * s for i in range(len(c))) for c, s in zip(rows["test/accuracy"], rows["epoch_steps"])]
    return runs


def targets(runs, fraction=None) -> dict:
    """{activation: target accuracy}: `fraction` (default `TARGET_FRACTION`) of the
    unnormalized network's best mean final test accuracy over the learning rates (NaN
    without such runs)."""
    fraction = TARGET_FRACTION if fraction is None else fraction
    out = {}
    for activation in sorted(runs["activation"].unique()):
        baseline = runs[(runs["activation"] == activation) & (runs["norm"] == "none")]
        best = baseline.groupby("learning_rate")["final_accuracy"].mean().max() if len(baseline) else math.nan
        out[activation] = fraction * float(best)
    return out


def _with_steps(runs, target_by_activation):
    runs = runs.copy()
    measured = [
        _steps_to(curve, steps, target_by_activation[activation])
        for curve, steps, activation in zip(runs["curve"], runs["epoch_steps"], runs["activation"])
    ]
    runs["steps_to_target"] = [float(s) for s, _ in measured]
    runs["reached"] = [r for _, r in measured]
    return runs


def _by_learning_rate(runs):
    records = []
    for (activation, norm, lr), group in runs.groupby(["activation", "norm", "learning_rate"], sort=True):
        records.append({
            "activation": activation, "norm": norm, "learning_rate": lr,
            **common.estimate_columns(group["steps_to_target"]),
            "reached": float(group["reached"].mean()),
            "stable": float(group["stable"].mean()),
            "final_accuracy": float(group["final_accuracy"].mean()),
        })  # fmt: skip
    return pandas.DataFrame.from_records(records)


def _best(by_lr):
    """Each arm's best learning rate: the fewest mean steps to target; ties go to the
    larger share of runs reaching it, then the higher final accuracy, then the smaller
    rate."""
    ranked = by_lr.assign(_neg_reached=-by_lr["reached"], _neg_final=-by_lr["final_accuracy"])
    ranked = ranked.sort_values(["mean", "_neg_reached", "_neg_final", "learning_rate"])
    best = ranked.groupby(["activation", "norm"], sort=True).head(1)
    return best.drop(columns=["_neg_reached", "_neg_final"]).sort_values(["activation", "norm"])


def _largest_stable(runs):
    """Per activation, norm and seed: log10 of the largest stable learning rate of the
    sweep; a seed stable at none gets half a decade below the smallest rate."""
    floor = math.log10(runs["learning_rate"].min()) - 0.5
    records = []
    for (activation, norm, seed), group in runs.groupby(["activation", "norm", "seed"], sort=True):
        stable = group.loc[group["stable"], "learning_rate"]
        value = math.log10(stable.max()) if len(stable) else floor
        records.append({"activation": activation, "norm": norm, "seed": seed, "log10_lr": value})
    return pandas.DataFrame.from_records(records, columns=["activation", "norm", "seed", "log10_lr"])


def _geometric(values) -> stats.Estimate:
    """Estimate of log10 values, reported back on the learning-rate scale."""
    e = stats.estimate(values)
    to_lr = lambda v: 10.0**v if math.isfinite(v) else math.nan  # noqa: E731
    return stats.Estimate(to_lr(e.mean), to_lr(e.low), to_lr(e.high), e.n)


def _at_best(runs, best, activation, norm):
    """The runs of `norm` at its best learning rate for `activation`, indexed by seed."""
    row = best[(best["activation"] == activation) & (best["norm"] == norm)]
    if not len(row):
        return runs.iloc[0:0].set_index("seed")
    chosen = runs[(runs["activation"] == activation) & (runs["norm"] == norm)
                  & (runs["learning_rate"] == row["learning_rate"].iloc[0])]  # fmt: skip
    return chosen.set_index("seed")


def _censored(arm, norm) -> str:
    return f"censored: {int((~arm['reached']).sum())} of {len(arm)} {NAMES[norm]} runs never reached the target"


def _steps_saved(runs, best, activation) -> stats.Check:
    """Per seed, the steps to target batch norm saves, in % of no norm's (each arm at its
    best learning rate). A run that never reached the target counts at the step budget, a
    lower bound of its steps: censored no-norm runs make the saving a lower bound (it may
    hold, not fail), censored batch-norm runs an upper bound (it may fail, not hold); a
    bound that cannot decide, or censored runs in both arms, block the check."""
    none, batch = _at_best(runs, best, activation, "none"), _at_best(runs, best, activation, "batch")
    saved = (100.0 * (1.0 - batch["steps_to_target"] / none["steps_to_target"])).dropna()
    check = stats.Check(
        name=f"{activation}: steps to target saved by batch norm (% of no norm's, each at its best rate)",
        effect=stats.estimate(saved), threshold=STEPS_SAVED_PCT, kind="at_least", unit=" %",
        why="the BN paper saves 57 % of the steps (2.3x) at an unchanged rate; 20 % (1.25x) is the least we "
            "call a speed-up",
    )  # fmt: skip
    none_censored = bool(len(none)) and not none["reached"].all()
    batch_censored = bool(len(batch)) and not batch["reached"].all()
    outcome = check.outcome()
    blockers = []
    if none_censored and (batch_censored or outcome == "fails"):
        blockers.append(_censored(none, "none") + " (the saving is a lower bound)")
    if batch_censored and (none_censored or outcome == "holds"):
        blockers.append(_censored(batch, "batch") + " (the saving is an upper bound)")
    return dataclasses.replace(check, blockers=tuple(blockers))


def _higher_rate(largest, activation) -> stats.Check:
    """Per seed, log10 of batch norm's largest stable rate minus no norm's."""
    part = largest[largest["activation"] == activation].pivot(index="seed", columns="norm", values="log10_lr")
    diff = (part["batch"] - part["none"]).dropna() if {"batch", "none"} <= set(part.columns) else []
    return stats.Check(
        name=f"{activation}: batch norm's largest stable learning rate over no norm's (decades)",
        effect=stats.estimate(diff), threshold=STABLE_LR_DECADES, kind="at_least", unit=" dec",
        why="the BN paper trains at 5x (0.7 decades) and 30x the rate; 0.4 decades is under one step of the "
            "half-decade sweep, so one step up holds",
    )  # fmt: skip


RULE = (
    "Per activation, two decisive checks of batch norm against no norm, paired by seed: "
    f"it saves at least {STEPS_SAVED_PCT:g} % of the steps to the target test accuracy, no "
    "norm's best mean final test accuracy over the sweep (each arm at its best learning rate; "
    "a run that never reaches the target counts at the step budget, so censored no-norm runs "
    "let the check hold but not fail, censored batch-norm runs fail but not hold, and "
    "censored runs in both arms leave it undecided), and its largest stable learning rate is "
    f"at least {STABLE_LR_DECADES:g} "
    "decades higher (one step of the sweep). Verdict on the four-way scale over all of them."
)

ANCHOR = (
    "Ioffe & Szegedy 2015, §4.2.2 and Fig. 3: Inception reaches 72.2% (its own final "
    "accuracy) in 31.0M steps without BN and 13.3M with BN (2.3x fewer); BN with a "
    "5x learning rate in 2.1M (14.7x fewer); the 5x learning rate without BN diverges."
)


def _measured(runs, fraction=None):
    """(targets, runs with their steps to target, the by-rate table, each arm's best rate)
    for the target at `fraction` of no norm's best (default `TARGET_FRACTION`)."""
    target_by_activation = targets(runs, fraction)
    runs = _with_steps(runs, target_by_activation)
    by_lr = _by_learning_rate(runs)
    return target_by_activation, runs, by_lr, _best(by_lr)


def _at_edge(best, rates) -> list[str]:
    """'activation, norm: rate' of each arm whose best rate is the sweep's smallest or largest."""
    edges = {min(rates), max(rates)} if len(rates) > 1 else set()
    return [f"{r['activation']}, {NAMES[r['norm']]}: {r['learning_rate']:g}"
            for r in best.to_dict("records") if r["learning_rate"] in edges]  # fmt: skip


def analyze(ok: pandas.DataFrame, runs) -> dict:
    """Steps to target and largest stable learning rate per arm, and the checks."""
    note = runs.note
    runs = per_run(ok)
    largest = _largest_stable(runs)
    _, alt_runs, _, alt_best = _measured(runs, ALTERNATIVE_FRACTION)
    alternative = [
        check
        for activation in sorted(runs["activation"].unique())
        for check in (_steps_saved(alt_runs, alt_best, activation), _higher_rate(largest, activation))
    ]
    target_by_activation, runs, by_lr, best = _measured(runs)
    edge = _at_edge(best, sorted(runs["learning_rate"].unique()))

    checks, evidence, stable_records = [], [], []
    for activation in sorted(runs["activation"].unique()):
        best_of = {r["norm"]: r for r in best[best["activation"] == activation].to_dict("records")}
        steps_of = {
            norm: stats.Estimate(r["mean"], r["low"], r["high"], int(r["n"])) for norm, r in best_of.items()
        }
        lr_of = {
            norm: _geometric(group["log10_lr"])
            for norm, group in largest[largest["activation"] == activation].groupby("norm")
        }
        for norm, e in lr_of.items():
            stable_records.append({"activation": activation, "norm": norm, **e.to_dict()})
        target = target_by_activation[activation]
        saved, higher = _steps_saved(runs, best, activation), _higher_rate(largest, activation)
        checks += [saved, higher]
        evidence.append((f"{activation}: steps to {target:.1%} saved by batch norm (% of no norm's, "
                         "per seed, each at its best learning rate)", saved.effect, " %"))
        for norm in NORMS:
            if norm in steps_of:
                lr = best_of[norm]["learning_rate"]
                evidence.append((f"{activation}, {NAMES[norm]}: steps to {target:.1%} at its best "
                                 f"learning rate {lr:g} (reached in {best_of[norm]['reached']:.0%} "
                                 "of runs)", steps_of[norm], " steps"))
        for norm in NORMS:
            if norm in lr_of:
                evidence.append((f"{activation}, {NAMES[norm]}: largest stable learning rate "
                                 "(geometric mean over seeds)", lr_of[norm], ""))

    at_best = ok.merge(best[["activation", "norm", "learning_rate"]], on=["activation", "norm", "learning_rate"])
    convergence = stats.convergence_table(at_best, ["activation", "norm"])
    budget = int(runs["steps_axis"].map(lambda s: s[-1] if s else 0).max()) if len(runs) else 0
    curves = common.curve_table(
        runs.merge(best[["activation", "norm", "learning_rate"]], on=["activation", "norm", "learning_rate"]),
        ["activation", "norm"], "curve", every=max(1, len(runs["curve"].iloc[0]) // 5) if len(runs) else 1,
    )
    best_table = best.assign(target=best["activation"].map(target_by_activation))[
        ["activation", "norm", "learning_rate", "target", "mean", "low", "high", "n", "reached", "final_accuracy"]
    ]
    caveats = [
        "Steps are counted at the test evaluations, every "
        f"{int(runs['epoch_steps'].iloc[0]) if len(runs) else 0} steps: a step count is the "
        "first evaluation at or above the target, so it is resolved to that interval.",
        f"A run that never reaches the target within the budget ({budget} steps) counts as "
        "the budget (censored): means of arms that often miss the target are lower bounds, "
        "and so is a speed-up whose slower arm is censored.",
        "The target is the best mean final test accuracy the unnormalized network reaches in "
        "the sweep, as the BN paper's 72.2% was the final accuracy of the unnormalized "
        "Inception: no norm reaches it, by construction, only late (about half its seeds at "
        "its best rate not at all, counted at the budget), so the steps it saves are a lower "
        "bound where no norm is censored and the check can hold but not fail on them.",
        "Changed after the run at 6d7033a: the target was 90 % of that accuracy, which every "
        "arm reached late (sigmoid: 29.3 %, where batch norm ended at 42-46 % and no norm at "
        "most 32.5 %), so the steps hid batch norm's gain; that target is the sensitivity "
        "table's alternative. The sweep gained 0.003, as ReLU with batch norm had its best "
        "rate, 0.01, at the sweep's edge; layer norm (not in the rule) left the grid to pay "
        "for it and for the seed plan's second block.",
        "Best rates at the edge of the sweep: " + ("; ".join(edge) if edge else "none") + ".",
        "The learning-rate sweep is coarse (half-decades), so the largest stable rate is "
        "resolved to a factor of about 3; a seed stable at no rate of the sweep counts as "
        "half a decade below the smallest rate.",
        "The claim is about speed, so the step budget is the measurement: the checks count "
        "steps to a target and stability, not end-of-training numbers, and are not blocked by "
        "an arm whose loss is still falling at the end. The convergence of each arm at its "
        "best rate is on the claim's page for reference.",
        "No accuracy is compared between arms, so no ceiling or floor applies; the target "
        "(below) sits well inside both.",
        f"Thresholds ({STEPS_SAVED_PCT:g} % of the steps, {STABLE_LR_DECADES:g} decades) were "
        "fixed when the rule moved to the four-way scale, after the previous full "
        "run had been seen; that run is also the pilot of the seed plan.",
    ]
    if note:
        caveats.insert(0, note)
    setup = (
        f"MNIST-1D ({common.data_words(ok)}), "
        "MLP with three hidden layers of 100 units, linear -> norm -> activation, for "
        f"activations {', '.join(sorted(runs['activation'].unique()))}; arms "
        f"{', '.join(NAMES[n] for n in NORMS if n in set(runs['norm']))}; SGD with momentum "
        f"0.9, batch {int(ok['batch_size'].iloc[0]) if len(ok) else 0}, learning rates "
        f"{', '.join(f'{v:g}' for v in sorted(runs['learning_rate'].unique()))}; {budget} "
        f"steps; seeds per cell: {runs['seed'].nunique()}. Best learning rate of an arm: the "
        "one with the fewest mean steps to target (ties: more runs reaching it, then higher "
        "final accuracy). Stable: no divergence and a final test accuracy at least "
        f"{STABLE_MARGIN:.0%} above chance ({CHANCE:.0%})."
    )
    return dict(
        checks=checks,
        alternatives={ALTERNATIVE: alternative},
        convergence=convergence,
        evidence=evidence,
        setup=setup,
        caveats=caveats,
        tables={
            BY_LR: by_lr,
            BEST: best_table,
            LARGEST: pandas.DataFrame.from_records(
                stable_records, columns=["activation", "norm", "mean", "low", "high", "n"]
            ),
            CURVES: curves,
        },
        figures={
            "fig-c1-steps-vs-lr": (
                "Steps to the target test accuracy against the learning rate, per arm (mean "
                f"and {stats.INTERVAL}); the dashed line is the step budget, where runs that "
                "never reach the target are counted."
            ),
            "fig-c1-curves": (
                "Test accuracy during training, each arm at its best learning rate (mean and "
                f"{stats.INTERVAL}); the dotted line is the target."
            ),
        },
    )


def figures(analysis, out_dir):
    """fig-c1-steps-vs-lr and fig-c1-curves, from the analysis' tables."""
    if not analysis["tables"]:  # no run finished: nothing to draw
        return []
    tables = {name: pandas.DataFrame.from_records(t) for name, t in analysis["tables"].items()}
    by_lr, best, curves = tables[BY_LR], tables[BEST], tables[CURVES]
    paths = []
    activations = sorted(by_lr["activation"].unique()) if len(by_lr) else []
    budget = float(curves["step"].max()) if len(curves) else math.nan

    fig, axes = plots.new_axes(ncols=max(1, len(activations)))
    axes = axes if isinstance(axes, list) else [axes]
    for ax, activation in zip(axes, activations):
        part = by_lr[by_lr["activation"] == activation]
        common.interval_panel(ax, part, "learning_rate", "norm", labels=NAMES,
                              order=[n for n in NORMS if n in set(part["norm"])], log_x=True)
        ax.axhline(budget, color="#777777", linestyle="--", linewidth=0.8)
        ax.set_title(activation)
        ax.set_xlabel("learning rate (SGD, momentum 0.9)")
        ax.set_ylabel("steps to target (optimizer steps)")
    axes[0].legend(frameon=False, fontsize=8)
    plotted = by_lr[["activation", "norm", "learning_rate", "mean", "low", "high", "n"]]
    paths += plots.save_figure(fig, "fig-c1-steps-vs-lr", out_dir, plotted)

    fig, axes = plots.new_axes(ncols=max(1, len(activations)))
    axes = axes if isinstance(axes, list) else [axes]
    for ax, activation in zip(axes, activations):
        part = curves[curves["activation"] == activation]
        common.interval_panel(ax, part, "step", "norm", labels=NAMES, order=[n for n in NORMS if n in set(part["norm"])])
        target = best.loc[best["activation"] == activation, "target"]
        if len(target):
            ax.axhline(float(target.iloc[0]), color="#777777", linestyle=":", linewidth=0.8)
        ax.set_title(activation)
        ax.set_xlabel("optimizer steps")
        ax.set_ylabel("test accuracy (fraction)")
    axes[0].legend(frameon=False, fontsize=8)
    paths += plots.save_figure(fig, "fig-c1-curves", out_dir, curves)
    return paths


#: What a practitioner should take from each verdict (the report's front page).
PRACTICE = {
    'supported': (
        "Add BN to a deep MLP to reach no norm's best accuracy in fewer steps, and to train at larger learning rates."
    ),
    'partly supported': (
        'BN sped up training in some of the settings tested, not all: measure its gain on your own model before counting on it.'
    ),
    'inconclusive': (
        'This study could not tell whether BN speeds up learning here: measure steps to a target accuracy on your own model.'
    ),
    'not supported': (
        "BN did not reach no norm's best accuracy in fewer steps here: do not add it for speed alone."
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
