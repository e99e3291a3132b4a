"""Attention over a clip of frames: joint, over time only, or over space only.

Dimension letters: B batch (any leading dimensions, heads included), T frames, N spatial
tokens per frame, d head width.

Each mode is scaled dot-product attention (:mod:`minidetr.attention.dense`) on a reshaped view
of the same (B, T, N, d) tokens:

* ``"joint"``: every token attends to all T x N tokens of the clip, a (T N) x (T N) matrix;
* ``"time"``: each spatial position attends to itself in the T frames, N matrices of T x T;
* ``"space"``: each frame attends within itself, T matrices of N x N.

Joint attention costs O((T N)^2 d); time then space ("divided") costs O(T N (T + N) d), about
T N / (T + N) times less: 7.8x at T = 8, N = 256. Bertasius et al., "Is Space-Time Attention
All You Need for Video Understanding?" (TimeSformer, 2021), section 3.
"""

from __future__ import annotations

from typing import NamedTuple

from minidetr.attention.dense import (
    AttentionCache,
    scaled_dot_product_attention_backward,
    scaled_dot_product_attention_forward,
)
from minidetr.backend import Array, namespace
from minidetr.checks import check_floating

MODES = ("joint", "time", "space")


class SpaceTimeCache(NamedTuple):
    attention: AttentionCache  # of the reshaped view
    mode: str
    shape: tuple[int, ...]  # (B..., T, N, d) of q


def _to_view(x: Array, mode: str) -> Array:
    """(B..., T, N, d) -> the layout whose last two axes attend to each other."""
    xp = namespace(x)
    *lead, t, n, d = x.shape
    if mode == "joint":
        return xp.reshape(x, (*lead, t * n, d))  # (B..., T N, d)
    if mode == "time":
        axes = (*range(len(lead)), len(lead) + 1, len(lead), len(lead) + 2)
        return xp.permute_dims(x, axes)  # (B..., N, T, d)
    return x  # space: (B..., T, N, d) already


def _from_view(x: Array, mode: str, t: int, n: int) -> Array:
    """Undo :func:`_to_view` for an array whose last axis may have another width."""
    xp = namespace(x)
    if mode == "joint":
        *lead, _, d = x.shape
        return xp.reshape(x, (*lead, t, n, d))
    if mode == "time":
        lead = x.ndim - 3
        return xp.permute_dims(x, (*range(lead), lead + 1, lead, lead + 2))
    return x


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def space_time_attention_forward(
    q: Array, k: Array, v: Array, *, mode: str
) -> tuple[Array, SpaceTimeCache]:
    """out = softmax(q k^T / sqrt(d)) v over the token set ``mode`` names.

    q, k (B..., T, N, d) and v (B..., T, N, dv) with the same B..., T and N; ``mode`` is
    ``"joint"``, ``"time"`` or ``"space"``. Returns (B..., T, N, dv).
    """
    _check_mode(mode)
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_floating(x, name)
        if x.ndim < 4:
            raise ValueError(f"{name} must have shape (B, T, N, d), got {tuple(x.shape)}")
    if tuple(k.shape) != tuple(q.shape):
        raise ValueError(f"k must have the shape of q {tuple(q.shape)}, got {tuple(k.shape)}")
    if tuple(v.shape[:-1]) != tuple(q.shape[:-1]):
        raise ValueError(
            f"v must have shape {tuple(q.shape[:-1])} + (dv,) like q, got {tuple(v.shape)}"
        )
    t, n = q.shape[-3], q.shape[-2]
    out, cache = scaled_dot_product_attention_forward(
        _to_view(q, mode), _to_view(k, mode), _to_view(v, mode)
    )
    return _from_view(out, mode, t, n), SpaceTimeCache(cache, mode, tuple(q.shape))


def space_time_attention_backward(dout: Array, cache: SpaceTimeCache) -> tuple[Array, Array, Array]:
    """Gradients (dq, dk, dv), each in the (B..., T, N, .) layout of the forward's inputs."""
    t, n = cache.shape[-3], cache.shape[-2]
    grads = scaled_dot_product_attention_backward(_to_view(dout, cache.mode), cache.attention)
    dq, dk, dv = (_from_view(g, cache.mode, t, n) for g in grads)
    return dq, dk, dv


def attention_flops(t: int, n: int, d: int, mode: str) -> int:
    """Multiply-adds x 2 of the two products q k^T and p v for one (T, N, d) clip and head."""
    _check_mode(mode)
    pairs = {"joint": (t * n) ** 2, "time": n * t * t, "space": t * n * n}[mode]
    return 2 * 2 * pairs * d
