"""Callbacks for batch-norm layers during `fit`: `BatchStatisticsRecorder` (the
mini-batch statistics) and `FreezeBatchStatistics` (frozen statistics late in training)."""

from __future__ import annotations

import math
import numbers

import numpy as np

import keras

from kerasnorm import moments as M
from kerasnorm._common import float_in
from kerasnorm.batch_normalization import BatchNormalization
from kerasnorm.population import batch_norm_layers, kerasnorm_batch_norms, recalibrate

COLUMNS = ["step", "epoch", "layer", "feature", "batch_mean", "batch_variance", "moving_mean", "moving_variance"]


class BatchStatisticsRecorder(keras.callbacks.Callback):
    """Records, per batch-norm layer and training step, the mini-batch mean and variance
    next to the moving estimates.

    **kerasnorm's layers** report their batch statistics directly: at the start of
    training the recorder gives each recorded `kerasnorm.BatchNormalization` a pair of
    float32 variables (outside the layer's weights: saved files do not change) into which
    every training call writes its batch mean and biased variance, and forces Keras to
    trace the train function again so that the writes are part of it. (A ghost-batch
    layer writes the average over its ghost batches.) They are detached, and the train
    function traced again, at the end of training.

    **Keras's `keras.layers.BatchNormalization`** exposes no batch statistics. For it the
    recorder reads the moving statistics before and after each recorded step and derives
    the batch statistics from the update rule `new = momentum * old + (1 - momentum) *
    batch`: `batch = (new - momentum * old) / (1 - momentum)`. This is exact up to
    float32 rounding of the stored averages, amplified by `1 / (1 - momentum)` (about
    1e-5 relative at momentum 0.99). It needs one update per step, so it is refused for a
    layer with `renorm=True` (whose averages follow other rules). A layer that did not
    update in a step (frozen, or called in inference mode) shows its moving statistics
    for that step's batch statistics; for a frozen layer (`trainable=False`) they are
    recorded as NaN instead. A kerasnorm layer that did not update shows NaN.

    **`steps_per_execution > 1`.** Keras then runs several steps per call of the train
    function, and callbacks see only the end of each execution. For kerasnorm layers the
    recorder records the last step of an execution (when the execution contains a step
    that is due, see `every`), labelled with that step's index (steps are counted with
    the optimizer's `iterations`, since Keras reports a full execution at an epoch's end). Derived statistics are
    impossible there (several updates mix), so with Keras's layers it raises `ValueError`.

    Args:
        layers: Optional list of batch-norm layers, or their names, to record (default:
            every kerasnorm and Keras batch-norm layer of the model, nested models
            included).
        every: Positive int: record the steps whose global index (0-based, counted over
            all epochs and every `fit` call this recorder is used in) is a multiple of
            `every`.

    Call arguments:
        None: a `keras.callbacks.Callback`, passed to `model.fit(callbacks=[...])`. Read
        the records with `to_dataframe()`.

    Example:
        >>> import keras
        >>> import numpy as np
        >>> import kerasnorm
        >>> model = keras.Sequential(
        ...     [keras.Input((2,)), kerasnorm.BatchNormalization(name="bn"), keras.layers.Dense(1)]
        ... )
        >>> model.compile(optimizer="sgd", loss="mse")
        >>> x = np.array([[1.0, 10.0], [3.0, 30.0], [5.0, 50.0], [7.0, 70.0]])
        >>> recorder = kerasnorm.BatchStatisticsRecorder()
        >>> _ = model.fit(
        ...     x, np.zeros((4, 1)), batch_size=2, shuffle=False, callbacks=[recorder], verbose=0
        ... )
        >>> recorder.to_dataframe()["batch_mean"].tolist()  # steps 0 and 1, features 0 and 1
        [2.0, 20.0, 6.0, 60.0]

    Reference:
        - [Ioffe and Szegedy, 2015](https://arxiv.org/abs/1502.03167) (the moving
          averages and mini-batch statistics recorded here).
    """

    def __init__(self, layers=None, every=1):
        super().__init__()
        if layers is not None and (isinstance(layers, str) or not isinstance(layers, (list, tuple))):
            raise ValueError(
                "Argument `layers` must be None or a list of layers or layer names. "
                f"Received: layers={layers!r}"
            )
        self.layers = layers
        self.every = M.validate_positive_int(every, "every")
        self._records = []
        self._step = 0
        self._epoch = 0
        self._begin = 0
        self._recorded = []
        self._before = {}

    # -- attaching -------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        recorded = batch_norm_layers(self.model, self.layers)
        derived = [l for l in recorded if not isinstance(l, BatchNormalization)]
        for layer in derived:
            if layer.renorm:
                raise ValueError(
                    f"BatchStatisticsRecorder cannot derive the batch statistics of Keras's "
                    f"layer '{layer.name}' with renorm=True. Received: renorm=True"
                )
        if derived and self.model.steps_per_execution > 1:
            raise ValueError(
                "BatchStatisticsRecorder derives the batch statistics of Keras's "
                f"BatchNormalization layers ({[l.name for l in derived]}) from one update of "
                "their moving averages, which several steps per execution mix. Use "
                "kerasnorm.BatchNormalization or steps_per_execution=1. Received: "
                f"steps_per_execution={self.model.steps_per_execution}"
            )
        for layer in recorded:
            if isinstance(layer, BatchNormalization):
                sink = tuple(
                    keras.Variable(
                        np.full(layer.moving_mean.shape, np.nan, "float32"),
                        trainable=False,
                        name=f"{layer.name}_batch_{stat}",
                    )
                    for stat in ("mean", "variance")
                )
                object.__setattr__(layer, "_statistics_sink", sink)
        self._recorded = recorded
        # `fit` made (and an earlier `fit` may have traced) the train function before
        # this callback ran: trace it again so that it writes into the new variables.
        self.model.make_train_function(force=True)

    def on_train_end(self, logs=None):
        for layer in self._recorded:
            if isinstance(layer, BatchNormalization):
                object.__setattr__(layer, "_statistics_sink", None)
        self._recorded = []
        self.model.make_train_function(force=True)

    # -- recording -------------------------------------------------------------------

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def _iterations(self):
        return int(self.model.optimizer.iterations)

    def on_train_batch_begin(self, batch, logs=None):
        if self.model.steps_per_execution > 1:
            # Keras reports `batch + steps_per_execution - 1` at the end even where the
            # epoch ends sooner: count the steps the optimizer actually took.
            self._begin = self._iterations()
        if self.model.steps_per_execution > 1 or self._step % self.every == 0:
            for layer in self._recorded:
                if isinstance(layer, BatchNormalization):
                    for variable in layer._statistics_sink:
                        variable.assign(np.full(variable.shape, np.nan, "float32"))
                else:
                    self._before[id(layer)] = (
                        np.asarray(layer.moving_mean, np.float64),
                        np.asarray(layer.moving_variance, np.float64),
                    )

    def on_train_batch_end(self, batch, logs=None):
        steps = self._iterations() - self._begin if self.model.steps_per_execution > 1 else 1
        last = self._step + steps - 1
        # Due when the execution holds a step whose index is a multiple of `every`.
        if last // self.every != (self._step - 1) // self.every:
            for layer in self._recorded:
                self._records.append((last, self._epoch, layer.name) + self._statistics(layer))
        self._step += steps

    def _statistics(self, layer):
        moving = (np.asarray(layer.moving_mean, np.float64), np.asarray(layer.moving_variance, np.float64))
        if isinstance(layer, BatchNormalization):
            batch = tuple(np.asarray(v, np.float64) for v in layer._statistics_sink)
        elif not layer.trainable or layer.momentum == 1.0:
            batch = (np.full(moving[0].shape, np.nan),) * 2
        else:
            m = layer.momentum
            batch = tuple((new - m * old) / (1.0 - m) for new, old in zip(moving, self._before[id(layer)]))
        return tuple(np.ravel(t) for t in batch + moving)

    def to_dataframe(self):
        """The records as a long-form pandas DataFrame, one row per step, layer and feature
        (flattened in C order for multi-axis layers), with columns `step`, `epoch`,
        `layer`, `feature`, `batch_mean`, `batch_variance`, `moving_mean`,
        `moving_variance`."""
        import pandas as pd

        if not self._records:
            return pd.DataFrame(columns=COLUMNS)
        frames = []
        for step, epoch, name, batch_mean, batch_variance, moving_mean, moving_variance in self._records:
            n = batch_mean.size
            frames.append(
                {
                    "step": np.full(n, step),
                    "epoch": np.full(n, epoch),
                    "layer": np.full(n, name, dtype=object),
                    "feature": np.arange(n),
                    "batch_mean": batch_mean,
                    "batch_variance": batch_variance,
                    "moving_mean": moving_mean,
                    "moving_variance": moving_variance,
                }
            )
        columns = {c: np.concatenate([f[c] for f in frames]) for c in COLUMNS}
        return pd.DataFrame(columns)


