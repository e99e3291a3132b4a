"""Attention entropy in training: logged per head and layer, and optionally penalised.

    H(p_row) = -sum_j p_j log p_j  (nats),   penalty = W * mean over maps of mean_rows H

Both read the attention maps the step's forward already keeps in its caches
(:func:`minidetr.explain.capture.capture_attention`), so neither needs a second
forward. The penalty's gradient dpenalty/dp (:mod:`minidetr.explain.regularize`)
enters each dense attention backward through
:func:`minidetr.attention.record.extra_attention_grads`. Penalised maps: the
encoder self-attention and decoder cross-attention of a softmax (dense) model;
a positive W sharpens them, a negative W spreads them out.
Shapes: B batch, M heads, Lq queries, Lk keys, Q queries, L levels, P points.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from minidetr.attention.record import extra_attention_grads
from minidetr.backend import Array, namespace, to_numpy
from minidetr.explain.capture import AttentionMap, capture_attention
from minidetr.explain.regularize import entropy_penalty_backward, entropy_penalty_forward


def _row_entropy(p: Array) -> Array:
    """-sum_j p_j log p_j over the last axis, 0 log 0 = 0 (masked or empty rows give 0)."""
    xp = namespace(p)
    positive = p > 0
    safe = xp.where(positive, p, xp.ones_like(p))
    return -xp.sum(xp.where(positive, p * xp.log(safe), xp.zeros_like(p)), axis=-1)


def head_entropy(m: AttentionMap) -> list[float]:
    """Mean entropy (nats) of each head's rows: dense (B, M, Lq, Lk) over keys, deformable
    (B, Q, M, L, P) over its L * P sampling weights. Returns M floats."""
    w = m.weights
    xp = namespace(w)
    if m.kind == "dense":
        h = _row_entropy(w)  # (B, M, Lq)
        per_head = xp.mean(xp.permute_dims(h, (1, 0, 2)), axis=(1, 2))  # (M,)
    else:
        b, q, heads = w.shape[:3]
        h = _row_entropy(xp.reshape(w, (b, q, heads, -1)))  # (B, Q, M)
        per_head = xp.mean(h, axis=(0, 1))  # (M,)
    return [float(v) for v in np.asarray(to_numpy(per_head), dtype=np.float64)]


def attention_entropies(cache: Any) -> dict[str, list[float]]:
    """Per-head mean entropy of every attention map held by a ``MiniDETR.forward`` cache."""
    return {name: head_entropy(m) for name, m in capture_attention(cache).items()}


def penalised(name: str) -> bool:
    """The maps the penalty acts on: encoder self-attention and decoder cross-attention."""
    return name.startswith("encoder.") or name.endswith(".cross_attn")


def entropy_penalty(cache: Any, weight: float) -> tuple[Array, dict[int, Array]]:
    """W * mean over the penalised dense maps of their mean row entropy, and its gradient
    dpenalty/dp for each of those maps, keyed by ``id`` of the op's cache."""
    maps = [m for m in capture_attention(cache).values() if penalised(m.name)]
    dense = [m for m in maps if m.kind == "dense"]
    if not dense or len(dense) != len(maps):
        raise ValueError("the attention entropy penalty needs dense (softmax) attention maps")
    total, grads = None, {}
    for m in dense:
        value, pcache = entropy_penalty_forward(m.weights, weight / len(dense))
        total = value if total is None else total + value
        (grads[id(m.cache)],) = entropy_penalty_backward(1.0, pcache)
    return total, grads


@contextmanager
def adding_penalty_grads(grads: dict[int, Array]) -> Iterator[None]:
    """Inside this block the dense attention backward adds the penalty's dpenalty/dp."""
    with extra_attention_grads(lambda cache: grads.get(id(cache))):
        yield
