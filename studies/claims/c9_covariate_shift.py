"""C9: "BN works by reducing internal covariate shift" — the note's intuition (Ioffe &
Szegedy 2015, §4.1), against Santurkar et al. 2018.

The BN paper's §4.1 setup on MNIST-1D: an MLP with three hidden layers of 100 sigmoid
units, batch 60, trained without a norm, with batch norm, and with *noisy* batch norm:
batch norm followed by a random affine map per unit, redrawn at every training step
(`studies.engine.models.NoisyBatchNormalization`), which makes every unit's input
distribution shift from step to step on purpose (Santurkar et al. §2.1). If batch norm helped by keeping those
distributions still, the noisy arm should lose its benefit.

The task ``c9_covariate_shift`` trains with its own loop so that it can measure, every
`LOG_EVERY` steps and without changing the run (every state it touches is restored):

- the test accuracy;
- the 15th, 50th and 85th percentiles of the inputs to the last hidden layer's sigmoids on
  a fixed batch of training examples (training mode: the distribution the next layer sees
  while training), for unit 0 as in the BN paper's Fig. 1(b, c), and their drift: the mean
  absolute change of the three percentiles between logs, averaged over the layer's units;
- Santurkar et al.'s gradient-based internal covariate shift (Definition 2.1): on the
  step's batch, `G` is the gradient of the loss for a layer's weights before the step and
  `G'` the same gradient after the layers *before* it have taken the step (the layer and
  those after it unchanged); logged are `‖G - G'‖_2`, `‖G - G'‖ / ‖G‖` and
  `cos(G, G')`, for the kernels of the second and third hidden layers.
"""

from __future__ import annotations

import math
import time

import keras
import numpy as np
import pandas
import tensorflow as tf

from studies.claims import Claim, check_profile
from studies.claims import _mlp_common as common
from studies.engine import models, tasks, training
from studies.engine.config import RunConfig
from studies.report import plots, stats

CLAIM_ID = "C9"
TITLE = "BN works by reducing internal covariate shift"

