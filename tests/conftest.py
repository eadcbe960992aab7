"""Shared test setup: the TensorFlow backend, quiet logs, set before Keras is imported."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
