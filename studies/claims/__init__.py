"""The study's claims (``CLAIM_IDS``) and the interface their modules provide.

Each claim lives in its own module (``MODULES``), which defines:

- ``CLAIM_ID``: its id, e.g. ``"C4"``;
- ``TITLE``: the claim in the study note's words;
- ``grid(profile) -> list[RunConfig]``: the runs it needs, for profile ``smoke`` (seconds,
  used by the tests), ``quick`` (the whole study in minutes) or ``full`` (the committed
  report);
- ``analyze(rows: pandas.DataFrame) -> dict``: pure, from that claim's rows to its numbers
  and verdict;
- ``figures(analysis, out_dir) -> list[pathlib.Path]``: the files it wrote.

A claim that measures something other than training curves registers its own task with
`studies.engine.tasks.register_task` at import; its configs name that task.
`register_tasks` imports every claim module, so that their tasks are known: the command
line passes it to the sweep, which runs it in every worker process.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Protocol

import pandas

#: In study order: C4b (beyond the note: which small-batch remedy works) follows C4.
CLAIM_IDS = ("C1", "C2", "C3", "C4", "C4b", "C5", "C6", "C7", "C8", "C9")
MODULES = {
    "C1": "studies.claims.c1_speed",
    "C2": "studies.claims.c2_inference_statistics",
    "C3": "studies.claims.c3_regularization",
    "C4": "studies.claims.c4_batch_size",
    "C4b": "studies.claims.c4b_small_batch",
    "C5": "studies.claims.c5_recurrent",
    "C6": "studies.claims.c6_layer_norm_sequences",
    "C7": "studies.claims.c7_cnn",
    "C8": "studies.claims.c8_cost",
    "C9": "studies.claims.c9_covariate_shift",
}
PROFILES = ("smoke", "quick", "full")


class Claim(Protocol):
    """What a claim module provides (a module satisfies it structurally)."""

    CLAIM_ID: str
    TITLE: str

    def grid(self, profile: str) -> list: ...

    def analyze(self, rows: pandas.DataFrame) -> dict: ...

    def figures(self, analysis: dict, out_dir) -> list: ...


def parse_claims(text: str) -> list[str]:
    """``"all"`` or a comma-separated list of ids (any case) -> ids in study order.
    Raises `ValueError` naming an unknown id."""
    if text.strip().lower() == "all":
        return list(CLAIM_IDS)
    by_upper = {claim_id.upper(): claim_id for claim_id in CLAIM_IDS}
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise ValueError(f"no claim given; known: {CLAIM_IDS[0]}..{CLAIM_IDS[-1]} or 'all'")
    for part in parts:
        if part.upper() not in by_upper:
            raise ValueError(f"unknown claim '{part}'; known: {CLAIM_IDS[0]}..{CLAIM_IDS[-1]}")
    return sorted({by_upper[part.upper()] for part in parts}, key=CLAIM_IDS.index)


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile '{profile}'; known: {', '.join(PROFILES)}")
    return profile


def load(claim_id: str) -> ModuleType:
    """Imports claim `claim_id`'s module and checks that it declares that id."""
    if claim_id not in MODULES:
        raise ValueError(f"unknown claim '{claim_id}'; known: {CLAIM_IDS[0]}..{CLAIM_IDS[-1]}")
    module = importlib.import_module(MODULES[claim_id])
    if getattr(module, "CLAIM_ID", None) != claim_id:
        raise ValueError(f"{module.__name__} declares CLAIM_ID={getattr(module, 'CLAIM_ID', None)!r}, not {claim_id!r}")
    return module


def register_tasks() -> None:
    """Imports every claim's module, registering their tasks (`studies.engine.tasks`). A
    module-level function, so that a sweep's spawned and Ray workers can run it too."""
    for claim_id in CLAIM_IDS:
        load(claim_id)


def plan(claim_ids, profile: str) -> dict[str, list]:
    """``{claim id: its configs for profile}``, checking that every config names its claim."""
    check_profile(profile)
    planned = {}
    for claim_id in claim_ids:
        configs = list(load(claim_id).grid(profile))
        strays = {c.claim for c in configs} - {claim_id}
        if strays:
            raise ValueError(f"{MODULES[claim_id]}.grid returned configs of other claims: {sorted(strays)}")
        planned[claim_id] = configs
    return planned
