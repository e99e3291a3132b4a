"""The linear assignment problem with SciPy's contract, one matrix or a batch at a time.

``linear_sum_assignment`` is a drop-in for ``scipy.optimize.linear_sum_assignment``:
the same inputs, results, tie-breaking on constant matrices and errors (which here
also name the first bad entry). ``linear_sum_assignment_batch`` (a list of
matrices) and ``linear_sum_assignment_stacked`` (DETR's layout, one row per
target) solve many matrices of different shapes in one compiled call, with scratch
space allocated once per batch: a Python loop of SciPy calls pays its call
overhead per matrix. A list of float64 NumPy matrices, the common case, is checked
without a Python loop over it and read where it lies; anything else (other dtypes,
unaligned or reversed arrays) is converted matrix by matrix, as
``linear_sum_assignment`` converts it, into one buffer.

The compiled drivers of ``drivers.py`` orient each problem for the solver in
``jonker_volgenant``, check its entries, solve it and write its pairs in SciPy's order.

Dimensions: a problem is (N, M); the solver sees R = min(N, M) rows and
K = max(N, M) columns; a batch holds P problems.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter
from typing import Any

import numpy as np

from minidetr.assignment.drivers import (
    CHUNK,
    _locate_chunk,
    _solve_batch,
    _solve_one,
    _solve_stacked,
)
from minidetr.assignment.jonker_volgenant import INFEASIBLE, OK

# ---------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------

_FLOAT64 = np.dtype(np.float64)


def _as_cost_matrix(cost_matrix: Any) -> np.ndarray:
    """A C-contiguous float64 matrix, converted and refused exactly as SciPy does."""
    a = cost_matrix
    if type(a) is not np.ndarray or a.dtype is not _FLOAT64:
        if isinstance(a, np.ndarray):  # arrays are cast only where no information is lost
            if not np.can_cast(a.dtype, np.float64, "safe"):
                raise TypeError(
                    f"Cannot cast array data from {a.dtype!r} to dtype('float64') "
                    "according to the rule 'safe'"
                )
        a = np.asarray(a, dtype=np.float64)  # lists, scalars, None (NaN), masked, matrix
    if a.ndim != 2:
        raise ValueError(f"expected a matrix (2-D array), got a {a.ndim} array")
    if not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)
    return a


def _raise_for(status: int, matrix: np.ndarray, name: str, maximize: bool) -> None:
    """Turn a solver status into SciPy's error; an invalid one names the first bad entry."""
    if status == INFEASIBLE:
        suffix = "" if name == "cost_matrix" else f" ({name} has no complete assignment)"
        raise ValueError("cost matrix is infeasible" + suffix)
    wrong_infinity = np.inf if maximize else -np.inf
    i, j = np.argwhere(np.isnan(matrix) | (matrix == wrong_infinity))[0]  # row-major order
    raise ValueError(
        f"matrix contains invalid numeric entries: {name}[{i}, {j}] is {matrix[i, j]} "
        "(costs must be numbers; +inf forbids a pair when minimising, -inf when maximising)"
    )


