"""The fused weighted cross-entropy equals ``ops.cross_entropy``, both directions, and errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minidetr.gradcheck import numerical_gradient
from minidetr.kernels import softmax_ce_cpu
from minidetr.ops import cross_entropy_backward, cross_entropy_forward
from minidetr.setloss import cross_entropy
from minidetr.setloss.cross_entropy import (
    FusedCrossEntropyCache,
    weighted_cross_entropy_backward,
    weighted_cross_entropy_forward,
)


def problem(rng, rows, cols, dtype, spread=1.0):
    logits = (rng.standard_normal((rows, cols)) * spread).astype(dtype)
    classes = rng.integers(0, cols, rows)
    weight = np.ones(cols, dtype=dtype)
    weight[-1] = 0.1  # DETR's eos_coef on the no-object class
    return logits, classes, weight


def both(logits, classes, weight, dloss):
    """(loss, dlogits) of the fused op pair and of the reference in ops."""
    loss, cache = weighted_cross_entropy_forward(logits, classes, weight)
    assert isinstance(cache, FusedCrossEntropyCache)
    (dx,) = weighted_cross_entropy_backward(np.asarray(dloss, dtype=logits.dtype), cache)
    want_loss, want_cache = cross_entropy_forward(logits, classes, weight)
    (want_dx,) = cross_entropy_backward(np.asarray(dloss, dtype=logits.dtype), want_cache)
    return (loss, dx), (want_loss, want_dx)


@given(
    st.tuples(st.integers(1, 40), st.integers(2, 12)),
    st.sampled_from([np.float32, np.float64]),
    st.sampled_from([0.1, 1.0, 30.0]),  # tiny and huge logits: exp must not overflow
    st.floats(-3.0, 3.0),
    st.integers(0, 2**32 - 1),
)
def test_kernel_equals_the_reference(shape, dtype, spread, dloss, seed):
    logits, classes, weight = problem(np.random.default_rng(seed), *shape, dtype, spread)
    (loss, dx), (want_loss, want_dx) = both(logits, classes, weight, dloss)
    tol = 1e-12 if dtype == np.float64 else 2e-6  # float32: sums in float64 here
    assert loss.dtype == want_loss.dtype and loss.shape == ()
    assert dx.dtype == want_dx.dtype and dx.shape == want_dx.shape
    np.testing.assert_allclose(loss, want_loss, rtol=tol, atol=tol)
    np.testing.assert_allclose(dx, want_dx, rtol=tol, atol=tol * (np.abs(want_dx).max() + 1e-30))


def test_detr_sizes_in_float32_agree_to_1e6(rng):
    logits, classes, weight = problem(rng, 400, 92, np.float32, 3.0)  # B * Q rows, C + 1
    (loss, dx), (want_loss, want_dx) = both(logits, classes, weight, 1.0)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-6, atol=1e-6 * np.abs(want_dx).max())


def test_gradient_against_finite_differences(rng):
    logits, classes, weight = problem(rng, 6, 5, np.float64)

    def f(x):
        return float(weighted_cross_entropy_forward(x, classes, weight)[0])

    _, cache = weighted_cross_entropy_forward(logits, classes, weight)
    (dx,) = weighted_cross_entropy_backward(np.asarray(1.0), cache)
    np.testing.assert_allclose(dx, numerical_gradient(f, logits), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    ("where", "value", "message"),
    [
        ("logits", np.nan, "logits"),
        ("logits", np.inf, "logits"),
        ("logits", -np.inf, "logits"),
        ("classes", 5, "targets must be class indices"),
        ("classes", -1, "targets must be class indices"),
        ("weight", 0.0, "zero weight"),
    ],
)
def test_errors_are_the_reference_errors(rng, where, value, message):
    logits, classes, weight = problem(rng, 4, 5, np.float32)
    if where == "logits":
        logits[2, 3] = value
    elif where == "classes":
        classes[1] = value
    else:
        weight[:] = value
    with pytest.raises(ValueError, match=message) as want:
        cross_entropy_forward(logits, classes, weight)
    with pytest.raises(ValueError) as got:
        weighted_cross_entropy_forward(logits, classes, weight)
    assert str(got.value) == str(want.value)


def test_shape_errors_name_the_argument(rng):
    logits, classes, weight = problem(rng, 4, 5, np.float32)
    with pytest.raises(ValueError, match="targets"):
        weighted_cross_entropy_forward(logits, classes[:3], weight)
    with pytest.raises(ValueError, match="weight"):
        weighted_cross_entropy_forward(logits, classes, weight[:4])
    with pytest.raises(TypeError, match="targets"):
        weighted_cross_entropy_forward(logits, classes.astype(np.float32), weight)


def test_kernel_runs_on_numpy_only(xp, monkeypatch):
    calls = []
    kernel = softmax_ce_cpu.weighted_cross_entropy_forward
    monkeypatch.setattr(
        softmax_ce_cpu, "weighted_cross_entropy_forward", lambda *a: calls.append(1) or kernel(*a)
    )
    logits, classes, weight = problem(np.random.default_rng(0), 3, 4, np.float64)
    loss, _ = weighted_cross_entropy_forward(
        xp.asarray(logits), xp.asarray(classes), xp.asarray(weight)
    )
    assert len(calls) == (1 if xp is np else 0)
    monkeypatch.setattr(cross_entropy, "_fused", lambda *a: False)
    want, _ = weighted_cross_entropy_forward(
        xp.asarray(logits), xp.asarray(classes), xp.asarray(weight)
    )
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-12)
