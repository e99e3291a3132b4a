"""The Numba CPU and numba.cuda kernels equal the plain reference on drawn shapes.

The CUDA kernels run in Numba's CUDA simulator where no GPU is present (see
conftest.py); the simulator runs every thread in Python, so its shapes stay small.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minidetr.deformable import ms_deform_attn_backward, ms_deform_attn_forward
from minidetr.kernels import ms_deform_cpu

GRAD_NAMES = ("dvalue", "dsampling_locations", "dattention_weights")


@st.composite
def problems(draw, max_side=7, max_levels=3, max_batch=2, max_queries=4, max_heads=3, max_points=3):
    """A random problem: odd and even map sizes, one to several levels, P = 1 included."""
    n_levels = draw(st.integers(1, max_levels))
    side = st.integers(1, max_side)
    shapes = [(draw(side), draw(side)) for _ in range(n_levels)]
    b = draw(st.integers(1, max_batch))
    q = draw(st.integers(1, max_queries))
    m = draw(st.integers(1, max_heads))
    dh = draw(st.integers(1, 4))
    p = draw(st.integers(1, max_points))
    r = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="seed"))
    value = r.standard_normal((b, sum(h * w for h, w in shapes), m, dh))
    loc = r.uniform(-0.2, 1.2, size=(b, q, m, n_levels, p, 2))
    if draw(st.booleans(), label="some samples on pixel centres and edges"):
        hw = np.array([[w, h] for h, w in shapes], dtype=np.float64)[:, None, :]  # (L, 1, 2)
        on_grid = (r.integers(-1, 9, size=loc.shape) + 0.5 * r.integers(0, 2, size=loc.shape)) / hw
        loc = np.where(r.random(loc.shape) < 0.5, on_grid, loc)
    attn = r.uniform(-1.0, 1.0, size=(b, q, m, n_levels, p))
    dout = r.standard_normal((b, q, m * dh))
    return shapes, value, loc, attn, dout


def on_kink(shapes, loc):
    """Samples on a pixel-grid line (x or y), where d/dloc jumps (B, Q, M, L, P).

    There the derivative is a convention (which side floor() picks after rounding);
    a GPU's fused multiply-add may pick the other one, so those entries of
    dsampling_locations are left out of the comparison. Everything else is compared.
    """
    hw = np.array([[w, h] for h, w in shapes], dtype=np.float64)[:, None, :]  # (L, 1, 2)
    pixel = loc * hw - 0.5
    return np.any(np.abs(pixel - np.round(pixel)) < 1e-9, axis=-1)


def assert_matches_reference(impl, shapes, value, loc, attn, dout, *, kinks=False):
    """The kernel equals the reference; d/dloc on grid lines too when ``kinks`` is set."""
    ref_out, ref_cache = ms_deform_attn_forward(value, shapes, loc, attn, impl="reference")
    out, cache = ms_deform_attn_forward(value, shapes, loc, attn, impl=impl)
    assert out.shape == ref_out.shape and out.dtype == ref_out.dtype
    np.testing.assert_allclose(out, ref_out, rtol=1e-12, atol=1e-13)
    grads = ms_deform_attn_backward(dout, cache)
    smooth = np.ones(loc.shape[:-1], dtype=bool) if kinks else ~on_kink(shapes, loc)
    for name, got, want in zip(GRAD_NAMES, grads, ms_deform_attn_backward(dout, ref_cache)):
        assert got.shape == want.shape and got.dtype == want.dtype, name
        if name == "dsampling_locations":
            got, want = got[smooth], want[smooth]
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-12, err_msg=name)


@given(problems(), st.booleans())
def test_numba_cpu_equals_reference(problem, threads):
    # force one driver or the other: the serial loop, or prange over (b, q) and (b, m)
    saved = ms_deform_cpu.PARALLEL_MIN_WORK
    ms_deform_cpu.PARALLEL_MIN_WORK = 0 if threads else 2**62
    try:
        assert_matches_reference("numba", *problem)
    finally:
        ms_deform_cpu.PARALLEL_MIN_WORK = saved


@pytest.mark.parametrize("impl", ["numba", "cuda"])
def test_kernels_equal_reference_on_the_encoders_first_samples(impl):
    """Pixel centres moved by whole pixels, as the encoder samples at initialisation.

    Every such sample sits on a grid line, many exactly on x = -1 or y = -1 (half a pixel
    outside the map), where the forward reads zero but the slope towards the map is not
    zero. The kernel once called that point outside and gave d/dloc = 0 there while the
    reference gave the slope: one step's encoder offset gradients differed by 15 to 19 %.
    These locations are exact in binary (eighths and quarters), so both sides round alike
    and the grid lines are compared too.
    """
    r = np.random.default_rng(5)
    shapes = [(8, 8), (4, 4)]
    b, q, m, dh, p = 1, 16, 2, 4, 4
    wh = np.array([[w, h] for h, w in shapes], dtype=np.float64)[:, None, :]  # (L, 1, 2)
    centre = (r.integers(0, 8, size=(b, q, 1, 1, 1, 2)) + 0.5) / 8
    loc = centre + r.integers(-2, 3, size=(b, q, m, len(shapes), p, 2)) / wh
    assert np.any(loc * wh - 0.5 == -1.0)  # the border case is present
    value = r.standard_normal((b, sum(h * w for h, w in shapes), m, dh))
    attn = r.random((b, q, m, len(shapes), p))
    dout = r.standard_normal((b, q, m * dh))
    assert_matches_reference(impl, shapes, value, loc, attn, dout, kinks=True)


def test_numba_cpu_equals_reference_on_a_larger_problem():
    """Many queries share pixels, so the backward's scatter would show any race."""
    r = np.random.default_rng(11)
    shapes = [(9, 11), (5, 6), (3, 3)]
    b, q, m, dh, p = 2, 64, 4, 8, 4
    value = r.standard_normal((b, sum(h * w for h, w in shapes), m, dh))
    loc = r.uniform(0.3, 0.5, size=(b, q, m, len(shapes), p, 2))  # crowded into a small window
    attn = r.random((b, q, m, len(shapes), p))
    assert attn.size * dh >= ms_deform_cpu.PARALLEL_MIN_WORK  # the threaded driver runs
    assert_matches_reference("numba", shapes, value, loc, attn, r.standard_normal((b, q, m * dh)))


@given(problems(max_side=5, max_levels=2, max_batch=1, max_queries=3, max_heads=2, max_points=2))
def test_cuda_kernel_equals_reference(problem):
    assert_matches_reference("cuda", *problem)


def test_cuda_kernel_scatters_shared_pixels_atomically():
    """Every sample reads the same four pixels, so all contributions to them must add up.

    On a GPU this catches a scatter without atomics; the simulator runs threads
    one bytecode at a time, so there it checks the sum alone.
    """
    r = np.random.default_rng(12)
    shapes = [(2, 2)]
    b, q, m, dh, p = 1, 6, 2, 2, 3
    value = r.standard_normal((b, 4, m, dh))
    loc = np.full((b, q, m, 1, p, 2), 0.5) + r.uniform(-0.2, 0.2, size=(b, q, m, 1, p, 2))
    attn = r.random((b, q, m, 1, p))
    assert_matches_reference("cuda", shapes, value, loc, attn, r.standard_normal((b, q, m * dh)))
