"""One relevance map over the image per detection and method, from captured maps and gradients.

The methods compared, for the detection made by query q of image b:

* ``attention``: the last decoder layer's cross-attention row q, heads averaged
  (what the DETR paper's decoder-attention figure shows);
* ``rollout``: that row carried back through the encoder by attention rollout,
  a row of A_cross R_enc (Abnar & Zuidema 2020);
* ``relevance``: gradient-weighted. Dense attention: Chefer et al.'s relevance
  (:mod:`.relevance`); deformable attention: the gradient splat
  (:mod:`.deformable`) of every decoder cross-attention layer's samples of query
  q, plus every encoder layer's samples, all weighted by (A dy/dA)^+;
* ``random``: a uniformly random map, the baseline.

Deformable attention enters the first two as the attention matrix it equals
(:func:`~.deformable.deformable_attention_matrix`). Maps are (H, W) host arrays.
Shapes: B batch, M heads, Q queries, S tokens, H x W pixels.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minidetr.backend import Array, to_numpy
from minidetr.explain.capture import AttentionMap
from minidetr.explain.deformable import (
    deformable_attention_matrix,
    deformable_relevance,
    tokens_to_image,
)
from minidetr.explain.relevance import MapAndGrad, encoder_decoder_relevance
from minidetr.explain.rollout import attention_rollout

METHODS = ("attention", "rollout", "relevance")


class Layers(NamedTuple):
    """The captured maps of one forward, grouped: names in forward order."""

    encoder: list[str]
    decoder_self: list[str]
    decoder_cross: list[str]


def group_layers(maps: dict[str, AttentionMap]) -> Layers:
    """Split captured names into encoder self-, decoder self- and decoder cross-attention."""
    enc = [n for n in maps if n.startswith("encoder.")]
    dec_self = [n for n in maps if n.startswith("decoder.") and n.endswith("self_attn")]
    dec_cross = [n for n in maps if n.endswith("cross_attn")]
    if not dec_cross:
        raise ValueError("maps hold no decoder cross-attention; capture a DETR forward")
    return Layers(enc, dec_self, dec_cross)


def dense_matrix(m: AttentionMap, weights: Array | None = None) -> Array:
    """The map as an attention matrix (B, M, Lq, Lk); deformable maps (or ``weights`` placed as
    their samples) become the matrix they equal."""
    if m.kind == "dense":
        return m.weights if weights is None else weights
    w = m.weights if weights is None else weights
    return deformable_attention_matrix(m.locations, w, m.spatial_shapes)


def token_maps(
    maps: dict[str, AttentionMap],
    grads: dict[str, Array],
    image: int,
    query: int,
    spatial_shapes: tuple[tuple[int, int], ...],
) -> dict[str, np.ndarray]:
    """Relevance of every image token (S,) to query ``query`` of image ``image``, per method."""
    layers = group_layers(maps)
    b = slice(image, image + 1)
    last = maps[layers.decoder_cross[-1]]
    cross = to_numpy(dense_matrix(last))[image].mean(0)  # (Q, S), heads averaged
    out = {"attention": cross[query]}
    if layers.encoder:
        enc = [to_numpy(dense_matrix(maps[n]))[b] for n in layers.encoder]  # (1, M, S, S)
        out["rollout"] = cross[query] @ attention_rollout(enc)[0]
    else:
        out["rollout"] = cross[query]
    if last.kind == "dense":
        pairs = {n: MapAndGrad(maps[n].weights[b], grads[n][b]) for n in maps}
        r = encoder_decoder_relevance(
            [pairs[n] for n in layers.encoder],
            [pairs[n] for n in layers.decoder_self],
            [pairs[n] for n in layers.decoder_cross],
        )
        out["relevance"] = to_numpy(r.qs)[0, query]
    else:

        def samples(n: str) -> tuple[Array, Array, Array]:
            return maps[n].locations[b], maps[n].weights[b], grads[n][b]

        r = deformable_relevance([samples(n) for n in layers.decoder_cross], spatial_shapes, query)
        if layers.encoder:
            r = r + deformable_relevance([samples(n) for n in layers.encoder], spatial_shapes)
        out["relevance"] = to_numpy(r)[0]
    return out


def image_maps(
    maps: dict[str, AttentionMap],
    grads: dict[str, Array],
    image: int,
    query: int,
    spatial_shapes: tuple[tuple[int, int], ...],
    size: int,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Each method's map over the image (size, size), and ``random`` drawn from ``rng``."""
    tokens = token_maps(maps, grads, image, query, spatial_shapes)
    out = {k: tokens_to_image(v, spatial_shapes, size) for k, v in tokens.items()}
    out["random"] = rng.uniform(size=(size, size))
    return out


def spatial_shapes_of(maps: dict[str, AttentionMap], config) -> tuple[tuple[int, int], ...]:
    """(H_l, W_l) of the memory's levels: from a deformable map, else from the model config."""
    for m in maps.values():
        if m.spatial_shapes is not None:
            return m.spatial_shapes
    return tuple((config.image_size // s, config.image_size // s) for s in config.level_strides)
