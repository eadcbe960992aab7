"""kerasnorm: normalization layers for Keras 3.

Drop-in replacements for Keras's normalization layers, with float32 two-pass statistics,
masks, clear errors, and what the built-ins lack (ghost batches, renorm warm-up, population
statistics, recurrent cells, BN folding, small-batch remedies: inference example weighing,
frozen statistics, filter response normalization).
"""

from kerasnorm.batch_normalization import BatchNormalization
from kerasnorm.callbacks import BatchStatisticsRecorder, FreezeBatchStatistics
from kerasnorm.filter_response_normalization import TLU, FilterResponseNormalization
from kerasnorm.folding import fold_batch_norm
from kerasnorm.group_normalization import GroupNormalization
from kerasnorm.layer_normalization import LayerNormalization
from kerasnorm.population import recalibrate, set_inference_weight
from kerasnorm.recurrent import (
    BatchNormLSTMCell,
    LayerNormGRUCell,
    LayerNormLSTMCell,
    MaskedRNN,
)
from kerasnorm.rms_normalization import RMSNormalization

__version__ = "0.1.0"

__all__ = [
    "BatchNormLSTMCell",
    "BatchNormalization",
    "BatchStatisticsRecorder",
    "FilterResponseNormalization",
    "FreezeBatchStatistics",
    "GroupNormalization",
    "LayerNormGRUCell",
    "LayerNormLSTMCell",
    "LayerNormalization",
    "MaskedRNN",
    "RMSNormalization",
    "TLU",
    "fold_batch_norm",
    "recalibrate",
    "set_inference_weight",
]
