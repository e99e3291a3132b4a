"""Numba loops for the sigmoid focal loss with gamma = 2, forward and backward.

Speeds up ``minidetr.setloss.focal.sigmoid_focal_loss_forward`` and
``sigmoid_focal_loss_backward`` on NumPy arrays when gamma = 2 (Deformable DETR's
and DINO's value), with the same formulas, results and cache. The array code makes
about twenty elementwise passes (two divisions, two selects, the modulating power,
the class balance...), each reading and writing whole arrays; here NumPy's SIMD
``exp`` and ``log1p`` make two passes and one loop does the rest, and the backward
is one loop. With gamma a constant, (1 - p_t)^2 is a product and the loops
vectorise; a general power in the loop (``q ** gamma``) measured 50 to 100x slower
than the product, so other gammas run the array code. Entries are computed in
float64 and stored in the input's dtype.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def focal_loss_gamma2_forward(logits, targets, e, log1p_e, alpha):
    """out (4, N) = (loss, p, pm, ce) for flat logits, targets, e = exp(-|x|), log1p(e) (N,).

    p = sigmoid(x), pm = 1 - p without cancellation, ce = max(x, 0) - x t + log1p(e),
    loss = a_t ce (1 - p_t)^2, a_t = alpha t + (1 - alpha)(1 - t), or 1 when alpha < 0.
    One (4, N) array rather than four: returning four fresh arrays measured 20x slower.
    """
    n = logits.shape[0]
    out = np.empty((4, n), dtype=logits.dtype)
    for i in range(n):
        x = np.float64(logits[i])
        t = np.float64(targets[i])
        ei = np.float64(e[i])
        big = 1.0 / (1.0 + ei)  # sigmoid(|x|)
        small = ei / (1.0 + ei)  # sigmoid(-|x|)
        s = 1.0 if x >= 0 else 0.0  # blends, not branches: the sign of x is random
        p = s * big + (1.0 - s) * small  # exactly big or small
        pm = s * small + (1.0 - s) * big
        ce = s * x - x * t + np.float64(log1p_e[i])  # max(x, 0) - x t + log1p(e)
        q = p * (1.0 - t) + pm * t  # 1 - p_t
        a_t = alpha * t + (1.0 - alpha) * (1.0 - t) if alpha >= 0 else 1.0
        out[0, i] = a_t * (ce * (q * q))  # loss
        out[1, i] = p
        out[2, i] = pm
        out[3, i] = ce
    return out


@njit(cache=True)
def focal_loss_gamma2_backward(dloss, p, pm, targets, ce, alpha):
    """dlogits (N,) = dloss a_t [(p - t) q^2 + 2 ce q (1 - 2t) p pm], q = 1 - p_t; inputs (N,)."""
    n = dloss.shape[0]
    dx = np.empty_like(dloss)
    for i in range(n):
        pi = np.float64(p[i])
        pmi = np.float64(pm[i])
        t = np.float64(targets[i])
        q = pi * (1.0 - t) + pmi * t
        dq_dx = (1.0 - 2.0 * t) * pi * pmi
        d = (pi - t) * (q * q) + np.float64(ce[i]) * (2.0 * q) * dq_dx
        if alpha >= 0:
            d = (alpha * t + (1.0 - alpha) * (1.0 - t)) * d
        dx[i] = np.float64(dloss[i]) * d
    return dx
