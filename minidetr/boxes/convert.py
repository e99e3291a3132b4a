"""Box format conversions between ``cxcywh`` (DETR's predictions) and ``xyxy``, with backward."""

from __future__ import annotations

from typing import NamedTuple

from minidetr.backend import Array, namespace
from minidetr.boxes.checks import _check_box_array


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
