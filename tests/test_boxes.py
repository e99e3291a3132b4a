"""Boxes: conversions, area, IoU and GIoU against exact arithmetic, PyTorch and the kernels."""

from __future__ import annotations

from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minidetr import boxes as B
from minidetr.backend import to_numpy
from minidetr.boxes import checks as BC
from minidetr.boxes import giou as BG
from minidetr.gradcheck import gradcheck
from minidetr.kernels import giou_cpu

DATA = Path(__file__).parent / "data"
TOL = 1e-7  # float64 central differences land near 1e-9; a wrong backward is O(1)
GRID = 8  # grid boxes have corners k / GRID: dyadic, so every step up to a division is exact


# ------------------------------------------------------------------ inputs


def _box(t: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = t
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def grid_boxes(min_size: int = 0, max_size: int = 6):
    """Integer boxes on a small grid: ties, touching edges, nesting and zero areas are common."""
    corner = st.integers(0, GRID)
    box = st.tuples(corner, corner, corner, corner).map(_box)
    return st.lists(box, min_size=min_size, max_size=max_size)


def as_array(int_boxes) -> np.ndarray:
    return np.asarray(int_boxes, dtype=np.float64).reshape(-1, 4) / GRID


def spread_boxes(rng: np.random.Generator, n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes whose x (and y) corners are all distinct and at least 1/(2(n+m)) apart.

    Then no min or max is tied and no overlap width is 0: every pair sits away
    from GIoU's kinks, where central differences are meaningful. Disjoint,
    overlapping and nested pairs all occur.
    """
    k = 2 * (n + m)
    xs = rng.permutation(np.arange(k) + rng.uniform(0.0, 0.5, k)).reshape(-1, 2) / k
    ys = rng.permutation(np.arange(k) + rng.uniform(0.0, 0.5, k)).reshape(-1, 2) / k
    xs.sort(axis=1)
    ys.sort(axis=1)
    boxes = np.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], axis=1)
    return boxes[:n], boxes[n:]


def exact_iou_giou(a, b) -> tuple[Fraction, Fraction, Fraction]:
    """(iou, union, giou) in exact rational arithmetic, straight from the definitions."""
    a, b = [Fraction(v) for v in a], [Fraction(v) for v in b]
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), Fraction(0))
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), Fraction(0))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    enclose = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    iou = inter / union if union else Fraction(0)
    penalty = (enclose - union) / enclose if enclose else Fraction(0)
    return iou, union, iou - penalty


def plain_giou(b1: np.ndarray, b2: np.ndarray) -> np.ndarray:
    """The array-API reference, bypassing the Numba dispatch."""
    return BG._overlap(b1[:, None, :], b2[None, :, :]).giou


def plain_giou_backward(dgiou, b1, b2) -> tuple[np.ndarray, np.ndarray]:
    grads = BG._overlap_backward(dgiou, b1[:, None, :], b2[None, :, :])
    return (
        np.stack([g.sum(axis=1) for g in grads[:4]], axis=-1),
        np.stack([g.sum(axis=0) for g in grads[4:]], axis=-1),
    )


# ------------------------------------------------------------------ golden values


def test_giou_matches_pytorch_golden_values_and_gradients(xp):
    g = np.load(DATA / "giou.npz")
    b1, b2 = xp.asarray(g["boxes1"]), xp.asarray(g["boxes2"])
    giou, cache = B.generalized_box_iou_forward(b1, b2)
    np.testing.assert_allclose(to_numpy(giou), g["giou"], rtol=0, atol=1e-14)
    assert np.all(to_numpy(giou)[3] < 0)  # row 3 is disjoint from every box
    db1, db2 = B.generalized_box_iou_backward(xp.asarray(g["dgiou"]), cache)
    np.testing.assert_allclose(to_numpy(db1), g["dboxes1"], rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(to_numpy(db2), g["dboxes2"], rtol=1e-12, atol=1e-13)
    assert np.any(to_numpy(db1)[3] != 0)  # the disjoint box still gets a gradient


# ------------------------------------------------------------------ exact oracle


@given(grid_boxes(1), grid_boxes(1))
def test_iou_and_union_are_the_correctly_rounded_exact_values(ints1, ints2):
    # On the dyadic grid inter and union are exact, so IoU is one correctly rounded division.
    iou, union = B.box_iou(as_array(ints1), as_array(ints2))
    giou = B.generalized_box_iou(as_array(ints1), as_array(ints2))
    for i, a in enumerate(ints1):
        for j, b in enumerate(ints2):
            e_iou, e_union, e_giou = exact_iou_giou(
                [Fraction(v, GRID) for v in a], [Fraction(v, GRID) for v in b]
            )
            assert iou[i, j] == float(e_iou)
            assert union[i, j] == float(e_union)
            assert abs(giou[i, j] - float(e_giou)) <= 4e-16  # two more roundings


rational = st.builds(Fraction, st.integers(0, 60), st.integers(1, 12))


@given(
    st.lists(st.tuples(rational, rational, rational, rational).map(_box), min_size=2, max_size=5)
)
def test_iou_and_giou_match_exact_rational_arithmetic(rboxes):
    # Corners k/q (q <= 12) are rounded to floats; distinct corners lie >= 1/132 apart, so the
    # rounding error of ~1e-15 moves IoU and GIoU by at most ~1e-13.
    arr = np.array([[float(v) for v in box] for box in rboxes])
    iou, union = B.box_iou(arr, arr[::-1])
    giou = B.generalized_box_iou(arr, arr[::-1])
    for i, a in enumerate(rboxes):
        for j, b in enumerate(rboxes[::-1]):
            e_iou, e_union, e_giou = exact_iou_giou(a, b)
            assert abs(iou[i, j] - float(e_iou)) < 1e-12
            assert abs(union[i, j] - float(e_union)) < 1e-12
            assert abs(giou[i, j] - float(e_giou)) < 1e-12


# ------------------------------------------------------------------ properties


@given(grid_boxes(), grid_boxes())
def test_giou_bounds_and_symmetry(ints1, ints2):
    b1, b2 = as_array(ints1), as_array(ints2)
    iou, _ = B.box_iou(b1, b2)
    giou = B.generalized_box_iou(b1, b2)
    assert giou.shape == iou.shape == (len(ints1), len(ints2))
    assert np.all(np.isfinite(giou))
    assert np.all((-1 <= giou) & (giou <= iou) & (iou <= 1) & (iou >= 0))
    np.testing.assert_array_equal(B.generalized_box_iou(b2, b1), giou.T)


@given(grid_boxes(1))
def test_giou_of_a_box_with_itself(ints):
    b = as_array(ints)
    diag = np.diagonal(B.generalized_box_iou(b, b))
    area = B.box_area(b)
    # 1 for a box with area; 0 by the 0/0 := 0 convention for a zero-area box
    np.testing.assert_array_equal(diag, np.where(area > 0, 1.0, 0.0))


@given(grid_boxes(1), grid_boxes(1), st.integers(-20, 20), st.integers(-20, 20), st.integers(1, 5))
def test_giou_is_invariant_to_translating_and_scaling_both_boxes(ints1, ints2, tx, ty, s):
    # Dyadic corners stay exact under these moves, so the results must be identical.
    b1, b2 = as_array(ints1), as_array(ints2)
    shift = np.array([tx, ty, tx, ty]) / GRID
    giou = B.generalized_box_iou(b1, b2)
    np.testing.assert_array_equal(B.generalized_box_iou(b1 + shift, b2 + shift), giou)
    np.testing.assert_array_equal(B.generalized_box_iou(b1 * s, b2 * s), giou)
    np.testing.assert_array_equal(B.box_iou(b1 * s * 0.25, b2 * s * 0.25)[0], B.box_iou(b1, b2)[0])


@given(grid_boxes(1), grid_boxes(1))
def test_giou_gradient_is_symmetric_under_swapping(ints1, ints2):
    # Ties split the gradient evenly, so swapping the arguments swaps the gradients exactly.
    b1, b2 = as_array(ints1), as_array(ints2)
    dg = np.random.default_rng(len(ints1) + 7 * len(ints2)).standard_normal((len(b1), len(b2)))
    _, c12 = B.generalized_box_iou_forward(b1, b2)
    _, c21 = B.generalized_box_iou_forward(b2, b1)
    d1, d2 = B.generalized_box_iou_backward(dg, c12)
    e2, e1 = B.generalized_box_iou_backward(dg.T.copy(), c21)
    np.testing.assert_allclose(d1, e1, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(d2, e2, rtol=1e-13, atol=1e-13)


def test_giou_pulls_a_disjoint_box_towards_its_target_where_iou_cannot():
    pred = np.array([[0.0, 0.0, 1.0, 1.0]])
    target = np.array([[3.0, 0.0, 4.0, 1.0]])  # to the right, no overlap
    assert B.box_iou(pred, target)[0][0, 0] == 0.0
    _, cache = B.generalized_box_iou_forward(pred, target)
    dpred, _ = B.generalized_box_iou_backward(np.ones((1, 1)), cache)
    # shifting the whole box right by t gives GIoU = -(2 - t) / (4 - t): slope 1/8 at t = 0;
    # moving x1 alone gives -(2 - t) / 4 (slope 1/4), moving x0 alone -2 / (4 - t) (slope -1/8)
    np.testing.assert_allclose(dpred[0, [0, 2]], [-0.125, 0.25], rtol=1e-14)


# ------------------------------------------------------------------ degenerate inputs


@pytest.mark.parametrize(
    ("a", "b", "iou", "giou"),
    [
        ((1, 1, 1, 1), (1, 1, 1, 1), 0.0, 0.0),  # the same point: union and |C| are 0
        ((0, 0, 0, 0), (1, 1, 1, 1), 0.0, -1.0),  # two points: union 0, |C| = 1
        ((0, 0, 1, 0), (2, 0, 3, 0), 0.0, 0.0),  # segments on one line: |C| = 0
        ((0.5, 0.5, 0.5, 0.5), (0, 0, 1, 1), 0.0, 0.0),  # a point inside a box: C is the box
        ((2, 0, 3, 0), (0, 0, 1, 1), 0.0, -2.0 / 3.0),  # a segment beside a box
    ],
)
def test_zero_area_boxes_have_the_documented_finite_values(xp, a, b, iou, giou):
    b1, b2 = xp.asarray([a], dtype=xp.float64), xp.asarray([b], dtype=xp.float64)
    assert float(B.box_iou(b1, b2)[0][0, 0]) == iou
    out, cache = B.generalized_box_iou_forward(b1, b2)
    assert float(out[0, 0]) == pytest.approx(giou, abs=1e-15)
    for d in B.generalized_box_iou_backward(xp.ones_like(out), cache):
        assert np.all(np.isfinite(to_numpy(d)))
    p, pcache = B.paired_generalized_box_iou_forward(b1, b2)
    assert float(p[0]) == float(out[0, 0])
    for d in B.paired_generalized_box_iou_backward(xp.ones_like(p), pcache):
        assert np.all(np.isfinite(to_numpy(d)))


@pytest.mark.parametrize(("n", "m"), [(0, 5), (3, 0), (0, 0)])
def test_empty_inputs_give_empty_results(xp, n, m):
    b1 = xp.asarray(np.tile([0.0, 0.0, 1.0, 1.0], (n, 1)).reshape(n, 4))
    b2 = xp.asarray(np.tile([0.5, 0.5, 2.0, 2.0], (m, 1)).reshape(m, 4))
    iou, union = B.box_iou(b1, b2)
    giou, cache = B.generalized_box_iou_forward(b1, b2)
    assert iou.shape == union.shape == giou.shape == (n, m)
    d1, d2 = B.generalized_box_iou_backward(xp.zeros((n, m), dtype=xp.float64), cache)
    assert d1.shape == (n, 4) and d2.shape == (m, 4)


# ------------------------------------------------------------------ gradients


@pytest.mark.parametrize("seed", [0, 1])
def test_pairwise_giou_gradients(xp, seed):
    b1, b2 = spread_boxes(np.random.default_rng(seed), 5, 4)
    check = gradcheck(
        B.generalized_box_iou_forward,
        B.generalized_box_iou_backward,
        [xp.asarray(b1), xp.asarray(b2)],
        names=["boxes1", "boxes2"],
    )
    assert check.max_error < TOL, check.report()


def test_paired_giou_gradients(xp):
    b1, b2 = spread_boxes(np.random.default_rng(2), 6, 6)
    check = gradcheck(
        B.paired_generalized_box_iou_forward,
        B.paired_generalized_box_iou_backward,
        [xp.asarray(b1), xp.asarray(b2)],
        names=["boxes1", "boxes2"],
    )
    assert check.max_error < TOL, check.report()


@given(grid_boxes(1), grid_boxes(1))
def test_paired_giou_is_the_diagonal_of_pairwise(ints1, ints2):
    n = min(len(ints1), len(ints2))
    b1, b2 = as_array(ints1[:n]), as_array(ints2[:n])
    dg = np.linspace(-1.0, 2.0, n)
    p, pcache = B.paired_generalized_box_iou_forward(b1, b2)
    full, cache = B.generalized_box_iou_forward(b1, b2)
    np.testing.assert_array_equal(p, np.diagonal(full))
    d1, d2 = B.paired_generalized_box_iou_backward(dg, pcache)
    e1, e2 = B.generalized_box_iou_backward(np.diag(dg), cache)
    np.testing.assert_allclose(d1, e1, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(d2, e2, rtol=1e-13, atol=1e-14)


# ------------------------------------------------------------------ Numba kernel vs reference


@contextmanager
def threads(parallel: bool):
    """Force the threaded loops (threshold 0) or the serial ones (threshold out of reach)."""
    saved = giou_cpu.PARALLEL_MIN_PAIRS
    giou_cpu.PARALLEL_MIN_PAIRS = 0 if parallel else 1 << 62
    try:
        yield
    finally:
        giou_cpu.PARALLEL_MIN_PAIRS = saved


@given(grid_boxes(), grid_boxes(), st.booleans())
def test_numba_kernels_match_the_array_reference(ints1, ints2, parallel):
    b1, b2 = as_array(ints1), as_array(ints2)
    o = BG._overlap(b1[:, None, :], b2[None, :, :])
    dg = np.random.default_rng(len(ints1)).standard_normal((len(b1), len(b2)))
    with threads(parallel):
        iou, union = giou_cpu.box_iou(b1, b2)
        giou = giou_cpu.generalized_box_iou(b1, b2)
        d1, d2 = giou_cpu.generalized_box_iou_backward(dg, b1, b2)
    np.testing.assert_array_equal(iou, o.iou)
    np.testing.assert_array_equal(union, o.union)
    np.testing.assert_array_equal(giou, o.giou)
    e1, e2 = plain_giou_backward(dg, b1, b2)
    np.testing.assert_allclose(d1, e1, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(d2, e2, rtol=1e-13, atol=1e-13)


def test_numba_kernel_in_float32_matches_the_reference_and_keeps_the_dtype():
    b1, b2 = spread_boxes(np.random.default_rng(3), 40, 30)
    b1, b2 = b1.astype(np.float32), b2.astype(np.float32)
    giou = B.generalized_box_iou(b1, b2)
    assert giou.dtype == np.float32
    np.testing.assert_allclose(giou, plain_giou(b1, b2), rtol=0, atol=2e-6)
    _, cache = B.generalized_box_iou_forward(b1, b2)
    dg = np.ones(giou.shape, dtype=np.float32)
    for got, want in zip(
        B.generalized_box_iou_backward(dg, cache), plain_giou_backward(dg, b1, b2)
    ):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


def test_numba_kernel_handles_strided_and_mixed_precision_inputs():
    b1, b2 = spread_boxes(np.random.default_rng(4), 6, 5)
    wide = np.zeros((6, 8))
    wide[:, ::2] = b1  # a non-contiguous view
    got = B.generalized_box_iou(wide[:, ::2], b2.astype(np.float32))
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, plain_giou(b1, b2.astype(np.float32).astype(np.float64)))


def test_half_precision_takes_the_array_path_and_keeps_its_dtype():
    b1, b2 = spread_boxes(np.random.default_rng(5), 4, 3)
    giou = B.generalized_box_iou(b1.astype(np.float16), b2.astype(np.float16))
    assert giou.dtype == np.float16  # the kernels compile for float32/float64 only
    np.testing.assert_allclose(giou, plain_giou(b1, b2), atol=5e-3)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ([0.5, 0.0, 0.2, 1.0], r"boxes2\[3\] has x1 < x0"),
        ([0.0, 0.7, 1.0, 0.1], r"boxes2\[3\] has y1 < y0"),
        ([0.0, np.nan, 1.0, 1.0], r"boxes2\[3\] is not finite"),
        ([0.0, 0.0, np.inf, 1.0], r"boxes2\[3\] is not finite"),
    ],
)
def test_bad_boxes_are_named_by_argument_and_index(xp, row, message):
    good = np.tile([0.0, 0.0, 1.0, 1.0], (5, 1))
    bad = good.copy()
    bad[3] = row
    for fn in (B.box_iou, B.generalized_box_iou, B.paired_generalized_box_iou):
        with pytest.raises(ValueError, match=message):
            fn(xp.asarray(good), xp.asarray(bad))
        with pytest.raises(ValueError, match=message.replace("boxes2", "boxes1")):
            fn(xp.asarray(bad), xp.asarray(good))


def test_box_area_names_the_index_of_a_bad_box_in_a_batch(xp):
    boxes = np.tile([0.0, 0.0, 1.0, 2.0], (2, 3, 1))
    np.testing.assert_array_equal(to_numpy(B.box_area(xp.asarray(boxes))), np.full((2, 3), 2.0))
    boxes[1, 2, 2] = -1.0
    with pytest.raises(ValueError, match=r"boxes\[1, 2\] has x1 < x0"):
        B.box_area(xp.asarray(boxes))


def test_bad_shapes_and_types_raise():
    ok = np.zeros((2, 4))
    with pytest.raises(ValueError, match=r"boxes1 must have shape \(\.\.\., 4\)"):
        B.box_iou(np.zeros((2, 3)), ok)
    with pytest.raises(ValueError, match=r"boxes2 must have shape \(n, 4\)"):
        B.generalized_box_iou(ok, np.zeros((1, 2, 4)))
    with pytest.raises(TypeError, match="boxes1 must have a real floating dtype"):
        B.generalized_box_iou(np.zeros((2, 4), dtype=np.int64), ok)
    with pytest.raises(TypeError, match="boxes must be an array"):
        B.box_cxcywh_to_xyxy([[0.5, 0.5, 1.0, 1.0]])
    with pytest.raises(ValueError, match="same number of boxes"):
        B.paired_generalized_box_iou(ok, np.zeros((3, 4)))


def test_backward_rejects_an_upstream_gradient_of_the_wrong_shape(xp):
    b1, b2 = (xp.asarray(b) for b in spread_boxes(np.random.default_rng(6), 3, 2))
    _, cache = B.generalized_box_iou_forward(b1, b2)
    with pytest.raises(ValueError, match=r"dgiou must have the forward output's shape \(3, 2\)"):
        B.generalized_box_iou_backward(xp.ones((2, 3), dtype=xp.float64), cache)
    _, pcache = B.paired_generalized_box_iou_forward(b1, b1)
    with pytest.raises(ValueError, match=r"dgiou must have the forward output's shape \(3,\)"):
        B.paired_generalized_box_iou_backward(xp.ones((3, 1), dtype=xp.float64), pcache)


# ------------------------------------------------------------------ conversions


def test_conversions_known_values(xp):
    cxcywh = xp.asarray([[0.5, 0.5, 1.0, 0.5], [2.0, 3.0, 0.0, 4.0]])
    xyxy = xp.asarray([[0.0, 0.25, 1.0, 0.75], [2.0, 1.0, 2.0, 5.0]])
    np.testing.assert_array_equal(to_numpy(B.box_cxcywh_to_xyxy(cxcywh)), to_numpy(xyxy))
    np.testing.assert_array_equal(to_numpy(B.box_xyxy_to_cxcywh(xyxy)), to_numpy(cxcywh))


@given(grid_boxes(1, 8))
def test_conversions_round_trip(ints):
    xyxy = as_array(ints)  # dyadic: the round trip is exact
    np.testing.assert_array_equal(B.box_cxcywh_to_xyxy(B.box_xyxy_to_cxcywh(xyxy)), xyxy)
    cxcywh = B.box_xyxy_to_cxcywh(xyxy)
    np.testing.assert_array_equal(B.box_xyxy_to_cxcywh(B.box_cxcywh_to_xyxy(cxcywh)), cxcywh)


@pytest.mark.parametrize(
    ("forward", "backward"),
    [
        (B.box_cxcywh_to_xyxy_forward, B.box_cxcywh_to_xyxy_backward),
        (B.box_xyxy_to_cxcywh_forward, B.box_xyxy_to_cxcywh_backward),
    ],
)
def test_conversion_gradients(xp, rng, forward, backward):
    boxes = xp.asarray(rng.uniform(0.1, 1.0, (2, 3, 4)))
    assert gradcheck(forward, backward, [boxes]).max_error < TOL


def test_conversion_backwards_are_inverse_transposes(rng):
    # The conversions are inverse linear maps J1, J2, so their backward maps are J1^T, J2^T
    # and J2^T J1^T = (J1 J2)^T = I.
    d = rng.standard_normal((5, 4))
    (back,) = B.box_cxcywh_to_xyxy_backward(d, B.BoxConversionCache())
    (again,) = B.box_xyxy_to_cxcywh_backward(back, B.BoxConversionCache())
    np.testing.assert_allclose(again, d, rtol=1e-14, atol=1e-14)


# ------------------------------------------------------------------ the whole float range

# (dtype, powers of two k for the scale 2**k): up to near each dtype's largest number
RANGES = [(np.float32, (40, 125)), (np.float64, (300, 1020))]


def _namespaces():
    spaces = [np]
    try:
        import array_api_strict

        spaces.append(array_api_strict)
    except ImportError:
        pass
    return spaces


@pytest.mark.parametrize(("dtype", "powers"), RANGES)
@given(ints1=grid_boxes(1), ints2=grid_boxes(1), k=st.integers(0, 1 << 30))
def test_giou_is_exactly_scale_invariant_up_to_the_largest_float(dtype, powers, ints1, ints2, k):
    """Scaling both boxes by 2**k changes nothing, even where their areas overflow the dtype."""
    k = powers[0] + k % (powers[1] - powers[0])
    b1, b2 = as_array(ints1).astype(dtype), as_array(ints2).astype(dtype)
    big1, big2 = b1 * dtype(2.0**k), b2 * dtype(2.0**k)  # exact: powers of two
    assert np.all(np.isfinite(big1)) and np.all(np.isfinite(big2))
    dg = np.random.default_rng(len(ints1)).standard_normal((len(b1), len(b2))).astype(dtype)
    for xp in _namespaces():
        giou, cache = B.generalized_box_iou_forward(xp.asarray(b1), xp.asarray(b2))
        big, big_cache = B.generalized_box_iou_forward(xp.asarray(big1), xp.asarray(big2))
        np.testing.assert_array_equal(to_numpy(big), to_numpy(giou))
        iou, _ = B.box_iou(xp.asarray(big1), xp.asarray(big2))
        np.testing.assert_array_equal(
            to_numpy(iou), to_numpy(B.box_iou(xp.asarray(b1), xp.asarray(b2))[0])
        )
        paired = B.paired_generalized_box_iou(xp.asarray(big1[:1]), xp.asarray(big2[:1]))
        small = B.paired_generalized_box_iou(xp.asarray(b1[:1]), xp.asarray(b2[:1]))
        np.testing.assert_array_equal(to_numpy(paired), to_numpy(small))
        # the gradient scales by 2**-k: compare it scaled back, where it is a normal number
        d1, d2 = B.generalized_box_iou_backward(xp.asarray(dg), cache)
        e1, e2 = B.generalized_box_iou_backward(xp.asarray(dg), big_cache)
        back = dtype(2.0 ** min(k, 60))
        rest = dtype(2.0 ** (k - min(k, 60)))
        for small, large in ((d1, e1), (d2, e2)):
            assert np.all(np.isfinite(to_numpy(large)))
            expected = to_numpy(small) / back / rest
            np.testing.assert_allclose(to_numpy(large), expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    ("dtype", "scale"),
    [(np.float32, 1e19), (np.float32, 3e37), (np.float64, 1e200), (np.float64, 1e307)],
)
def test_giou_of_huge_boxes_is_finite_and_right(dtype, scale):
    b1 = np.array([[0.0, 0.0, 1.0, 1.0], [0.5, 0.5, 2.0, 3.0]])
    b2 = np.array([[0.2, 0.1, 1.5, 1.2], [3.0, 3.0, 4.0, 4.0]])
    expected = B.generalized_box_iou(b1, b2)
    for xp in _namespaces():
        big1, big2 = xp.asarray((b1 * scale).astype(dtype)), xp.asarray((b2 * scale).astype(dtype))
        giou, cache = B.generalized_box_iou_forward(big1, big2)
        np.testing.assert_allclose(to_numpy(giou), expected, rtol=0, atol=1e-6)
        paired, pcache = B.paired_generalized_box_iou_forward(big1, big2)
        np.testing.assert_allclose(to_numpy(paired), np.diag(expected), rtol=0, atol=1e-6)
        grads = B.generalized_box_iou_backward(xp.ones((2, 2), dtype=giou.dtype), cache)
        grads += B.paired_generalized_box_iou_backward(xp.ones((2,), dtype=giou.dtype), pcache)
        assert all(np.all(np.isfinite(to_numpy(g))) for g in grads)


def test_giou_of_pixel_boxes_in_float16_is_finite_and_close_to_float64():
    b1 = np.array([[10, 20, 300, 310], [50, 60, 200, 290], [0, 0, 640, 480]], dtype=np.float64)
    b2 = np.array([[0, 0, 290, 300], [100, 100, 120, 130]], dtype=np.float64)
    expected = B.generalized_box_iou(b1, b2)
    giou, cache = B.generalized_box_iou_forward(b1.astype(np.float16), b2.astype(np.float16))
    assert giou.dtype == np.float16
    np.testing.assert_allclose(giou.astype(np.float64), expected, rtol=0, atol=2e-3)
    paired = B.paired_generalized_box_iou(b1[:2].astype(np.float16), b2.astype(np.float16))
    np.testing.assert_allclose(paired.astype(np.float64), np.diag(expected), atol=2e-3)
    d1, d2 = B.generalized_box_iou_backward(np.ones((3, 2), dtype=np.float16), cache)
    assert np.all(np.isfinite(d1)) and np.all(np.isfinite(d2))


def test_below_the_limit_nothing_changes():
    for dtype in (np.float16, np.float32, np.float64):
        limit = B.safe_coordinate_limit(np.zeros(1, dtype=dtype))
        assert BC._safe_scale(np.array([[0, 0, limit, limit]], dtype=dtype)) == 1.0
        assert BC._safe_scale(np.array([[0, 0, 2 * limit, 2 * limit]], dtype=dtype)) < 1.0
