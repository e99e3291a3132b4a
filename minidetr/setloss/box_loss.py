"""The set loss's box terms over matched pairs: L1 and 1 - GIoU, forward and backward.

    loss_bbox = sum_m |b_m - t_m|_1 / N,   loss_giou = sum_m (1 - GIoU(b_m, t_m)) / N

for the matched predictions b (M, 4) and their targets t (M, 4), cxcywh, N the
normaliser (the batch's number of targets). The array code below is the reference
and runs on every namespace; on NumPy float arrays the same op pair runs the two
loops of ``minidetr.kernels.box_loss_cpu`` (same results to rounding, same errors).

Dimension letters: M matched pairs.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from minidetr.backend import Array, compiled_kernel, namespace
from minidetr.boxes import (
    box_cxcywh_to_xyxy_backward,
    box_cxcywh_to_xyxy_forward,
    paired_generalized_box_iou_backward,
    paired_generalized_box_iou_forward,
)
from minidetr.kernels import box_loss_cpu


class BoxLossCache(NamedTuple):
    """The array code's: what the chain rule through L1, GIoU and the conversion needs."""

    diff: Array  # (M, 4) b - t, for the L1 gradient
    xyxy_cache: Any  # conversion cache of the matched predictions
    giou_cache: Any  # paired GIoU cache
    num_boxes: float


class FusedBoxLossCache(NamedTuple):
    """The kernel's: the pairs and their corners."""

    src: np.ndarray  # (M, 4) cxcywh
    tgt: np.ndarray  # (M, 4) cxcywh
    corners: np.ndarray  # (M, 8) xyxy of src, then of tgt
    num_boxes: float


def _fused(src: Array, tgt: Array) -> bool:
    """The kernel takes these: NumPy (M, 4) float arrays of one dtype."""
    return compiled_kernel(src, tgt) == "numba" and src.dtype == tgt.dtype and src.ndim == 2


def matched_box_loss_forward(
    src: Array, tgt: Array, num_boxes: float
) -> tuple[tuple[Array, Array], BoxLossCache | FusedBoxLossCache]:
    """(loss_bbox, loss_giou), each a 0-d array, of matched boxes src, tgt (M, 4) cxcywh.

    Carion et al. (2020), ``models/detr.py`` (``loss_boxes``); Rezatofighi et al. (2019)
    for GIoU. An invalid box raises the ValueError of ``paired_generalized_box_iou``.
    """
    if _fused(src, tgt):
        s, t = np.ascontiguousarray(src), np.ascontiguousarray(tgt)
        corners = np.empty((s.shape[0], 8), dtype=s.dtype)  # (M, 8)
        status, l1, giou_loss = box_loss_cpu.matched_box_loss_forward(s, t, corners)
        if status == box_loss_cpu.OK:
            terms = tuple(np.asarray(v / num_boxes, dtype=s.dtype) for v in (l1, giou_loss))
            return terms, FusedBoxLossCache(s, t, corners, num_boxes)
    xp = namespace(src, tgt)  # the reference (and the errors of an invalid box)
    diff = src - tgt  # (M, 4)
    loss_bbox = xp.sum(xp.abs(diff)) / num_boxes
    src_xyxy, xyxy_cache = box_cxcywh_to_xyxy_forward(src)
    tgt_xyxy, _ = box_cxcywh_to_xyxy_forward(tgt)
    giou, giou_cache = paired_generalized_box_iou_forward(src_xyxy, tgt_xyxy)  # (M,)
    loss_giou = xp.sum(1.0 - giou) / num_boxes
    return (loss_bbox, loss_giou), BoxLossCache(diff, xyxy_cache, giou_cache, num_boxes)


def matched_box_loss_backward(
    w_bbox: float, w_giou: float, cache: BoxLossCache | FusedBoxLossCache
) -> Array:
    """dsrc (M, 4) of w_bbox * loss_bbox + w_giou * loss_giou.

    d|x|/dx = sign(x) (0 at 0); dloss_giou/dGIoU_m = -1 / N, through the paired GIoU
    backward and the cxcywh -> xyxy conversion.
    """
    n = cache.num_boxes
    if isinstance(cache, FusedBoxLossCache):
        return box_loss_cpu.matched_box_loss_backward(
            cache.src, cache.tgt, cache.corners, w_bbox / n, w_giou / n
        )
    xp = namespace(cache.diff)
    m = cache.diff.shape[0]
    dsrc = (w_bbox / n) * xp.sign(cache.diff)  # (M, 4)
    dgiou = xp.full((m,), -w_giou / n, dtype=cache.diff.dtype, device=cache.diff.device)
    dsrc_xyxy, _ = paired_generalized_box_iou_backward(dgiou, cache.giou_cache)
    return dsrc + box_cxcywh_to_xyxy_backward(dsrc_xyxy, cache.xyxy_cache)[0]  # (M, 4)
