"""Placeholder grids for claim modules not written yet: a norm against no norm on the
claim's model and dataset, just enough that every claim trains something per profile.
A claim's own module replaces its use of this wholesale."""

from __future__ import annotations

from studies.claims import check_profile
from studies.sweep import grid
from studies.training import RunConfig

# profile -> (seeds, epochs, num_samples of the generated datasets)
SETTINGS = {"smoke": ((0,), 1, 500), "quick": ((0, 1), 3, None), "full": ((0, 1, 2), 10, None)}


def placeholder_grid(claim_id, profile, norms=("none", "batch"), **fields):
    """`norms` x seeds of one `RunConfig(claim=claim_id, **fields)`, sized by profile."""
    seeds, epochs, size = SETTINGS[check_profile(profile)]
    if fields.get("dataset") == "digits":  # fixed size
        size = None
    base = RunConfig(claim=claim_id, epochs=epochs, num_samples=size, **fields)
    return grid(base, norm=list(norms), seed=list(seeds))
