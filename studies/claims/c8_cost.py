"""C8 placeholder: a minimal grid until the claim's study is written."""

from studies.claims._minimal import placeholder_grid

CLAIM_ID = "C8"
TITLE = "LN can be slightly more computationally intensive"


def grid(profile):
    return placeholder_grid(CLAIM_ID, profile, norms=("batch", "layer"))
