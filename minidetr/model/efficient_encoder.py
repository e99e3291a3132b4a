"""DETR's encoder self-attention with an efficient core: ``ModelConfig.encoder_attention``.

self-attention  MHA_core(q = k = x + pos, v = x), core one of linear, performer, topk, window,
linformer, hierarchical (``minidetr.attention.multihead``); the decoder keeps dense attention.
Same parameters as dense attention, plus Linformer's E and F (r, S) per layer. The token grid
(H, W) comes from the layout (one feature map). Performer's projection is drawn on every call
from a seed derived from the layer's name, so one projection serves every step and run.

Shapes: B batch, S tokens (H W), D width, r Linformer length.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from minidetr.attention.multihead import (
    DEFAULT_SETTINGS,
    EfficientMultiHeadCache,
    efficient_multi_head_attention_backward,
    efficient_multi_head_attention_forward,
)
from minidetr.backend import Array
from minidetr.model.attention_kind import STANDARD, AttentionKind, init_attention
from minidetr.model.params import accumulate, xavier_uniform


def init_efficient_self_attention(out: dict, name: str, cfg: Any, rng: np.random.Generator):
    """Dense attention's parameters; Linformer adds ``name.proj_e`` and ``name.proj_f`` (r, S)."""
    init_attention(out, name, cfg, rng)
    if cfg.encoder_attention == "linformer":
        side = cfg.image_size // cfg.stride
        shape = (DEFAULT_SETTINGS.rank, side * side)
        out[f"{name}.proj_e"] = xavier_uniform(rng, shape)
        out[f"{name}.proj_f"] = xavier_uniform(rng, shape)


def efficient_self_attention_forward(
    params: dict, name: str, x: Array, pos: Array, cfg: Any, layout: Any = None, mask=None
) -> tuple[Array, EfficientMultiHeadCache]:
    """MHA_core(q = k = x + pos, v = x). x (B, S, D), pos (1, S, D) -> (B, S, D)."""
    if mask is not None:
        raise ValueError(f"encoder attention {cfg.encoder_attention!r} takes no mask")
    (h, w) = layout.spatial_shapes[0]
    return efficient_multi_head_attention_forward(
        x,
        x,
        x,
        params[f"{name}.in_proj.weight"],
        params[f"{name}.in_proj.bias"],
        params[f"{name}.out_proj.weight"],
        params[f"{name}.out_proj.bias"],
        num_heads=cfg.num_heads,
        kind=cfg.encoder_attention,
        query_pos=pos,
        key_pos=pos,
        grid=(h, w),
        E=params.get(f"{name}.proj_e"),
        F=params.get(f"{name}.proj_f"),
        seed=zlib.crc32(name.encode()),
    )


def efficient_self_attention_backward(
    dout: Array, cache: EfficientMultiHeadCache, grads: dict, name: str
) -> tuple[Array, Array]:
    """(dx, dpos), parameter gradients into ``grads``."""
    dq, dk, dv, dwi, dbi, dwo, dbo, de, df = efficient_multi_head_attention_backward(dout, cache)
    names = ("in_proj.weight", "in_proj.bias", "out_proj.weight", "out_proj.bias")
    for key, g in zip(names, (dwi, dbi, dwo, dbo)):
        accumulate(grads, f"{name}.{key}", g)
    if de is not None:
        accumulate(grads, f"{name}.proj_e", de)
        accumulate(grads, f"{name}.proj_f", df)
    dpos = dq + dk  # (B, S, D)
    return dpos + dv, dpos


EFFICIENT_ENCODER = AttentionKind(
    init_efficient_self_attention,
    efficient_self_attention_forward,
    efficient_self_attention_backward,
    STANDARD.cross_init,
    STANDARD.cross_forward,
    STANDARD.cross_backward,
)
