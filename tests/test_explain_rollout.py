"""Attention rollout, head fusion and entropy against their definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import entropy as scipy_entropy

from minidetr.explain.rollout import attention_entropy, attention_rollout, fuse_heads


def softmax_maps(rng, b, m, n, sharp=1.0):
    s = rng.standard_normal((b, m, n, n)) * sharp
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def explicit_rollout(maps, fusion="mean", residual=True):
    """The definition written out with loops over the batch, one matrix at a time."""
    b, _, n, _ = maps[0].shape
    out = np.zeros((b, n, n))
    for i in range(b):
        r = np.eye(n)
        for a in maps:  # first layer first
            f = {"mean": a[i].mean(0), "max": a[i].max(0), "min": a[i].min(0)}[fusion]
            if residual:
                f = 0.5 * f + 0.5 * np.eye(n)
            f = f / f.sum(axis=1, keepdims=True)  # rows
            r = f @ r  # the new layer acts after everything before it
        out[i] = r
    return out


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("residual", [True, False])
def test_rollout_equals_the_explicit_product(rng, fusion, residual):
    maps = [softmax_maps(rng, 2, 3, 5, sharp=2.0) for _ in range(3)]
    got = attention_rollout(maps, head_fusion=fusion, residual=residual)
    np.testing.assert_allclose(got, explicit_rollout(maps, fusion, residual), rtol=1e-12)


def test_rollout_puts_the_first_layer_rightmost(rng):
    """A_2 A_1 and A_1 A_2 differ for these maps; reversing the list must change the answer."""
    a1, a2 = softmax_maps(rng, 1, 1, 4, 3.0), softmax_maps(rng, 1, 1, 4, 3.0)
    forward = attention_rollout([a1, a2], residual=False)
    np.testing.assert_allclose(forward[0], a2[0, 0] @ a1[0, 0], rtol=1e-12)
    assert not np.allclose(forward, attention_rollout([a2, a1], residual=False))


def test_rollout_normalises_rows_not_columns(rng):
    a = softmax_maps(rng, 1, 2, 6, 2.0)
    r = attention_rollout([a, a])
    np.testing.assert_allclose(r.sum(-1), 1.0, rtol=1e-12)
    assert not np.allclose(r.sum(-2), 1.0)


def test_identity_attention_gives_identity():
    eye = np.broadcast_to(np.eye(7), (2, 4, 7, 7)).copy()
    for residual in (True, False):
        np.testing.assert_allclose(attention_rollout([eye] * 3, residual=residual)[1], np.eye(7))


@given(
    layers=st.integers(1, 4),
    n=st.integers(1, 6),
    discard=st.sampled_from([0.0, 0.3, 0.9]),
    seed=st.integers(0, 10_000),
)
def test_rollout_rows_sum_to_one(layers, n, discard, seed):
    rng = np.random.default_rng(seed)
    maps = [softmax_maps(rng, 2, 2, n, 3.0) for _ in range(layers)]
    r = attention_rollout(maps, discard_ratio=discard)
    assert r.shape == (2, n, n)
    assert np.all(r >= 0)
    np.testing.assert_allclose(r.sum(-1), 1.0, rtol=1e-10)


def test_discard_ratio_zeroes_the_smallest_entries_of_each_row():
    a = np.array([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1], [0.25] * 4, [0.7, 0.1, 0.1, 0.1]])
    r = attention_rollout([a[None, None]], discard_ratio=0.5, residual=False)[0]
    np.testing.assert_allclose(r[0], [0, 0, 3 / 7, 4 / 7])
    np.testing.assert_allclose(r[1], [4 / 7, 3 / 7, 0, 0])
    assert np.count_nonzero(r[2]) == 2 and np.count_nonzero(r[3]) == 2


def test_fuse_heads_and_bad_input(rng):
    a = softmax_maps(rng, 2, 3, 4)
    np.testing.assert_allclose(fuse_heads(a, "max"), a.max(1))
    with pytest.raises(ValueError, match="head_fusion"):
        fuse_heads(a, "median")
    with pytest.raises(ValueError, match="attentions\\[1\\]"):
        attention_rollout([a, a[:, :, :3, :3]])
    with pytest.raises(TypeError, match="attentions"):
        attention_rollout([])
    with pytest.raises(ValueError, match="discard_ratio"):
        attention_rollout([a], discard_ratio=1.0)


@given(n=st.integers(1, 9), seed=st.integers(0, 10_000), sharp=st.floats(0.0, 30.0))
def test_entropy_is_between_zero_and_log_n(n, seed, sharp):
    rng = np.random.default_rng(seed)
    p = softmax_maps(rng, 1, 2, n, sharp)
    h = attention_entropy(p)
    assert h.shape == (1, 2, n)
    assert np.all(h >= -1e-12) and np.all(h <= math.log(n) + 1e-12)


def test_entropy_reaches_both_ends_and_matches_scipy(rng):
    one_hot = np.eye(5)[None, None]  # every row reads one key
    np.testing.assert_allclose(attention_entropy(one_hot), 0.0, atol=0)
    uniform = np.full((1, 1, 3, 5), 0.2)
    np.testing.assert_allclose(attention_entropy(uniform), math.log(5), rtol=1e-12)
    p = softmax_maps(rng, 2, 3, 6, 2.0)
    np.testing.assert_allclose(attention_entropy(p), scipy_entropy(p, axis=-1), rtol=1e-12)
    columns = np.swapaxes(p, -1, -2)  # the same distributions along axis -2
    np.testing.assert_allclose(attention_entropy(columns, axis=-2), attention_entropy(p))


def test_entropy_rejects_non_distributions():
    with pytest.raises(ValueError, match="non-negative"):
        attention_entropy(np.array([1.5, -0.5]))
    with pytest.raises(ValueError, match="sum to 1"):
        attention_entropy(np.array([0.5, 0.2]))
    with pytest.raises(TypeError, match="weights"):
        attention_entropy(np.array([1, 0]))


def test_entropy_penalty_value_and_gradient(rng):
    from minidetr.explain.regularize import entropy_penalty_backward, entropy_penalty_forward
    from minidetr.gradcheck import numerical_gradient

    p = softmax_maps(rng, 2, 2, 5, 2.0)
    value, cache = entropy_penalty_forward(p, 0.3)
    np.testing.assert_allclose(value, 0.3 * attention_entropy(p).mean(), rtol=1e-12)
    (dp,) = entropy_penalty_backward(np.asarray(1.0), cache)
    numeric = numerical_gradient(lambda x: entropy_penalty_forward(x, 0.3)[0], p)
    np.testing.assert_allclose(dp, numeric, rtol=1e-6, atol=1e-9)
