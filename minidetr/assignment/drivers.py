"""Compiled drivers of the assignment solver: checks, orientation, scratch space, batches.

Each driver orients a problem for the solver in ``jonker_volgenant`` (R <= K: a small
tall matrix is read as its transposed view, a large tall or a maximised one is
copied, transposed or negated, into scratch space), checks its entries, solves it
and writes its pairs in SciPy's order. ``solver`` holds the Python functions with
SciPy's contract that call them.

A batch is handed over as the address, shape and strides of each matrix, so that a
list of float64 matrices is read where it lies instead of being copied into one
buffer first (DETR's 64 cost matrices are 550 KB: 12 us of copying in a 110 us
call). ``_locate_chunk`` reads the addresses out of the arrays themselves; the
caller keeps the arrays alive while the batch is solved.

Dimensions: a problem is (N, M); the solver sees R = min(N, M) rows and
K = max(N, M) columns; a batch holds P problems.
"""

from __future__ import annotations

import numpy as np
from numba import carray, njit, types
from numba.extending import intrinsic

from minidetr.assignment.jonker_volgenant import OK, solve

INVALID = 2  # a NaN, or an infinity of the wrong sign
IN_PLACE_MAX = 4096  # entries (32 KiB): a tall matrix this small is solved as a transposed view
CHUNK = 16  # matrices located per call of ``_locate_chunk``; a shorter chunk is padded


@njit(cache=True)
def _count_non_finite(entries):
    """(number of NaN or -inf entries, number of +inf entries) of entries (R K,).

    +inf forbids a pair; NaN and -inf make the problem meaningless. Branch-free over
    one flat run, so Numba vectorises it even when the matrix's rows are short.
    """
    n_bad = 0
    n_inf = 0
    for e in range(entries.shape[0]):
        c = entries[e]
        n_bad += (c != c) | (c == -np.inf)
        n_inf += c == np.inf
    return n_bad, n_inf


@njit(cache=True)
def _count_entries(cost):
    """``_count_non_finite`` of cost (R, K), C- or F-contiguous, read in memory order."""
    r, k = cost.shape
    if cost.strides[0] >= cost.strides[1]:
        return _count_non_finite(cost.reshape(r * k))
    return _count_non_finite(cost.T.reshape(r * k))


@njit(cache=True)
def _copy_transposed(block, sign, cost):
    """cost <- sign * block.T, block (N, M) -> cost (M, N), written in cost's memory order.

    Contiguous writes and strided reads: about 2.5x faster than the other loop order
    on DETR's (100, T) matrices.
    """
    for j in range(block.shape[1]):
        row = cost[j]  # (N,)
        for i in range(block.shape[0]):
            row[i] = sign * block[i, j]


@njit(cache=True)
def _float_scratch(n_rows, n_cols, copy):
    """Floats a problem (N, M) needs: u, v, shortest, penalty, and room for a copy of it."""
    r = min(n_rows, n_cols)
    k = max(n_rows, n_cols)
    copied = copy or (n_rows > n_cols and n_rows * n_cols > IN_PLACE_MAX)
    return r + 3 * k + (r * k if copied else 0)


@njit(cache=True)
def _int_scratch(n_rows, n_cols):
    """Integers a problem (N, M) needs: col4row, row4col, path, free rows."""
    return 2 * min(n_rows, n_cols) + 2 * max(n_rows, n_cols)


@njit(cache=True)
def _solve_oriented(cost, flipped, fwork, iwork, rows, cols):
    """Solve cost (R, K), R <= K; write the pairs to rows and cols (R,).

    cost is C-contiguous, or F-contiguous when it is the transposed view of a small
    tall matrix. ``flipped``: the caller's problem is cost.T, so pairs are reported as
    (column, row), sorted by column. fwork and iwork hold at least ``_float_scratch``
    and ``_int_scratch`` entries. Every driver funnels into this one function, so the
    solver is compiled once per memory layout. Returns a status.
    """
    r, k = cost.shape
    if r == 0:
        return OK
    square = r == k and r > 1  # Jonker-Volgenant's start, if every cost is finite
    n_bad = n_inf = 0
    if square:  # counted first: the count picks the start
        n_bad, n_inf = _count_entries(cost)
        if n_bad:
            return INVALID
    u = fwork[:r]
    v = fwork[r : r + k]
    shortest = fwork[r + k : r + 2 * k]
    penalty = fwork[r + 2 * k : r + 3 * k]
    col4row = iwork[:r]
    row4col = iwork[r : r + k]
    path = iwork[r + k : r + 2 * k]
    free_rows = iwork[r + 2 * k : 2 * r + 2 * k]
    cheap_start = square and n_inf == 0
    status = solve(cost, cheap_start, u, v, col4row, row4col, shortest, path, penalty, free_rows)
    if not square:  # counted after the greedy start has read the matrix into the cache
        n_bad = _count_entries(cost)[0]  # (5 us less on DETR's 64 problems); the solver
        if n_bad:  # ends on any input, its answer is then dropped
            return INVALID
    if status != OK:
        return status
    if flipped and r * r <= 4 * k:  # the caller's rows are the solver's columns: sort R pairs
        for i in range(r):  # insertion sort by column, about R * R / 4 moves
            j = col4row[i]
            t = i
            while t > 0 and rows[t - 1] > j:
                rows[t] = rows[t - 1]
                cols[t] = cols[t - 1]
                t -= 1
            rows[t] = j
            cols[t] = i
    elif flipped:  # many rows: one sweep over the K columns, in order
        t = 0
        for j in range(k):
            if row4col[j] >= 0:
                rows[t] = j
                cols[t] = row4col[j]
                t += 1
    else:
        for i in range(r):
            rows[i] = i
            cols[i] = col4row[i]
    return OK


