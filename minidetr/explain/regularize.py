"""An entropy penalty on attention, as an op pair, for attention regularisation.

    penalty = weight * mean over rows of H(p_row),   H(p) = -sum_j p_j log p_j

Added to a loss, a positive ``weight`` pushes heads towards sharper (lower
entropy) attention, a negative one towards spread-out attention. Its gradient,

    d penalty / d p_j = -weight (log p_j + 1) / rows     (p_j > 0; masked zeros get 0),

is what the attention's backward receives on top of the loss's dL/dp.
Shapes: any (..., n) map whose last axis is a distribution.
"""

from __future__ import annotations

from typing import NamedTuple

from minidetr.backend import Array, namespace
from minidetr.checks import check_floating


class EntropyPenaltyCache(NamedTuple):
    p: Array  # (..., n)
    weight: float
    rows: int


def entropy_penalty_forward(p: Array, weight: float) -> tuple[Array, EntropyPenaltyCache]:
    """weight * mean_rows H(p) (a 0-d array) for attention p (..., n) with rows summing to 1."""
    check_floating(p, "p")
    if p.ndim < 1:
        raise ValueError("p must have at least one dimension (..., n)")
    xp = namespace(p)
    positive = p > 0
    safe = xp.where(positive, p, xp.ones_like(p))
    h = -xp.sum(xp.where(positive, p * xp.log(safe), xp.zeros_like(p)), axis=-1)  # (...,)
    rows = 1
    for size in p.shape[:-1]:
        rows *= size
    return weight * xp.sum(h) / rows, EntropyPenaltyCache(p, float(weight), rows)


def entropy_penalty_backward(dout: Array, cache: EntropyPenaltyCache) -> tuple[Array]:
    """(dp,) for the upstream dout (0-d): -dout weight (log p + 1) / rows, 0 where p = 0."""
    xp = namespace(cache.p)
    p = cache.p
    positive = p > 0
    safe = xp.where(positive, p, xp.ones_like(p))
    dp = xp.where(positive, -(xp.log(safe) + 1.0), xp.zeros_like(p))
    return (dout * cache.weight / cache.rows * dp,)
