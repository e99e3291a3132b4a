"""Numba loops for the sigmoid focal loss, forward and backward, one pass over memory each.

Speeds up ``minidetr.setloss.focal.sigmoid_focal_loss_forward`` and
``sigmoid_focal_loss_backward`` on NumPy arrays, with the same formulas, results
and cache: the array code makes about twenty elementwise passes (exp, two
divisions, two selects, log1p, the modulating power, the class balance), each
reading and writing whole arrays; these loops read each input once. The input
checks stay with the array code. Every entry is computed in float64 and stored
in the input's dtype.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True)
def sigmoid_focal_loss_forward(logits, targets, alpha, gamma):
    """(loss, p, pm, ce) of the focal loss for flat logits and targets (N,), as the array code.

    p = sigmoid(x), pm = 1 - p without cancellation, ce the stable binary cross-entropy,
    loss = a_t ce (1 - p_t)^gamma with a_t = 1 when alpha < 0.
    """
    n = logits.shape[0]
    loss = np.empty_like(logits)
    p_out = np.empty_like(logits)
    pm_out = np.empty_like(logits)
    ce_out = np.empty_like(logits)
    for i in range(n):
        x = np.float64(logits[i])
        t = np.float64(targets[i])
        e = math.exp(-abs(x))  # in (0, 1]
        big = 1.0 / (1.0 + e)  # sigmoid(|x|)
        small = e / (1.0 + e)  # sigmoid(-|x|)
        p = big if x >= 0 else small
        pm = small if x >= 0 else big
        ce = max(x, 0.0) - x * t + math.log1p(e)
        q = p * (1.0 - t) + pm * t  # 1 - p_t
        value = ce * q**gamma
        if alpha >= 0:
            value *= alpha * t + (1.0 - alpha) * (1.0 - t)
        loss[i] = value
        p_out[i] = p
        pm_out[i] = pm
        ce_out[i] = ce
    return loss, p_out, pm_out, ce_out


@njit(cache=True)
def sigmoid_focal_loss_backward(dloss, p, pm, targets, ce, alpha, gamma):
    """dlogits (N,) = dloss a_t [(p - t) q^gamma + ce gamma q^(gamma-1) (1 - 2t) p pm], q = 1 - p_t.

    All inputs flat (N,); where q = 0 the second term is 0, as in the array code.
    """
    n = dloss.shape[0]
    dx = np.empty_like(dloss)
    for i in range(n):
        pi = np.float64(p[i])
        pmi = np.float64(pm[i])
        t = np.float64(targets[i])
        q = pi * (1.0 - t) + pmi * t
        dq_dx = (1.0 - 2.0 * t) * pi * pmi
        dmod = gamma * q ** (gamma - 1.0) if gamma != 0.0 and q > 0 else 0.0
        d = (pi - t) * q**gamma + np.float64(ce[i]) * dmod * dq_dx
        if alpha >= 0:
            d *= alpha * t + (1.0 - alpha) * (1.0 - t)
        dx[i] = np.float64(dloss[i]) * d
    return dx
