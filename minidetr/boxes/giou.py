"""Area, IoU and generalized IoU of ``xyxy`` boxes, pairwise and paired, with backward.

The conventions (zero-area boxes, range, kinks) are in :mod:`minidetr.boxes`.
Dimension letters: N boxes in ``boxes1``, M boxes in ``boxes2``.
Rezatofighi et al., "Generalized Intersection over Union" (CVPR 2019).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np  # only for np.errstate around an overflow that is the true answer

from minidetr.backend import Array, namespace
from minidetr.boxes.checks import (
    _check_pair,
    _check_upstream,
    _safe_scale,
    _use_kernel,
    check_boxes,
)
from minidetr.kernels import giou_cpu


def box_area(boxes: Array) -> Array:
    """|A| = (x1 - x0) (y1 - y0). boxes (..., 4) in xyxy -> (...)."""
    check_boxes(boxes, "boxes")
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _corners(boxes: Array) -> tuple[Array, Array, Array, Array]:
    return boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]


def _safe_div(num: Array | float, den: Array) -> Array:
    """num / den where den > 0, else 0: the module's convention for empty denominators."""
    xp = namespace(num, den)
    positive = den > 0
    quotient = num / xp.where(positive, den, xp.ones_like(den))
    return xp.where(positive, quotient, xp.zeros_like(quotient))


class _Overlap(NamedTuple):
    """Every intermediate of IoU and GIoU for boxes a and b, broadcast to one shape S."""

    iw: Array  # intersection width  max(min(ax1, bx1) - max(ax0, bx0), 0)
    ih: Array  # intersection height
    cw: Array  # enclosing width  max(ax1, bx1) - min(ax0, bx0)
    ch: Array  # enclosing height
    inter: Array  # |A n B| = iw ih
    union: Array  # |A u B| = |A| + |B| - |A n B|
    enclose: Array  # |C| = cw ch
    iou: Array  # inter / union
    giou: Array  # iou - (|C| - union) / |C|


def _overlap(a: Array, b: Array) -> _Overlap:
    """IoU and GIoU of xyxy boxes a (..., 4) and b (..., 4), broadcast together."""
    xp = namespace(a, b)
    ax0, ay0, ax1, ay1 = _corners(a)
    bx0, by0, bx1, by1 = _corners(b)
    area_a = (ax1 - ax0) * (ay1 - ay0)
    area_b = (bx1 - bx0) * (by1 - by0)
    iw = xp.clip(xp.minimum(ax1, bx1) - xp.maximum(ax0, bx0), min=0.0)  # S
    ih = xp.clip(xp.minimum(ay1, by1) - xp.maximum(ay0, by0), min=0.0)  # S
    inter = iw * ih  # S
    union = area_a + area_b - inter  # S
    cw = xp.maximum(ax1, bx1) - xp.minimum(ax0, bx0)  # S
    ch = xp.maximum(ay1, by1) - xp.minimum(ay0, by0)  # S
    enclose = cw * ch  # S
    iou = _safe_div(inter, union)
    giou = iou - _safe_div(enclose - union, enclose)
    return _Overlap(iw, ih, cw, ch, inter, union, enclose, iou, giou)


def _max_share(p: Array, q: Array | float) -> Array:
    """d max(p, q) / dp: 1 where p > q, 0 where p < q, 1/2 at a tie."""
    xp = namespace(p)
    return 0.5 * (xp.astype(p > q, p.dtype) + xp.astype(p >= q, p.dtype))


def _span_backward(
    dinner: Array, douter: Array, a_lo: Array, a_hi: Array, b_lo: Array, b_hi: Array
) -> tuple[Array, Array, Array, Array]:
    """Gradients (da_lo, da_hi, db_lo, db_hi) along one axis.

    inner = max(min(a_hi, b_hi) - max(a_lo, b_lo), 0) is the overlap length and
    outer = max(a_hi, b_hi) - min(a_lo, b_lo) the enclosing length; dinner and
    douter are their upstream gradients.
    """
    xp = namespace(a_lo, b_lo)
    dspan = dinner * _max_share(xp.minimum(a_hi, b_hi) - xp.maximum(a_lo, b_lo), 0.0)
    in_hi = _max_share(b_hi, a_hi)  # a_hi's share of min(a_hi, b_hi)
    in_lo = _max_share(a_lo, b_lo)  # a_lo's share of max(a_lo, b_lo)
    out_hi = _max_share(a_hi, b_hi)  # a_hi's share of max(a_hi, b_hi)
    out_lo = _max_share(b_lo, a_lo)  # a_lo's share of min(a_lo, b_lo)
    da_lo = -dspan * in_lo - douter * out_lo
    da_hi = dspan * in_hi + douter * out_hi
    db_lo = -dspan * (1.0 - in_lo) - douter * (1.0 - out_lo)
    db_hi = dspan * (1.0 - in_hi) + douter * (1.0 - out_hi)
    return da_lo, da_hi, db_lo, db_hi


