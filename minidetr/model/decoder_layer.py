"""One decoder layer: the queries talk to each other, then read the memory.

    tgt = LN(tgt + SelfAttn(q = k = tgt + qpos, v = tgt, mask))
    tgt = LN(tgt + CrossAttn(q = tgt + qpos, memory, reference boxes))
    tgt = LN(tgt + FFN(tgt))

The self-attention is always dense (the mask keeps denoising groups apart);
the cross-attention is the model's :class:`~minidetr.model.attention_kind.AttentionKind`.
A layer's inputs come in two bundles: :class:`LayerQueries` (what changes from
layer to layer) and :class:`~minidetr.model.memory.Memory` (the same for all).
Carion et al. (2020), ``TransformerDecoderLayer``; Zhu et al. (2021),
``DeformableTransformerDecoderLayer``.

Shapes: B batch, N queries in the decoder, S memory tokens, D width.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from minidetr.attention import MultiHeadAttentionCache
from minidetr.backend import Array
from minidetr.model.attention_kind import (
    AttentionKind,
    init_attention,
    self_attention_backward,
    self_attention_forward,
)
from minidetr.model.memory import Memory
from minidetr.model.sublayers import (
    AddNormCache,
    FfnCache,
    RunContext,
    add_norm_backward,
    add_norm_forward,
    ffn_backward,
    ffn_forward,
    init_ffn_and_norms,
)


class LayerQueries(NamedTuple):
    """One decoder layer's queries: content, position, reference box, self-attention mask."""

    tgt: Array  # (B, N, D) content, the previous layer's output
    pos: Array  # (B or 1, N, D) positional queries
    ref_boxes: Array | None  # (B, N, 4) cxcywh in [0, 1] (anchor queries), or None
    self_mask: Array | None  # (N, N) True = may attend, or None


def init_decoder_layers(cfg: Any, rng: np.random.Generator, kind: AttentionKind) -> dict:
    """``decoder.layers.i``: self- and cross-attention, three LayerNorms and the FFN."""
    out: dict = {}
    for i in range(cfg.num_decoder_layers):
        name = f"decoder.layers.{i}"
        init_attention(out, f"{name}.self_attn", cfg, rng)
        kind.cross_init(out, f"{name}.cross_attn", cfg, rng)
        init_ffn_and_norms(out, name, cfg, rng, 3)
    return out


class DecoderLayerCache(NamedTuple):
    self_attn: MultiHeadAttentionCache
    norm1: AddNormCache
    cross_attn: Any
    norm2: AddNormCache
    ffn: FfnCache
    norm3: AddNormCache


def decoder_layer_forward(
    params: dict,
    name: str,
    queries: LayerQueries,
    memory: Memory,
    kind: AttentionKind,
    cfg: Any,
    ctx: RunContext,
) -> tuple[Array, DecoderLayerCache]:
    """One decoder layer on queries.tgt (B, N, D), reading memory.tokens (B, S, D).

    Returns the new content (B, N, D) and the cache.
    """
    tgt, qpos = queries.tgt, queries.pos
    sa, self_attn = self_attention_forward(
        params, f"{name}.self_attn", tgt, qpos, cfg, mask=queries.self_mask
    )
    tgt, norm1 = add_norm_forward(params, f"{name}.norm1", tgt, sa, ctx)
    ca, cross_attn = kind.cross_forward(
        params,
        f"{name}.cross_attn",
        tgt=tgt,
        query_pos=qpos,
        ref_boxes=queries.ref_boxes,
        memory=memory,
        cfg=cfg,
    )
    tgt, norm2 = add_norm_forward(params, f"{name}.norm2", tgt, ca, ctx)
    f, ffn = ffn_forward(params, name, tgt, ctx)
    tgt, norm3 = add_norm_forward(params, f"{name}.norm3", tgt, f, ctx)
    return tgt, DecoderLayerCache(self_attn, norm1, cross_attn, norm2, ffn, norm3)


def decoder_layer_backward(
    dout: Array, cache: DecoderLayerCache, kind: AttentionKind, grads: dict, name: str
) -> tuple:
    """(dtgt, dquery_pos, dmemory, dmemory_pos or None, dref_boxes or None)."""
    dtgt, df = add_norm_backward(dout, cache.norm3, grads, f"{name}.norm3")
    dtgt = dtgt + ffn_backward(df, cache.ffn, grads, name)
    dtgt, dca = add_norm_backward(dtgt, cache.norm2, grads, f"{name}.norm2")
    dtgt_c, dqpos_c, dmemory, dmemory_pos, dref = kind.cross_backward(
        dca, cache.cross_attn, grads, f"{name}.cross_attn"
    )
    dtgt, dsa = add_norm_backward(dtgt + dtgt_c, cache.norm1, grads, f"{name}.norm1")
    dtgt_s, dqpos_s = self_attention_backward(dsa, cache.self_attn, grads, f"{name}.self_attn")
    return dtgt + dtgt_s, dqpos_c + dqpos_s, dmemory, dmemory_pos, dref
