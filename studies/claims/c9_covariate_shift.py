"""C9 placeholder: a minimal grid until the claim's study is written."""

from studies.claims._minimal import placeholder_grid

CLAIM_ID = "C9"
TITLE = "BN works by reducing internal covariate shift"


def grid(profile):
    return placeholder_grid(CLAIM_ID, profile, activation="sigmoid")
