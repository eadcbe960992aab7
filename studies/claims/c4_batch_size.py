"""C4 placeholder: a minimal grid until the claim's study is written."""

from studies.claims._minimal import placeholder_grid

CLAIM_ID = "C4"
TITLE = "BN depends on the mini-batch size; too small is unstable"


def grid(profile):
    return placeholder_grid(CLAIM_ID, profile, model="cnn1d", batch_size=8)
