"""Stacked training: the runs that differ only in their seed, trained as the members of
one model.

The models of the study are so small that a run's fixed costs (building, compiling,
tracing) and TensorFlow's per-op overhead dwarf its arithmetic. So configs that share
everything but the seed train together: seeds fall in fixed blocks of `MEMBERS`
(``seed // MEMBERS``), and a block trains as the K members of one model built by
`studies.engine.stacked_layers.build_stacked_model`. Each member has

- the weights its seed's standalone build (`studies.engine.training.build`) would start
  from, copied in (`member_models`, `studies.engine.stacked_layers.stack_member_weights`);
- the data order its seed's standalone run would read (`data_order`, `data_orders`);
- its own optimizer state (SGD's momentum and Adam's moments are elementwise), its own
  dropout noise (elementwise) and its own normalization statistics (members are folded
  into the channel axis, and a channel's statistics are its member's only);
- its own loss: the model minimizes the sum of the members' losses, whose gradient with
  respect to one member's weights is that member's own gradient. A member that diverges
  is NaN in its own channels only; the others go on.

A block always trains whole, so a config's row is the same whether it runs alone or in a
sweep, in a fresh process or a reused one: running one seed trains (and stores) its block.
The compiled model is kept per architecture and process (`StackedTrainer`) and reset per
block (weights, optimizer state, dropout seeds, learning rate are variables): a worker
that gets many blocks of one architecture traces once.

Configs run stacked when their task is stackable (`studies.engine.tasks.register_task`
with ``stackable=True`` or a `studies.engine.tasks.Stacking`; the default ``train`` task
is), their model is in `STACKED_KINDS`, their norm in `STACKED_NORMS`, and they set no
``model.*`` option but `STACKED_OPTIONS`; the worker (`studies.engine.worker`) runs any
other config alone. A task's `Stacking` gives the learning rate of every step (a schedule)
and a ``finish`` hook, called after training with each member's trained weights copied
back into its standalone model (`stacked_layers.unstack_member_weights`) to add the task's own
measurements. Rows carry ``stack/members`` (K, 1 when alone) and ``stack/block`` (the
block index, None when alone). A stacked row's ``time/*`` columns are the block's times
divided by its members; ``steps`` of a diverged member counts up to its first non-finite
loss.

The stacked training step and evaluation compile with XLA (`StackedTrainer`); a run alone
(`studies.engine.training`) does not, under TensorFlow's op determinism.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import time
import traceback

import keras
import numpy as np
import tensorflow as tf

from studies.engine import models, stacked_layers, stacked_recurrent, tasks, training
from studies.engine.config import EVAL_BATCH_SIZE, MODEL_PREFIX, RunConfig
from studies.engine.stacked_layers import STACKED_KINDS, STACKED_NORMS, STACKED_OPTIONS

#: Seeds per block: the members of one stacked model (measured on 2 CPU cores for the
#: study's MLP: a step of 8 members costs about 2x one model's step, 32 members about 6x).
MEMBERS = 8
#: Compiled stacked models a process keeps (one per architecture, least recently used
#: dropped first).
CACHED_TRAINERS = 8


def _stacked_tokens(input_shape, num_classes, norm, members, *, widths=None, momentum=0.99, kernel_size=3,
                    epsilon=1e-3, **_):
    """`stacked_recurrent.build_stacked_token_model` with `build_model`'s arguments for
    ``kind="tokens"`` (the others do not apply to the token model, as there)."""
    return stacked_recurrent.build_stacked_token_model(
        input_shape, num_classes, norm, members, widths=widths or models.DEFAULT_TOKEN_WIDTHS,
        momentum=momentum, kernel_size=kernel_size, epsilon=epsilon,
    )  # fmt: skip


#: Sequence models with a stacked form (`studies.engine.stacked_recurrent`): the builder,
#: the norms it holds and the ``model.*`` options it takes.
SEQUENCE_KINDS = {
    "rnn": (stacked_recurrent.build_stacked_recurrent_model, stacked_recurrent.RNN_NORMS, ("share_statistics",)),
    "tokens": (_stacked_tokens, stacked_recurrent.TOKEN_NORMS, ("kernel_size",)),
}


def stackable(config: RunConfig) -> bool:
    """True if `config` trains as a member of a stacked model (see the module docstring)."""
    try:
        task_stacks = tasks.stackable_task(config)
    except ValueError:  # an unknown task: the worker records the error when it runs
        return False
    options = set(config.prefixed_options(MODEL_PREFIX))
    if config.model in SEQUENCE_KINDS:
        _, norms, allowed = SEQUENCE_KINDS[config.model]
        # Of the recurrent cells only the LSTM has a stacked form; a GRU runs alone.
        cell = config.model != "rnn" or config.cell == "lstm"
        return task_stacks and cell and config.norm in norms and not options - set(allowed)
    return (
        task_stacks
        and config.model in STACKED_KINDS
        and config.norm in STACKED_NORMS
        and not options - set(STACKED_OPTIONS)
    )


def mapping(config: RunConfig):
    """The module whose ``stack_member_weights`` and ``unstack_member_weights`` map
    `config`'s standalone models onto its stacked model and back."""
    return stacked_recurrent if config.model in SEQUENCE_KINDS else stacked_layers


