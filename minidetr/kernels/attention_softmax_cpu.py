"""Numba loops for the softmax of scaled dot-product attention, forward and backward.

Speeds up the softmax inside ``minidetr.attention.dense.scaled_dot_product_attention_forward``
and ``_backward`` on NumPy arrays. DETR's attention rows are short (16 to a few
hundred keys), and NumPy reduces over a short last axis slowly: the array code's
max, shift, exp, sum and division (each with its temporary) took about 200 us on the
standard preset's (16, 8, 16, 16) scores, these loops and NumPy's SIMD ``exp`` in
place about 60 us; the backward's product, row sum and scaling went from about 65 to
20 us. The forward is three passes over the scores, all in place:

1. ``scale_and_shift_rows``: t = s * scale, then t - max(t) over each row;
2. NumPy's ``exp`` (its SIMD loop; Numba's would call the scalar libm ``expf``);
3. ``normalize_rows``: each row divided by its sum (accumulated in float64).

Non-finite scores give what the array code gives, entry for entry: a NaN score makes
its row's maximum NaN and so the whole row NaN; a +inf score becomes NaN (inf - inf)
and its row's other entries 0, the NaN sum being replaced by 1 (the array code's guard
for a row with no positive sum); a -inf score gets weight 0.
Only the unmasked forward runs here; a mask takes the array code. The backward holds
for any mask, since masked weights are exactly 0.

Rows are the last axis of C-contiguous arrays viewed as (R, L).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, error_model="numpy")
def scale_and_shift_rows(s, scale):
    """s[r] <- s[r] * scale - max_j(s[r, j] * scale), in place; s (R, L), scale of s's dtype."""
    for r in range(s.shape[0]):
        row = s[r]
        top = -np.inf
        for j in range(row.shape[0]):
            t = row[j] * scale
            row[j] = t
            if t > top or t != t:  # a NaN sticks, as in NumPy's max
                top = t
        for j in range(row.shape[0]):
            row[j] = row[j] - top


@njit(cache=True, error_model="numpy")
def normalize_rows(e):
    """e[r] <- e[r] / sum_j e[r, j], in place; e (R, L) of exponentials.

    A row's largest entry is exp(0) = 1, so its sum is at least 1 unless it holds a
    NaN; a sum that is not positive divides by 1, as the array code's guard does.
    """
    for r in range(e.shape[0]):
        row = e[r]
        total = 0.0
        for j in range(row.shape[0]):
            total += row[j]
        inv = 1.0 / total if total > 0 else 1.0
        for j in range(row.shape[0]):
            row[j] = row[j] * inv


@njit(cache=True, error_model="numpy")
def softmax_backward_rows(p, dp, scale, ds):
    """ds[r] = p[r] * (dp[r] - sum_j dp[r, j] p[r, j]) * scale; p, dp, ds (R, L)."""
    for r in range(p.shape[0]):
        pr, dr, out = p[r], dp[r], ds[r]
        acc = 0.0
        for j in range(pr.shape[0]):
            acc += dr[j] * pr[j]
        for j in range(pr.shape[0]):
            out[j] = pr[j] * (dr[j] - acc) * scale
