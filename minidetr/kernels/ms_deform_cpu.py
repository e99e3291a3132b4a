"""Numba CPU kernels for multi-scale deformable attention.

Speeds up :func:`minidetr.deformable.reference.ms_deform_attn_forward_reference`
and :func:`~minidetr.deformable.reference.ms_deform_attn_backward_reference`, with
the same layout and the same bilinear rule (``grid_sample``, ``align_corners=False``,
zeros outside). Where the reference gathers all samples into big arrays, these
loop: one pass per sample reads its four corners and accumulates into ``out``.

Parallel plan (``prange``): the forward splits over (b, q) pairs, each writing its
own rows of ``out``. The backward splits over (b, m) pairs: a head of one image
owns its slice ``dvalue[b, :, m, :]``, so the scatter into ``dvalue`` needs no
atomics; ``dsampling_locations`` and ``dattention_weights`` belong to one (b, q, m).

Inputs are NumPy arrays already checked by :mod:`minidetr.deformable.layout`;
the wrappers make them C-contiguous so that each dtype compiles once.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

# Let LLVM reorder sums over channels (vector instructions), but keep NaN and
# infinity semantics: the "fully outside" test below must still reject NaN.
REORDER = {"reassoc", "contract", "nsz", "arcp"}
PARALLEL_MIN_WORK = 1 << 15  # samples * Dh below which the serial driver runs


@njit(cache=True)
def _corners(loc_x: float, loc_y: float, height: int, width: int):  # pragma: no cover
    """Pixel corner (x0, y0) and fractions (fx, fy) of a sample; x0 = -2 when fully outside.

    Compiled without fast-math so that x = loc_x * W - 1/2 rounds exactly as in the
    reference, and floor(x) picks the same pixel on a grid line.
    """
    x = loc_x * width - 0.5
    y = loc_y * height - 0.5
    # x = -1 is kept: its corner x0 + 1 = 0 has weight 0 but slope 1, so d/dx is the
    # one-sided derivative that floor() gives on every other grid line (and the reference,
    # and grid_sample); the original CUDA op's strict x > -1 makes it 0 there
    if not (x >= -1.0 and y >= -1.0 and x < width and y < height):  # also rejects NaN
        return -2, -2, 0.0, 0.0
    x0 = math.floor(x)
    y0 = math.floor(y)
    return x0, y0, x - x0, y - y0


@njit(cache=True, fastmath=REORDER)
def _forward_query(value, spatial_shapes, level_start, loc, attn, out, b, q):  # pragma: no cover
    """out[b, q] for one (batch, query) pair: every head, level and point."""
    n_heads, head_dim = value.shape[2], value.shape[3]
    n_levels, n_points = loc.shape[3], loc.shape[4]
    for m in range(n_heads):
        o = m * head_dim
        for level in range(n_levels):
            height = spatial_shapes[level, 0]
            width = spatial_shapes[level, 1]
            start = level_start[level]
            for p in range(n_points):
                x0, y0, fx, fy = _corners(
                    loc[b, q, m, level, p, 0], loc[b, q, m, level, p, 1], height, width
                )
                if x0 == -2:
                    continue
                a = attn[b, q, m, level, p]
                for dy in range(2):
                    yi = y0 + dy
                    if yi < 0 or yi >= height:
                        continue
                    wy = fy if dy else 1.0 - fy
                    for dx in range(2):
                        xi = x0 + dx
                        if xi < 0 or xi >= width:
                            continue
                        wx = fx if dx else 1.0 - fx
                        token = start + yi * width + xi
                        aw = a * wx * wy
                        for d in range(head_dim):
                            out[b, q, o + d] += aw * value[b, token, m, d]


@njit(cache=True, fastmath=REORDER)
def _backward_head(
    dout, value, spatial_shapes, level_start, loc, attn, dvalue, dloc, dattn, b, m
):  # pragma: no cover
    """Gradients from every query of head m of image b; writes only dvalue[b, :, m]."""
    head_dim = value.shape[3]
    n_queries, n_levels, n_points = loc.shape[1], loc.shape[3], loc.shape[4]
    o = m * head_dim
    for q in range(n_queries):
        for level in range(n_levels):
            height = spatial_shapes[level, 0]
            width = spatial_shapes[level, 1]
            start = level_start[level]
            for p in range(n_points):
                x0, y0, fx, fy = _corners(
                    loc[b, q, m, level, p, 0], loc[b, q, m, level, p, 1], height, width
                )
                if x0 == -2:
                    continue
                a = attn[b, q, m, level, p]
                da = 0.0  # sum_c w_c <dout, v_c>
                dfx = 0.0  # sum_c dw_c/dfx <dout, v_c>
                dfy = 0.0
                for dy in range(2):
                    yi = y0 + dy
                    if yi < 0 or yi >= height:
                        continue
                    wy = fy if dy else 1.0 - fy
                    sy = 1.0 if dy else -1.0
                    for dx in range(2):
                        xi = x0 + dx
                        if xi < 0 or xi >= width:
                            continue
                        wx = fx if dx else 1.0 - fx
                        sx = 1.0 if dx else -1.0
                        token = start + yi * width + xi
                        aw = a * wx * wy
                        dot = 0.0
                        for d in range(head_dim):
                            g = dout[b, q, o + d]
                            dot += g * value[b, token, m, d]
                            dvalue[b, token, m, d] += aw * g
                        da += wx * wy * dot
                        dfx += sx * wy * dot
                        dfy += wx * sy * dot
                dattn[b, q, m, level, p] = da
                dloc[b, q, m, level, p, 0] = a * width * dfx
                dloc[b, q, m, level, p, 1] = a * height * dfy


# Two drivers each: threads pay off only on enough work (a parallel region costs
# microseconds, milliseconds on a busy machine), so small calls run serially.


@njit(cache=True, parallel=True)
def _forward_parallel(value, spatial_shapes, level_start, loc, attn, out):  # pragma: no cover
    n_queries = loc.shape[1]
    for bq in prange(loc.shape[0] * n_queries):
        _forward_query(
            value, spatial_shapes, level_start, loc, attn, out, bq // n_queries, bq % n_queries
        )


@njit(cache=True)
def _forward_serial(value, spatial_shapes, level_start, loc, attn, out):  # pragma: no cover
    for b in range(loc.shape[0]):
        for q in range(loc.shape[1]):
            _forward_query(value, spatial_shapes, level_start, loc, attn, out, b, q)


@njit(cache=True, parallel=True)
def _backward_parallel(
    dout, value, spatial_shapes, level_start, loc, attn, dvalue, dloc, dattn
):  # pragma: no cover
    n_heads = value.shape[2]
    for bm in prange(value.shape[0] * n_heads):
        _backward_head(
            dout, value, spatial_shapes, level_start, loc, attn, dvalue, dloc, dattn,
            bm // n_heads, bm % n_heads,
        )  # fmt: skip


@njit(cache=True)
def _backward_serial(
    dout, value, spatial_shapes, level_start, loc, attn, dvalue, dloc, dattn
):  # pragma: no cover
    for b in range(value.shape[0]):
        for m in range(value.shape[2]):
            _backward_head(
                dout, value, spatial_shapes, level_start, loc, attn, dvalue, dloc, dattn, b, m
            )


def _work(attn: np.ndarray, head_dim: int) -> int:
    return attn.size * head_dim  # samples times channels: the multiply-adds over four


def ms_deform_attn_forward_numba(
    value: np.ndarray,
    spatial_shapes: np.ndarray,
    level_start: np.ndarray,
    sampling_locations: np.ndarray,
    attention_weights: np.ndarray,
) -> np.ndarray:
    """out (B, Q, M * Dh) from value (B, S, M, Dh), spatial_shapes (L, 2) int64,
    level_start (L,) int64, sampling_locations (B, Q, M, L, P, 2), attention_weights
    (B, Q, M, L, P)."""
    value = np.ascontiguousarray(value)
    loc = np.ascontiguousarray(sampling_locations)
    attn = np.ascontiguousarray(attention_weights)
    b, _, m, dh = value.shape
    out = np.zeros((b, loc.shape[1], m * dh), dtype=value.dtype)
    kernel = _forward_parallel if _work(attn, dh) >= PARALLEL_MIN_WORK else _forward_serial
    kernel(value, spatial_shapes, level_start, loc, attn, out)
    return out


def ms_deform_attn_backward_numba(
    dout: np.ndarray,
    value: np.ndarray,
    spatial_shapes: np.ndarray,
    level_start: np.ndarray,
    sampling_locations: np.ndarray,
    attention_weights: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dvalue, dsampling_locations, dattention_weights) for dout (B, Q, M * Dh)."""
    dout = np.ascontiguousarray(dout, dtype=value.dtype)
    value = np.ascontiguousarray(value)
    loc = np.ascontiguousarray(sampling_locations)
    attn = np.ascontiguousarray(attention_weights)
    dvalue = np.zeros_like(value)
    dloc = np.zeros_like(loc)
    dattn = np.zeros_like(attn)
    big = _work(attn, value.shape[3]) >= PARALLEL_MIN_WORK
    kernel = _backward_parallel if big else _backward_serial
    kernel(dout, value, spatial_shapes, level_start, loc, attn, dvalue, dloc, dattn)
    return dvalue, dloc, dattn
