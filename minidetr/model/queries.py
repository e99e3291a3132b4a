"""Object queries: their parameters, and the ops that give a query a box.

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

import math
from typing import NamedTuple

import numpy as np

from minidetr.backend import Array, namespace
from minidetr.model.config import ModelConfig
from minidetr.model.params import add_mlp


def init_queries(cfg: ModelConfig, rng: np.random.Generator) -> dict:
    """``query.*``: the Q content vectors (Q, D), and the queries' positions.

    DETR's queries get a learned positional embedding ``query.pos`` (Q, D); anchor
    queries get ``query.pos_head``, the MLP 2 D -> D -> D of their box's sine
    embedding, and (unless two-stage proposals supply them) learned anchors
    ``query.anchors`` (Q, 4) in logit space, centres uniform in the image, sides
    0.1. Denoising adds ``query.label_embed`` (C + 1, D): a row per class and one
    for padding slots. Embeddings are N(0, 1) as ``nn.Embedding``'s.
    """
    out: dict = {}
    q, d = cfg.num_queries, cfg.d_model
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


def inverse_sigmoid(x: Array, eps: float = 1e-5) -> Array:
    """u = log(x / (1 - x)), with x clamped to [eps, 1 - eps] so u is finite.

    Only ever applied to constants (anchors detached between layers, noised
    boxes, proposals), so it has no backward. Zhu et al. (2021), ``util/misc.py``.
    """
    xp = namespace(x)
    x = xp.clip(x, eps, 1.0 - eps)
    return xp.log(x / (1.0 - x))


class BoxSineCache(NamedTuple):
    phase: Array  # (B, Q, 4, F) coordinate times frequency
    freq: Array  # (F,) 2 pi / T^(2 floor(k/2) / F)
    even: Array  # (F,) bool, True where the feature is a sine


def box_sine_embedding_forward(
    boxes: Array, dim: int, temperature: float = 10000.0
) -> tuple[Array, BoxSineCache]:
    """e[..., c, k] = sin(2 pi b_c / T^(2 floor(k/2)/F)) for even k, cos for odd k.

    The 1-D sine encoding of Vaswani et al. applied to each of the four box
    coordinates (DAB-DETR's ``gen_sineembed_for_position``). boxes (B, Q, 4) in
    [0, 1]; dim D (each coordinate gets F = D / 2 features). Returns (B, Q, 2 D).
    """
    xp = namespace(boxes)
    f = dim // 2
    k = xp.arange(f, device=boxes.device)
    exponent = xp.astype(2 * (k // 2), boxes.dtype) / f
    freq = (2 * math.pi) / (temperature**exponent)  # (F,)
    phase = boxes[..., None] * freq  # (B, Q, 4, F)
    even = (k % 2) == 0
    emb = xp.where(even, xp.sin(phase), xp.cos(phase))  # (B, Q, 4, F)
    b, q = boxes.shape[:2]
    return xp.reshape(emb, (b, q, 4 * f)), BoxSineCache(phase, freq, even)


def box_sine_embedding_backward(demb: Array, cache: BoxSineCache) -> tuple[Array]:
    """dboxes[..., c] = sum_k demb[..., c, k] * freq_k * (cos(phase) if even k else -sin(phase))."""
    xp = namespace(demb)
    b, q, four, f = cache.phase.shape
    demb = xp.reshape(demb, (b, q, four, f))
    dphase = demb * xp.where(cache.even, xp.cos(cache.phase), -xp.sin(cache.phase))
    return (xp.sum(dphase * cache.freq, axis=-1),)  # (B, Q, 4)


class EmbeddingCache(NamedTuple):
    onehot: Array  # (N..., V) float one-hot of the looked-up rows


def embedding_forward(indices: Array, table: Array) -> tuple[Array, EmbeddingCache]:
    """out[...] = table[indices[...]], written as onehot(indices) @ table.

    indices (N...) integers in [0, V), table (V, D). Returns (N..., D). The one-hot
    product keeps to the array API standard and makes the backward a product too.
    """
    xp = namespace(indices, table)
    v = table.shape[0]
    rows = xp.arange(v, device=table.device)
    onehot = xp.astype(indices[..., None] == rows, table.dtype)  # (N..., V)
    return xp.matmul(onehot, table), EmbeddingCache(onehot)


def embedding_backward(dout: Array, cache: EmbeddingCache) -> tuple[Array]:
    """dtable = sum over lookups of onehot^T dout: rows looked up twice add up."""
    xp = namespace(dout)
    v, d = cache.onehot.shape[-1], dout.shape[-1]
    oh = xp.reshape(cache.onehot, (-1, v))  # (N, V)
    return (xp.matmul(oh.mT, xp.reshape(dout, (-1, d))),)  # (V, D)
