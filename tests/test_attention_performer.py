"""Performer random features: gradients, the kernel-formula oracle, unbiasedness, orthogonality."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minidetr.attention import (
    draw_projection,
    performer_attention_backward,
    performer_attention_forward,
    scaled_dot_product_attention_forward,
)
from minidetr.attention.performer import random_features_forward
from minidetr.backend import to_numpy
from minidetr.gradcheck import gradcheck

TOL = 1e-7


def _qkv(seed, lq, lk, d=4, dv=3, norm=1.0):
    r = np.random.default_rng(seed)
    return (
        norm * r.standard_normal((2, lq, d)),
        norm * r.standard_normal((2, lk, d)),
        r.standard_normal((2, lk, dv)),
    )


def _features(x, w, kind):
    """The paper's features: positive exp(Wx - |x|^2/2), trig exp(|x|^2/2) [cos, sin]."""
    m = w.shape[0]
    u = x @ w.T
    sq = (x**2).sum(-1, keepdims=True) / 2
    if kind == "positive":
        return np.exp(u - sq) / np.sqrt(m)
    return np.exp(sq) * np.concatenate([np.cos(u), np.sin(u)], -1) / np.sqrt(m)


def _brute_force(q, k, v, w, kind, causal):
    d = q.shape[-1]
    a = _features(q / d**0.25, w, kind) @ np.swapaxes(_features(k / d**0.25, w, kind), -1, -2)
    if causal:
        a = np.tril(a)
    return (a @ v) / a.sum(-1, keepdims=True)


@pytest.mark.parametrize("kind", ["positive", "trig"])
@pytest.mark.parametrize("causal", [False, True])
def test_performer_gradients(xp, kind, causal):
    q, k, v = (xp.asarray(a) for a in _qkv(0, 5, 5))
    w = draw_projection(4, 6, like=q)
    forward = lambda q, k, v: performer_attention_forward(  # noqa: E731
        q, k, v, w, kind=kind, causal=causal
    )
    assert gradcheck(forward, performer_attention_backward, [q, k, v]).max_error < TOL


@pytest.mark.parametrize("kind", ["positive", "trig"])
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 6), causal=st.booleans())
def test_performer_equals_the_kernel_formula(kind, seed, n, causal):
    q, k, v = _qkv(seed, n, n)
    w = draw_projection(4, 8, orthogonal=seed % 2 == 0, seed=seed)
    out, _ = performer_attention_forward(q, k, v, w, kind=kind, causal=causal)
    np.testing.assert_allclose(out, _brute_force(q, k, v, w, kind, causal), rtol=1e-8, atol=1e-9)


def test_stabilisation_survives_norms_that_overflow_the_plain_formula():
    q, k, v = _qkv(1, 6, 6, norm=60.0)  # exp(|x|^2 / 2) overflows float64 here
    w = draw_projection(4, 16)
    with np.errstate(over="ignore", invalid="ignore"):
        assert not np.all(np.isfinite(_brute_force(q, k, v, w, "positive", False)))
    for kind in ("positive", "trig"):
        out, cache = performer_attention_forward(q, k, v, w, kind=kind)
        grads = performer_attention_backward(np.ones_like(out), cache)
        assert np.all(np.isfinite(out)) and all(np.all(np.isfinite(g)) for g in grads)


@pytest.mark.parametrize("kind", ["positive", "trig"])
def test_features_are_unbiased_estimates_of_the_softmax_kernel(kind):
    """Mean over projections of phi(x) . phi(y) -> exp(x . y), within 4 standard errors."""
    r = np.random.default_rng(7)
    x, y = 0.5 * r.standard_normal((1, 4)), 0.5 * r.standard_normal((1, 4))
    samples = []
    for seed in range(400):
        w = draw_projection(4, 4, orthogonal=False, seed=seed)
        fx, _ = random_features_forward(x, w, kind=kind, is_query=True, stabilize=False)
        fy, _ = random_features_forward(y, w, kind=kind, is_query=False, stabilize=False)
        samples.append(float((fx * fy).sum()))
    samples = np.array(samples)
    truth = np.exp((x @ y.T).item())
    stderr = samples.std(ddof=1) / np.sqrt(samples.size)
    assert abs(samples.mean() - truth) < 4 * stderr
    assert abs(samples.mean() - truth) < 0.05 * truth


def test_positive_features_are_positive_and_stabilised_rows_peak_at_one():
    x = np.random.default_rng(0).standard_normal((5, 4)) * 3
    w = draw_projection(4, 12)
    phi, _ = random_features_forward(x, w, kind="positive", is_query=True)
    assert np.all(phi > 0)
    np.testing.assert_allclose(phi.max(-1), 1 / np.sqrt(12))


@given(st.integers(1, 9), st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_orthogonal_projection_blocks(d, m, seed):
    w = draw_projection(d, m, seed=seed)
    assert w.shape == (m, d)
    for start in range(0, m, d):
        block = w[start : start + d]
        directions = block / np.linalg.norm(block, axis=1, keepdims=True)
        np.testing.assert_allclose(directions @ directions.T, np.eye(len(block)), atol=1e-10)
    np.testing.assert_array_equal(draw_projection(d, m, seed=seed), w)  # seeded


def test_row_norms_have_the_length_of_gaussian_vectors():
    for orthogonal in (True, False):
        w = draw_projection(8, 4000, orthogonal=orthogonal, seed=3)
        assert abs(np.mean(np.sum(w**2, axis=1)) - 8) < 0.3  # E|g|^2 = d
    iid = draw_projection(8, 16, orthogonal=False)
    off = iid[:8] @ iid[:8].T - np.diag(np.diag(iid[:8] @ iid[:8].T))
    assert np.max(np.abs(off)) > 0.1  # iid rows are not orthogonal


def test_error_against_exact_attention_falls_as_features_grow():
    q, k, v = _qkv(2, 16, 16, d=8, norm=0.7)
    exact, _ = scaled_dot_product_attention_forward(q, k, v)
    errors = []
    for m in (8, 4096):
        trials = [
            performer_attention_forward(q, k, v, draw_projection(8, m, seed=s))[0] for s in range(5)
        ]
        errors.append(np.mean([np.linalg.norm(t - exact) / np.linalg.norm(exact) for t in trials]))
    assert errors[1] < errors[0] / 4  # Monte Carlo: error ~ 1 / sqrt(m) would give 22x


def test_performer_runs_on_every_namespace(xp):
    q, k, v = _qkv(3, 4, 5)
    w = draw_projection(4, 8)
    out, _ = performer_attention_forward(*(xp.asarray(a) for a in (q, k, v)), xp.asarray(w))
    np.testing.assert_allclose(to_numpy(out), _brute_force(q, k, v, w, "positive", False))


def test_performer_bad_input():
    q, k, v = _qkv(0, 3, 4)
    w = draw_projection(4, 8)
    with pytest.raises(ValueError, match="kind must be one of"):
        performer_attention_forward(q, k, v, w, kind="cosine")
    with pytest.raises(ValueError, match="projection must have size 4"):
        performer_attention_forward(q, k, v, draw_projection(3, 8))
    with pytest.raises(ValueError, match="m must be a positive integer"):
        draw_projection(4, 0)
