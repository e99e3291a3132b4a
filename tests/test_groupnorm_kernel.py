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
    """float64: equal to 1e-12. float32: no further from the exact answer than the plain ops.

    A small group whose entries nearly agree is ill-conditioned (rstd up to 1/sqrt(eps)),
    so in float32 both the plain ops and the kernel (which sums in float64) land some
    way from the exact answer, the plain ops' float64 run on the same inputs; the kernel
    must be at least as close as the plain ops it replaces.
    """
    c, groups = cg
    r = np.random.default_rng(seed)
    x = (r.standard_normal((b, c, h, w)) * 3 + 1).astype(dtype)
    gamma, beta = r.standard_normal(c).astype(dtype), r.standard_normal(c).astype(dtype)
    skip = r.standard_normal((b, c, h, w)).astype(dtype) if with_skip else None
    dy = r.standard_normal((b, c, h, w)).astype(dtype)
    y, cache = groupnorm_relu_forward(x, gamma, beta, groups, skip)
    got = (y, cache.norm.xhat, cache.norm.rstd, *groupnorm_relu_backward(dy, cache))
    want_y, want_norm, _, want_grads = plain(x, gamma, beta, groups, skip, dy)
    want = (want_y, want_norm.xhat, want_norm.rstd, *want_grads)
    names = ("y", "xhat", "rstd", "dx", "dgamma", "dbeta", "dskip")
    for name, g, p in zip(names, got, want):
        assert g.dtype == p.dtype and g.shape == p.shape, name
    if dtype == np.float64:
        for name, g, p in zip(names, got, want):
            np.testing.assert_allclose(
                g, p, rtol=1e-12, atol=1e-12 * (np.abs(p).max() + 1), err_msg=name
            )
        return
    wide = [None if a is None else a.astype(np.float64) for a in (x, gamma, beta, skip, dy)]
    exact_y, exact_norm, _, exact_grads = plain(*wide[:3], groups, *wide[3:])
    exact = (exact_y, exact_norm.xhat, exact_norm.rstd, *exact_grads)
    for name, g, p, e in zip(names, got, want, exact):
        err_kernel = np.abs(g - e).max()
        err_plain = np.abs(p - e).max()
        assert err_kernel <= 2 * err_plain + 1e-6 * (np.abs(e).max() + 1), (
            name,
            err_kernel,
            err_plain,
        )


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
