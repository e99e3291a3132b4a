"""DETR's transformer layers with standard (dense) attention, forward and backward.

Encoder layer:  src = LN(src + SelfAttn(q = k = src + pos, v = src));  src = LN(src + FFN(src))
Decoder layer:  tgt = LN(tgt + SelfAttn(q = k = tgt + qpos, v = tgt, mask))
                tgt = LN(tgt + CrossAttn(q = tgt + qpos, memory))
                tgt = LN(tgt + FFN(tgt))

Post-norm, as DETR and Deformable DETR: with 2 or 3 layers the depth problems
that pre-norm cures do not arise, and post-norm hands the shared heads outputs
that are already normalised at every layer. Which attention the encoder and
the cross-attention use is an :class:`AttentionKind`: dense here
(``STANDARD``), deformable in ``deformable_transformer.py``; the layers do not
care. Carion et al., "End-to-End Object Detection with Transformers" (2020).

Shapes: B batch, L memory tokens, Q queries, D width, F FFN width.
Backward functions add parameter gradients into a ``grads`` dict and return
the gradients of their array inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from minidetr.attention import (
    MultiHeadAttentionCache,
    multi_head_attention_backward,
    multi_head_attention_forward,
)
from minidetr.backend import Array, Rng, namespace
from minidetr.model.params import accumulate, add_linear, add_norm, xavier_uniform
from minidetr.ops import (
    dropout_backward,
    dropout_forward,
    layernorm_backward,
    layernorm_forward,
    linear_backward,
    linear_forward,
    relu_backward,
    relu_forward,
)
from minidetr.ops.activation import DropoutCache, ReluCache
from minidetr.ops.linear import LinearCache
from minidetr.ops.normalization import NormCache


class RunContext(NamedTuple):
    """What every layer needs to know about the run: dropout rate, mode, random source."""

    dropout: float
    train: bool
    rng: Rng | None


class TokenLayout(NamedTuple):
    """Where the memory's L tokens come from: S maps flattened and concatenated.

    spatial_shapes ((H_0, W_0), ...), level_start (L_0 offsets), and for the
    deformable encoder the pixel-centre reference points (1, L, S, 2) in [0, 1].
    """

    spatial_shapes: tuple[tuple[int, int], ...]
    level_start: tuple[int, ...]
    reference_points: Array | None


def sum_to(x: Array, batch: int) -> Array:
    """Reduce a broadcast (B, N, D) gradient to the (batch, N, D) shape it came from."""
    if batch == x.shape[0]:
        return x
    return namespace(x).sum(x, axis=0, keepdims=True)


# ----------------------------------------------------------------------------- small pieces


class FfnCache(NamedTuple):
    linear1: LinearCache
    relu: ReluCache
    drop: DropoutCache
    linear2: LinearCache


def ffn_forward(params: dict, name: str, x: Array, ctx: RunContext) -> tuple[Array, FfnCache]:
    """FFN(x) = W2 dropout(relu(W1 x + b1)) + b2. x (B, N, D) -> (B, N, D), hidden (B, N, F)."""
    h, l1 = linear_forward(x, params[f"{name}.linear1.weight"], params[f"{name}.linear1.bias"])
    h, relu = relu_forward(h)  # (B, N, F)
    h, drop = dropout_forward(h, ctx.dropout, train=ctx.train, rng=ctx.rng)
    y, l2 = linear_forward(h, params[f"{name}.linear2.weight"], params[f"{name}.linear2.bias"])
    return y, FfnCache(l1, relu, drop, l2)


def ffn_backward(dy: Array, cache: FfnCache, grads: dict, name: str) -> Array:
    """dx of the FFN; its four parameter gradients go into ``grads``."""
    dh, dw2, db2 = linear_backward(dy, cache.linear2)
    (dh,) = dropout_backward(dh, cache.drop)
    (dh,) = relu_backward(dh, cache.relu)
    dx, dw1, db1 = linear_backward(dh, cache.linear1)
    for key, g in (("linear1.weight", dw1), ("linear1.bias", db1)):
        accumulate(grads, f"{name}.{key}", g)
    for key, g in (("linear2.weight", dw2), ("linear2.bias", db2)):
        accumulate(grads, f"{name}.{key}", g)
    return dx


class AddNormCache(NamedTuple):
    drop: DropoutCache
    norm: NormCache


def add_norm_forward(
    params: dict, name: str, x: Array, sub: Array, ctx: RunContext
) -> tuple[Array, AddNormCache]:
    """y = LN(x + dropout(sub)), the residual connection of a post-norm transformer."""
    sub, drop = dropout_forward(sub, ctx.dropout, train=ctx.train, rng=ctx.rng)
    y, norm = layernorm_forward(x + sub, params[f"{name}.weight"], params[f"{name}.bias"])
    return y, AddNormCache(drop, norm)


def add_norm_backward(dy: Array, cache: AddNormCache, grads: dict, name: str) -> tuple:
    """(dx, dsub) of ``LN(x + dropout(sub))``."""
    dsum, dgamma, dbeta = layernorm_backward(dy, cache.norm)
    accumulate(grads, f"{name}.weight", dgamma)
    accumulate(grads, f"{name}.bias", dbeta)
    (dsub,) = dropout_backward(dsum, cache.drop)
    return dsum, dsub


# ------------------------------------------------------------------------- dense attention


def _mha_forward(params, name, query, key, value, num_heads, **kwargs):
    return multi_head_attention_forward(
        query,
        key,
        value,
        params[f"{name}.in_proj.weight"],
        params[f"{name}.in_proj.bias"],
        params[f"{name}.out_proj.weight"],
        params[f"{name}.out_proj.bias"],
        num_heads=num_heads,
        **kwargs,
    )


def _mha_backward(dout: Array, cache: MultiHeadAttentionCache, grads: dict, name: str) -> tuple:
    dq, dk, dv, dwi, dbi, dwo, dbo = multi_head_attention_backward(dout, cache)
    for key, g in zip(
        ("in_proj.weight", "in_proj.bias", "out_proj.weight", "out_proj.bias"), (dwi, dbi, dwo, dbo)
    ):
        accumulate(grads, f"{name}.{key}", g)
    return dq, dk, dv


def self_attention_forward(
    params: dict,
    name: str,
    x: Array,
    pos: Array,
    cfg: Any,
    layout: Any = None,
    mask: Array | None = None,
) -> tuple[Array, MultiHeadAttentionCache]:
    """MHA(q = k = x + pos, v = x). x (B, N, D), pos broadcastable to it; mask True = may attend."""
    return _mha_forward(
        params, name, x, x, x, cfg.num_heads, query_pos=pos, key_pos=pos, attn_mask=mask
    )


def self_attention_backward(
    dout: Array, cache: MultiHeadAttentionCache, grads: dict, name: str
) -> tuple[Array, Array]:
    """(dx, dpos): x enters as query, key and value; pos as query and key."""
    dq, dk, dv = _mha_backward(dout, cache, grads, name)
    dpos = dq + dk  # (B, N, D)
    return dpos + dv, dpos


def cross_attention_forward(
    params: dict,
    name: str,
    tgt: Array,
    query_pos: Array,
    memory: Array,
    memory_pos: Array,
    ref_boxes: Array | None,
    cfg: Any,
    layout: TokenLayout,
) -> tuple[Array, MultiHeadAttentionCache]:
    """MHA(q = tgt + query_pos, k = memory + memory_pos, v = memory): every query sees every token.

    tgt (B, Q, D), memory (B, L, D), memory_pos (1, L, D). ``ref_boxes`` is unused:
    dense attention finds its own way to the object.
    """
    return _mha_forward(
        params, name, tgt, memory, memory, cfg.num_heads, query_pos=query_pos, key_pos=memory_pos
    )


def cross_attention_backward(
    dout: Array, cache: MultiHeadAttentionCache, grads: dict, name: str
) -> tuple[Array, Array, Array, Array, None]:
    """(dtgt, dquery_pos, dmemory, dmemory_pos, dref_boxes = None)."""
    dq, dk, dv = _mha_backward(dout, cache, grads, name)
    return dq, dq, dk + dv, dk, None


def init_attention(out: dict, name: str, cfg: Any, rng: np.random.Generator) -> None:
    """``nn.MultiheadAttention``'s parameters as DETR initialises them: Xavier, zero biases."""
    d = cfg.d_model
    out[f"{name}.in_proj.weight"] = xavier_uniform(rng, (3 * d, d))
    out[f"{name}.in_proj.bias"] = np.zeros(3 * d)
    out[f"{name}.out_proj.weight"] = xavier_uniform(rng, (d, d))
    out[f"{name}.out_proj.bias"] = np.zeros(d)


