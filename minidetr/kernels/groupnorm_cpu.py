"""Numba loops for group normalisation fused with the residual add and the ReLU after it.

Speeds up ``minidetr.ops.normalization.groupnorm_relu_forward`` and
``groupnorm_relu_backward`` (the backbone's ``relu(skip + GN(x))``) on NumPy arrays,
with the same results and cache: the array code makes about a dozen passes over
memory per direction (mean, centring, variance, scaling, gamma, beta, skip, the
ReLU and its mask), these loops make three forward and two backward. Sums are
accumulated in float64.

Dimension letters: B batch, C channels, G groups, H x W pixels; a group holds
C/G channels of one image.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def groupnorm_relu_forward(x, gamma, beta, num_groups, eps, skip):
    """(y, xhat, rstd, positive) of y = relu(gamma * xhat + beta + skip), xhat = GN(x).

    x (B, C, H, W) C-contiguous; gamma, beta (C,); skip (B, C, H, W) or None.
    Returns y and xhat like x, rstd (B, G) float64 and positive (B, C, H, W) bool,
    True where the ReLU passed its input (NaN stays NaN, as in ``relu_forward``).
    """
    b_, c_, h, w = x.shape
    per = c_ // num_groups  # channels per group
    n = per * h * w  # entries per group
    y = np.empty_like(x)
    xhat = np.empty_like(x)
    positive = np.empty(x.shape, dtype=np.bool_)
    rstd = np.empty((b_, num_groups))
    for b in range(b_):
        for g in range(num_groups):
            block = x[b, g * per : (g + 1) * per].reshape(n)  # (C/G H W,), contiguous
            total = 0.0
            for e in range(n):
                total += block[e]
            mu = total / n
            sq = 0.0
            for e in range(n):
                d = block[e] - mu
                sq += d * d
            r = 1.0 / np.sqrt(sq / n + eps)
            rstd[b, g] = r
            for c in range(g * per, (g + 1) * per):
                scale = np.float64(gamma[c])
                shift = np.float64(beta[c])
                for i in range(h):
                    for j in range(w):
                        xh = (x[b, c, i, j] - mu) * r
                        v = xh * scale + shift
                        if skip is not None:
                            v += skip[b, c, i, j]
                        xhat[b, c, i, j] = xh
                        positive[b, c, i, j] = v > 0
                        y[b, c, i, j] = 0.0 if v < 0 else v
    return y, xhat, rstd, positive


@njit(cache=True)
def groupnorm_relu_backward(dy, xhat, rstd, gamma, positive):
    """(dx, dgamma, dbeta, dh) of ``groupnorm_relu_forward``; dh = dL/dskip, the ReLU's output grad.

    dy, xhat, positive (B, C, H, W); rstd (B, G); gamma (C,). With dxhat = gamma * dh:
    dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) over each group.
    """
    b_, c_, h, w = dy.shape
    num_groups = rstd.shape[1]
    per = c_ // num_groups
    n = per * h * w
    dh = np.empty_like(dy)
    dx = np.empty_like(dy)
    dgamma = np.zeros(c_)
    dbeta = np.zeros(c_)
    for b in range(b_):
        for g in range(num_groups):
            sum_d = 0.0  # sum of dxhat over the group
            sum_dx = 0.0  # sum of dxhat * xhat
            for c in range(g * per, (g + 1) * per):
                scale = np.float64(gamma[c])  # sums in float64
                dgc = 0.0
                dbc = 0.0
                for i in range(h):
                    for j in range(w):
                        d = dy[b, c, i, j] if positive[b, c, i, j] else 0.0
                        dh[b, c, i, j] = d
                        xh = xhat[b, c, i, j]
                        dxh = d * scale
                        sum_d += dxh
                        sum_dx += dxh * xh
                        dgc += d * xh
                        dbc += d
                dgamma[c] += dgc
                dbeta[c] += dbc
            mean_d = sum_d / n
            mean_dx = sum_dx / n
            r = rstd[b, g]
            for c in range(g * per, (g + 1) * per):
                scale = np.float64(gamma[c])  # in float64, as the sums above
                for i in range(h):
                    for j in range(w):
                        dxh = dh[b, c, i, j] * scale
                        dx[b, c, i, j] = r * (dxh - mean_d - xhat[b, c, i, j] * mean_dx)
    return dx, dgamma.astype(dy.dtype), dbeta.astype(dy.dtype), dh
