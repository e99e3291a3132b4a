"""Kernel (linear) attention: softmax's exp(q . k) replaced by a feature-map inner product.

out_i = phi(q_i)^T (sum_j phi(k_j) v_j^T) / phi(q_i)^T (sum_j phi(k_j)).

Multiplying in this order costs O(N F dv) instead of O(N^2 d): the (F, dv) sum over
keys is formed once and shared by every query, and the (Lq, Lk) matrix never exists.
The causal form replaces the sums by prefix sums over j <= i.

Dimension letters: Lq queries, Lk keys (Lq = Lk = L when causal), d head width,
dv value width, F features per token (F = d for ``"elu"`` and ``"relu"``). Leading
dimensions ``...`` (batch, heads) broadcast.

:func:`kernelized_attention_forward` takes features that are already computed; the
Performer's random features (``performer.py``) reuse it.
"""

from __future__ import annotations

from typing import NamedTuple

from minidetr.attention.dense import _unbroadcast
from minidetr.backend import Array, namespace
from minidetr.checks import check_dim, check_floating

FEATURE_MAPS = ("elu", "relu")


def _check_qkv(q: Array, k: Array, v: Array, causal: bool) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_floating(t, name)
        if t.ndim < 2:
            raise ValueError(f"{name} must have at least 2 dimensions (..., L, d), got {t.shape}")
    check_dim(k, -1, q.shape[-1], "k", "head width of q")
    check_dim(v, -2, k.shape[-2], "v", "number of keys in k")
    if causal and q.shape[-2] != k.shape[-2]:
        raise ValueError(
            f"causal attention needs as many queries as keys, got q {q.shape} and k {k.shape}"
        )


# ----------------------------------------------------------------------------- feature maps


def feature_map_forward(x: Array, feature_map: str) -> Array:
    """phi(x): elu(x) + 1 (``"elu"``, Katharopoulos et al. 2020) or max(x, 0) (``"relu"``)."""
    xp = namespace(x)
    zero = xp.zeros_like(x)
    if feature_map == "elu":
        return xp.where(x > 0, x + 1.0, xp.exp(xp.where(x > 0, zero, x)))
    if feature_map == "relu":
        return xp.where(x > 0, x, zero)
    raise ValueError(f"feature_map must be one of {FEATURE_MAPS}, got {feature_map!r}")


def feature_map_backward(dphi: Array, x: Array, feature_map: str) -> Array:
    """dx = dphi * phi'(x): phi' is 1 for x > 0, exp(x) (elu) or 0 (relu) otherwise."""
    xp = namespace(x)
    zero = xp.zeros_like(x)
    if feature_map == "elu":
        return dphi * xp.where(x > 0, zero + 1.0, xp.exp(xp.where(x > 0, zero, x)))
    return xp.where(x > 0, dphi, zero)


# ------------------------------------------------------------------ attention over features


class KernelizedCache(NamedTuple):
    fq: Array  # (..., Lq, F) query features
    fk: Array  # (..., Lk, F) key features
    v: Array  # (..., Lk, dv)
    kv: Array  # (..., F, dv), or (..., L, F, dv) prefix sums when causal
    z: Array  # (..., F), or (..., L, F) prefix sums when causal
    den: Array  # (..., Lq) normaliser, 1 where it was 0
    out: Array  # (..., Lq, dv)
    causal: bool


def _safe(den: Array) -> Array:
    """The normaliser with exact zeros replaced by 1 (a row that sees nothing outputs 0)."""
    xp = namespace(den)
    return xp.where(den == 0, xp.ones_like(den), den)


def kernelized_attention_forward(
    fq: Array, fk: Array, v: Array, *, causal: bool = False
) -> tuple[Array, KernelizedCache]:
    """out_i = fq_i^T sum_j fk_j v_j^T / fq_i^T sum_j fk_j (j <= i when causal).

    fq (..., Lq, F), fk (..., Lk, F), v (..., Lk, dv). Returns (..., Lq, dv) and the
    cache. Katharopoulos et al., "Transformers are RNNs" (2020), eqs. 4-6 and 9.
    """
    xp = namespace(fq, fk, v)
    if causal:
        outer = fk[..., :, :, None] * v[..., :, None, :]  # (..., L, F, dv)
        kv = xp.cumulative_sum(outer, axis=-3)  # (..., L, F, dv): S_i = sum_{j<=i}
        z = xp.cumulative_sum(fk, axis=-2)  # (..., L, F)
        num = xp.sum(fq[..., :, :, None] * kv, axis=-2)  # (..., L, dv)
        den = _safe(xp.sum(fq * z, axis=-1))  # (..., L)
    else:
        kv = xp.matmul(fk.mT, v)  # (..., F, dv)
        z = xp.sum(fk, axis=-2)  # (..., F)
        num = xp.matmul(fq, kv)  # (..., Lq, dv)
        den = _safe(xp.sum(fq * z[..., None, :], axis=-1))  # (..., Lq)
    out = num / den[..., None]  # (..., Lq, dv)
    return out, KernelizedCache(fq, fk, v, kv, z, den, out, causal)


