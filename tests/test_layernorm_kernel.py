"""The Numba layer-normalisation loops equal the array code they replace, both directions."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from minidetr.ops import normalization
from minidetr.ops.normalization import layernorm_backward, layernorm_forward


def run(x, gamma, beta, dy):
    y, cache = layernorm_forward(x, gamma, beta)
    dx, dgamma, dbeta = layernorm_backward(dy, cache)
    return y, cache.xhat, cache.rstd, dx, dgamma, dbeta


@given(
    st.lists(st.integers(1, 5), min_size=1, max_size=3),
    st.integers(1, 40),
    st.sampled_from([np.float32, np.float64]),
    st.sampled_from([1e-3, 1.0, 1e3]),
    st.integers(0, 2**32 - 1),
)
def test_kernel_equals_the_array_code(lead, d, dtype, spread, seed):
    r = np.random.default_rng(seed)
    x = (r.standard_normal((*lead, d)) * spread + r.standard_normal()).astype(dtype)
    gamma, beta = r.standard_normal(d).astype(dtype), r.standard_normal(d).astype(dtype)
    dy = r.standard_normal((*lead, d)).astype(dtype)
    got = run(x, gamma, beta, dy)
    saved = normalization._fused
    normalization._fused = lambda *arrays: False  # the array code, on the same arrays
    try:
        want = run(x, gamma, beta, dy)
    finally:
        normalization._fused = saved
    # centring loses log10(|mean| / std) digits in the array code (the loops sum in float64)
    x64 = x.astype(np.float64)
    cond = float(np.max(np.abs(x64.mean(-1)) / (x64.std(-1) + 1e-5))) + 1.0
    tol = (1e-11 if dtype == np.float64 else 2e-5) * cond
    for name, g, w in zip(("y", "xhat", "rstd", "dx", "dgamma", "dbeta"), got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, name
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol * (np.abs(w).max() + 1), err_msg=name)


def test_kernel_runs_on_numpy_only(xp, monkeypatch):
    from minidetr.kernels import layernorm_cpu

    calls = []
    kernel = layernorm_cpu.layernorm_forward
    spy = lambda *a: calls.append(1) or kernel(*a)  # noqa: E731
    monkeypatch.setattr(layernorm_cpu, "layernorm_forward", spy)
    x = xp.asarray(np.linspace(-3.0, 3.0, 12).reshape(3, 4))
    ones = xp.asarray(np.ones(4))
    layernorm_forward(x, ones, ones)
    assert len(calls) == (1 if xp is np else 0)
    layernorm_forward(x, xp.astype(ones, xp.float32), ones)  # mixed dtypes: the array code
    assert len(calls) == (1 if xp is np else 0)
