"""Sigmoid focal loss, the classification loss of Deformable DETR and DINO.

Each class is an independent yes/no question answered by a sigmoid, so there is
no "no object" class: a query that matches nothing simply has all-zero targets.
The factor (1 - p_t)^gamma shrinks the loss of the many easy negatives so the
few objects are not drowned out; alpha balances positives against negatives.

Elementwise, with p = sigmoid(x) and t the target in [0, 1]::

    ce    = -t log p - (1 - t) log(1 - p)          # binary cross-entropy
    p_t   = p t + (1 - p)(1 - t)                   # probability of the right answer
    a_t   = alpha t + (1 - alpha)(1 - t)           # class balance (1 when alpha < 0)
    loss  = a_t ce (1 - p_t)^gamma

and its derivative (derived in tutorial/04_set_prediction.md)::

    dloss/dx = a_t [ (p - t)(1 - p_t)^gamma - gamma ce (1 - p_t)^(gamma - 1) (2t - 1) p (1 - p) ]

Lin et al., "Focal Loss for Dense Object Detection" (ICCV 2017), eq. 5; Zhu et
al., "Deformable DETR" (ICLR 2021) uses alpha = 0.25, gamma = 2.

With gamma = 2 on NumPy arrays of one float dtype, Numba loops
(``minidetr.kernels.focal_cpu``) compute the same formulas in a few passes instead of
about twenty; the array code below is the reference they are held to.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minidetr.backend import Array, compiled_kernel, namespace
from minidetr.checks import check_finite, check_floating


class SigmoidFocalCache(NamedTuple):
    p: Array  # sigmoid(x), same shape as x
    pm: Array  # 1 - p = sigmoid(-x), computed without cancellation
    t: Array  # targets, same shape as x
    ce: Array  # binary cross-entropy per entry
    alpha: float
    gamma: float


def _fused(*arrays: Array) -> bool:
    """The Numba kernel takes these: NumPy arrays of one float dtype."""
    return compiled_kernel(*arrays) == "numba" and len({a.dtype for a in arrays}) == 1


def _flat(a: np.ndarray) -> np.ndarray:
    """``a`` as a contiguous run (N,), a view when it already is one."""
    return np.ascontiguousarray(a).reshape(-1)


def sigmoid_focal_loss_forward(
    logits: Array, targets: Array, alpha: float = 0.25, gamma: float = 2.0
) -> tuple[Array, SigmoidFocalCache]:
    """loss = a_t * BCE(sigmoid(x), t) * (1 - p_t)^gamma, elementwise (no reduction).

    logits (...), targets (...) floats in [0, 1] of the same shape. ``alpha`` in
    [0, 1], or negative to switch the class balance off; ``gamma`` >= 0. Returns
    the per-entry loss (...); the caller sums and normalises it. Lin et al. (2017).
    """
    check_floating(logits, "logits")
    check_floating(targets, "targets")
    if tuple(targets.shape) != tuple(logits.shape):
        raise ValueError(
            f"targets must have the shape of logits {logits.shape}, got {targets.shape}"
        )
    if alpha > 1.0:
        raise ValueError(f"alpha must be in [0, 1] (or negative to disable), got {alpha}")
    if not gamma >= 0.0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    check_finite(logits, "logits")
    xp = namespace(logits, targets)
    if bool(xp.any((targets < 0) | (targets > 1))):
        raise ValueError("targets must lie in [0, 1]")
    if gamma == 2.0 and _fused(logits, targets):
        from minidetr.kernels.focal_cpu import focal_loss_gamma2_forward as kernel

        x = _flat(logits)
        e = np.exp(-np.abs(x))  # NumPy's SIMD exp and log1p, then one loop
        out = kernel(x, _flat(targets), e, np.log1p(e), float(alpha))  # (4, N)
        loss, p, pm, ce = out.reshape(4, *logits.shape)
        return loss, SigmoidFocalCache(p, pm, targets, ce, float(alpha), float(gamma))
    e = xp.exp(-xp.abs(logits))  # in (0, 1]: never overflows
    big, small = 1.0 / (1.0 + e), e / (1.0 + e)  # sigmoid(|x|), sigmoid(-|x|)
    positive = logits >= 0
    p = xp.where(positive, big, small)  # sigmoid(x)
    pm = xp.where(positive, small, big)  # 1 - p, accurate for p near 1
    ce = xp.maximum(logits, xp.zeros_like(logits)) - logits * targets + xp.log1p(e)  # stable BCE
    q = p * (1.0 - targets) + pm * targets  # 1 - p_t (no cancellation)
    loss = ce * q**gamma
    if alpha >= 0:
        loss = (alpha * targets + (1.0 - alpha) * (1.0 - targets)) * loss
    return loss, SigmoidFocalCache(p, pm, targets, ce, float(alpha), float(gamma))


def sigmoid_focal_loss_backward(dloss: Array, cache: SigmoidFocalCache) -> tuple[Array]:
    """dlogits = dloss * a_t [(p - t)(1 - p_t)^gamma - gamma ce (1 - p_t)^(gamma-1) (2t-1) p (1-p)].

    Only the logits get a gradient; the targets are data.
    """
    xp = namespace(dloss)
    p, pm, t, ce, alpha, gamma = cache.p, cache.pm, cache.t, cache.ce, cache.alpha, cache.gamma
    if gamma == 2.0 and tuple(dloss.shape) == tuple(p.shape) and _fused(dloss, p, pm, t, ce):
        from minidetr.kernels.focal_cpu import focal_loss_gamma2_backward as kernel

        dx = kernel(_flat(dloss), _flat(p), _flat(pm), _flat(t), _flat(ce), alpha)
        return (dx.reshape(p.shape),)
    q = p * (1.0 - t) + pm * t  # 1 - p_t
    dq_dx = (1.0 - 2.0 * t) * p * pm  # d(1 - p_t)/dx, with dp/dx = p (1 - p)
    if gamma == 0.0:
        dmod = xp.zeros_like(q)
    else:  # gamma q^(gamma-1); where q == 0 the product with dq_dx (which is 0 too) is 0
        safe_q = xp.where(q > 0, q, xp.ones_like(q))
        dmod = xp.where(q > 0, gamma * safe_q ** (gamma - 1.0), xp.zeros_like(q))
    dx = (p - t) * q**gamma + ce * dmod * dq_dx
    if alpha >= 0:
        dx = (alpha * t + (1.0 - alpha) * (1.0 - t)) * dx
    return (dloss * dx,)
