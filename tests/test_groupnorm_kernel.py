"""The fused relu(skip + GN(x)) op: gradients, and its Numba kernel held to the plain ops."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minidetr.backend import to_numpy
from minidetr.gradcheck import gradcheck
from minidetr.kernels import groupnorm_cpu
from minidetr.ops.activation import relu_backward, relu_forward
from minidetr.ops.normalization import (
    groupnorm_backward,
    groupnorm_forward,
    groupnorm_relu_backward,
    groupnorm_relu_forward,
)

TOL = 1e-7  # float64 central differences land near 1e-9; a wrong backward is O(1)


def plain(x, gamma, beta, groups, skip, dy):
    """The composition the kernel replaces: outputs, forward cache and gradients."""
    h, norm = groupnorm_forward(x, gamma, beta, groups)
    if skip is not None:
        h = h + skip
    y, relu = relu_forward(h)
    (dh,) = relu_backward(dy, relu)
    return y, norm, relu.positive, (*groupnorm_backward(dh, norm), dh)


@pytest.mark.parametrize("with_skip", [False, True])
def test_gradients(xp, rng, with_skip):
    x = xp.asarray(rng.standard_normal((2, 6, 3, 4)))
    g = xp.asarray(rng.standard_normal(6))
    b = xp.asarray(rng.standard_normal(6))
    if with_skip:
        s = xp.asarray(rng.standard_normal((2, 6, 3, 4)))
        result = gradcheck(
            lambda x, g, b, s: groupnorm_relu_forward(x, g, b, 3, s),
            groupnorm_relu_backward,
            [x, g, b, s],
        )
    else:
        result = gradcheck(
            lambda x, g, b: groupnorm_relu_forward(x, g, b, 3),
            lambda dy, cache: groupnorm_relu_backward(dy, cache)[:3],
            [x, g, b],
        )
    assert result.max_error < TOL, result.report()


@given(
    st.integers(1, 3),  # B
    st.sampled_from([(4, 1), (4, 2), (6, 3), (8, 8)]),  # (C, G)
    st.integers(1, 5),  # H
    st.integers(1, 6),  # W
    st.booleans(),  # skip
    st.sampled_from([np.float64, np.float32]),
    st.integers(0, 2**32 - 1),
)
def test_kernel_equals_the_plain_ops(b, cg, h, w, with_skip, dtype, seed):
    c, groups = cg
    r = np.random.default_rng(seed)
    x = (r.standard_normal((b, c, h, w)) * 3 + 1).astype(dtype)
    gamma, beta = r.standard_normal(c).astype(dtype), r.standard_normal(c).astype(dtype)
    skip = r.standard_normal((b, c, h, w)).astype(dtype) if with_skip else None
    dy = r.standard_normal((b, c, h, w)).astype(dtype)
    y, cache = groupnorm_relu_forward(x, gamma, beta, groups, skip)
    grads = groupnorm_relu_backward(dy, cache)
    want_y, want_norm, want_positive, want_grads = plain(x, gamma, beta, groups, skip, dy)
    rtol = 1e-12 if dtype == np.float64 else 2e-5
    for got, want in [
        (y, want_y),
        (cache.norm.xhat, want_norm.xhat),
        (cache.norm.rstd, want_norm.rstd),
    ]:
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * 10)
    for name, got, want in zip(("dx", "dgamma", "dbeta", "dskip"), grads, want_grads):
        assert got.dtype == want.dtype and got.shape == want.shape, name
        scale = np.abs(want).max() + 1.0
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale * 10, err_msg=name)


def test_kernel_runs_on_numpy_and_the_plain_ops_elsewhere(xp, rng, monkeypatch):
    calls = []
    kernel = groupnorm_cpu.groupnorm_relu_forward
    monkeypatch.setattr(
        groupnorm_cpu, "groupnorm_relu_forward", lambda *a: calls.append(1) or kernel(*a)
    )
    x = xp.asarray(rng.standard_normal((2, 4, 3, 3)))
    g, b = xp.asarray(np.ones(4)), xp.asarray(np.zeros(4))
    y, _ = groupnorm_relu_forward(x, g, b, 2)
    assert len(calls) == (1 if xp is np else 0)
    assert float(np.min(to_numpy(y))) >= 0.0


def test_nan_stays_nan_and_bad_input_is_named(rng):
    x = rng.standard_normal((1, 4, 2, 2))
    skip = np.zeros_like(x)
    skip[0, 1, 0, 0] = np.nan
    y, _ = groupnorm_relu_forward(x, np.ones(4), np.zeros(4), 2, skip)
    assert np.isnan(y[0, 1, 0, 0]) and np.isfinite(np.delete(y.ravel(), 4)).all()
    with pytest.raises(ValueError, match="num_groups must divide"):
        groupnorm_relu_forward(x, np.ones(4), np.zeros(4), 3)
    with pytest.raises(ValueError, match="skip must have the shape of x"):
        groupnorm_relu_forward(x, np.ones(4), np.zeros(4), 2, skip[:, :2])
