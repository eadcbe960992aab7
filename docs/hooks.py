"""MkDocs hooks of the documentation site (registered under `hooks:` in mkdocs.yml).

The study's report is written into reports/ by `python -m studies report`; the site takes
it from there at build time instead of keeping a copy under docs/:

- reports/REPORT.md, reports/claims/*.md and reports/figures/* are served as report/...,
  keeping their layout, so the report's relative links (`claims/c1.md`, `../REPORT.md#c1`,
  `figures/<id>.png` and `.csv`) resolve as they do on GitHub;
- the claim pages join the "Study report" section of the nav, in claim order, so a claim
  the study adds needs no edit here; so do the report's sensitivity and benchmark pages,
  and the study's design (studies/DESIGN.md, served at its repository path, where the
  report's link to it points).

It also points pymdownx.snippets at the repository root (the guides include sections of
README.md, wherever `mkdocs` is run from) and writes the Pygments stylesheet of the
highlighted code, which the theme would otherwise fetch from a CDN.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File
from pygments.formatters import HtmlFormatter

# Where the report lives in the repository and in the site, and the nav section it fills.
REPORTS = "reports"
REPORT_URI = "report"
REPORT_SECTION = "Study report"
# What of reports/ the site serves: not results/ (the stored runs) nor quick/.
REPORT_GLOBS = ("REPORT.md", "bench.md", "sensitivity.md", "claims/*.md", "figures/*")
# Pages of the report besides the front page and the claim pages, in nav order.
REPORT_PAGES = ("sensitivity.md", "bench.md")
# The study's design, which the report links: served at its repository path, so that the
# report's relative link (`../studies/DESIGN.md`) resolves.
DESIGN = "studies/DESIGN.md"
PYGMENTS_CSS = "css/pygments.css"


def _root(config) -> Path:
    return Path(config.config_file_path).resolve().parent


def _claim_order(path: Path):
    """c1, c2, ..., c4, c4b, c5, ..., c10: by number, then suffix."""
    match = re.fullmatch(r"c(\d+)(.*)", path.stem)
    return (int(match.group(1)), match.group(2)) if match else (float("inf"), path.stem)


def on_config(config):
    root = _root(config)
    snippets = config.mdx_configs.setdefault("pymdownx.snippets", {})
    snippets["base_path"] = [str(root)]

    claims = sorted((root / REPORTS / "claims").glob("*.md"), key=_claim_order)
    pages = [name for name in REPORT_PAGES if (root / REPORTS / name).is_file()]
    for entry in config.nav or []:
        if isinstance(entry, dict) and REPORT_SECTION in entry:
            entry[REPORT_SECTION].extend(f"{REPORT_URI}/{name}" for name in pages)
            entry[REPORT_SECTION].extend(f"{REPORT_URI}/claims/{path.name}" for path in claims)
            if (root / DESIGN).is_file():
                entry[REPORT_SECTION].append(DESIGN)
            break
    else:
        raise PluginError(f"mkdocs.yml's nav has no {REPORT_SECTION!r} section for the report")
    return config


def on_files(files, config):
    reports = _root(config) / REPORTS
    for pattern in REPORT_GLOBS:
        for path in sorted(reports.glob(pattern)):
            if path.is_file():
                uri = f"{REPORT_URI}/{path.relative_to(reports).as_posix()}"
                files.append(File.generated(config, uri, abs_src_path=str(path)))
    design = _root(config) / DESIGN
    if design.is_file():
        files.append(File.generated(config, DESIGN, abs_src_path=str(design)))
    css = HtmlFormatter(style="default").get_style_defs(".highlight")
    files.append(File.generated(config, PYGMENTS_CSS, content=css))
    return files
