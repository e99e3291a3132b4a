"""Numba loops for AdamW's update and the global gradient norm.

Speeds up ``minidetr.train.optim.adamw_step`` (every parameter of one flat buffer in
one call, ``adamw_update_segments``) and the per-array body of
``minidetr.train.optim.global_norm`` on NumPy arrays. The array code makes about
ten passes over memory per parameter for AdamW (each ``*``, ``+``, ``/`` and
``sqrt`` a temporary) and three for the norm; these loops make one each.
``error_model="numpy"`` lets a division be a SIMD instruction (Python's model
checks every divisor for zero, which stops the loops from vectorising: 13x slower).

* ``adamw_update`` does AdamW's arithmetic in the arrays' own dtype, with every
  constant rounded to that dtype first, as NumPy does with Python floats: its
  results equal the array code's bit for bit, gradient clipping's scaling
  included (it multiplies each gradient entry as it reads it, instead of a pass
  that writes scaled copies); ``adamw_update_segments`` runs it on each
  parameter's segment of the flat buffers. Outputs are allocated by the caller
  (the old parameters and moments stay untouched, as ``adamw_step`` promises).
* ``scaled_sum_of_squares`` returns (a, s) with sum g^2 = a^2 s, the two numbers
  ``global_norm`` combines on the host: usually a = 1 and one pass in float64,
  which cannot overflow on float32 entries; else a = max |g| as in the array code
  (which sums in the gradient's dtype, so the two agree to its rounding).

Arrays are flat (N,) and contiguous; the caller reshapes.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True, error_model="numpy")
def adamw_update(p, g, m, v, p_out, m_out, v_out, consts):
    """One AdamW step of flat arrays (N,), written to p_out, m_out, v_out (N,).

    consts (10,) in the arrays' dtype: b1, 1 - b1, b2, 1 - b2, c1 = 1 - b1^t,
    c2 = 1 - b2^t, eps, the decay 1 - rate * weight_decay, rate, and the gradient's
    scale s (gradient clipping's factor; 1 leaves g as it is, exactly).
    With g' = s g: m' = b1 m + (1 - b1) g', v' = b2 v + (1 - b2) g'^2,
    p' = p decay - rate (m' / c1) / (sqrt(v' / c2) + eps).
    """
    b1, nb1, b2, nb2 = consts[0], consts[1], consts[2], consts[3]
    c1, c2, eps, decay, rate = consts[4], consts[5], consts[6], consts[7], consts[8]
    scale = consts[9]
    for i in range(p.shape[0]):
        gi = g[i] * scale
        mi = b1 * m[i] + nb1 * gi
        vi = b2 * v[i] + nb2 * (gi * gi)
        m_out[i] = mi
        v_out[i] = vi
        p_out[i] = p[i] * decay - rate * ((mi / c1) / (np.sqrt(vi / c2) + eps))


@njit(cache=True, error_model="numpy")
def adamw_update_segments(p, g, m, v, offsets, consts, p_out, m_out, v_out):
    """``adamw_update`` of every parameter of one flat buffer in one call.

    p, g, m, v, p_out, m_out, v_out (N,): parameter k is entries offsets[k] to
    offsets[k + 1] - 1, with constants consts[k] (P, 10) laid out as in
    ``adamw_update``, which runs on each segment: the same results bit for bit.
    """
    for k in range(offsets.shape[0] - 1):
        lo, hi = offsets[k], offsets[k + 1]
        adamw_update(
            p[lo:hi],
            g[lo:hi],
            m[lo:hi],
            v[lo:hi],
            p_out[lo:hi],
            m_out[lo:hi],
            v_out[lo:hi],
            consts[k],
        )


@njit(cache=True, error_model="numpy", fastmath={"reassoc"})
def _sum_of_squares(g, scale):
    """sum_i (g_i / scale)^2 in float64; ``reassoc`` lets the sum run in SIMD lanes (NaN and
    infinities keep their meaning)."""
    s = 0.0
    for i in range(g.shape[0]):
        q = np.float64(g[i]) / scale
        s += q * q
    return s


@njit(cache=True, error_model="numpy")
def _peak(g):
    """max_i |g_i| in float64 (NaN entries are skipped: the caller has ruled them out)."""
    peak = 0.0
    for i in range(g.shape[0]):
        peak = max(peak, abs(np.float64(g[i])))
    return peak


@njit(cache=True, error_model="numpy")
def scaled_sum_of_squares(g):
    """(a, s) with sum_i g_i^2 = a^2 s for a flat array g (N,), without overflow or underflow.

    One pass in float64, a = 1, when that sum is a normal float64 number: always so for
    finite float32 entries (a square is below 1.2e77). Otherwise (float64 entries past
    1e154 or below 1e-140) a second and third pass take a = max |g_i| and s = sum (g_i / a)^2
    <= N, as the array code does. Non-finite entries give a non-finite a and s (NaN when
    one is NaN); all-zero entries give (0, 0).
    """
    s = _sum_of_squares(g, 1.0)
    if 1e-280 < s < math.inf:
        return 1.0, s
    if math.isnan(s):
        return math.nan, math.nan
    peak = _peak(g)
    scale = peak if 0.0 < peak < math.inf else 1.0  # 0 / 0 and inf / inf are avoided
    return peak, _sum_of_squares(g, scale)
