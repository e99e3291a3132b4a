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
from minidetr.boxes import (
    box_cxcywh_to_xyxy_backward,
    box_cxcywh_to_xyxy_forward,
    paired_generalized_box_iou_backward,
    paired_generalized_box_iou_forward,
)
from minidetr.ops import cross_entropy_backward, cross_entropy_forward
from minidetr.outputs import Predictions
from minidetr.setloss.assign import Assignment
from minidetr.setloss.focal import sigmoid_focal_loss_backward, sigmoid_focal_loss_forward


class LayerLossCache(NamedTuple):
    """What one layer's backward needs."""

    logits_shape: tuple[int, ...]  # (B, Q, K)
    assignment: Assignment
    indices: list | None  # the matcher's [(pred_idx, tgt_idx)] per image; None for denoising
    class_cache: Any  # CrossEntropyCache or SigmoidFocalCache, or None without "labels"
    focal: bool
    diff: Array | None  # (M, 4) b_q - b_t, for the L1 gradient
    xyxy_cache: Any  # conversion cache of the matched predictions
    giou_cache: Any  # paired GIoU cache
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
    class_cache = diff = xyxy_cache = giou_cache = None
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
            terms["loss_ce"], class_cache = cross_entropy_forward(
                x, a.row_classes, options["class_weight"]
            )
    if options["boxes"]:
        src = xp.take(xp.reshape(boxes, (bsz * q, 4)), a.src, axis=0)  # (M, 4)
        diff = src - a.tgt_boxes  # (M, 4)
        terms["loss_bbox"] = xp.sum(xp.abs(diff)) / a.num_boxes
        src_xyxy, xyxy_cache = box_cxcywh_to_xyxy_forward(src)
        tgt_xyxy, _ = box_cxcywh_to_xyxy_forward(a.tgt_boxes)
        giou, giou_cache = paired_generalized_box_iou_forward(src_xyxy, tgt_xyxy)  # (M,)
        terms["loss_giou"] = xp.sum(1.0 - giou) / a.num_boxes
    cache = LayerLossCache(
        tuple(logits.shape),
        a,
        indices,
        class_cache,
        focal is not None,
        diff,
        xyxy_cache,
        giou_cache,
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
    dlogits = xp.zeros((bsz * q, k), dtype=dtype, device=dev)  # (B*Q, K)
    if c.class_cache is not None:
        if c.focal:
            dout = xp.full(c.class_cache.p.shape, w_ce / a.num_boxes, dtype=dtype, device=dev)
            dx = sigmoid_focal_loss_backward(dout, c.class_cache)[0]
        else:
            dx = cross_entropy_backward(xp.asarray(w_ce, dtype=dtype, device=dev), c.class_cache)[0]
        dlogits = dx if a.rows is None else index_add(dlogits, a.rows, dx)
    dboxes = xp.zeros((bsz * q, 4), dtype=dtype, device=dev)  # (B*Q, 4)
    if c.diff is not None and c.diff.shape[0] > 0:
        dsrc = (w_bbox / a.num_boxes) * xp.sign(c.diff)  # d|x|/dx = sign(x), 0 at 0
        dgiou = xp.full((c.diff.shape[0],), -w_giou / a.num_boxes, dtype=dtype, device=dev)
        dsrc_xyxy, _ = paired_generalized_box_iou_backward(dgiou, c.giou_cache)
        dsrc = dsrc + box_cxcywh_to_xyxy_backward(dsrc_xyxy, c.xyxy_cache)[0]  # (M, 4)
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
