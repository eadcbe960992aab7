"""C7 placeholder: a minimal grid until the claim's study is written."""

from studies.claims._minimal import placeholder_grid

CLAIM_ID = "C7"
TITLE = "LN is less effective in CNNs"


def grid(profile):
    return placeholder_grid(CLAIM_ID, profile, norms=("batch", "layer"), dataset="digits", model="cnn2d")
