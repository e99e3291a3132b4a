"""The assignment solver against SciPy, brute force, its own plain source and its contract."""

from __future__ import annotations

import fractions
import itertools

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.optimize import linear_sum_assignment as scipy_lsa

import minidetr.assignment.drivers as drivers
import minidetr.assignment.jonker_volgenant as jv
from minidetr.assignment import (
    linear_sum_assignment,
    linear_sum_assignment_batch,
    linear_sum_assignment_stacked,
    trace_assignment,
)

# ---------------------------------------------------------------- helpers


def total(cost, rows, cols):
    return float(np.asarray(cost, dtype=np.float64)[rows, cols].sum())


def assert_valid(cost, rows, cols):
    """A valid answer in SciPy's format: min(N, M) distinct pairs, rows sorted."""
    n, m = np.shape(cost)
    assert rows.dtype == np.int64 and cols.dtype == np.int64
    assert rows.shape == cols.shape == (min(n, m),)
    assert np.all(np.diff(rows) > 0), rows
    assert len(set(cols.tolist())) == len(cols)
    assert np.all((0 <= rows) & (rows < n)) and np.all((0 <= cols) & (cols < m))
    if n <= m:
        np.testing.assert_array_equal(rows, np.arange(n))


def assert_same_optimum(cost, maximize=False):
    """Ours is valid and as good as SciPy's (1e-9 relative), or both refuse alike."""
    try:
        expected = scipy_lsa(cost, maximize)
    except ValueError as err:
        with pytest.raises(ValueError, match=str(err)):
            linear_sum_assignment(cost, maximize)
        return
    rows, cols = linear_sum_assignment(cost, maximize)
    assert_valid(cost, rows, cols)
    want, got = total(cost, *expected), total(cost, rows, cols)
    finite = np.abs(np.asarray(cost, dtype=np.float64))
    scale = 1 + finite[np.isfinite(finite)].sum()  # the size of the terms summed
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12 * scale)


def brute_force(cost):
    """The least total over every way to pair the rows (N <= M) with distinct columns."""
    n, m = cost.shape
    return min(
        sum(cost[i, c] for i, c in enumerate(cols)) for cols in itertools.permutations(range(m), n)
    )


shapes = st.tuples(st.integers(0, 9), st.integers(0, 9))
floats = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


# ---------------------------------------------------------------- SciPy as the oracle


@given(arrays(np.float64, shapes, elements=floats), st.booleans())
def test_float_matrices_match_scipy(cost, maximize):
    assert_same_optimum(cost, maximize)


@given(arrays(np.int64, shapes, elements=st.integers(0, 3)), st.booleans())
def test_small_integer_costs_with_many_ties_match_scipy(cost, maximize):
    assert_same_optimum(cost, maximize)


@given(
    arrays(np.float64, shapes, elements=st.floats(0, 10, allow_nan=False)),
    arrays(np.bool_, (9, 9)),
    st.booleans(),
)
def test_forbidden_pairs_match_scipy_including_infeasible(cost, forbid, maximize):
    n, m = cost.shape
    cost = np.where(forbid[:n, :m], -np.inf if maximize else np.inf, cost)
    assert_same_optimum(cost, maximize)


@pytest.mark.parametrize("n", [1, 2, 5, 30, 120])
@pytest.mark.parametrize("m_extra", [0, 3, 70])
def test_random_square_and_wide_and_tall_match_scipy(rng, n, m_extra):
    cost = rng.random((n, n + m_extra))
    assert_same_optimum(cost)
    assert_same_optimum(cost.T.copy())
    assert_same_optimum(rng.integers(0, 10, (n, n + m_extra)))  # integers: ties everywhere
    assert_same_optimum(cost, maximize=True)


def test_large_square_matrix_matches_scipy_exactly(rng):
    cost = rng.random((300, 300))  # continuous costs: the optimum is unique
    rows, cols = linear_sum_assignment(cost)
    np.testing.assert_array_equal(cols, scipy_lsa(cost)[1])


