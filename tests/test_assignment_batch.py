"""The batch API's in-place path (C-contiguous float64 lists), its copies and general path,
against SciPy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment as scipy_lsa
from test_assignment import assert_valid, total  # the answer checks shared with the solver's tests

import minidetr.assignment.solver as solver
from minidetr.assignment import (
    linear_sum_assignment,
    linear_sum_assignment_batch,
    linear_sum_assignment_stacked,
)


def layouts_of(rng):
    """Every kind of matrix a batch takes: float64 arrays in three layouts (read in place,
    or copied by one concatenate), other dtypes, big-endian bytes, a subclass and a list
    (the general path), empty ones."""
    whole = rng.random((12, 30))
    return [
        rng.random((7, 4)),  # read in place
        whole[:, 3:9],  # a strided view: concatenate copies it
        np.asfortranarray(rng.random((5, 6))),
        rng.random((6, 3)).astype(np.float32),
        rng.integers(-5, 5, (4, 4)),
        rng.random((3, 5)) > 0.5,
        rng.random((5, 5)).astype(">f8"),  # float64, but not this machine's byte order
        np.matrix(rng.random((2, 3))),
        rng.random((3, 3)).tolist(),
        np.zeros((0, 3)),
        rng.random((6, 0)),
    ]


def _equal_to_scipy(costs, got, maximize=False):
    """Exactly SciPy's pairs (for costs whose optimum is unique)."""
    assert len(got) == len(costs)
    for cost, (rows, cols) in zip(costs, got):
        want = scipy_lsa(cost, maximize)
        np.testing.assert_array_equal(rows, want[0])
        np.testing.assert_array_equal(cols, want[1])
        assert rows.dtype == cols.dtype == np.int64


def _optimal_and_equal_to_single_calls(costs, got, maximize=False):
    """SciPy's optimum (ties allowed) and exactly the pairs of one call per matrix."""
    assert len(got) == len(costs)
    sign = -1 if maximize else 1
    for cost, (rows, cols) in zip(costs, got):
        assert_valid(cost, rows, cols)
        assert sign * total(cost, rows, cols) == sign * total(cost, *scipy_lsa(cost, maximize))
        want = linear_sum_assignment(cost, maximize)
        np.testing.assert_array_equal(rows, want[0])
        np.testing.assert_array_equal(cols, want[1])


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.matrix
@pytest.mark.parametrize("maximize", [False, True])
def test_batch_takes_every_layout_and_dtype_alone_and_mixed(rng, maximize):
    costs = layouts_of(rng)
    for cost in costs:  # each alone: the bulk path, or the general one
        _optimal_and_equal_to_single_calls(
            [cost], linear_sum_assignment_batch([cost], maximize), maximize
        )
    _optimal_and_equal_to_single_calls(
        costs, linear_sum_assignment_batch(costs, maximize), maximize
    )
    _optimal_and_equal_to_single_calls(
        costs, linear_sum_assignment_batch(tuple(costs), maximize), maximize
    )
    _optimal_and_equal_to_single_calls(
        costs, linear_sum_assignment_batch(iter(costs), maximize), maximize
    )


def _unaligned(rng, shape):
    """A C-contiguous float64 matrix whose data starts one byte past an 8-byte boundary."""
    raw = np.zeros(np.prod(shape) * 8 + 1, np.uint8)
    matrix = raw[1:].view(np.float64).reshape(shape)
    matrix[...] = rng.random(shape)
    assert matrix.flags.c_contiguous and (matrix.size == 0 or not matrix.flags.aligned)
    return matrix


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.matrix
def test_in_place_path_takes_aligned_float64_matrices_and_nothing_else(rng):
    whole = rng.random((12, 30))
    read_only = rng.random((5, 9))
    read_only.flags.writeable = False
    fast = [
        rng.random((7, 4)),
        np.zeros((0, 3)),
        rng.random((100, 20)),
        read_only,
        whole[3:4, 2:7],  # one row
        whole[:, 3:9],  # DETR's C.split views
        whole[:, 3:4],  # one column: its row stride is 30 entries
        whole[::2, 1::3],
        np.asfortranarray(rng.random((5, 6))),
        np.broadcast_to(rng.integers(0, 9, 4) / 4, (3, 4)),  # a zero stride (exact sums: ties)
        whole[:0, 5:9],
    ]
    for mats in (fast, fast * 5):  # one chunk with padding; several, the last padded
        addresses, shapes, strides = solver._locate(mats)
        np.testing.assert_array_equal(addresses, [m.ctypes.data for m in mats])
        np.testing.assert_array_equal(shapes, [m.shape for m in mats])
        np.testing.assert_array_equal(strides, [m.strides for m in mats])
        for maximize in (False, True):  # and each is solved as a single call solves it
            got = linear_sum_assignment_batch(mats, maximize)
            _optimal_and_equal_to_single_calls(mats, got, maximize)
    others = layouts_of(rng)[3:9] + [
        whole[::-1],
        whole[:, ::-2],
        _unaligned(rng, (4, 5)),
        np.ones(3),
        np.ones((1, 2, 3)),
    ]
    for odd in others:  # anywhere in any chunk, one odd matrix sends the list to _pack_any
        for at in (0, 6, 15, 16, 40):
            mats = fast * 5
            mats[at] = odd
            assert solver._locate(mats) is None, (odd, at)
    assert solver._locate([_unaligned(rng, (0, 5))]) is not None  # nothing to read


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.matrix
def test_pack_copies_what_cannot_be_read_in_place_row_by_row(rng):
    whole = rng.random((12, 30))
    for mats in (
        [rng.random((7, 4)), whole[::-1], whole[:, ::-3], _unaligned(rng, (4, 5))],
        layouts_of(rng),  # float32, integers, bools, big-endian, np.matrix, a list: converted
    ):
        flat, shapes = solver._pack_any(mats)
        want = [np.asarray(m, dtype=np.float64) for m in mats]
        np.testing.assert_array_equal(flat, np.concatenate(want, axis=None))
        np.testing.assert_array_equal(shapes, [m.shape for m in want])
        addresses, shapes_again, strides = solver._locate_in(flat, shapes)
        offsets = np.cumsum([0] + [m.size for m in want[:-1]])
        np.testing.assert_array_equal(addresses - flat.ctypes.data, 8 * offsets)
        assert shapes_again is shapes
        np.testing.assert_array_equal(strides, [(8 * m.shape[1], 8) for m in want])


