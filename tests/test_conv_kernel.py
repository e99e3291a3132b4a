"""The Numba im2col / col2im loops give the plain array-API convolution's answers.

On NumPy float arrays ``conv2d_forward`` / ``conv2d_backward`` run the compiled
gather and scatter-add of ``minidetr.kernels.conv_cpu``; on array-api-strict
arrays they run the plain array code. Both must agree on drawn shapes, strides,
paddings, kernel sizes and dtypes.
"""

from __future__ import annotations

import array_api_strict as xps
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minidetr.gradcheck import gradcheck
from minidetr.kernels import conv_cpu
from minidetr.ops import conv2d_backward, conv2d_forward
from minidetr.ops.conv import _col2im, _im2col

# float32 results go through the same BLAS calls on the same columns; only the
# summation order of col2im could differ, so both dtypes are held near round-off.
TOL = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}


@st.composite
def conv_problems(draw):
    """x (B, C, H, W), weight (O, C, K, K), bias or None, dy, stride 1-3, padding 0-2, K 1/3/5."""
    k = draw(st.sampled_from([1, 3, 5]))
    stride = draw(st.integers(1, 3))
    padding = draw(st.integers(0, 2))
    low = max(1, k - 2 * padding)  # the padded input must hold one kernel
    h, w = draw(st.integers(low, 11)), draw(st.integers(low, 11))
    b, c, o = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 5))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    r = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="seed"))
    ho, wo = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    x = r.standard_normal((b, c, h, w)).astype(dtype)
    weight = r.standard_normal((o, c, k, k)).astype(dtype)
    bias = r.standard_normal(o).astype(dtype) if draw(st.booleans(), label="bias") else None
    dy = r.standard_normal((b, o, ho, wo)).astype(dtype)
    return x, weight, bias, dy, stride, padding


def _strict(a):
    return None if a is None else xps.asarray(a)


@given(conv_problems())
def test_kernel_path_matches_plain_path(problem):
    x, weight, bias, dy, stride, padding = problem
    tol = TOL[x.dtype.type]
    y, cache = conv2d_forward(x, weight, bias, stride=stride, padding=padding)
    y_ref, cache_ref = conv2d_forward(
        _strict(x), _strict(weight), _strict(bias), stride=stride, padding=padding
    )
    assert y.dtype == x.dtype and y.shape == y_ref.shape
    np.testing.assert_array_equal(cache.cols, np.asarray(cache_ref.cols))  # a gather is exact
    np.testing.assert_allclose(y, np.asarray(y_ref), **tol)
    grads = conv2d_backward(dy, cache)
    grads_ref = conv2d_backward(xps.asarray(dy), cache_ref)
    for name, g, g_ref in zip(("dx", "dweight", "dbias"), grads, grads_ref):
        if g_ref is None:
            assert g is None, name
            continue
        assert g.dtype == x.dtype and g.shape == g_ref.shape, name
        np.testing.assert_allclose(g, np.asarray(g_ref), err_msg=name, **tol)


@given(conv_problems())
def test_col2im_is_the_adjoint_of_im2col(problem):
    """<im2col(x), g> = <x, col2im(g)> for the compiled pair, so the backward is the transpose."""
    x, weight, _, dy, stride, padding = problem
    x = x.astype(np.float64)
    k, wo = weight.shape[2], dy.shape[3]
    cols = conv_cpu.im2col(x, k, stride, padding, dy.shape[2], wo)
    g = np.random.default_rng(0).standard_normal(cols.shape)
    back = conv_cpu.col2im(np.ascontiguousarray(g.T), *x.shape, k, stride, padding, wo)
    assert back.shape == x.shape
    np.testing.assert_allclose(np.sum(cols * g), np.sum(x * back), rtol=1e-12, atol=1e-12)


def test_plain_helpers_match_kernels_on_numpy_input(rng, monkeypatch):
    """The same helpers with the kernels switched off (plain NumPy) give the kernels' answers."""
    x = rng.standard_normal((2, 3, 9, 8))
    args = (3, 2, 1, 5, 4)  # K, stride, padding, Ho, Wo
    cols = _im2col(x, *args)
    g = rng.standard_normal(cols.shape)
    dx = _col2im(g, x.shape, 3, 2, 1, 4)
    monkeypatch.setattr("minidetr.ops.conv._compiled", lambda a: False)
    np.testing.assert_array_equal(_im2col(x, *args), cols)
    np.testing.assert_allclose(_col2im(g, x.shape, 3, 2, 1, 4), dx, rtol=1e-13, atol=1e-13)


def test_kernel_path_takes_non_contiguous_input(rng):
    """A transposed view (as left by other ops) gives the same result as its contiguous copy."""
    base = rng.standard_normal((2, 7, 6, 3))  # (B, H, W, C)
    x = np.permute_dims(base, (0, 3, 1, 2))  # (B, C, H, W) view, channels innermost in memory
    w = rng.standard_normal((4, 3, 3, 3))
    y, _ = conv2d_forward(x, w, stride=2, padding=1)
    y_ref, _ = conv2d_forward(np.ascontiguousarray(x), w, stride=2, padding=1)
    np.testing.assert_array_equal(y, y_ref)


@pytest.mark.parametrize(("stride", "padding", "k"), [(1, 2, 5), (3, 2, 3), (2, 0, 1)])
def test_kernel_path_gradients(rng, stride, padding, k):
    """Float64 finite differences through the compiled path (NumPy inputs)."""
    x = rng.standard_normal((2, 3, 8, 7))
    w = rng.standard_normal((4, 3, k, k))
    b = rng.standard_normal(4)
    forward = lambda x, w, b: conv2d_forward(x, w, b, stride=stride, padding=padding)  # noqa: E731
    assert gradcheck(forward, conv2d_backward, [x, w, b]).max_error < 1e-6


@given(conv_problems())
def test_both_col2im_orders_agree(problem):
    """col2im picks its loop order by map size; each order alone gives the same dx."""
    x, weight, _, dy, stride, padding = problem
    k, wo = weight.shape[2], dy.shape[3]
    b, c, h, w = x.shape
    g = np.random.default_rng(1).standard_normal((b * dy.shape[2] * wo, c * k * k))
    g = g.astype(x.dtype)
    by_planes, by_pixels = (np.zeros(x.shape, dtype=x.dtype) for _ in range(2))
    conv_cpu._col2im_planes(g, by_planes, k, stride, padding, wo)
    conv_cpu._col2im_pixels(g, by_pixels, k, stride, padding, wo)
    np.testing.assert_allclose(by_pixels, by_planes, **TOL[x.dtype.type])
    np.testing.assert_array_equal(
        conv_cpu.col2im(g, *x.shape, k, stride, padding, wo),
        by_pixels if h * w <= 64 else by_planes,
    )


@pytest.mark.parametrize("width", [1, 2])
def test_same_padding_on_maps_narrower_than_the_padding(rng, width):
    """A 5x5 "same" convolution of a 1- or 2-pixel-wide map: most taps fall on the padding,
    and the stride-1 run must not carry values across rows."""
    x = rng.standard_normal((2, 3, 6, width))
    w = rng.standard_normal((2, 3, 5, 5))
    y, cache = conv2d_forward(x, w, padding=2)
    y_ref, cache_ref = conv2d_forward(xps.asarray(x), xps.asarray(w), padding=2)
    np.testing.assert_array_equal(cache.cols, np.asarray(cache_ref.cols))
    np.testing.assert_allclose(y, np.asarray(y_ref), rtol=1e-12, atol=1e-12)
