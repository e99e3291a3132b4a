"""Shortest augmenting paths for the linear assignment problem (Jonker-Volgenant, Crouse 2016).

The solver keeps a price u[i] per row and v[j] per column such that every reduced
cost C[i, j] - u[i] - v[j] is >= 0 and every assigned pair has reduced cost 0; an
assignment with such prices is optimal (linear programming duality). Each free
row is added by a Dijkstra search over reduced costs to the nearest free column;
the prices move so that the path found becomes tight, and the path is flipped
(augmented), which assigns one more row. Before any search a cheap start assigns
most rows: on square finite matrices Jonker and Volgenant's column reduction,
reduction transfer and augmenting row reduction; otherwise each row simply takes
its cheapest column while that column is free.

Every function here is plain Python in the part of the language Numba compiles,
decorated with ``@njit(cache=True)``; ``f.py_func`` is the plain function. The
lesson's trace and the fast solver run this same code. They take NumPy arrays in
the solver's orientation, cost (R, K) with R <= K rows and columns, and scratch
arrays they fill: col4row[i] is row i's column (-1: free), row4col[j] column j's row.

References: D. F. Crouse, "On implementing 2D rectangular assignment algorithms",
IEEE Trans. Aerospace and Electronic Systems 52(4), 2016 (Algorithm 1); R. Jonker
and A. Volgenant, "A shortest augmenting path algorithm for dense and sparse linear
assignment problems", Computing 38, 1987.
"""

from __future__ import annotations

import numpy as np
from numba import njit

OK, INFEASIBLE = 0, 1  # what ``solve`` returns
RETRIES_PER_FREE_ROW = 4  # bounds augmenting row reduction's immediate retries


# ---------------------------------------------------------------------------
# Cheap starts
# ---------------------------------------------------------------------------


@njit(cache=True)
def greedy_start(cost, u, col4row, row4col, free_rows, best_col):
    """Each row takes its cheapest column while that column is free; u[i] = min_j C[i, j].

    With every v[j] = 0 the reduced costs are the costs, so this is the first step
    of every row's shortest path search, done in one sweep. The sweep reads cost in
    memory order: row by row, or column by column when cost is the transposed view
    of a tall matrix. Then the R running minima advance together, in SIMD lanes, two
    columns a step (half as many updates of the minima), each column read as a row of
    cost.T, which Numba knows to be contiguous: together 1.6x faster on DETR's (100, T)
    matrices. Both orders keep the first cheapest column. ``best_col`` (R,) is scratch.
    Returns how many rows are left free, listed in ``free_rows``.
    """
    n_rows, n_cols = cost.shape
    if cost.strides[0] >= cost.strides[1]:  # rows contiguous
        for i in range(n_rows):
            row = cost[i]  # (K,)
            best = np.inf
            best_j = -1
            for j in range(n_cols):
                if row[j] < best:
                    best = row[j]
                    best_j = j
            u[i] = best
            best_col[i] = best_j
    else:  # columns contiguous
        columns = cost.T  # (K, R): columns[j] is column j, contiguous
        for i in range(n_rows):
            u[i] = np.inf
            best_col[i] = -1
        for j in range(0, n_cols, 2):  # two columns a step: their winner meets the minimum
            first = columns[j]  # (R,)
            second = columns[j + 1] if j + 1 < n_cols else first  # (R,)
            for i in range(n_rows):
                take_first = first[i] <= second[i]  # the earlier column wins a tie
                c = first[i] if take_first else second[i]
                better = c < u[i]
                u[i] = c if better else u[i]
                best_col[i] = (j if take_first else j + 1) if better else best_col[i]
    n_free = 0
    for i in range(n_rows):
        j = best_col[i]
        if j < 0:  # every pair of this row is forbidden
            u[i] = 0.0
        if j >= 0 and row4col[j] < 0:
            col4row[i] = j
            row4col[j] = i
        else:
            free_rows[n_free] = i
            n_free += 1
    return n_free


