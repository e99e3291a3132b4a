"""Which attention a MiniDETR uses: an interface of op pairs, and DETR's dense kind.

The encoder's self-attention and the decoder's cross-attention are the only
places where DETR and Deformable DETR differ; an :class:`AttentionKind` names
the init and the forward/backward pair of each, and the layers call whichever
they are given. Dense multi-head attention here (``STANDARD``):

    self-attention   MHA(q = k = x + pos, v = x)                     each token sees all tokens
    cross-attention  MHA(q = tgt + qpos, k = memory + mpos, v = memory)  each query sees all tokens

and multi-scale deformable attention in ``deformable_transformer.py``. The
decoder's self-attention is always dense. Carion et al., "End-to-End Object
Detection with Transformers" (2020), ``models/transformer.py``.

Shapes: B batch, N tokens or queries, S memory tokens, Q queries, D width.
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
from minidetr.backend import Array
from minidetr.model.memory import Memory, TokenLayout
from minidetr.model.params import accumulate, xavier_uniform


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
    layout: TokenLayout | None = None,
    mask: Array | None = None,
) -> tuple[Array, MultiHeadAttentionCache]:
    """MHA(q = k = x + pos, v = x). x (B, N, D), pos broadcastable to it; mask True = may attend.

    ``layout`` is unused: dense attention does not care where a token comes from.
    """
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
    ref_boxes: Array | None,
    memory: Memory,
    cfg: Any,
) -> tuple[Array, MultiHeadAttentionCache]:
    """MHA(q = tgt + query_pos, k = memory + memory_pos, v = memory): every query sees every token.

    tgt (B, Q, D), query_pos (B or 1, Q, D), memory.tokens (B, S, D), memory.pos
    (1, S, D). ``ref_boxes`` is unused: dense attention finds its own way to the object.
    """
    return _mha_forward(
        params,
        name,
        tgt,
        memory.tokens,
        memory.tokens,
        cfg.num_heads,
        query_pos=query_pos,
        key_pos=memory.pos,
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

    self_init / cross_init(out, name, cfg, rng) add the parameters ``name.*`` to ``out``;
    self_forward(params, name, x, pos, cfg, layout) and
    cross_forward(params, name, tgt, query_pos, ref_boxes, memory, cfg) return
    (out, cache); the backwards take (dout, cache, grads, name) and return the
    gradients in the order of :func:`self_attention_backward` and
    :func:`cross_attention_backward`.
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
