"""Deformable DETR's attention in the encoder and in the decoder's cross-attention.

Dense attention lets every query weigh all S tokens: O(S^2) in the encoder, and
slow to learn where to look. Multi-scale deformable attention (``MSDeformAttn``,
:mod:`minidetr.deformable.module`) lets each query read only P points per head
and level, placed around a reference point by offsets it predicts itself:

* encoder: query = token + pos, reference point = the token's own pixel centre,
  the same normalised point on every level;
* decoder: query = tgt + qpos, reference = the query's anchor box (cx, cy, w, h),
  so the samples spread over the box: ref_xy + offset / P * ref_wh / 2.

Everything else (FFN, post-norm, decoder self-attention) is the dense
transformer's; this module only supplies an :class:`AttentionKind`.
Zhu et al., "Deformable DETR" (ICLR 2021), sections 4.1 and A.2.

Shapes: B batch, S tokens, Q queries, L levels, D width.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minidetr.backend import Array, namespace
from minidetr.deformable.module import (
    PARAM_NAMES,
    MSDeformAttnModuleCache,
    init_ms_deform_attn_params,
    ms_deform_attn_module_backward,
    ms_deform_attn_module_forward,
)
from minidetr.model.attention_kind import AttentionKind
from minidetr.model.memory import Memory, TokenLayout
from minidetr.model.params import accumulate


def init_deformable_attention(out: dict, name: str, cfg: Any, rng: np.random.Generator) -> None:
    """``name.{sampling_offsets, attention_weights, value_proj, output_proj}.{weight, bias}``.

    Deformable DETR's init: zero offset weights with a bias pointing head m along
    angle 2 pi m / M, uniform attention, Xavier projections.
    """
    module = init_ms_deform_attn_params(
        cfg.d_model, cfg.num_levels, cfg.num_heads, cfg.num_points, rng
    )
    for key, value in module.items():
        out[f"{name}.{key}"] = np.asarray(value, dtype=np.float64)


def offset_l2_per_layer(cfg: Any) -> float:
    """Each deformable layer's share of ``cfg.offset_l2``: the penalty averages the layers.

    R = offset_l2 / (N_enc + N_dec) * sum over the encoder's self-attention and the
    decoder's cross-attention layers of that layer's mean |offset in pixels|^2.
    """
    return cfg.offset_l2 / (cfg.num_encoder_layers + cfg.num_decoder_layers)


def _attend(params, name, query, ref, memory, cfg, layout):
    sub = {key: params[f"{name}.{key}"] for key in PARAM_NAMES}
    return ms_deform_attn_module_forward(
        sub, query, ref, memory, layout.spatial_shapes,
        n_heads=cfg.num_heads, n_levels=len(layout.spatial_shapes), n_points=cfg.num_points,
        offset_l2=offset_l2_per_layer(cfg),
    )  # fmt: skip


def _backward(dout, cache: MSDeformAttnModuleCache, grads: dict, name: str):
    dquery, dref, dinput, dparams = ms_deform_attn_module_backward(dout, cache)
    for key, g in dparams.items():
        accumulate(grads, f"{name}.{key}", g)
    return dquery, dref, dinput


def deformable_caches(encoder: list, decoder_steps: tuple) -> list[MSDeformAttnModuleCache]:
    """The module caches of a forward: encoder self-attention, then decoder cross-attention."""
    found = [layer.attn for layer in encoder] + [step.layer.cross_attn for step in decoder_steps]
    return [c for c in found if isinstance(c, MSDeformAttnModuleCache)]


def offset_penalty(encoder: list, decoder_steps: tuple) -> Array | None:
    """The offset L2 penalty of a forward (a 0-d array), None when it was off."""
    terms = [c.penalty for c in deformable_caches(encoder, decoder_steps) if c.penalty is not None]
    return sum(terms[1:], terms[0]) if terms else None


def deformable_self_attention_forward(
    params: dict,
    name: str,
    x: Array,
    pos: Array,
    cfg: Any,
    layout: TokenLayout,
    mask: Array | None = None,
) -> tuple[Array, MSDeformAttnModuleCache]:
    """MSDeformAttn(query = x + pos, reference = pixel centres, value = x). x (B, S, D).

    Every token is a query: the module's Q is S here.
    """
    xp = namespace(x)
    b, s, _ = x.shape
    lv = len(layout.spatial_shapes)
    ref = xp.broadcast_to(layout.reference_points[:, :, None, :], (b, s, lv, 2))  # (B, S, L, 2)
    return _attend(params, name, x + pos, ref, x, cfg, layout)


def deformable_self_attention_backward(
    dout: Array, cache: MSDeformAttnModuleCache, grads: dict, name: str
) -> tuple[Array, Array]:
    """(dx, dpos): x is query and value; pos only query. Reference points are constants."""
    dquery, _, dinput = _backward(dout, cache, grads, name)
    return dquery + dinput, dquery


def deformable_cross_attention_forward(
    params: dict,
    name: str,
    tgt: Array,
    query_pos: Array,
    ref_boxes: Array,
    memory: Memory,
    cfg: Any,
) -> tuple[Array, MSDeformAttnModuleCache]:
    """MSDeformAttn(query = tgt + query_pos, reference = ref_boxes on every level, value = memory).

    tgt (B, Q, D), ref_boxes (B, Q, 4) cxcywh in [0, 1], memory.tokens (B, S, D). As
    in Deformable DETR the memory's positions do not enter: where to look comes
    from the reference boxes.
    """
    xp = namespace(tgt)
    b, q, _ = tgt.shape
    lv = len(memory.layout.spatial_shapes)
    k = ref_boxes.shape[-1]  # 4: boxes; 2: Deformable DETR's first reference points (x, y)
    ref = xp.broadcast_to(ref_boxes[:, :, None, :], (b, q, lv, k))  # (B, Q, L, 4 or 2)
    return _attend(params, name, tgt + query_pos, ref, memory.tokens, cfg, memory.layout)


def deformable_cross_attention_backward(
    dout: Array, cache: MSDeformAttnModuleCache, grads: dict, name: str
) -> tuple[Array, Array, Array, None, Array]:
    """(dtgt, dquery_pos, dmemory, dmemory_pos = None, dref_boxes (B, Q, 4))."""
    dquery, dref, dinput = _backward(dout, cache, grads, name)
    return dquery, dquery, dinput, None, namespace(dref).sum(dref, axis=2)


DEFORMABLE = AttentionKind(
    init_deformable_attention,
    deformable_self_attention_forward,
    deformable_self_attention_backward,
    init_deformable_attention,
    deformable_cross_attention_forward,
    deformable_cross_attention_backward,
)