# --- The grid (full profile; `PROFILES` shrinks it) ---------------------------------------
BATCH_SIZE = 60  # examples per step, as in the BN paper's MNIST experiment
LEARNING_RATE = 0.05  # SGD, momentum 0.9, the same for every arm
LOG_EVERY = 100  # optimizer steps between measurements
NOISE_SHIFT = 1.0  # noisy BN: per-step, per-unit shift drawn from U(-1, 1)
NOISE_SCALE = 2.0  # noisy BN: per-step, per-unit scale drawn from U(1, 2)
PROBE_EXAMPLES = 256  # fixed training examples whose activations are probed
UNIT = 0  # the unit whose percentiles are plotted
#: arm -> the RunConfig fields that make it.
ARMS = {
    "none": dict(norm="none"),
    "batch": dict(norm="batch"),
    "noisy batch": dict(norm="batch"),  # batch norm layers swapped for NoisyBatchNormalization
}
NOISY = "noisy batch"
CHANCE = 0.1  # 10 balanced classes
#: Kernels whose gradient shift is measured (each has layers before it); the last decides.
MEASURED = ("dense_1", "dense_2")
# --- The checks (fixed before the full run) ------------------------------------------------
#: The shift measure that decides, fixed before the run: the relative shift ‖G - G'‖ / ‖G‖
#: (Santurkar et al.'s ‖G - G'‖ in units of the gradient itself). Batch norm rescales the
#: gradients of the weights before it (its output does not change when they are scaled, so
#: their gradient scales inversely), and the previous run's raw ‖G - G'‖ was larger with
#: batch norm while ‖G‖ was larger still: the raw measure compares gradient scales as much
#: as shifts. Of the scale-free measures the relative one is the raw measure divided by one
#: number per step, the closest to the definition; cos(G, G') is reported beside it. The raw
#: measure deciding instead is the claim's alternative (`ALTERNATIVE_RAW`).
ALTERNATIVE_RAW = "Santurkar et al.'s raw ‖G - G'‖ decides instead of ‖G - G'‖ / ‖G‖"
#: The shift that batch norm removes, in % of no norm's (paired by seed), for the claim to
#: hold: "reducing" a shift means by a visible share; Santurkar et al. find no reduction
#: (often an increase), so a fifth separates the two readings.
SHIFT_REDUCTION_PCT = 20.0
#: Test accuracy noisy batch norm loses against batch norm, in pp (paired by seed), if the
#: shift it re-introduces mattered: a fifth of batch norm's benefit over no norm in the
#: previous full run (23 pp); Santurkar et al. find "nearly as well" (a point or two).
BENEFIT_LOST_PP = 5.0
#: The pilot is the previous full run (6 seeds, 8000 steps): sd of the per-seed relative
#: shift reduction 8.6 %, so 6 seeds give a half-width of 9 % (under half of
#: `SHIFT_REDUCTION_PCT`); sd of the paired accuracy difference batch - noisy batch 3.2 pp,
#: 9 seeds for a half-width of 2.5 pp (half of `BENEFIT_LOST_PP`), though its interval lay
#: wholly below the threshold. Each seed of the three arms costs about 1.5 CPU-minutes (the
#: task trains alone, not stacked): 6 seeds use the claim's budget, and the sequential plan
#: adds 2, up to 8 (about 3 CPU-minutes more, only while a decisive check is undecided).
SEED_PLAN = stats.SeedPlan(
    pilot=6, initial=6, block=2, cap=8,
    why="pilot (the previous full run) sd of the relative shift reduction 8.6 %: 6 seeds for a half-width of "
        "10 %; of batch - noisy batch accuracy 3.2 pp: 9 for 2.5 pp, but its interval lay below the "
        "threshold; 2 more per step up to 8, the budget's limit",
)  # fmt: skip
#: Logs of `LOG_EVERY` steps in the full profile: until batch norm's training loss levels off.
#: Measured before the full run (seed 1, batch norm): plateau 0.10 after 3000 steps (the
#: budget of the run before 6d7033a), 0.055 after 6000, 0.014 after 8000.
FULL_LOGS = 80
PROFILES = {
    "smoke": dict(seeds=(0,), logs=2, log_every=3, num_samples=500, arms=("none", NOISY)),
    "quick": dict(seeds=(0, 1), logs=6, log_every=LOG_EVERY, num_samples=None, arms=tuple(ARMS)),
    "full": dict(seeds=tuple(range(SEED_PLAN.initial)), logs=FULL_LOGS, log_every=LOG_EVERY, num_samples=None, arms=tuple(ARMS)),
}
PERCENTILES = (15, 50, 85)
#: Per-run column -> its name in the summary table (and the figure's panels).
MEASURES = {
    "accuracy": "final test accuracy (%)",
    "drift": f"percentile drift per {LOG_EVERY} steps",
    **{f"{metric}/{layer}": f"{label}, hidden layer {int(layer[-1]) + 1} weights"
       for layer in MEASURED
       for metric, label in (("ics_l2", "‖G - G'‖"), ("ics_rel", "‖G - G'‖ / ‖G‖"), ("ics_cos", "cos(G, G')"))},
}  # fmt: skip
TASK = "c9_covariate_shift"
NAMES = {"none": "no norm", "batch": "batch norm", NOISY: "noisy batch norm"}
#: Each arm's colour (a `studies.report.plots.COLORS` name).
COLORS = {"none": "none", "batch": "batch", NOISY: "batch_renorm"}
# Table names (the report prints them; `figures` reads them back).
SUMMARY = "Per arm: final test accuracy, percentile drift and gradient-based shift (means over the logged steps)"
CURVES = "Test accuracy (%) during training (about ten logs per curve)"
UNIT_TABLE = f"Percentiles of unit {UNIT}'s input, first seed (about ten logs per arm)"


def grid(profile):
    """The runs of `profile`: arms x seeds."""
    p = PROFILES[check_profile(profile)]
    base = common.mlp_config(
        CLAIM_ID,
        task=TASK,
        activation="sigmoid",
        learning_rate=LEARNING_RATE,
        batch_size=BATCH_SIZE,
        steps_per_epoch=p["log_every"],
        epochs=p["logs"],
        num_samples=p["num_samples"],
    )
    return common.arm_grid(base, ARMS, p["arms"], p["seeds"], _options)


def _options(arm):
    options = {"c9/arm": arm}
    if arm == NOISY:
        options.update({"c9/noise_shift": NOISE_SHIFT, "c9/noise_scale": NOISE_SCALE})
    return options


