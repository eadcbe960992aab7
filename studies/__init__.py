"""The comparison study: configs -> runs -> result rows -> report.

Modules: `studies.data` (offline datasets), `studies.models` (model builders),
`studies.training` (one run: `RunConfig` -> row, the task registry), `studies.sweep` (grids,
executors, the resumable results store), `studies.claims` (one module per claim C1..C9),
and the command line ``python -m studies``.
"""

import os

# Before Keras is imported anywhere: the study runs on TensorFlow, and TensorFlow's C++
# start-up chatter would bury the progress lines (a user's own setting wins).
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
