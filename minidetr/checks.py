"""Input checks shared by every module: clear errors that name the argument.

Each check raises ``TypeError`` (wrong kind of thing) or ``ValueError`` (right
kind, wrong value or shape) with the argument's name in the message, so a
mistake is reported where it is made rather than as a NaN three layers later.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from minidetr.backend import Array, namespace


def check_array(x: Any, name: str) -> None:
    """Raise ``TypeError`` unless ``x`` is an array with ``shape`` and ``dtype``."""
    if not (hasattr(x, "shape") and hasattr(x, "dtype")):
        raise TypeError(f"{name} must be an array, got {type(x).__name__}")


def check_floating(x: Array, name: str) -> None:
    """Raise ``TypeError`` unless ``x`` is a real floating-point array."""
    if type(x) is np.ndarray and x.dtype.kind == "f":  # NumPy floats: no namespace lookup
        return
    check_array(x, name)
    if not namespace(x).isdtype(x.dtype, "real floating"):
        raise TypeError(f"{name} must have a real floating dtype, got {x.dtype}")


def check_integral(x: Array, name: str) -> None:
    """Raise ``TypeError`` unless ``x`` is an integer array."""
    check_array(x, name)
    if not namespace(x).isdtype(x.dtype, "integral"):
        raise TypeError(f"{name} must have an integer dtype, got {x.dtype}")


def check_ndim(x: Array, ndim: int | Sequence[int], name: str, layout: str = "") -> None:
    """Raise ``ValueError`` unless ``x.ndim`` is ``ndim`` (or one of them)."""
    check_array(x, name)
    allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if x.ndim not in allowed:
        want = " or ".join(str(n) for n in allowed)
        hint = f" {layout}" if layout else ""
        raise ValueError(f"{name} must have {want} dimensions{hint}, got shape {tuple(x.shape)}")


def check_dim(x: Array, axis: int, size: int, name: str, what: str = "") -> None:
    """Raise ``ValueError`` unless ``x.shape[axis] == size``."""
    if x.shape[axis] != size:
        label = f" ({what})" if what else ""
        raise ValueError(
            f"{name} must have size {size} on axis {axis}{label}, got shape {tuple(x.shape)}"
        )


def check_finite(x: Array, name: str) -> None:
    """Raise ``ValueError`` naming the first non-finite entry of ``x``."""
    xp = namespace(x)
    bad = ~xp.isfinite(x)
    if bool(xp.any(bad)):
        flat = xp.reshape(bad, (-1,))
        first = int(xp.argmax(xp.astype(flat, xp.int8)))
        index = unravel_index(first, tuple(x.shape))
        raise ValueError(
            f"{name} must be finite; entry {index} is {float(xp.reshape(x, (-1,))[first])}"
        )


def unravel_index(flat_index: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The multi-index of entry ``flat_index`` of a row-major array of ``shape``."""
    out = []
    for size in reversed(shape):
        out.append(flat_index % size)
        flat_index //= size
    return tuple(reversed(out))
