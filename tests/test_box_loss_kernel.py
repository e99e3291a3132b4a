"""The fused matched-box loss (L1 + 1 - GIoU) equals the array code, both directions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minidetr.gradcheck import numerical_gradient
from minidetr.kernels import box_loss_cpu
from minidetr.setloss import box_loss
from minidetr.setloss.box_loss import (
    FusedBoxLossCache,
    matched_box_loss_backward,
    matched_box_loss_forward,
)

W_BBOX, W_GIOU = 5.0, 2.0


def boxes(rng, m, dtype):
    """cxcywh boxes, with exact ties: shared centres, sizes, edges and identical pairs."""
    src = np.concatenate([rng.uniform(0.2, 0.8, (m, 2)), rng.uniform(0.05, 0.4, (m, 2))], 1)
    tgt = np.concatenate([rng.uniform(0.2, 0.8, (m, 2)), rng.uniform(0.05, 0.4, (m, 2))], 1)
    tie = rng.random((m, 4)) < 0.25
    tgt[tie] = src[tie]
    src[rng.random(m) < 0.1] = [0.5, 0.5, 0.0, 0.2]  # zero width
    return src.astype(dtype), tgt.astype(dtype)


def run(src, tgt, num_boxes, fused, monkeypatch):
    monkeypatch.setattr(box_loss, "_fused", lambda *a: fused)
    (l1, giou), cache = matched_box_loss_forward(src, tgt, num_boxes)
    assert isinstance(cache, FusedBoxLossCache) == (fused and src.dtype == tgt.dtype)
    return l1, giou, matched_box_loss_backward(W_BBOX, W_GIOU, cache)


@given(
    st.integers(0, 30),
    st.sampled_from([np.float32, np.float64]),
    st.floats(1.0, 50.0),
    st.integers(0, 2**32 - 1),
)
def test_kernel_equals_the_array_code(m, dtype, num_boxes, seed):
    src, tgt = boxes(np.random.default_rng(seed), m, dtype)
    with pytest.MonkeyPatch.context() as mp:
        got = run(src, tgt, num_boxes, True, mp)
        want = run(src, tgt, num_boxes, False, mp)
    tol = 1e-12 if dtype == np.float64 else 2e-6  # float32: the GIoU in float64 here
    for name, g, w in zip(("loss_bbox", "loss_giou", "dsrc"), got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, name
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol * (np.abs(w).max(initial=0) + 1))


def test_gradient_against_finite_differences(rng):
    src, tgt = boxes(rng, 7, np.float64)
    src[:, 2:] = np.maximum(src[:, 2:], 0.05)  # away from the kinks of |x| and min/max
    src[:, :2] += 0.01

    def f(s):
        (l1, giou), _ = matched_box_loss_forward(s, tgt, 3.0)
        return W_BBOX * float(l1) + W_GIOU * float(giou)

    _, cache = matched_box_loss_forward(src, tgt, 3.0)
    assert isinstance(cache, FusedBoxLossCache)
    dsrc = matched_box_loss_backward(W_BBOX, W_GIOU, cache)
    np.testing.assert_allclose(dsrc, numerical_gradient(f, src), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    ("which", "value", "message"),
    [("src", np.nan, "boxes1"), ("tgt", np.inf, "boxes2"), ("src", -0.3, "boxes1")],
)
def test_invalid_boxes_raise_the_array_code_error(rng, monkeypatch, which, value, message):
    src, tgt = boxes(rng, 5, np.float32)
    (src if which == "src" else tgt)[3, 2] = value  # a width: NaN, inf, or negative
    with pytest.raises(ValueError, match=message) as got:
        matched_box_loss_forward(src, tgt, 2.0)
    monkeypatch.setattr(box_loss, "_fused", lambda *a: False)
    with pytest.raises(ValueError) as want:
        matched_box_loss_forward(src, tgt, 2.0)
    assert str(got.value) == str(want.value)


def test_huge_coordinates_leave_the_kernel_for_the_rescaling_array_code(rng, monkeypatch):
    src, tgt = boxes(rng, 4, np.float64)
    src *= 2.0**250
    tgt *= 2.0**250
    (l1, giou), cache = matched_box_loss_forward(src, tgt, 1.0)
    assert not isinstance(cache, FusedBoxLossCache)
    assert np.isfinite(float(l1)) and np.isfinite(float(giou))
    assert np.isfinite(matched_box_loss_backward(W_BBOX, W_GIOU, cache)).all()


def test_kernel_runs_on_numpy_only(xp, monkeypatch):
    calls = []
    kernel = box_loss_cpu.matched_box_loss_forward
    monkeypatch.setattr(
        box_loss_cpu, "matched_box_loss_forward", lambda *a: calls.append(1) or kernel(*a)
    )
    src, tgt = boxes(np.random.default_rng(0), 4, np.float64)
    (l1, giou), _ = matched_box_loss_forward(xp.asarray(src), xp.asarray(tgt), 2.0)
    assert len(calls) == (1 if xp is np else 0)
    np.testing.assert_allclose(float(l1), np.abs(src - tgt).sum() / 2.0, rtol=1e-12)
