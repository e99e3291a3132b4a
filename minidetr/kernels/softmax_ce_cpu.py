"""Numba loops for DETR's weighted softmax cross-entropy, forward and backward.

Speeds up ``minidetr.ops.cross_entropy_forward`` and ``cross_entropy_backward`` on
NumPy arrays (called through ``minidetr.setloss.cross_entropy``), with the same
formulas and errors. The array code makes about fifteen passes over the (R, K)
logits (a one-hot matrix, its product with the class weights, the finiteness test,
max, shift, exp, sum, log, a second exp for the probabilities, the picked log-
probabilities...), each a NumPy call with its own temporary. Here NumPy's SIMD
``exp`` makes one pass over the shifted logits, and one loop does the rest: the row
sums, the probabilities (written over the exponentials), the picked log-probability,
the weights and the entry checks. The backward is one loop. Sums run in float64;
results are stored in the logits' dtype.

Dimension letters: R scored queries (rows), K logits (C classes + no-object).
"""

from __future__ import annotations

import numpy as np
from numba import njit

OK, NON_FINITE, BAD_CLASS = 0, 1, 2  # status of the forward


@njit(cache=True)
def weighted_cross_entropy_forward(logits, e, row_max, classes, weight, w):
    """(status, sum_i w_i (-log p_i[c_i]), sum_i w_i); e <- p = softmax(logits) in place.

    logits (R, K), e (R, K) = exp(logits - row_max), row_max (R,), classes (R,) ints,
    weight (K,); w (R,) receives w_i = weight[c_i]. The status is OK, NON_FINITE (some
    logit is NaN or infinite) or BAD_CLASS (some c_i outside [0, K)); the caller raises.
    -log p_i[c_i] = log(sum_j e_ij) + row_max_i - logits_i,c_i.
    """
    n_rows, n_cols = logits.shape
    loss = 0.0
    total_weight = 0.0
    for i in range(n_rows):
        c = classes[i]
        if c < 0 or c >= n_cols:
            return BAD_CLASS, loss, total_weight
        x, p = logits[i], e[i]  # (K,) each
        s = 0.0
        n_bad = 0
        for j in range(n_cols):  # branch-free, so it vectorises
            s += np.float64(p[j])
            n_bad += not (abs(x[j]) < np.inf)  # NaN fails the test too
        if n_bad:
            return NON_FINITE, loss, total_weight
        inv_s = 1.0 / s
        for j in range(n_cols):
            p[j] = np.float64(p[j]) * inv_s
        wi = np.float64(weight[c])
        w[i] = wi
        loss += wi * (np.log(s) + np.float64(row_max[i]) - np.float64(x[c]))
        total_weight += wi
    return OK, loss, total_weight


@njit(cache=True)
def weighted_cross_entropy_backward(dloss, p, classes, w, total_weight):
    """dlogits (R, K) = dloss * w_i / sum(w) * (p_i - onehot(c_i)); p (R, K), w (R,)."""
    n_rows, n_cols = p.shape
    dx = np.empty_like(p)
    for i in range(n_rows):
        scale = dloss * np.float64(w[i]) / total_weight
        row, d = p[i], dx[i]  # (K,) each
        for j in range(n_cols):
            d[j] = scale * np.float64(row[j])
        d[classes[i]] = scale * (np.float64(row[classes[i]]) - 1.0)
    return dx
