"""Scaled dot-product attention and DETR's multi-head attention.

Dimension letters: B batch, M heads, Lq queries, Lk keys, D model width,
d = D / M head width, dv value width.

Masks follow PyTorch's ``scaled_dot_product_attention``: a boolean ``mask`` is
True where attention is allowed. ``key_padding_mask`` follows
``nn.MultiheadAttention`` and DETR: True marks a padded key that no query may see.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from minidetr.attention.record import extra_attention_grad, record_attention_grad
from minidetr.backend import Array, compiled_kernel, namespace
from minidetr.checks import check_dim, check_floating, check_ndim
from minidetr.kernels.attention_softmax_cpu import (
    normalize_rows,
    scale_and_shift_rows,
    softmax_backward_rows,
)
from minidetr.ops.linear import LinearCache, linear_backward, linear_forward


class AttentionCache(NamedTuple):
    q: Array  # (..., Lq, d)
    k: Array  # (..., Lk, d)
    v: Array  # (..., Lk, dv)
    p: Array  # (..., Lq, Lk) attention weights, exactly 0 where masked
    scale: float


def _product(a: Array, b: Array, like: Array) -> Array:
    """a @ b, written in the memory layout of ``like`` when it is a NumPy array of the
    product's shape and dtype.

    Multi-head attention's q, k and v are the heads of (B, L, D) projections: permuted
    views. NumPy lays a fresh product out in C order (B, M, L, d), so merging the heads
    back into (B, L, D) copies it; written in the layout of q (or k, v) instead, the
    merge is a view. BLAS writes either layout directly, so the values are the same.
    """
    if (
        type(like) is np.ndarray
        and type(a) is np.ndarray
        and type(b) is np.ndarray
        and a.dtype == b.dtype == like.dtype
        and a.shape[:-1] == like.shape[:-1]
        and b.shape[:-2] == like.shape[:-2]
        and b.shape[-1] == like.shape[-1]
    ):
        return np.matmul(a, b, out=np.empty_like(like))  # (..., L, d), strides as like's
    return namespace(a, b).matmul(a, b)


def scaled_dot_product_attention_forward(
    q: Array, k: Array, v: Array, mask: Array | None = None
) -> tuple[Array, AttentionCache]:
    """out = softmax(q k^T / sqrt(d), masked) v.

    q (..., Lq, d), k (..., Lk, d), v (..., Lk, dv); ``mask`` boolean, broadcastable
    to (..., Lq, Lk), True = may attend. A query row with no allowed key gets
    zero weights and a zero output, not NaN. Vaswani et al., "Attention Is All
    You Need" (2017), eq. 1.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_floating(t, name)
        if t.ndim < 2:
            raise ValueError(f"{name} must have at least 2 dimensions (..., L, d), got {t.shape}")
    check_dim(k, -1, q.shape[-1], "k", "head width of q")
    check_dim(v, -2, k.shape[-2], "v", "number of keys in k")
    xp = namespace(q, k, v)
    scale = 1.0 / math.sqrt(q.shape[-1])
    fast = mask is None and k.shape[-2] > 0 and q.dtype == k.dtype  # no keys: the array code
    if fast and compiled_kernel(q, k, v) == "numba":
        # (..., Lq, Lk) in C order, so that its rows can be viewed flat: matmul keeps the
        # batch axes' memory order of permuted inputs, which would make reshape a copy
        batch = np.broadcast_shapes(q.shape[:-2], k.shape[:-2])
        p = np.matmul(q, k.mT, out=np.empty((*batch, q.shape[-2], k.shape[-2]), dtype=q.dtype))
        rows = p.reshape(-1, p.shape[-1])  # (R, Lk) view: the softmax runs in place
        scale_and_shift_rows(rows, p.dtype.type(scale))  # the scale rounded as NumPy would
        np.exp(p, out=p)
        normalize_rows(rows)
        return _product(p, v, q), AttentionCache(q, k, v, p, scale)  # (..., Lq, dv)
    s = xp.matmul(q, k.mT) * scale  # (..., Lq, Lk)
    if mask is None:
        s = s - xp.max(s, axis=-1, keepdims=True)
        e = xp.exp(s)
    else:
        if mask.dtype != xp.bool:
            raise TypeError(f"mask must be boolean (True = may attend), got {mask.dtype}")
        try:
            mask = xp.broadcast_to(mask, s.shape)
        except ValueError as err:
            raise ValueError(f"mask of shape {mask.shape} does not broadcast to {s.shape}") from err
        neg_inf = xp.asarray(-math.inf, dtype=s.dtype, device=s.device)
        m = xp.max(xp.where(mask, s, neg_inf), axis=-1, keepdims=True)
        m = xp.where(xp.isfinite(m), m, xp.zeros_like(m))  # rows with no allowed key
        e = xp.exp(xp.where(mask, s - m, neg_inf))  # exactly 0 where masked
    denom = xp.sum(e, axis=-1, keepdims=True)
    p = e / xp.where(denom > 0, denom, xp.ones_like(denom))  # (..., Lq, Lk)
    out = _product(p, v, q)  # (..., Lq, dv)
    return out, AttentionCache(q, k, v, p, scale)


