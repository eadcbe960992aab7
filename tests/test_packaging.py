"""The wheel's requirements: `pip install kerasnorm` brings what the layers import and
nothing else (the study's packages live in the `study` extra), as Keras itself does."""

from __future__ import annotations

import ast
import email.parser
import pathlib
import re
import os
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Import name -> distribution name, where they differ.
DISTRIBUTIONS = {"sklearn": "scikit-learn"}


@pytest.fixture(scope="module")
def requirements(tmp_path_factory):
    """{extra or None: set of distribution names} from the metadata setuptools builds for
    the wheel (the same hook `pip wheel` calls)."""
    tmp_path = tmp_path_factory.mktemp("metadata")
    script = (
        "import sys; from setuptools import build_meta; "
        "print(build_meta.prepare_metadata_for_build_wheel(sys.argv[1]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, check=True
    )
    dist_info = tmp_path / result.stdout.strip().splitlines()[-1]
    metadata = email.parser.Parser().parsestr((dist_info / "METADATA").read_text())
    requirements = {}
    for line in metadata.get_all("Requires-Dist"):
        name = re.match(r"[A-Za-z0-9_.\-]+", line).group(0).lower()
        extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", line)
        requirements.setdefault(extra and extra.group(1), set()).add(name)
    return requirements


def _module_level_imports(package):
    """Top-level names of the third-party modules `package` imports at module level (an
    import inside a function, such as TensorFlow's in the TensorFlow-only paths, is not a
    requirement of the package)."""
    names = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.add(node.module.split(".")[0])
    local = {"kerasnorm", "studies", "__future__"}
    return {DISTRIBUTIONS.get(n, n) for n in names - local - set(sys.stdlib_module_names)}


def test_core_requirements_are_the_layers_own_imports(requirements):
    assert requirements[None] == _module_level_imports("kerasnorm") == {"keras", "numpy"}


def test_the_study_extra_brings_what_the_study_imports(requirements):
    assert _module_level_imports("studies") <= requirements[None] | requirements["study"]
    assert {"jax", "torch", "tensorflow", "pytest"} <= requirements["test"]


def test_importing_kerasnorm_keeps_the_users_backend(tmp_path):
    """A layer user's backend choice in keras.json wins: the library sets no backend."""
    (tmp_path / "keras.json").write_text('{"backend": "jax"}')
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["KERAS_HOME"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", "import kerasnorm, keras; print(keras.backend.backend())"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    )
    assert result.stdout.strip().splitlines()[-1] == "jax"