def linear_sum_assignment(
    cost_matrix: Any, maximize: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Solve min sum_k C[row_ind[k], col_ind[k]] over one-to-one pairings; SciPy's contract.

    cost_matrix: (N, M) array-like of real numbers (bool, integer and float accepted);
    +inf (-inf with ``maximize``) forbids a pair. maximize: maximise the sum instead.
    Returns (row_ind, col_ind), int64 arrays of length min(N, M); row_ind is sorted,
    and equals arange(N) when N <= M. A constant matrix pairs row i with column i.
    Raises ValueError for a non-2-D input, a NaN or wrong-signed infinity (naming the
    first such entry) and an infeasible matrix; TypeError for non-real dtypes.
    Drop-in for ``scipy.optimize.linear_sum_assignment``; follows Crouse (2016).
    """
    a = cost_matrix
    if (
        type(a) is not np.ndarray
        or a.dtype is not _FLOAT64
        or a.ndim != 2
        or not a.flags.c_contiguous
    ):
        a = _as_cost_matrix(a)  # the common case above costs four attribute reads
    n_rows, n_cols = a.shape
    out = np.empty((2, n_rows if n_rows < n_cols else n_cols), np.int64)  # (2, min(N, M))
    status = _solve_one(a, bool(maximize), out)
    if status != OK:
        _raise_for(status, a, "cost_matrix", bool(maximize))
    return out[0], out[1]


def _split(out: np.ndarray, out_start: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cut the batch result (2, sum_p min(N_p, M_p)) into one (row_ind, col_ind) per problem."""
    rows, cols = out[0], out[1]
    bounds = out_start.tolist()
    return [(rows[a:b], cols[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


_DTYPE = attrgetter("dtype")
_PAD = np.zeros((0, 0))  # fills a batch's last chunk for ``_locate_chunk``


def _locate(costs: list[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(addresses (P,), shapes (P, 2), strides (P, 2)) of P float64 matrices, or None.

    Nothing is copied: ``_solve_batch`` reads each matrix where it lies, so the
    caller must hold ``costs`` until it returns. Type and dtype are checked with a
    ``map`` over the list; the compiled ``_locate_chunk`` takes the matrices CHUNK at
    a time (a few microseconds for 64) and refuses, by its signature, anything with
    other than 2 dimensions. None sends such a list, or one with a matrix not aligned
    to 8 bytes or with negative strides, to ``_pack_any``.
    """
    if set(map(type, costs)) != {np.ndarray} or set(map(_DTYPE, costs)) != {_FLOAT64}:
        return None
    n = len(costs)
    addresses = np.empty(n + CHUNK, np.int64)  # room for the last chunk's padding
    shapes = np.empty((n + CHUNK, 2), np.int64)
    strides = np.empty((n + CHUNK, 2), np.int64)
    for start in range(0, n, CHUNK):
        chunk = tuple(costs[start : start + CHUNK])
        chunk += (_PAD,) * (CHUNK - len(chunk))
        try:
            if not _locate_chunk(chunk, addresses, shapes, strides, start):
                return None  # unaligned data, or a reversed view
        except TypeError:  # no signature matches: not 2-D
            return None
    return addresses[:n], shapes[:n], strides[:n]


def _locate_in(flat: np.ndarray, shapes: np.ndarray) -> tuple[np.ndarray, ...]:
    """(addresses, shapes, strides) of the P row-major matrices (N_p, M_p) in flat."""
    sizes = shapes[:, 0] * shapes[:, 1]  # (P,)
    addresses = flat.ctypes.data + flat.itemsize * (np.cumsum(sizes) - sizes)  # (P,)
    strides = flat.itemsize * np.stack([shapes[:, 1], np.ones_like(sizes)], axis=1)  # (P, 2)
    return addresses, shapes, strides


def _pack_any(costs: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """(flat, shapes) of any matrices SciPy accepts, converted one by one; errors name them."""
    mats = []
    for p, c in enumerate(costs):
        try:
            mats.append(_as_cost_matrix(c))
        except (TypeError, ValueError) as err:
            raise type(err)(f"costs[{p}]: {err}") from err
    shapes = np.array([m.shape for m in mats], dtype=np.int64).reshape(len(mats), 2)  # (P, 2)
    return np.concatenate(mats, axis=None), shapes


def linear_sum_assignment_batch(
    costs: Sequence[Any], maximize: bool = False
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[linear_sum_assignment(c, maximize) for c in costs]`` in one compiled call.

    costs: a sequence of P matrices, each (N_p, M_p) of its own shape, or one (P, N, M)
    array. Returns P pairs (row_ind, col_ind) as ``linear_sum_assignment`` gives them;
    errors name the problem, e.g. ``costs[3][2, 0] is nan``.
    """
    costs = list(costs)  # P matrices; a (P, N, M) array gives P views (N, M)
    if not costs:
        return []
    located = _locate(costs)  # float64 matrices: read where they lie
    if located is None:
        flat, shapes = _pack_any(costs)  # held until the solver returns: it reads flat
        located = _locate_in(flat, shapes)
    status, p, out, out_start = _solve_batch(*located, bool(maximize))
    if status != OK:
        _raise_for(status, _as_cost_matrix(costs[p]), f"costs[{p}]", bool(maximize))
    return _split(out, out_start)


def _check_sizes(sizes: Any, n_problems: int, n_max: int) -> np.ndarray:
    """sizes as (P,) int64 in [0, n_max], or a ValueError naming it."""
    sizes = np.asarray(sizes)
    if sizes.shape != (n_problems,) or (n_problems and sizes.dtype.kind not in "iu"):
        raise ValueError(f"sizes must be {n_problems} integers, got {sizes!r}")
    sizes = sizes.astype(np.int64)
    if n_problems and (sizes.min() < 0 or sizes.max() > n_max):
        raise ValueError(f"sizes must lie in [0, {n_max}], got {sizes.tolist()}")
    return sizes


def linear_sum_assignment_stacked(
    stacked: Any, sizes: Sequence[int], maximize: bool = False
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Solve every problem p = stacked[o_p : o_p + sizes[p]].T, o_p the sum of earlier sizes.

    stacked: (S, N) real array, the transposed cost matrices of P problems (N, sizes[p])
    stacked row-wise, S = sum(sizes); sizes: P non-negative integers. This is the layout
    of DETR's cost with one row per target and one column per query: problem p is
    image p, pairing its N queries with its sizes[p] targets. Returns P pairs
    (row_ind, col_ind), as ``linear_sum_assignment(stacked[o_p : o_p + sizes[p]].T,
    maximize)`` would.
    """
    stacked = np.asarray(stacked)
    if stacked.ndim != 2:
        raise ValueError(f"stacked must have 2 dimensions (S, N), got shape {stacked.shape}")
    if not np.can_cast(stacked.dtype, np.float64, "safe"):
        raise TypeError(f"stacked must have a real dtype, got {stacked.dtype}")
    stacked = np.ascontiguousarray(stacked, dtype=np.float64)
    sizes = _check_sizes(sizes, len(sizes), stacked.shape[0])
    if int(sizes.sum()) != stacked.shape[0]:
        raise ValueError(
            f"sizes must add up to the {stacked.shape[0]} rows of stacked, got {sizes.tolist()}"
        )
    status, p, out, out_start = _solve_stacked(stacked, sizes, bool(maximize))
    if status != OK:
        first = int(sizes[:p].sum())
        _raise_for(status, stacked[first : first + sizes[p]].T, f"costs[{p}]", bool(maximize))
    return _split(out, out_start)
