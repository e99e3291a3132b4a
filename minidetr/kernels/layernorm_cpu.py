"""Numba loops for layer normalisation over the last axis, forward and backward.

Speeds up ``minidetr.ops.normalization.layernorm_forward`` and ``layernorm_backward``
on NumPy arrays, with the same results (to the dtype's rounding) and cache. The array
code makes about eight passes over memory per direction (mean, centring, variance,
scaling, gamma, beta; the two means of the backward and their combination) on a
transformer's (B, S, D) activations; these loops read each row of D numbers into
cache once and make two passes over it. Row statistics and the sums of dgamma and
dbeta are accumulated in float64. Outputs are allocated by the caller.

Dimension letters: N rows (every leading dim flattened), D width.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from minidetr.kernels.groupnorm_cpu import _mean_var


@njit(cache=True, error_model="numpy")
def layernorm_forward(x, gamma, beta, eps, y, xhat, rstd):
    """xhat = (x - mu) / sqrt(var + eps), y = gamma xhat + beta, row by row.

    x (N, D), gamma (D,), beta (D,); writes y (N, D), xhat (N, D), rstd (N,).
    """
    n, d = x.shape
    for r in range(n):
        mu, var = _mean_var(x[r])
        rs = 1.0 / np.sqrt(var + eps)
        for e in range(d):
            xh = (x[r, e] - mu) * rs
            xhat[r, e] = xh
            y[r, e] = gamma[e] * xh + beta[e]
        rstd[r] = rs


@njit(cache=True, error_model="numpy", fastmath={"reassoc"})
def layernorm_backward(dy, xhat, rstd, gamma, dx, dgamma, dbeta):
    """dx = rstd (g - mean(g) - xhat mean(g xhat)) with g = dy gamma, row by row.

    dy, xhat (N, D), rstd (N,), gamma (D,); writes dx (N, D) and adds sum_r dy xhat and
    sum_r dy into the float64 accumulators dgamma and dbeta (D,). ``reassoc`` lets the
    row sums run in SIMD lanes; NaN and infinities keep their meaning.
    """
    n, d = dy.shape
    for r in range(n):
        sum_g = 0.0
        sum_gx = 0.0
        for e in range(d):
            v = np.float64(dy[r, e])
            xh = np.float64(xhat[r, e])
            g = v * gamma[e]
            sum_g += g
            sum_gx += g * xh
            dgamma[e] += v * xh
            dbeta[e] += v
        mean_g = sum_g / d
        mean_gx = sum_gx / d
        rs = np.float64(rstd[r])
        for e in range(d):
            g = np.float64(dy[r, e]) * gamma[e]
            dx[r, e] = rs * (g - mean_g - xhat[r, e] * mean_gx)