@njit(cache=True)
def _oriented_copy(block, maximize, fwork):
    """The caller's block (N, M), any memory layout, copied into fwork as the solver reads it.

    Transposed when N > M, negated when maximising. Returns the copy (R, K), C-contiguous.
    """
    n_rows, n_cols = block.shape
    r = min(n_rows, n_cols)
    k = max(n_rows, n_cols)
    cost = fwork[r + 3 * k : r + 3 * k + r * k].reshape((r, k))  # (R, K), after the solver's
    sign = -1.0 if maximize else 1.0
    _copy_transposed(block if n_rows > n_cols else block.T, sign, cost)
    return cost


@njit(cache=True)
def _solve_block(block, maximize, fwork, iwork, rows, cols):
    """Solve the caller's C-contiguous block (N, M), in place unless maximised or large and tall.

    A small tall block is read as its transpose, a strided view that fits in the L1
    cache: cheaper than copying it (DETR's (100, T) matrices). A large one is copied,
    transposed, so that the searches read contiguous rows.
    """
    n_rows, n_cols = block.shape
    flipped = n_rows > n_cols
    if maximize or (flipped and n_rows * n_cols > IN_PLACE_MAX):
        cost = _oriented_copy(block, maximize, fwork)  # (R, K)
        return _solve_oriented(cost, flipped, fwork, iwork, rows, cols)
    if flipped:
        return _solve_oriented(block.T, True, fwork, iwork, rows, cols)  # (R, K), F-contiguous
    return _solve_oriented(block, False, fwork, iwork, rows, cols)


@njit(cache=True)
def _solve_one(cost_matrix, maximize, out):
    """Compiled entry for one matrix, pairs written to out (2, R); scratch allocated here."""
    n_rows, n_cols = cost_matrix.shape
    fwork = np.empty(_float_scratch(n_rows, n_cols, maximize))
    iwork = np.empty(_int_scratch(n_rows, n_cols), np.int64)
    return _solve_block(cost_matrix, maximize, fwork, iwork, out[0], out[1])


@njit(cache=True)
def _scratch_sizes(n_rows, n_cols, copy):
    """Scratch sizes (floats, integers) that fit every problem (n_rows[p], n_cols[p])."""
    n_float = 0
    n_int = 0
    for p in range(n_rows.shape[0]):
        n_float = max(n_float, _float_scratch(n_rows[p], n_cols[p], copy))
        n_int = max(n_int, _int_scratch(n_rows[p], n_cols[p]))
    return n_float, n_int


@njit(cache=True)
def _pair_starts(n_rows, n_cols):
    """Offsets (P + 1,) of each problem's min(N_p, M_p) pairs in the concatenated result."""
    out_start = np.empty(n_rows.shape[0] + 1, np.int64)
    out_start[0] = 0
    for p in range(n_rows.shape[0]):
        out_start[p + 1] = out_start[p] + min(n_rows[p], n_cols[p])
    return out_start


_ANY_MATRIX = types.Array(types.float64, 2, "A", readonly=True)  # every float64 (N, M) converts
_LOCATE = types.boolean(  # (chunk, addresses (P,), shapes (P, 2), strides (P, 2), start)
    types.UniTuple(_ANY_MATRIX, CHUNK),
    types.int64[::1],
    types.int64[:, ::1],
    types.int64[:, ::1],
    types.int64,
)


@njit([_LOCATE], cache=True)
def _locate_chunk(chunk, addresses, shapes, strides, start):
    """Write the address, shape (N_p, M_p) and strides of each matrix of chunk at start + p.

    chunk: CHUNK float64 matrices of any layout, writable or not (the one signature
    takes them all, so nothing is compiled per list). Returns whether ``_solve_batch``
    can read every one where it lies: aligned to 8 bytes, with strides that are
    non-negative whole entries (C or Fortran order, views with steps, broadcasts).
    """
    readable = True
    for p in range(CHUNK):
        matrix = chunk[p]
        addresses[start + p] = matrix.ctypes.data
        for axis in range(2):
            shapes[start + p, axis] = matrix.shape[axis]
            strides[start + p, axis] = matrix.strides[axis]
            readable &= matrix.strides[axis] >= 0 and matrix.strides[axis] % 8 == 0
        readable &= matrix.size == 0 or matrix.ctypes.data % 8 == 0
    return readable


