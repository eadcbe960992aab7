"""The one seam from configs to rows: `run_group` takes a group of configs and returns
their rows, whatever the group is.

- `plan` cuts a list of configs into the groups a worker takes: each stackable config's
  whole block of seeds (`studies.engine.stacked.block`), once, and every other config
  alone; groups of one architecture are adjacent, so a worker taking them in order reuses
  its compiled model.
- `run_group` trains a block stacked (`studies.engine.stacked.run_block`) and anything
  else config by config with its task (`studies.engine.tasks`). A lone config is a group
  of one; its row records ``stack/members`` 1 and ``stack/block`` None.

A failing run is a recorded result, not an exception: its row has ``status="error"`` and
the traceback in ``error``, and the sweep goes on.
"""

from __future__ import annotations

import time
import traceback

from studies.engine import stacked, tasks, training
from studies.engine.config import RunConfig


def plan(configs) -> list[list[RunConfig]]:
    """The groups of `configs` (see the module docstring), in the order to run them."""
    groups = {}
    for config in configs:
        if stacked.stackable(config):
            group = stacked.block(config)
            groups.setdefault(group[0].key(), group)
        else:
            groups.setdefault(config.key(), [config])
    return sorted(groups.values(), key=lambda group: stacked.architecture_fields(group[0]))


def run_group(configs) -> list[dict]:
    """The rows of `configs`, a group of `plan`: a block of stackable configs trains
    stacked; anything else runs config by config."""
    configs = list(configs)
    if stacked.is_block(configs):
        return stacked.run_block(configs)
    rows = []
    for config in configs:
        row = _run_alone(config)
        row.update({"stack/members": 1, "stack/block": None})
        rows.append(row)
    return rows


def run_one(config: RunConfig) -> dict:
    """The row of `config` run alone: ``run_group([config])[0]``."""
    return run_group([config])[0]


def _run_alone(config: RunConfig) -> dict:
    """`config`'s row from its task, ``status="error"`` with the traceback in ``error`` if
    the task raised. Adds ``time/total_s``."""
    start = time.perf_counter()
    try:
        row = tasks.task(config)(config)
    except Exception:  # a failing run is a recorded result; the sweep goes on
        row = training.base_row(config)
        row["status"] = "error"
        row["error"] = traceback.format_exc(limit=20)
    row["time/total_s"] = time.perf_counter() - start
    return row
