"""Object queries and their parameters: what each query carries into the decoder.

DETR's queries are learned vectors with no stated meaning. DAB-DETR makes each
query's position an explicit anchor box (cx, cy, w, h): its positional query is
an MLP of the box's sine embedding, the decoder's cross-attention reads around
the box, and each layer predicts a correction of the box rather than the box
itself. Written in logit space, u = inverse_sigmoid(box), a correction is a sum:
box' = sigmoid(delta + u). Denoising queries (DN-DETR) are the same thing made
from noised ground truth: the box is the anchor, the class's embedding the content.

Shapes: B batch, Q queries, D width, F = D / 2 sine features per coordinate,
C classes.
"""

from __future__ import annotations

import numpy as np

from minidetr.model.config import ModelConfig
from minidetr.model.params import add_mlp


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
    if not cfg.anchor_queries:
        out["query.pos"] = rng.standard_normal((q, d))
    else:
        add_mlp(out, "query.pos_head", rng, (2 * d, d, d))
        if not cfg.two_stage:
            boxes = np.concatenate([rng.uniform(0.05, 0.95, (q, 2)), np.full((q, 2), 0.1)], 1)
            out["query.anchors"] = np.log(boxes / (1.0 - boxes))  # (Q, 4)
    if cfg.denoising:
        out["query.label_embed"] = rng.standard_normal((cfg.num_classes + 1, d))
    return out
