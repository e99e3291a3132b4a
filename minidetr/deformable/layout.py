"""The data layout of multi-scale deformable attention, its checks and its cache.

Dimension letters: B batch, Q queries, M heads, Dh head width, L levels,
P sampling points per head and level, S = sum_l H_l * W_l tokens of all levels.
In Deformable DETR's paper and code these are: B the code's N, Q its Len_q, S
its Len_in, L the paper's L (``n_levels``), M its M (``n_heads``), P the paper's
K (``n_points``), and D = M * Dh the paper's C (``d_model``).

Deformable DETR's layout, shared by every implementation:

* ``value (B, S, M, Dh)``: the L feature maps, each flattened row-major (index
  y * W_l + x) and stacked along S in the order of ``spatial_shapes``;
* ``spatial_shapes (L, 2)``: (H_l, W_l) of each level, a Python sequence or an
  integer array;
* ``sampling_locations (B, Q, M, L, P, 2)``: normalised (x, y), where (0, 0) is
  the top-left corner of a map and (1, 1) its bottom-right corner;
* ``attention_weights (B, Q, M, L, P)``: one weight per sample;
* ``out (B, Q, M * Dh)``: the heads concatenated.

Zhu et al., "Deformable DETR: Deformable Transformers for End-to-End Object
Detection" (ICLR 2021), eq. 3.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any, NamedTuple

from minidetr.backend import Array, namespace, to_numpy
from minidetr.checks import (
    check_dim,
    check_finite,
    check_floating,
    check_integral,
    check_ndim,
)

SpatialShapes = tuple[tuple[int, int], ...]  # ((H_0, W_0), ..., (H_{L-1}, W_{L-1}))


class MSDeformAttnCache(NamedTuple):
    """What every backward needs: the forward's inputs (the samples are recomputed)."""

    value: Array  # (B, S, M, Dh)
    spatial_shapes: SpatialShapes  # L pairs (H_l, W_l)
    sampling_locations: Array  # (B, Q, M, L, P, 2)
    attention_weights: Array  # (B, Q, M, L, P)
    impl: str  # "reference", "numba" or "cuda": which backward to run


def as_spatial_shapes(spatial_shapes: Sequence[Sequence[int]] | Array) -> SpatialShapes:
    """``spatial_shapes`` as a tuple of (H_l, W_l) Python ints, each at least 1.

    Accepts a sequence of pairs or an integer array of shape (L, 2); an array is
    copied to the host (L pairs of integers, the only host transfer of the op).
    """
    if hasattr(spatial_shapes, "shape") and hasattr(spatial_shapes, "dtype"):
        check_integral(spatial_shapes, "spatial_shapes")
        check_ndim(spatial_shapes, 2, "spatial_shapes", "(L, 2)")
        rows: Any = to_numpy(spatial_shapes).tolist()
    elif isinstance(spatial_shapes, Sequence) and not isinstance(spatial_shapes, str):
        rows = list(spatial_shapes)
    else:
        raise TypeError(
            "spatial_shapes must be a sequence of (H, W) pairs or an integer array, "
            f"got {type(spatial_shapes).__name__}"
        )
    if not rows:
        raise ValueError("spatial_shapes must list at least one level, got none")
    shapes = []
    for level, row in enumerate(rows):
        try:
            h, w = (operator.index(n) for n in row)
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"spatial_shapes[{level}] must be a pair of integers (H, W), got {row!r}"
            ) from err
        if h < 1 or w < 1:
            raise ValueError(f"spatial_shapes[{level}] must be positive (H, W), got {(h, w)}")
        shapes.append((h, w))
    return tuple(shapes)


def level_start_index(spatial_shapes: SpatialShapes) -> tuple[int, ...]:
    """Where each level begins along S: (0, H_0 W_0, H_0 W_0 + H_1 W_1, ...)."""
    starts, total = [], 0
    for h, w in spatial_shapes:
        starts.append(total)
        total += h * w
    return tuple(starts)


def check_ms_deform_attn_inputs(
    value: Array,
    spatial_shapes: Sequence[Sequence[int]] | Array,
    sampling_locations: Array,
    attention_weights: Array,
    *,
    assume_finite: bool = False,
) -> SpatialShapes:
    """Check the layout above; return ``spatial_shapes`` as Python ints.

    Raises ``TypeError`` for a wrong kind or dtype and ``ValueError`` for a shape
    that disagrees with another argument or for non-finite sampling locations
    (which have no pixel to read), naming the argument in each case. The
    finiteness check is the one check that reads the device; ``assume_finite``
    skips it for a caller that has made it already.
    """
    check_floating(value, "value")
    check_ndim(value, 4, "value", "(B, S, M, Dh)")
    shapes = as_spatial_shapes(spatial_shapes)
    b, s, m, _ = value.shape
    total = sum(h * w for h, w in shapes)
    if s != total:
        raise ValueError(
            f"value must have S = sum of H_l * W_l = {total} tokens on axis 1 "
            f"for spatial_shapes {list(shapes)}, got shape {tuple(value.shape)}"
        )
    check_floating(sampling_locations, "sampling_locations")
    check_ndim(sampling_locations, 6, "sampling_locations", "(B, Q, M, L, P, 2)")
    check_dim(sampling_locations, 0, b, "sampling_locations", "batch size of value")
    check_dim(sampling_locations, 2, m, "sampling_locations", "heads of value")
    check_dim(sampling_locations, 3, len(shapes), "sampling_locations", "levels in spatial_shapes")
    check_dim(sampling_locations, 5, 2, "sampling_locations", "normalised (x, y)")
    check_floating(attention_weights, "attention_weights")
    check_ndim(attention_weights, 5, "attention_weights", "(B, Q, M, L, P)")
    if tuple(attention_weights.shape) != tuple(sampling_locations.shape[:5]):
        raise ValueError(
            "attention_weights must have shape (B, Q, M, L, P) = "
            f"{tuple(sampling_locations.shape[:5])} as sampling_locations, "
            f"got {tuple(attention_weights.shape)}"
        )
    namespace(value, sampling_locations, attention_weights)  # TypeError when libraries mix
    for name, x in (
        ("sampling_locations", sampling_locations),
        ("attention_weights", attention_weights),
    ):
        if x.dtype != value.dtype:
            raise TypeError(f"{name} must have the dtype of value ({value.dtype}), got {x.dtype}")
    if not assume_finite:
        check_finite(sampling_locations, "sampling_locations")
    return shapes
