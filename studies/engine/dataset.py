"""The in-memory train/test split every loader returns."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split held in memory.

    ``x_*`` are float32 with the batch first; ``y_*`` are int32 class indices. Masked
    (padded) datasets also carry ``mask_*``, boolean ``(batch, time)``, True where a step is
    real.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    mask_train: np.ndarray | None = None
    mask_test: np.ndarray | None = None

    @property
    def input_shape(self) -> tuple:
        """Shape of one sample; the time axis is None for masked (variable-length) data,
        since the test split is padded longer than the train split."""
        if self.mask_train is not None:
            return (None,) + self.x_train.shape[2:]
        return self.x_train.shape[1:]

    def flattened(self) -> "Dataset":
        """The same data with each sample flattened to a vector (for MLPs)."""
        if self.mask_train is not None:
            raise ValueError(f"Dataset '{self.name}' is variable-length and cannot be flattened.")
        return dataclasses.replace(
            self,
            x_train=frozen(self.x_train.reshape(len(self.x_train), -1)),
            x_test=frozen(self.x_test.reshape(len(self.x_test), -1)),
        )


def frozen(array, dtype=None):
    """`array` as a contiguous read-only array (loaders cache and share their arrays)."""
    array = np.ascontiguousarray(array, dtype=dtype)
    array.setflags(write=False)
    return array
