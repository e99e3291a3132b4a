"""Axis-aligned boxes: format conversions, area, IoU and generalized IoU.

A box is a row of four numbers. ``xyxy`` is (x0, y0, x1, y1), two corners with
x1 >= x0 and y1 >= y0; ``cxcywh`` is (cx, cy, w, h), the centre and size that
DETR predicts. Dimension letters: N boxes in ``boxes1``, M boxes in ``boxes2``.

Pairwise functions compare every box of ``boxes1`` with every box of ``boxes2``
and return (N, M), as DETR's matcher needs. The ``paired_`` op compares
``boxes1[i]`` with ``boxes2[i]`` and returns (N,), as a loss over matched pairs
needs.

Zero-area boxes: a ratio whose denominator is 0 is defined to be 0, and so is
its gradient. IoU = inter / union is 0 when union = 0 (both boxes have zero
area); the enclosure penalty (|C| - union) / |C| is 0 when |C| = 0 (C, the
smallest enclosing box, has zero area only when both boxes do). So two
zero-area boxes have IoU 0 and GIoU 0 if C is flat (e.g. the same point), -1
otherwise: every result is finite, and -1 <= GIoU <= IoU <= 1 holds throughout.

Range: IoU and GIoU are unchanged when both boxes are scaled by the same factor,
and scaling by a power of two is exact. Coordinates beyond ``safe_coordinate_limit``
(2**61 in float32, 2**509 in float64, 32 in float16; for the Numba backward 2**30
and 2**254), whose areas or the backward's products would overflow to inf (or
underflow to 0) and give NaN, are first scaled by a power of two into that range;
the gradients are scaled back. So GIoU stays finite over each dtype's whole
range, and below the limit nothing changes, bit for bit. ``box_iou``'s union is
returned in the boxes' own units, and is inf where the true area exceeds the dtype.

Kinks: where a min or max is tied (equal coordinates) or an overlap width is
exactly 0, the backward takes the average of the two one-sided derivatives,
i.e. the gradient is split evenly between the tied sides.

On NumPy arrays the pairwise functions run the fused Numba loops of
``minidetr.kernels.giou_cpu``; every other namespace runs the array code here,
which is also the reference the kernels are tested against.

Reference: Rezatofighi et al., "Generalized Intersection over Union" (CVPR 2019);
DETR's ``util/box_ops.py`` (Carion et al., 2020).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np  # only for np.errstate around an overflow that is the true answer

from minidetr.backend import Array, compiled_kernel, namespace
from minidetr.checks import check_floating, unravel_index
from minidetr.kernels import giou_cpu

# ---------------------------------------------------------------- validation


def _use_kernel(*arrays: Array) -> bool:
    """True when the CPU kernels take every array (NumPy float32/float64)."""
    return compiled_kernel(*arrays) == "numba"


def _check_box_array(boxes: Array, name: str, *, on_kernel: bool = False) -> None:
    """Raise ``TypeError``/``ValueError`` unless ``boxes`` is a float (..., 4) array."""
    if not on_kernel:  # an array the kernels accept is already known to be a float array
        check_floating(boxes, name)
    if boxes.ndim < 1 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape (..., 4), got {tuple(boxes.shape)}")


def _first_invalid_box(boxes: Array, *, on_kernel: bool) -> int:
    """Flat index of the first non-finite or inverted box of (..., 4) ``boxes``, or -1."""
    if on_kernel:
        return giou_cpu.first_invalid_box(boxes.reshape(-1, 4))
    xp = namespace(boxes)
    flat = xp.reshape(boxes, (-1, 4))  # (K, 4)
    if flat.shape[0] == 0:
        return -1
    nonfinite = ~xp.all(xp.isfinite(flat), axis=1)  # (K,)
    inverted = (flat[:, 2] < flat[:, 0]) | (flat[:, 3] < flat[:, 1])  # (K,)
    bad = nonfinite | inverted
    if not bool(xp.any(bad)):
        return -1
    return int(xp.argmax(xp.astype(bad, xp.int8)))


def _check_box_values(boxes: Array, name: str, *, on_kernel: bool) -> None:
    """Raise ``ValueError`` naming the first non-finite or inverted box of ``boxes``."""
    first = _first_invalid_box(boxes, on_kernel=on_kernel)
    if first < 0:
        return
    index = unravel_index(first, tuple(boxes.shape[:-1]))
    where = f"{name}[{', '.join(map(str, index))}]"
    x0, y0, x1, y1 = (float(v) for v in namespace(boxes).reshape(boxes, (-1, 4))[first, :])
    values = f"(x0, y0, x1, y1) = ({x0}, {y0}, {x1}, {y1})"
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise ValueError(f"{where} is not finite: {values}")
    axis = "x1 < x0" if x1 < x0 else "y1 < y0"
    raise ValueError(f"{where} has {axis}: {values}; xyxy boxes need x1 >= x0 and y1 >= y0")


def check_boxes(boxes: Array, name: str) -> None:
    """Raise unless ``boxes`` is a float (..., 4) array of finite xyxy boxes.

    ``ValueError`` names the argument and the index of the first box that is not
    finite or has x1 < x0 or y1 < y0; ``TypeError`` for a non-float array.
    """
    on_kernel = _use_kernel(boxes)
    _check_box_array(boxes, name, on_kernel=on_kernel)
    _check_box_values(boxes, name, on_kernel=on_kernel)


def _check_pair(boxes1: Array, boxes2: Array, *, paired: bool) -> bool:
    """Validate two (n, 4) box arrays; return True when both can go to the NumPy kernels."""
    on_kernel = []
    for name, b in (("boxes1", boxes1), ("boxes2", boxes2)):
        on_kernel.append(_use_kernel(b))
        _check_box_array(b, name, on_kernel=on_kernel[-1])
        if b.ndim != 2:
            raise ValueError(f"{name} must have shape (n, 4), got {tuple(b.shape)}")
    if paired and boxes1.shape[0] != boxes2.shape[0]:
        raise ValueError(
            f"boxes1 and boxes2 must hold the same number of boxes to be paired, "
            f"got {boxes1.shape[0]} and {boxes2.shape[0]}"
        )
    if not (on_kernel[0] or on_kernel[1]) and _all_valid(boxes1, boxes2):
        return False  # one read of the device for both arrays; a failure reads more below
    _check_box_values(boxes1, "boxes1", on_kernel=on_kernel[0])
    _check_box_values(boxes2, "boxes2", on_kernel=on_kernel[1])
    return on_kernel[0] and on_kernel[1]


def _all_valid(boxes1: Array, boxes2: Array) -> bool:
    """Whether every box of both (n, 4) arrays is finite with x1 >= x0 and y1 >= y0."""
    xp = namespace(boxes1, boxes2)
    ok = [xp.all(xp.isfinite(b)) & xp.all(b[:, 2:] >= b[:, :2]) for b in (boxes1, boxes2)]
    return bool(ok[0] & ok[1])


def safe_coordinate_limit(boxes: Array, fused: bool = False) -> float:
    """2**(E/2 - 3) for the float type of ``boxes``, whose largest number is below 2**E.

    Below it, |coordinate| <= R keeps every area (<= 4 R^2), union (<= 8 R^2) and the
    backward's products under the largest float. ``fused``: the limit of the Numba
    backward, 2**((e - 4) / 4) for a smallest normal number 2**-e, which may reorder
    a product into 1 / |C|^2 (<= 1 / (16 R^4)) and must not see it underflow.
    """
    finfo = namespace(boxes).finfo(boxes.dtype)
    limit = 2.0 ** (math.frexp(float(finfo.max))[1] // 2 - 3)
    if fused:
        limit = min(limit, 2.0 ** ((1 - math.frexp(float(finfo.smallest_normal))[1] - 4) // 4))
    return limit


def _safe_scale(*boxes: Array, fused: bool = False) -> float:
    """1.0, or the power of two 2**-k that brings every |coordinate| of ``boxes`` to the limit."""
    largest, limit = 0.0, math.inf
    for b in boxes:
        if b.shape[0] == 0:
            continue
        xp = namespace(b)
        largest = max(largest, float(xp.max(xp.abs(b))))
        limit = min(limit, safe_coordinate_limit(b, fused))
    if largest <= limit:
        return 1.0
    return 2.0 ** -(math.frexp(largest)[1] - math.frexp(limit)[1] + 1)


def _check_upstream(dgiou: Array, shape: tuple[int, ...]) -> None:
    """The upstream gradient must be a float array shaped like the forward's output."""
    check_floating(dgiou, "dgiou")
    if tuple(dgiou.shape) != shape:
        raise ValueError(f"dgiou must have the forward output's shape {shape}, got {dgiou.shape}")


