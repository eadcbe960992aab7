"""C2 placeholder: a minimal grid until the claim's study is written."""

from studies.claims._minimal import placeholder_grid

CLAIM_ID = "C2"
TITLE = "At test time BN uses exponential moving averages of mu and sigma"


def grid(profile):
    return placeholder_grid(CLAIM_ID, profile)
