"""Multi-scale deformable attention in plain array code: the reference and the lesson.

out[b, q, m] = sum_{l, p} A[b, q, m, l, p] * bilinear(V_l[b, :, m], W_l x - 1/2, H_l y - 1/2)

where (x, y) = sampling_locations[b, q, m, l, p]. Each query reads L * P points
per head instead of all S tokens. Bilinear sampling is ``grid_sample`` with
``align_corners=False`` and ``padding_mode="zeros"``: the normalised x maps to
the pixel coordinate x * W - 1/2 (pixel centres sit at integers), and each of
the four neighbouring pixels that lies outside the map reads zero.

The four corners of a sample at pixel coordinate (x, y), with x0 = floor(x),
fx = x - x0 (likewise y), and their bilinear weights:

    (x0,     y0    ): (1 - fx) (1 - fy)        (x0 + 1, y0    ): fx (1 - fy)
    (x0,     y0 + 1): (1 - fx) fy              (x0 + 1, y0 + 1): fx fy

Backward: the weights are linear in fx and fy, so d/dx = W * d/dfx collects
+-(y-weight) * <dout, corner value> over the corners, and d value scatters
A * weight * dout back to the four pixels (``backend.index_add``).
Dimension letters as in :mod:`minidetr.deformable.layout`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from minidetr.backend import Array, device, index_add, namespace
from minidetr.deformable.layout import (
    MSDeformAttnCache,
    SpatialShapes,
    check_ms_deform_attn_inputs,
    level_start_index,
)

# (dx, dy) of the four neighbours of floor(x, y), in the order of the table above
CORNERS = ((0, 0), (1, 0), (0, 1), (1, 1))


class Corner(NamedTuple):
    """One of the four neighbours of every sample, all samples at once: (B, Q, M, L, P)."""

    row: Array  # int64 row into value flattened to (B * S * M, Dh); 0 where outside
    weight: Array  # bilinear weight, exactly 0 where the pixel lies outside the map
    dweight_dfx: Array  # d weight / d fx = +-(1 - fy) or +-fy, 0 where outside
    dweight_dfy: Array  # d weight / d fy


def bilinear_corners(
    value_shape: tuple[int, ...], spatial_shapes: SpatialShapes, sampling_locations: Array
) -> tuple[list[Corner], Array, Array]:
    """The four corners of every sample; also the per-level W_l and H_l as (L, 1) arrays.

    value_shape (B, S, M, Dh), sampling_locations (B, Q, M, L, P, 2) normalised (x, y).
    """
    xp = namespace(sampling_locations)
    loc = sampling_locations
    dev, ftype = device(loc), loc.dtype
    b, s, m, _ = value_shape
    # per-level tables of shape (L, 1), so that they broadcast against (..., L, P)
    heights = xp.asarray([[h] for h, _ in spatial_shapes], dtype=xp.int64, device=dev)
    widths = xp.asarray([[w] for _, w in spatial_shapes], dtype=xp.int64, device=dev)
    starts = xp.asarray(
        [[i] for i in level_start_index(spatial_shapes)], dtype=xp.int64, device=dev
    )
    w_max = max(w for _, w in spatial_shapes)
    h_max = max(h for h, _ in spatial_shapes)
    # pixel coordinates; clipping far-away points changes nothing (all four corners stay outside)
    # but keeps the integer conversion below in range
    x = xp.clip(loc[..., 0] * xp.astype(widths, ftype) - 0.5, -2.0, w_max + 1.0)  # (B, Q, M, L, P)
    y = xp.clip(loc[..., 1] * xp.astype(heights, ftype) - 0.5, -2.0, h_max + 1.0)
    x0, y0 = xp.floor(x), xp.floor(y)
    fx, fy = x - x0, y - y0  # (B, Q, M, L, P) in [0, 1)
    x0, y0 = xp.astype(x0, xp.int64), xp.astype(y0, xp.int64)
    batch = xp.reshape(xp.arange(b, device=dev), (b, 1, 1, 1, 1))
    head = xp.reshape(xp.arange(m, device=dev), (1, 1, m, 1, 1))
    corners = []
    for dx, dy in CORNERS:
        xi, yi = x0 + dx, y0 + dy  # (B, Q, M, L, P)
        inside = (xi >= 0) & (xi < widths) & (yi >= 0) & (yi < heights)
        token = starts + yi * widths + xi  # index along S
        row = xp.where(inside, (batch * s + token) * m + head, 0)
        wx, dwx = (fx, 1.0) if dx else (1.0 - fx, -1.0)
        wy, dwy = (fy, 1.0) if dy else (1.0 - fy, -1.0)
        zero = xp.zeros_like(fx)
        corners.append(
            Corner(
                row=row,
                weight=xp.where(inside, wx * wy, zero),
                dweight_dfx=xp.where(inside, dwx * wy, zero),
                dweight_dfy=xp.where(inside, wx * dwy, zero),
            )
        )
    return corners, xp.astype(widths, ftype), xp.astype(heights, ftype)


def _gather(value: Array, row: Array) -> Array:
    """value (B, S, M, Dh) read at ``row`` (B, Q, M, L, P) -> (B, Q, M, L, P, Dh)."""
    xp = namespace(value)
    table = xp.reshape(value, (-1, value.shape[-1]))  # (B*S*M, Dh)
    picked = xp.take(table, xp.reshape(row, (-1,)), axis=0)  # (B*Q*M*L*P, Dh)
    return xp.reshape(picked, (*row.shape, value.shape[-1]))


def ms_deform_attn_forward_reference(
    value: Array,
    spatial_shapes: Sequence[Sequence[int]] | Array,
    sampling_locations: Array,
    attention_weights: Array,
    *,
    assume_finite: bool = False,
) -> tuple[Array, MSDeformAttnCache]:
    """out = sum_{l, p} A * bilinear(V_l, loc), readable array-API code.

    value (B, S, M, Dh), spatial_shapes (L, 2) as (H_l, W_l), sampling_locations
    (B, Q, M, L, P, 2) normalised (x, y), attention_weights (B, Q, M, L, P).
    Returns out (B, Q, M * Dh). Zhu et al. (2021) eq. 3; sampling as ``grid_sample``.
    ``assume_finite``: the caller has checked that every location is finite.
    """
    shapes = check_ms_deform_attn_inputs(
        value, spatial_shapes, sampling_locations, attention_weights, assume_finite=assume_finite
    )
    xp = namespace(value)
    b, q = sampling_locations.shape[:2]
    corners, _, _ = bilinear_corners(tuple(value.shape), shapes, sampling_locations)
    sampled = xp.zeros(
        (*attention_weights.shape, value.shape[-1]), dtype=value.dtype, device=device(value)
    )
    for c in corners:
        sampled = sampled + c.weight[..., None] * _gather(value, c.row)  # (B, Q, M, L, P, Dh)
    out = xp.sum(attention_weights[..., None] * sampled, axis=(3, 4))  # (B, Q, M, Dh)
    cache = MSDeformAttnCache(value, shapes, sampling_locations, attention_weights, "reference")
    return xp.reshape(out, (b, q, -1)), cache


def ms_deform_attn_backward_reference(
    dout: Array, cache: MSDeformAttnCache
) -> tuple[Array, Array, Array]:
    """Gradients (dvalue, dsampling_locations, dattention_weights) of the reference.

    dout (B, Q, M * Dh). For each corner c with weight w_c and value v_c:
    dA = sum_c w_c <dout, v_c>, dx = A W sum_c dw_c/dfx <dout, v_c> (y likewise with H),
    dV[corner pixel] += A w_c dout.
    """
    xp = namespace(dout)
    value, attn = cache.value, cache.attention_weights
    b, s, m, dh = value.shape
    corners, widths, heights = bilinear_corners(
        tuple(value.shape), cache.spatial_shapes, cache.sampling_locations
    )
    g = xp.reshape(dout, (b, dout.shape[1], m, 1, 1, dh))  # (B, Q, M, 1, 1, Dh)
    dattn = xp.zeros_like(attn)  # (B, Q, M, L, P)
    dfx, dfy = xp.zeros_like(attn), xp.zeros_like(attn)
    rows, contributions = [], []
    for c in corners:
        dot = xp.sum(g * _gather(value, c.row), axis=-1)  # <dout, v_c>  (B, Q, M, L, P)
        dattn = dattn + c.weight * dot
        dfx = dfx + c.dweight_dfx * dot
        dfy = dfy + c.dweight_dfy * dot
        rows.append(xp.reshape(c.row, (-1,)))
        contributions.append(xp.reshape((attn * c.weight)[..., None] * g, (-1, dh)))
    dloc = xp.stack([attn * dfx * widths, attn * dfy * heights], axis=-1)  # (B, Q, M, L, P, 2)
    table = xp.zeros((b * s * m, dh), dtype=value.dtype, device=device(value))
    dtable = index_add(table, xp.concat(rows), xp.concat(contributions, axis=0))  # (B*S*M, Dh)
    return xp.reshape(dtable, value.shape), dloc, dattn
