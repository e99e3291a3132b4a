"""Sparse attention: top-k selection and fixed sparsity patterns as boolean masks.

Every mask here is for the ``mask`` argument of
:func:`~minidetr.attention.dense.scaled_dot_product_attention_forward`: boolean
(Lq, Lk), True where query i may attend to key j. The masks describe *which* pairs
interact; the dense op still computes all N^2 scores. ``window.py`` computes only the
allowed ones.

Dimension letters: Lq queries, Lk keys, d head width, dv value width; an H x W grid
of tokens is flattened row-major (token t sits at row t // W, column t % W).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minidetr.attention.dense import (
    AttentionCache,
    scaled_dot_product_attention_backward,
    scaled_dot_product_attention_forward,
)
from minidetr.attention.linear import _check_qkv
from minidetr.backend import Array, device, namespace


def _positive(value: int, name: str, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _grid(lq: int, lk: int, like: Array | None) -> tuple[Array, Array]:
    """(i, j) index grids of shape (Lq, 1) and (1, Lk) in the namespace of ``like``."""
    _positive(lq, "Lq")
    _positive(lk, "Lk")
    xp = namespace(np.empty(0) if like is None else like)  # NumPy by default
    dev = None if like is None else device(like)
    i = xp.arange(lq, device=dev)[:, None]  # (Lq, 1)
    j = xp.arange(lk, device=dev)[None, :]  # (1, Lk)
    return i, j


def local_mask(lq: int, lk: int, window: int, *, like: Array | None = None) -> Array:
    """(Lq, Lk) boolean, True where |i - j| <= window: a band of 2 window + 1 keys.

    ``like``: an array whose namespace and device the mask takes (NumPy by default).
    Beltagy et al., "Longformer" (2020), sliding-window attention.
    """
    _positive(window, "window", 0)
    i, j = _grid(lq, lk, like)
    return namespace(i).abs(i - j) <= window


def strided_mask(
    lq: int, lk: int, stride: int, *, causal: bool = False, like: Array | None = None
) -> Array:
    """(Lq, Lk) boolean, True where |i - j| < stride or (i - j) mod stride = 0.

    Child et al., "Generating Long Sequences with Sparse Transformers" (2019), sec. 4.2:
    the union of its two strided heads, a local one (the previous ``stride`` positions)
    and one every ``stride``-th position. With ``causal`` only j <= i, as in the paper;
    without, the same pattern mirrored, for an encoder.
    """
    _positive(stride, "stride")
    i, j = _grid(lq, lk, like)
    xp = namespace(i)
    offset = i - j  # (Lq, Lk)
    mask = (xp.abs(offset) < stride) | (offset % stride == 0)
    return mask & (offset >= 0) if causal else mask


def grid_local_mask(height: int, width: int, window: int, *, like: Array | None = None) -> Array:
    """(H W, H W) boolean over a row-major H x W grid: True where |dy| <= window and
    |dx| <= window, a (2 window + 1)^2 square around each token.

    Liu et al., "Swin Transformer" (2021) use non-overlapping windows; this is the
    sliding (neighbourhood) version of Hassani et al., "Neighborhood Attention" (2023).
    """
    _positive(height, "height")
    _positive(width, "width")
    _positive(window, "window", 0)
    i, j = _grid(height * width, height * width, like)
    xp = namespace(i)
    dy = xp.abs(i // width - j // width)
    dx = xp.abs(i % width - j % width)
    return (dy <= window) & (dx <= window)


# ------------------------------------------------------------------------ top-k attention


class TopkAttentionCache(NamedTuple):
    attention: AttentionCache  # the masked dense attention over the kept keys
    top_k: int


def topk_mask(scores: Array, top_k: int) -> Array:
    """(..., Lq, Lk) boolean, True at each row's ``top_k`` largest scores.

    Ties: among equal scores the lower key index ranks first (a stable sort), so
    every row keeps exactly min(top_k, Lk) keys.
    """
    xp = namespace(scores)
    if top_k >= scores.shape[-1]:
        return xp.ones(scores.shape, dtype=xp.bool, device=device(scores))
    ordered = xp.sort(scores, axis=-1, descending=True)  # (..., Lq, Lk)
    threshold = ordered[..., top_k - 1 : top_k]  # (..., Lq, 1) the top_k-th largest score
    above = scores > threshold
    tied = scores == threshold
    room = top_k - xp.sum(xp.astype(above, xp.int64), axis=-1, keepdims=True)  # (..., Lq, 1)
    first_ties = xp.cumulative_sum(xp.astype(tied, xp.int64), axis=-1) <= room
    return above | (tied & first_ties)


def topk_attention_forward(
    q: Array, k: Array, v: Array, *, top_k: int
) -> tuple[Array, TopkAttentionCache]:
    """out = softmax over each query's top_k scores of q k^T / sqrt(d), times v.

    q (..., Lq, d), k (..., Lk, d), v (..., Lk, dv); ``top_k`` >= 1 (top_k >= Lk is
    dense attention). The selection is piecewise constant, so the gradient flows
    through the kept scores only; ties are broken as in :func:`topk_mask`. This
    reference still forms all Lq x Lk scores: it measures what sparsity costs in
    accuracy, not in time. Returns (..., Lq, dv). Gupta et al., "Memory-efficient
    Transformers via Top-k Attention" (2021); Zhao et al., "Explicit Sparse
    Transformer" (2019).
    """
    _check_qkv(q, k, v, False)
    _positive(top_k, "top_k")
    xp = namespace(q, k, v)
    scores = xp.matmul(q, k.mT)  # (..., Lq, Lk); the scale does not change the order
    out, cache = scaled_dot_product_attention_forward(q, k, v, topk_mask(scores, top_k))
    return out, TopkAttentionCache(cache, top_k)


def topk_attention_backward(dout: Array, cache: TopkAttentionCache) -> tuple[Array, Array, Array]:
    """Gradients (dq, dk, dv); keys outside a row's top_k get nothing from that row."""
    return scaled_dot_product_attention_backward(dout, cache.attention)
