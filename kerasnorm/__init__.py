"""kerasnorm: normalization layers for Keras 3.

Drop-in replacements for Keras's normalization layers, with float32 two-pass statistics,
masks, clear errors, and what the built-ins lack (ghost batches, renorm warm-up, population
statistics, recurrent cells, BN folding).
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from kerasnorm.batch_normalization import BatchNormalization  # noqa: E402
from kerasnorm.callbacks import BatchStatisticsRecorder  # noqa: E402
from kerasnorm.folding import fold_batch_norm  # noqa: E402
from kerasnorm.group_normalization import GroupNormalization  # noqa: E402
from kerasnorm.layer_normalization import LayerNormalization  # noqa: E402
from kerasnorm.population import recalibrate  # noqa: E402
from kerasnorm.recurrent import (  # noqa: E402
    BatchNormLSTMCell,
    LayerNormGRUCell,
    LayerNormLSTMCell,
    MaskedRNN,
)
from kerasnorm.rms_normalization import RMSNormalization  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "BatchNormLSTMCell",
    "BatchNormalization",
    "BatchStatisticsRecorder",
    "GroupNormalization",
    "LayerNormGRUCell",
    "LayerNormLSTMCell",
    "LayerNormalization",
    "MaskedRNN",
    "RMSNormalization",
    "fold_batch_norm",
    "recalibrate",
]
