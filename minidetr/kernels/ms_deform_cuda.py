"""numba.cuda kernels for multi-scale deformable attention, used for CuPy arrays.

Speeds up :func:`minidetr.deformable.reference.ms_deform_attn_forward_reference`
and :func:`~minidetr.deformable.reference.ms_deform_attn_backward_reference` on a
GPU, with the same layout and bilinear rule (``grid_sample``, ``align_corners=False``,
zeros outside).

Thread plan:

* forward: one thread per output entry (b, q, m, d); neighbouring threads read
  neighbouring channels d of the same pixel, so loads are coalesced;
* backward: one thread per sample (b, q, m, l, p); it owns its entries of
  ``dsampling_locations`` and ``dattention_weights`` and scatters into ``dvalue``
  with ``cuda.atomic.add``, since many samples may share a pixel.

Arrays are anything numba.cuda accepts: CuPy arrays (``__cuda_array_interface__``),
or NumPy arrays, which Numba copies to the device and back (and which the CUDA
simulator, ``NUMBA_ENABLE_CUDASIM=1``, runs on the CPU for testing). Outputs are
allocated by the caller, ``dvalue`` zero-filled.
"""

from __future__ import annotations

import math
from typing import Any

from numba import cuda

THREADS_PER_BLOCK = 128


@cuda.jit(device=True)
def _corners(loc_x, loc_y, height, width):  # pragma: no cover - compiled
    """Pixel corner (x0, y0) and fractions (fx, fy) of a sample; x0 = -2 when fully outside."""
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


@cuda.jit
def _forward_kernel(value, spatial_shapes, level_start, loc, attn, out):  # pragma: no cover
    n_batch, _, n_heads, head_dim = value.shape
    n_queries, n_levels, n_points = loc.shape[1], loc.shape[3], loc.shape[4]
    i = cuda.grid(1)
    if i >= n_batch * n_queries * n_heads * head_dim:
        return
    d = i % head_dim
    r = i // head_dim
    m = r % n_heads
    r = r // n_heads
    q = r % n_queries
    b = r // n_queries
    acc = 0.0
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
                    acc += a * wx * wy * value[b, start + yi * width + xi, m, d]
    out[b, q, m * head_dim + d] = acc


@cuda.jit
def _backward_kernel(
    dout, value, spatial_shapes, level_start, loc, attn, dvalue, dloc, dattn
):  # pragma: no cover
    n_batch, _, n_heads, head_dim = value.shape
    n_queries, n_levels, n_points = loc.shape[1], loc.shape[3], loc.shape[4]
    i = cuda.grid(1)
    if i >= n_batch * n_queries * n_heads * n_levels * n_points:
        return
    p = i % n_points
    r = i // n_points
    level = r % n_levels
    r = r // n_levels
    m = r % n_heads
    r = r // n_heads
    q = r % n_queries
    b = r // n_queries
    height = spatial_shapes[level, 0]
    width = spatial_shapes[level, 1]
    start = level_start[level]
    x0, y0, fx, fy = _corners(loc[b, q, m, level, p, 0], loc[b, q, m, level, p, 1], height, width)
    a = attn[b, q, m, level, p]
    o = m * head_dim
    da = 0.0  # sum_c w_c <dout, v_c>
    dfx = 0.0  # sum_c dw_c/dfx <dout, v_c>
    dfy = 0.0
    if x0 != -2:
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
                    cuda.atomic.add(dvalue, (b, token, m, d), aw * g)
                da += wx * wy * dot
                dfx += sx * wy * dot
                dfy += wx * sy * dot
    dattn[b, q, m, level, p] = da
    dloc[b, q, m, level, p, 0] = a * width * dfx
    dloc[b, q, m, level, p, 1] = a * height * dfy


def _blocks(n: int) -> int:
    return max(1, (n + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK)


def _contiguous(x: Any) -> Any:
    return x if x.flags.c_contiguous else x.copy()  # NumPy and CuPy both copy in C order


def ms_deform_attn_forward_cuda(
    value: Any,
    spatial_shapes: Any,
    level_start: Any,
    sampling_locations: Any,
    attention_weights: Any,
    out: Any,
) -> Any:
    """Fill ``out`` (B, Q, M * Dh) from value (B, S, M, Dh), spatial_shapes (L, 2) int64,
    level_start (L,) int64, sampling_locations (B, Q, M, L, P, 2), attention_weights
    (B, Q, M, L, P); all on the device (or NumPy). Returns ``out``."""
    value = _contiguous(value)
    loc = _contiguous(sampling_locations)
    attn = _contiguous(attention_weights)
    n = out.size
    _forward_kernel[_blocks(n), THREADS_PER_BLOCK](
        value, spatial_shapes, level_start, loc, attn, out
    )
    return out


def ms_deform_attn_backward_cuda(
    dout: Any,
    value: Any,
    spatial_shapes: Any,
    level_start: Any,
    sampling_locations: Any,
    attention_weights: Any,
    dvalue: Any,
    dsampling_locations: Any,
    dattention_weights: Any,
) -> tuple[Any, Any, Any]:
    """Fill (dvalue, dsampling_locations, dattention_weights) for dout (B, Q, M * Dh).

    ``dvalue`` must arrive zero-filled (the kernel adds into it); the other two are
    overwritten. Returns the three gradients.
    """
    dout, value = _contiguous(dout), _contiguous(value)
    loc = _contiguous(sampling_locations)
    attn = _contiguous(attention_weights)
    n = attn.size
    _backward_kernel[_blocks(n), THREADS_PER_BLOCK](
        dout,
        value,
        spatial_shapes,
        level_start,
        loc,
        attn,
        dvalue,
        dsampling_locations,
        dattention_weights,
    )
    return dvalue, dsampling_locations, dattention_weights