class FreezeBatchStatistics(keras.callbacks.Callback):
    """Switches batch norm to frozen population statistics for the last part of `fit`.

    From the chosen step on, every selected `kerasnorm.BatchNormalization` trains with
    `freeze_statistics=True`: its forward pass normalizes with the moving statistics, as
    inference does, and no longer updates them, while `gamma`, `beta` and every other
    weight keep training (Wu & Johnson 2021: at small batches this removes the
    inconsistency between the batch statistics of training and the population statistics
    of inference). Optionally the moving statistics are first replaced by exact
    population statistics (`kerasnorm.recalibrate` over `recalibrate_data`), so that the
    frozen phase starts from the statistics of the current weights rather than from
    their lagging averages.

    The switch happens before the first training step whose index (counted from 0 at the
    start of this `fit` call, with the optimizer's `iterations`) reaches `at_step`; the
    train function is then traced again so the change takes effect (on every backend).
    With `steps_per_execution > 1` it happens at the first execution that starts at or
    after that step. The layers stay frozen after `fit` (and in a saved model, through
    their config); set `layer.freeze_statistics = False` to train with batch statistics
    again.

    Args:
        at_step: Int >= 0: the step from which the statistics are frozen. Exactly one
            of `at_step` and `at_fraction` is given.
        at_fraction: Float in [0, 1]: the fraction of this `fit` call's steps (epochs
            times steps per epoch, from its initial epoch) after which they are frozen;
            `fit` must know its steps per epoch.
        recalibrate_data: Optional data for `kerasnorm.recalibrate` (arrays, `(x, y)`,
            a `tf.data.Dataset`, or an iterable of batches), run just before freezing.
        recalibrate_batch_size: Batch size of that recalibration for array data.
        recalibrate_steps: Optional number of batches of that recalibration.
        layers: Optional list of the layers, or their names, to freeze (default: every
            `kerasnorm.BatchNormalization` of the model, nested models included). Keras's
            own `BatchNormalization` has no such mode: a model holding one needs `layers`.

    Call arguments:
        None: a `keras.callbacks.Callback`, passed to `model.fit(callbacks=[...])`.
        After `fit`, `frozen_at_step` is the step at which it froze (None if it did
        not).

    Example:
        >>> import keras
        >>> import numpy as np
        >>> import kerasnorm
        >>> model = keras.Sequential(
        ...     [keras.Input((2,)), kerasnorm.BatchNormalization(name="bn"), keras.layers.Dense(1)]
        ... )
        >>> model.compile(optimizer="sgd", loss="mse")
        >>> x = np.array([[1.0, 10.0], [3.0, 30.0], [5.0, 50.0], [7.0, 70.0]])
        >>> freeze = kerasnorm.FreezeBatchStatistics(at_step=1)
        >>> _ = model.fit(x, np.zeros((4, 1)), batch_size=2, callbacks=[freeze], verbose=0)
        >>> freeze.frozen_at_step, model.get_layer("bn").freeze_statistics
        (1, True)

    Reference:
        - [Wu and Johnson, 2021](https://arxiv.org/abs/2105.07576) (population
          statistics in training, against the train/test inconsistency).
    """

    def __init__(
        self,
        at_step=None,
        at_fraction=None,
        recalibrate_data=None,
        recalibrate_batch_size=32,
        recalibrate_steps=None,
        layers=None,
    ):
        super().__init__()
        if (at_step is None) == (at_fraction is None):
            raise ValueError(
                "Pass exactly one of `at_step` and `at_fraction`. "
                f"Received: at_step={at_step!r}, at_fraction={at_fraction!r}"
            )
        if at_step is not None and (
            isinstance(at_step, bool) or not isinstance(at_step, numbers.Integral) or at_step < 0
        ):
            raise ValueError(f"Argument `at_step` must be an int >= 0. Received: at_step={at_step!r}")
        self.at_step = None if at_step is None else int(at_step)
        self.at_fraction = (
            None if at_fraction is None else float_in("at_fraction", at_fraction, 0.0, 1.0, high_open=False)
        )
        self.recalibrate_data = recalibrate_data
        self.recalibrate_batch_size = M.validate_positive_int(recalibrate_batch_size, "recalibrate_batch_size")
        self.recalibrate_steps = M.validate_positive_int(recalibrate_steps, "recalibrate_steps", allow_none=True)
        self.layers = layers
        self.frozen_at_step = None
        self._targets = []
        self._start = 0
        self._due = None

    def on_train_begin(self, logs=None):
        self._targets = kerasnorm_batch_norms(self.model, self.layers)
        self._start = int(self.model.optimizer.iterations)
        self._due = self.at_step
        self.frozen_at_step = None

    def on_epoch_begin(self, epoch, logs=None):
        if self._due is None:
            steps = self.params.get("steps")
            if not steps:
                raise ValueError(
                    "FreezeBatchStatistics(at_fraction=...) needs the number of steps per "
                    "epoch: pass `steps_per_epoch` to fit, or use `at_step`. Received: "
                    f"steps={steps!r}"
                )
            # The first epoch seen is fit's initial epoch.
            total = (self.params["epochs"] - epoch) * steps
            self._due = int(math.ceil(self.at_fraction * total))

    def on_train_batch_begin(self, batch, logs=None):
        step = int(self.model.optimizer.iterations) - self._start
        if self.frozen_at_step is not None or step < self._due:
            return
        if keras.backend.backend() == "jax":
            # Under JAX, `fit` keeps the variables' latest values out of the model
            # between steps: write them back before reading or assigning statistics.
            self.model.jax_state_sync()
        if self.recalibrate_data is not None:
            recalibrate(
                self.model,
                self.recalibrate_data,
                batch_size=self.recalibrate_batch_size,
                steps=self.recalibrate_steps,
                layers=self._targets,
            )
        for layer in self._targets:
            layer.freeze_statistics = True
        self.model.make_train_function(force=True)
        self.frozen_at_step = step