@pytest.mark.parametrize("n_problems", [1, 15, 16, 17, 40])
@pytest.mark.parametrize("odd_at", [None, 0, -1])
def test_batch_across_chunk_boundaries_equals_single_calls(rng, n_problems, odd_at):
    shapes = rng.integers(0, 30, (n_problems, 2)).tolist()
    costs = [rng.random(shape) for shape in shapes]
    if odd_at is not None:  # a Fortran matrix first or last, a reversed one (copied) mid-way
        costs[odd_at] = np.asfortranarray(costs[odd_at])
        costs[n_problems // 2] = costs[n_problems // 2][::-1]
    for maximize in (False, True):
        _optimal_and_equal_to_single_calls(
            costs, linear_sum_assignment_batch(costs, maximize), maximize
        )
    unaligned = [_unaligned(rng, c.shape) if i % 2 else c for i, c in enumerate(costs)]
    _optimal_and_equal_to_single_calls(unaligned, linear_sum_assignment_batch(unaligned))


def test_batch_leaves_the_caller_matrices_untouched(rng):
    costs = [rng.random((6, 4)), rng.random((4, 6))]
    before = [c.copy() for c in costs]
    for c in costs:
        c.flags.writeable = False  # read-only inputs are fine too
    linear_sum_assignment_batch(costs, maximize=True)  # maximising negates a copy
    for c, b in zip(costs, before):
        np.testing.assert_array_equal(c, b)


@pytest.mark.parametrize("shape", [(100, 20), (100, 21), (9, 6), (9, 7), (3, 1), (40, 39)])
def test_tall_results_sorted_on_both_sides_of_the_insertion_sort_limit(rng, shape):
    n, r = shape  # pairs are sorted by insertion while R * R <= 4 N, by a sweep beyond
    for cost in (rng.random(shape), rng.integers(0, 3, shape).astype(np.float64)):  # ties
        stacked = np.ascontiguousarray(cost.T)
        for got in (
            [linear_sum_assignment(cost)],
            linear_sum_assignment_batch([cost]),
            linear_sum_assignment_stacked(stacked, [r]),
        ):
            _optimal_and_equal_to_single_calls([cost], got)
    cost = rng.random(shape)  # a unique optimum: SciPy's very pairs
    _equal_to_scipy([cost], linear_sum_assignment_batch([cost]))


@given(
    st.lists(
        st.tuples(st.integers(0, 12), st.integers(0, 12), st.sampled_from("CFVRBL")),
        max_size=20,  # more than one chunk of the address path
    ),
    st.integers(0, 2**32 - 1),
    st.booleans(),
)
def test_batch_property_any_layout_equals_scipy(specs, seed, maximize):
    rng = np.random.default_rng(seed)
    costs = []
    for n, m, layout in specs:
        c = rng.integers(0, 4, (n, m)).astype(np.float64)  # ties test the order rules
        if layout == "F":
            c = np.asfortranarray(c)
        elif layout == "V":  # a strided view
            c = np.repeat(c, 2, axis=1)[:, ::2]
        elif layout == "R":  # reversed rows: a negative stride, copied
            c = c[::-1]
        elif layout == "B":  # one row repeated: a zero stride
            c = np.broadcast_to(c[:1], (n, m)) if n else c
        elif layout == "L":
            c = c.tolist() if n and m else c
        costs.append(c)
    got = linear_sum_assignment_batch(costs, maximize)
    _optimal_and_equal_to_single_calls(costs, got, maximize)


@given(
    st.tuples(st.integers(1, 7), st.integers(1, 7)),
    st.lists(st.sampled_from([np.nan, -np.inf, np.inf, 0.0]), min_size=1, max_size=12),
    st.integers(0, 2**32 - 1),
    st.booleans(),
)
def test_special_entries_refused_or_solved_as_scipy_does(shape, specials, seed, maximize):
    """NaN and wrong-signed infinities anywhere, in any shape: tall and wide matrices are
    checked after the solver's start has run on them, so it must end and be overruled."""
    rng = np.random.default_rng(seed)
    cost = rng.random(shape)
    cost.flat[rng.integers(0, cost.size, len(specials))] = specials
    try:
        want = scipy_lsa(cost, maximize)
    except ValueError as err:
        for call in (
            lambda: linear_sum_assignment(cost, maximize),
            lambda: linear_sum_assignment_batch([np.ones((2, 3)), cost], maximize),
        ):
            with pytest.raises(ValueError) as got:
                call()
            assert str(err).split(" ")[:3] == str(got.value).split(" ")[:3]  # same kind
        return
    for rows, cols in (
        linear_sum_assignment(cost, maximize),
        linear_sum_assignment_batch([cost], maximize)[0],
    ):
        assert_valid(cost, rows, cols)
        assert total(cost, rows, cols) == total(cost, *want)