# ---------------------------------------------------------------- conversions


class BoxConversionCache(NamedTuple):
    """Empty: a format conversion is linear, so its backward needs no saved values."""


def box_cxcywh_to_xyxy(boxes: Array) -> Array:
    """(cx, cy, w, h) -> (cx - w/2, cy - h/2, cx + w/2, cy + h/2). boxes (..., 4) -> (..., 4)."""
    return box_cxcywh_to_xyxy_forward(boxes)[0]


def box_cxcywh_to_xyxy_forward(boxes: Array) -> tuple[Array, BoxConversionCache]:
    """(cx, cy, w, h) -> (x0, y0, x1, y1) = (c - wh/2, c + wh/2).

    boxes (..., 4) in cxcywh. Returns (..., 4) in xyxy. No sign check: a negative
    size gives an inverted box, which the IoU functions reject with its index.
    """
    _check_box_array(boxes, "boxes")
    xp = namespace(boxes)
    centre, size = boxes[..., :2], boxes[..., 2:]  # (..., 2) each
    return xp.concat([centre - 0.5 * size, centre + 0.5 * size], axis=-1), BoxConversionCache()


def box_cxcywh_to_xyxy_backward(dout: Array, cache: BoxConversionCache) -> tuple[Array]:
    """dcentre = dlo + dhi, dsize = (dhi - dlo) / 2, for lo/hi = (x0, y0)/(x1, y1)."""
    xp = namespace(dout)
    dlo, dhi = dout[..., :2], dout[..., 2:]  # (..., 2) each
    return (xp.concat([dlo + dhi, 0.5 * (dhi - dlo)], axis=-1),)


