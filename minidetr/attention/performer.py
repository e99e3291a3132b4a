"""Random-feature attention (Performer's FAVOR+ and random Fourier features).

softmax(q k^T / sqrt(d)) v is estimated by kernelized attention with random features
phi such that E[phi(x)^T phi(y)] = exp(x^T y): with x = q / d^(1/4) and y = k / d^(1/4)
(the 1/sqrt(d) split evenly between queries and keys) that is exp(q^T k / sqrt(d)).

* ``"positive"`` (FAVOR+): phi(x) = exp(W x - |x|^2 / 2) / sqrt(m), every feature > 0,
  so the estimated normaliser is positive.
* ``"trig"`` (random Fourier features): phi(x) = exp(|x|^2 / 2) [cos W x, sin W x] / sqrt(m),
  2m features of either sign; the normaliser can come out near 0 or negative, which
  is why its error blows up where softmax weights are small (Choromanski et al. 2021, sec. 2.3).

Numerical stabilisation. Any factor shared by the numerator and the normaliser
cancels. Positive features subtract from each query's exponents their maximum over
the m features (a factor per query) and from the keys' exponents their maximum over
all keys and features (one factor for the whole sequence); trig features drop the
per-query exp(|x|^2 / 2) and divide the keys' exp(|y|^2 / 2) by its maximum. The output
is unchanged, its gradient with respect to these constants is zero, and no exp overflows.

Dimension letters: Lq queries, Lk keys, d head width, dv value width, m random
features (rows of the projection W, shape (m, d)).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from minidetr.attention.dense import _unbroadcast
from minidetr.attention.linear import (
    KernelizedCache,
    _check_qkv,
    kernelized_attention_backward,
    kernelized_attention_forward,
)
from minidetr.backend import Array, asarray, namespace
from minidetr.checks import check_dim, check_floating, check_ndim

KINDS = ("positive", "trig")


def draw_projection(
    d: int, m: int, *, orthogonal: bool = True, seed: int = 0, like: Array | None = None
) -> Array:
    """W (m, d): rows w_r with E[w_r w_r^T] = I, for random features.

    ``orthogonal=True`` stacks blocks of d exactly orthogonal directions (QR of a
    Gaussian matrix), each row rescaled to a chi(d)-distributed norm so that it has the
    length of a Gaussian vector (the last block keeps only the rows it needs);
    ``orthogonal=False`` draws iid N(0, I) rows. Returns float64 NumPy, or an array
    in the namespace and on the device of ``like``. Choromanski et al., "Rethinking
    Attention with Performers" (ICLR 2021), sec. 2.4 (orthogonal random features).
    """
    for name, value in (("d", d), ("m", m)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    rng = np.random.default_rng(seed)
    if not orthogonal:
        w = rng.standard_normal((m, d))
    else:
        blocks = []
        for start in range(0, m, d):
            g = rng.standard_normal((d, d))
            qmat, r = np.linalg.qr(g)
            qmat = qmat * np.sign(np.diag(r))  # Haar-distributed rotation
            blocks.append(qmat.T[: min(d, m - start)])  # rows orthonormal
        norms = np.linalg.norm(rng.standard_normal((m, d)), axis=1)  # chi(d) lengths
        w = np.concatenate(blocks, axis=0) * norms[:, None]
    return w if like is None else asarray(w, like=like)


class FeatureCache(NamedTuple):
    x: Array  # (..., N, d) scaled input x = q / d^(1/4) or k / d^(1/4)
    u: Array  # (..., N, m) projections W x
    phi: Array  # (..., N, m) positive features, or (..., N, 2m) [cos, sin] / sqrt(m)
    amp: Array | None  # (..., N, 1) the keys' trig amplitude exp(|x|^2/2 - c), else None


def random_features_forward(
    x: Array, projection: Array, *, kind: str, is_query: bool, stabilize: bool = True
) -> tuple[Array, FeatureCache]:
    """phi(x) (..., N, m or 2m) of the module docstring for x (..., N, d), W (m, d).

    Stabilised per query row (``is_query``) or over a whole key sequence, as the module
    docstring says; ``stabilize=False`` returns the plain estimator, for tests and plots.
    """
    xp = namespace(x, projection)
    m = projection.shape[0]
    u = xp.matmul(x, projection.mT)  # (..., N, m)
    half_sq = xp.sum(x * x, axis=-1, keepdims=True) / 2  # (..., N, 1)
    if kind == "positive":
        e = u - half_sq  # (..., N, m)
        if not stabilize:
            c = xp.zeros_like(half_sq)
        elif is_query:
            c = xp.max(e, axis=-1, keepdims=True)  # (..., N, 1) per query
        else:
            c = xp.max(xp.max(e, axis=-1, keepdims=True), axis=-2, keepdims=True)  # (..., 1, 1)
        phi = xp.exp(e - c) / math.sqrt(m)
        return phi, FeatureCache(x, u, phi, None)
    trig = xp.concat([xp.cos(u), xp.sin(u)], axis=-1) / math.sqrt(m)  # (..., N, 2m)
    if is_query and stabilize:
        return trig, FeatureCache(x, u, trig, None)
    shift = xp.max(half_sq, axis=-2, keepdims=True) if stabilize else xp.zeros_like(half_sq)
    amp = xp.exp(half_sq - shift)  # (..., N, 1)
    return amp * trig, FeatureCache(x, u, trig, amp)


def random_features_backward(dphi: Array, cache: FeatureCache, projection: Array) -> Array:
    """dx of :func:`random_features_forward` (the stabilising constants carry no gradient)."""
    xp = namespace(dphi)
    x, u = cache.x, cache.u
    m = u.shape[-1]
    if cache.phi.shape[-1] == m:  # positive: dphi/de = phi, e = W x - |x|^2 / 2
        de = dphi * cache.phi  # (..., N, m)
        return xp.matmul(de, projection) - xp.sum(de, axis=-1, keepdims=True) * x
    dx = xp.zeros_like(x)
    if cache.amp is not None:  # keys: phi = amp * trig, d amp / dx = amp * x
        dx = xp.sum(dphi * cache.phi, axis=-1, keepdims=True) * cache.amp * x
        dphi = dphi * cache.amp
    dcos, dsin = dphi[..., :m], dphi[..., m:]
    du = (dsin * xp.cos(u) - dcos * xp.sin(u)) / math.sqrt(m)  # (..., N, m)
    return dx + xp.matmul(du, projection)


class PerformerCache(NamedTuple):
    q_shape: tuple[int, ...]
    k_shape: tuple[int, ...]
    projection: Array  # (m, d)
    scale: float  # d^(-1/4)
    q_features: FeatureCache
    k_features: FeatureCache
    attention: KernelizedCache


def performer_attention_forward(
    q: Array, k: Array, v: Array, projection: Array, *, kind: str = "positive", causal: bool = False
) -> tuple[Array, PerformerCache]:
    """out ~ softmax(q k^T / sqrt(d)) v, as phi(q)^T sum_j phi(k_j) v_j^T / phi(q)^T sum_j phi(k_j).

    q (..., Lq, d), k (..., Lk, d), v (..., Lk, dv), ``projection`` (m, d) from
    :func:`draw_projection` (fixed: it gets no gradient); ``kind`` ``"positive"``
    (FAVOR+) or ``"trig"``; ``causal`` as in linear attention. Returns (..., Lq, dv).
    Costs O(N m (d + dv)). Choromanski et al., "Rethinking Attention with Performers"
    (ICLR 2021), sec. 2.2-2.4.
    """
    _check_qkv(q, k, v, causal)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    check_floating(projection, "projection")
    check_ndim(projection, 2, "projection", "(m, d)")
    check_dim(projection, 1, q.shape[-1], "projection", "head width d of q")
    namespace(q, k, v, projection)
    scale = q.shape[-1] ** -0.25
    fq, qc = random_features_forward(q * scale, projection, kind=kind, is_query=True)
    fk, kc = random_features_forward(k * scale, projection, kind=kind, is_query=False)
    out, cache = kernelized_attention_forward(fq, fk, v, causal=causal)
    return out, PerformerCache(tuple(q.shape), tuple(k.shape), projection, scale, qc, kc, cache)


def performer_attention_backward(dout: Array, cache: PerformerCache) -> tuple[Array, Array, Array]:
    """Gradients (dq, dk, dv) of :func:`performer_attention_forward` (projection fixed)."""
    dfq, dfk, dv = kernelized_attention_backward(dout, cache.attention)
    dq = random_features_backward(dfq, cache.q_features, cache.projection) * cache.scale
    dk = random_features_backward(dfk, cache.k_features, cache.projection) * cache.scale
    v_shape = cache.attention.v.shape
    return (
        _unbroadcast(dq, cache.q_shape),
        _unbroadcast(dk, cache.k_shape),
        _unbroadcast(dv, v_shape),
    )
