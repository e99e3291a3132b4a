"""Softmax, log-softmax and the weighted cross-entropy DETR classifies with.

All reduce over the last axis and subtract the row maximum first, so large
logits never overflow.
"""

from __future__ import annotations

from typing import NamedTuple

from minidetr.backend import Array, namespace
from minidetr.checks import check_dim, check_finite, check_floating, check_integral, check_ndim


class SoftmaxCache(NamedTuple):
    y: Array  # the softmax itself


def softmax_forward(x: Array) -> tuple[Array, SoftmaxCache]:
    """y_i = exp(x_i) / sum_j exp(x_j) over the last axis."""
    check_floating(x, "x")
    xp = namespace(x)
    e = xp.exp(x - xp.max(x, axis=-1, keepdims=True))
    y = e / xp.sum(e, axis=-1, keepdims=True)
    return y, SoftmaxCache(y)


def softmax_backward(dy: Array, cache: SoftmaxCache) -> tuple[Array]:
    """dx = y * (dy - sum(dy * y)), the Jacobian-vector product of softmax."""
    xp = namespace(dy)
    y = cache.y
    return (y * (dy - xp.sum(dy * y, axis=-1, keepdims=True)),)


class LogSoftmaxCache(NamedTuple):
    p: Array  # softmax probabilities exp(y)


def log_softmax_forward(x: Array) -> tuple[Array, LogSoftmaxCache]:
    """y = x - logsumexp(x) over the last axis."""
    check_floating(x, "x")
    xp = namespace(x)
    shifted = x - xp.max(x, axis=-1, keepdims=True)
    y = shifted - xp.log(xp.sum(xp.exp(shifted), axis=-1, keepdims=True))
    return y, LogSoftmaxCache(xp.exp(y))


def log_softmax_backward(dy: Array, cache: LogSoftmaxCache) -> tuple[Array]:
    """dx = dy - softmax(x) * sum(dy)."""
    xp = namespace(dy)
    return (dy - cache.p * xp.sum(dy, axis=-1, keepdims=True),)


class CrossEntropyCache(NamedTuple):
    p: Array  # (N, C) softmax
    onehot: Array  # (N, C) targets as one-hot floats
    w: Array  # (N,) weight of each sample's target class
    total_weight: Array  # () sum of w


def cross_entropy_forward(
    logits: Array, targets: Array, weight: Array | None = None
) -> tuple[Array, CrossEntropyCache]:
    """loss = sum_i w[t_i] * -log softmax(x_i)[t_i] / sum_i w[t_i].

    logits (N, C), targets (N,) integers in [0, C), weight (C,) or None. This is
    PyTorch's weighted mean, which DETR uses to down-weight the no-object class.
    Returns a 0-d array.
    """
    check_floating(logits, "logits")
    check_ndim(logits, 2, "logits", "(N, C)")
    check_integral(targets, "targets")
    check_ndim(targets, 1, "targets", "(N,)")
    check_dim(targets, 0, logits.shape[0], "targets", "rows of logits")
    xp = namespace(logits)
    n, c = logits.shape
    if weight is None:
        weight = xp.ones((c,), dtype=logits.dtype, device=logits.device)
    check_dim(weight, 0, c, "weight", "classes of logits")
    outside = (targets < 0) | (targets >= c)  # (N,)
    onehot = xp.astype(
        targets[:, None] == xp.arange(c, device=logits.device)[None, :], logits.dtype
    )
    w = xp.sum(onehot * weight, axis=1)  # (N,)
    total_weight = xp.sum(w)
    # the three value checks in one read of the device; only a failure reads more, to say which
    valid = xp.all(xp.isfinite(logits)) & ~xp.any(outside) & (total_weight > 0)
    if not bool(valid):
        check_finite(logits, "logits")
        if n and bool(xp.any(outside)):
            raise ValueError(f"targets must be class indices in [0, {c}), got {targets}")
        raise ValueError("weight gives every target zero weight; the mean is undefined")
    logp, lcache = log_softmax_forward(logits)  # (N, C)
    loss = -xp.sum(w * xp.sum(onehot * logp, axis=1)) / total_weight
    return loss, CrossEntropyCache(lcache.p, onehot, w, total_weight)


def cross_entropy_backward(dloss: Array, cache: CrossEntropyCache) -> tuple[Array]:
    """dlogits_i = dloss * w_i / sum(w) * (softmax(x_i) - onehot(t_i))."""
    scale = dloss * cache.w / cache.total_weight  # (N,)
    return (scale[:, None] * (cache.p - cache.onehot),)