class AttentionKind(NamedTuple):
    """The encoder's self-attention and the decoder's cross-attention: init and op pairs.

    init(out, name, cfg, rng) adds the parameters ``name.*`` to ``out``.
    """

    self_init: Callable
    self_forward: Callable
    self_backward: Callable
    cross_init: Callable
    cross_forward: Callable
    cross_backward: Callable


STANDARD = AttentionKind(
    init_attention,
    self_attention_forward,
    self_attention_backward,
    init_attention,
    cross_attention_forward,
    cross_attention_backward,
)


def init_encoder(cfg: Any, rng: np.random.Generator, kind: AttentionKind) -> dict:
    """``encoder.layers.i``: self-attention, two LayerNorms and the FFN (Xavier, zero biases)."""
    out: dict = {}
    for i in range(cfg.num_encoder_layers):
        name = f"encoder.layers.{i}"
        kind.self_init(out, f"{name}.self_attn", cfg, rng)
        _init_ffn_and_norms(out, name, cfg, rng, 2)
    return out


def init_decoder_layers(cfg: Any, rng: np.random.Generator, kind: AttentionKind) -> dict:
    """``decoder.layers.i``: self- and cross-attention, three LayerNorms and the FFN."""
    out: dict = {}
    for i in range(cfg.num_decoder_layers):
        name = f"decoder.layers.{i}"
        init_attention(out, f"{name}.self_attn", cfg, rng)
        kind.cross_init(out, f"{name}.cross_attn", cfg, rng)
        _init_ffn_and_norms(out, name, cfg, rng, 3)
    return out