def block_index(config: RunConfig) -> int:
    """The block of `config`'s seed: seeds ``[b * MEMBERS, (b + 1) * MEMBERS)`` form block b."""
    return config.seed // MEMBERS


def block(config: RunConfig) -> list[RunConfig]:
    """The `MEMBERS` configs of `config`'s block, in seed order."""
    first = block_index(config) * MEMBERS
    return [dataclasses.replace(config, seed=first + i) for i in range(MEMBERS)]


def architecture_fields(config: RunConfig) -> str:
    """What a compiled stacked model depends on, as a sortable string (the data's shape
    is added where the data are loaded)."""
    fields = config.to_dict()
    for name in ("claim", "task", "seed", "learning_rate", "epochs", "steps_per_epoch", "num_samples"):
        fields.pop(name)
    if config.optimizer != "sgd":
        fields.pop("momentum")
    fields["options"] = config.prefixed_options(MODEL_PREFIX)
    return json.dumps(fields, sort_keys=True)


def is_block(configs) -> bool:
    """True if `configs` are one whole block of stackable configs, in seed order."""
    configs = list(configs)
    return len(configs) == MEMBERS and all(stackable(c) for c in configs) and configs == block(configs[0])


def run_block(configs) -> list[dict]:
    """Trains the block `configs` (`block`) stacked; one row per member. If anything
    fails, every member's row records the error (``status="error"``), and the process's
    compiled models stay usable (each block resets them)."""
    start = time.perf_counter()
    try:
        rows = _train_block(configs)
    except Exception:  # a failing block is a recorded result; the sweep goes on
        error = traceback.format_exc(limit=20)
        rows = []
        for config in configs:
            row = training.base_row(config)
            row.update({"status": "error", "error": error})
            row.update({"stack/members": len(configs), "stack/block": block_index(config)})
            rows.append(row)
    total_s = (time.perf_counter() - start) / len(configs)
    for row in rows:
        row["time/total_s"] = total_s
    return rows


