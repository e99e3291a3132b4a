"""The Numba AdamW and gradient-norm loops equal the array code they replace."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minidetr.kernels import optim_cpu
from minidetr.train import buffers, optim
from minidetr.train.optim import AdamWConfig, AdamWState, adamw_step, global_norm

SHAPES = [(3,), (4, 5), (2, 3, 3, 3), (1,), (0, 4)]


def _arrays(seed, dtype, spread=1.0):
    r = np.random.default_rng(seed)
    return {
        f"p{i}": (r.standard_normal(s) * spread * r.choice([1e-3, 1.0, 30.0])).astype(dtype)
        for i, s in enumerate(SHAPES)
    }


def _without(name, replacement, fn, *args):
    """``fn(*args)`` with ``optim.<name>`` replaced for the call."""
    saved = getattr(optim, name)
    setattr(optim, name, replacement)
    try:
        return fn(*args)
    finally:
        setattr(optim, name, saved)


def _plain(fn, *args):
    """``fn(*args)`` with the Numba loops switched off: the array code on the same arrays."""
    return _without("_fused", lambda *arrays: False, fn, *args)


@given(
    st.sampled_from([np.float32, np.float64]),
    st.integers(0, 2**32 - 1),
    st.integers(0, 40),
    st.sampled_from([0.0, 1e-4, 0.1]),
)
def test_adamw_kernel_equals_the_array_code_bit_for_bit(dtype, seed, step, wd):
    params, grads = _arrays(seed, dtype), _arrays(seed + 1, dtype, spread=3.0)
    m = _arrays(seed + 2, dtype, spread=0.1)
    v = {k: a * a for k, a in _arrays(seed + 3, dtype, spread=0.01).items()}
    state = AdamWState(step, m, v)
    rates = {k: 1e-3 * (i + 1) for i, k in enumerate(params)}
    rates["p1"] = 0.0  # a frozen parameter
    cfg = AdamWConfig(weight_decay=wd)
    copies = [{k: a.copy() for k, a in d.items()} for d in (params, grads, m, v)]
    got_p, got_s = adamw_step(params, grads, state, cfg, rates)
    want_p, want_s = _plain(adamw_step, params, grads, state, cfg, rates)
    assert got_s.step == want_s.step == step + 1
    for got, want in ((got_p, want_p), (got_s.m, want_s.m), (got_s.v, want_s.v)):
        for k in want:
            assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    for before, now in zip(copies, (params, grads, m, v)):  # the inputs are left untouched
        for k in before:
            np.testing.assert_array_equal(before[k], now[k])


def test_adamw_kernel_runs_on_numpy_only_and_one_dtype(xp, monkeypatch):
    calls = []
    kernel = optim.adamw_update_segments
    monkeypatch.setattr(optim, "adamw_update_segments", lambda *a: calls.append(1) or kernel(*a))
    params = {"w": xp.asarray(np.arange(6.0).reshape(2, 3))}
    state = optim.adamw_init(params)
    adamw_step(params, params, state, AdamWConfig(), lr=0.1)
    assert len(calls) == (1 if xp is np else 0)
    if xp is np:  # a float32 gradient of a float64 parameter takes the array code
        mixed = {"w": params["w"].astype(np.float32)}
        new, _ = adamw_step(params, mixed, state, AdamWConfig(), lr=0.1)
        assert len(calls) == 1 and new["w"].dtype == np.float64


def _per_parameter(fn, *args):
    """``fn(*args)`` with the one-buffer path switched off: the array code, parameter by
    parameter."""
    return _without("_flat_inputs", lambda *a: None, fn, *args)


@given(st.sampled_from([np.float32, np.float64]), st.integers(0, 2**32 - 1))
def test_one_buffer_steps_equal_per_parameter_steps_bit_for_bit(dtype, seed):
    """Three steps: the first copies into buffers, the next read the returned views in place;
    both equal the array code, parameter by parameter, exactly."""
    params = _arrays(seed, dtype)
    rates = {k: 1e-3 * (i + 1) for i, k in enumerate(params)}
    ours, theirs = (params, optim.adamw_init(params)), (params, optim.adamw_init(params))
    for step in range(3):
        grads = _arrays(seed + 10 + step, dtype, spread=3.0)
        ours = adamw_step(ours[0], grads, ours[1], AdamWConfig(), rates, 0.5)
        theirs = _per_parameter(adamw_step, theirs[0], grads, theirs[1], AdamWConfig(), rates, 0.5)
        assert ours[1].flat is not None and theirs[1].flat is None
        for got, want in ((ours[0], theirs[0]), (ours[1].m, theirs[1].m), (ours[1].v, theirs[1].v)):
            for k in want:
                assert got[k].shape == want[k].shape and got[k].dtype == want[k].dtype, k
                np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert all(ours[0][k].base is ours[1].flat.p for k in params)  # views of one buffer


def test_one_buffer_step_copies_again_when_a_parameter_was_replaced(rng):
    """A parameter swapped for another array (a restored checkpoint, a user's edit) is not
    a view of the buffer: the step copies the inputs again instead of reading stale memory."""
    params = {"a": rng.standard_normal((3, 2)), "b": rng.standard_normal(4)}
    grads = {k: np.ones_like(p) for k, p in params.items()}
    params, state = adamw_step(params, grads, optim.adamw_init(params), AdamWConfig(), 0.1)
    swapped = {**params, "b": np.full(4, 7.0)}
    got, _ = adamw_step(swapped, grads, state, AdamWConfig(), 0.1)
    want, _ = _plain(adamw_step, swapped, grads, state, AdamWConfig(), 0.1)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


def test_adamw_kernel_takes_non_contiguous_arrays():
    p = np.arange(12.0, dtype=np.float32).reshape(3, 4).T  # (4, 3), Fortran order
    state = optim.adamw_init({"w": p})
    got, _ = adamw_step({"w": p}, {"w": p * 0.5}, state, AdamWConfig(), lr=0.1)
    want, _ = _plain(adamw_step, {"w": p}, {"w": p * 0.5}, state, AdamWConfig(), 0.1)
    np.testing.assert_array_equal(got["w"], want["w"])


@given(st.sampled_from([np.float32, np.float64]), st.integers(0, 2**32 - 1))
def test_norm_kernel_equals_the_array_code(dtype, seed):
    grads = _arrays(seed, dtype, spread=10.0)
    want = _plain(global_norm, grads)
    exact = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads.values()))
    tol = 1e-6 if dtype == np.float32 else 1e-13
    assert global_norm(grads) == pytest.approx(want, rel=tol)
    assert global_norm(grads) == pytest.approx(exact, rel=1e-13)  # float64 sums: closer


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_norm_kernel_per_array_parts(dtype):
    parts = optim_cpu.scaled_sum_of_squares
    assert parts(np.array([3.0, -4.0, 0.0], dtype=dtype)) == (1.0, 25.0)
    assert parts(np.zeros(3, dtype)) == (0.0, 0.0)
    big = np.full(5, np.finfo(dtype).max / 2, dtype=dtype)  # squares overflow the dtype
    a, s = parts(big)
    assert a * math.sqrt(s) == pytest.approx(math.sqrt(5.0) * float(big[0]))
    if dtype == np.float64:  # squares overflow float64 too: the scaled passes
        assert a == float(big[0]) and s == pytest.approx(5.0)
        tiny = np.full(5, 1e-160)  # squares underflow float64: the scaled passes
        a, s = parts(tiny)
        assert a == 1e-160 and s == pytest.approx(5.0)


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_norm_kernel_is_non_finite_exactly_when_an_entry_is(bad, dtype):
    grads = _arrays(3, dtype)
    assert math.isfinite(global_norm(grads))
    grads["p2"].flat[5] = bad
    got, want = global_norm(grads), _plain(global_norm, grads)
    assert not math.isfinite(got)
    assert math.isnan(got) == math.isnan(want) and math.isinf(got) == math.isinf(want)


@given(st.sampled_from([np.float32, np.float64]), st.integers(0, 2**32 - 1))
def test_grad_scale_in_adamw_equals_clipping_first_bit_for_bit(dtype, seed):
    """AdamW with clipping's factor as ``grad_scale`` = AdamW of the clipped copies, in the
    Numba loop and in the array code alike."""
    params, grads = _arrays(seed, dtype), _arrays(seed + 1, dtype, spread=3.0)
    state = optim.adamw_init(params)
    max_norm = global_norm(grads) / 3  # always clipped, whatever the draw's scale
    clipped, norm = optim.clip_grad_norm(grads, max_norm)
    scale = optim.clip_scale(norm, max_norm)
    assert scale < 1.0
    for run in (lambda f, *a: f(*a), _plain):
        want_p, want_s = run(adamw_step, params, clipped, state, AdamWConfig(), 1e-3)
        got_p, got_s = run(adamw_step, params, grads, state, AdamWConfig(), 1e-3, scale)
        for got, want in ((got_p, want_p), (got_s.m, want_s.m), (got_s.v, want_s.v)):
            for k in want:
                np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_clip_scale_leaves_small_and_non_finite_norms_alone():
    assert optim.clip_scale(0.05, 0.1) == 1.0
    assert optim.clip_scale(math.inf, 0.1) == 1.0 and optim.clip_scale(math.nan, 0.1) == 1.0
    assert optim.clip_scale(5.0, 0.0) == 1.0  # max_norm 0: no clipping
    assert optim.clip_scale(5.0, 0.1) == pytest.approx(0.1 / 5.0)


def test_pooled_buffers_never_overwrite_arrays_still_held(rng):
    """Steps reuse the buffers nobody holds; parameters and moments kept from an earlier
    step (a pending checkpoint, an undone trial step) stay as they were."""
    params = {"a": rng.standard_normal((5, 3)).astype(np.float32), "b": np.ones(7, np.float32)}
    state = optim.adamw_init(params)
    held = []
    for step in range(8):
        grads = {k: rng.standard_normal(p.shape).astype(np.float32) for k, p in params.items()}
        params, state = adamw_step(params, grads, state, AdamWConfig(), 0.1)
        if step in (1, 4):
            held.append((params, state, {k: p.copy() for k, p in params.items()}))
    for kept_params, kept_state, copies in held:
        for k in copies:
            np.testing.assert_array_equal(kept_params[k], copies[k])
        assert kept_state.m["a"].base is kept_state.flat.m  # still views of their buffer
    pool = state.flat.pool
    assert len(pool) <= buffers.POOL_SIZE and len({id(b) for b in pool}) == len(pool)
    assert len(pool) < 8 * 4  # buffers are reused, not one set per step


@given(st.sampled_from([np.float32, np.float64]), st.integers(0, 2**32 - 1), st.booleans())
def test_clipped_step_is_norm_then_clip_then_adamw(dtype, seed, one_buffer):
    """The training loop's one call: the norm of the gradients (over the flat buffer, or per
    parameter), then AdamW with clipping's factor, as the three separate functions give."""
    params, grads = _arrays(seed, dtype), _arrays(seed + 1, dtype, spread=3.0)
    state = optim.adamw_init(params)
    run = (lambda f, *a: f(*a)) if one_buffer else _per_parameter
    got_p, got_s, norm = run(
        optim.clipped_adamw_step, params, grads, state, AdamWConfig(), 1e-3, 0.1
    )
    assert norm == pytest.approx(global_norm(grads), rel=1e-12)
    assert (got_s.flat is not None) == one_buffer
    want_p, want_s = run(
        adamw_step, params, grads, state, AdamWConfig(), 1e-3, optim.clip_scale(norm, 0.1)
    )
    for got, want in ((got_p, want_p), (got_s.m, want_s.m), (got_s.v, want_s.v)):
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    with pytest.raises(ValueError, match="grads has no entry"):
        optim.clipped_adamw_step(params, {}, state, AdamWConfig(), 1e-3, 0.1)


def test_params_norm_reads_the_flat_buffer_and_equals_the_global_norm(rng):
    params = {"a": rng.standard_normal((4, 3)), "b": rng.standard_normal(5)}
    grads = {k: np.ones_like(p) for k, p in params.items()}
    state = optim.adamw_init(params)
    assert optim.params_norm(params, state) == global_norm(params)  # no buffer yet
    params, state = adamw_step(params, grads, state, AdamWConfig(), 0.1)
    assert params["a"].base is state.flat.p
    assert optim.params_norm(params, state) == pytest.approx(global_norm(params), rel=1e-14)
    swapped = {**params, "b": np.full(5, 9.0)}  # not a view of the buffer: the per-array norm
    assert optim.params_norm(swapped, state) == global_norm(swapped)
