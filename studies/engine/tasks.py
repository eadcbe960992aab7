"""The task registry: a run is carried out by a *task*, looked up by its config's name.

The engine registers the default task, ``train`` (`studies.engine.training.train`); a
claim that must measure something else registers its own task with `register_task`, from
its module, which the command line imports before any run (`studies.claims.register_tasks`).
Nothing here imports a claim: the registry is filled from above.

A task registered with ``stackable=True`` declares that its row is the default training's,
so the worker may train its configs as the members of one stacked model instead
(`studies.engine.stacked`). A task that trains with a learning-rate schedule or measures the
trained model afterwards registers a `Stacking` that says how (the rates per step, a
``finish`` hook on each member's trained model); other tasks always run as written.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from studies.engine.config import RunConfig

TASKS: dict[str, Callable[[RunConfig], dict]] = {}


@dataclasses.dataclass(frozen=True)
class Stacking:
    """How `studies.engine.stacked` makes the rows of a task that opts in, instead of calling it.

    The stacked engine trains like the default ``train`` task (SGD or Adam, an evaluation
    after each epoch), and then:

    Attributes:
        learning_rates: ``fn(config, epoch_steps) -> array`` of the learning rate of each
            optimizer step (``epochs * epoch_steps`` values, step 0 first), for a task
            that trains with a schedule; None for the config's constant rate.
        finish: ``fn(config, dataset, model, row) -> None``, for a task that measures
            the trained model: called per member with a `build` model holding that
            member's trained weights (moving statistics included) and the member's row,
            to which it adds its columns (the row's ``diverged`` says whether the weights
            are finite).
        applies: ``fn(config) -> bool``, False for the task's configs the engine cannot
            make (e.g. ones that need a per-step callback); those run as written.
        dataset: ``fn(config, dataset) -> dataset``, for a task that trains on other data
            than `load_dataset`'s (e.g. a subset of it); None for those.
        eval_train: whether the task evaluates the training set after each epoch
            (`TRAIN_EVAL_METRICS`) whatever its option ``eval_train`` says.
    """

    learning_rates: Callable | None = None
    finish: Callable | None = None
    applies: Callable | None = None
    dataset: Callable | None = None
    eval_train: bool = False


#: Tasks whose rows the stacked engine (`studies.engine.stacked`) may make instead, and how.
STACKABLE_TASKS: dict[str, Stacking] = {}


def register_task(name: str, stackable: bool | Stacking = False):
    """Decorator: registers `fn(config) -> row` as task `name` (a name is registered once).

    With ``stackable=True`` the task declares that its row is the default ``train`` task's
    row for its config (it trains, evaluates after each epoch and logs, nothing more), so
    `studies.engine.stacked` may train its configs as members of one stacked model instead of
    calling it; with a `Stacking`, that its row is that training's with the schedule and
    the measurements the `Stacking` describes. A task that does anything else leaves it
    False and runs as written."""

    def decorator(fn):
        if name in TASKS and TASKS[name] is not fn:
            raise ValueError(f"Task '{name}' is already registered by {TASKS[name].__module__}.")
        TASKS[name] = fn
        if stackable:
            STACKABLE_TASKS[name] = stackable if isinstance(stackable, Stacking) else Stacking()
        return fn

    return decorator


def stacking(config: RunConfig) -> Stacking | None:
    """How the stacked engine makes `config`'s row, or None if its task did not opt in or
    excludes this config."""
    task(config)
    spec = STACKABLE_TASKS.get(config.task)
    if spec is None or (spec.applies is not None and not spec.applies(config)):
        return None
    return spec


def stackable_task(config: RunConfig) -> bool:
    """True if `config`'s task is stackable for it."""
    return stacking(config) is not None


def task(config: RunConfig) -> Callable[[RunConfig], dict]:
    """The task of `config`. A task is known once the module that registers it is imported:
    the engine's ``train`` with `studies.engine.training`, a claim's own tasks with its
    module (`studies.claims.register_tasks` imports them all, in every worker process)."""
    if config.task not in TASKS:
        raise ValueError(
            f"Unknown task '{config.task}': no imported module registers it. "
            f"Registered tasks: {', '.join(sorted(TASKS))}"
        )
    return TASKS[config.task]
