"""Linformer and hierarchical attention: gradients, oracles, and their limits (dense attention)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_attention_linear import TOL, _qkv  # q, k, v drawn as for linear attention

from minidetr.attention import (
    hierarchical_attention_backward,
    hierarchical_attention_forward,
    linformer_attention_backward,
    linformer_attention_forward,
    scaled_dot_product_attention_forward,
)
from minidetr.attention.hierarchical import cell_tokens, pool_cells, unpool_cells
from minidetr.backend import to_numpy
from minidetr.gradcheck import gradcheck

# ------------------------------------------------------------------------------ Linformer


def test_linformer_gradients(xp, rng):
    q, k, v = _qkv(0, 4, 6)
    e, f = rng.standard_normal((3, 6)), rng.standard_normal((3, 6))
    inputs = [xp.asarray(a) for a in (q, k, v, e, f)]
    result = gradcheck(linformer_attention_forward, linformer_attention_backward, inputs)
    assert result.max_error < TOL


@given(st.integers(0, 2**32 - 1), st.integers(1, 5), st.integers(1, 7), st.integers(1, 4))
def test_linformer_equals_attention_over_projected_keys(seed, lq, lk, r):
    q, k, v = _qkv(seed, lq, lk)
    g = np.random.default_rng(seed + 1)
    e, f = g.standard_normal((r, lk)), g.standard_normal((r, lk))
    out, _ = linformer_attention_forward(q, k, v, e, f)
    s = np.einsum("bid,brd->bir", q, np.einsum("rj,bjd->brd", e, k)) / 2.0  # sqrt(d) = 2
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(out, p @ np.einsum("rj,bjc->brc", f, v), atol=1e-12)


@given(st.integers(0, 2**32 - 1), st.integers(1, 5), st.integers(1, 7))
def test_linformer_with_identity_projections_is_dense_attention(seed, lq, lk):
    q, k, v = _qkv(seed, lq, lk)
    out, _ = linformer_attention_forward(q, k, v, np.eye(lk), np.eye(lk))
    np.testing.assert_allclose(out, scaled_dot_product_attention_forward(q, k, v)[0], atol=1e-12)


def test_linformer_bad_input():
    q, k, v = _qkv(0, 3, 4)
    with pytest.raises(ValueError, match="E must have size 4"):
        linformer_attention_forward(q, k, v, np.ones((2, 5)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="F must have size 2"):
        linformer_attention_forward(q, k, v, np.ones((2, 4)), np.ones((3, 4)))


# --------------------------------------------------------------------------- hierarchical


@pytest.mark.parametrize("keep", [0, 1, 3, 4])
def test_hierarchical_gradients(xp, keep):
    q, k, v = (xp.asarray(a) for a in _qkv(2, 5, 16))
    forward = lambda q, k, v: hierarchical_attention_forward(  # noqa: E731
        q, k, v, grid=(4, 4), cell=2, keep=keep
    )
    assert gradcheck(forward, hierarchical_attention_backward, [q, k, v]).max_error < TOL


@given(st.integers(0, 2**32 - 1), st.integers(1, 3), st.integers(1, 3), st.integers(1, 2))
def test_keeping_every_cell_is_dense_attention(seed, hc, wc, cell):
    h, w = hc * cell, wc * cell
    q, k, v = _qkv(seed, 5, h * w)
    out, _ = hierarchical_attention_forward(q, k, v, grid=(h, w), cell=cell, keep=hc * wc)
    np.testing.assert_allclose(out, scaled_dot_product_attention_forward(q, k, v)[0], atol=1e-12)


@given(st.integers(0, 2**32 - 1))
def test_keeping_no_cell_is_attention_over_the_pooled_grid(seed):
    """A coarse token stands for its c^2 keys: the log c^2 bias cancels when all are coarse."""
    q, k, v = _qkv(seed, 3, 16)
    out, _ = hierarchical_attention_forward(q, k, v, grid=(4, 4), cell=2, keep=0)
    kc, vc = pool_cells(k, (4, 4), 2), pool_cells(v, (4, 4), 2)
    np.testing.assert_allclose(out, scaled_dot_product_attention_forward(q, kc, vc)[0], atol=1e-12)


def test_error_against_dense_falls_as_cells_are_kept():
    q, k, v = _qkv(3, 8, 64, d=8, lead=(2,))
    k = k + np.repeat(np.arange(64)[:, None] // 8, 8, axis=1) * 0.3  # some spatial structure
    exact, _ = scaled_dot_product_attention_forward(q, k, v)
    errors = [
        np.abs(
            hierarchical_attention_forward(q, k, v, grid=(8, 8), cell=2, keep=n)[0] - exact
        ).max()
        for n in (0, 4, 8, 16)
    ]
    assert errors[-1] < 1e-12 and all(a >= b for a, b in zip(errors, errors[1:]))


def test_pooling_and_its_backward_are_adjoint(rng):
    x, g = rng.standard_normal((2, 24, 3)), rng.standard_normal((2, 6, 3))
    lhs = np.sum(pool_cells(x, (4, 6), 2) * g)
    rhs = np.sum(x * unpool_cells(g, (4, 6), 2))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12)
    np.testing.assert_array_equal(cell_tokens((4, 4), 2)[1], [2, 3, 6, 7])


def test_hierarchical_runs_on_every_namespace(xp):
    q, k, v = _qkv(5, 4, 16)
    out, _ = hierarchical_attention_forward(
        *(xp.asarray(a) for a in (q, k, v)), grid=(4, 4), cell=2, keep=2
    )
    want, _ = hierarchical_attention_forward(q, k, v, grid=(4, 4), cell=2, keep=2)
    np.testing.assert_allclose(to_numpy(out), want, atol=1e-12)


def test_hierarchical_bad_input():
    q, k, v = _qkv(0, 3, 16)
    with pytest.raises(ValueError, match="cell 3 must divide"):
        hierarchical_attention_forward(q, k, v, grid=(4, 4), cell=3, keep=1)
    with pytest.raises(ValueError, match="keep must be an integer in"):
        hierarchical_attention_forward(q, k, v, grid=(4, 4), cell=2, keep=5)
    with pytest.raises(ValueError, match="k must have H W = 12 keys"):
        hierarchical_attention_forward(q, k, v, grid=(3, 4), cell=1, keep=1)