class _Run:
    """One run's training loop and its measurements."""

    def __init__(self, config, dataset, model):
        self.config, self.dataset, self.model = config, dataset, model
        self.loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        self.trainable = list(model.trainable_variables)
        # Moving statistics and the noise's seed state: restored around every measurement.
        self.state = list(model.non_trainable_variables)
        self.kernels = [model.get_layer(name).kernel for name in MEASURED]
        # The variables of each measured layer and of the layers after it (kept at W_t
        # while computing G'), by position among the trainable variables.
        positions = {id(v): i for i, v in enumerate(self.trainable)}
        self.from_layer = [positions[id(kernel)] for kernel in self.kernels]
        self.probe = keras.Model(model.input, model.get_layer(f"act_{len(config.widths) - 1}").input)
        self.probe_x = dataset.x_train[:PROBE_EXAMPLES]
        self.train_step = tf.function(self._train_step)
        self.gradients = tf.function(self._gradients)
        self.logits = tf.function(lambda x: model(x, training=False))

    def _loss(self, x, y):
        return self.loss_fn(y, self.model(x, training=True))

    def _train_step(self, x, y):
        with tf.GradientTape() as tape:
            loss = self._loss(x, y)
        self.model.optimizer.apply(tape.gradient(loss, self.trainable), self.trainable)
        return loss

    def _gradients(self, x, y):
        with tf.GradientTape() as tape:
            loss = self._loss(x, y)
        return tape.gradient(loss, self.kernels)

    @staticmethod
    def _save(variables):
        return [v.numpy() for v in variables]

    @staticmethod
    def _restore(variables, values):
        for variable, value in zip(variables, values):
            variable.assign(value)

    def step_with_shift(self, x, y):
        """Takes the training step on (x, y) and returns, per measured kernel,
        (‖G - G'‖, ‖G - G'‖ / ‖G‖, cos(G, G'))."""
        before, state = self._save(self.trainable), self._save(self.state)
        g = [t.numpy().ravel() for t in self.gradients(x, y)]
        self._restore(self.state, state)  # the step sees the same noise as G
        loss = float(self.train_step(x, y))
        after, state_after = self._save(self.trainable), self._save(self.state)
        shifts = []
        for k, start in enumerate(self.from_layer):
            self._restore(self.trainable[start:], before[start:])
            self._restore(self.state, state)
            g_after = self.gradients(x, y)[k].numpy().ravel()
            diff = float(np.linalg.norm(g[k] - g_after))
            norms = float(np.linalg.norm(g[k])) * float(np.linalg.norm(g_after))
            shifts.append((diff, diff / max(float(np.linalg.norm(g[k])), 1e-30), float(g[k] @ g_after) / max(norms, 1e-30)))
            self._restore(self.trainable, after)
        self._restore(self.state, state_after)
        return loss, shifts

    def percentiles(self):
        """(len(PERCENTILES), units) percentiles of the probed layer's inputs, in training
        mode (noise drawn), with the model's state left as it was."""
        state = self._save(self.state)
        h = np.asarray(self.probe(self.probe_x, training=True))
        self._restore(self.state, state)
        return np.percentile(h, PERCENTILES, axis=0)

    def test_accuracy(self):
        logits = self.logits(self.dataset.x_test).numpy()
        return float((logits.argmax(axis=1) == self.dataset.y_test).mean())


