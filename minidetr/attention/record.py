"""Recording dLoss/dA, the gradient of every attention map, during a backward pass.

The hand-written backward computes the gradient of the loss with respect to each
attention map on its way down (``dp`` in scaled dot-product attention, ``dattn``
in deformable attention) and then lets it go. Gradient-weighted explanations
need exactly these arrays, so an op's backward hands them to
:func:`record_attention_grad`, which keeps them only inside a
``with record_attention_grads() as grads:`` block; elsewhere it does nothing.
``grads[cache]`` is then the gradient of the map held in that op's cache.

The second hook runs the other way: inside ``with extra_attention_grads(extra):``
a dense attention backward asks :func:`extra_attention_grad` for a term that a loss
on the map itself adds to dL/dA (an entropy penalty, for attention regularisation),
and adds it to the gradient arriving from above before the softmax backward.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from minidetr.backend import Array


class AttentionGrads:
    """dLoss/dA of each attention op run by a backward, looked up by the op's forward cache."""

    def __init__(self) -> None:
        self._grads: dict[int, tuple[Any, Array]] = {}

    def add(self, cache: Any, grad: Array) -> None:
        key = id(cache)
        if key in self._grads:  # the same op reached twice: gradients add up
            grad = self._grads[key][1] + grad
        self._grads[key] = (cache, grad)  # holding the cache keeps its id from being reused

    def __getitem__(self, cache: Any) -> Array:
        entry = self._grads.get(id(cache))
        if entry is None or entry[0] is not cache:
            raise KeyError("no gradient was recorded for this attention cache")
        return entry[1]

    def __contains__(self, cache: Any) -> bool:
        entry = self._grads.get(id(cache))
        return entry is not None and entry[0] is cache

    def __len__(self) -> int:
        return len(self._grads)


_RECORDING: ContextVar[AttentionGrads | None] = ContextVar("attention_grads", default=None)


@contextmanager
def record_attention_grads() -> Iterator[AttentionGrads]:
    """Inside this block every attention backward stores its dLoss/dA in the yielded object."""
    grads = AttentionGrads()
    token = _RECORDING.set(grads)
    try:
        yield grads
    finally:
        _RECORDING.reset(token)


def record_attention_grad(cache: Any, grad: Array) -> None:
    """Called by an attention backward with its forward cache and dLoss/dA; a no-op unless
    :func:`record_attention_grads` is active."""
    grads = _RECORDING.get()
    if grads is not None:
        grads.add(cache, grad)


_EXTRA: ContextVar[Callable[[Any], Array | None] | None] = ContextVar(
    "extra_attention_grads", default=None
)


@contextmanager
def extra_attention_grads(extra: Callable[[Any], Array | None]) -> Iterator[None]:
    """Inside this block every dense attention backward adds ``extra(cache)`` to its dL/dA.

    ``extra`` takes the op's forward cache and returns the added gradient, shaped like
    the map, or None for an op it leaves alone.
    """
    token = _EXTRA.set(extra)
    try:
        yield
    finally:
        _EXTRA.reset(token)


def extra_attention_grad(cache: Any) -> Array | None:
    """The gradient to add to dL/dA of the op with this cache; None outside
    :func:`extra_attention_grads` (then the backward is exactly the plain one)."""
    extra = _EXTRA.get()
    return None if extra is None else extra(cache)
