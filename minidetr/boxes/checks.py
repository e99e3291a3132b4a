"""Checks of box arrays, and the power-of-two scaling that keeps GIoU finite.

Boxes must be finite ``xyxy`` rows with x1 >= x0 and y1 >= y0; every error names the
argument and the first bad box. Coordinates beyond :func:`safe_coordinate_limit` are
scaled by an exact power of two before IoU and GIoU (see :mod:`minidetr.boxes`).
"""

from __future__ import annotations

import math

from minidetr.backend import Array, compiled_kernel, namespace
from minidetr.checks import check_floating, unravel_index
from minidetr.kernels import giou_cpu


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
