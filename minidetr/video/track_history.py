"""A track's past on the host: its last embedding, a window of earlier ones, a memory bank.

Dimension letters: N tracks, D width, K memory slots, W window of past frames.

Bookkeeping only, no gradient: each frame in which a track is seen, :meth:`TrackHistory.observe`
makes the new decoder embedding the track's current one and moves the previous one into the
window (the last W, oldest first) and into the memory bank (:func:`~minidetr.video.memory.
memory_write`, K slots, forgetting by age or by decayed score). :func:`gather_histories` stacks
N tracks into the arrays :func:`~minidetr.video.track_content.track_content_forward` reads.
The same class serves training (histories built from frames run without gradient) and
inference (:func:`~minidetr.video.query_tracker.track_clips`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minidetr.video.memory import empty_memory, memory_write


@dataclass(frozen=True)
class HistoryConfig:
    """What a track remembers: ``memory_size`` slots (0: no bank), ``window`` frames (0: none)."""

    memory_size: int = 0
    window: int = 0
    policy: str = "score"  # the bank's forgetting: "fifo" or "score"
    decay: float = 0.9

    def __post_init__(self) -> None:
        if self.memory_size < 0 or self.window < 0:
            raise ValueError(f"memory_size and window must be non-negative, got {self}")


class TrackHistory:
    """One track's embeddings: ``current`` (D,), ``past`` (the last W before it, oldest first)
    and ``bank`` (a one-track :class:`~minidetr.video.memory.MemoryBank` of earlier ones)."""

    def __init__(self, cfg: HistoryConfig) -> None:
        self.cfg = cfg
        self.current: np.ndarray | None = None
        self.score = 0.0
        self.past: list[np.ndarray] = []
        self.bank = None

    def observe(self, emb: np.ndarray, score: float) -> None:
        """The track is seen with embedding ``emb`` (D,) and ``score``: the previous embedding
        moves into the window and the bank."""
        emb = np.asarray(emb, dtype=np.float64).reshape(-1)
        if self.current is not None:
            if self.cfg.window:
                self.past = [*self.past, self.current][-self.cfg.window :]
            if self.cfg.memory_size:
                if self.bank is None:
                    self.bank = empty_memory(1, self.cfg.memory_size, emb.size, emb)
                entry, s = self.current[None, None, :], np.array([[self.score]])
                self.bank = memory_write(
                    self.bank, entry, s, policy=self.cfg.policy, decay=self.cfg.decay
                )
        self.current, self.score = emb, float(score)


def gather_histories(tracks: list[TrackHistory], cfg: HistoryConfig, width: int) -> dict:
    """{"emb" (N, D), "window" (N, W, D), "slots" (N, K, D), "valid" (N, K)} on the host.

    A track with fewer than W earlier embeddings repeats its oldest (its current one when it
    has none), so a new track's window holds what it knows; an empty bank is all invalid.
    """
    n = len(tracks)
    emb = np.zeros((n, width))
    window = np.zeros((n, cfg.window, width))
    slots = np.zeros((n, cfg.memory_size, width))
    valid = np.zeros((n, cfg.memory_size), dtype=bool)
    for i, tr in enumerate(tracks):
        if tr.current is None:
            raise ValueError(f"track {i} has no embedding yet: observe it first")
        emb[i] = tr.current
        if cfg.window:
            known = tr.past or [tr.current]
            window[i] = [known[0]] * (cfg.window - len(known)) + known[-cfg.window :]
        if cfg.memory_size and tr.bank is not None:
            slots[i], valid[i] = tr.bank.slots[0], tr.bank.valid[0]
    return {"emb": emb, "window": window, "slots": slots, "valid": valid}
