"""Keras's own normalization tests, run against kerasnorm's classes: the drop-in contract.

Each test file of the installed Keras (`keras/src/layers/normalization/<name>_test.py`) is
executed afresh under a private module name, and the `layers` it reads is replaced by a
namespace where the class under test is kerasnorm's; every other layer it uses (`Input`,
`Masking`, ...) stays Keras's. Its test classes are then exposed here for pytest to
collect, so a Keras upgrade brings its new tests along, and nothing of Keras's code is
copied into this repository.

A missing test file, or a renamed test class, fails at collection; a file whose class
holds no test, or that never names the class under test, fails
`test_every_keras_file_tests_a_kerasnorm_class`. No test of these files is excluded.
"""

from __future__ import annotations

import importlib.util
import pathlib
import unittest

import keras.src.layers

import kerasnorm

KERAS_TEST_DIR = pathlib.Path(keras.src.layers.__file__).parent / "normalization"

# Keras's test file -> (its test class, kerasnorm's class put in place of Keras's).
CASES = {
    "batch_normalization_test.py": ("BatchNormalizationTest", kerasnorm.BatchNormalization),
    "layer_normalization_test.py": ("LayerNormalizationTest", kerasnorm.LayerNormalization),
    "group_normalization_test.py": ("GroupNormalizationTest", kerasnorm.GroupNormalization),
    "rms_normalization_test.py": ("RMSNormalizationTest", kerasnorm.RMSNormalization),
}


class _LayersWith:
    """`keras.src.layers` with one class swapped for kerasnorm's."""

    def __init__(self, layer_cls):
        self._layer_cls = layer_cls

    def __getattr__(self, name):
        if name == self._layer_cls.__name__:
            return self._layer_cls
        return getattr(keras.src.layers, name)


def _keras_test_module(filename):
    """Keras's test file `filename` run as a new module whose `layers` holds kerasnorm's
    class."""
    path = KERAS_TEST_DIR / filename
    if not path.is_file():
        raise FileNotFoundError(f"Keras's test file is missing from the installed keras: {path}")
    spec = importlib.util.spec_from_file_location(f"_keras_own_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.layers = _LayersWith(CASES[filename][1])
    return module


MODULES = {filename: _keras_test_module(filename) for filename in CASES}
KerasBatchNormalizationTest = MODULES["batch_normalization_test.py"].BatchNormalizationTest
KerasLayerNormalizationTest = MODULES["layer_normalization_test.py"].LayerNormalizationTest
KerasGroupNormalizationTest = MODULES["group_normalization_test.py"].GroupNormalizationTest
KerasRMSNormalizationTest = MODULES["rms_normalization_test.py"].RMSNormalizationTest


def test_every_keras_file_tests_a_kerasnorm_class():
    """Each Keras test file holds tests, names the class under test, and resolves it to
    kerasnorm's: otherwise the tests above would pass without testing kerasnorm."""
    collected = {
        KerasBatchNormalizationTest, KerasLayerNormalizationTest,
        KerasGroupNormalizationTest, KerasRMSNormalizationTest,
    }  # fmt: skip
    for filename, module in MODULES.items():
        class_name, layer_cls = CASES[filename]
        test_cls = getattr(module, class_name)
        assert test_cls in collected
        assert unittest.TestLoader().getTestCaseNames(test_cls), f"{filename} holds no test"
        source = (KERAS_TEST_DIR / filename).read_text()
        assert f"layers.{layer_cls.__name__}" in source, f"{filename} never uses {layer_cls.__name__}"
        assert getattr(module.layers, layer_cls.__name__) is layer_cls
