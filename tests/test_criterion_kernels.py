"""The whole set criterion gives the same losses and gradients with its Numba loops as without."""

from __future__ import annotations

import array_api_strict as xps
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minidetr.setloss import box_loss, cross_entropy
from minidetr.setloss.assign import scatter_classes
from minidetr.setloss.criterion import LossWeights, SetCriterion
from minidetr.setloss.denoising import make_denoising_queries
from minidetr.setloss.matching import HungarianMatcher


def problem(rng, b, q, num_classes, layers, focal, dn, dtype):
    k = num_classes + (0 if focal else 1)

    def layer(n):
        boxes = np.concatenate(
            [rng.uniform(0.2, 0.8, (b, n, 2)), rng.uniform(0.05, 0.4, (b, n, 2))], -1
        )
        return {
            "pred_logits": rng.normal(0, 2, (b, n, k)).astype(dtype),
            "pred_boxes": boxes.astype(dtype),
        }

    targets = []
    for t in rng.integers(0, 9, b):
        boxes = np.concatenate(
            [rng.uniform(0.25, 0.75, (t, 2)), rng.uniform(0.05, 0.4, (t, 2))], -1
        )
        targets.append({"labels": rng.integers(0, num_classes, t), "boxes": boxes.astype(dtype)})
    outputs = {**layer(q), "aux_outputs": [layer(q) for _ in range(layers - 1)]}
    if dn:
        meta = make_denoising_queries(targets, dn, 0.5, 0.4, num_classes, rng, num_queries=q)
        n = meta.labels.shape[1]
        outputs["dn"] = {
            **layer(n),
            "aux_outputs": [layer(n) for _ in range(layers - 1)],
            "meta": meta,
        }
    return outputs, targets


def run(criterion, outputs, targets, matches):
    losses, cache = criterion.forward(outputs, targets, matches=matches)
    grads = criterion.backward(cache)
    arrays = [
        g for group in grads.groups.values() for p in group.layers for g in p if g is not None
    ]
    return losses, arrays, cache


@pytest.mark.parametrize(
    ("dtype", "focal", "dn", "tol"),
    [(np.float32, False, 0, 1e-6), (np.float64, False, 2, 1e-12), (np.float64, True, 2, 1e-12)],
)
def test_kernels_change_nothing_but_rounding(monkeypatch, dtype, focal, dn, tol):
    queries, classes = (100, 91) if dtype == np.float32 else (12, 5)  # DETR's sizes in float32
    outputs, targets = problem(np.random.default_rng(7), 4, queries, classes, 3, focal, dn, dtype)
    weights = LossWeights(ce=1.0, bbox=5.0, giou=2.0)
    criterion = SetCriterion(classes, HungarianMatcher(focal=focal), weights, focal=focal)
    matches = criterion.forward(outputs, targets)[1].matches
    losses, grads, cache = run(criterion, outputs, targets, matches)
    for layer in cache.layers.values():  # the loops ran
        assert isinstance(layer.box_cache, box_loss.FusedBoxLossCache)
        if not focal:
            assert isinstance(layer.class_cache, cross_entropy.FusedCrossEntropyCache)
    monkeypatch.setattr(cross_entropy, "_fused", lambda *a: False)
    monkeypatch.setattr(box_loss, "_fused", lambda *a: False)
    want_losses, want_grads, _ = run(criterion, outputs, targets, matches)
    assert losses.keys() == want_losses.keys()
    for name in losses:
        np.testing.assert_allclose(losses[name], want_losses[name], rtol=tol, err_msg=name)
    assert len(grads) == len(want_grads)
    for g, w in zip(grads, want_grads):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol * np.abs(w).max())


@given(st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_scatter_classes_numpy_equals_the_array_code(n, seed):
    """NumPy's direct assignment and the standard's compare-every-slot form agree."""
    r = np.random.default_rng(seed)
    src = r.permutation(n)[: r.integers(0, n + 1)].astype(np.int64)  # no repeats
    labels = r.integers(0, 5, src.shape[0]).astype(np.int64)
    got = scatter_classes(src, labels, n, 5)
    want = scatter_classes(xps.asarray(src), xps.asarray(labels), n, 5)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, np.asarray(want))
