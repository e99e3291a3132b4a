"""Divided space-time attention, TimeSformer's layer: attention over time, then over space.

Dimension letters: B batch, T frames, N spatial tokens per frame, D width, M heads, Dh = D / M.

One sublayer is pre-norm multi-head attention with a residual,
x + W_o Attn_mode(LN(x) W_q, LN(x) W_k, LN(x) W_v); the divided layer runs the ``"time"``
sublayer, then the ``"space"`` one, each with its own layer norm and projections. The joint
layer is one ``"joint"`` sublayer, the baseline it is measured against. Parameters are a flat
dict; the names of one sublayer are ``PARAMS`` under a prefix (``time.``, ``space.``,
``joint.``). Bertasius et al., "Is Space-Time Attention All You Need for Video Understanding?"
(TimeSformer, 2021), section 3, "Divided Space-Time Attention".
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minidetr.backend import Array, asarray, namespace
from minidetr.checks import check_dim, check_ndim
from minidetr.ops.linear import LinearCache, linear_backward, linear_forward
from minidetr.ops.normalization import NormCache, layernorm_backward, layernorm_forward
from minidetr.video.space_time import (
    SpaceTimeCache,
    space_time_attention_backward,
    space_time_attention_forward,
)

PARAMS = ("norm_w", "norm_b", "in_w", "in_b", "out_w", "out_b")
DIVIDED = ("time", "space")


def init_space_time_params(
    width: int, like: Array, *, modes: tuple[str, ...] = DIVIDED, seed: int = 0
) -> dict[str, Array]:
    """Xavier-uniform projections, unit layer norms, zero biases for each sublayer in ``modes``."""
    rng = np.random.default_rng(seed)
    bound_in, bound_out = np.sqrt(6 / (4 * width)), np.sqrt(6 / (2 * width))
    host = {}
    for mode in modes:
        host[f"{mode}.norm_w"] = np.ones(width)
        host[f"{mode}.norm_b"] = np.zeros(width)
        host[f"{mode}.in_w"] = rng.uniform(-bound_in, bound_in, (3 * width, width))
        host[f"{mode}.in_b"] = np.zeros(3 * width)
        host[f"{mode}.out_w"] = rng.uniform(-bound_out, bound_out, (width, width))
        host[f"{mode}.out_b"] = np.zeros(width)
    return {k: asarray(v, like=like, dtype=like.dtype) for k, v in host.items()}


class SublayerCache(NamedTuple):
    norm: NormCache
    q: LinearCache
    k: LinearCache
    v: LinearCache
    attention: SpaceTimeCache
    out: LinearCache
    num_heads: int


def _heads(x: Array, m: int) -> Array:
    """(B, T, N, D) -> (B, M, T, N, Dh)."""
    xp = namespace(x)
    b, t, n, d = x.shape
    return xp.permute_dims(xp.reshape(x, (b, t, n, m, d // m)), (0, 3, 1, 2, 4))


def _merge(x: Array) -> Array:
    """(B, M, T, N, Dh) -> (B, T, N, D)."""
    xp = namespace(x)
    b, m, t, n, dh = x.shape
    return xp.reshape(xp.permute_dims(x, (0, 2, 3, 1, 4)), (b, t, n, m * dh))


def space_time_sublayer_forward(
    x: Array, params: dict[str, Array], *, mode: str, num_heads: int
) -> tuple[Array, SublayerCache]:
    """y = x + W_o Attn_mode(LN(x) W_q, LN(x) W_k, LN(x) W_v), multi-head.

    x (B, T, N, D); ``params`` holds ``<mode>.<name>`` for each name in ``PARAMS``.
    Returns (B, T, N, D).
    """
    check_ndim(x, 4, "x", "(B, T, N, D)")
    d = x.shape[-1]
    if num_heads < 1 or d % num_heads:
        raise ValueError(f"num_heads must divide the width {d}, got {num_heads}")
    p = {name: params[f"{mode}.{name}"] for name in PARAMS}
    check_dim(p["in_w"], 0, 3 * d, f"params['{mode}.in_w']", "3 x width")
    h, norm = layernorm_forward(x, p["norm_w"], p["norm_b"])  # (B, T, N, D)
    q, q_cache = linear_forward(h, p["in_w"][:d, :], p["in_b"][:d])  # (B, T, N, D)
    k, k_cache = linear_forward(h, p["in_w"][d : 2 * d, :], p["in_b"][d : 2 * d])
    v, v_cache = linear_forward(h, p["in_w"][2 * d :, :], p["in_b"][2 * d :])
    m = num_heads
    a, a_cache = space_time_attention_forward(_heads(q, m), _heads(k, m), _heads(v, m), mode=mode)
    o, o_cache = linear_forward(_merge(a), p["out_w"], p["out_b"])  # (B, T, N, D)
    return x + o, SublayerCache(norm, q_cache, k_cache, v_cache, a_cache, o_cache, m)


def space_time_sublayer_backward(dy: Array, cache: SublayerCache) -> tuple[Array, dict]:
    """Gradients (dx, {name: dparam}) of one sublayer, param names without the mode prefix."""
    xp = namespace(dy)
    m = cache.num_heads
    da, dout_w, dout_b = linear_backward(dy, cache.out)
    dq, dk, dv = space_time_attention_backward(_heads(da, m), cache.attention)
    dh_q, dwq, dbq = linear_backward(_merge(dq), cache.q)
    dh_k, dwk, dbk = linear_backward(_merge(dk), cache.k)
    dh_v, dwv, dbv = linear_backward(_merge(dv), cache.v)
    dx_norm, dnorm_w, dnorm_b = layernorm_backward(dh_q + dh_k + dh_v, cache.norm)
    grads = {
        "norm_w": dnorm_w,
        "norm_b": dnorm_b,
        "in_w": xp.concat([dwq, dwk, dwv], axis=0),
        "in_b": xp.concat([dbq, dbk, dbv], axis=0),
        "out_w": dout_w,
        "out_b": dout_b,
    }
    return dy + dx_norm, grads


class SpaceTimeLayerCache(NamedTuple):
    sublayers: tuple[SublayerCache, ...]
    modes: tuple[str, ...]


def space_time_layer_forward(
    x: Array, params: dict[str, Array], *, num_heads: int, modes: tuple[str, ...] = DIVIDED
) -> tuple[Array, SpaceTimeLayerCache]:
    """The sublayers of ``modes`` in order: ("time", "space") is divided attention.

    x (B, T, N, D). Returns (B, T, N, D). ``modes=("joint",)`` is the joint layer.
    """
    caches = []
    for mode in modes:
        x, c = space_time_sublayer_forward(x, params, mode=mode, num_heads=num_heads)
        caches.append(c)
    return x, SpaceTimeLayerCache(tuple(caches), tuple(modes))


def space_time_layer_backward(dy: Array, cache: SpaceTimeLayerCache) -> tuple[Array, dict]:
    """Gradients (dx, {"<mode>.<name>": dparam}) of :func:`space_time_layer_forward`."""
    grads = {}
    for mode, c in zip(reversed(cache.modes), reversed(cache.sublayers)):
        dy, g = space_time_sublayer_backward(dy, c)
        grads.update({f"{mode}.{k}": v for k, v in g.items()})
    return dy, grads
