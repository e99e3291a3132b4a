"""The loss terms of one decoder layer under a fixed assignment, and their backward.

Given an :class:`~minidetr.setloss.assign.Assignment` (who answers what), one
layer's predictions pay three terms (the criterion's module docstring gives them):
classification over the scored queries (softmax cross-entropy with a down-weighted
no-object class, or sigmoid focal loss over the C classes), L1 and 1 - GIoU over
the matched pairs. The backward is the chain rule of
``w_ce loss_ce + w_bbox loss_bbox + w_giou loss_giou``.

Dimension letters: B images, Q queries, K logits, M matched pairs, R scored queries.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from minidetr.backend import Array, asarray, index_add, namespace
from minidetr.outputs import Predictions
from minidetr.setloss.assign import Assignment
from minidetr.setloss.box_loss import matched_box_loss_backward, matched_box_loss_forward
from minidetr.setloss.cross_entropy import (
    weighted_cross_entropy_backward,
    weighted_cross_entropy_forward,
)
from minidetr.setloss.focal import sigmoid_focal_loss_backward, sigmoid_focal_loss_forward


class LayerLossCache(NamedTuple):
    """What one layer's backward needs."""

    logits_shape: tuple[int, ...]  # (B, Q, K)
    assignment: Assignment
    indices: list | None  # the matcher's [(pred_idx, tgt_idx)] per image; None for denoising
    class_cache: Any  # a cross-entropy or SigmoidFocalCache, or None without "labels"
    focal: bool
    box_cache: Any  # the matched box terms' cache, or None without "boxes"
    weights: tuple[float, float, float]  # weights of loss_ce, loss_bbox, loss_giou


def layer_loss_forward(
    pred: Predictions,
    a: Assignment,
    indices: list | None,
    weights: tuple[float, float, float],
    options: dict,
) -> tuple[dict[str, Array], LayerLossCache]:
    """{"loss_ce", "loss_bbox", "loss_giou"} of one layer (those ``options`` ask for).

    options: "labels", "boxes" (bools: which terms), "focal" ((alpha, gamma) or None),
    "class_weight" ((K,) cross-entropy class weights, softmax mode).
    """
    logits, boxes = pred.logits, pred.boxes
    xp = namespace(logits, boxes)
    bsz, q, k = logits.shape
    focal = options["focal"]
    terms: dict[str, Array] = {}
    class_cache = box_cache = None
    if options["labels"]:
        x = xp.reshape(logits, (bsz * q, k))  # (B*Q, K)
        if a.rows is not None:
            x = xp.take(x, a.rows, axis=0)  # (R, K)
        if x.shape[0] == 0:  # no denoising query in the batch (no targets at all)
            terms["loss_ce"] = xp.zeros((), dtype=logits.dtype, device=logits.device)
        elif focal is not None:  # one-hot over the C real classes; no-object rows are all zero
            classes = xp.arange(k, device=logits.device)
            onehot = xp.astype(a.row_classes[:, None] == classes[None, :], logits.dtype)
            per_entry, class_cache = sigmoid_focal_loss_forward(x, onehot, *focal)  # (R, C)
            terms["loss_ce"] = xp.sum(per_entry) / a.num_boxes
        else:
            terms["loss_ce"], class_cache = weighted_cross_entropy_forward(
                x, a.row_classes, options["class_weight"]
            )
    if options["boxes"]:
        src = xp.take(xp.reshape(boxes, (bsz * q, 4)), a.src, axis=0)  # (M, 4)
        box_terms, box_cache = matched_box_loss_forward(src, a.tgt_boxes, a.num_boxes)
        terms["loss_bbox"], terms["loss_giou"] = box_terms
    cache = LayerLossCache(
        tuple(logits.shape),
        a,
        indices,
        class_cache,
        focal is not None,
        box_cache,
        weights,
    )
    return terms, cache


def layer_loss_backward(c: LayerLossCache) -> Predictions:
    """d(w_ce loss_ce + w_bbox loss_bbox + w_giou loss_giou) / d(logits, boxes) of one layer."""
    a = c.assignment
    xp = namespace(a.tgt_boxes)
    bsz, q, k = c.logits_shape
    w_ce, w_bbox, w_giou = c.weights
    dtype, dev = a.tgt_boxes.dtype, a.tgt_boxes.device
    if c.class_cache is None:
        dlogits = xp.zeros((bsz * q, k), dtype=dtype, device=dev)  # (B*Q, K)
    else:
        if c.focal:
            dout = xp.full(c.class_cache.p.shape, w_ce / a.num_boxes, dtype=dtype, device=dev)
            dx = sigmoid_focal_loss_backward(dout, c.class_cache)[0]
        else:
            dloss = xp.asarray(w_ce, dtype=dtype, device=dev)
            dx = weighted_cross_entropy_backward(dloss, c.class_cache)[0]
        if a.rows is not None:  # only the scored rows have a gradient
            dx = index_add(xp.zeros((bsz * q, k), dtype=dtype, device=dev), a.rows, dx)
        dlogits = dx  # (B*Q, K)
    dboxes = xp.zeros((bsz * q, 4), dtype=dtype, device=dev)  # (B*Q, 4)
    if c.box_cache is not None and a.src.shape[0] > 0:
        dsrc = matched_box_loss_backward(w_bbox, w_giou, c.box_cache)  # (M, 4)
        dboxes = index_add(dboxes, a.src, dsrc)
    return Predictions(xp.reshape(dlogits, (bsz, q, k)), xp.reshape(dboxes, (bsz, q, 4)))


# ---------------------------------------------------------------- logging terms


def cardinality_error(logits: Array, indices: list, num_classes: int, focal: bool) -> Array:
    """mean_b |#queries predicting an object - T_b|.

    An object is argmax != C; in focal mode, some logit > 0 (a class with p > 1/2).
    """
    xp = namespace(logits)
    if focal:
        is_object = xp.max(logits, axis=-1) > 0  # (B, Q)
    else:
        is_object = xp.argmax(logits, axis=-1) != num_classes  # (B, Q)
    card_pred = xp.sum(xp.astype(is_object, logits.dtype), axis=1)  # (B,)
    card_tgt = asarray([len(np.asarray(t)) for _, t in indices], like=logits, dtype=logits.dtype)
    return xp.mean(xp.abs(card_pred - card_tgt))


def class_error(logits: Array, a: Assignment) -> Array:
    """100 - top-1 accuracy (%) of the matched queries; 100 with no targets, as in DETR."""
    xp = namespace(logits)
    bsz, q, k = logits.shape
    if a.src.shape[0] == 0:
        return xp.asarray(100.0, dtype=logits.dtype, device=logits.device)
    matched = xp.take(xp.reshape(logits, (bsz * q, k)), a.src, axis=0)  # (M, K)
    correct = xp.astype(xp.argmax(matched, axis=-1) == a.tgt_labels, logits.dtype)
    return 100.0 - 100.0 * xp.mean(correct)
