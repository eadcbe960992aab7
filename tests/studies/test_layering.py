"""The study's modules import downward only: the engine knows no claim, the claims know
no report, and no claim imports another (`studies/__init__.py` describes the places).

Every import is checked, those inside functions included: a lazy import of a module
above is still an upward dependency.
"""

from __future__ import annotations

import ast
import pathlib
import sys

import pytest

import studies

ROOT = pathlib.Path(studies.__file__).parent

#: The floors, lowest first: a module may import a module of a lower floor only. The
#: engine's own modules are floors of their own, in the order they build on one another.
FLOORS = (
    ("studies.engine.dataset",),
    ("studies.engine.real_data",),
    ("studies.engine.data",),
    ("studies.engine.models",),
    ("studies.engine.config",),
    ("studies.engine.store", "studies.engine.tasks"),
    ("studies.engine.training",),
    ("studies.engine.stacked_layers",),
    ("studies.engine.stacked_recurrent",),
    ("studies.engine.stacked",),
    ("studies.engine.worker",),
    ("studies.engine.sweep",),
    ("studies.report.stats", "studies.report.plots"),
    ("studies.bench",),
    ("studies.claims",),
    ("studies.claims._mlp_common", "studies.claims._sequence_common"),
    ("studies.claims._cnn_common",),
    ("studies.claims.c*",),
    ("studies.plan",),
    ("studies.report.render",),
    ("studies.__main__",),
)
#: Package initializers hold a docstring and, for `studies`, the backend's environment:
#: importing one is free for everybody.
PACKAGES = ("studies", "studies.engine", "studies.report")


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _floor(name: str) -> int:
    for floor, patterns in enumerate(FLOORS):
        for pattern in patterns:
            if name == pattern or (pattern.endswith("*") and name.startswith(pattern[:-1])):
                return floor
    raise AssertionError(f"{name} has no floor in FLOORS: add it where it belongs")


def _imports(path: pathlib.Path) -> set[str]:
    """The `studies` modules that `path` imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                # `from studies.engine import training` imports a module; `from
                # studies.engine.config import RunConfig` a name of one.
                where = ROOT.parent / candidate.replace(".", "/")
                is_module = where.with_suffix(".py").exists() or (where / "__init__.py").exists()
                found.add(candidate if is_module else node.module)
    return {name for name in found if name.split(".")[0] == "studies"}


MODULES = sorted(p for p in ROOT.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module_name(p))
def test_every_import_goes_down(path):
    name = _module_name(path)
    if name in PACKAGES:
        assert not _imports(path), f"{name} is a package initializer and imports nothing of the study"
        return
    own = _floor(name)
    upward = sorted(i for i in _imports(path) if i not in PACKAGES and _floor(i) >= own and i != name)
    assert not upward, f"{name} (floor {own}) imports modules on its floor or above: {upward}"


def test_claims_never_import_each_other():
    claim_modules = [p for p in MODULES if p.parent.name == "claims" and p.stem.startswith("c")]
    assert len(claim_modules) >= 10
    for path in claim_modules:
        others = {i for i in _imports(path) if i.startswith("studies.claims.c") and i != _module_name(path)}
        assert not others, f"{_module_name(path)} imports other claims: {sorted(others)}"


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    # A module of the engine that imported a claim would fail the check above.
    engine = tmp_path / "studies" / "engine"
    engine.mkdir(parents=True)
    (engine / "training.py").write_text("def f():\n    from studies import claims\n")
    (tmp_path / "studies" / "claims").mkdir()
    (tmp_path / "studies" / "claims" / "__init__.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path / "studies")
    path = engine / "training.py"
    assert _imports(path) == {"studies.claims"}
    assert _floor("studies.claims") > _floor(_module_name(path))
