"""Sigmoid focal loss: closed form, gradient, limits, and its use in the criterion."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from minidetr.backend import to_numpy
from minidetr.gradcheck import gradcheck
from minidetr.setloss.criterion import LossWeights, SetCriterion
from minidetr.setloss.focal import sigmoid_focal_loss_backward, sigmoid_focal_loss_forward
from minidetr.setloss.matching import HungarianMatcher

logits = arrays(
    np.float64, st.tuples(st.integers(1, 5), st.integers(1, 6)), elements=st.floats(-30, 30)
)


@given(logits, st.floats(0.0, 1.0), st.floats(0.0, 4.0), st.integers(0, 2**31 - 1))
def test_matches_closed_form(x, alpha, gamma, seed):
    t = np.random.default_rng(seed).integers(0, 2, x.shape).astype(np.float64)
    loss, _ = sigmoid_focal_loss_forward(x, t, alpha, gamma)
    for (i, j), v in np.ndenumerate(x):
        p, one_minus_p = 1.0 / (1.0 + math.exp(-v)), 1.0 / (1.0 + math.exp(v))
        if t[i, j] == 1:  # -alpha (1 - p)^gamma log p, with log p = -log(1 + e^-x)
            expected = alpha * one_minus_p**gamma * math.log1p(math.exp(-v))
        else:  # -(1 - alpha) p^gamma log(1 - p), with log(1 - p) = -log(1 + e^x)
            expected = (1 - alpha) * p**gamma * math.log1p(math.exp(v))
        assert loss[i, j] == pytest.approx(expected, rel=1e-12, abs=1e-300)


def test_gamma_zero_and_no_alpha_is_binary_cross_entropy():
    x = np.linspace(-6, 6, 13)[None, :]
    t = (np.arange(13) % 2).astype(np.float64)[None, :]
    loss, _ = sigmoid_focal_loss_forward(x, t, alpha=-1.0, gamma=0.0)
    p = 1 / (1 + np.exp(-x))
    np.testing.assert_allclose(loss, -(t * np.log(p) + (1 - t) * np.log(1 - p)), rtol=1e-12)


def test_easy_examples_are_down_weighted():
    # a confident right answer loses far more of its loss than a wrong one
    x, t = np.array([[4.0, -4.0]]), np.array([[1.0, 1.0]])
    focal, _ = sigmoid_focal_loss_forward(x, t, alpha=0.5, gamma=2.0)
    plain, _ = sigmoid_focal_loss_forward(x, t, alpha=0.5, gamma=0.0)
    ratio = focal / plain  # (1 - p_t)^2
    assert ratio[0, 0] < 1e-3 < 0.9 < ratio[0, 1]


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 3.5])
def test_gradcheck(xp, gamma):
    r = np.random.default_rng(int(gamma * 10))
    x = xp.asarray(r.normal(0, 3, (4, 5)))
    t = xp.asarray(r.uniform(0, 1, (4, 5)))  # soft targets exercise the general formula

    def forward(x):
        return sigmoid_focal_loss_forward(x, t, 0.25, gamma)

    result = gradcheck(forward, sigmoid_focal_loss_backward, [x], names=["logits"])
    assert result.max_error < 1e-7, result.report()


def test_saturated_logits_stay_finite():
    x = np.array([[800.0, -800.0, 800.0, -800.0]])
    t = np.array([[1.0, 0.0, 0.0, 1.0]])
    loss, cache = sigmoid_focal_loss_forward(x, t, 0.25, 0.5)
    (dx,) = sigmoid_focal_loss_backward(np.ones_like(x), cache)
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(dx))
    np.testing.assert_allclose(loss[0, :2], 0.0, atol=1e-300)
    np.testing.assert_allclose(loss[0, 2:], [0.75 * 800, 0.25 * 800])


def test_bad_arguments():
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match="targets must have the shape"):
        sigmoid_focal_loss_forward(x, np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 1\]"):
        sigmoid_focal_loss_forward(x, np.full((2, 3), 2.0))
    with pytest.raises(ValueError, match="gamma"):
        sigmoid_focal_loss_forward(x, x, gamma=-1.0)
    with pytest.raises(ValueError, match="logits must be finite"):
        sigmoid_focal_loss_forward(np.full((2, 3), np.nan), x)


def test_criterion_focal_loss_is_deformable_detrs_scaling(xp):
    """loss_ce = sum of focal over queries and classes / num_boxes; unmatched rows target 0."""
    r = np.random.default_rng(4)
    logits_np = r.normal(0, 2, (2, 6, 3))
    boxes_np = np.concatenate([r.uniform(0.3, 0.7, (2, 6, 2)), r.uniform(0.1, 0.3, (2, 6, 2))], -1)
    targets_np = [
        {
            "labels": np.array([2, 0]),
            "boxes": np.array([[0.4, 0.5, 0.2, 0.2], [0.6, 0.6, 0.1, 0.3]]),
        },
        {"labels": np.array([1]), "boxes": np.array([[0.5, 0.5, 0.3, 0.3]])},
    ]
    outputs = {"pred_logits": xp.asarray(logits_np), "pred_boxes": xp.asarray(boxes_np)}
    targets = [{k: xp.asarray(v) for k, v in t.items()} for t in targets_np]
    weights = LossWeights(ce=2.0, bbox=0.0, giou=0.0)
    criterion = SetCriterion(3, HungarianMatcher(focal=True), weights, focal=True)
    losses, cache = criterion.forward(outputs, targets)
    onehot = np.zeros_like(logits_np)
    for b, (pred_idx, tgt_idx) in enumerate(cache.matches[("main", 0)]):
        onehot[b, pred_idx, targets_np[b]["labels"][tgt_idx]] = 1.0
    p = 1 / (1 + np.exp(-logits_np))
    per = np.where(onehot == 1, -0.25 * (1 - p) ** 2 * np.log(p), -0.75 * p**2 * np.log(1 - p))
    np.testing.assert_allclose(float(losses["loss_ce"]), per.sum() / 3, rtol=1e-12)
    np.testing.assert_allclose(float(losses["loss"]), 2 * per.sum() / 3, rtol=1e-12)
    assert "loss_bbox" in losses  # reported, weight 0: not in the total
    grads = criterion.backward(cache)
    assert np.all(to_numpy(grads["pred_boxes"]) == 0)
