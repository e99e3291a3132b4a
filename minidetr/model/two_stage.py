"""Two-stage queries: the encoder proposes boxes, the best Q become the decoder's anchors.

Every memory token t proposes a box around its own pixel: a square of side
``proposal_size * 2^l`` at level l, in logit space p_t (``ModelConfig.proposal_size``:
0.05 as in Deformable DETR by default, 0.1 in the ``deformable`` preset, whose
64-pixel images hold larger objects). A small head scores and refines it:

    e_t      = LN(W memory_t + b)
    logits_t = class_head_enc(e_t),   u_t = box_head_enc(e_t) + p_t

and the Q tokens with the highest object score give the decoder its anchor
boxes u (detached) while the content queries stay learned: DINO's "mixed query
selection". The Q selected proposals are returned as ``enc_outputs`` so a loss
can train the head (Deformable DETR's two-stage loss, DINO's interm loss).
Zhu et al. (2021) section 4.2; Zhang et al., "DINO" (2023) section 3.4.

Shapes: B batch, S tokens, Q selected (one per query), D width, K logits.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from minidetr.backend import Array, namespace
from minidetr.model.config import ModelConfig
from minidetr.model.heads import HeadsCache, heads_backward, heads_forward, init_heads
from minidetr.model.params import accumulate, add_linear, add_norm
from minidetr.ops import layernorm_backward, layernorm_forward, linear_backward, linear_forward
from minidetr.ops.linear import LinearCache
from minidetr.ops.normalization import NormCache

PREFIX = "enc_"


def init_two_stage(cfg: ModelConfig, rng: np.random.Generator) -> dict:
    """``enc_output`` linear + ``enc_output.norm``, and the encoder's own class and box heads."""
    out: dict = {}
    add_linear(out, "enc_output", rng, cfg.d_model, cfg.d_model)
    add_norm(out, "enc_output.norm", cfg.d_model)
    out.update(init_heads(cfg, rng, prefix=PREFIX))
    return out


class TwoStageCache(NamedTuple):
    proj: LinearCache
    norm: NormCache
    heads: HeadsCache
    select: Array  # (B, Q, S) one-hot rows: row q marks the token that query q takes
    anchors: Array  # (B, Q, 4) the selected u, handed to the decoder detached
    valid: Array | None = None  # (S,) proposal_queries: the tokens whose proposal is kept


def two_stage_forward(
    params: dict,
    memory: Array,
    proposals: Array,
    cfg: ModelConfig,
    fixed: tuple[Array, Array] | None = None,
) -> tuple[Array, Array, Array, TwoStageCache]:
    """(logits (B, Q, K), boxes (B, Q, 4) of the Q best proposals, their u (B, Q, 4), cache).

    memory (B, S, D), proposals (S, 4) in logit space. ``u`` is a constant for the
    decoder: no gradient reaches the proposals through the anchors. ``fixed`` =
    (select, u) of an earlier cache holds the choice and the anchors fixed (for
    gradient checks: the top-Q choice is a step function).
    """
    xp = namespace(memory)
    valid = None
    if cfg.proposal_queries:  # Deformable DETR masks proposals outside (0.01, 0.99)
        lo, hi = math.log(0.01 / 0.99), math.log(0.99 / 0.01)
        valid = xp.all((proposals > lo) & (proposals < hi), axis=-1)  # (S,)
        proposals = xp.where(valid[:, None], proposals, xp.asarray(math.inf, dtype=memory.dtype))
        memory = xp.where(valid[None, :, None], memory, xp.zeros_like(memory))
    e, proj = linear_forward(memory, params["enc_output.weight"], params["enc_output.bias"])
    e, norm = layernorm_forward(e, params["enc_output.norm.weight"], params["enc_output.norm.bias"])
    logits, boxes, u, heads = heads_forward(params, e, proposals[None, ...], prefix=PREFIX)
    if cfg.proposal_queries:
        score = logits[..., 0]  # (B, S) Deformable DETR ranks by the first class's logit
    elif cfg.focal:
        score = xp.max(logits, axis=-1)  # (B, S) best class logit
    else:
        shifted = logits - xp.max(logits, axis=-1, keepdims=True)
        p = xp.exp(shifted) / xp.sum(xp.exp(shifted), axis=-1, keepdims=True)
        score = xp.max(p[..., : cfg.num_classes], axis=-1)  # (B, S) best object probability
    if fixed is None:
        top = xp.argsort(score, axis=1, descending=True, stable=True)[:, : cfg.num_queries]
        tokens = xp.arange(memory.shape[1], device=memory.device)
        select = xp.astype(top[..., None] == tokens, memory.dtype)  # (B, Q, S)
        sel_u = xp.matmul(select, u)  # (B, Q, 4)
    else:
        select, sel_u = fixed
    sel_logits = xp.matmul(select, logits)  # (B, Q, K)
    sel_boxes = xp.matmul(select, boxes)  # (B, Q, 4)
    cache = TwoStageCache(proj, norm, heads, select, sel_u, valid)
    return sel_logits, sel_boxes, sel_u, cache


def two_stage_backward(
    dlogits: Array | None, dboxes: Array | None, cache: TwoStageCache, grads: dict
) -> Array | None:
    """dmemory (B, S, D) from the gradients of the selected logits and boxes (None = zero)."""
    st = cache.select.mT  # (B, S, Q) scatters each selected query back to its token
    dl = None if dlogits is None else namespace(st).matmul(st, dlogits)  # (B, S, K)
    db = None if dboxes is None else namespace(st).matmul(st, dboxes)  # (B, S, 4)
    de, _ = heads_backward(dl, db, cache.heads, grads, prefix=PREFIX)
    if de is None:
        return None
    de, dgamma, dbeta = layernorm_backward(de, cache.norm)
    accumulate(grads, "enc_output.norm.weight", dgamma)
    accumulate(grads, "enc_output.norm.bias", dbeta)
    dmemory, dw, db_ = linear_backward(de, cache.proj)
    accumulate(grads, "enc_output.weight", dw)
    accumulate(grads, "enc_output.bias", db_)
    if cache.valid is not None:
        xp = namespace(dmemory)
        dmemory = xp.where(cache.valid[None, :, None], dmemory, xp.zeros_like(dmemory))
    return dmemory