def test_badly_scaled_costs_match_scipy(rng):
    cost = 1e9 + rng.random((40, 40))  # differences at the 1e-7 relative level
    assert_same_optimum(cost)
    cost = rng.integers(0, 2**40, (30, 50)).astype(np.float64)
    assert_same_optimum(cost)
    assert_same_optimum(cost * 1e-300)  # tiny, not subnormal
    assert_same_optimum(-cost)


# ---------------------------------------------------------------- independent oracles


@given(
    arrays(
        np.float64, st.tuples(st.integers(1, 6), st.integers(1, 6)), elements=st.integers(-50, 50)
    )
)
def test_brute_force_over_permutations(cost):
    rows, cols = linear_sum_assignment(cost)
    assert_valid(cost, rows, cols)
    oriented = cost if cost.shape[0] <= cost.shape[1] else cost.T
    assert total(cost, rows, cols) == brute_force(oriented)


def test_brute_force_with_exact_fractions():
    """Rational costs summed exactly: the optimum is the optimum, not a rounding of it."""
    rng = np.random.default_rng(7)
    for _ in range(20):
        num = rng.integers(1, 1000, (5, 6))
        den = rng.integers(1, 1000, (5, 6))
        exact = [
            [fractions.Fraction(int(a), int(b)) for a, b in zip(r, s)] for r, s in zip(num, den)
        ]
        rows, cols = linear_sum_assignment(num / den)
        got = sum(exact[i][j] for i, j in zip(rows, cols))
        best = min(
            sum(exact[i][c] for i, c in enumerate(p)) for p in itertools.permutations(range(6), 5)
        )
        assert got == best


@given(
    arrays(np.float64, st.tuples(st.integers(1, 8), st.integers(1, 8)), elements=floats),
    st.integers(0, 7),
    st.floats(-1e5, 1e5),
)
def test_adding_a_constant_to_a_row_or_column_keeps_the_assignment_optimal(cost, k, shift):
    """Every complete assignment uses each row (N <= M) once, so a row shift moves all
    totals alike; on a square matrix a column shift does too."""
    n, m = cost.shape
    best = total(cost, *scipy_lsa(cost))
    scale = 1e-9 * (1 + np.abs(cost).sum() + abs(shift))
    shifted = cost.copy()
    if n <= m:
        shifted[k % n, :] += shift
        assert total(cost, *linear_sum_assignment(shifted)) == pytest.approx(best, abs=scale)
    if n >= m:
        shifted = cost.copy()
        shifted[:, k % m] += shift
        assert total(cost, *linear_sum_assignment(shifted)) == pytest.approx(best, abs=scale)


@given(arrays(np.float64, shapes, elements=floats))
def test_maximize_is_minimising_the_negation(cost):
    rows, cols = linear_sum_assignment(cost, maximize=True)
    assert total(cost, rows, cols) == pytest.approx(
        -total(-cost, *linear_sum_assignment(-cost)), abs=1e-9 * (1 + np.abs(cost).sum())
    )


def test_plain_python_source_gives_the_compiled_answer(rng, monkeypatch):
    """The lesson's code and the fast code are one source: run it uncompiled end to end."""
    for name in ("greedy_start", "column_reduction", "reduction_transfer"):
        monkeypatch.setattr(jv, name, getattr(jv, name).py_func)
    for name in ("augmenting_row_reduction", "jonker_volgenant_start"):
        monkeypatch.setattr(jv, name, getattr(jv, name).py_func)
    for name in ("shortest_augmenting_path", "update_prices", "augment"):
        monkeypatch.setattr(jv, name, getattr(jv, name).py_func)
    for shape, cheap in [((12, 12), True), ((7, 15), False), ((10, 10), False), ((6, 9), False)]:
        cost = rng.integers(0, 5, shape).astype(np.float64) if cheap else rng.random(shape)
        if shape == (6, 9):  # the transposed view of a tall matrix, read column by column
            cost = np.asfortranarray(cost)
        r, k = shape
        u, v, shortest, penalty = np.zeros(r), np.zeros(k), np.zeros(k), np.zeros(k)
        col4row, row4col, path = (np.zeros(n, np.int64) for n in (r, k, k))
        free_rows = np.zeros(r + k, np.int64)
        status = jv.solve.py_func(
            cost, cheap, u, v, col4row, row4col, shortest, path, penalty, free_rows
        )
        assert status == jv.OK
        np.testing.assert_array_equal(col4row, linear_sum_assignment(cost)[1])
        reduced = cost - u[:, None] - v[None, :]  # optimality certificate: duals feasible, tight
        assert reduced.min() >= -1e-12
        np.testing.assert_allclose(reduced[np.arange(r), col4row], 0.0, atol=1e-12)


