"""Linformer: attention over r learned projections of the keys and values.

out = softmax(q (E k)^T / sqrt(d)) (F v), with E, F (r, Lk): the Lk keys are mixed
into r << Lk "summary" keys, so the score matrix is (Lq, r) and the cost O(Lq r d).
Wang et al., "Linformer: Self-Attention with Linear Complexity" (2020), eq. 7.

Dimension letters: Lq queries, Lk keys, r projected length, d head width, dv value width.
"""

from __future__ import annotations

from typing import NamedTuple

from minidetr.attention.dense import (
    AttentionCache,
    _unbroadcast,
    scaled_dot_product_attention_backward,
    scaled_dot_product_attention_forward,
)
from minidetr.attention.linear import _check_qkv
from minidetr.backend import Array, namespace
from minidetr.checks import check_dim, check_floating, check_ndim


class LinformerCache(NamedTuple):
    k: Array  # (..., Lk, d)
    v: Array  # (..., Lk, dv)
    e: Array  # (r, Lk)
    f: Array  # (r, Lk)
    attention: AttentionCache  # over the projected keys (..., r, d) and values (..., r, dv)


def linformer_attention_forward(
    q: Array, k: Array, v: Array, E: Array, F: Array
) -> tuple[Array, LinformerCache]:
    """out = softmax(q (E k)^T / sqrt(d)) (F v).

    q (..., Lq, d), k (..., Lk, d), v (..., Lk, dv), E and F (r, Lk) (learned, shared
    by the leading dimensions). Returns (..., Lq, dv).
    """
    _check_qkv(q, k, v, False)
    for name, t in (("E", E), ("F", F)):
        check_floating(t, name)
        check_ndim(t, 2, name, "(r, Lk)")
        check_dim(t, 1, k.shape[-2], name, "number of keys Lk")
    check_dim(F, 0, E.shape[0], "F", "projected length r of E")
    xp = namespace(q, k, v, E, F)
    kp = xp.matmul(E, k)  # (..., r, d)
    vp = xp.matmul(F, v)  # (..., r, dv)
    out, cache = scaled_dot_product_attention_forward(q, kp, vp)
    return out, LinformerCache(k, v, E, F, cache)


def linformer_attention_backward(
    dout: Array, cache: LinformerCache
) -> tuple[Array, Array, Array, Array, Array]:
    """Gradients (dq, dk, dv, dE, dF); dE and dF sum over the leading dimensions."""
    xp = namespace(dout)
    dq, dkp, dvp = scaled_dot_product_attention_backward(dout, cache.attention)
    dk = _unbroadcast(xp.matmul(cache.e.mT, dkp), cache.k.shape)  # (..., Lk, d)
    dv = _unbroadcast(xp.matmul(cache.f.mT, dvp), cache.v.shape)  # (..., Lk, dv)
    de = _unbroadcast(xp.matmul(dkp, cache.k.mT), cache.e.shape)  # (r, Lk)
    df = _unbroadcast(xp.matmul(dvp, cache.v.mT), cache.f.shape)  # (r, Lk)
    return dq, dk, dv, de, df
