"""The documentation site (`make docs`): it builds in strict mode with the study's report,
every public name has its page in the nav, and every docstring example runs."""

from __future__ import annotations

import doctest
import importlib
import pathlib
import pkgutil
import re
import subprocess
import sys

import pytest
import yaml

import kerasnorm

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODULES = ["kerasnorm", *sorted(m.name for m in pkgutil.iter_modules(kerasnorm.__path__, "kerasnorm."))]
FLAGS = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS


def _doctests(name):
    """The module's docstring examples, with fresh globals: an example imports what it uses,
    as a reader copying it would."""
    tests = doctest.DocTestFinder().find(importlib.import_module(name), name, globs={})
    return [test for test in tests if test.examples]


MODULES_WITH_EXAMPLES = [name for name in MODULES if _doctests(name)]


def _nav_pages(entries):
    for entry in entries:
        values = entry.values() if isinstance(entry, dict) else [entry]
        for value in values:
            if isinstance(value, list):
                yield from _nav_pages(value)
            else:
                yield value


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site as `make docs` builds it, into a temporary folder."""
    site_dir = tmp_path_factory.mktemp("docs") / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return site_dir


def test_site_builds_in_strict_mode_with_every_page(site):
    for name in kerasnorm.__all__:
        page = (site / "api" / name / "index.html").read_text()
        assert f'id="kerasnorm.{name}"' in page, name
    # The report's relative links, rewritten to the site's pages (strict mode fails on any
    # that does not resolve).
    report = (site / "report" / "REPORT" / "index.html").read_text()
    assert 'href="../claims/c1/"' in report
    assert 'src="../figures/fig-summary.png"' in report
    assert 'href="../figures/fig-summary.csv"' in report
    assert 'href="../../REPORT/#c1"' in (site / "report" / "claims" / "c1" / "index.html").read_text()
    for claim in (ROOT / "reports" / "claims").glob("*.md"):
        assert (site / "report" / "claims" / claim.stem / "index.html").is_file(), claim.name
    for figure in (ROOT / "reports" / "figures").iterdir():
        assert (site / "report" / "figures" / figure.name).read_bytes() == figure.read_bytes()


def test_site_loads_nothing_from_the_network(site):
    """No script or stylesheet from a CDN: the site reads offline, as it builds."""
    for page in site.rglob("*.html"):
        remote = re.findall(r'<(?:script|link)[^>]+(?:src|href)="(?:https?:)?//[^"]+"', page.read_text())
        assert not remote, (page.relative_to(site), remote)


def test_every_public_name_has_a_page_in_the_nav():
    nav = set(_nav_pages(yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]))
    missing_pages = [
        name for name in kerasnorm.__all__
        if not (ROOT / "docs" / "api" / f"{name}.md").is_file()
        or f"::: kerasnorm.{name}" not in (ROOT / "docs" / "api" / f"{name}.md").read_text()
    ]
    missing_nav = [name for name in kerasnorm.__all__ if f"api/{name}.md" not in nav]
    assert not missing_pages, f"no docs/api/<name>.md with '::: kerasnorm.<name>': {missing_pages}"
    assert not missing_nav, f"not in mkdocs.yml's nav: {missing_nav}"


@pytest.mark.parametrize("name", MODULES_WITH_EXAMPLES)
def test_docstring_examples_run(name):
    failures = []
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    for test in _doctests(name):
        runner.run(test, out=failures.append)
    assert runner.failures == 0, "".join(failures)
