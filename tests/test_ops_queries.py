"""The ops object queries use: embedding lookup, box sine embedding, inverse sigmoid."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from minidetr.backend import to_numpy
from minidetr.gradcheck import gradcheck
from minidetr.ops import (
    box_sine_embedding_backward,
    box_sine_embedding_forward,
    embedding_backward,
    embedding_forward,
    inverse_sigmoid,
    sigmoid_forward,
)

TOL = 1e-7  # float64 central differences land near 1e-9; a wrong backward is O(1)


# ----------------------------------------------------------------------------- embedding


def test_embedding_gradients(xp, rng):
    indices = xp.asarray(rng.integers(0, 5, size=(2, 7)))
    table = xp.asarray(rng.standard_normal((5, 3)))
    result = gradcheck(
        embedding_forward,
        lambda dout, cache: (None, *embedding_backward(dout, cache)),
        [indices, table],
        wrt=[1],
    )
    assert result.max_error < TOL


def test_embedding_matches_indexing(rng):
    indices = rng.integers(0, 6, size=(3, 4))
    table = rng.standard_normal((6, 5))
    out, _ = embedding_forward(indices, table)
    np.testing.assert_array_equal(out, table[indices])


@given(st.lists(st.integers(0, 3), min_size=1, max_size=12))
def test_embedding_backward_sums_repeated_rows(picks):
    """Oracle: np.add.at scatters every lookup's gradient into its row, repeats add up."""
    indices = np.asarray(picks)
    table = np.linspace(-1.0, 1.0, 4 * 2).reshape(4, 2)
    out, cache = embedding_forward(indices, table)
    dout = np.arange(out.size, dtype=np.float64).reshape(out.shape) + 0.5
    (dtable,) = embedding_backward(dout, cache)
    want = np.zeros_like(table)
    np.add.at(want, indices, dout)
    np.testing.assert_allclose(dtable, want, rtol=0, atol=1e-12)


def test_embedding_rejects_float_indices(rng):
    with pytest.raises(TypeError, match="indices must have an integer dtype"):
        embedding_forward(np.zeros(3), rng.standard_normal((4, 2)))


def test_embedding_rejects_table_that_is_not_a_matrix(rng):
    with pytest.raises(ValueError, match=r"table must have 2 dimensions \(V, D\)"):
        embedding_forward(np.zeros(3, dtype=np.int64), rng.standard_normal(4))


# ------------------------------------------------------------------------ box sine embedding


def test_box_sine_embedding_gradients(xp, rng):
    boxes = xp.asarray(rng.uniform(0.05, 0.95, size=(2, 3, 4)))
    result = gradcheck(
        lambda b: box_sine_embedding_forward(b, 8), box_sine_embedding_backward, [boxes]
    )
    assert result.max_error < TOL


def _dab_detr_sine(boxes: np.ndarray, dim: int) -> np.ndarray:
    """DAB-DETR's ``gen_sineembed_for_position`` written out per coordinate, loops and all.

    Feature k of a coordinate c is sin(2 pi c / T^(2 floor(k/2) / F)) for even k and
    cos for odd k; the four coordinates follow each other in the box's order.
    """
    f = dim // 2
    b, q, _ = boxes.shape
    out = np.zeros((b, q, 4, f))
    for k in range(f):
        freq = 2 * math.pi / 10000.0 ** (2 * (k // 2) / f)
        fn = math.sin if k % 2 == 0 else math.cos
        for idx in np.ndindex(b, q, 4):
            out[idx + (k,)] = fn(boxes[idx] * freq)
    return out.reshape(b, q, 4 * f)


def test_box_sine_embedding_matches_the_formula(rng):
    boxes = rng.uniform(0.0, 1.0, size=(2, 3, 4))
    emb, _ = box_sine_embedding_forward(boxes, 12)
    assert emb.shape == (2, 3, 24)
    np.testing.assert_allclose(emb, _dab_detr_sine(boxes, 12), rtol=0, atol=1e-12)


@given(arrays(np.float64, (1, 3, 4), elements=st.floats(0.0, 1.0)))
def test_box_sine_embedding_properties(boxes):
    """Bounded by 1; each coordinate only moves its own F features (a block-diagonal Jacobian)."""
    emb, cache = box_sine_embedding_forward(boxes, 8)
    assert np.all(np.abs(emb) <= 1.0)
    demb = np.zeros_like(emb)
    demb[..., 4:8] = 1.0  # the features of coordinate 1 (cy)
    (dboxes,) = box_sine_embedding_backward(demb, cache)
    assert np.all(dboxes[..., [0, 2, 3]] == 0.0)


def test_box_sine_embedding_rejects_points(rng):
    with pytest.raises(ValueError, match=r"boxes must have size 4 on axis 2 \(cx, cy, w, h\)"):
        box_sine_embedding_forward(rng.uniform(size=(1, 3, 2)), 8)


def test_box_sine_embedding_rejects_odd_width(rng):
    with pytest.raises(ValueError, match="dim must be a positive even number"):
        box_sine_embedding_forward(rng.uniform(size=(1, 3, 4)), 7)


# --------------------------------------------------------------------------- inverse sigmoid


@given(arrays(np.float64, 6, elements=st.floats(-10.0, 10.0)))
def test_inverse_sigmoid_undoes_sigmoid(u):
    x, _ = sigmoid_forward(u)
    np.testing.assert_allclose(inverse_sigmoid(x), u, rtol=0, atol=1e-6)


def test_inverse_sigmoid_is_finite_at_the_ends(xp):
    u = to_numpy(inverse_sigmoid(xp.asarray([0.0, 1.0, 0.5])))
    np.testing.assert_allclose(u, [math.log(1e-5 / (1 - 1e-5)), -math.log(1e-5 / (1 - 1e-5)), 0])
