"""kerasnorm: normalization layers for Keras 3.

Drop-in replacements for Keras's normalization layers, with float32 two-pass statistics,
masks, clear errors, and what the built-ins lack (ghost batches, renorm warm-up, population
statistics, recurrent cells, BN folding, small-batch remedies: inference example weighing,
frozen statistics, filter response normalization), instance normalization with masks, and
alternatives to normalizing activations: Dynamic Tanh (with a converter from layer
normalization) and weight-standardized convolutions (with their folding for inference).
"""

from kerasnorm.batch_normalization import BatchNormalization
from kerasnorm.callbacks import BatchStatisticsRecorder, FreezeBatchStatistics
from kerasnorm.dynamic_tanh import DynamicTanh, convert_to_dynamic_tanh
from kerasnorm.filter_response_normalization import TLU, FilterResponseNormalization
from kerasnorm.folding import fold_batch_norm
from kerasnorm.group_normalization import GroupNormalization
from kerasnorm.instance_normalization import InstanceNormalization
from kerasnorm.layer_normalization import LayerNormalization
from kerasnorm.population import recalibrate, set_inference_weight
from kerasnorm.recurrent import (
    BatchNormLSTMCell,
    LayerNormGRUCell,
    LayerNormLSTMCell,
    MaskedRNN,
)
from kerasnorm.rms_normalization import RMSNormalization
from kerasnorm.weight_standardization import (
    WeightStandardizedConv1D,
    WeightStandardizedConv2D,
    fold_weight_standardization,
)

__version__ = "0.1.0"

__all__ = [
    "BatchNormLSTMCell",
    "BatchNormalization",
    "BatchStatisticsRecorder",
    "DynamicTanh",
    "FilterResponseNormalization",
    "FreezeBatchStatistics",
    "GroupNormalization",
    "InstanceNormalization",
    "LayerNormGRUCell",
    "LayerNormLSTMCell",
    "LayerNormalization",
    "MaskedRNN",
    "RMSNormalization",
    "TLU",
    "WeightStandardizedConv1D",
    "WeightStandardizedConv2D",
    "convert_to_dynamic_tanh",
    "fold_batch_norm",
    "fold_weight_standardization",
    "recalibrate",
    "set_inference_weight",
]
