"""Attention as probability: fusing heads, attention rollout, attention entropy.

Every row of a softmax attention map is a probability distribution over the
keys, so a map can be read as "how much of token i's output comes from token j"
(one layer), and a chain of maps as a Markov chain (rollout). Its entropy says
how spread out a head looks: 0 nats for a head that reads one key, log L for one
that reads all L keys evenly.

Shapes: B batch, M heads, L tokens (queries = keys in self-attention).
Abnar & Zuidema, "Quantifying Attention Flow in Transformers" (ACL 2020).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from minidetr.backend import Array, device, namespace
from minidetr.checks import check_floating, check_ndim

HEAD_FUSIONS = ("mean", "max", "min")


def fuse_heads(attention: Array, head_fusion: str = "mean") -> Array:
    """A_fused = mean_m A_m (or max / min over m). attention (B, M, Lq, Lk) -> (B, Lq, Lk)."""
    check_floating(attention, "attention")
    check_ndim(attention, 4, "attention", "(B, M, Lq, Lk)")
    xp = namespace(attention)
    if head_fusion == "mean":
        return xp.mean(attention, axis=1)
    if head_fusion == "max":
        return xp.max(attention, axis=1)
    if head_fusion == "min":
        return xp.min(attention, axis=1)
    raise ValueError(f"head_fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}")


def normalize_rows(a: Array) -> Array:
    """Each row divided by its sum; a row that sums to zero stays zero (no NaN). a (..., L)."""
    xp = namespace(a)
    total = xp.sum(a, axis=-1, keepdims=True)
    return a / xp.where(total > 0, total, xp.ones_like(total))


def _discard_lowest(a: Array, ratio: float) -> Array:
    """Zero the ``ratio`` fraction of smallest entries of every row. a (B, L, L)."""
    xp = namespace(a)
    count = int(math.floor(ratio * a.shape[-1]))
    if count == 0:
        return a
    ranks = xp.argsort(xp.argsort(a, axis=-1), axis=-1)  # 0 = smallest of its row
    return xp.where(ranks < count, xp.zeros_like(a), a)


def attention_rollout(
    attentions: Sequence[Array],
    *,
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    residual: bool = True,
) -> Array:
    """R = Â_N ... Â_2 Â_1 with Â_l = rownorm(0.5 fuse(A_l) + 0.5 I), or rownorm(fuse(A_l)).

    attentions: the self-attention maps from the first layer to the last, each
    (B, M, L, L) with rows over keys. ``discard_ratio`` zeroes that fraction of the
    smallest entries of every fused row before the identity is added. Returns
    R (B, L, L): row i is how much of the last layer's token i flows from each input
    token j, rows summing to 1. The first layer acts first, so it stands rightmost.
    Abnar & Zuidema (2020), section 3.
    """
    if isinstance(attentions, str) or not isinstance(attentions, Sequence) or not attentions:
        raise TypeError("attentions must be a non-empty sequence of (B, M, L, L) arrays")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    shape = tuple(attentions[0].shape)
    rollout = None
    for i, attention in enumerate(attentions):
        check_ndim(attention, 4, f"attentions[{i}]", "(B, M, L, L)")
        if tuple(attention.shape) != shape or shape[2] != shape[3]:
            raise ValueError(
                f"attentions[{i}] must have the square shape {shape} of the first layer, "
                f"got {tuple(attention.shape)}"
            )
        a = _discard_lowest(fuse_heads(attention, head_fusion), discard_ratio)  # (B, L, L)
        xp = namespace(a)
        if residual:
            eye = xp.eye(shape[-1], dtype=a.dtype, device=device(a))
            a = 0.5 * a + 0.5 * eye
        a = normalize_rows(a)
        rollout = a if rollout is None else xp.matmul(a, rollout)  # later layers on the left
    return rollout


def attention_entropy(weights: Array, axis: int = -1) -> Array:
    """H(p) = -sum_j p_j log p_j in nats along ``axis``, with 0 log 0 = 0.

    weights: any shape, non-negative, summing to 1 along ``axis`` (an attention map
    (B, M, Lq, Lk) gives (B, M, Lq): one entropy per head and query). Bounds:
    0 <= H <= log n, n the length of ``axis``; 0 for a one-hot row, log n for a
    uniform one. Shannon (1948).
    """
    check_floating(weights, "weights")
    xp = namespace(weights)
    if weights.ndim == 0:
        raise ValueError("weights must have at least one dimension")
    if bool(xp.any(weights < 0)):
        raise ValueError("weights must be non-negative (attention probabilities)")
    total = xp.sum(weights, axis=axis)
    if bool(xp.any(xp.abs(total - 1.0) > 1e-3)):
        raise ValueError(f"weights must sum to 1 along axis {axis} (softmax rows)")
    positive = weights > 0
    safe = xp.where(positive, weights, xp.ones_like(weights))
    return -xp.sum(xp.where(positive, weights * xp.log(safe), xp.zeros_like(weights)), axis=axis)