@njit(cache=True)
def column_reduction(cost, v, col4row, row4col, cheapest_row, free_rows):
    """v[j] = min_i C[i, j]; column j goes to its cheapest row if that row is still free.

    Returns how many rows are left free, listed in ``free_rows``.
    """
    n = cost.shape[0]
    for j in range(n):
        v[j] = cost[0, j]
        cheapest_row[j] = 0
    for i in range(1, n):  # row by row: the matrix is read in memory order
        for j in range(n):
            if cost[i, j] < v[j]:
                v[j] = cost[i, j]
                cheapest_row[j] = i
    for j in range(n):
        i = cheapest_row[j]
        if col4row[i] < 0:
            col4row[i] = j
            row4col[j] = i
    n_free = 0
    for i in range(n):
        if col4row[i] < 0:
            free_rows[n_free] = i
            n_free += 1
    return n_free


@njit(cache=True)
def reduction_transfer(cost, v, col4row):
    """Lower the price of each assigned column by its row's margin over the next best column."""
    n = cost.shape[0]
    for i in range(n):
        j1 = col4row[i]
        if j1 < 0:
            continue
        margin = np.inf
        for j in range(n):
            if j != j1 and cost[i, j] - v[j] < margin:
                margin = cost[i, j] - v[j]
        v[j1] -= margin


@njit(cache=True)
def augmenting_row_reduction(cost, v, col4row, row4col, free_rows, n_free):
    """One pass of Jonker-Volgenant's augmenting row reduction over free_rows[:n_free].

    Each free row takes its cheapest column j1 (reduced cost u1 = C[i, j1] - v[j1]). If
    the second cheapest u2 is strictly higher, v[j1] drops by u2 - u1, so the row keeps
    dual feasibility with u[i] = u2, and the row it displaces tries again at once.
    Returns how many rows are still free; they are moved to the front of ``free_rows``.
    """
    n = cost.shape[0]
    read = 0
    n_next = 0  # rows left for the next pass, written behind the read position
    budget = RETRIES_PER_FREE_ROW * n_free
    steps = 0
    while read < n_free:
        i = free_rows[read]
        read += 1
        steps += 1
        u1 = np.inf
        u2 = np.inf
        j1 = -1
        j2 = -1
        for j in range(n):
            h = cost[i, j] - v[j]
            if h < u1 or (h == u1 and row4col[j] < 0 and row4col[j1] >= 0):  # prefer free on ties
                u2 = u1
                j2 = j1
                u1 = h
                j1 = j
            elif h < u2:
                u2 = h
                j2 = j
        i0 = row4col[j1]
        lowered = v[j1] - (u2 - u1)
        if u1 < u2 and lowered < v[j1] and steps < budget:
            v[j1] = lowered
            if i0 >= 0:  # the displaced row is served next
                read -= 1
                free_rows[read] = i0
        else:
            if u1 == u2 and i0 >= 0:  # a tie: take the other column, defer the displaced row
                j1 = j2
                i0 = row4col[j2]
            if i0 >= 0:
                free_rows[n_next] = i0
                n_next += 1
        if i0 >= 0:
            col4row[i0] = -1
        col4row[i] = j1
        row4col[j1] = i
    return n_next


@njit(cache=True)
def jonker_volgenant_start(cost, u, v, col4row, row4col, free_rows, scratch):
    """Assign most rows of a square finite matrix cheaply; return how many stay free."""
    n = cost.shape[0]
    n_free = column_reduction(cost, v, col4row, row4col, scratch, free_rows)
    reduction_transfer(cost, v, col4row)
    n_free = augmenting_row_reduction(cost, v, col4row, row4col, free_rows, n_free)
    n_free = augmenting_row_reduction(cost, v, col4row, row4col, free_rows, n_free)  # JV: 2 passes
    for i in range(n):  # row prices that make every assigned pair tight
        j = col4row[i]
        u[i] = cost[i, j] - v[j] if j >= 0 else 0.0
    return n_free