@intrinsic
def _float64_at(typingctx, address):
    """The float64 pointer at an integer address: the inverse of ``ndarray.ctypes.data``."""
    signature = types.CPointer(types.float64)(types.int64)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

    return signature, codegen


@njit(cache=True)
def _is_c_contiguous(n_rows, n_cols, row_stride, col_stride):
    """NumPy's rule for float64 (N, M): strides of length-1 axes, or when empty, do not count."""
    if n_rows == 0 or n_cols == 0:
        return True
    return (n_cols == 1 or col_stride == 8) and (n_rows == 1 or row_stride == 8 * n_cols)


@njit(cache=True)
def _solve_batch(addresses, shapes, strides, maximize):
    """P problems, problem p the matrix (N_p, M_p) at addresses[p] with strides[p] (bytes).

    Each matrix is read where it lies and never written. A C-contiguous one is solved
    as ``_solve_block`` solves it: a wide one in place when minimising, a small tall
    one as its transposed view, a larger tall or a maximised one from a transposed
    (negated) copy in scratch space. Any other layout is copied into scratch space,
    oriented, by one compiled loop. Scratch space is allocated once for the whole
    batch. Returns (status, the failing problem or -1, out, out_start): problem p's
    pairs are out[:, out_start[p]:out_start[p + 1]], out (2, sum_p min(N_p, M_p)).
    """
    n_problems = shapes.shape[0]
    contiguous = np.empty(n_problems, np.bool_)
    for p in range(n_problems):
        contiguous[p] = _is_c_contiguous(shapes[p, 0], shapes[p, 1], strides[p, 0], strides[p, 1])
    out_start = _pair_starts(shapes[:, 0], shapes[:, 1])
    out = np.empty((2, out_start[-1]), np.int64)
    copy = maximize or not contiguous.all()
    n_float, n_int = _scratch_sizes(shapes[:, 0], shapes[:, 1], copy)
    fwork = np.empty(n_float)
    iwork = np.empty(n_int, np.int64)
    for p in range(n_problems):
        n_rows, n_cols = shapes[p, 0], shapes[p, 1]
        a, b = out_start[p], out_start[p + 1]
        if contiguous[p]:
            block = carray(_float64_at(addresses[p]), (n_rows, n_cols))  # (N, M)
            status = _solve_block(block, maximize, fwork, iwork, out[0, a:b], out[1, a:b])
        else:
            first = carray(_float64_at(addresses[p]), (1,))  # the entry [0, 0]
            view = np.lib.stride_tricks.as_strided(
                first, (n_rows, n_cols), (strides[p, 0], strides[p, 1])
            )  # (N, M), the caller's matrix
            cost = _oriented_copy(view, maximize, fwork)  # (R, K)
            flipped = n_rows > n_cols
            status = _solve_oriented(cost, flipped, fwork, iwork, out[0, a:b], out[1, a:b])
        if status != OK:
            return status, p, out, out_start
    return OK, -1, out, out_start


@njit(cache=True)
def _solve_stacked(stacked, sizes, maximize):
    """Problem p is stacked[o_p : o_p + sizes[p]].T (N, sizes[p]), o_p the sum of earlier sizes.

    stacked (S, N) holds the transposes of P problems one below the other: DETR's
    matching cost with one row per target of the batch and one column per query.
    With sizes[p] <= N each block is C-contiguous and already in the solver's
    orientation, so nothing is copied. Results as in ``_solve_batch``.
    """
    n_queries = np.full(sizes.shape[0], stacked.shape[1], np.int64)
    out_start = _pair_starts(n_queries, sizes)
    out = np.empty((2, out_start[-1]), np.int64)
    n_float, n_int = _scratch_sizes(n_queries, sizes, True)
    fwork = np.empty(n_float)
    iwork = np.empty(n_int, np.int64)
    start = 0
    for p in range(sizes.shape[0]):
        block_t = stacked[start : start + sizes[p]]  # (sizes[p], N)
        start += sizes[p]
        in_place = sizes[p] <= stacked.shape[1] and not maximize
        cost = block_t if in_place else _oriented_copy(block_t.T, maximize, fwork)
        a, b = out_start[p], out_start[p + 1]
        flipped = sizes[p] <= stacked.shape[1]
        status = _solve_oriented(cost, flipped, fwork, iwork, out[0, a:b], out[1, a:b])
        if status != OK:
            return status, p, out, out_start
    return OK, -1, out, out_start
