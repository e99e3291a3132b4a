"""Numba loops for the im2col gather and the col2im scatter-add of a 2-D convolution.

Speeds up ``minidetr.ops.conv._im2col`` and ``minidetr.ops.conv._col2im`` (the
array code inside ``conv2d_forward`` and ``conv2d_backward``) on NumPy arrays,
with the same layout: row ``(c, u, v)`` flattened as ``c*K*K + u*K + v`` and
column (output pixel) ``(b, i, j)`` as ``(b*Ho + i)*Wo + j``; col2im reads the
transpose, a row per output pixel. The array code
gathers K*K strided slices of a zero-padded copy and stacks them (three passes
over memory), and scatters back with K*K read-modify-writes of strided slices;
these loops read the input once, skip the padding instead of materialising it,
and leave the matrix products to NumPy's BLAS.

The innermost loops index flat views with unsigned offsets: Numba checks a signed
index for a negative value (Python's wraparound) on every access, which kept these
loops scalar and measured 2 to 3x slower.

Dimension letters: B batch, C channels, H x W input, K x K kernel, Ho x Wo output.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def _inside(v: int, padding: int, stride: int, w: int, wo: int) -> tuple[int, int]:
    """The output columns j in [j0, j1) whose tap s*j + v - p falls inside 0..W-1."""
    j0 = min(wo, max(0, (padding - v + stride - 1) // stride))
    j1 = min(wo, (w - 1 + padding - v) // stride + 1)
    return j0, max(j0, j1)  # empty, j0 = j1, when no tap of v falls inside


@njit(cache=True)
def _taps_inside(k: int, padding: int, stride: int, w: int, wo: int) -> np.ndarray:
    """(K, 2): row v holds :func:`_inside` of tap v, computed once per call instead of per
    image and channel (two integer divisions each)."""
    out = np.empty((k, 2), dtype=np.int64)
    for v in range(k):
        out[v, 0], out[v, 1] = _inside(v, padding, stride, w, wo)
    return out


@njit(cache=True)
def _tap_ranges(k, padding, stride, h, w, ho, wo):
    """(rows, cols), (K, 2) each: :func:`_taps_inside` of every tap down and across."""
    return _taps_inside(k, padding, stride, h, ho), _taps_inside(k, padding, stride, w, wo)


@njit(cache=True)
def im2col(x: np.ndarray, k: int, stride: int, padding: int, ho: int, wo: int) -> np.ndarray:
    """cols[c*K*K + u*K + v, (b*Ho + i)*Wo + j] = x_pad[b, c, s*i + u, s*j + v].

    x (B, C, H, W) contiguous; returns cols (C*K*K, B*Ho*Wo), zero where a tap falls on
    the padding. cols is written row by row, each image's block in turn: on the small
    late-stage maps a block is a few cache lines, and going image by image instead
    (rows far apart) measured 1.3 to 1.9x slower. A stride-1 convolution whose output is
    as wide as its input ("same" padding) maps a block's flat offsets onto the input's
    plane with one shift, so the block is copied as one run.
    """
    b_, c_, h, w = x.shape
    n = b_ * ho * wo
    cols = np.zeros((c_ * k * k, n), dtype=x.dtype)  # (C*K*K, B*Ho*Wo)
    x_flat, cols_flat = x.reshape(-1), cols.reshape(-1)
    rows_in, cols_in = _tap_ranges(k, padding, stride, h, w, ho, wo)  # (K, 2) each
    step = np.uint64(stride)
    same = stride == 1 and wo == w
    for c in range(c_):
        for u in range(k):
            i0, i1 = rows_in[u, 0], rows_in[u, 1]
            for v in range(k):
                row = (c * k + u) * k + v
                j0, j1 = cols_in[v, 0], cols_in[v, 1]
                for b in range(b_):
                    plane = (b * c_ + c) * h
                    if same:  # (i, j) -> x[b, c, i + u - p, j + v - p]: one shift of flat offsets
                        # entries e in [lo, hi) of the block's rows i0..i1-1; the first p - v
                        # (v < p) or last v - p (v > p) entries of each row wrap around to a
                        # neighbouring row of x: they are padding, zeroed again below
                        lo = max(0, padding - v)
                        hi = (i1 - i0) * wo - max(0, v - padding)
                        src = np.uint64((plane + i0 + u - padding) * w + v - padding + lo)
                        dst = np.uint64(row * n + (b * ho + i0) * wo)
                        for e in range(np.uint64(max(0, hi - lo))):
                            cols_flat[dst + np.uint64(lo) + e] = x_flat[src + e]
                        for i in range(i1 - i0):
                            d = dst + np.uint64(i * wo)
                            for j in range(np.uint64(j0)):
                                cols_flat[d + j] = 0
                            for j in range(np.uint64(j1), np.uint64(wo)):
                                cols_flat[d + j] = 0
                        continue
                    for i in range(i0, i1):
                        r = stride * i + u - padding
                        # x[b, c, r, s*j0 + v - p] and cols[row, (b*Ho + i)*Wo + j0]
                        src = np.uint64((plane + r) * w + stride * j0 + v - padding)
                        dst = np.uint64(row * n + (b * ho + i) * wo + j0)
                        for j in range(np.uint64(j1 - j0)):
                            cols_flat[dst + j] = x_flat[src + step * j]
    return cols


@njit(cache=True)
def col2im(
    dcols_t: np.ndarray,
    b_: int,
    c_: int,
    h: int,
    w: int,
    k: int,
    stride: int,
    padding: int,
    wo: int,
) -> np.ndarray:
    """dx[b, c, s*i + u - p, s*j + v - p] += dcols_t[(b*Ho + i)*Wo + j, c*K*K + u*K + v].

    dcols_t (B*Ho*Wo, C*K*K) contiguous: the column gradients transposed, one row per
    output pixel, as the backward's matrix product makes them fastest. Returns dx
    (B, C, H, W). Gradients that land on the padding are dropped (the padding is not
    an input). Maps of up to 64 pixels go pixel by pixel with the channels innermost
    (:func:`_col2im_pixels`, 2.5 to 3.7x faster there); larger ones plane by plane
    (:func:`_col2im_planes`), where a channel step of H*W floats would be 4 KiB or more
    and the pixel order measured up to 10x slower.
    """
    dx = np.zeros((b_, c_, h, w), dtype=dcols_t.dtype)
    if h * w <= 64:
        _col2im_pixels(dcols_t, dx, k, stride, padding, wo)
    else:
        _col2im_planes(dcols_t, dx, k, stride, padding, wo)
    return dx


@njit(cache=True)
def _col2im_planes(dcols_t, dx, k, stride, padding, wo):
    """col2im into dx (zeros) image by image and channel by channel: each tap's entries of
    one plane in turn."""
    n, ckk = dcols_t.shape
    b_, c_, h, w = dx.shape
    ho = n // (b_ * wo)
    dx_flat, dcols_flat = dx.reshape(-1), dcols_t.reshape(-1)
    rows_in, cols_in = _tap_ranges(k, padding, stride, h, w, ho, wo)  # (K, 2) each
    step, row_step = np.uint64(stride), np.uint64(ckk)
    for b in range(b_):
        for c in range(c_):
            for u in range(k):
                i0, i1 = rows_in[u, 0], rows_in[u, 1]
                for v in range(k):
                    row = (c * k + u) * k + v
                    j0, j1 = cols_in[v, 0], cols_in[v, 1]
                    for i in range(i0, i1):
                        r = stride * i + u - padding
                        dst = np.uint64(((b * c_ + c) * h + r) * w + stride * j0 + v - padding)
                        src = np.uint64(((b * ho + i) * wo + j0) * ckk + row)
                        for j in range(np.uint64(j1 - j0)):
                            dx_flat[dst + step * j] += dcols_flat[src + row_step * j]


@njit(cache=True)
def _col2im_pixels(dcols_t, dx, k, stride, padding, wo):
    """col2im into dx (zeros) output pixel by pixel and tap by tap, the channels innermost
    (C entries K*K apart in a row of dcols_t, added H*W apart into dx)."""
    n, ckk = dcols_t.shape
    b_, c_, h, w = dx.shape
    ho = n // (b_ * wo)
    dx_flat, dcols_flat = dx.reshape(-1), dcols_t.reshape(-1)
    hw, kk = np.uint64(h * w), np.uint64(k * k)
    for b in range(b_):
        for i in range(ho):
            for u in range(k):
                r = stride * i + u - padding
                if r < 0 or r >= h:
                    continue
                for j in range(wo):
                    for v in range(k):
                        q = stride * j + v - padding
                        if q < 0 or q >= w:
                            continue
                        dst = np.uint64((b * c_ * h + r) * w + q)  # dx[b, 0, r, q]
                        src = np.uint64(((b * ho + i) * wo + j) * ckk + u * k + v)
                        for c in range(np.uint64(c_)):
                            dx_flat[dst + hw * c] += dcols_flat[src + kk * c]
