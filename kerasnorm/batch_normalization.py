"""Batch normalization: a drop-in for `keras.layers.BatchNormalization`, and more."""

from __future__ import annotations

import math
import numbers

import keras
from keras import initializers, ops

from kerasnorm import kernels
from kerasnorm._common import AffineMixin, check_bool, float_in, positive_float
from kerasnorm import moments as M

_RENORM_KEYS = ("rmax", "rmin", "dmax")
_ESTIMATORS = ("biased", "unbiased")


def _clone_initializer(initializer):
    # A stateful initializer called twice must not give the same values twice.
    if isinstance(initializer, initializers.Initializer):
        return initializer.__class__.from_config(initializer.get_config())
    return initializer


@keras.saving.register_keras_serializable(package="kerasnorm")
class BatchNormalization(AffineMixin, keras.layers.Layer):
    """Normalizes each feature over the mini-batch; a drop-in `keras.layers.BatchNormalization`.

    In training (`training=True` and the layer `trainable`) the layer returns
    `gamma * (x - mean(x)) / sqrt(var(x) + epsilon) + beta` with the statistics of the
    current batch, and updates the moving averages
    `moving = moving * momentum + batch_statistic * (1 - momentum)`. In inference it uses the
    moving averages instead. A layer with `trainable=False` always runs in inference mode
    (the fine-tuning convention of Keras).

    The constructor arguments, defaults, weights, saved files and numbers are those of
    `keras.layers.BatchNormalization`. What kerasnorm adds:

    - statistics always in float32 (float64 in a layer of `dtype="float64"`) with two
      passes, masked, and exact across `tf.distribute` replicas or `torch.distributed`
      processes with `synchronized=True`;
    - masks covering any leading axes; a batch with no valid element, or whose statistics
      are not finite, leaves the moving statistics untouched (per feature);
    - `axis` may be a list (e.g. per channel and position);
    - ghost batches (`virtual_batch_size`), the unbiased moving-variance estimator of the
      BN paper, and a warm-up schedule for batch renormalization;
    - two small-batch remedies: inference example weighing (`inference_weight`) and
      frozen statistics late in training (`freeze_statistics`).

    Args:
        axis: Integer or list of integers, the feature axes (not reduced). Default -1.
        momentum: Momentum of the moving averages, in [0, 1).
        epsilon: Positive float added to the variance before the square root.
        center: If True, add the learned offset `beta`.
        scale: If True, multiply by the learned scale `gamma`.
        beta_initializer: Initializer for `beta`.
        gamma_initializer: Initializer for `gamma`.
        moving_mean_initializer: Initializer for the moving mean.
        moving_variance_initializer: Initializer for the moving variance.
        beta_regularizer: Optional regularizer for `beta`.
        gamma_regularizer: Optional regularizer for `gamma`.
        beta_constraint: Optional constraint for `beta`.
        gamma_constraint: Optional constraint for `gamma`.
        renorm: Whether to use batch renormalization (Ioffe, 2017), as Keras does:
            training outputs are corrected by `r = stddev / renorm_stddev` and
            `d = (mean - renorm_mean) / renorm_stddev` (gradients stopped), clipped by
            `renorm_clipping`; inference is unchanged.
        renorm_clipping: Dict with optional keys `"rmax"`, `"rmin"`, `"dmax"`; missing
            ones default to inf, 0 and inf.
        renorm_momentum: Momentum of the renorm moving mean and standard deviation.
        renorm_warmup: Optional `(start_step, end_step)`: the clipping limits are those of
            plain batch normalization (`rmin = rmax = 1`, `dmax = 0`) until `start_step`,
            then move linearly to `renorm_clipping`'s values at `end_step`, as in the
            schedule of Ioffe (2017). Needs finite `rmax` and `dmax`. Adds a step counter
            weight `renorm_step`.
        synchronized: If True, compute the training statistics over the global batch
            when the batch is split across replicas, so that outputs, gradients and
            moving statistics equal those of one large batch (masks included: replicas
            holding more valid elements weigh more). Per backend:
            - TensorFlow, under a `tf.distribute` strategy with several replicas: the
              replicas' sums and valid counts are all-reduced. Outside a strategy, or
              with one replica, the layer's batch is the whole batch.
            - PyTorch, in a process of an initialized `torch.distributed` process group
              of several processes (each holding its part of the batch, as with
              `DistributedDataParallel`): the sums and valid counts are all-reduced
              over the default group, differentiably, so the inputs' gradients include
              the other processes' losses and the parameter gradients averaged across
              processes are those of one large batch. Every process must call the
              layer in step (each call is a collective). Without an initialized group,
              or with one process, the layer's batch is the whole batch. Tested
              eagerly, Keras's default with PyTorch.
            - JAX, with Keras's distribution API (`keras.distribution.DataParallel`):
              the batch is one global array sharded across the devices and the step is
              compiled as a whole, so the statistics are those of the global batch
              already, and are so with `synchronized=False` too. The argument changes
              nothing under JAX; inside `jax.pmap` or `shard_map` statistics stay per
              device either way.
        virtual_batch_size: Optional int `k` (ghost batch normalization, Hoffer et al.
            2017): in training each consecutive group of `k` samples is normalized with
            its own statistics and the moving averages are updated once per group, in
            order. The batch size must be a multiple of `k`.
        moving_variance_estimator: `"biased"` (Keras's: the batch variance divided by
            `m`) or `"unbiased"` (the BN paper's and PyTorch's `m / (m - 1)` correction
            of the stored variance; the batch itself is still normalized with the
            biased one).
        inference_weight: None (default: plain inference, Keras's numbers), a float `w`
            in (0, 1], or `"auto"` for `1 / virtual_batch_size` (needs
            `virtual_batch_size`). Inference example weighing (Summers & Dinneen 2020):
            in inference each example is normalized with the mixture of its own moments
            (over the reduced axes it has: the positions of a conv map; a dense layer's
            example has one value per unit, its mean, with variance 0) and the moving
            statistics, `mean = w * mean_e + (1 - w) * moving_mean` and `var = w * var_e
            + (1 - w) * moving_variance + w * (1 - w) * (mean_e - moving_mean)**2`, as in
            training each example weighed `1 / B` in its batch's statistics: `1 / B`,
            with `B` the training normalization batch (the ghost size with ghost
            batches), is the natural choice. Training is unchanged; a trained model can
            take it later (`kerasnorm.set_inference_weight`). Inference then depends on
            each example, so such a layer cannot be folded (`fold_batch_norm` leaves it).
        freeze_statistics: If True, training (`training=True`, layer trainable)
            normalizes with the moving statistics, as inference does, and leaves them
            unchanged, while `gamma` and `beta` (and the layers around) keep training:
            the frozen population statistics that Wu & Johnson (2021) use for the last
            part of training to remove the train/test inconsistency of small batches.
            Usually switched on mid-training by `kerasnorm.FreezeBatchStatistics`;
            setting the attribute by hand inside `fit` takes effect only once the train
            function is traced again (`model.make_train_function(force=True)`).
        **kwargs: Base layer keyword arguments (e.g. `name`, `dtype`).

    Call arguments:
        inputs: Floating-point tensor of any rank.
        training: Python boolean or None. Batch statistics are used, and the moving
            averages updated, only when `training` is true and the layer is trainable.
        mask: Optional boolean tensor covering leading axes of `inputs` (typically
            `(batch, time)`); masked positions never enter the statistics.

    Example:
        >>> import keras
        >>> import numpy as np
        >>> import kerasnorm
        >>> x = np.array([[1.0, 10.0], [3.0, 30.0]])
        >>> bn = kerasnorm.BatchNormalization()
        >>> print(keras.ops.convert_to_numpy(bn(x, training=True)).round(2))
        [[-1. -1.]
         [ 1.  1.]]
        >>> print(keras.ops.convert_to_numpy(bn.moving_mean).round(2))  # 0.01 * batch mean
        [0.02 0.2 ]

    Reference:
        - [Ioffe and Szegedy, 2015](https://arxiv.org/abs/1502.03167).
        - [Ioffe, 2017](https://arxiv.org/abs/1702.03275) (batch renormalization).
        - [Hoffer et al., 2017](https://arxiv.org/abs/1705.08741) (ghost batches).
        - [Summers and Dinneen, 2020](https://arxiv.org/abs/1906.03548) (inference
          example weighing); [Singh and Shrivastava,
          2019](https://arxiv.org/abs/1904.06031) (EvalNorm, a related estimate).
        - [Wu and Johnson, 2021](https://arxiv.org/abs/2105.07576) (population
          statistics in training, against the train/test inconsistency).
    """

    def __init__(
        self,
        axis=-1,
        momentum=0.99,
        epsilon=1e-3,
        center=True,
        scale=True,
        beta_initializer="zeros",
        gamma_initializer="ones",
        moving_mean_initializer="zeros",
        moving_variance_initializer="ones",
        beta_regularizer=None,
        gamma_regularizer=None,
        beta_constraint=None,
        gamma_constraint=None,
        renorm=False,
        renorm_clipping=None,
        renorm_momentum=0.99,
        synchronized=False,
        renorm_warmup=None,
        virtual_batch_size=None,
        moving_variance_estimator="biased",
        inference_weight=None,
        freeze_statistics=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.axis = M.validate_axis_argument(axis)
        self.momentum = float_in("momentum", momentum, 0.0, 1.0)
        self.epsilon = positive_float("epsilon", epsilon)
        self._init_affine(
            center, scale, beta_initializer, gamma_initializer,
            beta_regularizer, gamma_regularizer, beta_constraint, gamma_constraint,
        )  # fmt: skip
        self.synchronized = check_bool("synchronized", synchronized)
        self.moving_mean_initializer = initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = initializers.get(moving_variance_initializer)

        self.renorm = check_bool("renorm", renorm)
        self.renorm_clipping = self._check_renorm_clipping(renorm_clipping)
        self.renorm_momentum = float_in("renorm_momentum", renorm_momentum, 0.0, 1.0)
        self.renorm_warmup = self._check_renorm_warmup(renorm_warmup)

        if virtual_batch_size is not None and (
            isinstance(virtual_batch_size, bool)
            or not isinstance(virtual_batch_size, numbers.Integral)
            or virtual_batch_size < 1
        ):
            raise ValueError(
                "Argument `virtual_batch_size` must be a positive int or None. "
                f"Received: virtual_batch_size={virtual_batch_size!r}"
            )
        self.virtual_batch_size = None if virtual_batch_size is None else int(virtual_batch_size)
        if moving_variance_estimator not in _ESTIMATORS:
            raise ValueError(
                f"Argument `moving_variance_estimator` must be one of {_ESTIMATORS}. "
                f"Received: moving_variance_estimator={moving_variance_estimator!r}"
            )
        self.moving_variance_estimator = moving_variance_estimator
        self.inference_weight = inference_weight
        self.freeze_statistics = freeze_statistics

        self.supports_masking = True
        self.moving_mean = None
        self.moving_variance = None
        self._feature_axes = None
        self._reduction_axes = None
        # Filled by `kerasnorm.BatchStatisticsRecorder`; bypasses weight tracking so the
        # saved files stay those of Keras.
        object.__setattr__(self, "_statistics_sink", None)

    def _check_renorm_clipping(self, clipping):
        if clipping is None:
            return None if not self.renorm else {}
        if not isinstance(clipping, dict):
            raise ValueError(
                f"Argument `renorm_clipping` must be a dict with keys among {_RENORM_KEYS}. "
                f"Received: renorm_clipping={clipping!r}"
            )
        # Keras's phrases first, in Keras's order of checks.
        if set(clipping) - set(_RENORM_KEYS):
            raise ValueError(
                "Received invalid keys for `renorm_clipping` argument: "
                f"{sorted(set(clipping) - set(_RENORM_KEYS))}. "
                f"Supported values: {list(_RENORM_KEYS)}. Received: renorm_clipping={clipping!r}"
            )
        clipping = {k: float(v) for k, v in clipping.items() if v is not None}
        rmin, rmax, dmax = (clipping.get(k) for k in ("rmin", "rmax", "dmax"))
        if rmin is not None and rmax is not None and rmax < rmin:
            raise ValueError(
                "rmax should be greater than rmin in the `renorm_clipping` argument. "
                f"Received: rmax={rmax}, rmin={rmin}"
            )
        if dmax is not None and dmax < 0:
            raise ValueError(
                "dmax should be non-negative in the `renorm_clipping` argument. "
                f"Received: dmax={dmax}"
            )
        if rmin is not None and rmin < 0 or rmax is not None and rmax <= 0:
            raise ValueError(
                "renorm_clipping needs rmin >= 0 and rmax > 0. "
                f"Received: renorm_clipping={clipping!r}"
            )
        return clipping

    def _check_renorm_warmup(self, warmup):
        if warmup is None:
            return None
        ok = (
            isinstance(warmup, (list, tuple))
            and len(warmup) == 2
            and all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in warmup)
            and 0 <= warmup[0] < warmup[1]
        )
        if not ok:
            raise ValueError(
                "Argument `renorm_warmup` must be None or (start_step, end_step) with "
                f"0 <= start_step < end_step. Received: renorm_warmup={warmup!r}"
            )
        if not self.renorm:
            raise ValueError(
                f"Argument `renorm_warmup` needs renorm=True. Received: renorm_warmup={warmup!r}"
            )
        clip = self.renorm_clipping or {}
        if not (math.isfinite(clip.get("rmax", math.inf)) and math.isfinite(clip.get("dmax", math.inf))):
            raise ValueError(
                "Argument `renorm_warmup` ramps towards finite limits: set renorm_clipping's "
                f"rmax and dmax. Received: renorm_clipping={self.renorm_clipping!r}"
            )
        return [int(warmup[0]), int(warmup[1])]

    @property
    def inference_weight(self):
        return self._inference_weight

    @inference_weight.setter
    def inference_weight(self, value):
        if isinstance(value, str) and value == "auto":
            if self.virtual_batch_size is None:
                raise ValueError(
                    "Argument `inference_weight='auto'` means 1 / virtual_batch_size and "
                    "needs virtual_batch_size; otherwise pass 1 / B for a training batch "
                    "size B. Received: inference_weight='auto', virtual_batch_size=None"
                )
        elif value is not None:
            if isinstance(value, str):
                raise ValueError(
                    "Argument `inference_weight` must be None, a float in (0, 1] or "
                    f"'auto'. Received: inference_weight={value!r}"
                )
            value = float_in("inference_weight", value, 0.0, 1.0, low_open=True, high_open=False)
        self._inference_weight = value

    @property
    def freeze_statistics(self):
        return self._freeze_statistics

    @freeze_statistics.setter
    def freeze_statistics(self, value):
        self._freeze_statistics = check_bool("freeze_statistics", value)

    def _example_weight(self):
        """The inference example weight as a float, or None when off."""
        if self.inference_weight == "auto":
            return 1.0 / self.virtual_batch_size
        return self.inference_weight

    # -- build -----------------------------------------------------------------------

    def build(self, input_shape):
        ndim = len(input_shape)
        self._feature_axes, shape = M.weight_axes_and_shape(self.axis, input_shape)
        self._reduction_axes = tuple(a for a in range(ndim) if a not in self._feature_axes)
        if self.virtual_batch_size is not None and 0 in self._feature_axes:
            raise ValueError(
                "Ghost batches split the batch axis, which must then not be a feature "
                f"axis. Received: axis={self.axis!r}, virtual_batch_size={self.virtual_batch_size}"
            )
        self._build_affine(shape)
        # State, in Keras's order (the saved files match).
        state = [("moving_mean", self.moving_mean_initializer), ("moving_variance", self.moving_variance_initializer)]
        if self.renorm:
            # As Keras: renorm tracks standard deviations, initialized from the variance
            # initializer, and separate renorm averages used during training.
            def stddev_initializer(shape, dtype=None):
                return ops.sqrt(_clone_initializer(self.moving_variance_initializer)(shape, dtype=dtype))

            state += [
                ("moving_stddev", stddev_initializer),
                ("renorm_mean", _clone_initializer(self.moving_mean_initializer)),
                ("renorm_stddev", stddev_initializer),
            ]
        for name, initializer in state:
            setattr(self, name, self._state_weight(name, shape, initializer))
        if self.renorm_warmup is not None:
            self.renorm_step = self._state_weight("renorm_step", (), "zeros", dtype="float32")
        self.input_spec = keras.layers.InputSpec(
            ndim=ndim, axes={a: input_shape[a] for a in self._feature_axes}
        )

    def _state_weight(self, name, shape, initializer, dtype=None):
        """A non-trainable weight that is never autocast (statistics stay in the
        variable dtype, float32 under mixed precision)."""
        return self.add_weight(
            shape=shape, name=name, initializer=initializer, dtype=dtype, trainable=False, autocast=False
        )

    # -- call ------------------------------------------------------------------------

    def _broadcast(self, weight, ndim):
        """Reshapes a feature-shaped weight or statistic to broadcast against the inputs."""
        shape = [1] * ndim
        for i, a in enumerate(self._feature_axes):
            shape[a] = self.moving_mean.shape[i]
        return ops.reshape(weight, shape)

    def _squeeze(self, stat):
        """A statistic with kept reduced axes back to the weights' feature shape."""
        return ops.reshape(stat, self.moving_mean.shape)

    def call(self, inputs, training=None, mask=None):
        M.check_floating(inputs, self.name)
        ndim = len(inputs.shape)
        dtype = M.statistics_dtype(inputs.dtype)
        x = ops.cast(inputs, dtype)
        weights = M.mask_weights(mask, x)
        train = bool(training) and self.trainable
        # Frozen statistics: training normalizes as inference does (gradients still
        # reach gamma, beta and the inputs), and no moving average moves.
        frozen = train and self.freeze_statistics
        train = train and not frozen
        weight = None if train or frozen else self._example_weight()
        plain = self.virtual_batch_size is None and not self.renorm and weight is None
        if plain and kernels.available(x, self._feature_axes, weights if train else None, self.synchronized):
            outputs = self._call_fast(x, train)
        elif train:
            outputs = self._call_train(x, weights, ndim)
        else:
            mean = self._broadcast(ops.cast(self.moving_mean, dtype), ndim)
            variance = self._broadcast(ops.cast(self.moving_variance, dtype), ndim)
            if weight is not None:
                example_axes = tuple(a for a in self._reduction_axes if a != 0)
                example = M.example_moments(x, example_axes, weights)
                mean, variance = M.mix_with_example(example, mean, variance, weight)
            outputs = M.normalize(x, mean, variance, *self._affine(dtype, ndim), self.epsilon)
        return ops.cast(outputs, self.compute_dtype)

    def _affine(self, dtype, ndim):
        """(gamma, beta) shaped to broadcast against the inputs; None where disabled."""
        gamma = self._broadcast(ops.cast(self.gamma, dtype), ndim) if self.scale else None
        beta = self._broadcast(ops.cast(self.beta, dtype), ndim) if self.center else None
        return gamma, beta

    def _call_train(self, x, weights, ndim):
        gamma, beta = self._affine(x.dtype, ndim)
        if self.virtual_batch_size is not None:
            return self._train_ghost(x, weights, gamma, beta)
        stats = M.moments(x, self._reduction_axes, weights, self.synchronized)
        if self.renorm:
            gamma, beta = self._renorm_transform(stats, gamma, beta)
        self._update_statistics(*(self._squeeze(t) for t in stats))
        return M.normalize(x, stats.mean, stats.variance, gamma, beta, self.epsilon)

    def _call_fast(self, x, train):
        """Features last, float32, no mask: the backend kernels of `kernels.py`."""
        shape = self.moving_mean.shape
        gamma = ops.cast(self.gamma, "float32") if self.scale else ops.ones(shape)
        beta = ops.cast(self.beta, "float32") if self.center else ops.zeros(shape)
        if not train:
            mean = ops.cast(self.moving_mean, "float32")
            variance = ops.cast(self.moving_variance, "float32")
            return kernels.batch_norm_inference(x, mean, variance, gamma, beta, self.epsilon)
        outputs, mean, variance = kernels.batch_norm_train(x, gamma, beta, self.epsilon)
        count = ops.cast(M.reduced_count(x, self._reduction_axes), "float32") * ops.ones_like(mean)
        self._update_statistics(mean, variance, count)
        return outputs

    def _train_ghost(self, x, weights, gamma, beta):
        """Each group of `virtual_batch_size` samples normalized with its own statistics;
        the moving averages then take one update per group, in order."""
        k = self.virtual_batch_size
        batch = x.shape[0]
        if batch is not None and batch % k:
            raise ValueError(
                f"The batch size must be a multiple of virtual_batch_size={k} (use "
                f"drop_remainder=True on the last batch). Received: batch size {batch}"
            )
        shape = ops.shape(x)
        grouped_shape = (-1, k) + tuple(shape[1:])
        gx = ops.reshape(x, grouped_shape)
        gw = None
        if weights is not None:
            gw = ops.reshape(weights, (-1, k) + tuple(ops.shape(weights)[1:]))
        axes = (1,) + tuple(a + 1 for a in self._reduction_axes if a != 0)
        stats = M.moments(gx, axes, gw, self.synchronized)
        expand = lambda t: None if t is None else ops.expand_dims(t, 0)  # noqa: E731
        out_gamma, out_beta = expand(gamma), expand(beta)
        if self.renorm:
            out_gamma, out_beta = self._renorm_transform(stats, out_gamma, out_beta, grouped=True)
        per_group = lambda t: ops.reshape(t, (-1,) + tuple(self.moving_mean.shape))  # noqa: E731
        self._update_statistics(per_group(stats.mean), per_group(stats.variance), per_group(stats.count), grouped=True)
        outputs = M.normalize(gx, stats.mean, stats.variance, out_gamma, out_beta, self.epsilon)
        return ops.reshape(outputs, shape)

    # -- renormalization -------------------------------------------------------------

    def _renorm_limits(self):
        """(rmin, rmax, dmax), None for no limit; ramped by `renorm_warmup` if set."""
        clip = self.renorm_clipping or {}
        rmin, rmax, dmax = clip.get("rmin"), clip.get("rmax"), clip.get("dmax")
        if self.renorm_warmup is None:
            return rmin, rmax, dmax
        start, end = self.renorm_warmup
        t = ops.clip((ops.cast(self.renorm_step, "float32") - start) / (end - start), 0.0, 1.0)
        rmin = 1.0 + t * ((0.0 if rmin is None else rmin) - 1.0)
        return rmin, 1.0 + t * (rmax - 1.0), t * dmax

    def _renorm_transform(self, stats, gamma, beta, grouped=False):
        """Folds the renorm correction `(r, d)` into the scale and offset:
        `(x_hat * r + d) * gamma + beta = x_hat * (r * gamma) + (d * gamma + beta)`."""
        ndim = len(stats.mean.shape) - (1 if grouped else 0)
        dtype = stats.mean.dtype
        renorm_mean = self._broadcast(ops.cast(self.renorm_mean, dtype), ndim)
        # Early in training the renorm stddev may be ~0: never divide by less than
        # sqrt(epsilon), the smallest stddev a batch can have.
        renorm_stddev = ops.maximum(
            self._broadcast(ops.cast(self.renorm_stddev, dtype), ndim), math.sqrt(self.epsilon)
        )
        if grouped:
            renorm_mean, renorm_stddev = ops.expand_dims(renorm_mean, 0), ops.expand_dims(renorm_stddev, 0)
        stddev = ops.sqrt(stats.variance + self.epsilon)
        r = stddev / renorm_stddev
        d = (stats.mean - renorm_mean) / renorm_stddev
        rmin, rmax, dmax = self._renorm_limits()
        if rmin is not None:
            r = ops.maximum(r, rmin)
        if rmax is not None:
            r = ops.minimum(r, rmax)
        if dmax is not None:
            d = ops.clip(d, -dmax, dmax)
        r, d = ops.stop_gradient(r), ops.stop_gradient(d)
        new_gamma = r if gamma is None else r * gamma
        new_beta = d if gamma is None else d * gamma
        if beta is not None:
            new_beta = new_beta + beta
        return new_gamma, new_beta

    # -- moving statistics -----------------------------------------------------------

    @staticmethod
    def _ema(variable, values, valid, momentum):
        """Applies `v <- v * momentum + value * (1 - momentum)` once per row of `values`
        (shape `(groups,) + variable.shape`), in order, skipping rows where `valid` is
        False; written in closed form so it costs one pass whatever the group count."""
        old = ops.cast(variable, values.dtype)
        if values.shape[0] == 1:
            # One update: Keras's expression, guarded.
            new = ops.where(valid[0], old * momentum + values[0] * (1.0 - momentum), old)
            variable.assign(ops.cast(new, variable.dtype))
            return
        a = ops.where(valid, momentum, 1.0)
        b = ops.where(valid, 1.0 - momentum, 0.0)
        values = ops.where(valid, values, 0.0)
        # later[g] = product of a[h] for h > g: what row g's contribution decays by.
        reversed_a = ops.flip(a, axis=0)
        later = ops.concatenate([ops.ones_like(a[:1]), ops.cumprod(reversed_a, axis=0)[:-1]], axis=0)
        later = ops.flip(later, axis=0)
        total_decay = ops.prod(a, axis=0)
        new = old * total_decay + ops.sum(values * b * later, axis=0)
        variable.assign(ops.cast(new, variable.dtype))

    def _update_statistics(self, mean, variance, count, grouped=False):
        """Moves the averages towards the batch (or per-group) statistics. Features whose
        statistics are empty or not finite keep their state: a NaN batch never poisons
        the moving averages."""
        if not grouped:
            mean, variance, count = (ops.expand_dims(t, 0) for t in (mean, variance, count))
        valid = ops.logical_and(count > 0, M.is_finite(mean, variance))
        sink = self._statistics_sink
        if sink is not None:
            sink[0].assign(ops.cast(ops.mean(mean, axis=0), sink[0].dtype))
            sink[1].assign(ops.cast(ops.mean(variance, axis=0), sink[1].dtype))
        stored_variance = variance
        if self.moving_variance_estimator == "unbiased":
            stored_variance = variance * count / ops.maximum(count - 1.0, 1.0)
        if not self.renorm:
            self._ema(self.moving_mean, mean, valid, self.momentum)
            self._ema(self.moving_variance, stored_variance, valid, self.momentum)
            return
        stddev = ops.sqrt(variance + self.epsilon)
        self._ema(self.renorm_mean, mean, valid, self.renorm_momentum)
        self._ema(self.renorm_stddev, stddev, valid, self.renorm_momentum)
        self._ema(self.moving_mean, mean, valid, self.momentum)
        self._ema(self.moving_stddev, ops.sqrt(stored_variance + self.epsilon), valid, self.momentum)
        moving_stddev = ops.cast(self.moving_stddev, "float32")
        # As Keras: the variance follows the stddev; relu guards rounding below zero.
        self.moving_variance.assign(ops.relu(moving_stddev * moving_stddev - self.epsilon))
        if self.renorm_warmup is not None:
            self.renorm_step.assign(self.renorm_step + 1.0)

    # -- Keras plumbing --------------------------------------------------------------

    def compute_output_shape(self, input_shape):
        M.canonicalize_axes(self.axis, len(input_shape))
        return input_shape

    def get_config(self):
        config = {
            "axis": self.axis,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            **self._affine_config(),
            "moving_mean_initializer": initializers.serialize(self.moving_mean_initializer),
            "moving_variance_initializer": initializers.serialize(self.moving_variance_initializer),
            "synchronized": self.synchronized,
            "renorm": self.renorm,
            "renorm_clipping": self.renorm_clipping,
            "renorm_momentum": self.renorm_momentum,
            "renorm_warmup": self.renorm_warmup,
            "virtual_batch_size": self.virtual_batch_size,
            "moving_variance_estimator": self.moving_variance_estimator,
            "inference_weight": self.inference_weight,
            "freeze_statistics": self.freeze_statistics,
        }
        return {**super().get_config(), **config}