# ---------------------------------------------------------------- SciPy's contract


@pytest.mark.parametrize("shape", [(4, 4), (3, 7), (7, 3), (1, 5), (5, 1), (1, 1)])
def test_constant_matrix_pairs_row_i_with_column_i(shape):
    rows, cols = linear_sum_assignment(np.full(shape, 2.5))
    k = min(shape)
    np.testing.assert_array_equal(rows, np.arange(k))
    np.testing.assert_array_equal(cols, np.arange(k))


@pytest.mark.parametrize(
    "cost",
    [
        [[4, 1, 3], [2, 0, 5], [3, 2, 2]],
        [[True, False], [False, True]],
        np.array([[1, 2], [3, 4]], dtype=np.uint64),
        np.array([[1, 2], [3, 4]], dtype=np.float32),
        np.array([[1, 2], [3, 4]], dtype=np.float16),
        np.asfortranarray(np.arange(12.0).reshape(3, 4) % 5),
        np.arange(24.0).reshape(4, 6)[:, ::2],
        np.matrix([[1, 2], [3, 4]]),
        [[fractions.Fraction(1, 3), 2], [1, fractions.Fraction(1, 7)]],
        ((1, 2), (3, 4)),
        [[]],
        [[], []],
        np.zeros((0, 0)),
        np.zeros((0, 3)),
        np.zeros((3, 0)),
    ],
)
def test_accepts_what_scipy_accepts(cost):
    rows, cols = linear_sum_assignment(cost)
    want_rows, want_cols = scipy_lsa(cost)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_array_equal(cols, want_cols)
    assert rows.dtype == cols.dtype == np.int64


@pytest.mark.parametrize(
    "cost",
    [
        None,
        5,
        "abc",
        [1.0, 2.0],
        [],
        np.ones((2, 2, 2)),
        [[1, 2], [3]],
        [["a", "b"], ["c", "d"]],
        [[1j, 2]],
        np.array([[1 + 1j, 2]]),
        np.array([[1, None]], dtype=object),
        np.array([["1", "2"]]),
        np.array([[1]], dtype="timedelta64[s]"),
        np.array([[1.0]], dtype=np.longdouble) if np.finfo(np.longdouble).bits > 64 else None,
        [[np.inf, np.inf], [1, 1]],
        [[1, None], [1, 1]],
    ],
)
def test_refuses_what_scipy_refuses_with_its_error(cost):
    with pytest.raises((TypeError, ValueError)) as expected:
        scipy_lsa(cost)
    with pytest.raises(expected.type) as got:
        linear_sum_assignment(cost)
    assert str(expected.value) in str(got.value)


@pytest.mark.parametrize(
    ("cost", "maximize", "where"),
    [
        ([[1.0, np.nan], [np.nan, 1.0]], False, "cost_matrix[0, 1] is nan"),
        ([[1.0, 2.0, 3.0], [4.0, 5.0, -np.inf]], False, "cost_matrix[1, 2] is -inf"),
        ([[1.0, np.inf], [2.0, 3.0]], True, "cost_matrix[0, 1] is inf"),
        ([[1.0, 2.0], [3.0, 4.0], [5.0, np.nan]], False, "cost_matrix[2, 1] is nan"),  # tall
    ],
)
def test_invalid_entries_are_named(cost, maximize, where):
    with pytest.raises(ValueError, match="invalid numeric entries") as got:
        linear_sum_assignment(cost, maximize)
    assert where in str(got.value)


