"""Linear (kernel) attention: gradients, a brute-force O(N^2) oracle, causal and mean properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minidetr.attention import linear_attention_backward, linear_attention_forward
from minidetr.attention.linear import feature_map_forward
from minidetr.backend import to_numpy
from minidetr.gradcheck import gradcheck

TOL = 1e-7


def _qkv(seed, lq, lk, d=4, dv=3, lead=(2,)):
    r = np.random.default_rng(seed)
    return (
        r.standard_normal((*lead, lq, d)),
        r.standard_normal((*lead, lk, d)),
        r.standard_normal((*lead, lk, dv)),
    )


def _brute_force(q, k, v, phi, causal):
    """out_i = sum_j kappa(q_i, k_j) v_j / sum_j kappa(q_i, k_j), the N x N kernel matrix."""
    a = np.einsum("...if,...jf->...ij", phi(q), phi(k))  # (..., Lq, Lk)
    if causal:
        a = np.tril(a)
    return (a @ v) / a.sum(-1, keepdims=True)


ELU = lambda x: np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0)))  # noqa: E731


@pytest.mark.parametrize("feature_map", ["elu", "relu"])
@pytest.mark.parametrize("causal", [False, True])
def test_linear_attention_gradients(xp, feature_map, causal):
    q, k, v = (xp.asarray(a) for a in _qkv(0, 5, 5))
    forward = lambda q, k, v: linear_attention_forward(  # noqa: E731
        q, k, v, feature_map=feature_map, causal=causal
    )
    assert gradcheck(forward, linear_attention_backward, [q, k, v]).max_error < TOL


def test_gradients_with_broadcast_leading_dimensions(rng):
    q = rng.standard_normal((1, 4, 3))
    k, v = rng.standard_normal((2, 6, 3)), rng.standard_normal((2, 6, 2))
    assert gradcheck(linear_attention_forward, linear_attention_backward, [q, k, v]).max_error < TOL


@given(st.integers(0, 2**32 - 1), st.integers(1, 7), st.booleans())
def test_linear_attention_equals_the_kernel_formula(seed, n, causal):
    q, k, v = _qkv(seed, n, n)
    out, _ = linear_attention_forward(q, k, v, causal=causal)
    np.testing.assert_allclose(out, _brute_force(q, k, v, ELU, causal), rtol=1e-10, atol=1e-12)


@given(st.integers(0, 2**32 - 1), st.integers(2, 7), st.integers(0, 6))
def test_causal_output_ignores_later_keys_and_values(seed, n, cut):
    cut = min(cut, n - 2)
    q, k, v = _qkv(seed, n, n)
    out, _ = linear_attention_forward(q, k, v, causal=True)
    k2, v2 = k.copy(), v.copy()
    k2[..., cut + 1 :, :] = np.random.default_rng(seed).standard_normal(k2[..., cut + 1 :, :].shape)
    v2[..., cut + 1 :, :] += 50.0
    out2, _ = linear_attention_forward(q, k2, v2, causal=True)
    np.testing.assert_allclose(out2[..., : cut + 1, :], out[..., : cut + 1, :], atol=1e-12)
    # and the gradient of the loss on the early outputs reaches no later key or value
    dout = np.zeros_like(out)
    dout[..., : cut + 1, :] = 1.0
    _, dk, dv = linear_attention_backward(dout, linear_attention_forward(q, k, v, causal=True)[1])
    assert np.all(dk[..., cut + 1 :, :] == 0.0) and np.all(dv[..., cut + 1 :, :] == 0.0)


@pytest.mark.parametrize("feature_map", ["elu", "relu"])
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 7))
def test_equal_queries_and_keys_give_the_running_mean(feature_map, seed, n):
    """With every q_i = k_j = x the kernel is one constant: the output averages the values."""
    r = np.random.default_rng(seed)
    x = np.abs(r.standard_normal(4)) + 0.1  # positive, so relu features are non-zero too
    q = k = np.broadcast_to(x, (n, 4)).copy()
    v = r.standard_normal((n, 3))
    out, _ = linear_attention_forward(q, k, v, feature_map=feature_map, causal=True)
    running = np.cumsum(v, axis=0) / np.arange(1, n + 1)[:, None]
    np.testing.assert_allclose(out, running, rtol=1e-12, atol=1e-12)
    out, _ = linear_attention_forward(q, k, v, feature_map=feature_map)
    np.testing.assert_allclose(out, np.broadcast_to(v.mean(0), out.shape), atol=1e-12)


def test_relu_query_that_meets_no_key_outputs_zero_not_nan():
    q = -np.ones((2, 3))  # relu(q) = 0
    k, v = np.ones((4, 3)), np.ones((4, 2))
    out, cache = linear_attention_forward(q, k, v, feature_map="relu")
    assert np.all(out == 0.0)
    assert all(np.all(np.isfinite(g)) for g in linear_attention_backward(np.ones_like(out), cache))


def test_feature_maps_are_positive_and_do_not_overflow():
    x = np.array([-1000.0, -1.0, 0.0, 1.0, 1000.0])
    np.testing.assert_allclose(feature_map_forward(x, "elu"), [0.0, np.exp(-1.0), 1.0, 2.0, 1001.0])
    np.testing.assert_array_equal(feature_map_forward(x, "relu"), [0.0, 0.0, 0.0, 1.0, 1000.0])


def test_linear_attention_runs_on_every_namespace(xp):
    q, k, v = _qkv(1, 5, 5)
    out, _ = linear_attention_forward(xp.asarray(q), xp.asarray(k), xp.asarray(v), causal=True)
    np.testing.assert_allclose(to_numpy(out), _brute_force(q, k, v, ELU, True), atol=1e-12)


def test_linear_attention_bad_input():
    q, k, v = _qkv(0, 3, 4)
    with pytest.raises(ValueError, match="feature_map must be one of"):
        linear_attention_forward(q, k, v, feature_map="softmax")
    with pytest.raises(ValueError, match="causal attention needs as many queries as keys"):
        linear_attention_forward(q, k, v, causal=True)
    with pytest.raises(ValueError, match="v must have size 4"):
        linear_attention_forward(q, k, v[..., :3, :])
    with pytest.raises(TypeError, match="q must have a real floating dtype"):
        linear_attention_forward(q.astype(np.int64), k, v)


@given(st.integers(0, 2**32 - 1), st.integers(1, 7))
def test_causal_linear_attention_is_a_recurrent_network(seed, n):
    """Token by token with state (S, z) += (phi(k) v^T, phi(k)): what recurrent decoding runs."""
    q, k, v = _qkv(seed, n, n, lead=())
    out, _ = linear_attention_forward(q, k, v, causal=True)
    s, z = np.zeros((4, 3)), np.zeros(4)
    for i in range(n):
        s += np.outer(ELU(k[i]), v[i])
        z += ELU(k[i])
        np.testing.assert_allclose(out[i], ELU(q[i]) @ s / (ELU(q[i]) @ z), rtol=1e-10)
