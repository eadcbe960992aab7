"""A run's definition: the frozen `RunConfig`, and grids of them as data.

- `RunConfig` holds everything that defines one run; its `key()` names the stored row.
- A grid is data: `grid` takes the product of axes over a base `RunConfig`; `concat` joins
  grids (dropping repeats); `reseed` gives every arm the same seeds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json

from studies.engine import data, models

OPTIMIZERS = ("sgd", "adam")
#: Batch size used for evaluation (in inference mode it does not change the results).
EVAL_BATCH_SIZE = 1000
#: Options with these prefixes are routed: ``data.<name>`` to `studies.engine.data.load`,
#: ``model.<name>`` to `studies.engine.models.build_model`. Other options are free for tasks.
DATA_PREFIX, MODEL_PREFIX = "data.", "model."


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that defines one run; its `key()` names the stored result.

    Claim-specific settings go in `options`, a tuple of ``(name, value)`` pairs (a dict is
    accepted and sorted): ``data.*`` and ``model.*`` names are passed to the dataset and
    model builders (e.g. ``("data.max_test_len", 160)``, ``("model.share_statistics",
    True)``); others are read by the run's task (`option`).
    """

    claim: str
    task: str = "train"
    # Data.
    dataset: str = "mnist1d"  # studies.engine.data.NAMES
    num_samples: int | None = None  # examples in total, 80% train; None: the dataset's default
    # Model.
    model: str = "mlp"  # studies.engine.models.KINDS
    norm: str = "none"  # studies.engine.models.NORMS
    activation: str = "relu"
    widths: tuple[int, ...] | None = None  # units (mlp), filters (cnn), (units,) (rnn)
    cell: str = "gru"  # rnn only: gru | lstm
    dropout: float = 0.0  # rate after each hidden layer
    bn_momentum: float = 0.99  # momentum of the batch norms' moving statistics
    virtual_batch_size: int | None = None  # ghost batch size, for norm="ghost"
    renorm_rmax: float = 3.0  # batch renorm clipping of r to [1/rmax, rmax]
    renorm_dmax: float = 5.0  # batch renorm clipping of d to [-dmax, dmax]
    renorm_momentum: float = 0.99
    # Optimization.
    optimizer: str = "sgd"  # sgd (with `momentum`) | adam
    learning_rate: float = 0.05
    momentum: float = 0.9  # sgd momentum
    batch_size: int = 32
    epochs: int = 1  # logged periods: one pass over the data, or `steps_per_epoch` steps
    steps_per_epoch: int | None = None  # None: one pass (the last partial batch dropped)
    seed: int = 0  # weights, data order, dropout; the data themselves have fixed seeds
    options: tuple[tuple[str, object], ...] = ()

    def __post_init__(self):
        # Canonical types, so that equal configs have equal keys (1 and 1.0, a list and a
        # tuple, numpy and Python numbers) and every config is hashable.
        def coerce(name, kind):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, kind(value))

        for name in ("dropout", "bn_momentum", "renorm_rmax", "renorm_dmax",
                     "renorm_momentum", "learning_rate", "momentum"):  # fmt: skip
            coerce(name, float)
        for name in ("num_samples", "virtual_batch_size", "batch_size", "epochs", "steps_per_epoch", "seed"):
            coerce(name, int)
        coerce("widths", lambda widths: tuple(int(w) for w in widths))
        options = dict(self.options)
        if len(options) != len(self.options):
            raise ValueError(f"RunConfig options name a key twice. Received: {self.options!r}")
        object.__setattr__(
            self, "options", tuple(sorted((str(k), _frozen_value(v)) for k, v in options.items()))
        )
        _check_choice("dataset", self.dataset, data.NAMES)
        _check_choice("model", self.model, models.KINDS)
        _check_choice("norm", self.norm, models.NORMS)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        if self.batch_size < 1 or self.epochs < 1 or (self.steps_per_epoch or 1) < 1:
            raise ValueError(
                "batch_size, epochs and steps_per_epoch must be positive. Received: "
                f"batch_size={self.batch_size}, epochs={self.epochs}, "
                f"steps_per_epoch={self.steps_per_epoch}"
            )

    def to_dict(self) -> dict:
        """The fields as JSON-ready values (tuples as lists, options as a dict)."""
        fields = dataclasses.asdict(self)
        fields["options"] = dict(self.options)
        return json.loads(json.dumps(fields))

    def key(self) -> str:
        """Stable short id: sha256 of the canonical JSON of all fields, 16 hex digits."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def option(self, name, default=None):
        """The value of option `name`, or `default`."""
        return dict(self.options).get(name, default)

    def prefixed_options(self, prefix) -> dict:
        """Options whose name starts with `prefix`, the prefix removed."""
        return {k[len(prefix):]: v for k, v in self.options if k.startswith(prefix)}


def _frozen_value(value):
    """Lists become tuples (hashable); anything JSON cannot hold is refused."""
    if isinstance(value, (list, tuple)):
        return tuple(_frozen_value(v) for v in value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"RunConfig option values must be JSON scalars or lists. Received: {value!r}")


def _check_choice(name, value, known):
    if value not in known:
        raise ValueError(f"Unknown {name} '{value}'. Known: {', '.join(known)}")



def grid(base: RunConfig, **axes) -> list[RunConfig]:
    """The product of `axes` (field name -> list of values) applied to `base`, in order
    (the last axis varies fastest). ``grid(base)`` is ``[base]``."""
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(axes) - fields)
    if unknown:
        raise ValueError(f"grid axes must be RunConfig fields. Unknown: {', '.join(unknown)}")
    names = list(axes)
    values = [list(axes[name]) for name in names]
    return [dataclasses.replace(base, **dict(zip(names, combo))) for combo in itertools.product(*values)]


def concat(*grids) -> list[RunConfig]:
    """The configs of all `grids` in order, each once."""
    seen, out = set(), []
    for config in itertools.chain(*grids):
        if config.key() not in seen:
            seen.add(config.key())
            out.append(config)
    return out


def reseed(configs, seeds) -> list[RunConfig]:
    """`configs` with each arm's seeds replaced by `seeds` (an arm: the configs that differ
    only in their seed), arms in their first order, each config once."""
    arms = concat(dataclasses.replace(c, seed=0) for c in configs)
    return [dataclasses.replace(arm, seed=int(seed)) for arm in arms for seed in seeds]
