"""C6 placeholder: a minimal grid until the claim's study is written."""

from studies.claims._minimal import placeholder_grid

CLAIM_ID = "C6"
TITLE = "LN normalizes all units of a layer per sample; used in NLP"


def grid(profile):
    return placeholder_grid(CLAIM_ID, profile, norms=("none", "layer"), dataset="sequences", model="rnn", optimizer="adam", learning_rate=0.003)
