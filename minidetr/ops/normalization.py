"""Layer normalisation (transformer) and group normalisation (backbone).

Both normalise x to zero mean and unit variance over some axes, then apply a
per-feature scale gamma and shift beta. Their backward is one formula:
dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) over the same axes.

``groupnorm_relu_forward`` / ``_backward`` are the backbone's relu(skip + GN(x)) as one
op: the plain composition of the ops above, which a Numba kernel
(``minidetr.kernels.groupnorm_cpu``) replaces on NumPy arrays. Layer normalisation
likewise runs ``minidetr.kernels.layernorm_cpu`` on NumPy arrays of one float dtype.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minidetr.backend import Array, compiled_kernel, namespace
from minidetr.checks import check_dim, check_floating, check_ndim
from minidetr.ops.activation import ReluCache, relu_backward, relu_forward


class NormCache(NamedTuple):
    xhat: Array  # normalised input, same shape as the grouped view of x
    rstd: Array  # 1 / sqrt(var + eps), reduced axes kept
    gamma: Array


def _fused(*arrays: Array | None) -> bool:
    """A Numba kernel takes these: NumPy arrays of one float dtype (None skipped)."""
    present = [a for a in arrays if a is not None]
    return compiled_kernel(*present) == "numba" and len({a.dtype for a in present}) == 1


def _normalize(x: Array, axes: tuple[int, ...], eps: float) -> tuple[Array, Array]:
    xp = namespace(x)
    mu = xp.mean(x, axis=axes, keepdims=True)
    xc = x - mu
    var = xp.mean(xc * xc, axis=axes, keepdims=True)
    rstd = 1.0 / xp.sqrt(var + eps)
    return xc * rstd, rstd


def _normalize_backward(dxhat: Array, xhat: Array, rstd: Array, axes: tuple[int, ...]) -> Array:
    xp = namespace(dxhat)
    mean_d = xp.mean(dxhat, axis=axes, keepdims=True)
    mean_dx = xp.mean(dxhat * xhat, axis=axes, keepdims=True)
    return rstd * (dxhat - mean_d - xhat * mean_dx)


def layernorm_forward(
    x: Array, gamma: Array, beta: Array, eps: float = 1e-5
) -> tuple[Array, NormCache]:
    """y = gamma * (x - mean) / sqrt(var + eps) + beta over the last axis.

    x (N..., D), gamma (D,), beta (D,). Ba, Kiros and Hinton, "Layer Normalization" (2016).
    """
    check_floating(x, "x")
    check_ndim(gamma, 1, "gamma", "(D,)")
    check_dim(x, -1, gamma.shape[0], "x", "width of gamma")
    check_dim(beta, 0, gamma.shape[0], "beta", "width of gamma")
    if _fused(x, gamma, beta) and x.size:
        from minidetr.kernels.layernorm_cpu import layernorm_forward as kernel

        x2 = np.ascontiguousarray(x).reshape(-1, x.shape[-1])  # (N, D)
        y, xhat = np.empty_like(x2), np.empty_like(x2)
        rstd = np.empty(x2.shape[0], dtype=x.dtype)
        kernel(x2, gamma, beta, eps, y, xhat, rstd)
        cache = NormCache(xhat.reshape(x.shape), rstd.reshape(*x.shape[:-1], 1), gamma)
        return y.reshape(x.shape), cache
    xhat, rstd = _normalize(x, (-1,), eps)  # (N..., D)
    return gamma * xhat + beta, NormCache(xhat, rstd, gamma)


def layernorm_backward(dy: Array, cache: NormCache) -> tuple[Array, Array, Array]:
    """Gradients (dx, dgamma, dbeta) of layer normalisation."""
    if _fused(dy, cache.xhat, cache.gamma) and dy.size:
        from minidetr.kernels.layernorm_cpu import layernorm_backward as kernel

        d = dy.shape[-1]
        dy2 = np.ascontiguousarray(dy).reshape(-1, d)  # (N, D)
        dx = np.empty_like(dy2)
        dgamma, dbeta = np.zeros(d), np.zeros(d)  # float64 sums
        xhat = np.ascontiguousarray(cache.xhat).reshape(-1, d)
        kernel(dy2, xhat, cache.rstd.reshape(-1), cache.gamma, dx, dgamma, dbeta)
        return dx.reshape(dy.shape), dgamma.astype(dy.dtype), dbeta.astype(dy.dtype)
    xp = namespace(dy)
    lead = tuple(range(dy.ndim - 1))
    dgamma = xp.sum(dy * cache.xhat, axis=lead)
    dbeta = xp.sum(dy, axis=lead)
    dx = _normalize_backward(dy * cache.gamma, cache.xhat, cache.rstd, (-1,))
    return dx, dgamma, dbeta


def _check_groupnorm(x: Array, gamma: Array, beta: Array, num_groups: int) -> None:
    check_floating(x, "x")
    check_ndim(x, 4, "x", "(B, C, H, W)")
    c = x.shape[1]
    if num_groups < 1 or c % num_groups:
        raise ValueError(f"num_groups must divide the {c} channels of x, got {num_groups}")
    check_dim(gamma, 0, c, "gamma", "channels of x")
    check_dim(beta, 0, c, "beta", "channels of x")


def groupnorm_forward(
    x: Array, gamma: Array, beta: Array, num_groups: int, eps: float = 1e-5
) -> tuple[Array, NormCache]:
    """Normalise each of ``num_groups`` channel groups over (C/G, H, W), then scale and shift.

    x (B, C, H, W), gamma (C,), beta (C,). Independent of the batch size, so it
    trains at batch 1 as well as at 64. Wu and He, "Group Normalization" (2018).
    """
    _check_groupnorm(x, gamma, beta, num_groups)
    b, c, h, w = x.shape
    xp = namespace(x)
    xg = xp.reshape(x, (b, num_groups, c // num_groups, h, w))  # (B, G, C/G, H, W)
    xhat, rstd = _normalize(xg, (2, 3, 4), eps)
    xhat = xp.reshape(xhat, (b, c, h, w))
    y = xhat * gamma[:, None, None] + beta[:, None, None]
    return y, NormCache(xhat, rstd, gamma)


def groupnorm_backward(dy: Array, cache: NormCache) -> tuple[Array, Array, Array]:
    """Gradients (dx, dgamma, dbeta) of group normalisation."""
    xp = namespace(dy)
    b, c, h, w = dy.shape
    g = cache.rstd.shape[1]
    dgamma = xp.sum(dy * cache.xhat, axis=(0, 2, 3))
    dbeta = xp.sum(dy, axis=(0, 2, 3))
    dxhat = xp.reshape(dy * cache.gamma[:, None, None], (b, g, c // g, h, w))
    xhat = xp.reshape(cache.xhat, (b, g, c // g, h, w))
    dx = _normalize_backward(dxhat, xhat, cache.rstd, (2, 3, 4))
    return xp.reshape(dx, (b, c, h, w)), dgamma, dbeta


# --- the backbone's relu(skip + GN(x)), one op --------------------------------------------


class GroupNormReluCache(NamedTuple):
    norm: NormCache  # xhat (B, C, H, W), rstd (B, G, 1, 1, 1), gamma (C,)
    positive: Array  # bool (B, C, H, W): where the ReLU passed its input


def groupnorm_relu_forward(
    x: Array,
    gamma: Array,
    beta: Array,
    num_groups: int,
    skip: Array | None = None,
    eps: float = 1e-5,
) -> tuple[Array, GroupNormReluCache]:
    """y = relu(GN(x) * gamma + beta + skip): group normalisation, residual add, ReLU.

    x (B, C, H, W), gamma (C,), beta (C,), skip (B, C, H, W) or None (no residual).
    Returns y (B, C, H, W). On NumPy arrays of one float dtype a fused Numba kernel
    runs; elsewhere the composition of ``groupnorm_forward`` and ``relu_forward``.
    Wu and He, "Group Normalization" (2018); He et al., "Deep Residual Learning" (2016).
    """
    _check_groupnorm(x, gamma, beta, num_groups)
    if skip is not None and tuple(skip.shape) != tuple(x.shape):
        raise ValueError(f"skip must have the shape of x {tuple(x.shape)}, got {skip.shape}")
    if _fused(x, gamma, beta, skip):
        from minidetr.kernels.groupnorm_cpu import groupnorm_relu_forward as kernel

        x = np.ascontiguousarray(x)
        skip = None if skip is None else np.ascontiguousarray(skip)
        y, xhat = np.empty_like(x), np.empty_like(x)
        positive = np.empty(x.shape, dtype=bool)
        rstd = np.empty((x.shape[0], num_groups))  # (B, G), float64
        kernel(x, gamma, beta, eps, skip, y, xhat, rstd, positive)
        rstd = rstd.astype(x.dtype).reshape(*rstd.shape, 1, 1, 1)  # (B, G, 1, 1, 1)
        return y, GroupNormReluCache(NormCache(xhat, rstd, gamma), positive)
    h, norm = groupnorm_forward(x, gamma, beta, num_groups, eps)
    if skip is not None:
        h = h + skip
    y, relu = relu_forward(h)
    return y, GroupNormReluCache(norm, relu.positive)


def groupnorm_relu_backward(
    dy: Array, cache: GroupNormReluCache
) -> tuple[Array, Array, Array, Array]:
    """Gradients (dx, dgamma, dbeta, dskip) of ``groupnorm_relu_forward``.

    dskip (B, C, H, W) is the gradient that reaches the ReLU's input (zero if no skip
    was added, in which case the caller drops it).
    """
    norm = cache.norm
    if _fused(dy, norm.xhat, norm.gamma):
        from minidetr.kernels.groupnorm_cpu import groupnorm_relu_backward as kernel

        rstd = norm.rstd.reshape(norm.rstd.shape[:2])  # (B, G)
        dx, dh = np.empty_like(norm.xhat), np.empty_like(norm.xhat)
        dgamma, dbeta = np.zeros(dy.shape[1]), np.zeros(dy.shape[1])  # float64 sums
        dy = np.ascontiguousarray(dy)
        kernel(dy, norm.xhat, rstd, norm.gamma, cache.positive, dx, dh, dgamma, dbeta)
        return dx, dgamma.astype(dy.dtype), dbeta.astype(dy.dtype), dh
    (dh,) = relu_backward(dy, ReluCache(cache.positive))
    dx, dgamma, dbeta = groupnorm_backward(dh, norm)
    return dx, dgamma, dbeta, dh
