"""The faster forms of linear, ReLU and the convolution backward give the same numbers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minidetr.backend import to_numpy
from minidetr.ops import (
    conv2d_backward,
    conv2d_forward,
    linear_backward,
    linear_forward,
    relu_backward,
    relu_forward,
)


@given(
    st.lists(st.integers(0, 4), min_size=0, max_size=3),
    st.integers(1, 6),
    st.integers(1, 5),
    st.booleans(),
    st.integers(0, 2**32 - 1),
)
def test_linear_over_any_leading_dims_equals_einsum(lead, i, o, bias, seed):
    """One product over the flattened leading dims is the same map as y[n] = W x[n] + b."""
    r = np.random.default_rng(seed)
    x = r.standard_normal((*lead, i))
    w, b = r.standard_normal((o, i)), (r.standard_normal(o) if bias else None)
    dy = r.standard_normal((*lead, o))
    y, cache = linear_forward(x, w, b)
    dx, dw, db = linear_backward(dy, cache)
    want = np.einsum("...i,oi->...o", x, w) + (0.0 if b is None else b)
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, np.einsum("...o,oi->...i", dy, w), rtol=1e-12, atol=1e-12)
    want_dw = np.einsum("no,ni->oi", dy.reshape(-1, o), x.reshape(-1, i))
    np.testing.assert_allclose(dw, want_dw, rtol=1e-12, atol=1e-12)
    assert y.shape == (*lead, o) and dx.shape == x.shape and dw.shape == w.shape
    if bias:
        np.testing.assert_allclose(db, dy.reshape(-1, o).sum(0), rtol=1e-12, atol=1e-12)
    else:
        assert db is None


def test_linear_takes_a_broadcast_input():
    """A broadcast view (stride 0) is copied where the flattening needs it."""
    x = np.broadcast_to(np.arange(3.0), (2, 4, 3))
    w = np.eye(3)[:2]
    y, cache = linear_forward(x, w)
    np.testing.assert_array_equal(y, np.broadcast_to(np.arange(2.0), (2, 4, 2)))
    _, dw, _ = linear_backward(np.ones((2, 4, 2)), cache)
    np.testing.assert_array_equal(dw, 8 * np.tile(np.arange(3.0), (2, 1)))


def test_relu_on_every_namespace(xp):
    x = xp.asarray(np.array([[-2.0, -0.0, 0.0, 3.0], [np.nan, 1.0, -1.0, np.inf]]))
    y, cache = relu_forward(x)
    (dx,) = relu_backward(xp.asarray(np.full((2, 4), np.inf)), cache)
    y, dx = to_numpy(y), to_numpy(dx)
    np.testing.assert_array_equal(y, [[0.0, 0.0, 0.0, 3.0], [np.nan, 1.0, 0.0, np.inf]])
    np.testing.assert_array_equal(dx, [[0.0, 0.0, 0.0, np.inf], [0.0, np.inf, 0.0, np.inf]])
    assert y.dtype == dx.dtype == np.float64


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_backward_without_the_input_gradient(stride, dtype):
    r = np.random.default_rng(stride)
    x = r.standard_normal((2, 3, 8, 8)).astype(dtype)
    w = r.standard_normal((4, 3, 3, 3)).astype(dtype)
    b = r.standard_normal(4).astype(dtype)
    y, cache = conv2d_forward(x, w, b, stride=stride, padding=1)
    dy = r.standard_normal(y.shape).astype(dtype)
    dx, dw, db = conv2d_backward(dy, cache)
    none, dw2, db2 = conv2d_backward(dy, cache, input_grad=False)
    assert none is None and dx.shape == x.shape
    np.testing.assert_array_equal(dw2, dw)
    np.testing.assert_array_equal(db2, db)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_kernel_equals_the_array_code(dtype, monkeypatch):
    """The Numba ReLU (NumPy arrays) against the array code it replaces, specials included."""
    from minidetr.ops import activation

    r = np.random.default_rng(5)
    x = r.standard_normal((6, 7, 5)).astype(dtype)
    x.flat[:6] = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30]
    dy = r.standard_normal(x.shape).astype(dtype)
    dy.flat[6:9] = [np.inf, np.nan, -np.inf]
    x_view = x.transpose(2, 0, 1)  # a strided input too
    got = [relu_forward(a) for a in (x, x_view)]
    got_dx = [relu_backward(d, c)[0] for d, (_, c) in zip((dy, dy.transpose(2, 0, 1)), got)]
    monkeypatch.setattr(activation, "compiled_kernel", lambda *arrays: None)  # the array code
    want = [relu_forward(a) for a in (x, x_view)]
    want_dx = [relu_backward(d, c)[0] for d, (_, c) in zip((dy, dy.transpose(2, 0, 1)), want)]
    for (gy, gc), (wy, wc), gdx, wdx in zip(got, want, got_dx, want_dx):
        assert gy.dtype == wy.dtype == dtype and gy.shape == wy.shape
        np.testing.assert_array_equal(gy, wy)
        np.testing.assert_array_equal(gc.positive, wc.positive)
        np.testing.assert_array_equal(gdx, wdx)
