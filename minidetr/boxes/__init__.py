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
``minidetr.kernels.giou_cpu``; every other namespace runs the array code of
``giou.py``, which is also the reference the kernels are tested against.

Files: ``convert.py`` (formats), ``checks.py`` (input checks, safe range),
``giou.py`` (area, IoU, GIoU and their backward).

Reference: Rezatofighi et al., "Generalized Intersection over Union" (CVPR 2019);
DETR's ``util/box_ops.py`` (Carion et al., 2020).
"""

from minidetr.boxes.checks import check_boxes, safe_coordinate_limit
from minidetr.boxes.convert import (
    BoxConversionCache,
    box_cxcywh_to_xyxy,
    box_cxcywh_to_xyxy_backward,
    box_cxcywh_to_xyxy_forward,
    box_xyxy_to_cxcywh,
    box_xyxy_to_cxcywh_backward,
    box_xyxy_to_cxcywh_forward,
)
from minidetr.boxes.giou import (
    GeneralizedBoxIouCache,
    PairedGeneralizedBoxIouCache,
    box_area,
    box_iou,
    generalized_box_iou,
    generalized_box_iou_backward,
    generalized_box_iou_forward,
    paired_generalized_box_iou,
    paired_generalized_box_iou_backward,
    paired_generalized_box_iou_forward,
)

__all__ = [
    "BoxConversionCache",
    "GeneralizedBoxIouCache",
    "PairedGeneralizedBoxIouCache",
    "box_area",
    "box_cxcywh_to_xyxy",
    "box_cxcywh_to_xyxy_backward",
    "box_cxcywh_to_xyxy_forward",
    "box_iou",
    "box_xyxy_to_cxcywh",
    "box_xyxy_to_cxcywh_backward",
    "box_xyxy_to_cxcywh_forward",
    "check_boxes",
    "generalized_box_iou",
    "generalized_box_iou_backward",
    "generalized_box_iou_forward",
    "paired_generalized_box_iou",
    "paired_generalized_box_iou_backward",
    "paired_generalized_box_iou_forward",
    "safe_coordinate_limit",
]
