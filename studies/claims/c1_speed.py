"""C1 placeholder: a minimal grid until the claim's study is written."""

from studies.claims._minimal import placeholder_grid

CLAIM_ID = "C1"
TITLE = "BN speeds up learning"


def grid(profile):
    return placeholder_grid(CLAIM_ID, profile, activation="sigmoid")