def _overlap_backward(dgiou: Array, a: Array, b: Array) -> tuple[Array, ...]:
    """Gradients of sum(dgiou * giou(a, b)) per corner: (dax0, day0, dax1, day1, dbx0, ..., dby1).

    Each has the shape S of ``dgiou``; the caller sums over the axes that
    broadcasting added.
    """
    o = _overlap(a, b)  # recomputed rather than cached: a few elementwise steps
    ax0, ay0, ax1, ay1 = _corners(a)
    bx0, by0, bx1, by1 = _corners(b)
    # giou = inter / union - (enclose - union) / enclose = inter / union + union / enclose - 1
    inv_union = _safe_div(1.0, o.union)  # S; 0 where the ratio is defined as 0
    inv_enclose = _safe_div(1.0, o.enclose)  # S
    dinter = dgiou * inv_union
    dunion = dgiou * (inv_enclose - o.iou * inv_union)
    denclose = -dgiou * o.union * inv_enclose * inv_enclose
    # union = area_a + area_b - inter
    dinter = dinter - dunion
    # inter = iw ih, enclose = cw ch
    dax0, dax1, dbx0, dbx1 = _span_backward(dinter * o.ih, denclose * o.ch, ax0, ax1, bx0, bx1)
    day0, day1, dby0, dby1 = _span_backward(dinter * o.iw, denclose * o.cw, ay0, ay1, by0, by1)
    # area = (x1 - x0) (y1 - y0), for a and for b
    wa, ha, wb, hb = ax1 - ax0, ay1 - ay0, bx1 - bx0, by1 - by0
    dax0, dax1 = dax0 - dunion * ha, dax1 + dunion * ha
    day0, day1 = day0 - dunion * wa, day1 + dunion * wa
    dbx0, dbx1 = dbx0 - dunion * hb, dbx1 + dunion * hb
    dby0, dby1 = dby0 - dunion * wb, dby1 + dunion * wb
    return dax0, day0, dax1, day1, dbx0, dby0, dbx1, dby1


# ---------------------------------------------------------------- public IoU / GIoU


def box_iou(boxes1: Array, boxes2: Array) -> tuple[Array, Array]:
    """IoU = |A n B| / |A u B| for every pair, and the union.

    boxes1 (N, 4), boxes2 (M, 4) in xyxy. Returns iou (N, M) and union (N, M);
    iou is 0 where union is 0.
    """
    on_kernel = _check_pair(boxes1, boxes2, paired=False)
    scale = _safe_scale(boxes1, boxes2)
    if scale != 1.0:
        boxes1, boxes2 = boxes1 * scale, boxes2 * scale
    if on_kernel:  # NumPy float32/float64: the fused loop
        iou, union = giou_cpu.box_iou(boxes1, boxes2)
    else:
        o = _overlap(boxes1[:, None, :], boxes2[None, :, :])
        iou, union = o.iou, o.union
    if scale != 1.0:
        with np.errstate(over="ignore"):  # an area beyond the dtype's range is inf
            union = (union / scale) / scale
    return iou, union


def generalized_box_iou(boxes1: Array, boxes2: Array) -> Array:
    """GIoU = IoU - (|C| - |A u B|) / |C| for every pair, C the smallest enclosing box.

    boxes1 (N, 4), boxes2 (M, 4) in xyxy. Returns (N, M) in [-1, 1].
    """
    return generalized_box_iou_forward(boxes1, boxes2)[0]


class GeneralizedBoxIouCache(NamedTuple):
    boxes1: Array  # (N, 4)
    boxes2: Array  # (M, 4)


