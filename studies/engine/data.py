"""Datasets of the study, all built offline.

- ``mnist1d``: MNIST-1D (Greydanus 2020) generated with ``mnist1d.data.make_dataset``
  (never ``get_dataset``, which downloads); 40-step signals, 10 classes.
- ``digits``: scikit-learn's 8x8 handwritten digits (shipped in the wheel), 10 classes.
- ``sequences``: a synthetic variable-length token task, padded and masked, whose test split
  holds sequences longer than any seen in training; its ``rule`` (the most frequent marker,
  or that of the group a key token names) and its ``token_noise`` set how hard it is.
- ``mnist``, ``fashion_mnist``, ``cifar10``: ``keras.datasets``, for users with internet (or
  a filled ``~/.keras/datasets`` cache); nothing in the tests or the default study uses them.

Every array is float32 (inputs) or int32 (labels); generated arrays are cached in-process and
returned read-only, so a caller that wants to change them must copy.
"""

from __future__ import annotations

import dataclasses
import functools
import random

import numpy as np

from studies.engine import real_data
from studies.engine.dataset import Dataset, frozen

__all__ = ["Dataset", "NAMES", "load"]

#: Datasets generated or shipped offline.
OFFLINE = ("mnist1d", "digits", "sequences")
#: Datasets fetched by ``keras.datasets`` (downloaded on first use).
ONLINE = ("mnist", "fashion_mnist", "cifar10")
#: Real datasets read from files that ship in wheels (`studies.engine.real_data`).
REAL = real_data.NAMES
NAMES = OFFLINE + REAL + ONLINE


def _standardize(x_train, x_test):
    """Standardizes both splits with the train split's scalar mean and deviation (one pair
    for all positions, so the signal's shape along time is kept)."""
    mean, std = x_train.mean(), x_train.std()
    return (x_train - mean) / std, (x_test - mean) / std


@functools.lru_cache(maxsize=8)
def mnist1d(num_samples: int = 5000, seed: int = 42) -> Dataset:
    """MNIST-1D: ``num_samples`` signals of length 40 (80% train), 10 classes, as
    ``(n, 40, 1)`` (``load(..., flat=True)`` gives ``(n, 40)``).

    ``make_dataset`` seeds numpy's and Python's global generators from ``seed`` (so a seed
    fixes the data); their previous states are restored afterwards so generating data does
    not change the randomness of the caller. The signals are standardized with the train
    split's statistics.
    """
    import mnist1d.data

    if num_samples < 10 or num_samples % 10:
        raise ValueError(
            f"MNIST-1D needs a positive multiple of 10 samples (one share per class). "
            f"Received: num_samples={num_samples}"
        )
    args = mnist1d.data.get_dataset_args()
    args.num_samples = int(num_samples)
    args.seed = int(seed)
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        raw = mnist1d.data.make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    x_train, x_test = _standardize(raw["x"][..., None], raw["x_test"][..., None])
    return Dataset(
        name="mnist1d",
        x_train=frozen(x_train, np.float32),
        y_train=frozen(raw["y"], np.int32),
        x_test=frozen(x_test, np.float32),
        y_test=frozen(raw["y_test"], np.int32),
        num_classes=10,
    )


