"""The Numba softmax of scaled dot-product attention gives the array code's answers.

On NumPy float arrays without a mask, ``scaled_dot_product_attention_forward`` runs
the softmax as compiled loops around NumPy's ``exp`` (``kernels/attention_softmax_cpu``)
and the backward's softmax step as one loop; array-api-strict arrays run the plain
array code. Both must agree on drawn shapes and dtypes, and on non-finite scores.
"""

from __future__ import annotations

import array_api_strict as xps
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minidetr.attention.dense import (
    _merge_heads,
    _product,
    _split_heads,
    scaled_dot_product_attention_backward,
    scaled_dot_product_attention_forward,
)

# The backward's dp - sum(dp p) cancels: the loop sums in float64, the array code in the
# dtype, so in float32 the two differ by the rounding of the O(1) terms (about 1e-6 for
# these draws, scores up to about 30), not of the small result; hence an absolute floor.
TOL = {np.float32: dict(rtol=1e-4, atol=2e-5), np.float64: dict(rtol=1e-11, atol=1e-12)}


def _both(q, k, v, dout):
    """(out, dq, dk, dv) of the compiled path (NumPy) and of the plain path (strict)."""
    out, cache = scaled_dot_product_attention_forward(q, k, v)
    got = (out, *scaled_dot_product_attention_backward(dout, cache))
    s = [xps.asarray(a) for a in (q, k, v, dout)]
    out_ref, cache_ref = scaled_dot_product_attention_forward(*s[:3])
    want = (out_ref, *scaled_dot_product_attention_backward(s[3], cache_ref))
    return got, [np.asarray(a) for a in want], cache.p, np.asarray(cache_ref.p)


@given(
    st.lists(st.integers(1, 3), min_size=0, max_size=2),
    st.integers(0, 9),
    st.integers(1, 40),
    st.sampled_from([1, 4, 16, 32]),
    st.sampled_from([np.float32, np.float64]),
    st.integers(0, 2**32 - 1),
)
def test_compiled_softmax_matches_the_array_code(lead, lq, lk, d, dtype, seed):
    r = np.random.default_rng(seed)
    q = (3 * r.standard_normal((*lead, lq, d))).astype(dtype)
    k = (3 * r.standard_normal((*lead, lk, d))).astype(dtype)
    v = r.standard_normal((*lead, lk, 5)).astype(dtype)
    dout = r.standard_normal((*lead, lq, 5)).astype(dtype)
    got, want, p, p_ref = _both(q, k, v, dout)
    np.testing.assert_allclose(p, p_ref, **TOL[dtype])
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, name
        np.testing.assert_allclose(g, w, err_msg=name, **TOL[dtype])


@pytest.mark.parametrize("perm", [(0, 2, 1, 3), (1, 0, 2, 3), (2, 1, 0, 3)])
def test_compiled_softmax_takes_permuted_views(rng, perm):
    """Heads split from (B, L, M, d), or batch axes swapped (space-time attention's views):
    strided views, for which NumPy's matmul may return scores in a permuted memory order."""
    q, k, v = (np.permute_dims(rng.standard_normal((2, 7, 4, 8)), perm) for _ in range(3))
    dout = rng.standard_normal(q.shape)
    got, want, _, _ = _both(q, k, v, dout)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, **TOL[np.float64])


@pytest.mark.parametrize("masked", [False, True])  # the compiled softmax, the array code
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_head_outputs_and_gradients_keep_their_inputs_layout(rng, dtype, masked):
    """out, dq, dk and dv are written in the memory layout of q, q, k and v: the heads of
    (B, L, D) projections merge back without a copy, with the values of plain products."""
    b, lq, lk, m, d = 3, 5, 7, 4, 6
    q = _split_heads(rng.standard_normal((b, lq, m * d)).astype(dtype), m)  # (B, M, Lq, d)
    k, v = (_split_heads(rng.standard_normal((b, lk, m * d)).astype(dtype), m) for _ in "kv")
    dout = _split_heads(rng.standard_normal((b, lq, m * d)).astype(dtype), m)
    mask = rng.random((b, 1, 1, lk)) < 0.7 if masked else None  # (B, 1, 1, Lk) padding
    out, cache = scaled_dot_product_attention_forward(q, k, v, mask)
    grads = scaled_dot_product_attention_backward(dout, cache)
    p = cache.p
    ds = np.empty_like(p)  # the backward's softmax step, recomputed plainly
    dp = np.matmul(dout, v.mT)
    ds[...] = p * (dp - (dp * p).sum(-1, keepdims=True)) * cache.scale
    plain = (np.matmul(p, v), np.matmul(ds, k), np.matmul(ds.mT, q), np.matmul(p.mT, dout))
    for got, like, want in zip((out, *grads), (q, q, k, v), plain):
        assert got.strides == like.strides
        merged = _merge_heads(got)  # (B, L, D)
        assert np.shares_memory(merged, got)
        np.testing.assert_allclose(got, want, **TOL[dtype])
    np.testing.assert_array_equal(out, np.matmul(p, v))  # the same product, bit for bit


def test_product_falls_back_to_a_plain_product(rng):
    a, b = rng.standard_normal((2, 3, 5, 4)), rng.standard_normal((2, 3, 4, 6))
    like = np.permute_dims(rng.standard_normal((2, 5, 3, 6)), (0, 2, 1, 3))  # (2, 3, 5, 6)
    assert _product(a, b, like).strides == like.strides
    for other in (
        like[:1],  # another shape: a broadcast batch
        like.astype(np.float32),  # another dtype
        xps.asarray(like),  # another array library
    ):
        got = _product(a, b, other)
        assert got.flags.c_contiguous
        np.testing.assert_array_equal(got, np.matmul(a, b))
    got = _product(xps.asarray(a), xps.asarray(b), like)  # array-api-strict inputs
    np.testing.assert_array_equal(np.asarray(got), np.matmul(a, b))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_behave_as_in_the_array_code(rng, bad):
    """Entry for entry as the array code: NaN makes the row NaN, +inf makes that entry NaN
    and the others 0 (the training loop's checks then report it), -inf gives weight 0."""
    q, k, v = (rng.standard_normal((3, 4)) for _ in range(3))
    k[2, 0] = bad  # every query's score against key 2 is non-finite, NaN, or -inf...
    q[0, 0] = 1.0  # ...and query 0's is bad itself
    out, cache = scaled_dot_product_attention_forward(q, k, v)
    with np.errstate(invalid="ignore"):  # inf - inf in the array code, as intended here
        ref, cache_ref = scaled_dot_product_attention_forward(*(xps.asarray(a) for a in (q, k, v)))
    np.testing.assert_array_equal(np.isnan(cache.p), np.isnan(np.asarray(cache_ref.p)))
    finite = ~np.isnan(cache.p)
    np.testing.assert_allclose(cache.p[finite], np.asarray(cache_ref.p)[finite], rtol=1e-12)
    if bad == -np.inf:
        assert cache.p[0, 2] == 0.0 and np.isfinite(out[0]).all()
    else:
        assert np.isnan(cache.p[0, 2]) and np.isnan(out[0]).all()
    if bad is np.nan:
        assert np.isnan(cache.p[0]).all()


def test_no_keys_is_refused_as_by_the_array_code():
    """Zero keys: the reduction has nothing to take the maximum of, in both paths."""
    q, k, v = np.ones((2, 3)), np.ones((0, 3)), np.ones((0, 2))
    with pytest.raises(ValueError):
        scaled_dot_product_attention_forward(q, k, v)
    with pytest.raises(ValueError):
        scaled_dot_product_attention_forward(*(xps.asarray(a) for a in (q, k, v)))