def scaled_dot_product_attention_backward(
    dout: Array, cache: AttentionCache
) -> tuple[Array, Array, Array]:
    """Gradients (dq, dk, dv); masked pairs receive exactly zero."""
    xp = namespace(dout)
    q, k, v, p = cache.q, cache.k, cache.v, cache.p
    dv = _product(p.mT, dout, v)  # (..., Lk, dv)
    dp = xp.matmul(dout, v.mT)  # (..., Lq, Lk)
    extra = extra_attention_grad(cache)  # a loss on the map itself (attention regularisation)
    if extra is not None:
        dp = dp + extra
    record_attention_grad(cache, dp)  # kept only while explanations record dL/dA
    same = p.dtype == dp.dtype and p.shape == dp.shape and p.shape[-1] > 0
    if same and compiled_kernel(p, dp) == "numba":
        ds = np.empty(p.shape, dtype=p.dtype)  # one loop over the rows, below
        softmax_backward_rows(
            np.ascontiguousarray(p).reshape(-1, p.shape[-1]),
            np.ascontiguousarray(dp).reshape(-1, p.shape[-1]),
            cache.scale,
            ds.reshape(-1, p.shape[-1]),
        )
    else:  # softmax backward
        ds = p * (dp - xp.sum(dp * p, axis=-1, keepdims=True)) * cache.scale
    dq = _product(ds, k, q)  # (..., Lq, d)
    dk = _product(ds.mT, q, k)  # (..., Lk, d)
    dq, dk, dv = _unbroadcast(dq, q.shape), _unbroadcast(dk, k.shape), _unbroadcast(dv, v.shape)
    return dq, dk, dv


def _unbroadcast(g: Array, shape: tuple[int, ...]) -> Array:
    """Sum ``g`` over the axes that broadcasting added to reach it from ``shape``."""
    xp = namespace(g)
    while g.ndim > len(shape):
        g = xp.sum(g, axis=0)
    for axis, size in enumerate(shape):
        if size == 1 and g.shape[axis] != 1:
            g = xp.sum(g, axis=axis, keepdims=True)
    return g


class MultiHeadAttentionCache(NamedTuple):
    q_proj: LinearCache
    k_proj: LinearCache
    v_proj: LinearCache
    attention: AttentionCache
    out_proj: LinearCache
    num_heads: int


