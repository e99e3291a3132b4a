"""An L2 penalty on deformable attention's sampling offsets, measured in each level's pixels.

    pix = offsets                                   for points    (B, Q, M, L, P, 2)
        = offsets / P * ref_wh / 2 * (W_l, H_l)     for boxes     (B, Q, M, L, P, 2)
    R   = weight / (B Q M L P) * sum_{b,q,m,l,p} |pix_{bqmlp}|^2

``pix`` is how far a sample lands from its reference point, in pixels of the level it
reads (the sampling location less the reference, times (W_l, H_l)), so one weight means
the same on every level. R is ``weight`` times the mean squared offset length of one
attention call; the model sums it over its deformable layers (see
:mod:`minidetr.model.deformable_transformer` for the layer average). With box
references R also depends on the box sizes, and its gradient reaches them.

Deformable DETR has no such term: it starts the offsets at 1..P pixels (zero weight, a
directional bias) and trains their projection at a tenth of the learning rate
(``lr_linear_proj_mult``). Zhu et al., "Deformable DETR" (ICLR 2021), eq. 3 and section 4.1.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from minidetr.backend import Array, namespace
from minidetr.checks import check_floating, check_ndim


class OffsetPenaltyCache(NamedTuple):
    pix: Array  # (B, Q, M, L, P, 2) offsets in level pixels
    offsets: Array  # (B, Q, M, L, P, 2) raw, as the module's Linear gives them
    reference_points: Array  # (B, Q, L, 2) or (B, Q, L, 4)
    normalizer: Array  # (L, 2) as (W_l, H_l)
    weight: float


def check_offset_weight(weight: float, name: str = "offset_l2") -> float:
    """``weight`` as a float, or a ValueError/TypeError naming ``name`` unless finite and >= 0."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise TypeError(f"{name} must be a number, got {weight!r}")
    if not (math.isfinite(weight) and weight >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {weight!r}")
    return float(weight)


def offset_pixels(offsets: Array, reference_points: Array, normalizer: Array) -> Array:
    """Offsets (B, Q, M, L, P, 2) in pixels of their level (see the module docstring)."""
    if reference_points.shape[-1] == 2:
        return offsets
    p = offsets.shape[4]
    size = reference_points[:, :, None, :, None, 2:]  # (B, Q, 1, L, 1, 2) as (w, h)
    return offsets * size * (0.5 / p) * normalizer[:, None, :]


def offset_penalty_forward(
    offsets: Array, reference_points: Array, normalizer: Array, weight: float
) -> tuple[Array, OffsetPenaltyCache]:
    """R = weight * mean_{b,q,m,l,p} |pix|^2, a 0-d array.

    offsets (B, Q, M, L, P, 2) the sampling-offset Linear's output, reference_points
    (B, Q, L, 2) points or (B, Q, L, 4) boxes (cx, cy, w, h), normalizer (L, 2) the
    levels' (W_l, H_l), weight >= 0.
    """
    weight = check_offset_weight(weight, "weight")
    check_floating(offsets, "offsets")
    check_ndim(offsets, 6, "offsets", "(B, Q, M, L, P, 2)")
    check_ndim(reference_points, 4, "reference_points", "(B, Q, L, 2) or (B, Q, L, 4)")
    if offsets.shape[-1] != 2 or reference_points.shape[-1] not in (2, 4):
        raise ValueError(
            "offsets must end in 2 and reference_points in 2 or 4, got "
            f"{tuple(offsets.shape)} and {tuple(reference_points.shape)}"
        )
    xp = namespace(offsets)
    pix = offset_pixels(offsets, reference_points, normalizer)
    count = math.prod(pix.shape[:5])
    r = (weight / count) * xp.sum(pix * pix)
    return r, OffsetPenaltyCache(pix, offsets, reference_points, normalizer, weight)


def offset_penalty_backward(dr: float | Array, cache: OffsetPenaltyCache) -> tuple[Array, Array]:
    """(doffsets (B, Q, M, L, P, 2), dreference_points like reference_points) for dR = dr.

    dR/dpix = 2 weight / count * pix; for boxes pix is linear in the offsets and in
    (w, h), so both receive it; (cx, cy) never does.
    """
    c = cache
    xp = namespace(c.pix)
    count = math.prod(c.pix.shape[:5])
    dpix = c.pix * (2.0 * c.weight / count * dr)  # (B, Q, M, L, P, 2)
    if c.reference_points.shape[-1] == 2:
        return dpix, xp.zeros_like(c.reference_points)
    p = c.offsets.shape[4]
    scale = c.normalizer[:, None, :] * (0.5 / p)  # (L, 1, 2)
    size = c.reference_points[:, :, None, :, None, 2:]  # (B, Q, 1, L, 1, 2)
    doffsets = dpix * size * scale
    dsize = xp.sum(dpix * c.offsets * scale, axis=(2, 4))  # (B, Q, L, 2)
    dref = xp.concat([xp.zeros_like(dsize), dsize], axis=-1)  # (B, Q, L, 4)
    return doffsets, dref
