"""Numba loops for attention over a neighbour table, forward and backward.

Speeds up ``minidetr.attention.gathered.gathered_attention_forward`` and
``gathered_attention_backward`` (the array code ``_forward_reference`` and the
reference branch of the backward) on NumPy float32/float64 arrays, with the same
conventions: -1 marks an empty slot, which gets weight 0, and a query with no listed
key outputs 0. The array code gathers (G, Lq, K, d) copies of the keys and values;
these loops read each listed key in place and keep only the (G, Lq, K) weights.
Large problems spread (g, i) pairs over threads in the forward and g in the
backward (keys collect gradients from many queries of the same g).

Dimension letters: G leading dimensions flattened, Lq queries, Lk keys, K table
width, d head width, dv value width.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

# Below this much work (listed pairs x width) thread start-up costs more than the loops.
PARALLEL_MIN_WORK = 1 << 16


def _forward(q, k, v, index, bias, scale, out, p):  # pragma: no cover - compiled
    g_count, lq = q.shape[0], q.shape[1]
    kw, d, dv = index.shape[2], q.shape[2], v.shape[2]
    step, has_bias = min(index.shape[0] - 1, 1), bias.shape[0] > 0  # step 0: shared table
    for gi in prange(g_count * lq):
        g, i = gi // lq, gi % lq
        table = index[g * step, i]
        top = -np.inf
        for r in range(kw):
            j = table[r]
            if j < 0:
                p[g, i, r] = -np.inf
                continue
            s = 0.0
            for c in range(d):
                s += q[g, i, c] * k[g, j, c]
            s *= scale
            if has_bias:
                s += bias[g, i, r]
            p[g, i, r] = s
            top = max(top, s)
        total = 0.0
        for r in range(kw):
            e = np.exp(p[g, i, r] - top) if table[r] >= 0 else 0.0
            p[g, i, r] = e
            total += e
        for c in range(dv):
            out[g, i, c] = 0.0
        if total == 0.0:
            continue
        for r in range(kw):
            w = p[g, i, r] / total
            p[g, i, r] = w
            j = table[r]
            if j >= 0:
                for c in range(dv):
                    out[g, i, c] += w * v[g, j, c]


def _backward(dout, q, k, v, index, p, scale, dq, dk, dv):  # pragma: no cover - compiled
    g_count, lq = q.shape[0], q.shape[1]
    kw, d, dvw = index.shape[2], q.shape[2], v.shape[2]
    step = min(index.shape[0] - 1, 1)  # 0: one table shared by every g
    for g in prange(g_count):
        dp = np.empty(kw, dtype=q.dtype)
        for i in range(lq):
            table = index[g * step, i]
            mean = 0.0
            for r in range(kw):
                j = table[r]
                acc = 0.0
                if j >= 0:
                    for c in range(dvw):
                        acc += dout[g, i, c] * v[g, j, c]
                dp[r] = acc
                mean += acc * p[g, i, r]
            for r in range(kw):
                j = table[r]
                if j < 0:
                    continue
                w = p[g, i, r]
                ds = w * (dp[r] - mean) * scale  # softmax backward
                for c in range(d):
                    dq[g, i, c] += ds * k[g, j, c]
                    dk[g, j, c] += ds * q[g, i, c]
                for c in range(dvw):
                    dv[g, j, c] += w * dout[g, i, c]


_forward_serial = njit(cache=True, error_model="numpy")(_forward)
_forward_parallel = njit(cache=True, parallel=True, error_model="numpy")(_forward)
_backward_serial = njit(cache=True, error_model="numpy")(_backward)
_backward_parallel = njit(cache=True, parallel=True, error_model="numpy")(_backward)


def _parallel(q, index) -> bool:
    return q.shape[0] * q.shape[1] * index.shape[2] * q.shape[2] >= PARALLEL_MIN_WORK


def forward(q, k, v, index, bias, scale):
    """(out (G, Lq, dv), p (G, Lq, K)) for q (G, Lq, d), k (G, Lk, d), v (G, Lk, dv)."""
    q, k, v = (np.ascontiguousarray(a) for a in (q, k, v))
    index = np.ascontiguousarray(index, dtype=np.int64)
    if bias is None:
        bias = np.zeros((0, 1, 1), dtype=q.dtype)
    bias = np.ascontiguousarray(bias, dtype=q.dtype)
    out = np.empty((q.shape[0], q.shape[1], v.shape[2]), dtype=q.dtype)
    p = np.empty((q.shape[0], q.shape[1], index.shape[2]), dtype=q.dtype)
    run = _forward_parallel if _parallel(q, index) else _forward_serial
    run(q, k, v, index, bias, q.dtype.type(scale), out, p)
    return out, p


def backward(dout, q, k, v, index, p, scale):
    """(dq, dk, dv) of :func:`forward` for the upstream gradient dout (G, Lq, dv)."""
    dout = np.ascontiguousarray(dout, dtype=q.dtype)
    index = np.ascontiguousarray(index, dtype=np.int64)
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    run = _backward_parallel if _parallel(q, index) else _backward_serial
    run(dout, q, k, v, index, np.ascontiguousarray(p), q.dtype.type(scale), dq, dk, dv)
    return dq, dk, dv
