"""Flat buffers for AdamW's one-call step, and the pool they are reused from.

``optim.adamw_step`` keeps a run's parameters, first and second moments as views of one
flat buffer each, so that a step is one compiled call over all of them. A step needs
fresh output buffers (the old parameters stay valid for pending checkpoints); this
module hands out buffers of earlier steps that nothing references any more.
"""

from __future__ import annotations

import sys
from typing import NamedTuple

import numpy as np


class FlatBuffers(NamedTuple):
    """One flat buffer each for the parameters, m and v that an AdamW step returned.

    Parameter ``names[k]`` is entries offsets[k] to offsets[k + 1] - 1 of each; the
    returned dicts hold views of these buffers, so the next step reads them in place.
    ``pool`` holds the buffers of the run's steps for reuse (see :func:`pooled_buffer`).
    """

    names: tuple[str, ...]
    offsets: np.ndarray  # (P + 1,) int64
    p: np.ndarray  # (N,)
    m: np.ndarray  # (N,)
    v: np.ndarray  # (N,)
    pool: list[np.ndarray]


# A step holds 7 buffers: the gradients, its inputs p, m, v and its outputs. Buffers kept
# beyond that (a pending checkpoint's) are allocated outside the pool and freed with their
# holder, so a run keeps no more memory than the per-parameter arrays did.
POOL_SIZE = 7


def _unreferenced_count() -> int:
    """What getrefcount says, in :func:`pooled_buffer`'s loop, of a pooled array nothing else holds:
    measured rather than assumed, since interpreters count borrowed references differently."""
    for buf in [np.empty(1)]:
        return sys.getrefcount(buf)
    raise AssertionError("unreachable")


_UNREFERENCED = _unreferenced_count()


def pooled_buffer(pool: list[np.ndarray], n: int, dtype: np.dtype) -> np.ndarray:
    """An uninitialised (n,) array: a pooled one that nothing references any more, else new.

    A step writes four buffers of all the parameters' size. Fresh ones cost page faults
    each step (the allocator returns blocks this big to the system when freed): about
    1.5 ms of a ``standard`` step. A pooled buffer that only the pool references (on
    CPython 3.11: the pool's slot, this loop's name and getrefcount's argument) has no
    view alive, since every NumPy view holds a reference to its base.
    """
    for buf in pool:
        if buf.shape[0] == n and buf.dtype == dtype and sys.getrefcount(buf) == _UNREFERENCED:
            return buf
    buf = np.empty(n, dtype=dtype)
    if len(pool) < POOL_SIZE:
        pool.append(buf)
    return buf
