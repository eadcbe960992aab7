import numpy as np
import pytest

from studies.engine import data


@pytest.fixture
def no_download(monkeypatch):
    """Any attempt to download fails the test."""
    import mnist1d.data
    import requests

    def refuse(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(mnist1d.data, "get_dataset", refuse)
    monkeypatch.setattr(requests, "get", refuse)


def test_mnist1d_shapes_types_and_split(no_download):
    ds = data.load("mnist1d", num_samples=1000)
    assert ds.x_train.shape == (800, 40, 1) and ds.x_test.shape == (200, 40, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert set(np.unique(ds.y_train)) == set(range(10)) and ds.num_classes == 10
    flat = data.load("mnist1d", num_samples=1000, flat=True)
    assert flat.x_train.shape == (800, 40) and flat.input_shape == (40,)
    np.testing.assert_array_equal(flat.x_train, ds.x_train[..., 0])


def test_mnist1d_default_size_is_4000_train_1000_test(no_download):
    ds = data.load("mnist1d")
    assert (len(ds.x_train), len(ds.x_test)) == (4000, 1000)


def test_mnist1d_standardized_with_train_statistics(no_download):
    ds = data.load("mnist1d", num_samples=1000)
    assert abs(ds.x_train.mean()) < 1e-5 and abs(ds.x_train.std() - 1) < 1e-5
    assert abs(ds.x_test.mean()) > 1e-4  # the test split keeps its own offset


def test_mnist1d_is_deterministic_and_leaves_global_random_state(no_download):
    np.random.seed(123)
    expected_next = np.random.rand()
    np.random.seed(123)
    data.mnist1d.cache_clear()
    first = data.load("mnist1d", num_samples=500)
    assert np.random.rand() == expected_next
    data.mnist1d.cache_clear()
    second = data.load("mnist1d", num_samples=500)
    assert first is not second
    np.testing.assert_array_equal(first.x_train, second.x_train)
    np.testing.assert_array_equal(first.y_test, second.y_test)
    other_seed = data.mnist1d(num_samples=500, seed=1)
    assert not np.array_equal(first.x_train, other_seed.x_train)


def test_cached_arrays_are_read_only():
    ds = data.load("mnist1d", num_samples=500)
    with pytest.raises(ValueError):
        ds.x_train[0, 0, 0] = 1.0


def test_mnist1d_rejects_sizes_not_divisible_by_classes():
    with pytest.raises(ValueError, match="num_samples=105"):
        data.load("mnist1d", num_samples=105)


def test_digits_shape_range_and_stratified_split():
    ds = data.load("digits")
    assert ds.x_train.shape[1:] == (8, 8, 1) and ds.x_train.dtype == np.float32
    assert len(ds.x_train) + len(ds.x_test) == 1797
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    train_share = np.bincount(ds.y_train) / len(ds.y_train)
    test_share = np.bincount(ds.y_test) / len(ds.y_test)
    np.testing.assert_allclose(train_share, test_share, atol=0.01)
    again = data.digits.__wrapped__()
    np.testing.assert_array_equal(again.x_test, ds.x_test)
    with pytest.raises(ValueError, match="fixed size"):
        data.load("digits", num_samples=100)


def test_sequences_are_padded_masked_and_longer_at_test():
    ds = data.load("sequences", num_samples=1000, max_train_len=10, max_test_len=30)
    assert ds.x_train.shape == (800, 10, 6) and ds.x_test.shape == (200, 30, 6)
    assert ds.mask_train.shape == (800, 10) and ds.mask_train.dtype == bool
    assert ds.input_shape == (None, 6)
    for x, mask in ((ds.x_train, ds.mask_train), (ds.x_test, ds.mask_test)):
        lengths = mask.sum(1)
        # the mask is a prefix: real steps first, then padding
        np.testing.assert_array_equal(mask, np.arange(mask.shape[1]) < lengths[:, None])
        np.testing.assert_array_equal(x.sum(-1), mask)  # one-hot where real, zeros padded
        assert lengths.min() >= 5
    assert ds.mask_train.sum(1).max() <= 10
    assert ds.mask_test.sum(1).max() > 10  # test holds sequences longer than training


def test_sequence_label_is_the_strictly_most_frequent_marker():
    ds = data.load("sequences", num_samples=500, num_classes=3)
    counts = ds.x_train[..., :3].sum(1)  # per sequence, how often each marker occurs
    np.testing.assert_array_equal(counts.argmax(1), ds.y_train)
    top_two = np.sort(counts, 1)[:, -2:]
    assert (top_two[:, 1] > top_two[:, 0]).all()
    assert np.bincount(ds.y_train).min() > 0.25 * len(ds.y_train)  # roughly balanced


def test_keyed_sequences_count_the_group_the_first_token_names():
    ds = data.load("sequences", num_samples=600, rule="keyed", num_classes=3, max_train_len=12, max_test_len=30)
    vocab = 2 + 2 * 3 + 2
    assert ds.x_train.shape == (480, 12, vocab) and ds.x_test.shape == (120, 30, vocab)
    assert ds.num_classes == 3 and ds.input_shape == (None, vocab)
    for x, y, mask in ((ds.x_train, ds.y_train, ds.mask_train), (ds.x_test, ds.y_test, ds.mask_test)):
        np.testing.assert_array_equal(x.sum(-1), mask)  # one-hot where real, zeros padded
        key = x[:, 0, :2].argmax(1)
        assert x[:, 0, :2].sum(1).min() == 1 and x[:, 1:, :2].sum() == 0  # the key only at step 0
        assert set(np.unique(key)) == {0, 1}
        counts = x.sum(1)[:, 2:8].reshape(-1, 2, 3)[np.arange(len(x)), key]  # the named group's markers
        np.testing.assert_array_equal(counts.argmax(1), y)
        top_two = np.sort(counts, 1)[:, -2:]
        assert (top_two[:, 1] > top_two[:, 0]).all()
        # the other group's count decides a different label often enough to matter
        other = x.sum(1)[:, 2:8].reshape(-1, 2, 3)[np.arange(len(x)), 1 - key]
        assert (other.argmax(1) != y).mean() > 0.3


def test_sequence_token_noise_blurs_real_steps_only_and_test_size_is_free():
    clean = data.sequences.__wrapped__(num_samples=400, seed=2, rule="keyed", test_samples=50)
    noisy = data.sequences.__wrapped__(num_samples=400, seed=2, rule="keyed", test_samples=50, token_noise=0.3)
    assert len(clean.x_train) == 320 and len(clean.x_test) == 50
    np.testing.assert_array_equal(noisy.y_train, clean.y_train)  # same sequences, blurred
    noise = noisy.x_train - clean.x_train
    assert np.all(noise[~noisy.mask_train] == 0)  # padding stays zero
    assert np.std(noise[noisy.mask_train]) == pytest.approx(0.3, rel=0.05)
    with pytest.raises(ValueError, match="token_noise=-1"):
        data.sequences.__wrapped__(token_noise=-1)
    with pytest.raises(ValueError, match="'parity'"):
        data.sequences.__wrapped__(rule="parity")
    with pytest.raises(ValueError, match="min_len=1"):
        data.sequences.__wrapped__(rule="keyed", min_len=1)


def test_sequences_deterministic_per_seed():
    a = data.sequences.__wrapped__(num_samples=200, seed=3)
    b = data.sequences.__wrapped__(num_samples=200, seed=3)
    c = data.sequences.__wrapped__(num_samples=200, seed=4)
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert not np.array_equal(a.x_train, c.x_train)


def test_sequences_reject_inconsistent_lengths():
    with pytest.raises(ValueError, match="max_test_len=10"):
        data.load("sequences", max_train_len=20, max_test_len=10)


def test_unknown_dataset_is_named():
    with pytest.raises(ValueError, match="'imagenet'"):
        data.load("imagenet")


def test_keras_datasets_fail_clearly_offline(monkeypatch):
    import keras

    def offline():
        raise OSError("network is unreachable")

    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", offline)
    data._keras_dataset.cache_clear()
    with pytest.raises(RuntimeError, match="fashion_mnist.*internet"):
        data.load("fashion_mnist")


def test_keras_datasets_are_subsampled_and_scaled(monkeypatch):
    import keras

    rng = np.random.default_rng(0)
    fake = (
        (rng.integers(0, 256, (50, 28, 28), dtype=np.uint8), rng.integers(0, 10, 50)),
        (rng.integers(0, 256, (20, 28, 28), dtype=np.uint8), rng.integers(0, 10, 20)),
    )
    monkeypatch.setattr(keras.datasets.mnist, "load_data", lambda: fake)
    data._keras_dataset.cache_clear()
    ds = data.load("mnist", num_samples=40)
    data._keras_dataset.cache_clear()
    assert ds.x_train.shape == (32, 28, 28, 1) and ds.x_test.shape == (8, 28, 28, 1)
    assert ds.x_train.max() <= 1.0 and ds.x_train.dtype == np.float32