@tasks.register_task(TASK)
def covariate_shift(config: RunConfig) -> dict:
    """Trains ``epochs x steps_per_epoch`` steps with the measurements of the module
    docstring at step 0 and after every ``steps_per_epoch`` steps. Columns (lists over the
    logs): ``c9/steps``, ``test/accuracy``, ``c9/p15|p50|p85`` (unit `UNIT`),
    ``c9/drift`` (per interval), ``train/loss`` (interval means); per measured kernel
    ``c9/ics_l2/<layer>``, ``c9/ics_rel/<layer>``, ``c9/ics_cos/<layer>`` at the first
    step of each interval (``c9/ics_steps``)."""
    row = training.base_row(config)
    start = time.perf_counter()
    dataset, model = training.prepare(config)
    if config.option("c9/arm") == NOISY:
        seed = config.seed

        def noisy(cfg, index):
            return models.NoisyBatchNormalization(
                noise_shift=config.option("c9/noise_shift"),
                noise_scale=config.option("c9/noise_scale"),
                noise_seed=1000 * seed + index,
                **cfg,
            )

        model = common.recompile(config, common.swap_batch_norms(model, noisy), like=model)
    run = _Run(config, dataset, model)
    batches = iter(training.tf_dataset(dataset, "train", config.batch_size, shuffle_seed=config.seed, repeat=True))
    build_s = time.perf_counter() - start

    start = time.perf_counter()
    logs = {"c9/steps": [0], "test/accuracy": [run.test_accuracy()], "train/loss": []}
    percentiles = [run.percentiles()]
    eval_s = time.perf_counter() - start
    shifts, ics_steps = [], []
    diverged, step = False, 0
    for _ in range(config.epochs):
        losses = []
        for i in range(config.steps_per_epoch):
            x, y = next(batches)
            if i == 0:
                loss, measured = run.step_with_shift(x, y)
                shifts.append(measured)
                ics_steps.append(step)
            else:
                loss = float(run.train_step(x, y))
            losses.append(loss)
            step += 1
            if not math.isfinite(loss):
                diverged = True
                break
        logs["train/loss"].append(float(np.mean(losses)))
        if diverged:
            break
        t = time.perf_counter()
        logs["c9/steps"].append(step)
        logs["test/accuracy"].append(run.test_accuracy())
        percentiles.append(run.percentiles())
        eval_s += time.perf_counter() - t
    train_s = time.perf_counter() - start - eval_s

    p = np.array(percentiles)  # (logs, percentiles, units)
    row.update(logs)
    for j, q in enumerate(PERCENTILES):
        row[f"c9/p{q}"] = [float(v) for v in p[:, j, UNIT]]
    row["c9/drift"] = [float(v) for v in np.abs(np.diff(p, axis=0)).mean(axis=(1, 2))]
    row["c9/ics_steps"] = ics_steps
    for k, name in enumerate(MEASURED):
        for m, metric in enumerate(("ics_l2", "ics_rel", "ics_cos")):
            row[f"c9/{metric}/{name}"] = [s[k][m] for s in shifts]
    row.update({
        "final/test/accuracy": logs["test/accuracy"][-1] if not diverged else math.nan,
        "steps": step,
        "epoch_steps": config.steps_per_epoch,
        "diverged": diverged,
        "time/build_s": build_s,
        "time/train_s": train_s,
        "time/eval_s": eval_s,
    })  # fmt: skip
    return row


def per_run(rows: pandas.DataFrame) -> pandas.DataFrame:
    """One record per run: arm, seed, final accuracy and the means over the logs."""
    mean = lambda column: [float(np.nanmean(v)) if len(v) else math.nan for v in rows[column]]  # noqa: E731
    runs = pandas.DataFrame({"arm": rows["opt/c9/arm"], "seed": rows["seed"],
                             "accuracy": 100.0 * rows["final/test/accuracy"].astype(float),
                             "drift": mean("c9/drift")})  # fmt: skip
    for name in MEASURED:
        for metric in ("ics_l2", "ics_rel", "ics_cos"):
            runs[f"{metric}/{name}"] = mean(f"c9/{metric}/{name}")
    return runs


def _summary(runs):
    records = []
    for column, measure in MEASURES.items():
        for arm in [a for a in ARMS if a in set(runs["arm"])]:
            records.append({"measure": measure, "arm": arm, **stats.estimate(runs.loc[runs["arm"] == arm, column]).to_dict()})
    return pandas.DataFrame.from_records(records, columns=["measure", "arm", "mean", "low", "high", "n"])