def box_xyxy_to_cxcywh(boxes: Array) -> Array:
    """(x0, y0, x1, y1) -> ((x0 + x1)/2, (y0 + y1)/2, x1 - x0, y1 - y0). (..., 4) -> (..., 4)."""
    return box_xyxy_to_cxcywh_forward(boxes)[0]


def box_xyxy_to_cxcywh_forward(boxes: Array) -> tuple[Array, BoxConversionCache]:
    """(x0, y0, x1, y1) -> (cx, cy, w, h) = ((lo + hi) / 2, hi - lo).

    boxes (..., 4) in xyxy. Returns (..., 4) in cxcywh.
    """
    _check_box_array(boxes, "boxes")
    xp = namespace(boxes)
    lo, hi = boxes[..., :2], boxes[..., 2:]  # (..., 2) each
    return xp.concat([0.5 * (lo + hi), hi - lo], axis=-1), BoxConversionCache()


def box_xyxy_to_cxcywh_backward(dout: Array, cache: BoxConversionCache) -> tuple[Array]:
    """dlo = dcentre / 2 - dsize, dhi = dcentre / 2 + dsize."""
    xp = namespace(dout)
    dcentre, dsize = dout[..., :2], dout[..., 2:]  # (..., 2) each
    return (xp.concat([0.5 * dcentre - dsize, 0.5 * dcentre + dsize], axis=-1),)


# ---------------------------------------------------------------- area and IoU


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
