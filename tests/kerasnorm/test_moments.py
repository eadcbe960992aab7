"""kerasnorm.moments against float64 NumPy, over random ranks, axes, masks and offsets."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from kerasnorm import moments as M


@st.composite
def cases(draw):
    ndim = draw(st.integers(1, 4))
    shape = tuple(draw(st.integers(1, 4)) for _ in range(ndim))
    axes = tuple(sorted(draw(st.sets(st.integers(0, ndim - 1), min_size=1))))
    mask_rank = draw(st.integers(0, ndim))
    seed = draw(st.integers(0, 2**16))
    offset = draw(st.sampled_from([0.0, 1.0, 1e4]))
    return shape, axes, mask_rank, seed, offset


@settings(max_examples=40, deadline=None)
@given(cases())
def test_masked_moments_match_float64(case):
    shape, axes, mask_rank, seed, offset = case
    rng = np.random.default_rng(seed)
    x = (offset + rng.normal(size=shape)).astype("float32")
    mask = rng.random(shape[:mask_rank]) < 0.7 if mask_rank else None
    weights = M.mask_weights(mask, x) if mask is not None else None
    mean, variance, count = (np.asarray(t) for t in M.moments(x, axes, weights))

    w = np.ones(shape) if mask is None else np.broadcast_to(mask.reshape(mask.shape + (1,) * (len(shape) - mask_rank)), shape)
    x64 = x.astype(np.float64)
    n = w.sum(axis=axes, keepdims=True)
    ref_mean = (w * x64).sum(axis=axes, keepdims=True) / np.maximum(n, 1)
    ref_var = (w * (x64 - ref_mean) ** 2).sum(axis=axes, keepdims=True) / np.maximum(n, 1)

    np.testing.assert_array_equal(count, n)
    # float32 spacing at the offset bounds what any float32 mean can hold.
    np.testing.assert_allclose(mean, ref_mean, rtol=0, atol=1e-5 + offset * 1.2e-7)
    np.testing.assert_allclose(variance, ref_var, rtol=1e-4, atol=1e-5)
    assert np.all(np.isfinite(mean)) and np.all(variance >= 0)
