"""Pointwise nonlinearities and dropout.

The ReLU runs as a Numba loop (``minidetr.kernels.relu_cpu``) on NumPy float arrays.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minidetr.backend import Array, Rng, compiled_kernel, device, namespace
from minidetr.checks import check_floating


class ReluCache(NamedTuple):
    positive: Array  # bool, same shape as x


def relu_forward(x: Array) -> tuple[Array, ReluCache]:
    """y = max(x, 0); a NaN stays NaN (as in PyTorch) so that a broken input is not hidden."""
    check_floating(x, "x")
    if compiled_kernel(x) == "numba":  # one pass: kernels.relu_cpu
        from minidetr.kernels.relu_cpu import relu_forward as kernel

        x = np.ascontiguousarray(x)
        y, positive = np.empty_like(x), np.empty(x.shape, dtype=bool)
        kernel(x.reshape(-1), y.reshape(-1), positive.reshape(-1))
        return y, ReluCache(positive)
    xp = namespace(x)
    y = xp.maximum(x, xp.zeros((), dtype=x.dtype, device=device(x)))  # NaN propagates
    return y, ReluCache(x > 0)


def relu_backward(dy: Array, cache: ReluCache) -> tuple[Array]:
    """dx = dy where x > 0, else 0 (the subgradient 0 is taken at x = 0)."""
    if compiled_kernel(dy) == "numba" and dy.shape == cache.positive.shape:
        from minidetr.kernels.relu_cpu import relu_backward as kernel

        dy, positive = np.ascontiguousarray(dy), np.ascontiguousarray(cache.positive)
        dx = np.empty_like(dy)
        kernel(dy.reshape(-1), positive.reshape(-1), dx.reshape(-1))
        return (dx,)
    xp = namespace(dy)
    return (xp.where(cache.positive, dy, xp.zeros((), dtype=dy.dtype, device=device(dy))),)


class SigmoidCache(NamedTuple):
    y: Array


def sigmoid_forward(x: Array) -> tuple[Array, SigmoidCache]:
    """y = 1 / (1 + exp(-x)), computed without overflow for large |x|."""
    check_floating(x, "x")
    xp = namespace(x)
    e = xp.exp(-xp.abs(x))
    y = xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return y, SigmoidCache(y)


def sigmoid_backward(dy: Array, cache: SigmoidCache) -> tuple[Array]:
    """dx = dy * y * (1 - y)."""
    return (dy * cache.y * (1.0 - cache.y),)


def inverse_sigmoid(x: Array, eps: float = 1e-5) -> Array:
    """u = log(x / (1 - x)), with x clamped to [eps, 1 - eps] so u is finite.

    Only ever applied to constants (anchors detached between layers, noised
    boxes, proposals), so it has no backward. Zhu et al. (2021), ``util/misc.py``.
    """
    xp = namespace(x)
    x = xp.clip(x, eps, 1.0 - eps)
    return xp.log(x / (1.0 - x))


class DropoutCache(NamedTuple):
    scaled_mask: Array | None  # keep / (1 - p), or None when nothing was dropped


def dropout_forward(
    x: Array, p: float, *, train: bool = True, rng: Rng | None = None
) -> tuple[Array, DropoutCache]:
    """Inverted dropout: zero each entry with probability p, scale the rest by 1/(1-p).

    Identity when ``train`` is False or ``p == 0``. ``rng`` is required otherwise.
    Reference: Srivastava et al., "Dropout" (JMLR 2014).
    """
    check_floating(x, "x")
    if not 0.0 <= p < 1.0:
        raise ValueError(f"p must be in [0, 1), got {p}")
    if not train or p == 0.0:
        return x, DropoutCache(None)
    if rng is None:
        raise ValueError("rng is required for dropout in training mode")
    xp = namespace(x)
    keep = rng.uniform(tuple(x.shape), like=x) >= p
    scaled_mask = xp.astype(keep, x.dtype) / (1.0 - p)
    return x * scaled_mask, DropoutCache(scaled_mask)


def dropout_backward(dy: Array, cache: DropoutCache) -> tuple[Array]:
    """dx = dy * mask / (1 - p)."""
    if cache.scaled_mask is None:
        return (dy,)
    return (dy * cache.scaled_mask,)