def _train_block(configs):
    first = configs[0]
    build_start = time.perf_counter()  # the block's set-up, and the trainer's when new
    # As `training.prepare`: op determinism (rows are reproducible) and no retracing noise.
    tf.get_logger().setLevel("ERROR")
    tf.config.experimental.enable_op_determinism()
    spec = tasks.stacking(first)
    dataset = training.load_dataset(first)
    if spec.dataset is not None:
        dataset = spec.dataset(first, dataset)
    if dataset.mask_train is not None and first.model not in SEQUENCE_KINDS:
        raise ValueError(f"Only sequence models train stacked on masked data. Received: model='{first.model}'")
    steps = training.epoch_steps(first, dataset)
    trainer = trainer_for(first, dataset)
    # The finish hook measures each member's trained model; without one, the members are
    # needed for their initial weights only.
    members = member_models(configs, dataset, initialized=spec.finish is not None)
    weights = mapping(first).stack_member_weights(trainer.model, members)
    if spec.finish is None:
        del members
        # Keras lists uninitialized variables to initialize them when a stateless scope
        # closes; forget these members' (and their layer names).
        keras.backend.clear_session(free_memory=False)
    orders = data_orders(configs, len(dataset.x_train), steps)
    if spec.learning_rates is None:
        rates = np.full(first.epochs * steps, first.learning_rate, np.float32)
    else:
        rates = np.asarray(spec.learning_rates(first, steps), np.float32)
        if rates.shape != (first.epochs * steps,):
            raise ValueError(
                f"Task '{first.task}' gave {rates.shape} learning rates for {first.epochs} epochs "
                f"of {steps} steps."
            )
    build_s = time.perf_counter() - build_start
    eval_train = spec.eval_train or bool(first.option("eval_train", False))
    logs = trainer.fit(
        dataset,
        weights,
        orders,
        rates.reshape(first.epochs, steps),
        dropout_seed=block_index(first) + 1,
        eval_train=eval_train,
    )
    finish_s = 0.0
    if spec.finish is not None:
        start = time.perf_counter()
        mapping(first).unstack_member_weights(trainer.model, members)
        finish_s = time.perf_counter() - start
    rows = []
    k = len(configs)
    for member, config in enumerate(configs):
        row = training.base_row(config)
        columns = {column: values[:, member].tolist() for column, values in logs["columns"].items()}
        row.update(
            training.metric_columns(
                config,
                columns,
                int(logs["steps"][member]),
                steps,
                build_s / k,
                logs["train_s"] / k,
                logs["eval_s"] / k,
            )
        )
        if spec.finish is not None:
            start = time.perf_counter()
            spec.finish(config, dataset, members[member], row)
            row["time/eval_s"] += time.perf_counter() - start + finish_s / k
        row.update({"stack/members": k, "stack/block": block_index(config)})
        rows.append(row)
    return rows


def member_models(configs, dataset, initialized=True) -> list:
    """Each config's standalone model, as its run alone builds it (`training.build`, seeded
    as `training.prepare` seeds it): the same initial weights.

    With ``initialized=False`` the models' variables are left uninitialized (built in a
    `keras.StatelessScope`): reading one gives its initializer's value, and nothing else
    works. That is all `stacked_layers.stack_member_weights` needs, at about half the cost
    of a full build, most of which is making the variables."""
    models_ = []
    for config in configs:
        keras.utils.set_random_seed(config.seed)
        if initialized:
            models_.append(training.build(config, dataset))
        else:
            with keras.StatelessScope(initialize_variables=False):
                models_.append(training.build(config, dataset))
    return models_


def data_order(config: RunConfig, num_train: int, epoch_steps: int) -> np.ndarray:
    """The indices of the training examples that `config`'s standalone run reads, shaped
    ``(epochs, epoch_steps, batch_size)``: the same `tf.data` shuffle (global and op seed
    the run's seed, reshuffled each pass) over the example indices, read as
    `studies.engine.training.fit_and_log` reads it through `keras.Model.fit` (one repeated stream
    with ``steps_per_epoch``, else a new pass per epoch with the last partial batch
    dropped; with option ``fixed_batches``, every pass in the first one's order)."""
    pipeline, read = _order_pipeline(config, num_train, epoch_steps)
    return read(pipeline)


def data_orders(configs, num_train: int, epoch_steps: int) -> np.ndarray:
    """`data_order` of each of `configs`, stacked on axis 2: ``(epochs, epoch_steps,
    len(configs), batch_size)``."""
    # Made one after another: a pipeline takes its seeds from TensorFlow's global seed when
    # it is made. Read two at a time: reading one is a single long call into tf.data, which
    # releases Python's interpreter lock.
    pipelines = [_order_pipeline(config, num_train, epoch_steps) for config in configs]
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        orders = list(pool.map(lambda pipeline: pipeline[1](pipeline[0]), pipelines))
    return np.stack(orders, axis=2)