def kernelized_attention_backward(
    dout: Array, cache: KernelizedCache
) -> tuple[Array, Array, Array]:
    """Gradients (dfq, dfk, dv), in the same O(N F dv) (prefix sums run backwards when causal)."""
    xp = namespace(dout)
    fq, fk, v, kv, z, den = cache.fq, cache.fk, cache.v, cache.kv, cache.z, cache.den
    dnum = dout / den[..., None]  # (..., Lq, dv)
    dden = -xp.sum(dout * cache.out, axis=-1) / den  # (..., Lq)
    if cache.causal:
        dfq = xp.sum(kv * dnum[..., :, None, :], axis=-1) + dden[..., None] * z  # (..., L, F)
        ds = fq[..., :, :, None] * dnum[..., :, None, :]  # (..., L, F, dv) dS_i
        dzi = dden[..., None] * fq  # (..., L, F)
        # S_i sums j <= i, so key j collects dS_i of every i >= j: a reversed prefix sum
        g = xp.flip(xp.cumulative_sum(xp.flip(ds, axis=-3), axis=-3), axis=-3)  # (..., L, F, dv)
        h = xp.flip(xp.cumulative_sum(xp.flip(dzi, axis=-2), axis=-2), axis=-2)  # (..., L, F)
        dfk = xp.sum(g * v[..., :, None, :], axis=-1) + h  # (..., L, F)
        dv = xp.sum(g * fk[..., :, :, None], axis=-2)  # (..., L, dv)
    else:
        dfq = xp.matmul(dnum, kv.mT) + dden[..., None] * z[..., None, :]  # (..., Lq, F)
        dkv = xp.matmul(fq.mT, dnum)  # (..., F, dv)
        dz = xp.sum(fq * dden[..., None], axis=-2)  # (..., F)
        dfk = xp.matmul(v, dkv.mT) + dz[..., None, :]  # (..., Lk, F)
        dv = xp.matmul(fk, dkv)  # (..., Lk, dv)
    return dfq, dfk, dv


# ------------------------------------------------------------------------- linear attention


class LinearAttentionCache(NamedTuple):
    q: Array  # (..., Lq, d)
    k: Array  # (..., Lk, d)
    feature_map: str
    attention: KernelizedCache


def linear_attention_forward(
    q: Array, k: Array, v: Array, *, feature_map: str = "elu", causal: bool = False
) -> tuple[Array, LinearAttentionCache]:
    """out_i = phi(q_i)^T sum_j phi(k_j) v_j^T / phi(q_i)^T sum_j phi(k_j), in O(N d dv).

    q (..., Lq, d), k (..., Lk, d), v (..., Lk, dv); ``feature_map`` ``"elu"``
    (phi = elu + 1) or ``"relu"``; ``causal`` restricts query i to keys j <= i (needs
    Lq = Lk). A query whose features meet no key's (possible with relu) outputs 0.
    Returns (..., Lq, dv). Katharopoulos et al., "Transformers are RNNs: Fast
    Autoregressive Transformers with Linear Attention" (ICML 2020).
    """
    _check_qkv(q, k, v, causal)
    if feature_map not in FEATURE_MAPS:
        raise ValueError(f"feature_map must be one of {FEATURE_MAPS}, got {feature_map!r}")
    namespace(q, k, v)
    fq, fk = feature_map_forward(q, feature_map), feature_map_forward(k, feature_map)
    out, cache = kernelized_attention_forward(fq, fk, v, causal=causal)
    return out, LinearAttentionCache(q, k, feature_map, cache)


def linear_attention_backward(
    dout: Array, cache: LinearAttentionCache
) -> tuple[Array, Array, Array]:
    """Gradients (dq, dk, dv) of :func:`linear_attention_forward`."""
    dfq, dfk, dv = kernelized_attention_backward(dout, cache.attention)
    dq = feature_map_backward(dfq, cache.q, cache.feature_map)
    dk = feature_map_backward(dfk, cache.k, cache.feature_map)
    v_shape = cache.attention.v.shape
    return (
        _unbroadcast(dq, cache.q.shape),
        _unbroadcast(dk, cache.k.shape),
        _unbroadcast(dv, v_shape),
    )
