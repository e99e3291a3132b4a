"""A bounded memory bank: K slots written first-in-first-out or by score, read by attention.

Dimension letters: B batch, K slots, E entries written at once, Q queries reading, D width.

Writing is bookkeeping and carries no gradient (the entries are the detached embeddings of
past frames, as in MOTR's query memory): the bank never holds more than K entries, and when it
is full the oldest entry (``"fifo"``) or the lowest-scoring one (``"score"``, scores decaying by
``decay`` each write, so that what is not refreshed fades) is forgotten. Reading is
differentiable: y = q + MultiHead(q, slots, slots) with empty slots masked out.
Zeng et al., "MOTR" (2022), section 3.4 (collective average / memory of track queries);
Cai et al., "MeMOT" (2022), section 3.2 (a memory of bounded length).
"""

from __future__ import annotations

from typing import NamedTuple

from minidetr.attention.dense import (
    MultiHeadAttentionCache,
    multi_head_attention_backward,
    multi_head_attention_forward,
)
from minidetr.backend import Array, device, namespace
from minidetr.checks import check_dim, check_ndim

POLICIES = ("fifo", "score")


class MemoryBank(NamedTuple):
    slots: Array  # (B, K, D) stored embeddings, zero where empty
    valid: Array  # (B, K) bool, the slot holds an entry
    age: Array  # (B, K) float, writes since the entry arrived
    score: Array  # (B, K) float, the entry's (decayed) score; what "score" forgetting ranks by


def empty_memory(batch: int, size: int, width: int, like: Array) -> MemoryBank:
    """A bank of ``size`` empty slots per batch entry, in the namespace and dtype of ``like``."""
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    xp, dev = namespace(like), device(like)
    zeros = xp.zeros((batch, size), dtype=like.dtype, device=dev)
    return MemoryBank(
        xp.zeros((batch, size, width), dtype=like.dtype, device=dev),
        xp.zeros((batch, size), dtype=xp.bool, device=dev),
        zeros,
        zeros,
    )


def memory_write(
    bank: MemoryBank,
    entries: Array,
    scores: Array | None = None,
    *,
    policy: str = "fifo",
    decay: float = 0.9,
) -> MemoryBank:
    """The bank after writing ``entries`` (B, E, D) with ``scores`` (B, E) (default 1).

    Keeps at most K entries: the K newest (``"fifo"``) or the K with the highest score after
    old scores are multiplied by ``decay`` (``"score"``); ties go to the later entry (within
    one write, the later in ``entries``).
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must be in [0, 1], got {decay}")
    check_ndim(entries, 3, "entries", "(B, E, D)")
    b, k, d = bank.slots.shape
    check_dim(entries, 0, b, "entries", "batch of the bank")
    check_dim(entries, 2, d, "entries", "width of the bank")
    xp, dev = namespace(entries), device(entries)
    e = entries.shape[1]
    if scores is None:
        scores = xp.ones((b, e), dtype=entries.dtype, device=dev)
    elif tuple(scores.shape) != (b, e):
        raise ValueError(f"scores must have shape {(b, e)}, got {tuple(scores.shape)}")
    slots = xp.concat([bank.slots, entries], axis=1)  # (B, K + E, D)
    valid = xp.concat([bank.valid, xp.ones((b, e), dtype=xp.bool, device=dev)], axis=1)
    age = xp.concat([bank.age + 1, xp.zeros((b, e), dtype=bank.age.dtype, device=dev)], axis=1)
    score = xp.concat([bank.score * decay, xp.astype(scores, bank.score.dtype)], axis=1)
    # rank: valid entries first, then by recency or by score with recency breaking ties
    newest = -age if policy == "fifo" else score - 1e-6 * age
    floor = xp.min(newest) - 1.0
    rank = xp.where(valid, newest, floor)  # (B, K + E)
    # a stable sort of the reversed order puts the later of two equal entries first
    last = k + e - 1
    keep = last - xp.argsort(-xp.flip(rank, axis=1), axis=1, stable=True)[:, :k]  # (B, K)
    keep = xp.sort(keep, axis=1)  # slots stay in order of arrival, so position breaks ties
    rows = [
        [xp.take(a[i, ...], keep[i, :], axis=0) for a in (slots, valid, age, score)]
        for i in range(b)
    ]
    return MemoryBank(*(xp.stack([r[j] for r in rows]) for j in range(4)))


class MemoryReadCache(NamedTuple):
    attention: MultiHeadAttentionCache


def memory_read_forward(
    queries: Array, slots: Array, valid: Array, in_w: Array, in_b: Array, out_w: Array,
    out_b: Array, *, num_heads: int,
) -> tuple[Array, MemoryReadCache]:  # fmt: skip
    """y = q + MultiHead(q, slots, slots), empty slots masked out.

    queries (B, Q, D); slots (B, K, D) and valid (B, K) bool from a :class:`MemoryBank`;
    in_w (3D, D), in_b (3D,), out_w (D, D), out_b (D,). A query facing an empty bank reads
    nothing: y = q + out_b. Returns (B, Q, D).
    """
    check_ndim(slots, 3, "slots", "(B, K, D)")
    if tuple(valid.shape) != tuple(slots.shape[:2]):
        raise ValueError(f"valid must have shape {tuple(slots.shape[:2])}, got {valid.shape}")
    a, cache = multi_head_attention_forward(
        queries, slots, slots, in_w, in_b, out_w, out_b,
        num_heads=num_heads, key_padding_mask=~valid,
    )  # fmt: skip
    return queries + a, MemoryReadCache(cache)  # (B, Q, D)


def memory_read_backward(
    dy: Array, cache: MemoryReadCache
) -> tuple[Array, Array, Array, Array, Array, Array]:
    """Gradients (dqueries, dslots, din_w, din_b, dout_w, dout_b); empty slots get zero."""
    dq, dk, dv, din_w, din_b, dout_w, dout_b = multi_head_attention_backward(dy, cache.attention)
    return dy + dq, dk + dv, din_w, din_b, dout_w, dout_b
