"""Object queries and their parameters: what each query carries into the decoder.

DETR's queries are learned vectors with no stated meaning. DAB-DETR makes each
query's position an explicit anchor box (cx, cy, w, h): its positional query is
an MLP of the box's sine embedding, the decoder's cross-attention reads around
the box, and each layer predicts a correction of the box rather than the box
itself. Written in logit space, u = inverse_sigmoid(box), a correction is a sum:
box' = sigmoid(delta + u). Denoising queries (DN-DETR) are the same thing made
from noised ground truth: the box is the anchor, the class's embedding the content.
Deformable DETR's own queries, for converted weights: learned positions whose
reference points are sigmoid(Linear(position)) (``learned_reference``), or, in its
two-stage form, position and content made from each selected proposal
(``proposal_queries``).

Shapes: B batch, Q queries, D width, F = D / 2 sine features per coordinate,
C classes.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minidetr.backend import Array, namespace
from minidetr.model.config import ModelConfig
from minidetr.model.params import accumulate, add_linear, add_mlp, add_norm
from minidetr.ops import (
    box_sine_embedding_forward,
    layernorm_backward,
    layernorm_forward,
    linear_backward,
    linear_forward,
    sigmoid_forward,
)
from minidetr.ops.linear import LinearCache
from minidetr.ops.normalization import NormCache


def init_queries(cfg: ModelConfig, rng: np.random.Generator) -> dict:
    """``query.*``: the Q content vectors (Q, D), and the queries' positions.

    Without ``learned_content`` there are no content vectors: DETR's decoder
    starts from tgt = 0 and only the positions are learned.
    DETR's queries get a learned positional embedding ``query.pos`` (Q, D); anchor
    queries get ``query.pos_head``, the MLP 2 D -> D -> D of their box's sine
    embedding, and (unless two-stage proposals supply them) learned anchors
    ``query.anchors`` (Q, 4) in logit space, centres uniform in the image, sides
    0.1. Denoising adds ``query.label_embed`` (C + 1, D): a row per class and one
    for padding slots. Embeddings are N(0, 1) as ``nn.Embedding``'s.
    """
    out: dict = {}
    q, d = cfg.num_queries, cfg.d_model
    if cfg.learned_content:
        out["query.content"] = rng.standard_normal((q, d))
    if cfg.proposal_queries:  # Deformable DETR's two-stage: Linear(2D, 2D) + LayerNorm(2D)
        add_linear(out, "query.pos_trans", rng, 2 * d, 2 * d, xavier=True)
        add_norm(out, "query.pos_trans.norm", 2 * d)
    elif not cfg.anchor_queries:
        out["query.pos"] = rng.standard_normal((q, d))
        if cfg.learned_reference:  # Deformable DETR: reference points from the positions
            add_linear(out, "query.ref_point", rng, 2, d, xavier=True)
    else:
        add_mlp(out, "query.pos_head", rng, (2 * d, d, d))
        if not cfg.two_stage:
            boxes = np.concatenate([rng.uniform(0.05, 0.95, (q, 2)), np.full((q, 2), 0.1)], 1)
            out["query.anchors"] = np.log(boxes / (1.0 - boxes))  # (Q, 4)
    if cfg.denoising:
        out["query.label_embed"] = rng.standard_normal((cfg.num_classes + 1, d))
    return out


def reference_points_forward(params: dict, query_pos: Array) -> tuple[Array, LinearCache]:
    """z = W p + b (1, Q, 2): Deformable DETR's reference points are sigmoid(z) in (0, 1)^2.

    query_pos (1, Q, D), the learned positions. Zhu et al. (2021), ``reference_points``.
    """
    return linear_forward(
        query_pos, params["query.ref_point.weight"], params["query.ref_point.bias"]
    )


def reference_points_backward(dz: Array, cache: LinearCache, grads: dict) -> Array:
    """dquery_pos (1, Q, D) from dz (1, Q, 2); the Linear's gradients go into ``grads``."""
    dpos, dw, db = linear_backward(dz, cache)
    accumulate(grads, "query.ref_point.weight", dw)
    accumulate(grads, "query.ref_point.bias", db)
    return dpos


class ProposalQueryCache(NamedTuple):
    linear: LinearCache
    norm: NormCache


def proposal_queries_forward(
    params: dict, anchors: Array, d: int
) -> tuple[Array, Array, ProposalQueryCache]:
    """[query_pos, content] = LN(Linear(sine(sigmoid(u)))), each (B, Q, D).

    Deformable DETR's two-stage queries, from the selected proposals u (B, Q, 4) in
    logit space, a constant (its ``get_proposal_pos_embed`` is the box sine embedding
    with D / 2 features per coordinate, then ``pos_trans`` and ``pos_trans_norm``).
    """
    emb, _ = box_sine_embedding_forward(sigmoid_forward(anchors)[0], d)  # (B, Q, 2D)
    w, b = params["query.pos_trans.weight"], params["query.pos_trans.bias"]
    pt, lin = linear_forward(emb, w, b)
    w, b = params["query.pos_trans.norm.weight"], params["query.pos_trans.norm.bias"]
    pt, norm = layernorm_forward(pt, w, b)  # (B, Q, 2D)
    return pt[..., :d], pt[..., d:], ProposalQueryCache(lin, norm)


def proposal_queries_backward(
    dpos: Array, dcontent: Array, cache: ProposalQueryCache, grads: dict
) -> None:
    """The Linear's and the LayerNorm's gradients; the proposals are detached."""
    xp = namespace(dpos)
    dpt = xp.concat([dpos, dcontent], axis=-1)  # (B, Q, 2D)
    dpt, dgamma, dbeta = layernorm_backward(dpt, cache.norm)
    accumulate(grads, "query.pos_trans.norm.weight", dgamma)
    accumulate(grads, "query.pos_trans.norm.bias", dbeta)
    _, dw, db = linear_backward(dpt, cache.linear)
    accumulate(grads, "query.pos_trans.weight", dw)
    accumulate(grads, "query.pos_trans.bias", db)