def test_keywords_and_maximize_truthiness_as_scipy():
    cost = [[1, 2], [3, 5]]
    for flag in (True, 1, "yes", np.True_, [], 0):
        np.testing.assert_array_equal(
            linear_sum_assignment(cost_matrix=cost, maximize=flag)[1], scipy_lsa(cost, flag)[1]
        )


def test_results_are_fresh_arrays():
    rows, cols = linear_sum_assignment(np.eye(3))
    rows2, cols2 = linear_sum_assignment(np.eye(3))
    cols[:] = -1
    np.testing.assert_array_equal(cols2, [1, 0, 2] if cols2[0] == 1 else cols2)
    assert not np.shares_memory(cols, cols2) and not np.shares_memory(rows, rows2)


# ---------------------------------------------------------------- batches


def batch_of(rng):
    shapes = [(5, 5), (3, 8), (8, 3), (0, 4), (4, 0), (1, 1), (20, 6), (6, 20), (0, 0), (30, 30)]
    return [rng.random(s) for s in shapes] + [rng.integers(0, 3, (7, 7)), np.ones((3, 5))]


@pytest.mark.parametrize("maximize", [False, True])
def test_batch_equals_one_call_per_matrix(rng, maximize):
    costs = batch_of(rng)
    got = linear_sum_assignment_batch(costs, maximize)
    assert len(got) == len(costs)
    for cost, (rows, cols) in zip(costs, got):
        want = linear_sum_assignment(cost, maximize)
        np.testing.assert_array_equal(rows, want[0])
        np.testing.assert_array_equal(cols, want[1])


@pytest.mark.parametrize("maximize", [False, True])
def test_batch_reads_views_in_any_memory_layout(rng, maximize):
    whole = rng.random((10, 30))
    costs = [whole[:, 3:9], whole[:, ::7], whole.T[5:20], np.asfortranarray(whole[:4, :7])]
    for cost, (rows, cols) in zip(costs, linear_sum_assignment_batch(costs, maximize)):
        want = scipy_lsa(cost, maximize)
        np.testing.assert_array_equal(rows, want[0])
        np.testing.assert_array_equal(cols, want[1])


@pytest.mark.parametrize("n_rows", [100, 300])  # read as a transposed view; copied, transposed
def test_tall_matrices_on_both_sides_of_the_in_place_limit(rng, n_rows):
    cost = rng.random((n_rows, 20))
    cost[5, :] = np.inf  # a query no target may take
    cost[:, 3] = np.where(np.arange(n_rows) % 2, np.inf, cost[:, 3])  # half of one column
    assert (n_rows * 20 <= drivers.IN_PLACE_MAX) == (n_rows == 100)
    rows, cols = scipy_lsa(cost)
    for got in (linear_sum_assignment(cost), linear_sum_assignment_batch([cost])[0]):
        np.testing.assert_array_equal(got[0], rows)
        np.testing.assert_array_equal(got[1], cols)
    wide_rows, wide_cols = linear_sum_assignment_batch([np.ascontiguousarray(cost.T)])[0]
    np.testing.assert_array_equal(wide_rows, np.arange(20))
    np.testing.assert_array_equal(wide_cols, rows[np.argsort(cols)])  # the same pairs


def test_batch_accepts_a_3d_array_and_an_empty_sequence(rng):
    costs = rng.random((4, 6, 3))
    for (_, cols), cost in zip(linear_sum_assignment_batch(costs), costs):
        np.testing.assert_array_equal(cols, scipy_lsa(cost)[1])
    assert linear_sum_assignment_batch([]) == []


