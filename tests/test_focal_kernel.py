"""The Numba focal-loss loops (gamma = 2) equal the array code they replace, both directions."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from minidetr.backend import to_numpy
from minidetr.kernels import focal_cpu
from minidetr.setloss import focal
from minidetr.setloss.focal import sigmoid_focal_loss_backward, sigmoid_focal_loss_forward

NAMES = ("loss", "p", "pm", "ce", "dlogits")


def run(logits, targets, dloss, alpha, gamma):
    loss, cache = sigmoid_focal_loss_forward(logits, targets, alpha, gamma)
    (dx,) = sigmoid_focal_loss_backward(dloss, cache)
    return loss, cache.p, cache.pm, cache.ce, dx


@given(
    st.tuples(st.integers(1, 6), st.integers(1, 9)),
    st.sampled_from([-1.0, 0.0, 0.25, 1.0]),
    st.sampled_from([2.0, 2.0, 0.5, 3.5]),  # the kernel's gamma, and others (the array code)
    st.sampled_from([np.float64, np.float32]),
    st.integers(0, 2**32 - 1),
)
def test_kernel_equals_the_array_code(shape, alpha, gamma, dtype, seed):
    r = np.random.default_rng(seed)
    logits = (r.standard_normal(shape) * r.choice([1.0, 8.0, 40.0], shape)).astype(dtype)
    logits.flat[0] = 0.0  # the branch point of sigmoid(|x|)
    targets = r.choice([0.0, 1.0, 0.3], shape).astype(dtype)  # one-hot and soft targets
    dloss = r.standard_normal(shape).astype(dtype)
    got = run(logits, targets, dloss, alpha, gamma)
    saved = focal._fused
    focal._fused = lambda *arrays: False  # the array code, on the same NumPy arrays
    try:
        want = run(logits, targets, dloss, alpha, gamma)
    finally:
        focal._fused = saved
    tol = 1e-12 if dtype == np.float64 else 2e-6
    for name, g, w in zip(NAMES, got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, name
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol * (np.abs(w).max() + 1), err_msg=name)


def test_kernel_runs_on_numpy_only(xp, monkeypatch):
    calls = []
    kernel = focal_cpu.focal_loss_gamma2_forward
    monkeypatch.setattr(
        focal_cpu, "focal_loss_gamma2_forward", lambda *a: calls.append(1) or kernel(*a)
    )
    logits = xp.asarray(np.linspace(-3.0, 3.0, 12).reshape(3, 4))
    targets = xp.asarray(np.eye(3, 4))
    loss, _ = sigmoid_focal_loss_forward(logits, targets)
    assert len(calls) == (1 if xp is np else 0)
    sigmoid_focal_loss_forward(logits, targets, gamma=1.5)  # no kernel for this gamma
    assert len(calls) == (1 if xp is np else 0)
    assert float(np.min(to_numpy(loss))) >= 0.0


def test_mixed_dtypes_and_broadcast_gradients_take_the_array_code():
    logits = np.linspace(-2.0, 2.0, 6, dtype=np.float32).reshape(2, 3)
    targets = np.eye(2, 3)  # float64: no kernel, the array code promotes
    loss, cache = sigmoid_focal_loss_forward(logits, targets)
    assert loss.dtype == np.float64
    (dx,) = sigmoid_focal_loss_backward(np.float64(0.5) * np.ones(()), cache)  # broadcast
    assert dx.shape == (2, 3)
