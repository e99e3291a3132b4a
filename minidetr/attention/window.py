"""Windowed (local) attention that scores only the keys inside each query's window.

out = softmax(q k^T / sqrt(d), masked to the window) v, where the window is a band
|i - j| <= w over a sequence or a (2w + 1) x (2w + 1) square over an H x W grid
(:func:`~minidetr.attention.sparse.local_mask`, :func:`~minidetr.attention.sparse.grid_local_mask`).
Equal to the masked dense op (tested), but each query scores K = 2w + 1 (or
(2w + 1)^2) keys: O(N K d) instead of O(N^2 d), and no N x N matrix.

Dimension letters: Lq queries, Lk keys, K window size, d head width, dv value width.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minidetr.attention.gathered import (
    GatheredCache,
    gathered_attention_backward,
    gathered_attention_forward,
)
from minidetr.attention.sparse import _positive
from minidetr.backend import Array, device, namespace


def window_neighbours(
    lq: int, lk: int, window: int, *, grid: tuple[int, int] | None = None, like: Array | None = None
) -> Array:
    """Neighbour table (Lq, K) of key indices, -1 where the window leaves the sequence.

    Without ``grid``: K = 2 window + 1 keys j = i - window .. i + window. With
    ``grid=(H, W)`` (needs Lq = Lk = H W, tokens row-major): K = (2 window + 1)^2 keys
    of the square around each token. ``like`` gives the namespace and device.
    """
    _positive(lq, "Lq")
    _positive(lk, "Lk")
    _positive(window, "window", 0)
    xp = namespace(np.empty(0) if like is None else like)  # NumPy by default
    dev = None if like is None else device(like)
    offsets = xp.arange(-window, window + 1, device=dev)  # (2w + 1,)
    if grid is None:
        j = xp.arange(lq, device=dev)[:, None] + offsets[None, :]  # (Lq, K)
        return xp.where((j >= 0) & (j < lk), j, xp.full_like(j, -1))
    h, w = grid
    _positive(h, "grid height")
    _positive(w, "grid width")
    if lq != h * w or lk != h * w:
        raise ValueError(f"grid {grid} needs Lq = Lk = {h * w}, got Lq={lq}, Lk={lk}")
    t = xp.arange(lq, device=dev)
    y = (t // w)[:, None, None] + offsets[None, :, None]  # (Lq, 2w + 1, 1)
    x = (t % w)[:, None, None] + offsets[None, None, :]  # (Lq, 1, 2w + 1)
    inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)  # (Lq, 2w + 1, 2w + 1)
    j = xp.where(inside, y * w + x, xp.full_like(y * w + x, -1))
    return xp.reshape(j, (lq, (2 * window + 1) ** 2))


class WindowAttentionCache(NamedTuple):
    attention: GatheredCache


def window_attention_forward(
    q: Array, k: Array, v: Array, *, window: int, grid: tuple[int, int] | None = None
) -> tuple[Array, WindowAttentionCache]:
    """out_i = softmax over keys in i's window of q_i . k_j / sqrt(d), times v.

    q (..., Lq, d), k (..., Lk, d), v (..., Lk, dv), equal leading dimensions;
    ``window`` w >= 0; ``grid=(H, W)`` for a square window over a token grid. Returns
    (..., Lq, dv). Compiled loops on NumPy floats (``kernels/gather_attention_cpu.py``).
    Beltagy et al., "Longformer" (2020); Hassani et al., "Neighborhood Attention
    Transformer" (CVPR 2023).
    """
    table = window_neighbours(q.shape[-2], k.shape[-2], window, grid=grid, like=q)
    out, cache = gathered_attention_forward(q, k, v, table)
    return out, WindowAttentionCache(cache)


def window_attention_backward(
    dout: Array, cache: WindowAttentionCache
) -> tuple[Array, Array, Array]:
    """Gradients (dq, dk, dv) of :func:`window_attention_forward`."""
    return gathered_attention_backward(dout, cache.attention)
