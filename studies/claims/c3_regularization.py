"""C3 placeholder: a minimal grid until the claim's study is written."""

from studies.claims._minimal import placeholder_grid

CLAIM_ID = "C3"
TITLE = "BN has a slight regularization effect, like dropout"


def grid(profile):
    return placeholder_grid(CLAIM_ID, profile)
