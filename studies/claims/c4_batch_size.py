"""C4 — BN depends on the mini-batch size; too small is unstable.

Design (after Wu & He 2018, Fig. 1), on MNIST-1D with two models:

- an MLP, whose batch norm statistics come from the batch alone (the direct probe), and a
  1-D CNN, whose statistics pool the batch and the positions;
- true small batches: each norm (none, BN, LN, GN, batch renorm with Ioffe's warm-up of its
  limits) at the profile's batch sizes (2, 32 and 128 in the full one), and BN also at 4
  and 8; the learning rate scaled linearly with the batch;
- ghost batches: BN normalizing groups of 2 to 16 samples (`virtual_batch_size`) at a
  fixed gradient batch of `REFERENCE_BATCH` and a fixed learning rate, so that only the
  normalization batch changes, not SGD's noise: what the ghost arms lose is BN's own share
  of the small-batch degradation;
- equal epochs for every batch size up to `REFERENCE_BATCH` (Wu & He's protocol: the same
  data, not the same steps) and more at batch 128, whose few steps left the CNN's arms
  still learning (`Profile.long_epochs`); a linear warm-up over the first epoch and a
  cosine decay to zero end each run at rest, so its end-of-training numbers can be compared;
- the same seeds for every arm: a seed fixes the initial weights and the data order, so
  effects are per-seed paired differences;
- a real-data task: a 2-D CNN on MNIST digits (``mnist5k``) at batches 2, 8, 32 and 128
  with BN, GN and LN (`RealProfile`), its checks apart from the verdict (``real=True``).

Each run also logs its test error in training mode, every test batch of the run's
normalization batch size normalized with its own statistics, as in training.

Rule (fixed before the full run; `RULE` in words): decisive, on the MLP, BN's error at
normalization batches of 2, 4 and 8 is at least `THRESHOLDS` above its error at batch 32,
with true batches (the note's claim) and with ghost batches at the same gradient batch (the
dependence is BN's own, not SGD's), and BN's seed-to-seed spread at batch 2 is at least
`SPREAD_RATIO` times its spread at 32 ("too small is unstable"); secondary, LN's and GN's
errors move by less than `THRESHOLD_PP` between the same batch sizes (Wu & He's contrast),
the training-mode error departs from the inference-mode one more at batch 2 than at 32,
and all of it on the CNN.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import pandas
from scipy import stats as scipy_stats

from studies.claims import Claim, _mlp_common, check_profile
from studies.claims import _cnn_common as common
from studies.engine import tasks, training
from studies.engine.config import RunConfig, concat
from studies.engine.config import grid as product
from studies.report import plots, stats

CLAIM_ID = "C4"
TITLE = "BN depends on the mini-batch size; too small is unstable"

# -- the grid, as data ------------------------------------------------------------------
BASE_LR = 0.05  # peak SGD learning rate at batch size REFERENCE_BATCH; scaled linearly with the batch
REFERENCE_BATCH = 32  # samples: the "normal" batch of Wu & He's comparison, and the ghost arms' gradient batch
SMALL_BATCH = 2  # samples: the smallest batch, Wu & He's
#: Normalization batches whose rise over `REFERENCE_BATCH` is decisive on the MLP. At 2 a
#: dense unit's two normalized values are exactly -1 and +1 (each is its batch's mean plus
#: or minus one deviation), so batch 2 says little beyond "sign quantization hurts"; 4 and
#: 8 keep information and decide beside it.
SMALL_BATCHES = (2, 4, 8)
THRESHOLD_PP = 3.0  # percentage points of test error, see `THRESHOLD_WHY`
#: The rise that matters at each normalization batch (pp of test error): Wu & He's BN rises
#: 11.1, 3.7 and 1.2 pp at batches 2, 4 and 8 over 32; 3 pp ("several", a quarter of the
#: rise at 2) where their rise exceeds it, their 1.2 pp rounded down at 8.
THRESHOLDS = {2: THRESHOLD_PP, 4: THRESHOLD_PP, 8: 1.0}
#: "Unstable": BN's seed-to-seed standard deviation of test error at batch 2 at least this
#: many times its deviation at 32 (see `SPREAD_WHY`).
SPREAD_RATIO = 1.5
MOMENTUM = 0.9  # moving-average momentum of BN and batch renorm (see the setup text)
WARMUP_EPOCHS = 1.0  # linear learning-rate warm-up, in epochs (logged periods)
#: Batch renorm's limits ramp from plain BN's (r = 1, d = 0) to rmax 3, dmax 5 between
#: these fractions of training: Ioffe (2017) relaxed them from 5k steps to 25k-40k of
#: ~160k, i.e. from about 3 % to 15-25 % of training.
RENORM_WARMUP = (0.05, 0.25)
MODELS = ("mlp", "cnn1d")
WIDTHS = {"mlp": (100, 100, 100), "cnn1d": (32, 32, 32)}  # hidden units / filters per layer
#: The real-data task's model: a 2-D CNN on 28 x 28 MNIST digits.
REAL_MODEL = "cnn2d"
#: Values behind each batch statistic per sample, in the norm layer with the fewest: one
#: in the MLP; in the 1-D CNN the last conv layer's 10 positions (40 pooled twice); in the
#: 2-D CNN the last layer's 7 x 7 (28 x 28 pooled twice).
POSITIONS = {"mlp": 1, "cnn1d": 10, REAL_MODEL: 49}
NORMS = ("none", "batch", "layer", "group", "batch_renorm")
NORM_LABELS = {"none": "none", "batch": "BN", "layer": "LN", "group": "GN", "batch_renorm": "batch renorm",
               "ghost": "BN, ghost batches"}
MODEL_LABELS = {"mlp": "MLP", "cnn1d": "CNN", REAL_MODEL: "2-D CNN, MNIST"}


@dataclasses.dataclass(frozen=True)
class RealProfile:
    """The real-data task: `REAL_MODEL` on ``mnist5k`` (``num_train`` digits to train on;
    of the other 5000 - num_train, the first `REAL_TEST_SAMPLES` to test)."""

    norms: tuple  # of NORMS
    batch_sizes: tuple  # samples
    widths: tuple  # filters per conv layer
    num_train: int  # digits in the train split
    passes: dict  # batch size -> passes over the train split
    periods: int  # logged periods per run (the convergence measure reads them)
    seeds: int


#: Test digits of the real-data task: the first 1000 of its test split (evaluated after
#: every logged period, the whole split of 4000 would cost more than the training).
REAL_TEST_SAMPLES = 1000


@dataclasses.dataclass(frozen=True)
class Profile:
    norms: tuple  # of NORMS, at every batch size
    batch_sizes: tuple  # samples
    bn_batches: tuple  # further true batch sizes, for BN only
    ghost_sizes: tuple  # samples per ghost batch, at gradient batch REFERENCE_BATCH
    seeds: int
    num_samples: int  # of MNIST-1D, 80 % train
    epochs: dict  # model -> epochs at every batch size but those of `long_epochs`
    long_epochs: dict  # (model, batch size) -> epochs, for the large batches' few steps
    real: RealProfile | None = None

    def epochs_for(self, model, batch_size):
        return self.long_epochs.get((model, batch_size), self.epochs[model])


#: Full profile, sized by a pilot (3 seeds; 2-core machine under a load of 15-19 from other
#: jobs, so the pilot's times were not used).
#: Epochs: with 10 the MLP's training loss was still falling at batch 32 (plateau 0.10-0.13:
#: it memorizes 1600 samples slowly) and the CNN's at batch 2 sat at the threshold
#: (0.042-0.050); with 30 (MLP) the batch-32 runs plateaued at 0.00-0.02, and 15 (CNN) leave
#: batch 2 margin. At batch 128 the CNN's 15 epochs are 180 steps: in the run at 6d7033a
#: four of its arms there (none, LN, GN, batch renorm) had median plateaus of 0.025-0.052
#: and 3-6 of 8 runs converged, so batch 128 trains 45 epochs (540 steps, the steps of
#: batch 32's 11 epochs).
#: Cost, from the committed rows of the run at 6d7033a (time/total_s, CPU seconds, stacked
#: blocks of 8 seeds): a block cost 9-34 s whatever its steps: 38 blocks, 13.5 min. Now:
#: + BN at true batches 4 and 8 (4 blocks, ~1.5 min) and the CNN at batch 128 with 3x the
#: epochs (5 blocks, +~0.5 min: its steps are cheap, its evaluations add): MNIST-1D about
#: 15.5 CPU-min.
#: Real-data task: a pilot block of the stacked 2-D CNN (8 members, widths 16-32-32) on the
#: machine under a load of 6-11 cost about 28 ms per training image per block at any batch
#: size (the stacked convolutions are arithmetic-bound here). A pilot block of widths
#: 8-16-16 (a quarter of the arithmetic), BN at batch 128, 30 passes of 1000 digits in 5
#: periods: about 3 CPU-min (6 s a pass, evaluations included; 19 min wall at a load of
#: 6-11), plateaus 0.010-0.023 (8 of 8 converged), test error 6.7-8.1 %. With the passes
#: below (31 per norm: fewer at the small batches, whose steps are many; 20 at 128, 140
#: steps) about 31 x 6 s = 3.1 min per norm, 9.3 CPU-min for the three. In all about 25
#: CPU-min (the pilots' load makes the real-data part pessimistic).
PROFILES = {
    "smoke": Profile(("batch",), (2, 32), (), (2,), 1, 200, {"mlp": 2, "cnn1d": 2}, {}),
    "quick": Profile(("batch",), (2, 32), (), (2,), 2, 500, {"mlp": 3, "cnn1d": 3}, {}),
    "full": Profile(
        NORMS, (2, 32, 128), (4, 8), (2, 4, 8, 16), 8, 2000, {"mlp": 30, "cnn1d": 15}, {("cnn1d", 128): 45},
        real=RealProfile(
            norms=("batch", "layer", "group"), batch_sizes=(2, 8, 32, 128), widths=(8, 16, 16), num_train=1000,
            passes={2: 2, 8: 3, 32: 6, 128: 20}, periods=5, seeds=8,
        ),
    ),
}
ERROR_TABLE = "test error (%) by model, norm and batch size"
CONVERGENCE_TABLE = "convergence per arm (plateau of the training loss)"
SPREAD_TABLE = f"seed-to-seed spread of the test error against batch {REFERENCE_BATCH}'s (sd ratio)"
#: The metric columns a run adds to the engine's (test accuracy in training mode).
EVAL_MODE, BATCH_MODE = "final/test/accuracy", "c4/test_accuracy_batch_stats"


def learning_rate(batch_size):
    """The linear scaling rule: `BASE_LR` at `REFERENCE_BATCH` samples, proportional to the batch."""
    return BASE_LR * batch_size / REFERENCE_BATCH


def _config(model, norm, batch_size, profile, virtual_batch_size=None):
    # Ghost arms keep the reference batch's rate: only the normalization batch changes.
    return common.small_batch_config(
        CLAIM_ID, "c4_batch_size", model, norm, batch_size, num_samples=profile.num_samples,
        epochs=profile.epochs_for(model, batch_size), learning_rate=learning_rate(batch_size), momentum=MOMENTUM,
        widths=WIDTHS[model], renorm_warmup=RENORM_WARMUP, virtual_batch_size=virtual_batch_size,
    )


def real_config(norm, batch_size, real: RealProfile):
    """A run of the real-data task: `REAL_MODEL` on ``mnist5k``, ``real.passes[batch_size]``
    passes over the train split in ``real.periods`` logged periods, C4's optimizer,
    schedule and learning-rate rule."""
    steps = real.passes[batch_size] * (real.num_train // batch_size) // real.periods
    return RunConfig(
        claim=CLAIM_ID, task="c4_batch_size", dataset="mnist5k", model=REAL_MODEL, widths=real.widths, norm=norm,
        epochs=real.periods, steps_per_epoch=steps, optimizer="sgd", momentum=0.9, batch_size=batch_size,
        learning_rate=learning_rate(batch_size), bn_momentum=MOMENTUM, renorm_momentum=MOMENTUM,
        options={"data.num_train": real.num_train},
    )


def grid(profile):
    p = PROFILES[check_profile(profile)]
    seeds = list(range(p.seeds))
    true_batches = [_config(m, n, b, p) for m in MODELS for b in p.batch_sizes for n in p.norms]
    true_batches += [_config(m, "batch", b, p) for m in MODELS for b in p.bn_batches]
    ghosts = [_config(m, "ghost", REFERENCE_BATCH, p, virtual_batch_size=k) for m in MODELS for k in p.ghost_sizes]
    configs = concat(*(product(c, seed=seeds) for c in true_batches + ghosts))
    if p.real:
        real = [real_config(n, b, p.real) for b in p.real.batch_sizes for n in p.real.norms]
        configs += concat(*(product(c, seed=list(range(p.real.seeds))) for c in real))
    return configs


# -- the task ---------------------------------------------------------------------------


def real_test(config, dataset):
    """The data a run trains and tests on: the real-data task's first `REAL_TEST_SAMPLES`
    test digits; MNIST-1D as loaded."""
    if config.dataset != "mnist5k":
        return dataset
    n = REAL_TEST_SAMPLES
    return dataclasses.replace(dataset, x_test=dataset.x_test[:n], y_test=dataset.y_test[:n])


def _batch_mode_accuracy(config, dataset, model, row):
    """Adds the test accuracy in training mode: test batches of the training batch size,
    ghost batches splitting them as in training (`BATCH_MODE`; NaN if the run diverged)."""
    row[BATCH_MODE] = float("nan") if row["diverged"] else common.batch_statistics_accuracy(
        model, dataset.x_test, dataset.y_test, config.batch_size
    )


@tasks.register_task(
    "c4_batch_size",
    stackable=dataclasses.replace(
        common.warmup_cosine_stacking(WARMUP_EPOCHS, finish=_batch_mode_accuracy), dataset=real_test
    ),
)
def batch_size_run(config: RunConfig) -> dict:
    """Trains with `common.warmup_cosine`'s schedule on `real_test`'s data, then adds the
    test accuracy in training mode (`_batch_mode_accuracy`). The sweep trains these runs
    stacked, by blocks of seeds, to the same rows."""
    row = training.base_row(config)
    start = time.perf_counter()
    dataset, model = training.prepare(config)
    dataset = real_test(config, dataset)
    model.optimizer.learning_rate = training.StepRates(
        common.warmup_cosine(config, training.epoch_steps(config, dataset), WARMUP_EPOCHS))
    prepare_s = time.perf_counter() - start
    row.update(training.fit_and_log(config, dataset, model))
    row["time/build_s"] += prepare_s
    _batch_mode_accuracy(config, dataset, model, row)
    return row


# -- the analysis -----------------------------------------------------------------------

THRESHOLD_WHY = (
    f"Wu & He's BN loses 11.1 pp of top-1 error from batch 32 to 2 while GN moves by 0.2 pp; "
    f"{THRESHOLD_PP:g} pp is about a quarter of BN's rise ('several pp worse'), and a "
    "batch-independent norm that moves by less is flat at this scale"
)
THRESHOLD_WHYS = {
    2: THRESHOLD_WHY,
    4: f"Wu & He's BN loses 3.7 pp from batch 32 to 4; {THRESHOLD_PP:g} pp, C4's 'several pp', lies below it",
    8: "Wu & He's BN loses 1.2 pp from batch 32 to 8; 1 pp is that rise rounded down",
}
SPREAD_WHY = (
    "Wu & He give no seed spread, so the threshold is ours: 'unstable' means that seeds "
    f"scatter clearly more than at batch {REFERENCE_BATCH}; {SPREAD_RATIO:g}x the standard deviation "
    "(2.25x the variance) is more than two 8-seed deviations of equal spread commonly "
    "differ (their ratio exceeds 1.34 one time in four). Interval: the F distribution's "
    "for a ratio of two variances (normal errors), its square root"
)
MODE_GAP_WHY = (
    f"{THRESHOLD_PP:g} pp, C4's threshold: a training-mode error (test batches normalized with their own "
    "statistics) that departs from the inference-mode one by that much more than at batch "
    f"{REFERENCE_BATCH} makes a model's output depend on its batch-mates"
)
#: Accuracy of a constant prediction on ten balanced classes (MNIST-1D, MNIST digits), in %.
CHANCE_PP = 100.0 * common.CHANCE_ACCURACY

SEED_PLAN = stats.SeedPlan(
    pilot=3,
    initial=8,
    block=8,
    cap=16,
    why=(
        "pilot of 3 seeds (10 epochs): sd of the per-seed BN batch-2 minus batch-32 difference "
        "1.5 pp on the MLP and on the CNN -> 7 seeds for a half-width of 1.5 pp "
        "(stats.seeds_needed). The run at 6d7033a (8 seeds): sd 2.2-3.6 pp of the MLP's "
        "differences at ghost batches 2-8; at batch 8 (threshold 1 pp) the effect, 3.1 pp, "
        "lay 2 pp above the threshold, which 8 seeds decide (half-width 1.7 pp) and 16, the "
        "cap, decide for an effect 1.2 pp above it. The spread ratio's F interval at 8 + 8 "
        "seeds spans x/2.2 to x2.2 around the ratio: it decides a ratio below 0.7 or above "
        "3.3, at 16 + 16 (x/1.7 to x1.7) below 0.9 or above 2.5. The runs train stacked, 8 "
        "seeds a block, so the plan starts with one block of 8 and adds a second while a "
        "decisive check stays undecided."
    ),
)

RULE = (
    "Checks (inference-mode test error, per-seed paired differences): decisive, on the MLP "
    "(statistics over the batch alone): BN's error at batches of "
    + ", ".join(str(b) for b in SMALL_BATCHES)
    + f" minus at batch {REFERENCE_BATCH} is at least "
    + ", ".join(f"{THRESHOLDS[b]:g}" for b in SMALL_BATCHES)
    + " pp (Wu & He's rise at each, see the checks), and so is BN's with ghost batches of "
    + ", ".join(str(b) for b in SMALL_BATCHES)
    + f" at a gradient batch of {REFERENCE_BATCH} and its learning rate minus plain BN's at "
    f"{REFERENCE_BATCH} (only the normalization batch changes: the degradation is BN's own, "
    f"not SGD's); and BN's seed-to-seed standard deviation of the test error at batch "
    f"{SMALL_BATCH} is at least {SPREAD_RATIO:g} times its deviation at {REFERENCE_BATCH} "
    "('too small is unstable'; diverged runs count at chance, so divergence raises it). "
    f"Secondary: LN's and GN's errors at batch {SMALL_BATCH} minus at {REFERENCE_BATCH} lie "
    f"within ±{THRESHOLD_PP:g} pp (Wu & He's contrast); BN's training-mode minus "
    f"inference-mode error at batch {SMALL_BATCH} exceeds that at {REFERENCE_BATCH} by at "
    f"least {THRESHOLD_PP:g} pp; and the same checks on the CNN, whose statistics also pool "
    "positions. Supported when every decisive check holds (partly if a secondary one "
    "fails), partly supported when some hold and some fail, not supported when all fail. "
    "A check compares end-of-training errors, so an arm whose median run had not converged, "
    f"or two arms both within {stats.CEILING_MARGIN_PP:g} pp of chance, leave it undecided. "
    "Real-data task (a verdict of its own, never blended in): a 2-D CNN on MNIST digits, "
    "BN's rises at batches 2 and 8 decisive, LN's and GN's flatness, BN's spread and mode "
    "gap secondary."
)

ANCHOR = (
    "Wu & He 2018, Fig. 1: BN's top-1 error rises from 23.6 % at batch 32 to 34.7 % at 2; "
    "GN stays at 24.1 %.\n"
    "Wu & He 2018, Fig. 1 (ResNet-50, ImageNet top-1 error, batch per GPU 32/16/8/4/2): "
    "BN 23.6/23.7/24.8/27.3/34.7 %, GN 24.1/24.2/24.0/24.2/24.1 %; batch renorm at 4: 26.3 %. "
    "BN loses 11.1 pp from batch 32 to 2, 3.7 pp to 4 and 1.2 pp to 8; GN stays within 0.2 pp."
)
#: Wu & He 2018, Fig. 1 (ResNet-50 on ImageNet, top-1 error in %, by batch per GPU).
WU_HE_ERROR = {
    "batch": {32: 23.6, 16: 23.7, 8: 24.8, 4: 27.3, 2: 34.7},
    "group": {32: 24.1, 16: 24.2, 8: 24.0, 4: 24.2, 2: 24.1},
}

BY = ["model", "norm", "batch_size", "norm_batch"]
ORDER = {"model": [*MODELS, REAL_MODEL], "norm": list(NORM_LABELS)}


def _prepared(rows):
    """`rows` with the analysis's columns: ``norm_batch`` (samples per statistic),
    ``eval_error`` and ``batch_error`` (test error in %, inference and training mode;
    diverged runs at chance) and ``mode_gap`` (training minus inference mode)."""
    rows = rows.assign(
        norm_batch=common.normalization_batch(rows),
        eval_error=common.error_pp(rows, EVAL_MODE),
        batch_error=common.error_pp(rows, BATCH_MODE),
    )
    return rows.assign(mode_gap=rows["batch_error"] - rows["eval_error"])


def _arm(ok, model, norm, batch_size, norm_batch=None):
    """The runs of one arm (ghost arms by their normalization batch)."""
    norm_batch = batch_size if norm_batch is None else norm_batch
    return ok[(ok["model"] == model) & (ok["norm"] == norm) & (ok["batch_size"] == batch_size)
              & (ok["norm_batch"] == norm_batch)]


def _arm_name(model, norm, batch_size, norm_batch=None):
    ghost = f" of {norm_batch}" if norm == "ghost" else ""
    return f"{NORM_LABELS[norm]}{ghost} at batch {batch_size}, {MODEL_LABELS[model]}"


def _blockers(ok, a, b):
    """What keeps a comparison of arms `a` and `b` from deciding: an unconverged arm, both at chance."""
    runs_a, runs_b = _arm(ok, *a), _arm(ok, *b)
    both = pandas.concat([runs_a, runs_b])
    blockers = list(stats.unconverged_arms(both, BY)) if len(both) else []
    blockers.append(stats.ceiling_blocker(
        100.0 - stats.estimate(runs_a["eval_error"]).mean, 100.0 - stats.estimate(runs_b["eval_error"]).mean,
        CHANCE_PP, f"{_arm_name(*a)} vs {_arm_name(*b)}",
    ))
    return tuple(blockers)


def _check(ok, name, a, b, kind, decisive, threshold=THRESHOLD_PP, why=THRESHOLD_WHY, value="eval_error",
           real=False):
    """A `stats.Check` of ``value(a) - value(b)`` per seed, with the blockers of its two arms."""
    effect = stats.estimate(stats.paired_differences(_arm(ok, *a), _arm(ok, *b), value))
    return stats.Check(name=name, effect=effect, threshold=threshold, kind=kind, why=why, unit=" pp",
                       decisive=decisive, blockers=_blockers(ok, a, b), real=real)


def spread_ratio(a, b, confidence=0.95) -> stats.Estimate:
    """The ratio of the standard deviations of the finite values in `a` and `b` (the seeds
    of two arms), with the interval of the F distribution for a ratio of two normal
    variances, square-rooted: ``s_a / s_b`` in ``[sqrt(F / q(n_a - 1, n_b - 1)),
    sqrt(F * q(n_b - 1, n_a - 1))]``, where ``F = s_a^2 / s_b^2`` and ``q`` is the upper
    ``(1 + confidence) / 2`` quantile of the F distribution. n is the smaller arm's; the
    bounds are NaN when an arm has fewer than 2 values or ``s_b`` is 0."""
    a, b = (np.asarray([v for v in np.asarray(x, float).ravel() if math.isfinite(v)]) for x in (a, b))
    n = min(len(a), len(b))
    if n < 2:
        return stats.Estimate(math.nan, math.nan, math.nan, n)
    var_a, var_b = float(a.var(ddof=1)), float(b.var(ddof=1))
    if var_b == 0.0:
        return stats.Estimate(math.nan, math.nan, math.nan, n)
    f = var_a / var_b
    q = 0.5 + confidence / 2
    low = f / scipy_stats.f.ppf(q, len(a) - 1, len(b) - 1)
    high = f * scipy_stats.f.ppf(q, len(b) - 1, len(a) - 1)
    return stats.Estimate(math.sqrt(f), math.sqrt(low), math.sqrt(high), n)


def _spread_check(ok, model, batch_size, decisive, real=False):
    a, b = (model, "batch", batch_size), (model, "batch", REFERENCE_BATCH)
    effect = spread_ratio(_arm(ok, *a)["eval_error"], _arm(ok, *b)["eval_error"])
    return stats.Check(
        name=f"BN seed sd of test error at batch {batch_size} over at batch {REFERENCE_BATCH}, {MODEL_LABELS[model]}",
        effect=effect, threshold=SPREAD_RATIO, kind="at_least", why=SPREAD_WHY, unit="x", decisive=decisive,
        blockers=_blockers(ok, a, b), real=real,
    )


def _checks(ok, decisive_batches=SMALL_BATCHES):
    """The rule's checks on the arms present; BN's rises at `decisive_batches` decide."""
    ref, small = REFERENCE_BATCH, SMALL_BATCH
    checks = []
    for model in [m for m in (*MODELS, REAL_MODEL) if m in set(ok["model"])]:
        real = model == REAL_MODEL
        primary = model in ("mlp", REAL_MODEL)  # the direct probe; the real task's own verdict
        label = MODEL_LABELS[model]
        for b in SMALL_BATCHES:
            decides = primary and b in decisive_batches
            if len(_arm(ok, model, "batch", b)):
                checks.append(_check(ok, f"BN error at batch {b} minus batch {ref}, {label}",
                                     (model, "batch", b), (model, "batch", ref), "at_least", decides,
                                     THRESHOLDS[b], THRESHOLD_WHYS[b], real=real))
            if len(_arm(ok, model, "ghost", ref, b)):
                checks.append(_check(ok, f"BN error with ghost batches of {b} (gradient batch {ref}) minus "
                                         f"plain BN at {ref}, {label}",
                                     (model, "ghost", ref, b), (model, "batch", ref), "at_least", decides,
                                     THRESHOLDS[b], THRESHOLD_WHYS[b], real=real))
        if len(_arm(ok, model, "batch", small)):
            checks.append(_spread_check(ok, model, small, decisive=model == "mlp", real=real))
            checks.append(_check(ok, f"BN training-mode minus inference-mode error at batch {small} minus the "
                                     f"same at {ref}, {label}", (model, "batch", small), (model, "batch", ref),
                                 "at_least", False, THRESHOLD_PP, MODE_GAP_WHY, value="mode_gap", real=real))
        present = set(ok.loc[ok["model"] == model, "norm"])
        for norm in ("layer", "group"):
            if norm in present:
                checks.append(_check(ok, f"{NORM_LABELS[norm]} error at batch {small} minus batch {ref}, {label}",
                                     (model, norm, small), (model, norm, ref), "within", False, real=real))
    return checks


def _error_table(ok):
    """Per arm: n, the error's mean and interval, its seed spread, divergences, the
    training-mode error and the mode gap (training minus inference mode, per run)."""
    table = stats.summarize(ok, BY, "eval_error").rename(columns={"mean": "error_pp"})
    batch = stats.summarize(ok, BY, "batch_error").rename(
        columns={"mean": "batch_stats_error_pp", "low": "low_batch_stats", "high": "high_batch_stats"})
    gap = stats.summarize(ok, BY, "mode_gap").rename(
        columns={"mean": "mode_gap_pp", "low": "low_mode_gap", "high": "high_mode_gap"})
    spread = ok.groupby(BY)["eval_error"].std(ddof=1).rename("seed_sd_pp").reset_index()
    diverged = ok.groupby(BY)["diverged"].apply(lambda d: int(d.astype(bool).sum())).rename("diverged").reset_index()
    for part in (batch.drop(columns="n"), gap.drop(columns="n"), spread, diverged):
        table = table.merge(part, on=BY)
    table["values_per_statistic"] = table["norm_batch"] * table["model"].map(POSITIONS)
    return common.ordered(table, ORDER, BY)


def _reference(ok, model, norm):
    """The runs at `REFERENCE_BATCH` an arm is compared with (ghost arms: plain BN's)."""
    return _arm(ok, model, "batch" if norm == "ghost" else norm, REFERENCE_BATCH)


def _spread_table(ok):
    """Per arm but the reference: its seed sd over the reference's (`spread_ratio`, with
    its interval) and its diverged runs."""
    records = []
    for (model, norm, batch_size, norm_batch), runs in ok.groupby(BY, sort=False):
        if norm != "ghost" and batch_size == REFERENCE_BATCH:
            continue
        ref = _reference(ok, model, norm)
        ratio = spread_ratio(runs["eval_error"], ref["eval_error"])
        records.append({"model": model, "norm": norm, "batch_size": batch_size, "norm_batch": norm_batch,
                        "sd_pp": float(runs["eval_error"].std(ddof=1)) if len(runs) > 1 else math.nan,
                        "reference_sd_pp": float(ref["eval_error"].std(ddof=1)) if len(ref) > 1 else math.nan,
                        "sd_ratio": ratio.mean, "low": ratio.low, "high": ratio.high, "n": ratio.n,
                        "diverged": int(runs["diverged"].astype(bool).sum())})
    columns = BY + ["sd_pp", "reference_sd_pp", "sd_ratio", "low", "high", "n", "diverged"]
    return common.ordered(pandas.DataFrame.from_records(records, columns=columns), ORDER, BY)


def _differences_table(ok):
    """Per model, norm and batch size: the paired per-seed difference of its error and the
    error at `REFERENCE_BATCH` (ghost arms against plain BN at that batch)."""
    records = []
    for (model, norm, batch_size, norm_batch), runs in ok.groupby(BY, sort=False):
        if norm != "ghost" and batch_size == REFERENCE_BATCH:
            continue
        diff = stats.estimate(stats.paired_differences(runs, _reference(ok, model, norm), "eval_error"))
        records.append({"model": model, "norm": norm, "batch_size": batch_size, "norm_batch": norm_batch,
                        **diff.to_dict()})
    table = pandas.DataFrame.from_records(records, columns=BY + ["mean", "low", "high", "n"])
    return common.ordered(table, ORDER, BY).rename(columns={"mean": "minus_reference_pp"})


ERRORS_MINUS_REFERENCE = f"test error minus the error at batch {REFERENCE_BATCH}, paired by seed (pp)"
#: The sensitivity table's row for the rule of the run at 6d7033a.
DECIDED_AT_2 = f"BN's rise decisive at batch {SMALL_BATCH} only (the rule of the run at 6d7033a)"


def _setup(ok):
    mnist1d, real = ok[ok["model"].isin(MODELS)], ok[ok["model"] == REAL_MODEL]
    ref = REFERENCE_BATCH
    seeds = int(ok.groupby(BY)["seed"].nunique().max())
    sizes = sorted(int(b) for b in mnist1d.loc[mnist1d["norm"] != "ghost", "batch_size"].unique())
    ghosts = sorted(int(b) for b in mnist1d.loc[mnist1d["norm"] == "ghost", "norm_batch"].unique())
    norms = [NORM_LABELS[n] for n in NORM_LABELS if n in set(mnist1d["norm"]) and n != "ghost"]
    epochs = "; ".join(
        f"{MODEL_LABELS[m]}: " + ", ".join(f"{int(e)} epochs at batch {int(b)}"
                                          for b, e in part.groupby("batch_size")["epochs"].max().items())
        for m, part in mnist1d.groupby("model"))
    setup = (
        f"MNIST-1D ({_mlp_common.data_words(mnist1d)}); an MLP (3 hidden layers of 100 units, dense -> norm -> "
        f"ReLU; BN's statistics over the batch alone) and a 1-D CNN (3 conv layers of 32 filters, "
        f"kernel 3, conv -> norm -> ReLU, max-pooling, global average pooling; BN's statistics over "
        f"the batch and the positions, 40, 20 and 10 per sample in its three layers). Norms "
        f"{', '.join(norms)} at batch sizes {', '.join(map(str, sizes))} (BN at each, the others at "
        f"2, 32 and 128 in the full profile); BN with ghost batches of "
        f"{', '.join(map(str, ghosts)) or '-'} samples at a gradient batch of {ref}. SGD with momentum "
        f"0.9, peak learning rate {BASE_LR:g} x batch / {ref} (linear scaling; ghost arms at the "
        f"batch-{ref} rate), a linear warm-up over the first {WARMUP_EPOCHS:g} epoch and a cosine decay "
        f"to 0; {epochs or '-'} (equal epochs up to batch {ref}, as Wu & He: every arm sees the same "
        f"data; more at batch 128, whose few steps had not converged). BN and batch renorm moving "
        f"averages with momentum {MOMENTUM:g}; batch renorm clips r to [1/3, 3] and d to [-5, 5] after "
        f"Ioffe's warm-up (plain BN until {RENORM_WARMUP[0]:.0%} of training, the limits reached at "
        f"{RENORM_WARMUP[1]:.0%}). {seeds} seeds per arm, the same for every arm (a seed "
        f"fixes the initial weights and the data order). Test error in inference mode (moving "
        f"statistics) and, as the training-mode error, with every test batch of the run's "
        f"normalization batch normalized with its own statistics."
    )
    if len(real):
        widths = ", ".join(str(w) for w in real["widths"].iloc[0]) if "widths" in real else "-"
        passes = ", ".join(
            f"{round(int(part['steps'].max()) * int(b) / int(part['opt/data.num_train'].iloc[0]))} at batch {int(b)}"
            for b, part in real.groupby("batch_size"))
        setup += (
            f" Real-data task: MNIST digits (mnist5k, 28 x 28; {int(real['opt/data.num_train'].iloc[0])} to "
            f"train, the first {REAL_TEST_SAMPLES} of the others to test), a 2-D CNN (3 x 3 conv layers "
            f"of {widths} filters, conv -> norm -> ReLU, "
            "2 x 2 max-pooling after all but the last, global average pooling; BN's statistics over "
            "the batch and 784, 196 and 49 positions), norms "
            f"{', '.join(NORM_LABELS[n] for n in NORM_LABELS if n in set(real['norm']))} at batch sizes "
            f"{', '.join(str(int(b)) for b in sorted(real['batch_size'].unique()))}, C4's optimizer, rate "
            f"rule and schedule; passes over the train split: {passes} (fewer at the small batches, "
            f"whose steps cost the most), each run logged in {int(real['epochs'].max())} periods."
        )
    return setup


def analyze(ok: pandas.DataFrame, runs) -> dict:
    ok, failed = _prepared(ok), runs.failed
    checks = _checks(ok)
    table = _error_table(ok)
    convergence = common.ordered(stats.convergence_table(ok, BY), ORDER, BY)
    error = common.summary_lookup(table.rename(columns={"error_pp": "mean"}), BY)
    small, ref = SMALL_BATCH, REFERENCE_BATCH
    models = [m for m in (*MODELS, REAL_MODEL) if m in set(ok["model"])]

    evidence = [(c.name, c.effect, c.unit) for c in checks]
    evidence += [
        (f"{NORM_LABELS[norm]}: test error at batch {b}, {MODEL_LABELS[model]}", error(model, norm, b, b), " %")
        for model in models for norm in ("batch", "layer", "group", "batch_renorm", "none")
        for b in (small, ref) if error(model, norm, b, b).n
    ]
    evidence += [
        (f"BN: test error at batch {small} in training mode (test batches of {small}), {MODEL_LABELS[model]}",
         stats.estimate(_arm(ok, model, "batch", small)["batch_error"]), " %")
        for model in models if len(_arm(ok, model, "batch", small))
    ]

    diverged = int(ok["diverged"].astype(bool).sum())
    steps = ok.groupby(["model", "batch_size"])["steps"].max()
    unconverged = [r for r in convergence.to_dict(orient="records") if r["converged"] < r["runs"] - r["diverged"]]
    blocked = [r for r in unconverged if stats.arm_unconverged(r)]
    decisive_half = [(c.effect.high - c.effect.low) / 2 for c in checks if c.decisive and c.effect.n >= 2]
    caveats = [
        stats.ceiling_summary(checks),
        f"{failed} run(s) failed and are left out; {diverged} diverged and count at chance "
        "accuracy (90 % error).",
        "Convergence: a run has converged when the last fifth of its epochs removed at most "
        f"{stats.PLATEAU_THRESHOLD:.0%} of its training loss's total decrease (`stats.plateau`); "
        + (f"{len(unconverged)} arm(s) had a run that did not: "
           + "; ".join(f"{MODEL_LABELS.get(r['model'], r['model'])} {NORM_LABELS.get(r['norm'], r['norm'])} "
                       f"at batch {r['batch_size']} (norm batch {r['norm_batch']}): {r['converged']} of "
                       f"{r['runs'] - r['diverged']}" for r in unconverged)
           + f". {len(blocked)} of them had fewer than half their runs converged: checks on those "
           "arms are undecided." if unconverged else "every run of every arm did.")
        + " The cosine decay brings every run to rest by its last epoch, so the measure reads "
        "whether the loss was still falling steeply when the rate ran out.",
        "Steps per run (" + ", ".join(
            f"{MODEL_LABELS.get(m, m)} batch {b}: {int(s)}" for (m, b), s in steps.items()) + ").",
        "Power: " + SEED_PLAN.why + " Decisive half-widths here: " + ", ".join(
            f"{c.name}: {(c.effect.high - c.effect.low) / 2:.2f}{c.unit} (target {c.threshold / 2:g}{c.unit})"
            for c in checks if c.decisive and c.effect.n >= 2 and c.unit == " pp")
        + ("." if decisive_half else " none."),
        "At a normalization batch of 2 a dense unit's two normalized values are exactly -1 and "
        "+1 (each sample is the batch mean plus or minus one deviation, up to epsilon): the MLP "
        "then trains on sign-quantized features, which says little about batch statistics "
        "beyond that; batches of 4 and 8 keep information and decide beside 2.",
        "'Unstable' is measured three ways: the seed-to-seed spread (the decisive ratio, and "
        f"the table '{SPREAD_TABLE}' for every arm, F intervals), divergences (diverged runs "
        "count at chance, so they raise the spread; the tables count them), and the "
        "training-mode against the inference-mode error (the mode gap, a secondary check).",
        f"The moving-average momentum is {MOMENTUM:g} (PyTorch's default) rather than Keras's 0.99: "
        "with equal epochs the largest batches take few steps, and a 0.99 average would still hold "
        "much of its initial value (that bias is C2's subject, not C4's).",
        "In the CNN each statistic pools the positions too: at batch 2 the last layer's still averages "
        "2 x 10 values, so BN is expected to degrade less than in the MLP; "
        "fig-c4-values-per-statistic puts every model on one axis.",
        "Wu & He's curves are ImageNet ResNet-50 top-1 errors; the relative panel compares the "
        "shape of the rise only, not its size.",
        "The linear warm-up lasts one epoch at every batch size (12 steps at batch 128, whose "
        "rate, 0.2, is Goyal et al.'s linear rule); no run diverged at batch 128 in the run at "
        "6d7033a, so warm-up and decay are unchanged.",
        "Changed after the run at 6d7033a (rules fixed before the next run): BN's rise is "
        "decisive at normalization batches 4 and 8 beside 2 (at 2 the MLP's features are signs), "
        "with thresholds from Wu & He's rise at each, and BN trains at true batches 4 and 8 too; "
        "instability is a decisive check (the seed spread ratio), the mode gap a secondary one "
        "(that run had 0 divergences and compared no spreads); the CNN at batch 128 trains 45 "
        "epochs instead of 15 (four of its arms there had not converged, and their errors set "
        "the relative panel's scale); a real-data task on MNIST digits. The verdict under the "
        f"earlier rule is in the sensitivity table ('{DECIDED_AT_2}').",
    ]
    return dict(
        checks=checks,
        convergence=convergence,
        evidence=evidence,
        setup=_setup(ok),
        caveats=caveats,
        alternatives={DECIDED_AT_2: _checks(ok, decisive_batches=(SMALL_BATCH,))},
        tables={ERROR_TABLE: table, ERRORS_MINUS_REFERENCE: _differences_table(ok), SPREAD_TABLE: _spread_table(ok),
                CONVERGENCE_TABLE: convergence},
        figures={
            "fig-c4-batch-size": (
                "Test error (inference mode) against the batch size, learning rate scaled with "
                "the batch; dashed: BN with ghost batches of that many samples at "
                f"a gradient batch of {ref}. Last panel: error relative to each curve's batch-{ref} "
                "error, ours beside Wu & He's (ResNet-50, ImageNet). "
                f"Bands: {stats.INTERVAL}."
            ),
            "fig-c4-values-per-statistic": (
                "BN's test error against the number of values behind each batch statistic "
                "(normalization batch x positions, in the layer with the fewest: 1 in the "
                "MLP, 10 in the 1-D CNN, 49 in the 2-D CNN on MNIST), true and ghost batches; "
                f"every model on one axis. Bars: {stats.INTERVAL}."
            ),
        },
    )


# -- the figures ------------------------------------------------------------------------


def _series(table, model, norm):
    part = table[(table["model"] == model) & (table["norm"] == norm)]
    if norm == "ghost":  # the ghost line ends at plain BN at the reference batch, its own limit
        ref = table[(table["model"] == model) & (table["norm"] == "batch") & (table["batch_size"] == REFERENCE_BATCH)]
        part = pandas.concat([part, ref])
    return part.sort_values("norm_batch")


def figures(analysis, out_dir):
    if not analysis["tables"].get(ERROR_TABLE):
        return []  # no run finished
    table = pandas.DataFrame(analysis["tables"][ERROR_TABLE])
    return [*_batch_size_figure(table, out_dir), *_values_figure(table, out_dir)]


def _batch_size_figure(table, out_dir):
    models = [m for m in (*MODELS, REAL_MODEL) if m in set(table["model"])]
    fig, axes = plots.new_axes(width=3.6, height=3.0, ncols=len(models) + 1)
    plotted = []
    for ax, model in zip(axes, models):
        for i, norm in enumerate(n for n in NORM_LABELS if n in set(table.loc[table["model"] == model, "norm"])):
            part = _series(table, model, norm)
            style = {"linestyle": "--"} if norm == "ghost" else {}
            plots.interval_line(part["norm_batch"], part["error_pp"], part["low"], part["high"], NORM_LABELS[norm],
                                ax=ax, color_name=norm, index=i, **style)
            plotted.append(pandas.DataFrame({
                "panel": MODEL_LABELS[model], "series": norm, "batch": part["norm_batch"],
                "mean": part["error_pp"], "low": part["low"], "high": part["high"], "n": part["n"]}))
        _log2_axis(ax, table["norm_batch"])
        ax.set_xlabel("batch size (samples; ghost: per statistic)")
        ax.set_ylabel("test error (%)")
        ax.set_title(MODEL_LABELS[model], fontsize=9)
    axes[0].legend(fontsize=6.5, frameon=False)

    ax = axes[-1]
    relative = []
    for model in models:
        for norm in ("batch", "group"):
            part = _series(table, model, norm).set_index("batch_size")["error_pp"]
            if REFERENCE_BATCH in part.index:
                relative.append((f"{MODEL_LABELS[model]} {NORM_LABELS[norm]}", norm, part / part[REFERENCE_BATCH], "-"))
    for norm, errors in WU_HE_ERROR.items():
        part = pandas.Series(errors).sort_index()
        relative.append((f"Wu & He {NORM_LABELS[norm]}", norm, part / part[REFERENCE_BATCH], ":"))
    for i, (label, norm, ratio, line) in enumerate(relative):
        marker = "s" if label.startswith("Wu") else ("o" if "MLP" in label else "^")
        ax.plot(ratio.index, ratio.to_numpy(float), marker=marker, markersize=3.5, linestyle=line, linewidth=1.2,
                color=plots.color(norm, i), label=label, alpha=1.0 if "MLP" in label or label.startswith("Wu") else 0.6)
        plotted.append(pandas.DataFrame({"panel": "relative", "series": label, "batch": ratio.index,
                                         "mean": ratio.to_numpy(float), "low": np.nan, "high": np.nan, "n": np.nan}))
    ax.axhline(1.0, color="#888888", linewidth=0.6)
    _log2_axis(ax, pandas.Series([b for _, _, r, _ in relative for b in r.index]))
    ax.set_xlabel("batch size (samples)")
    ax.set_ylabel(f"error / error at batch {REFERENCE_BATCH}")
    ax.set_title("relative to batch 32", fontsize=9)
    ax.legend(fontsize=6, frameon=False)
    fig.tight_layout()
    return plots.save_figure(fig, "fig-c4-batch-size", out_dir, pandas.concat(plotted, ignore_index=True))


def _values_figure(table, out_dir):
    fig, ax = plots.new_axes(width=4.6, height=3.2)
    plotted = []
    bn = table[table["norm"].isin(["batch", "ghost"])]
    for i, ((model, norm), part) in enumerate(bn.groupby(["model", "norm"], sort=False)):
        part = _series(table, model, norm)
        label = f"{MODEL_LABELS[model]}, {'ghost batches' if norm == 'ghost' else 'true batches'}"
        x = part["values_per_statistic"].to_numpy(float)
        mean = part["error_pp"].to_numpy(float)
        ax.errorbar(x, mean, yerr=[mean - part["low"].to_numpy(float), part["high"].to_numpy(float) - mean],
                    marker="o" if model == "mlp" else "^", markersize=4, capsize=2, linewidth=1.1,
                    linestyle="--" if norm == "ghost" else "-", color=plots.OKABE_ITO[i % len(plots.OKABE_ITO)],
                    label=label)
        plotted.append(pandas.DataFrame({"model": model, "batches": norm, "values_per_statistic": x,
                                         "mean": mean, "low": part["low"], "high": part["high"], "n": part["n"]}))
    _log2_axis(ax, bn["values_per_statistic"])
    ax.set_xlabel("values per batch statistic (normalization batch x positions)")
    ax.set_ylabel("BN test error (%)")
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    data = pandas.concat(plotted, ignore_index=True) if plotted else pandas.DataFrame()
    return plots.save_figure(fig, "fig-c4-values-per-statistic", out_dir, data)


def _log2_axis(ax, values):
    ticks = sorted({int(v) for v in values if v == v})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks], fontsize=7)


#: What a practitioner should take from each verdict (the report's front page).
PRACTICE = {
    'supported': (
        'BN degrades and grows erratic as the samples per statistic shrink: below about 8, use GN or LN, or keep batches large.'
    ),
    'partly supported': (
        'Small batches hurt BN in some models and measures, not all: below about 8 samples per statistic, test GN or LN.'
    ),
    'inconclusive': (
        'The study could not decide how much small batches hurt BN here: with fewer than 8 samples per statistic, test GN or LN.'
    ),
    'not supported': (
        'BN held up at small batches here: small batches alone are no reason to switch norms.'
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
