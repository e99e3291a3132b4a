"""Who answers what: the assignment of queries to targets that the set loss scores.

One :class:`Assignment` per decoder layer and query group says which query must
predict which target and which class every scored query should predict. Matched
groups get it from the Hungarian matcher's indices; denoising queries know their
targets by construction (DN-DETR), so they need no matching.

Dimension letters: B images, Q queries of the group, C classes, T targets of an
image, M query-target pairs in the batch, R queries the classification loss scores.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minidetr.backend import Array, asarray, namespace
from minidetr.outputs import Predictions
from minidetr.setloss.denoising import DenoisingQueries, denoising_layout


class Assignment(NamedTuple):
    """Who answers what in one layer. ``src`` and ``rows`` index the (B * Q) flattened queries."""

    src: Array  # (M,) int64 flat index b * Q + q of each query that answers a target
    tgt_labels: Array  # (M,) int64 class of that target
    tgt_boxes: Array  # (M, 4) cxcywh box of that target
    rows: Array | None  # (R,) int64 queries the classification loss scores; None = all B * Q
    row_classes: Array  # (R,) int64 class each scored query should predict; C = no object
    num_boxes: float  # N, the normaliser of the box losses (and of the focal loss)


def matched_assignment(
    pred: Predictions, targets: list[dict], indices: list, num_classes: int, num_boxes: float
) -> Assignment:
    """Assignment from the matcher's [(pred_idx, tgt_idx)] per image; every query is scored."""
    logits = pred.logits
    xp = namespace(logits)
    bsz, q, _ = logits.shape
    if len(indices) != bsz:
        raise ValueError(f"matcher returned {len(indices)} index pairs for {bsz} images")
    src_parts, tgt_parts, offset = [], [], 0
    for i, (pred_idx, tgt_idx) in enumerate(indices):  # flat query and batch target indices
        src_parts.append(i * q + np.asarray(pred_idx, dtype=np.int64))
        tgt_parts.append(offset + np.asarray(tgt_idx, dtype=np.int64))
        offset += targets[i]["labels"].shape[0]
    src = asarray(np.concatenate(src_parts), like=logits, dtype=xp.int64)  # (M,)
    tgt = asarray(np.concatenate(tgt_parts), like=logits, dtype=xp.int64)  # (M,) into (S,)
    labels = xp.concat([xp.astype(t["labels"], xp.int64) for t in targets])  # (S,)
    boxes = xp.concat([xp.astype(t["boxes"], logits.dtype) for t in targets], axis=0)  # (S, 4)
    tgt_labels = xp.take(labels, tgt)  # (M,)
    row_classes = scatter_classes(src, tgt_labels, bsz * q, num_classes)  # (B*Q,)
    return Assignment(src, tgt_labels, xp.take(boxes, tgt, axis=0), None, row_classes, num_boxes)


def denoising_assignment(
    pred: Predictions, meta: DenoisingQueries, targets: list[dict], num_classes: int
) -> Assignment:
    """Assignment of the denoising slots: fixed by construction, no matching.

    Positive slots answer the target they were copied from; negative slots must say
    "no object"; padding slots are not scored. Box terms are divided by N * groups.
    """
    logits = pred.logits
    xp = namespace(logits)
    bsz, qdn, _ = logits.shape
    counts = [int(t["labels"].shape[0]) for t in targets]
    target_index, positive, valid = denoising_layout(counts, meta.num_groups, meta.contrastive)
    if target_index.shape != (bsz, qdn):
        raise ValueError(
            f"outputs['dn'] holds {qdn} queries per image but the targets and "
            f"outputs['dn']['meta'] lay out {target_index.shape[1]}"
        )
    labels, boxes, classes = [], [], []
    no_object = xp.asarray([num_classes], dtype=xp.int64, device=logits.device)
    for i, t in enumerate(targets):
        lab = xp.concat([xp.astype(t["labels"], xp.int64), no_object])  # (T_i + 1,)
        pos = asarray(target_index[i][positive[i]], like=logits, dtype=xp.int64)
        labels.append(xp.take(lab, pos))
        boxes.append(xp.take(xp.astype(t["boxes"], logits.dtype), pos, axis=0))
        cls = np.where(positive[i], target_index[i], counts[i])[valid[i]]  # negatives -> C
        classes.append(xp.take(lab, asarray(cls, like=logits, dtype=xp.int64)))
    flat = np.arange(bsz * qdn).reshape(bsz, qdn)
    return Assignment(
        src=asarray(flat[positive], like=logits, dtype=xp.int64),
        tgt_labels=xp.concat(labels),
        tgt_boxes=xp.concat(boxes, axis=0),
        rows=asarray(flat[valid], like=logits, dtype=xp.int64),
        row_classes=xp.concat(classes),
        num_boxes=float(max(sum(counts) * meta.num_groups, 1)),
    )


def scatter_classes(src: Array, labels: Array, n: int, fill: int) -> Array:
    """out (n,) int64: out[src[m]] = labels[m], ``fill`` elsewhere (``src`` has no repeats).

    The standard has no scatter: the array code compares every index with every slot.
    NumPy assigns directly.
    """
    if type(labels) is np.ndarray and type(src) is np.ndarray:
        out = np.full(n, fill, dtype=np.int64)
        out[src] = labels
        return out
    xp = namespace(labels)
    hit = src[:, None] == xp.arange(n, device=labels.device)[None, :]  # (M, n)
    placed = xp.sum(xp.where(hit, labels[:, None] - fill, xp.zeros_like(labels)[:, None]), axis=0)
    return placed + fill  # (n,)