# ---------------------------------------------------------------------------
# Shortest augmenting paths (Crouse 2016, Algorithm 1)
# ---------------------------------------------------------------------------


@njit(cache=True)
def shortest_augmenting_path(cost, row, u, v, row4col, shortest, path, penalty):
    """Dijkstra from the free ``row`` over reduced costs C[i, j] - u[i] - v[j] to a free column.

    shortest[j] is the length of the best path found to column j, path[j] the row it
    arrives from, penalty[j] = inf once column j is settled (its shortest path is final),
    so the relaxing sweep needs no branch and Numba vectorises it. Each settled column
    leads on to its row, whose arcs are relaxed next. Among equally near columns a free
    one wins, so that a constant matrix pairs row i with column i, as in SciPy. Returns
    (sink, length): the free column reached and the path's length, or (-1, inf) if no
    free column can be reached (an infeasible matrix).
    """
    n_cols = cost.shape[1]
    for j in range(n_cols):
        shortest[j] = np.inf
        penalty[j] = 0.0
    min_val = 0.0
    while True:
        offset = min_val - u[row]  # path length to ``row``, minus its price
        cost_row = cost[row]  # (K,)
        for j in range(n_cols):  # relax the arcs out of ``row``
            r = offset + cost_row[j] - v[j] + penalty[j]
            better = r < shortest[j]
            path[j] = row if better else path[j]
            shortest[j] = r if better else shortest[j]
        lowest = np.inf
        best = -1
        best_is_free = False
        for j in range(n_cols):  # the nearest unsettled column, free ones first on ties
            d = shortest[j] + penalty[j]
            if d < lowest or (d == lowest and row4col[j] < 0 and not best_is_free):
                lowest = d
                best = j
                best_is_free = row4col[j] < 0
        if lowest == np.inf:
            return -1, lowest
        min_val = lowest
        penalty[best] = np.inf
        if best_is_free:
            return best, min_val
        row = row4col[best]


@njit(cache=True)
def update_prices(row, sink, min_val, u, v, row4col, shortest, penalty):
    """Move the prices so the path becomes tight and every reduced cost stays >= 0.

    u[row] += d; each settled column j (penalty[j] = inf): v[j] -= d - shortest[j], and
    the row assigned to it gains as much.
    """
    u[row] += min_val
    for j in range(v.shape[0]):
        if penalty[j] != 0.0:
            delta = min_val - shortest[j]
            v[j] -= delta
            if j != sink:
                u[row4col[j]] += delta


@njit(cache=True)
def augment(row, sink, col4row, row4col, path):
    """Flip the alternating path ending at ``sink``: one more row is assigned."""
    j = sink
    while True:
        i = path[j]
        row4col[j] = i
        previous = col4row[i]
        col4row[i] = j
        j = previous
        if i == row:
            break


@njit(cache=True)
def solve(cost, cheap_start, u, v, col4row, row4col, shortest, path, penalty, free_rows):
    """Assign every row of cost (R, K), R <= K; col4row[i] is row i's column. Returns a status.

    ``cheap_start`` (square and finite) selects Jonker-Volgenant's start over the greedy one.
    cost may be a strided view (the transpose of a tall matrix, read in place).
    """
    n_rows, n_cols = cost.shape
    for i in range(n_rows):
        col4row[i] = -1
    for j in range(n_cols):
        row4col[j] = -1
        v[j] = 0.0
    if cheap_start:
        n_free = jonker_volgenant_start(cost, u, v, col4row, row4col, free_rows, path)
    else:
        n_free = greedy_start(cost, u, col4row, row4col, free_rows, path)
    for k in range(n_free):
        row = free_rows[k]
        sink, min_val = shortest_augmenting_path(cost, row, u, v, row4col, shortest, path, penalty)
        if sink < 0:
            return INFEASIBLE
        update_prices(row, sink, min_val, u, v, row4col, shortest, penalty)
        augment(row, sink, col4row, row4col, path)
    return OK