def _curves(rows):
    """Test accuracy (%) over training, per arm (runs that stopped early left out)."""
    accuracy = [tuple(100.0 * np.asarray(curve, dtype=float)) for curve in rows["test/accuracy"]]
    frame = pandas.DataFrame({"arm": rows["opt/c9/arm"], "accuracy": accuracy, "steps": rows["c9/steps"]})
    frame = frame[frame["accuracy"].map(len) == frame["accuracy"].map(len).max()] if len(frame) else frame
    every = max(1, len(frame["steps"].iloc[0]) // 10) if len(frame) else 1
    return common.curve_table(frame, ["arm"], "accuracy", steps_column="steps", every=every)


def _unit_table(rows):
    """Unit `UNIT`'s percentiles in the first seed's run of each arm."""
    records = []
    for arm in [a for a in ARMS if a in set(rows["opt/c9/arm"])]:
        run = rows[rows["opt/c9/arm"] == arm].sort_values("seed").iloc[0]
        steps = list(run["c9/steps"])
        keep = sorted(set(range(0, len(steps), max(1, len(steps) // 10))) | {len(steps) - 1})
        for i in keep:
            records.append({"arm": arm, "seed": int(run["seed"]), "step": int(steps[i]),
                            **{f"p{q}": float(run[f"c9/p{q}"][i]) for q in PERCENTILES}})  # fmt: skip
    return pandas.DataFrame.from_records(records, columns=["arm", "seed", "step"] + [f"p{q}" for q in PERCENTILES])


RULE = (
    "Two decisive checks, paired by seed. Batch norm reduces the gradient-based internal "
    "covariate shift, scale-free (Santurkar et al.'s ‖G - G'‖ divided by ‖G‖, last hidden "
    f"layer, mean over training), by at least {SHIFT_REDUCTION_PCT:g} % of no norm's; and noisy "
    "batch norm, which re-introduces a shift of every unit's distribution at every step, loses "
    f"at least {BENEFIT_LOST_PP:g} pp of batch norm's final test accuracy (undecided while an "
    "arm has not converged or both sit at the ceiling). The relative measure decides, fixed "
    "before the run, because batch norm rescales the gradients; the raw ‖G - G'‖ deciding "
    "instead is the sensitivity's alternative. Not supported when both decisive checks fail "
    "(Santurkar et al.'s finding)."
)

ANCHOR = (
    "Ioffe & Szegedy 2015 §4.1 and Fig. 1: on MNIST, a 3x100 sigmoid MLP trains "
    "faster with BN and the 15/50/85th percentiles of a sigmoid's input stay "
    "stable. Santurkar et al. 2018 (disputed the mechanism): with noise injected "
    "after BN the input distributions are less stable than without BN, yet the "
    "network trains nearly as well as with BN; the gradient-based shift (their "
    "Def. 2.1) is not reduced by BN, often larger."
)


def analyze(ok: pandas.DataFrame, runs) -> dict:
    """Accuracy, drift and gradient-based shift per arm, and the checks."""
    note = runs.note
    runs = per_run(ok)
    est = {
        (arm, column): stats.estimate(runs.loc[runs["arm"] == arm, column])
        for arm in ARMS
        for column in MEASURES
    }
    last = MEASURED[-1]
    by_seed = runs.pivot_table(index="seed", columns="arm", values=[f"ics_l2/{last}", f"ics_rel/{last}", "accuracy"])
    shift_label = {"ics_rel": "relative shift ‖G - G'‖ / ‖G‖", "ics_l2": "‖G - G'‖"}

    def paired(column, fn):
        """`fn` of the per-seed table of `column` (one column per arm); n=0 without every arm."""
        if not set(ARMS) <= set(runs["arm"]):
            return stats.estimate([])
        return stats.estimate(fn(by_seed[column]))

    def reduction(column):
        return paired(column, lambda t: 100.0 * (t["none"] - t["batch"]) / t["none"])

    blockers = [b for b in stats.unconverged_arms(ok, "opt/c9/arm") if "=batch " in b or f"={NOISY} " in b]
    blockers.append(stats.ceiling_blocker(est[("batch", "accuracy")], est[(NOISY, "accuracy")], 100.0 * CHANCE,
                                          "batch and noisy batch norm"))

    def shift_check(metric):
        return stats.Check(
            name=f"{shift_label[metric]} of the last hidden layer's weights that batch norm removes (% of no norm's)",
            effect=reduction(f"{metric}/{last}"), threshold=SHIFT_REDUCTION_PCT, kind="at_least", unit=" %",
            why="'reducing' the shift means by a visible share; Santurkar et al. find none (often an increase)",
        )  # fmt: skip

    accuracy_check = stats.Check(
        name="final test accuracy batch norm minus noisy batch norm (pp)",
        effect=paired("accuracy", lambda t: t["batch"] - t[NOISY]), threshold=BENEFIT_LOST_PP,
        kind="at_least", unit=" pp", blockers=tuple(b for b in blockers if b),
        why="a fifth of batch norm's 23 pp benefit over no norm in an earlier run; Santurkar et al. "
            "find noisy BN trains nearly as well",
    )  # fmt: skip
    checks = [shift_check("ics_rel"), accuracy_check]
    arms = [a for a in ARMS if est[(a, "accuracy")].n]
    # Batch norm's gradient shift first: the report's summary quotes the first number.
    evidence = [
        (f"{MEASURES[column]}, {NAMES[arm]}", est[(arm, column)], " %" if column == "accuracy" else "")
        for column in (f"ics_rel/{last}", f"ics_l2/{last}", "accuracy", f"ics_cos/{last}", "drift")
        for arm in sorted(arms, key=lambda a: a != "batch")
    ]
    caveats = [
        "The percentile drift is reported, not ruled on: batch norm standardizes each "
        "unit's input over the batch by construction, so its drift is low whether or not "
        "that is why it helps; the question is whether the shift matters, which the "
        "noisy arm tests.",
        "Changed after the run at 6d7033a: that run decided on the raw ‖G - G'‖, which is in "
        "the gradient's units, and batch norm rescales the gradients of the weights before it; "
        "there the raw measure was 40 % larger with batch norm while the scale-free ones pointed "
        "the other way (‖G - G'‖ / ‖G‖ 22 % [13, 31] lower, cos(G, G') 0.98 against 0.95). The "
        "relative shift now decides, fixed before this run; the raw measure deciding is the "
        "sensitivity table's alternative, and all three measures are in the summary table.",
        "Changed after the run at 6d7033a: accuracies are given in % (they were fractions), and "
        "the seed plan is sized from that run's spreads (see the plan).",
        "Noisy batch norm's inference uses the noise's expectation (scale "
        f"{(1 + NOISE_SCALE) / 2:g}, shift 0); the gradient shift of that arm is measured with "
        "the same noise draw for G and G'.",
        "One learning rate for all arms (as in the BN paper's MNIST experiment), not each "
        "arm's best.",
        "The 20 % threshold sits near the previous run's relative reduction (22 % [13, 31]): "
        "with the planned seeds the relative check may well stay undecided; that is the "
        "honest outcome when the reduction is about as large as the threshold.",
        "Convergence (per arm on the claim's page) blocks the accuracy check only: the shift "
        "is a mean over training, not an end-of-training number. The sigmoid MLP goes on "
        "fitting its 3200 training samples: measured before the full run (seed 1, batch norm), "
        "its training loss levelled off only after about 8000 steps (plateau 0.10 at 3000 steps, "
        f"the budget of the run before 6d7033a, 0.055 at 6000, 0.014 at 8000), hence {FULL_LOGS * LOG_EVERY} "
        "steps, with 6 seeds instead of 8 to pay for them. Ceiling: the arms stay far "
        "from 100 % and from chance on MNIST-1D unless the accuracy check says so.",
        f"Thresholds ({SHIFT_REDUCTION_PCT:g} %, {BENEFIT_LOST_PP:g} pp) were fixed at the move "
        "to the four-way scale, after the previous full run had been seen.",
    ]
    if note:
        caveats.insert(0, note)
    steps = int(ok["epochs"].iloc[0] * ok["epoch_steps"].iloc[0]) if len(ok) else 0
    setup = (
        f"MNIST-1D ({common.data_words(ok)}); MLP with three hidden layers of 100 sigmoid "
        "units (linear -> norm -> sigmoid); SGD with momentum 0.9, learning rate "
        f"{LEARNING_RATE:g}, batch {BATCH_SIZE}, {steps} steps; arms "
        f"{', '.join(NAMES[a] for a in arms)}; seeds per arm: "
        f"{runs['seed'].nunique()}. Noisy batch norm: after each batch norm, in training, "
        f"y * s + m per unit with s ~ U(1, {NOISE_SCALE:g}) and m ~ U(-{NOISE_SHIFT:g}, "
        f"{NOISE_SHIFT:g}) redrawn every step. Measured every {LOG_EVERY} steps: test "
        f"accuracy; percentiles {', '.join(map(str, PERCENTILES))} of the last hidden layer's "
        f"sigmoid inputs on {PROBE_EXAMPLES} fixed training examples; ‖G - G'‖ (Santurkar "
        "et al. Def. 2.1), ‖G - G'‖ / ‖G‖ and cos(G, G') for the kernels of hidden layers 2 "
        "and 3 on the step's batch; the relative shift of layer 3 decides."
    )
    return dict(
        checks=checks,
        alternatives={ALTERNATIVE_RAW: [shift_check("ics_l2"), accuracy_check]},
        headline=checks[0].name,
        convergence=stats.convergence_table(ok, "opt/c9/arm"),
        evidence=evidence,
        setup=setup,
        caveats=caveats,
        tables={SUMMARY: _summary(runs), CURVES: _curves(ok), UNIT_TABLE: _unit_table(ok)},
        figures={
            "fig-c9-shift": (
                "Left: test accuracy during training. Middle: drift of the last hidden "
                f"layer's input percentiles per {LOG_EVERY} steps (mean over training). Right: "
                "the relative shift ‖G - G'‖ / ‖G‖ for the last hidden layer's weights (the "
                f"measure that decides; mean over training). Mean and {stats.INTERVAL}."
            ),
            "fig-c9-unit": (
                f"The 15th, 50th and 85th percentiles of unit {UNIT}'s sigmoid input in the "
                "last hidden layer during training, one run per arm (the first seed), as in "
                "the BN paper's Fig. 1(b, c)."
            ),
        },
    )


def figures(analysis, out_dir):
    """fig-c9-shift and fig-c9-unit, from the analysis' tables."""
    if not analysis["tables"]:  # no run finished: nothing to draw
        return []
    curves = pandas.DataFrame.from_records(analysis["tables"][CURVES])
    summary = pandas.DataFrame.from_records(analysis["tables"][SUMMARY])
    unit = pandas.DataFrame.from_records(analysis["tables"][UNIT_TABLE])
    drift, shift = MEASURES["drift"], MEASURES[f"ics_rel/{MEASURED[-1]}"]
    paths = []
    fig, (left, middle, right) = plots.new_axes(width=4.2, ncols=3)
    order = [a for a in ARMS if len(curves) and a in set(curves["arm"])]
    common.interval_panel(left, curves, "step", "arm", labels=NAMES, order=order, colors=COLORS)
    left.set_xlabel("optimizer steps")
    left.set_ylabel("test accuracy (%)")
    left.legend(frameon=False, fontsize=8)
    for ax, measure, label in ((middle, drift, "percentile drift (sigmoid input units)"),
                               (right, shift, "‖G - G'‖ / ‖G‖ (scale-free)")):  # fmt: skip
        part = summary[summary["measure"] == measure] if len(summary) else summary
        if len(part):
            plots.interval_bars([NAMES[a] for a in part["arm"]], part["mean"], part["low"], part["high"],
                                ax=ax, colors=[plots.color(COLORS[a]) for a in part["arm"]])  # fmt: skip
        ax.set_ylabel(label)
        ax.set_title(measure, fontsize=9)
    plotted = pandas.concat(
        [curves.assign(measure="test accuracy"), summary[summary["measure"].isin([drift, shift])].assign(step=None)]
        if len(summary) else [curves.assign(measure="test accuracy")],
        ignore_index=True,
    )[["measure", "arm", "step", "mean", "low", "high", "n"]]
    paths += plots.save_figure(fig, "fig-c9-shift", out_dir, plotted)

    arms = [a for a in ARMS if len(unit) and a in set(unit["arm"])]
    fig, axes = plots.new_axes(width=3.6, ncols=max(1, len(arms)))
    axes = axes if isinstance(axes, list) else [axes]
    values = unit[[f"p{q}" for q in PERCENTILES]].to_numpy(float) if len(unit) else np.zeros(1)
    pad = 0.05 * (values.max() - values.min() + 1e-9)
    for ax, arm in zip(axes, arms):
        ax.set_ylim(values.min() - pad, values.max() + pad)  # one scale for all arms
        part = unit[unit["arm"] == arm]
        for i, q in enumerate(PERCENTILES):
            ax.plot(part["step"], part[f"p{q}"], color=plots.color(COLORS[arm]), linewidth=1.4,
                    linestyle=("--", "-", ":")[i], label=f"{q}th percentile")  # fmt: skip
        ax.set_title(NAMES[arm])
        ax.set_xlabel("optimizer steps")
        ax.set_ylabel(f"unit {UNIT}'s sigmoid input")
    if arms:
        axes[0].legend(frameon=False, fontsize=8)
    paths += plots.save_figure(fig, "fig-c9-unit", out_dir, unit)
    return paths


#: What a practitioner should take from each verdict (the report's front page).
PRACTICE = {
    'supported': (
        "BN reduces the shift of each layer's gradient as earlier layers change, as the note's intuition says."
    ),
    'partly supported': (
        'BN reduces the measured covariate shift by some measures and not others: do not take the intuition as the explanation.'
    ),
    'inconclusive': (
        'The study could not decide whether BN reduces internal covariate shift: treat the intuition as unproven.'
    ),
    'not supported': (
        'BN did not reduce internal covariate shift here: its benefits need another explanation.'
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
