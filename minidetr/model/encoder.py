"""The encoder: every memory token attends to the others, layer by layer.

    src = LN(src + SelfAttn(q = k = src + pos, v = src))
    src = LN(src + FFN(src))

Which self-attention is an :class:`~minidetr.model.attention_kind.AttentionKind`:
dense for DETR, deformable for Deformable DETR (each token reads P points per
head and level around its own pixel). Carion et al. (2020), ``TransformerEncoderLayer``;
Zhu et al. (2021), ``DeformableTransformerEncoderLayer``.

Shapes: B batch, S memory tokens, D width.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from minidetr.backend import Array
from minidetr.model.attention_kind import AttentionKind
from minidetr.model.memory import TokenLayout
from minidetr.model.sublayers import (
    AddNormCache,
    FfnCache,
    RunContext,
    add_norm_backward,
    add_norm_forward,
    ffn_backward,
    ffn_forward,
    init_ffn_and_norms,
    sum_to,
)


def init_encoder(cfg: Any, rng: np.random.Generator, kind: AttentionKind) -> dict:
    """``encoder.layers.i``: self-attention, two LayerNorms and the FFN (Xavier, zero biases)."""
    out: dict = {}
    for i in range(cfg.num_encoder_layers):
        name = f"encoder.layers.{i}"
        kind.self_init(out, f"{name}.self_attn", cfg, rng)
        init_ffn_and_norms(out, name, cfg, rng, 2)
    return out


class EncoderLayerCache(NamedTuple):
    attn: Any
    norm1: AddNormCache
    ffn: FfnCache
    norm2: AddNormCache


def encoder_layer_forward(
    params: dict,
    name: str,
    src: Array,
    pos: Array,
    layout: TokenLayout,
    kind: AttentionKind,
    cfg: Any,
    ctx: RunContext,
) -> tuple[Array, EncoderLayerCache]:
    """One encoder layer on the memory tokens. src (B, S, D), pos (1, S, D) -> (B, S, D)."""
    a, attn = kind.self_forward(params, f"{name}.self_attn", src, pos, cfg, layout)
    src, norm1 = add_norm_forward(params, f"{name}.norm1", src, a, ctx)
    f, ffn = ffn_forward(params, name, src, ctx)
    src, norm2 = add_norm_forward(params, f"{name}.norm2", src, f, ctx)
    return src, EncoderLayerCache(attn, norm1, ffn, norm2)


def encoder_layer_backward(
    dout: Array, cache: EncoderLayerCache, kind: AttentionKind, grads: dict, name: str
) -> tuple[Array, Array]:
    """(dsrc, dpos), dpos (B, S, D) before summing over the batch."""
    dsrc, df = add_norm_backward(dout, cache.norm2, grads, f"{name}.norm2")
    dsrc = dsrc + ffn_backward(df, cache.ffn, grads, name)
    dsrc, da = add_norm_backward(dsrc, cache.norm1, grads, f"{name}.norm1")
    dsrc_attn, dpos = kind.self_backward(da, cache.attn, grads, f"{name}.self_attn")
    return dsrc + dsrc_attn, dpos


def encoder_forward(
    params: dict,
    src: Array,
    pos: Array,
    layout: TokenLayout,
    kind: AttentionKind,
    cfg: Any,
    ctx: RunContext,
) -> tuple[Array, list[EncoderLayerCache]]:
    """The encoder stack: memory (B, S, D) from the tokens src (B, S, D) and pos (1, S, D)."""
    caches = []
    for i in range(cfg.num_encoder_layers):
        src, c = encoder_layer_forward(
            params, f"encoder.layers.{i}", src, pos, layout, kind, cfg, ctx
        )
        caches.append(c)
    return src, caches


def encoder_backward(
    dmemory: Array, caches: list[EncoderLayerCache], kind: AttentionKind, grads: dict
) -> tuple[Array, Array | None]:
    """(dsrc (B, S, D), dpos (1, S, D) summed over the batch and the layers, or None)."""
    dsrc, dpos = dmemory, None
    for i in reversed(range(len(caches))):
        dsrc, dp = encoder_layer_backward(dsrc, caches[i], kind, grads, f"encoder.layers.{i}")
        dp = sum_to(dp, 1)
        dpos = dp if dpos is None else dpos + dp
    return dsrc, dpos
