"""Temporal aggregation: the current frame's tokens attend to a window of past frames.

Dimension letters: B batch, W frames in the window (most recent last), N tokens per frame,
D width, M heads.

y = x + MultiHead(x, past + e_age, past): each token of frame t gathers evidence from the
N tokens of each of the W frames before it, keys tagged with a learned embedding of how old
their frame is (e_age[w] for the frame W - w steps back), so a query can prefer the recent
frames. The multi-frame feature fusion of video detectors (Zhu et al., "Flow-Guided Feature
Aggregation", 2017, with attention in place of optical flow; Wu et al., "Sequence Level
Semantics Aggregation", 2019).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minidetr.attention.dense import (
    MultiHeadAttentionCache,
    multi_head_attention_backward,
    multi_head_attention_forward,
)
from minidetr.backend import Array, asarray, device, namespace
from minidetr.checks import check_dim, check_ndim

AGGREGATION_PARAMS = ("age", "in_w", "in_b", "out_w", "out_b")


def init_aggregation_params(
    width: int, max_window: int, like: Array, *, seed: int = 0
) -> dict[str, Array]:
    """Xavier-uniform projections, zero biases, small random age embeddings (max_window, D)."""
    rng = np.random.default_rng(seed)
    host = {
        "age": rng.normal(0.0, 0.1, (max_window, width)),
        "in_w": rng.uniform(-1, 1, (3 * width, width)) * np.sqrt(6 / (4 * width)),
        "in_b": np.zeros(3 * width),
        "out_w": rng.uniform(-1, 1, (width, width)) * np.sqrt(6 / (2 * width)),
        "out_b": np.zeros(width),
    }
    return {k: asarray(v, like=like, dtype=like.dtype) for k, v in host.items()}


class AggregationCache(NamedTuple):
    attention: MultiHeadAttentionCache
    window: int
    max_window: int


def _ages(age: Array, window: int) -> Array:
    """The embeddings of the last ``window`` ages, oldest first: (W, D)."""
    return age[age.shape[0] - window :, :]


def temporal_aggregation_forward(
    x: Array, past: Array, age: Array, in_w: Array, in_b: Array, out_w: Array, out_b: Array,
    *, num_heads: int,
) -> tuple[Array, AggregationCache]:  # fmt: skip
    """y = x + MultiHead(x, past + e_age, past) over the W x N past tokens.

    x (B, N, D) the current frame; past (B, W, N, D), oldest frame first; age (Wmax, D) with
    Wmax >= W, its last W rows used (row Wmax - 1 tags the previous frame); in_w (3D, D),
    in_b (3D,), out_w (D, D), out_b (D,). Returns (B, N, D).
    """
    check_ndim(x, 3, "x", "(B, N, D)")
    check_ndim(past, 4, "past", "(B, W, N, D)")
    check_ndim(age, 2, "age", "(Wmax, D)")
    b, w, n, d = past.shape
    check_dim(x, 0, b, "x", "batch of past")
    check_dim(x, 2, d, "x", "width of past")
    if w > age.shape[0]:
        raise ValueError(f"past holds {w} frames but age embeds at most {age.shape[0]}")
    xp = namespace(x, past, age)
    keys = xp.reshape(past, (b, w * n, d))  # (B, W N, D)
    key_pos = xp.reshape(
        xp.broadcast_to(_ages(age, w)[None, :, None, :], (b, w, n, d)), (b, w * n, d)
    )  # (B, W N, D)
    a, cache = multi_head_attention_forward(
        x, keys, keys, in_w, in_b, out_w, out_b, num_heads=num_heads, key_pos=key_pos
    )  # (B, N, D)
    return x + a, AggregationCache(cache, w, age.shape[0])


def temporal_aggregation_backward(
    dy: Array, cache: AggregationCache
) -> tuple[Array, Array, Array, Array, Array, Array, Array]:
    """Gradients (dx, dpast, dage, din_w, din_b, dout_w, dout_b)."""
    xp = namespace(dy)
    dquery, dkey, dvalue, din_w, din_b, dout_w, dout_b = multi_head_attention_backward(
        dy, cache.attention
    )
    b, _, d = dy.shape
    w = cache.window
    dkeys = xp.reshape(dkey, (b, w, -1, d))  # (B, W, N, D); key_pos gets the same gradient
    dpast = dkeys + xp.reshape(dvalue, (b, w, -1, d))
    dage_window = xp.sum(dkeys, axis=(0, 2))  # (W, D)
    unused = xp.zeros((cache.max_window - w, d), dtype=dy.dtype, device=device(dy))
    dage = xp.concat([unused, dage_window], axis=0)  # (Wmax, D)
    return dy + dquery, dpast, dage, din_w, din_b, dout_w, dout_b
