"""What a track query carries into the next frame: its last decoder embedding, read with its past.

Dimension letters: N tracks (all clips of a batch together), D width, K memory slots,
W window of past frames (oldest first).

TrackFormer (Meinhardt et al., 2022) makes a track query of the decoder embedding e_t that
found the object in frame t. Two ways of letting the query see further back, both residual:

* temporal aggregation over the track's last W embeddings, tagged with their age
  (:func:`~minidetr.video.aggregation.temporal_aggregation_forward`, one token per frame):
  x = e_t + MultiHead(e_t, past + e_age, past);
* a read of the track's bounded memory bank (:mod:`minidetr.video.memory`, MOTR's memory of
  track queries, Zeng et al., 2022): c = x + MultiHead(x, slots, slots), empty slots masked.

The embeddings and the memory are detached (frame t ran without gradient); the gradient
reaches the parameters of the two reads. Each read's output projection starts at zero, so a
fresh read passes e_t through unchanged and training decides what the past adds.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minidetr.backend import Array, asarray, namespace
from minidetr.video.aggregation import (
    AggregationCache,
    temporal_aggregation_backward,
    temporal_aggregation_forward,
)
from minidetr.video.memory import MemoryReadCache, memory_read_backward, memory_read_forward
from minidetr.video.track_history import HistoryConfig, TrackHistory, gather_histories

READ_PARAMS = ("in_w", "in_b", "out_w", "out_b")
MODES = ("none", "add", "replace")


class ContentSpec(NamedTuple):
    """How track queries are made: ``mode`` "none" (class embedding only), "add" (class
    embedding + content) or "replace" (content alone, with the padding row's embedding);
    the reads' ``params`` (may be empty), what each track remembers, the reads' heads."""

    mode: str
    params: dict
    history: HistoryConfig
    num_heads: int


def init_track_content_params(
    width: int, *, memory: bool, window: int, like: Array, seed: int = 0
) -> dict[str, Array]:
    """``memory.*`` (with ``memory``) and ``aggregation.*`` (with ``window`` > 0): Xavier-uniform
    input projections (3D, D), zero biases, zero output projections (D, D), and for the
    aggregation small random age embeddings (W, D)."""
    rng = np.random.default_rng(seed)
    host: dict[str, np.ndarray] = {}
    for prefix, on in (("aggregation", window > 0), ("memory", memory)):
        if not on:
            continue
        if prefix == "aggregation":
            host["aggregation.age"] = rng.normal(0.0, 0.1, (window, width))
        host[f"{prefix}.in_w"] = rng.uniform(-1, 1, (3 * width, width)) * np.sqrt(3 / (2 * width))
        host[f"{prefix}.in_b"] = np.zeros(3 * width)
        host[f"{prefix}.out_w"] = np.zeros((width, width))
        host[f"{prefix}.out_b"] = np.zeros(width)
    return {k: asarray(v, like=like, dtype=like.dtype) for k, v in host.items()}


class TrackContentCache(NamedTuple):
    aggregation: AggregationCache | None
    memory: MemoryReadCache | None


def track_content_forward(
    emb: Array,
    params: dict[str, Array],
    *,
    window: Array | None = None,
    slots: Array | None = None,
    valid: Array | None = None,
    num_heads: int,
) -> tuple[Array, TrackContentCache]:
    """c = read_memory(aggregate(e_t, past)), each step only where its parameters exist.

    emb (N, D) each track's last embedding; window (N, W, D) its W previous embeddings,
    oldest first (needed with ``aggregation.*``); slots (N, K, D) and valid (N, K) its memory
    bank (needed with ``memory.*``). Returns (N, D).
    """
    if emb.ndim != 2:
        raise ValueError(f"emb must be (N, D), got shape {tuple(emb.shape)}")
    xp = namespace(emb)
    x = emb[:, None, :]  # (N, 1, D)
    agg = mem = None
    if "aggregation.age" in params:
        if window is None:
            raise ValueError("window (N, W, D) is needed: the parameters aggregate a window")
        p = params
        x, agg = temporal_aggregation_forward(
            x, window[:, :, None, :], p["aggregation.age"],
            *(p[f"aggregation.{k}"] for k in READ_PARAMS), num_heads=num_heads,
        )  # fmt: skip
    if "memory.in_w" in params:
        if slots is None or valid is None:
            raise ValueError("slots (N, K, D) and valid (N, K) are needed: the parameters read")
        x, mem = memory_read_forward(
            x, slots, valid, *(params[f"memory.{k}"] for k in READ_PARAMS), num_heads=num_heads
        )  # (N, 1, D)
    return xp.reshape(x, emb.shape), TrackContentCache(agg, mem)


def track_content_backward(dc: Array, cache: TrackContentCache) -> dict[str, Array]:
    """dLoss/dparams of the reads from dc (N, D); the embeddings are constants."""
    grads: dict[str, Array] = {}
    dx = dc[:, None, :]  # (N, 1, D)
    if cache.memory is not None:
        dx, _, *dparams = memory_read_backward(dx, cache.memory)
        grads.update({f"memory.{k}": g for k, g in zip(READ_PARAMS, dparams)})
    if cache.aggregation is not None:
        _, _, dage, *dparams = temporal_aggregation_backward(dx, cache.aggregation)
        grads["aggregation.age"] = dage
        grads.update({f"aggregation.{k}": g for k, g in zip(READ_PARAMS, dparams)})
    return grads


class SlotContentCache(NamedTuple):
    content: TrackContentCache
    rows: Array  # (N,) the flat slot index b * Qt + j of each track
    shape: tuple[int, int, int]  # (B, Qt, D)


def slot_content_forward(
    histories: list[TrackHistory], filled: np.ndarray, spec: ContentSpec, like: Array
) -> tuple[Array, SlotContentCache]:
    """The dn_content (B, Qt, D) of a batch's track-query slots: each filled slot of
    ``filled`` (B, Qt), row-major, gets the content of the next history in ``histories``;
    the other (padding) slots get zeros."""
    xp = namespace(like)
    b, qt = filled.shape
    d = next(iter(h.current.size for h in histories), 0)
    if len(histories) != int(filled.sum()):
        raise ValueError(f"{int(filled.sum())} filled slots but {len(histories)} histories")
    if not histories:
        return xp.zeros((b, qt, 0)), SlotContentCache(None, None, (b, qt, 0))
    host = gather_histories(histories, spec.history, d)
    arrays = {k: asarray(v, like=like, dtype=like.dtype) for k, v in host.items() if k != "valid"}
    content, cache = track_content_forward(
        arrays["emb"], spec.params, window=arrays["window"], slots=arrays["slots"],
        valid=asarray(host["valid"], like=like), num_heads=spec.num_heads,
    )  # fmt: skip
    rows = np.flatnonzero(filled.reshape(-1))
    where = np.full(b * qt, len(histories))  # padding reads the zero row
    where[rows] = np.arange(len(histories))
    padded = xp.concat([content, xp.zeros((1, d), dtype=content.dtype)], axis=0)  # (N + 1, D)
    out = xp.take(padded, asarray(where, like=like, dtype=xp.int64), axis=0)
    return xp.reshape(out, (b, qt, d)), SlotContentCache(
        cache, asarray(rows, like=like, dtype=xp.int64), (b, qt, d)
    )


def slot_content_backward(dout: Array, cache: SlotContentCache) -> dict[str, Array]:
    """The reads' parameter gradients from dLoss/d``dn_content`` (B, Qt, D)."""
    if cache.content is None:
        return {}
    xp = namespace(dout)
    b, qt, d = cache.shape
    dc = xp.take(xp.reshape(dout, (b * qt, d)), cache.rows, axis=0)  # (N, D)
    return track_content_backward(dc, cache.content)
