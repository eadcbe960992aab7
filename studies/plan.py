"""The sequential seed plan: a claim whose decisive checks stay undecided for want of
precision gets more seeds, in blocks, up to the cap its `studies.report.stats.SeedPlan` declares.

The full profile follows the plans by default (``python -m studies run --profile full``;
``--no-sequential`` trains the seeds the plans stand at). `run_planned` runs the profile's
grids, analyzes each claim, extends the seeds of the claims
`studies.report.stats.more_seeds_needed` names and repeats until none does (full profile
only): until each claim's decisive checks are decided or its cap is reached. The seeds it
added are stored beside the results (`SEEDS`, per profile), so that `studies.report` plans the same
runs from the results directory alone.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

from studies import claims as claims_registry
from studies.engine.store import ResultsStore, load_rows, write_text
from studies.report import stats

#: {"profile": ..., "seeds": {claim id: seeds per arm}} of the claims the plan extended.
SEEDS = "seeds.json"


def seeds_per_arm(configs) -> int:
    """The number of distinct seeds among `configs` (a claim's grid gives every arm the same)."""
    return len({c.seed for c in configs})


def with_seeds(configs, n: int) -> list:
    """`configs` with each arm's seeds extended to `n`: an arm is a config of the grid's
    first seed, and the new seeds follow the grid's largest. Unchanged when the grid already
    has `n` seeds or more."""
    configs = list(configs)
    seeds = sorted({c.seed for c in configs})
    if not seeds or n <= len(seeds):
        return configs
    new = range(seeds[-1] + 1, seeds[-1] + 1 + n - len(seeds))
    arms = [c for c in configs if c.seed == seeds[0]]
    return configs + [dataclasses.replace(c, seed=s) for s in new for c in arms]


def extend(planned: dict, seeds: dict) -> dict:
    """``{claim: configs}`` with the seeds of each claim in `seeds` extended to that many."""
    return {claim: with_seeds(configs, seeds.get(claim, 0)) for claim, configs in planned.items()}


def read_seeds(results_dir, profile) -> dict:
    """{claim id: seeds per arm} the plan stored for `profile` in `results_dir` ({} if none)."""
    path = pathlib.Path(results_dir) / SEEDS
    if profile is None or not path.exists():
        return {}
    stored = json.loads(path.read_text())
    return dict(stored["seeds"]) if stored.get("profile") == profile else {}


def write_seeds(results_dir, profile, seeds: dict):
    text = json.dumps({"profile": profile, "seeds": dict(sorted(seeds.items()))}, indent=1) + "\n"
    write_text(pathlib.Path(results_dir) / SEEDS, text)


def next_seeds(planned: dict, rows) -> dict:
    """{claim id: seeds per arm} for the claims whose analysis of `rows` (only the runs of
    `planned`) asks `stats.more_seeds_needed` for more, under the plan the analysis carries."""
    grow = {}
    keys = {claim: {c.key() for c in configs} for claim, configs in planned.items()}
    for claim, configs in planned.items():
        claim_rows = rows[rows["key"].isin(keys[claim])].reset_index(drop=True) if len(rows) else rows
        if not len(claim_rows):
            continue
        analysis = claims_registry.analyze(claim, claim_rows)
        if not analysis.get("seed_plan"):
            continue
        n_now = seeds_per_arm(configs)
        more = stats.more_seeds_needed(analysis, stats.SeedPlan(**analysis["seed_plan"]), n_now)
        if more:
            grow[claim] = n_now + more
    return grow


#: Profiles that follow the sequential plans: the plans size the full profile; smoke and
#: quick runs check the machinery within seconds and minutes, with the grid's seeds alone.
SEQUENTIAL_PROFILES = ("full",)


def run_planned(claim_ids, profile, store: ResultsStore, run_configs, sequential=True):
    """Runs `claim_ids` at `profile`, with their sequential seed plans where the profile
    follows them (`SEQUENTIAL_PROFILES`) and `sequential` is true; otherwise the grids with
    the seeds the plan stored before (a study resumes where its plan stood). Returns ``(summary, seeds)``: one
    `studies.engine.sweep.SweepSummary` over all rounds (``planned``: the runs of the final plan,
    ``skipped``: those already done before the first round) and {claim: seeds per arm} of the
    claims the plan extended.

    Args:
        claim_ids, profile: what to run.
        store: the results store; the added seeds are written beside it (`SEEDS`).
        run_configs: ``run_configs(configs) -> SweepSummary``, the engine's sweep (runs what
            the store lacks).
        sequential: whether to add the blocks the plans call for (the command line's
            default; ``run --no-sequential`` turns it off). Finished runs are skipped, so a
            study whose plans are complete (every decisive check decided or at its cap)
            reruns nothing: ``make report`` on the committed rows only writes the report.
    """
    base = claims_registry.plan(claim_ids, profile)
    seeds = read_seeds(store.root, profile)
    total = None
    while True:
        planned = extend(base, seeds)
        summary = run_configs([c for configs in planned.values() for c in configs])
        if total is None:
            total = summary
        else:
            total = dataclasses.replace(total, planned=summary.planned, ok=total.ok + summary.ok,
                                        errors=total.errors + summary.errors)
        follows = sequential and profile in SEQUENTIAL_PROFILES
        grow = next_seeds(planned, load_rows(store.root)) if follows else {}
        if not grow:
            return total, seeds
        seeds = {**seeds, **grow}
        write_seeds(store.root, profile, seeds)