def test_batch_errors_name_the_problem(rng):
    costs = batch_of(rng)
    costs[6] = costs[6].copy()
    costs[6][4, 2] = np.nan
    with pytest.raises(ValueError, match=r"costs\[6\]\[4, 2\] is nan"):
        linear_sum_assignment_batch(costs)
    costs[6] = np.full((2, 2), np.inf)
    with pytest.raises(ValueError, match=r"cost matrix is infeasible \(costs\[6\]"):
        linear_sum_assignment_batch(costs)
    with pytest.raises(ValueError, match=r"costs\[1\]: expected a matrix \(2-D array\), got a 1"):
        linear_sum_assignment_batch([np.eye(2), np.ones(3)])


def test_stacked_layout_equals_one_call_per_problem(rng):
    n_queries = 12
    sizes = [3, 0, 12, 15, 1, 7]  # including more targets than queries
    costs = [rng.random((n_queries, t)) for t in sizes]  # (Q, T) per image
    stacked = np.concatenate([c.T for c in costs])  # (S, Q)
    got = linear_sum_assignment_stacked(stacked, sizes)
    for p, cost in enumerate(costs):
        want = scipy_lsa(cost)
        np.testing.assert_array_equal(got[p][0], want[0])
        np.testing.assert_array_equal(got[p][1], want[1])


def test_stacked_refuses_bad_sizes(rng):
    with pytest.raises(ValueError, match="sizes must lie in"):
        linear_sum_assignment_stacked(rng.random((5, 3)), [-1, 6])
    with pytest.raises(ValueError, match="sizes must be 2 integers"):
        linear_sum_assignment_stacked(rng.random((5, 3)), [1.0, 4.0])
    with pytest.raises(ValueError, match="add up to the 5 rows"):
        linear_sum_assignment_stacked(rng.random((5, 3)), [2, 2])
    stacked = rng.random((5, 3))
    stacked[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"costs\[1\]\[1, 1\] is nan"):  # row 3 = image 1, target 1
        linear_sum_assignment_stacked(stacked, [2, 3])


@given(
    st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), max_size=6), st.integers(0, 2**32 - 1)
)
def test_batch_property_equals_scipy_per_matrix(shapes, seed):
    rng = np.random.default_rng(seed)
    costs = [rng.integers(0, 4, s).astype(np.float64) for s in shapes]
    assume(all(np.isfinite(c).all() for c in costs))
    for cost, (rows, cols) in zip(costs, linear_sum_assignment_batch(costs)):
        assert_valid(cost, rows, cols)
        assert total(cost, rows, cols) == total(cost, *scipy_lsa(cost))


# ---------------------------------------------------------------- the lesson's trace


@given(
    arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(6, 8)), elements=st.integers(0, 9))
)
def test_trace_keeps_the_invariants_and_ends_optimal(cost):
    steps = trace_assignment(cost)
    assert [s.row for s in steps] == list(range(cost.shape[0]))
    for s in steps:
        done = np.arange(s.row + 1)  # rows added so far
        reduced = s.reduced(cost)[done]
        assert reduced.min() >= -1e-9  # dual feasibility on every added row
        np.testing.assert_allclose(reduced[done, s.col4row[done]], 0.0, atol=1e-9)  # tight
        assert np.all(s.col4row[s.row + 1 :] == -1)
        assert s.added[0][0] == s.row and s.added[-1][1] in s.settled  # row -> ... -> sink
        assert len(s.added) == len(s.removed) + 1
    final = steps[-1].col4row
    assert total(cost, np.arange(len(final)), final) == total(cost, *scipy_lsa(cost))


def test_trace_refuses_tall_and_invalid_matrices():
    with pytest.raises(ValueError, match="R <= K"):
        trace_assignment(np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"\+inf"):
        trace_assignment(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="infeasible"):
        trace_assignment(np.array([[np.inf, np.inf], [1.0, 2.0]]))
