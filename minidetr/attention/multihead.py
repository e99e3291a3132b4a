"""Multi-head attention with an exchangeable core: dense softmax or one of the efficient ops.

MultiHead(q, k, v) = Concat(head_1..head_M) W_o, head_i = core(q Wq_i, k Wk_i, v Wv_i), with the
projections, positional embeddings and parameter layout of
:func:`~minidetr.attention.dense.multi_head_attention_forward`, so a DETR encoder swaps its
attention by name (``ModelConfig.encoder_attention``) and keeps its weights' shapes. Linformer
adds two (r, Lk) projections shared by the heads; Performer draws a fixed projection per layer.

Dimension letters: B batch, M heads, Lq queries, Lk keys, D width, Dh = D / M head width,
r Linformer length, m random features; the keys form an H x W grid (row-major).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from minidetr.attention import (
    dense,
    hierarchical,
    linear,
    linformer,
    performer,
    sparse,
    window,
)
from minidetr.attention.dense import _merge_heads, _split_heads
from minidetr.backend import Array, namespace
from minidetr.checks import check_ndim
from minidetr.ops.linear import LinearCache, linear_backward, linear_forward

KINDS = ("softmax", "linear", "performer", "topk", "window", "linformer", "hierarchical")


class CoreSettings(NamedTuple):
    """How each efficient core is configured inside the detector (one setting per kind)."""

    features: int = 64  # performer: random features m
    top_k: int = 8  # topk: keys kept per query
    window: int = 1  # window: (2 w + 1)^2 square on the token grid
    rank: int = 8  # linformer: projected length r
    cell: int = 2  # hierarchical: cell side c
    keep: int = 2  # hierarchical: fine cells kept per query


DEFAULT_SETTINGS = CoreSettings()


def core_forward(
    kind: str,
    q: Array,
    k: Array,
    v: Array,
    *,
    grid: tuple[int, int] | None = None,
    E: Array | None = None,
    F: Array | None = None,
    settings: CoreSettings = DEFAULT_SETTINGS,
    seed: int = 0,
) -> tuple[Array, Any]:
    """One attention core on heads q (B, M, Lq, Dh), k (B, M, Lk, Dh), v (B, M, Lk, Dh)."""
    if kind == "softmax":
        return dense.scaled_dot_product_attention_forward(q, k, v)
    if kind == "linear":
        return linear.linear_attention_forward(q, k, v)
    if kind == "performer":
        w = performer.draw_projection(q.shape[-1], settings.features, seed=seed, like=q)
        return performer.performer_attention_forward(q, k, v, namespace(q).astype(w, q.dtype))
    if kind == "topk":
        return sparse.topk_attention_forward(q, k, v, top_k=settings.top_k)
    if kind == "window":
        return window.window_attention_forward(q, k, v, window=settings.window, grid=grid)
    if kind == "linformer":
        return linformer.linformer_attention_forward(q, k, v, E, F)
    if kind == "hierarchical":
        return hierarchical.hierarchical_attention_forward(
            q, k, v, grid=grid, cell=settings.cell, keep=settings.keep
        )
    raise ValueError(f"attention kind must be one of {KINDS}, got {kind!r}")


_BACKWARD = {
    "softmax": dense.scaled_dot_product_attention_backward,
    "linear": linear.linear_attention_backward,
    "performer": performer.performer_attention_backward,
    "topk": sparse.topk_attention_backward,
    "window": window.window_attention_backward,
    "linformer": linformer.linformer_attention_backward,
    "hierarchical": hierarchical.hierarchical_attention_backward,
}


class EfficientMultiHeadCache(NamedTuple):
    q_proj: LinearCache
    k_proj: LinearCache
    v_proj: LinearCache
    core: Any
    out_proj: LinearCache
    num_heads: int
    kind: str


def efficient_multi_head_attention_forward(
    query: Array,
    key: Array,
    value: Array,
    in_proj_weight: Array,
    in_proj_bias: Array,
    out_proj_weight: Array,
    out_proj_bias: Array,
    *,
    num_heads: int,
    kind: str,
    query_pos: Array | None = None,
    key_pos: Array | None = None,
    grid: tuple[int, int] | None = None,
    E: Array | None = None,
    F: Array | None = None,
    settings: CoreSettings = DEFAULT_SETTINGS,
    seed: int = 0,
) -> tuple[Array, EfficientMultiHeadCache]:
    """DETR's multi-head attention with the core ``kind`` (one of ``KINDS``).

    query (B, Lq, D), key and value (B, Lk, D); parameters as in
    :func:`~minidetr.attention.dense.multi_head_attention_forward`; ``grid`` (H, W) of the
    keys for ``window`` and ``hierarchical``; E, F (r, Lk) for ``linformer``; ``seed``
    fixes Performer's projection. No masks: the efficient cores take none. Returns (B, Lq, D).
    """
    if kind not in KINDS:
        raise ValueError(f"attention kind must be one of {KINDS}, got {kind!r}")
    check_ndim(query, 3, "query", "(B, Lq, D)")
    check_ndim(key, 3, "key", "(B, Lk, D)")
    d = query.shape[-1]
    if num_heads < 1 or d % num_heads:
        raise ValueError(f"num_heads must divide the model width {d}, got {num_heads}")
    q_in = query if query_pos is None else query + query_pos
    k_in = key if key_pos is None else key + key_pos
    q, q_cache = linear_forward(q_in, in_proj_weight[:d, :], in_proj_bias[:d])  # (B, Lq, D)
    k, k_cache = linear_forward(k_in, in_proj_weight[d : 2 * d, :], in_proj_bias[d : 2 * d])
    v, v_cache = linear_forward(value, in_proj_weight[2 * d :, :], in_proj_bias[2 * d :])
    heads, core = core_forward(
        kind,
        _split_heads(q, num_heads),
        _split_heads(k, num_heads),
        _split_heads(v, num_heads),
        grid=grid,
        E=E,
        F=F,
        settings=settings,
        seed=seed,
    )  # (B, M, Lq, Dh)
    out, o_cache = linear_forward(_merge_heads(heads), out_proj_weight, out_proj_bias)
    return out, EfficientMultiHeadCache(q_cache, k_cache, v_cache, core, o_cache, num_heads, kind)


def efficient_multi_head_attention_backward(dout: Array, cache: EfficientMultiHeadCache) -> tuple:
    """(dquery, dkey, dvalue, din_proj_w, din_proj_b, dout_proj_w, dout_proj_b, dE, dF).

    dE and dF are None unless the core is ``linformer``.
    """
    xp = namespace(dout)
    m = cache.num_heads
    dheads, dout_w, dout_b = linear_backward(dout, cache.out_proj)
    grads = _BACKWARD[cache.kind](_split_heads(dheads, m), cache.core)
    dq, dk, dv = grads[:3]
    de, df = grads[3:5] if cache.kind == "linformer" else (None, None)
    dquery, dwq, dbq = linear_backward(_merge_heads(dq), cache.q_proj)
    dkey, dwk, dbk = linear_backward(_merge_heads(dk), cache.k_proj)
    dvalue, dwv, dbv = linear_backward(_merge_heads(dv), cache.v_proj)
    din_w = xp.concat([dwq, dwk, dwv], axis=0)  # (3D, D)
    din_b = xp.concat([dbq, dbk, dbv], axis=0)  # (3D,)
    return dquery, dkey, dvalue, din_w, din_b, dout_w, dout_b, de, df
