"""Numba loops for the box terms of the set loss: L1 and 1 - GIoU of matched pairs.

Speeds up ``minidetr.setloss.box_loss.matched_box_loss_forward`` and ``_backward``'s
array code (``box_cxcywh_to_xyxy``, ``paired_generalized_box_iou`` and their
backwards) on NumPy arrays, with the same formulas and conventions: a ratio with a
zero denominator is 0, a tied min/max splits its gradient evenly, sign(0) = 0. A
layer has a few dozen matched pairs, so the array code's cost is its forty-odd
NumPy calls, not arithmetic; here each direction is one call. Corners are rounded to
the boxes' dtype, as the array code's conversion does, and the GIoU runs in float64
on them. The GIoU of one pair and its gradient come from ``kernels.giou_cpu``.

Dimension letters: M matched pairs.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from minidetr.kernels.giou_cpu import _pair, _pair_grad

OK, INVALID, OUT_OF_RANGE = 0, 1, 2  # forward status; the caller runs the array code
LARGE = 2.0**200  # |coordinate| above it, or an enclosing area below SMALL: the array code
SMALL = 2.0**-300  # (it rescales); float32 boxes never reach either in float64


@njit(cache=True)
def matched_box_loss_forward(src, tgt, corners):
    """(status, sum_m |src_m - tgt_m|_1, sum_m (1 - GIoU(src_m, tgt_m))).

    src, tgt (M, 4) cxcywh boxes; corners (M, 8), of their dtype, receives the xyxy
    corners of src (first four) and tgt. The status is INVALID for a non-finite or
    inverted box, OUT_OF_RANGE beyond LARGE / SMALL.
    """
    l1 = 0.0
    giou_loss = 0.0
    for m in range(src.shape[0]):
        for k in range(2):  # x, y: (c - wh / 2, c + wh / 2), rounded to the dtype
            corners[m, k] = src[m, k] - 0.5 * src[m, k + 2]
            corners[m, k + 2] = src[m, k] + 0.5 * src[m, k + 2]
            corners[m, 4 + k] = tgt[m, k] - 0.5 * tgt[m, k + 2]
            corners[m, 6 + k] = tgt[m, k] + 0.5 * tgt[m, k + 2]
        c = corners[m]  # (8,)
        largest = 0.0
        for k in range(8):
            if not np.isfinite(c[k]):
                return INVALID, l1, giou_loss
            largest = max(largest, abs(np.float64(c[k])))
        if c[2] < c[0] or c[3] < c[1] or c[6] < c[4] or c[7] < c[5]:
            return INVALID, l1, giou_loss
        enclose = (max(c[2], c[6]) - min(c[0], c[4])) * (max(c[3], c[7]) - min(c[1], c[5]))
        if largest > LARGE or 0.0 < enclose < SMALL:
            return OUT_OF_RANGE, l1, giou_loss
        for k in range(4):
            l1 += abs(np.float64(src[m, k]) - np.float64(tgt[m, k]))
        a = np.float64(c[0]), np.float64(c[1]), np.float64(c[2]), np.float64(c[3])
        b = np.float64(c[4]), np.float64(c[5]), np.float64(c[6]), np.float64(c[7])
        giou_loss += 1.0 - _pair(a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3])[2]
    return OK, l1, giou_loss


@njit(cache=True)
def matched_box_loss_backward(src, tgt, corners, w_l1, w_giou):
    """dsrc (M, 4) of w_l1 sum_m |src_m - tgt_m|_1 + w_giou sum_m (1 - GIoU_m).

    The GIoU gradient with respect to the corners (x0, y0, x1, y1) goes back through
    the conversion: dcentre = dlo + dhi, dsize = (dhi - dlo) / 2.
    """
    dsrc = np.empty_like(src)
    for m in range(src.shape[0]):
        c = corners[m]  # (8,)
        a = np.float64(c[0]), np.float64(c[1]), np.float64(c[2]), np.float64(c[3])
        b = np.float64(c[4]), np.float64(c[5]), np.float64(c[6]), np.float64(c[7])
        dx0, dy0, dx1, dy1 = _pair_grad(-w_giou, a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3])
        dxyxy = (dx0 + dx1, dy0 + dy1, 0.5 * (dx1 - dx0), 0.5 * (dy1 - dy0))
        for k in range(4):
            d = np.float64(src[m, k]) - np.float64(tgt[m, k])
            sign = 1.0 if d > 0 else (-1.0 if d < 0 else 0.0)
            dsrc[m, k] = w_l1 * sign + dxyxy[k]
    return dsrc
