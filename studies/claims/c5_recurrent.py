"""C5 placeholder: a minimal grid until the claim's study is written."""

from studies.claims._minimal import placeholder_grid

CLAIM_ID = "C5"
TITLE = "BN is not suitable for RNNs because the input size varies"


def grid(profile):
    return placeholder_grid(CLAIM_ID, profile, dataset="sequences", model="rnn", cell="lstm", optimizer="adam", learning_rate=0.003)