def _order_pipeline(config, num_train, epoch_steps):
    """`config`'s shuffled passes over the example indices as a `tf.data` pipeline whose one
    element holds every pass the run opens, ``(passes, num_train)``, and the function that
    reads it into `data_order`'s array."""
    tf.random.set_seed(config.seed)
    passes = tf.data.Dataset.range(num_train)
    reshuffle = not config.option("fixed_batches", False)
    # Batched whole, a pass is one element downstream of the shuffle: the same passes as
    # element-wise reading, for a fraction of tf.data's per-element cost.
    passes = passes.shuffle(num_train, seed=config.seed, reshuffle_each_iteration=reshuffle).batch(num_train)
    per_epoch = epoch_steps * config.batch_size
    if config.steps_per_epoch:
        # One repeated stream: the epochs read on across pass boundaries.
        count = -(-config.epochs * per_epoch // num_train)

        def pick(opened):
            return opened.reshape(-1)[: config.epochs * per_epoch]

    else:
        # Keras's epoch iterator opens a new pass at each epoch's start and another at its
        # end (unread), and each opening reshuffles: epoch e reads pass 2e.
        count = 2 * config.epochs - 1

        def pick(opened):
            return opened[::2, :per_epoch]

    def read(pipeline):
        opened = next(iter(pipeline)).numpy()
        return pick(opened).reshape(config.epochs, epoch_steps, config.batch_size).astype(np.int32)

    return passes.repeat(count).batch(count), read


# ---------------------------------------------------------------------------------------
# The trainer.

_TRAINERS: collections.OrderedDict = collections.OrderedDict()


def trainer_for(config: RunConfig, dataset, members: int = MEMBERS) -> "StackedTrainer":
    """This process's compiled stacked model for `config`'s architecture (made once)."""
    key = (architecture_fields(config), tuple(dataset.input_shape), dataset.num_classes, members)
    if key in _TRAINERS:
        _TRAINERS.move_to_end(key)
    else:
        _TRAINERS[key] = StackedTrainer(config, dataset, members)
        while len(_TRAINERS) > CACHED_TRAINERS:
            _TRAINERS.popitem(last=False)
    return _TRAINERS[key]


class StackedTrainer:
    """A compiled stacked model of one architecture, its optimizer and its compiled
    training and evaluation functions, reused for every block of that architecture.

    Args:
        config: any config of the architecture (its seed, learning rate, epochs and data
            size do not matter).
        dataset: data of the shape the model takes.
        members: K.
    """

    def __init__(self, config: RunConfig, dataset, members: int = MEMBERS):
        self.members = members
        self.sample_shape = tuple(dataset.input_shape)
        self.num_classes = dataset.num_classes
        self.masked = dataset.mask_train is not None
        self.sequence = config.model in SEQUENCE_KINDS
        arguments = training.model_arguments(config, dataset)
        if config.model in SEQUENCE_KINDS:
            builder = SEQUENCE_KINDS[config.model][0]
            self.model = builder(self.sample_shape, self.num_classes, config.norm, members, **arguments)
        else:
            for name in ("cell", "masked", "max_steps"):
                arguments.pop(name)
            self.model = stacked_layers.build_stacked_model(
                config.model, self.sample_shape, self.num_classes, config.norm, members, **arguments
            )
        self.optimizer = training.make_optimizer(config)
        self.optimizer.build(self.model.trainable_variables)
        self.traces = 0
        # Any data size, sequence length and number of steps: one trace serves every block.
        x, y = tf.TensorSpec((None, *self.sample_shape), tf.float32), tf.TensorSpec((None,), tf.int32)
        mask = tf.TensorSpec((None, self.sample_shape[0]), tf.bool)
        order = tf.TensorSpec((None, members, config.batch_size), tf.int32)
        rates = tf.TensorSpec((None,), tf.float32)
        if self.masked:
            self._train = tf.function(self._train_steps, input_signature=[x, y, order, rates, mask], jit_compile=True)
            self._evaluate = tf.function(self._evaluate_batch, input_signature=[x, y, mask], jit_compile=True)
        else:
            self._train = tf.function(self._train_steps, input_signature=[x, y, order, rates], jit_compile=True)
            self._evaluate = tf.function(self._evaluate_batch, input_signature=[x, y], jit_compile=True)
        # One trace per architecture and process serves every block (the signature takes
        # any data size and number of steps). The training loop compiles with XLA, which
        # fuses each step's small ops (about 3x fewer seconds per step on 2 CPU cores for
        # the study's MLP); XLA specializes on the concrete shapes, so the first block of a
        # data size and epoch length pays the compilation and later ones reuse it. A
        # throwaway step here would only compile a shape no block uses.

    def _inputs(self, x, mask=None):
        """The stacked model's inputs from member-major data, ``(K, batch, *sample)`` (and
        masks ``(K, batch, time)``)."""
        if mask is None:
            return self._fold(x)
        return list(stacked_recurrent.fold_members(x, mask))

    def _fold(self, x):
        """``(K, batch, *sample)`` -> ``(batch, *sample[:-1], K * channels)``."""
        if self.sequence:
            return stacked_recurrent.fold_members(x)
        rank = len(self.sample_shape)
        x = tf.transpose(x, [1, *range(2, rank + 1), 0, rank + 1])
        return tf.reshape(x, (-1, *self.sample_shape[:-1], self.members * self.sample_shape[-1]))

    def _member_outputs(self, logits, labels):
        """Per-sample losses and hits, ``(batch, K)``, of logits ``(batch, K * classes)``."""
        logits = tf.reshape(logits, (-1, self.members, self.num_classes))
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
        hits = tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), labels), tf.float32)
        return losses, hits

    def _train_steps(self, x, y, order, rates, mask=None):
        """Trains one step per row of `order` (``(steps, K, batch)`` example indices), step
        i at learning rate ``rates[i]``; returns each step's per-member loss and accuracy,
        ``(steps, K)`` each. `mask`, for sequences, marks each example's real steps."""
        self.traces += 1  # Python side effect: runs when tracing only
        steps = tf.shape(order)[0]
        losses = tf.TensorArray(tf.float32, size=steps)
        accuracies = tf.TensorArray(tf.float32, size=steps)
        variables = self.model.trainable_variables
        for step in tf.range(steps):
            self.optimizer.learning_rate.assign(rates[step])
            xb = self._inputs(tf.gather(x, order[step]), None if mask is None else tf.gather(mask, order[step]))
            yb = tf.transpose(tf.gather(y, order[step]))
            with tf.GradientTape() as tape:
                member_losses, hits = self._member_outputs(self.model(xb, training=True), yb)
                loss = tf.reduce_mean(member_losses, axis=0)
                # The sum: d(total)/d(member k's weights) is member k's own gradient.
                total = tf.reduce_sum(loss)
            self.optimizer.apply(tape.gradient(total, variables), variables)
            losses = losses.write(step, loss)
            accuracies = accuracies.write(step, tf.reduce_mean(hits, axis=0))
        return losses.stack(), accuracies.stack()

    def _evaluate_batch(self, x, y, mask=None):
        """Sums over the batch of each member's loss and hits, in inference mode."""
        self.traces += 1
        copies = tf.broadcast_to(x[tf.newaxis], (self.members, *tf.unstack(tf.shape(x))))
        if mask is not None:
            mask = tf.broadcast_to(mask[tf.newaxis], (self.members, *tf.unstack(tf.shape(mask))))
        labels = tf.broadcast_to(y[:, tf.newaxis], (tf.shape(y)[0], self.members))
        losses, hits = self._member_outputs(self.model(self._inputs(copies, mask), training=False), labels)
        return tf.reduce_sum(losses, axis=0), tf.reduce_sum(hits, axis=0)

    def reset(self, weights, dropout_seed):
        """Starts a block: the model's weights set to `weights` (`stack_member_weights`),
        the optimizer's state zeroed (its learning rate is set at every step), each
        dropout layer's noise seeded from `dropout_seed`."""
        for variable, value in zip(self.model.weights, weights, strict=True):
            variable.assign(value)
        for variable in self.optimizer.variables:
            variable.assign(np.zeros(variable.shape, variable.dtype))
        dropouts = [
            layer for layer in self.model.layers if isinstance(layer, keras.layers.Dropout) and layer.rate
        ]
        for i, layer in enumerate(dropouts):
            state = layer.seed_generator.state
            state.assign(np.array([dropout_seed * 1000 + i, 0], dtype=state.dtype))

    def evaluate(self, x, y, mask=None) -> tuple[np.ndarray, np.ndarray]:
        """Each member's mean loss and accuracy on ``(x, y)`` (with its `mask`, for
        sequences) in inference mode, ``(K,)``."""
        loss_sum, hit_sum = np.zeros(self.members), np.zeros(self.members)
        for start in range(0, len(x), EVAL_BATCH_SIZE):
            stop = start + EVAL_BATCH_SIZE
            extra = () if mask is None else (mask[start:stop],)
            losses, hits = self._evaluate(x[start:stop], y[start:stop], *extra)
            loss_sum += losses.numpy()
            hit_sum += hits.numpy()
        return loss_sum / len(x), hit_sum / len(x)

    def fit(self, dataset, weights, orders, learning_rates, dropout_seed=1, eval_train=False) -> dict:
        """Trains the members from `weights` on `orders` (``(epochs, steps, K, batch)``
        example indices) at `learning_rates` (a number, or ``(epochs, steps)`` per step)
        and evaluates them after each epoch.

        Returns a dict: ``columns`` (column -> ``(epochs, K)`` array: the
        `studies.engine.training.EPOCH_METRICS` columns, and with `eval_train` the
        `studies.engine.training.TRAIN_EVAL_METRICS` ones), ``steps`` (per member: all of them,
        or up to its first non-finite loss), ``train_s`` and ``eval_s``."""
        self.reset(weights, dropout_seed)
        rates = np.broadcast_to(np.asarray(learning_rates, np.float32), orders.shape[:2])
        x_train, y_train = tf.constant(dataset.x_train), tf.constant(dataset.y_train.astype(np.int32))
        mask_train = () if dataset.mask_train is None else (tf.constant(dataset.mask_train),)
        splits = {"test": (dataset.x_test, dataset.y_test.astype(np.int32), dataset.mask_test)}
        if eval_train:
            splits["train_eval"] = (dataset.x_train, dataset.y_train.astype(np.int32), dataset.mask_train)
        columns = collections.defaultdict(list)
        step_losses = []
        train_s = eval_s = 0.0
        for epoch_order, epoch_rates in zip(orders, rates):
            start = time.perf_counter()
            losses, accuracies = self._train(
                x_train, y_train, tf.constant(epoch_order), tf.constant(epoch_rates), *mask_train
            )
            losses, accuracies = losses.numpy(), accuracies.numpy()
            train_s += time.perf_counter() - start
            step_losses.append(losses)
            columns["train/loss"].append(losses.mean(axis=0))
            columns["train/accuracy"].append(accuracies.mean(axis=0))
            start = time.perf_counter()
            for split, (x, y, mask) in splits.items():
                loss, accuracy = self.evaluate(x, y, mask)
                columns[f"{split}/loss"].append(loss)
                columns[f"{split}/accuracy"].append(accuracy)
            eval_s += time.perf_counter() - start
        finite = np.isfinite(np.concatenate(step_losses))
        steps = np.where(finite.all(axis=0), len(finite), np.argmin(finite, axis=0) + 1)
        return {
            "columns": {column: np.array(values) for column, values in columns.items()},
            "steps": steps,
            "train_s": train_s,
            "eval_s": eval_s,
        }
