"""A Numba loop for the Hungarian matcher's cost, every image's block in one call.

Speeds up ``minidetr.setloss.matching.HungarianMatcher.cost`` on NumPy arrays. The
array code builds each image's (T, Q) block with about ten NumPy calls (a gather of
class costs, the L1 distances through a (T, Q, 4) temporary, a GIoU call with its
input checks, three scalings and two sums): on DETR's shapes that is tens of
microseconds of call overhead per image for a few hundred numbers. This loop writes
the stacked (S, Q) costs directly, with the same arithmetic in the same order and
dtype, so its costs equal the array code's bit for bit (and so do the matches):

    C[s, q] = (w_class * class_cost[b, q, c] + w_bbox * L1) + w_giou * (-GIoU),

with L1 = ((|d0| + |d1|) + |d2|) + |d3| summed in the dtype as NumPy sums four
numbers, and GIoU from ``giou_cpu._pair`` rounded to the dtype as that kernel stores it.

Dimension letters: B images, Q queries, K class costs per query, S targets in the batch.
"""

from __future__ import annotations

from numba import njit

from minidetr.kernels.giou_cpu import _pair


@njit(cache=True, error_model="numpy")
def stacked_matching_cost(class_cost, boxes, pred_xyxy, image, labels, tgt, tgt_xyxy, weights, out):
    """Fill out (S, Q): row s is target s (of image ``image[s]``, class ``labels[s]``).

    class_cost (B, Q, K); boxes, pred_xyxy (B, Q, 4) cxcywh and xyxy; image, labels (S,)
    integers; tgt, tgt_xyxy (S, 4) cxcywh and xyxy; weights (3,) = w_class, w_bbox,
    w_giou, all in the dtype of out.
    """
    w_class, w_bbox, w_giou = weights[0], weights[1], weights[2]
    for s in range(out.shape[0]):
        b, c = image[s], labels[s]
        t0, t1, t2, t3 = tgt[s, 0], tgt[s, 1], tgt[s, 2], tgt[s, 3]
        x0, y0, x1, y1 = tgt_xyxy[s, 0], tgt_xyxy[s, 1], tgt_xyxy[s, 2], tgt_xyxy[s, 3]
        row = out[s]
        for q in range(out.shape[1]):
            p = boxes[b, q]
            l1 = abs(t0 - p[0]) + abs(t1 - p[1]) + abs(t2 - p[2]) + abs(t3 - p[3])
            r = pred_xyxy[b, q]
            row[q] = _pair(x0, y0, x1, y1, r[0], r[1], r[2], r[3])[2]  # rounded to the dtype
            giou = row[q]
            row[q] = (w_class * class_cost[b, q, c] + w_bbox * l1) + w_giou * (-giou)
