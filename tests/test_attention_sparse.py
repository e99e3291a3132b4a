"""Sparse attention: top-k, mask patterns, the compiled windowed kernel held to masked dense."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_attention_linear import TOL, _qkv  # q, k, v drawn as for linear attention

from minidetr.attention import (
    gathered_attention_backward,
    gathered_attention_forward,
    grid_local_mask,
    local_mask,
    scaled_dot_product_attention_backward,
    scaled_dot_product_attention_forward,
    strided_mask,
    topk_attention_backward,
    topk_attention_forward,
    topk_mask,
    window_attention_backward,
    window_attention_forward,
    window_neighbours,
)
from minidetr.backend import to_numpy
from minidetr.gradcheck import gradcheck

# ------------------------------------------------------------------------------ masks


@given(st.integers(1, 9), st.integers(1, 9), st.integers(0, 4))
def test_local_mask_is_its_definition(lq, lk, window):
    want = [[abs(i - j) <= window for j in range(lk)] for i in range(lq)]
    np.testing.assert_array_equal(local_mask(lq, lk, window), want)


@given(st.integers(1, 12), st.integers(1, 12), st.integers(1, 4), st.booleans())
def test_strided_mask_is_its_definition(lq, lk, stride, causal):
    want = [
        [
            (abs(i - j) < stride or (i - j) % stride == 0) and (j <= i or not causal)
            for j in range(lk)
        ]
        for i in range(lq)
    ]
    np.testing.assert_array_equal(strided_mask(lq, lk, stride, causal=causal), want)


@given(st.integers(1, 5), st.integers(1, 5), st.integers(0, 2))
def test_grid_local_mask_is_its_definition(h, w, window):
    cells = [(t // w, t % w) for t in range(h * w)]
    want = [
        [abs(a[0] - b[0]) <= window and abs(a[1] - b[1]) <= window for b in cells] for a in cells
    ]
    np.testing.assert_array_equal(grid_local_mask(h, w, window), want)


def test_masks_take_the_namespace_of_like(xp):
    like = xp.asarray([0.0])
    for mask in (local_mask(3, 4, 1, like=like), strided_mask(3, 4, 2, like=like)):
        assert type(mask) is type(like) and mask.dtype == xp.bool
    with pytest.raises(ValueError, match="window must be an integer >= 0"):
        local_mask(3, 3, -1)
    with pytest.raises(ValueError, match="stride must be an integer >= 1"):
        strided_mask(3, 3, 0)


# ------------------------------------------------------------------------------ top-k


def test_topk_gradients(xp):
    q, k, v = (xp.asarray(a) for a in _qkv(0, 4, 6))
    forward = lambda q, k, v: topk_attention_forward(q, k, v, top_k=3)  # noqa: E731
    assert gradcheck(forward, topk_attention_backward, [q, k, v]).max_error < TOL


@given(st.integers(0, 2**32 - 1), st.integers(1, 6), st.integers(1, 8), st.integers(0, 3))
def test_topk_with_all_keys_is_dense_attention(seed, lq, lk, extra):
    q, k, v = _qkv(seed, lq, lk)
    out, _ = topk_attention_forward(q, k, v, top_k=lk + extra)
    np.testing.assert_allclose(out, scaled_dot_product_attention_forward(q, k, v)[0], atol=1e-12)


@given(st.integers(0, 2**32 - 1), st.integers(1, 6), st.integers(1, 8), st.integers(1, 8))
def test_topk_keeps_the_largest_scores(seed, lq, lk, top_k):
    q, k, v = _qkv(seed, lq, lk)
    out, cache = topk_attention_forward(q, k, v, top_k=top_k)
    kept = cache.attention.p > 0
    assert np.all(kept.sum(-1) == min(top_k, lk))
    s = q @ np.swapaxes(k, -1, -2)
    lowest_kept = np.where(kept, s, np.inf).min(-1)
    highest_dropped = np.where(kept, -np.inf, s).max(-1)
    assert np.all(lowest_kept >= highest_dropped)


def test_topk_ties_keep_the_lower_key_index():
    scores = np.array([[1.0, 2.0, 2.0, 2.0, 0.0]])
    np.testing.assert_array_equal(topk_mask(scores, 2), [[False, True, True, False, False]])


# ------------------------------------------------------------- windowed attention (compiled)


def _dense_window(q, k, v, window, grid):
    lq, lk = q.shape[-2], k.shape[-2]
    mask = local_mask(lq, lk, window) if grid is None else grid_local_mask(*grid, window)
    return scaled_dot_product_attention_forward(q, k, v, mask)


@given(
    seed=st.integers(0, 2**32 - 1),
    lq=st.integers(1, 9),
    lk=st.integers(1, 9),
    window=st.integers(0, 4),
    heads=st.integers(1, 3),
    dtype=st.sampled_from([np.float64, np.float32]),
)
def test_window_kernel_equals_masked_dense(seed, lq, lk, window, heads, dtype):
    q, k, v = (a.astype(dtype) for a in _qkv(seed, lq, lk, lead=(2, heads)))
    out, cache = window_attention_forward(q, k, v, window=window)
    want, dense = _dense_window(q, k, v, window, None)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    assert out.dtype == dtype
    np.testing.assert_allclose(out, want, atol=tol, rtol=tol)
    dout = np.random.default_rng(seed).standard_normal(out.shape).astype(dtype)
    got = window_attention_backward(dout, cache)
    for g, w in zip(got, scaled_dot_product_attention_backward(dout, dense)):
        np.testing.assert_allclose(g, w, atol=10 * tol, rtol=10 * tol)


@given(
    seed=st.integers(0, 2**32 - 1),
    h=st.integers(1, 4),
    w=st.integers(1, 4),
    window=st.integers(0, 2),
)
def test_grid_window_kernel_equals_masked_dense(seed, h, w, window):
    q, k, v = _qkv(seed, h * w, h * w)
    out, cache = window_attention_forward(q, k, v, window=window, grid=(h, w))
    want, dense = _dense_window(q, k, v, window, (h, w))
    np.testing.assert_allclose(out, want, atol=1e-12)
    dout = np.ones_like(out)
    for g, ref in zip(
        window_attention_backward(dout, cache), scaled_dot_product_attention_backward(dout, dense)
    ):
        np.testing.assert_allclose(g, ref, atol=1e-11)


@pytest.mark.parametrize("grid", [None, (2, 3)])
def test_window_gradients(xp, grid):
    q, k, v = (xp.asarray(a) for a in _qkv(1, 6, 6))
    forward = lambda q, k, v: window_attention_forward(q, k, v, window=1, grid=grid)  # noqa: E731
    assert gradcheck(forward, window_attention_backward, [q, k, v]).max_error < TOL


def test_array_reference_equals_the_compiled_kernel(xp):
    """array-api-strict runs the gathered reference; NumPy the Numba loops: same numbers."""
    q, k, v = _qkv(4, 7, 7, lead=(2, 2))
    out_np, cache_np = window_attention_forward(q, k, v, window=2)
    out_xp, cache_xp = window_attention_forward(*(xp.asarray(a) for a in (q, k, v)), window=2)
    np.testing.assert_allclose(to_numpy(out_xp), out_np, atol=1e-12)
    dout = np.random.default_rng(0).standard_normal(out_np.shape)
    for a, b in zip(
        window_attention_backward(xp.asarray(dout), cache_xp),
        window_attention_backward(dout, cache_np),
    ):
        np.testing.assert_allclose(to_numpy(a), b, atol=1e-12)


def test_window_neighbours_table():
    np.testing.assert_array_equal(window_neighbours(3, 3, 1), [[-1, 0, 1], [0, 1, 2], [1, 2, -1]])
    table = window_neighbours(4, 4, 1, grid=(2, 2))
    assert table.shape == (4, 9) and sorted(t for t in table[0] if t >= 0) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="grid"):
        window_neighbours(5, 5, 1, grid=(2, 2))


def test_gathered_attention_checks_its_table_and_empty_rows_output_zero(xp):
    q, k, v = (xp.asarray(a) for a in _qkv(5, 3, 4))
    table = xp.asarray(np.array([[0, 1], [-1, -1], [3, -1]]))
    out, cache = gathered_attention_forward(q, k, v, table)
    assert np.all(to_numpy(out)[:, 1] == 0.0)
    grads = gathered_attention_backward(xp.ones_like(out), cache)
    assert all(np.all(np.isfinite(to_numpy(g))) for g in grads)
    with pytest.raises(ValueError, match="index entries must lie in"):
        gathered_attention_forward(q, k, v, xp.asarray(np.array([[0, 4], [0, 1], [0, 1]])))
    with pytest.raises(TypeError, match="index must have an integer dtype"):
        gathered_attention_forward(q, k, v, xp.asarray(np.zeros((3, 2))))