@functools.lru_cache(maxsize=4)
def digits(test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """scikit-learn's 1797 8x8 digits as ``(n, 8, 8, 1)`` float32 in [0, 1], with a fixed
    stratified split (each class keeps its share in both splits)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = bunch.images[..., None] / 16.0
    x_train, x_test, y_train, y_test = train_test_split(
        images, bunch.target, test_size=test_fraction, random_state=seed, stratify=bunch.target
    )
    return Dataset(
        name="digits",
        x_train=frozen(x_train, np.float32),
        y_train=frozen(y_train, np.int32),
        x_test=frozen(x_test, np.float32),
        y_test=frozen(y_test, np.int32),
        num_classes=10,
    )


def _unambiguous_sequences(rng, n, min_len, max_len, num_classes, vocab, draw):
    """``n`` labelled token sequences by rejection: each round draws lengths, then
    ``draw(want) -> (tokens, first)`` (``(want, max_len)`` token ids and, per sequence,
    the id of its class-0 marker: classes are counted as tokens ``first + c``); sequences
    whose largest class count is tied are drawn again. Returns one-hot float32
    ``(n, max_len, vocab)`` padded with zeros after each sequence, the labels (the class
    counted most often) and the boolean mask."""
    x = np.zeros((n, max_len, vocab), np.float32)
    y = np.zeros(n, np.int32)
    mask = np.zeros((n, max_len), bool)
    filled = 0
    while filled < n:
        want = 2 * (n - filled)
        lengths = rng.integers(min_len, max_len + 1, size=want)
        tokens, first = draw(want)
        valid = np.arange(max_len) < lengths[:, None]
        counts = np.stack([((tokens == first + c) & valid).sum(1) for c in range(num_classes)], 1)
        top = np.sort(counts, axis=1)
        keep = np.flatnonzero(top[:, -1] > top[:, -2])[: n - filled]
        rows = slice(filled, filled + len(keep))
        x[rows] = np.eye(vocab, dtype=np.float32)[tokens[keep]] * valid[keep, :, None]
        y[rows] = counts[keep].argmax(1)
        mask[rows] = valid[keep]
        filled += len(keep)
    return x, y, mask


def _majority_sequences(rng, n, min_len, max_len, num_classes, vocab, marker_rate):
    """``n`` token sequences whose label is the marker token that occurs most often.

    Tokens ``0..num_classes-1`` are markers, the rest distractors (`_unambiguous_sequences`
    redraws ties and returns one-hot sequences, labels and mask).
    """

    def draw(want):
        is_marker = rng.random((want, max_len)) < marker_rate
        tokens = np.where(
            is_marker,
            rng.integers(0, num_classes, size=(want, max_len)),
            rng.integers(num_classes, vocab, size=(want, max_len)),
        )
        return tokens, np.zeros((want, 1), int)

    return _unambiguous_sequences(rng, n, min_len, max_len, num_classes, vocab, draw)


def _keyed_sequences(rng, n, min_len, max_len, num_classes, vocab, marker_rate):
    """``n`` token sequences whose first token is a key that says which of two marker
    groups to count; the label is the marker of that group that occurs most often.

    Tokens ``0, 1`` are the keys, ``2 .. 2 + 2 * num_classes - 1`` the markers (group 0
    first), the rest distractors; the key appears only at step 0 (`_unambiguous_sequences`
    redraws ties within the named group and returns one-hot sequences, labels and mask).
    """
    markers = 2 * num_classes

    def draw(want):
        key = rng.integers(0, 2, size=want)
        is_marker = rng.random((want, max_len)) < marker_rate
        tokens = np.where(
            is_marker,
            2 + rng.integers(0, markers, size=(want, max_len)),
            2 + markers + rng.integers(0, max(vocab - 2 - markers, 1), size=(want, max_len)),
        )
        tokens[:, 0] = key
        return tokens, (2 + key * num_classes)[:, None]

    return _unambiguous_sequences(rng, n, min_len, max_len, num_classes, vocab, draw)


def _zipf_sequences(rng, n, min_len, max_len, num_classes, vocab, marker_rate):
    """`_majority_sequences` with heavy-tailed token frequencies: the distractors follow
    Zipf's law, the k-th most frequent with probability proportional to ``1 / k`` (as words
    in text), so a few are common and most are rare, and a batch's count of a rare token
    (and any statistic it moves) varies widely from batch to batch."""
    distractors = vocab - num_classes
    weights = 1.0 / np.arange(1, distractors + 1)

    def draw(want):
        is_marker = rng.random((want, max_len)) < marker_rate
        tokens = np.where(
            is_marker,
            rng.integers(0, num_classes, size=(want, max_len)),
            num_classes + rng.choice(distractors, size=(want, max_len), p=weights / weights.sum()),
        )
        return tokens, np.zeros((want, 1), int)

    return _unambiguous_sequences(rng, n, min_len, max_len, num_classes, vocab, draw)


#: The labelling rules of `sequences`: name -> generator.
SEQUENCE_RULES = {"majority": _majority_sequences, "keyed": _keyed_sequences, "zipf": _zipf_sequences}


@functools.lru_cache(maxsize=8)
def sequences(
    num_samples: int = 5000,
    seed: int = 0,
    min_len: int = 5,
    max_train_len: int = 20,
    max_test_len: int = 80,
    num_classes: int = 4,
    num_distractors: int = 2,
    marker_rate: float = 0.5,
    rule: str = "majority",
    token_noise: float = 0.0,
    test_samples: int | None = None,
) -> Dataset:
    """A variable-length sequence task: which marker token occurs most often?

    Each sequence is ``min_len`` to ``max_train_len`` (train) or ``max_test_len`` (test)
    one-hot tokens drawn from ``num_classes`` markers and ``num_distractors`` distractors;
    the label is the marker with the strictly largest count (ties are redrawn). Solving it
    needs a running count carried over every step, and the test split asks the model to
    carry it over more steps than training ever showed. 80% of ``num_samples`` are train,
    the rest test, unless ``test_samples`` sets the size of the test split (a larger one
    makes each length bucket of a run's test accuracy less noisy).

    ``x_train`` is ``(n, max_train_len, d)`` and ``x_test`` is ``(n, max_test_len, d)``
    with ``d = num_classes + num_distractors``; padded steps are all-zero vectors and False
    in ``mask_*``.

    ``rule="keyed"`` (`_keyed_sequences`) makes the dependency span the whole sequence:
    step 0 holds one of two key tokens, the markers come in two groups of
    ``num_classes``, and the label is the most frequent marker of the group the key names,
    so a model must carry the key from the first step to the last (``d = 2 + 2 *
    num_classes + num_distractors``; ``min_len >= 2``). ``rule="zipf"`` (`_zipf_sequences`)
    is the majority task with Zipfian distractor frequencies (heavy-tailed, as words).

    ``token_noise > 0`` adds Gaussian noise of that deviation to every component of every
    real step (padding stays zero), drawn once with the data: each token is then uncertain
    and a count can be misread, so even a model that has learned the rule makes errors
    (the task keeps room below 100 %), more of them where the counts are close.
    """
    if rule not in SEQUENCE_RULES:
        raise ValueError(f"Unknown sequence rule '{rule}'. Known rules: {', '.join(SEQUENCE_RULES)}")
    if not 1 <= min_len <= max_train_len <= max_test_len:
        raise ValueError(
            "Sequence lengths must satisfy 1 <= min_len <= max_train_len <= max_test_len. "
            f"Received: min_len={min_len}, max_train_len={max_train_len}, "
            f"max_test_len={max_test_len}"
        )
    if num_classes < 2 or num_distractors < 0 or not 0 < marker_rate <= 1:
        raise ValueError(
            "Sequences need num_classes >= 2, num_distractors >= 0 and 0 < marker_rate <= 1. "
            f"Received: num_classes={num_classes}, num_distractors={num_distractors}, "
            f"marker_rate={marker_rate}"
        )
    if test_samples is not None and test_samples < 1:
        raise ValueError(f"test_samples must be positive. Received: test_samples={test_samples}")
    if token_noise < 0:
        raise ValueError(f"token_noise must be >= 0. Received: token_noise={token_noise}")
    if num_distractors == 0 and marker_rate < 1:
        raise ValueError("Without distractor tokens every step is a marker: set marker_rate=1.")
    if rule == "keyed" and min_len < 2:
        raise ValueError(f"Keyed sequences need min_len >= 2 (the key and a token). Received: min_len={min_len}")
    rng = np.random.default_rng(seed)
    vocab = num_classes + num_distractors if rule != "keyed" else 2 + 2 * num_classes + num_distractors
    generate = SEQUENCE_RULES[rule]
    n_train = int(num_samples * 0.8)
    common = dict(min_len=min_len, num_classes=num_classes, vocab=vocab, marker_rate=marker_rate)
    x_train, y_train, m_train = generate(rng, n_train, max_len=max_train_len, **common)
    n_test = num_samples - n_train if test_samples is None else int(test_samples)
    x_test, y_test, m_test = generate(rng, n_test, max_len=max_test_len, **common)
    if token_noise:
        x_train = x_train + token_noise * rng.standard_normal(x_train.shape, np.float32) * m_train[..., None]
        x_test = x_test + token_noise * rng.standard_normal(x_test.shape, np.float32) * m_test[..., None]
    return Dataset(
        name="sequences",
        x_train=frozen(x_train),
        y_train=frozen(y_train),
        x_test=frozen(x_test),
        y_test=frozen(y_test),
        num_classes=num_classes,
        mask_train=frozen(m_train),
        mask_test=frozen(m_test),
    )


@functools.lru_cache(maxsize=3)
def _keras_dataset(name):
    import keras

    try:
        (x_train, y_train), (x_test, y_test) = getattr(keras.datasets, name).load_data()
    except Exception as error:  # urllib and socket errors differ by platform and Python
        raise RuntimeError(
            f"Could not load '{name}' from keras.datasets: it is downloaded on first use and "
            f"needs internet (or a copy in ~/.keras/datasets). The offline datasets are "
            f"{', '.join(OFFLINE)}. Cause: {error}"
        ) from error
    if x_train.ndim == 3:  # grey images: add the channel axis
        x_train, x_test = x_train[..., None], x_test[..., None]
    return Dataset(
        name=name,
        x_train=frozen(x_train / 255.0, np.float32),
        y_train=frozen(y_train.reshape(-1), np.int32),
        x_test=frozen(x_test / 255.0, np.float32),
        y_test=frozen(y_test.reshape(-1), np.int32),
        num_classes=10,
    )


def _subsample(dataset, num_samples):
    """The first 80% / 20% of ``num_samples`` from the train / test splits."""
    n_train = int(num_samples * 0.8)
    return dataclasses.replace(
        dataset,
        x_train=dataset.x_train[:n_train],
        y_train=dataset.y_train[:n_train],
        x_test=dataset.x_test[: num_samples - n_train],
        y_test=dataset.y_test[: num_samples - n_train],
    )


def load(name: str, num_samples: int | None = None, flat: bool = False, **options) -> Dataset:
    """Returns dataset ``name`` (one of ``NAMES``).

    Args:
        name: ``mnist1d``, ``digits``, ``sequences`` (generated), ``mnist5k``,
            ``vowels`` (real, from wheels: `studies.engine.real_data`) or ``mnist``,
            ``fashion_mnist``, ``cifar10`` (``keras.datasets``, needs internet once).
        num_samples: total size (80% train) for the generated sets and the
            ``keras.datasets`` ones (a prefix of each split); None for the default.
            ``digits`` has a fixed size (1797) and rejects it.
        flat: flatten each sample to a vector (for MLPs).
        **options: passed to the builder (``mnist1d``, ``digits``, ``sequences`` in this
            module), e.g. ``max_test_len`` for ``sequences``.
    """
    if name not in NAMES:
        raise ValueError(f"Unknown dataset '{name}'. Known datasets: {', '.join(NAMES)}")
    size = {} if num_samples is None else {"num_samples": int(num_samples)}
    if name == "mnist1d":
        dataset = mnist1d(**size, **options)
    elif name == "digits":
        if size:
            raise ValueError(f"The digits dataset has a fixed size. Received: num_samples={num_samples}")
        dataset = digits(**options)
    elif name == "sequences":
        dataset = sequences(**size, **options)
    elif name in REAL:
        dataset = real_data.load(name, num_samples, **options)
    else:
        if options:
            raise ValueError(f"Dataset '{name}' takes no options. Received: {sorted(options)}")
        dataset = _keras_dataset(name)
        if size:
            dataset = _subsample(dataset, size["num_samples"])
    return dataset.flattened() if flat else dataset