def _split_heads(x: Array, num_heads: int) -> Array:
    xp = namespace(x)
    b, n, d = x.shape
    return xp.permute_dims(xp.reshape(x, (b, n, num_heads, d // num_heads)), (0, 2, 1, 3))


def _merge_heads(x: Array) -> Array:
    xp = namespace(x)
    b, m, n, dh = x.shape
    return xp.reshape(xp.permute_dims(x, (0, 2, 1, 3)), (b, n, m * dh))


def multi_head_attention_forward(
    query: Array,
    key: Array,
    value: Array,
    in_proj_weight: Array,
    in_proj_bias: Array,
    out_proj_weight: Array,
    out_proj_bias: Array,
    *,
    num_heads: int,
    query_pos: Array | None = None,
    key_pos: Array | None = None,
    attn_mask: Array | None = None,
    key_padding_mask: Array | None = None,
) -> tuple[Array, MultiHeadAttentionCache]:
    """MultiHead(q, k, v) = Concat(head_1..head_M) W_o, head_i = Attention(q Wq_i, k Wk_i, v Wv_i).

    As DETR uses it: positional embeddings are added to queries and keys, not to
    values. query (B, Lq, D), key and value (B, Lk, D); in_proj_weight (3D, D) and
    in_proj_bias (3D,) stack the q, k, v projections as ``nn.MultiheadAttention``
    does; out_proj_weight (D, D), out_proj_bias (D,). ``attn_mask`` boolean
    broadcastable to (B, M, Lq, Lk), True = may attend; ``key_padding_mask`` (B, Lk)
    boolean, True = padded. Returns (B, Lq, D). The gradient of ``query_pos`` equals
    that of ``query`` (and likewise for keys), since they enter as a sum.
    Vaswani et al. (2017) section 3.2.2; Carion et al., "End-to-End Object
    Detection with Transformers" (2020).
    """
    check_ndim(query, 3, "query", "(B, Lq, D)")
    check_ndim(key, 3, "key", "(B, Lk, D)")
    check_ndim(value, 3, "value", "(B, Lk, D)")
    b, _, d = query.shape
    if num_heads < 1 or d % num_heads:
        raise ValueError(f"num_heads must divide the model width {d}, got {num_heads}")
    check_dim(key, -1, d, "key", "model width")
    check_dim(value, 1, key.shape[1], "value", "number of keys")
    check_ndim(in_proj_weight, 2, "in_proj_weight", "(3D, D)")
    check_dim(in_proj_weight, 0, 3 * d, "in_proj_weight", "3 x model width")
    namespace(query, key, value)  # one array library for all three
    q_in = query if query_pos is None else query + query_pos
    k_in = key if key_pos is None else key + key_pos
    q, q_cache = linear_forward(q_in, in_proj_weight[:d, :], in_proj_bias[:d])  # (B, Lq, D)
    k, k_cache = linear_forward(k_in, in_proj_weight[d : 2 * d, :], in_proj_bias[d : 2 * d])
    v, v_cache = linear_forward(value, in_proj_weight[2 * d :, :], in_proj_bias[2 * d :])
    mask = attn_mask
    if key_padding_mask is not None:
        check_ndim(key_padding_mask, 2, "key_padding_mask", "(B, Lk)")
        if tuple(key_padding_mask.shape) != (b, key.shape[1]):
            want, got = (b, key.shape[1]), tuple(key_padding_mask.shape)
            raise ValueError(f"key_padding_mask must have shape {want}, got {got}")
        allowed = ~key_padding_mask[:, None, None, :]  # (B, 1, 1, Lk)
        mask = allowed if mask is None else (mask & allowed)
    heads, a_cache = scaled_dot_product_attention_forward(
        _split_heads(q, num_heads), _split_heads(k, num_heads), _split_heads(v, num_heads), mask
    )  # (B, M, Lq, d)
    out, o_cache = linear_forward(_merge_heads(heads), out_proj_weight, out_proj_bias)  # (B, Lq, D)
    return out, MultiHeadAttentionCache(q_cache, k_cache, v_cache, a_cache, o_cache, num_heads)


def multi_head_attention_backward(
    dout: Array, cache: MultiHeadAttentionCache
) -> tuple[Array, Array, Array, Array, Array, Array, Array]:
    """Gradients (dquery, dkey, dvalue, din_proj_w, din_proj_b, dout_proj_w, dout_proj_b)."""
    xp = namespace(dout)
    m = cache.num_heads
    dheads, dout_w, dout_b = linear_backward(dout, cache.out_proj)
    dq, dk, dv = scaled_dot_product_attention_backward(_split_heads(dheads, m), cache.attention)
    dquery, dwq, dbq = linear_backward(_merge_heads(dq), cache.q_proj)
    dkey, dwk, dbk = linear_backward(_merge_heads(dk), cache.k_proj)
    dvalue, dwv, dbv = linear_backward(_merge_heads(dv), cache.v_proj)
    din_w = xp.concat([dwq, dwk, dwv], axis=0)  # (3D, D)
    din_b = xp.concat([dbq, dbk, dbv], axis=0)  # (3D,)
    return dquery, dkey, dvalue, din_w, din_b, dout_w, dout_b
