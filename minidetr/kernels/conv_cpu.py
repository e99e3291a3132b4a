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
    j0 = max(0, (padding - v + stride - 1) // stride)
    j1 = min(wo, (w - 1 + padding - v) // stride + 1)
    return j0, j1


@njit(cache=True)
def im2col(x: np.ndarray, k: int, stride: int, padding: int, ho: int, wo: int) -> np.ndarray:
    """cols[c*K*K + u*K + v, (b*Ho + i)*Wo + j] = x_pad[b, c, s*i + u, s*j + v].

    x (B, C, H, W) contiguous; returns cols (C*K*K, B*Ho*Wo), zero where a tap falls on
    the padding.
    """
    b_, c_, h, w = x.shape
    n = b_ * ho * wo
    cols = np.zeros((c_ * k * k, n), dtype=x.dtype)  # (C*K*K, B*Ho*Wo)
    x_flat, cols_flat = x.reshape(-1), cols.reshape(-1)
    step = np.uint64(stride)
    for b in range(b_):
        for c in range(c_):
            for u in range(k):
                for v in range(k):
                    row = (c * k + u) * k + v
                    j0, j1 = _inside(v, padding, stride, w, wo)
                    for i in range(ho):
                        r = stride * i + u - padding
                        if 0 <= r < h:  # else a padding row: the zeros stay
                            # x[b, c, r, s*j0 + v - p] and cols[row, (b*Ho + i)*Wo + j0]
                            src = np.uint64(((b * c_ + c) * h + r) * w + stride * j0 + v - padding)
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
    an input).
    """
    n, ckk = dcols_t.shape
    ho = n // (b_ * wo)
    dx = np.zeros((b_, c_, h, w), dtype=dcols_t.dtype)
    dx_flat, dcols_flat = dx.reshape(-1), dcols_t.reshape(-1)
    step, row_step = np.uint64(stride), np.uint64(ckk)
    for b in range(b_):
        for c in range(c_):
            for u in range(k):
                for v in range(k):
                    row = (c * k + u) * k + v
                    j0, j1 = _inside(v, padding, stride, w, wo)
                    for i in range(ho):
                        r = stride * i + u - padding
                        if 0 <= r < h:
                            dst = np.uint64(((b * c_ + c) * h + r) * w + stride * j0 + v - padding)
                            src = np.uint64(((b * ho + i) * wo + j0) * ckk + row)
                            for j in range(np.uint64(j1 - j0)):
                                dx_flat[dst + step * j] += dcols_flat[src + row_step * j]
    return dx