def generalized_box_iou_forward(
    boxes1: Array, boxes2: Array
) -> tuple[Array, GeneralizedBoxIouCache]:
    """GIoU = IoU - (|C| - |A u B|) / |C| for every pair (the op form of ``generalized_box_iou``).

    boxes1 (N, 4), boxes2 (M, 4) in xyxy. Returns giou (N, M). Rezatofighi et al.
    (2019), Algorithm 1; DETR's ``generalized_box_iou``.
    """
    on_kernel = _check_pair(boxes1, boxes2, paired=False)
    scale = _safe_scale(boxes1, boxes2)
    b1, b2 = (boxes1 * scale, boxes2 * scale) if scale != 1.0 else (boxes1, boxes2)
    if on_kernel:  # NumPy float32/float64: the fused loop
        giou = giou_cpu.generalized_box_iou(b1, b2)
    else:
        giou = _overlap(b1[:, None, :], b2[None, :, :]).giou  # (N, M)
    return giou, GeneralizedBoxIouCache(boxes1, boxes2)


def generalized_box_iou_backward(
    dgiou: Array, cache: GeneralizedBoxIouCache
) -> tuple[Array, Array]:
    """Gradients (dboxes1 (N, 4), dboxes2 (M, 4)) of sum(dgiou * giou), dgiou (N, M)."""
    boxes1, boxes2 = cache.boxes1, cache.boxes2
    _check_upstream(dgiou, (boxes1.shape[0], boxes2.shape[0]))
    fused = _use_kernel(dgiou, boxes1, boxes2)
    scale = _safe_scale(boxes1, boxes2, fused=fused)
    if scale != 1.0:  # d giou(s a, s b) / d a = s (d giou / d(s a)): scale back after
        grads = generalized_box_iou_backward(
            dgiou, GeneralizedBoxIouCache(boxes1 * scale, boxes2 * scale)
        )
        return grads[0] * scale, grads[1] * scale
    if fused:
        return giou_cpu.generalized_box_iou_backward(dgiou, boxes1, boxes2)
    xp = namespace(dgiou, boxes1, boxes2)
    grads = _overlap_backward(dgiou, boxes1[:, None, :], boxes2[None, :, :])  # 8 x (N, M)
    dboxes1 = xp.stack([xp.sum(g, axis=1) for g in grads[:4]], axis=-1)  # (N, 4)
    dboxes2 = xp.stack([xp.sum(g, axis=0) for g in grads[4:]], axis=-1)  # (M, 4)
    return dboxes1, dboxes2


class PairedGeneralizedBoxIouCache(NamedTuple):
    boxes1: Array  # (N, 4)
    boxes2: Array  # (N, 4)


def paired_generalized_box_iou(boxes1: Array, boxes2: Array) -> Array:
    """GIoU of boxes1[i] with boxes2[i]: the diagonal of the pairwise matrix. (N, 4) x2 -> (N,)."""
    return paired_generalized_box_iou_forward(boxes1, boxes2)[0]


def paired_generalized_box_iou_forward(
    boxes1: Array, boxes2: Array
) -> tuple[Array, PairedGeneralizedBoxIouCache]:
    """giou_i = IoU(A_i, B_i) - (|C_i| - |A_i u B_i|) / |C_i| for matched pairs.

    boxes1 (N, 4), boxes2 (N, 4) in xyxy. Returns giou (N,). This is the term of
    DETR's box loss, 1 - giou, summed over matched pairs.
    """
    _check_pair(boxes1, boxes2, paired=True)
    scale = _safe_scale(boxes1, boxes2)
    b1, b2 = (boxes1 * scale, boxes2 * scale) if scale != 1.0 else (boxes1, boxes2)
    return _overlap(b1, b2).giou, PairedGeneralizedBoxIouCache(boxes1, boxes2)


def paired_generalized_box_iou_backward(
    dgiou: Array, cache: PairedGeneralizedBoxIouCache
) -> tuple[Array, Array]:
    """Gradients (dboxes1 (N, 4), dboxes2 (N, 4)) of sum(dgiou * giou), dgiou (N,)."""
    _check_upstream(dgiou, (cache.boxes1.shape[0],))
    xp = namespace(dgiou, cache.boxes1, cache.boxes2)
    scale = _safe_scale(cache.boxes1, cache.boxes2)
    grads = _overlap_backward(dgiou, cache.boxes1 * scale, cache.boxes2 * scale)  # 8 x (N,)
    if scale != 1.0:
        grads = tuple(g * scale for g in grads)
    return xp.stack(grads[:4], axis=-1), xp.stack(grads[4:], axis=-1)
