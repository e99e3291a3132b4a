"""Every attention map of one forward pass, read from the model's caches, with its gradient.

The forward already keeps each attention map in its op's cache (the weights
``p`` of dense attention, the sampling locations and weights of deformable
attention) because the backward needs them. Capturing them is therefore a walk
over the cache, read-only, with no second forward. Their gradients come from
the hand-written backward itself (:mod:`minidetr.attention.record`): run it for
the score to explain, inside ``record_attention_grads()``.

Names follow the parameters: ``encoder.layers.0.self_attn``,
``decoder.layers.2.self_attn``, ``decoder.layers.2.cross_attn``.
Shapes: B batch, M heads, Lq queries, Lk keys, Q queries, L levels, P points.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from minidetr.attention import AttentionCache
from minidetr.attention.record import AttentionGrads, record_attention_grads
from minidetr.backend import Array, asarray
from minidetr.deformable.module import MSDeformAttnModuleCache


class AttentionMap(NamedTuple):
    """One attention op of the forward, as its cache holds it.

    dense: ``weights`` (B, M, Lq, Lk), ``locations`` None; deformable: ``weights``
    (B, Q, M, L, P) and ``locations`` (B, Q, M, L, P, 2) normalised (x, y) on the
    levels ``spatial_shapes``. ``cache`` is the op's cache, the key of its gradient.
    """

    name: str
    kind: str  # "dense" or "deformable"
    weights: Array
    locations: Array | None
    spatial_shapes: tuple[tuple[int, int], ...] | None
    cache: Any


def _walk(node: Any, path: tuple, found: list) -> None:
    if isinstance(node, AttentionCache):
        found.append((path, node))
    elif isinstance(node, MSDeformAttnModuleCache):
        found.append((path, node))
    elif isinstance(node, tuple) and hasattr(node, "_fields"):  # a NamedTuple cache
        for field in node._fields:
            _walk(getattr(node, field), (*path, field), found)
    elif isinstance(node, (list, tuple)):
        for i, item in enumerate(node):
            _walk(item, (*path, i), found)


def _name(path: tuple) -> str:
    """encoder.layers.i.self_attn / decoder.layers.i.{self,cross}_attn from a cache path."""
    words = [p for p in path if isinstance(p, str)]
    index = next((p for p in path if isinstance(p, int)), None)
    if "encoder" in words and index is not None:
        return f"encoder.layers.{index}.self_attn"
    if "decoder" in words and index is not None:
        which = "cross_attn" if any("cross" in w for w in words) else "self_attn"
        return f"decoder.layers.{index}.{which}"
    return ".".join(str(p) for p in path)


def capture_attention(cache: Any) -> dict[str, AttentionMap]:
    """Every attention map held by a model cache (``MiniDETR.forward``'s), by layer name.

    Read-only: the arrays are the cache's own. Encoder self-attention, decoder
    self-attention and cross-attention, in the order of the forward.
    """
    found: list = []
    _walk(cache, (), found)
    if not found:
        raise ValueError("cache holds no attention map; pass the cache of MiniDETR.forward")
    maps: dict[str, AttentionMap] = {}
    for path, op in found:
        name = _name(path)
        if isinstance(op, AttentionCache):
            maps[name] = AttentionMap(name, "dense", op.p, None, None, op)
        else:
            s = op.sampling
            shapes = tuple((int(h), int(w)) for h, w in s.spatial_shapes)
            maps[name] = AttentionMap(
                name, "deformable", s.attention_weights, s.sampling_locations, shapes, op
            )
    return maps


def gradients_of(maps: dict[str, AttentionMap], grads: AttentionGrads) -> dict[str, Array]:
    """dy/dA for every captured map, shaped like its ``weights``."""
    out = {}
    for name, m in maps.items():
        if m.cache not in grads:
            raise ValueError(
                f"no gradient was recorded for {name}; run the backward while recording"
            )
        out[name] = grads[m.cache]
    return out


def explain_backward(
    model: Any, params: dict, images: Array, queries: Sequence[int | None], classes: Sequence[int]
) -> tuple[dict, dict[str, AttentionMap], dict[str, Array]]:
    """One forward and one backward of y = sum_b logit[b, queries[b], classes[b]].

    Images do not mix in the model, so image b's maps receive exactly the gradient
    of its own detection's logit. ``queries[b]`` None leaves image b's score out.
    Returns (outputs, maps, gradients); ``outputs`` as ``MiniDETR.forward``'s.
    """
    outputs, cache = model.forward(params, images, train=False)
    logits = outputs.pred_logits  # (B, Q, K)
    b = logits.shape[0]
    if len(queries) != b or len(classes) != b:
        raise ValueError(f"queries and classes must list one entry per image ({b})")
    onehot = np.zeros(tuple(logits.shape))  # (B, Q, K)
    for i, (q, c) in enumerate(zip(queries, classes)):
        if q is not None:
            onehot[i, int(q), int(c)] = 1.0
    dlogits = asarray(onehot, like=logits)
    with record_attention_grads() as recorded:
        model.backward({"pred_logits": dlogits}, cache)
    maps = capture_attention(cache)
    return outputs, maps, gradients_of(maps, recorded)
