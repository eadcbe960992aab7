"""The comparison study: configs -> runs -> result rows -> report.

Four places, and data flows one way, downward:

- `studies.engine`: configs in, rows out. `config` (`RunConfig`, grids), `tasks` (the task
  registry), `data` and `real_data` (offline datasets), `models` (model builders),
  `training` (a run alone), `stacked` (seeds trained as the members of one model, with
  their layers and weight mapping), `worker` (`run_group`, the one seam from a group of
  configs to rows), `sweep` (the executors) and `store` (the results store and its atomic
  writer). The engine knows no claim.
- `studies.claims`: one module per claim; its grid, task and analysis. Claims depend on the
  engine and on `studies.report.stats` and `studies.report.plots`, never on each other.
- `studies.report`: the report from stored rows (`render`), with the statistics (`stats`)
  and the plots (`plots`); it never trains.
- `studies.bench`: the layer and engine benchmarks.

`studies.plan` (the sequential seed plans) and the command line (``python -m studies``)
sit on top: they register the claims' tasks and dispatch runs.
"""

import os

# Before Keras is imported anywhere: the study runs on TensorFlow, and TensorFlow's C++
# start-up chatter would bury the progress lines (a user's own setting wins).
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
