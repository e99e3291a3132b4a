"""Numba loops for group normalisation fused with the residual add and the ReLU after it.

Speeds up ``minidetr.ops.normalization.groupnorm_relu_forward`` and
``groupnorm_relu_backward`` (the backbone's ``relu(skip + GN(x))``) on NumPy arrays,
with the same results and cache: the array code makes about a dozen passes over
memory per direction (mean, centring, variance, scaling, gamma, beta, skip, the
ReLU and its mask), these loops make three forward and two backward. Sums are
accumulated in float64. Outputs are allocated by the caller: four arrays allocated
and returned here measured 20 to 100x slower than the loops themselves. Channels are
rows of (B C, H W) views made once: a reshape per channel cost more than the
arithmetic of the late stages' 4 x 4 maps (2.5 to 4x slower there).

Dimension letters: B batch, C channels, G groups, H x W pixels; a group holds
C/G channels of one image.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, fastmath={"reassoc"})
def _mean_var(block):
    """(mean, variance) of block (N,) in float64, in two passes as the array code.

    ``reassoc`` lets the sums run in SIMD lanes (a single running sum waits on each
    addition); NaN and infinities keep their meaning.
    """
    total = 0.0
    for e in range(block.shape[0]):
        total += block[e]
    mu = total / block.shape[0]
    sq = 0.0
    for e in range(block.shape[0]):
        d = block[e] - mu
        sq += d * d
    return mu, sq / block.shape[0]


@njit(cache=True, fastmath={"reassoc"})
def _relu_grad_sums(dy, xhat, positive, dh):
    """dh = dy where positive, else 0, over one channel (H W,); returns (sum dh, sum dh xhat)."""
    sum_d = 0.0
    sum_dx = 0.0
    for e in range(dy.shape[0]):
        v = np.float64(dy[e])  # read unconditionally: a select, not a branch on the mask
        d = v if positive[e] else 0.0
        dh[e] = d
        sum_d += d
        sum_dx += d * np.float64(xhat[e])
    return sum_d, sum_dx


@njit(cache=True)
def _normalize_relu(x, skip, mu, r, scale, shift, xhat, y, positive):
    """One channel (H W,): xhat = (x - mu) r, v = xhat scale + shift (+ skip), y = relu(v)."""
    for e in range(x.shape[0]):
        xh = (x[e] - mu) * r
        v = xh * scale + shift
        if skip is not None:
            v += skip[e]
        xhat[e] = xh
        positive[e] = v > 0
        y[e] = 0.0 if v < 0 else v


@njit(cache=True)
def groupnorm_relu_forward(x, gamma, beta, eps, skip, y, xhat, rstd, positive):
    """Fill y = relu(gamma * xhat + beta + skip), xhat = GN(x), rstd and positive.

    x (B, C, H, W) C-contiguous; gamma, beta (C,); skip (B, C, H, W) or None.
    Outputs: y and xhat like x, rstd (B, G), whose G sets the groups, and positive
    (B, C, H, W) bool, True where the ReLU passed its input (NaN stays NaN, as in
    ``relu_forward``).
    """
    b_, c_, h, w = x.shape
    num_groups = rstd.shape[1]
    per = c_ // num_groups  # channels per group
    hw = h * w
    # (B C, H W) views made once: a row per channel, sliced without a reshape per channel
    x2, xhat2, y2 = x.reshape(b_ * c_, hw), xhat.reshape(b_ * c_, hw), y.reshape(b_ * c_, hw)
    groups2, pos2 = x.reshape(b_ * num_groups, per * hw), positive.reshape(b_ * c_, hw)
    skip2 = x2 if skip is None else skip.reshape(b_ * c_, hw)
    for b in range(b_):
        for g in range(num_groups):
            mu, var = _mean_var(groups2[b * num_groups + g])
            r = 1.0 / np.sqrt(var + eps)
            rstd[b, g] = r
            for c in range(g * per, (g + 1) * per):
                scale = np.float64(gamma[c])
                shift = np.float64(beta[c])
                row = b * c_ + c
                if skip is None:
                    _normalize_relu(
                        x2[row], None, mu, r, scale, shift, xhat2[row], y2[row], pos2[row]
                    )
                else:
                    _normalize_relu(
                        x2[row], skip2[row], mu, r, scale, shift, xhat2[row], y2[row], pos2[row]
                    )


@njit(cache=True)
def groupnorm_relu_backward(dy, xhat, rstd, gamma, positive, dx, dh, dgamma, dbeta):
    """Fill dx, dh = dL/dskip (the ReLU's input gradient), dgamma and dbeta (zeroed, (C,)).

    dy, xhat, positive (B, C, H, W); rstd (B, G); gamma (C,). With dxhat = gamma * dh:
    dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) over each group.
    """
    b_, c_, h, w = dy.shape
    num_groups = rstd.shape[1]
    per = c_ // num_groups
    hw = h * w
    dy2, xhat2, pos2 = dy.reshape(b_ * c_, hw), xhat.reshape(b_ * c_, hw), positive.reshape(-1, hw)
    dh2, dx2 = dh.reshape(b_ * c_, hw), dx.reshape(b_ * c_, hw)  # a row per channel
    for b in range(b_):
        for g in range(num_groups):
            sum_d = 0.0  # sum of dxhat over the group
            sum_dx = 0.0  # sum of dxhat * xhat
            for c in range(g * per, (g + 1) * per):
                scale = np.float64(gamma[c])  # sums in float64
                row = b * c_ + c
                dbc, dgc = _relu_grad_sums(dy2[row], xhat2[row], pos2[row], dh2[row])
                dgamma[c] += dgc
                dbeta[c] += dbc
                sum_d += scale * dbc
                sum_dx += scale * dgc
            mean_d = sum_d / (per * hw)
            mean_dx = sum_dx / (per * hw)
            r = np.float64(rstd[b, g])
            for c in range(g * per, (g + 1) * per):
                scale = np.float64(gamma[c])
                row = b * c_ + c
                dhc, xhc, dxc = dh2[row], xhat2[row], dx2[row]
                for e in range(hw):  # (H W,)
                    dx_e = r * (np.float64(dhc[e]) * scale - mean_d - xhc[e] * mean_dx)
                    dxc[e] = dx_e