def _init_ffn_and_norms(out: dict, name: str, cfg: Any, rng, num_norms: int) -> None:
    add_linear(out, f"{name}.linear1", rng, cfg.ffn_dim, cfg.d_model, xavier=True)
    add_linear(out, f"{name}.linear2", rng, cfg.d_model, cfg.ffn_dim, xavier=True)
    for j in range(1, num_norms + 1):
        add_norm(out, f"{name}.norm{j}", cfg.d_model)


# ------------------------------------------------------------------------------ the layers


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
    """One encoder layer on the memory tokens. src (B, L, D), pos (1, L, D) -> (B, L, D)."""
    a, attn = kind.self_forward(params, f"{name}.self_attn", src, pos, cfg, layout)
    src, norm1 = add_norm_forward(params, f"{name}.norm1", src, a, ctx)
    f, ffn = ffn_forward(params, name, src, ctx)
    src, norm2 = add_norm_forward(params, f"{name}.norm2", src, f, ctx)
    return src, EncoderLayerCache(attn, norm1, ffn, norm2)


def encoder_layer_backward(
    dout: Array, cache: EncoderLayerCache, kind: AttentionKind, grads: dict, name: str
) -> tuple[Array, Array]:
    """(dsrc, dpos), dpos (B, L, D) before summing over the batch."""
    dsrc, df = add_norm_backward(dout, cache.norm2, grads, f"{name}.norm2")
    dsrc = dsrc + ffn_backward(df, cache.ffn, grads, name)
    dsrc, da = add_norm_backward(dsrc, cache.norm1, grads, f"{name}.norm1")
    dsrc_attn, dpos = kind.self_backward(da, cache.attn, grads, f"{name}.self_attn")
    return dsrc + dsrc_attn, dpos


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
    tgt: Array,
    query_pos: Array,
    memory: Array,
    memory_pos: Array,
    ref_boxes: Array | None,
    self_mask: Array | None,
    layout: TokenLayout,
    kind: AttentionKind,
    cfg: Any,
    ctx: RunContext,
) -> tuple[Array, DecoderLayerCache]:
    """One decoder layer. tgt (B, Q, D), query_pos (B or 1, Q, D), memory (B, L, D),
    ref_boxes (B, Q, 4) cxcywh in [0, 1] or None, self_mask (Q, Q) True = may attend.
    Returns (B, Q, D)."""
    sa, self_attn = self_attention_forward(
        params, f"{name}.self_attn", tgt, query_pos, cfg, mask=self_mask
    )
    tgt, norm1 = add_norm_forward(params, f"{name}.norm1", tgt, sa, ctx)
    ca, cross_attn = kind.cross_forward(
        params, f"{name}.cross_attn", tgt, query_pos, memory, memory_pos, ref_boxes, cfg, layout
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


# ------------------------------------------------------------------------------ the encoder


def encoder_forward(
    params: dict,
    src: Array,
    pos: Array,
    layout: TokenLayout,
    kind: AttentionKind,
    cfg: Any,
    ctx: RunContext,
) -> tuple[Array, list[EncoderLayerCache]]:
    """The encoder stack: memory (B, L, D) from the projected tokens src (B, L, D)."""
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
    """(dsrc (B, L, D), dpos (1, L, D) summed over the batch and the layers, or None)."""
    dsrc, dpos = dmemory, None
    for i in reversed(range(len(caches))):
        dsrc, dp = encoder_layer_backward(dsrc, caches[i], kind, grads, f"encoder.layers.{i}")
        dp = sum_to(dp, 1)
        dpos = dp if dpos is None else dpos + dp
    return dsrc, dpos
