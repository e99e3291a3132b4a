"""Scaled dot-product and multi-head attention: PyTorch's values, gradients, properties."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minidetr.attention import (
    multi_head_attention_backward,
    multi_head_attention_forward,
    scaled_dot_product_attention_backward,
    scaled_dot_product_attention_forward,
)
from minidetr.backend import to_numpy
from minidetr.gradcheck import gradcheck
from minidetr.ops import linear_forward, softmax_forward

TOL = 1e-7
GOLDEN = np.load(Path(__file__).parent / "data" / "sdpa.npz")


def test_sdpa_matches_pytorch(xp):
    g = {k: xp.asarray(GOLDEN[k]) for k in GOLDEN.files}
    out, cache = scaled_dot_product_attention_forward(g["q"], g["k"], g["v"], g["mask"])
    np.testing.assert_allclose(to_numpy(out), GOLDEN["out"], rtol=1e-12, atol=1e-14)
    for name, grad in zip(
        ("dq", "dk", "dv"), scaled_dot_product_attention_backward(g["dout"], cache)
    ):
        np.testing.assert_allclose(
            to_numpy(grad), GOLDEN[name], rtol=1e-10, atol=1e-13, err_msg=name
        )


def test_sdpa_gradients_with_mask(xp, rng):
    q, k, v = (xp.asarray(rng.standard_normal(s)) for s in [(2, 5, 4), (2, 7, 4), (2, 7, 3)])
    mask = xp.asarray(rng.random((1, 5, 7)) > 0.4)
    forward = lambda q, k, v: scaled_dot_product_attention_forward(q, k, v, mask)  # noqa: E731
    assert gradcheck(forward, scaled_dot_product_attention_backward, [q, k, v]).max_error < TOL


def _qkv(seed, lq, lk, d=4, dv=3):
    r = np.random.default_rng(seed)
    return r.standard_normal((lq, d)), r.standard_normal((lk, d)), r.standard_normal((lk, dv))


@given(st.integers(0, 2**32 - 1), st.integers(1, 6), st.integers(1, 8))
def test_attention_is_equivariant_to_permutations(seed, lq, lk):
    q, k, v = _qkv(seed, lq, lk)
    r = np.random.default_rng(seed + 1)
    pk, pq = r.permutation(lk), r.permutation(lq)
    out, _ = scaled_dot_product_attention_forward(q, k, v)
    # permuting keys and values together changes nothing
    np.testing.assert_allclose(
        scaled_dot_product_attention_forward(q, k[pk], v[pk])[0], out, atol=1e-12
    )
    # permuting queries permutes the output rows
    np.testing.assert_allclose(
        scaled_dot_product_attention_forward(q[pq], k, v)[0], out[pq], atol=1e-12
    )


@given(st.integers(0, 2**32 - 1), st.integers(1, 6), st.integers(2, 8))
def test_masked_keys_get_zero_weight_and_zero_gradient(seed, lq, lk):
    q, k, v = _qkv(seed, lq, lk)
    mask = np.random.default_rng(seed).random((lq, lk)) > 0.5
    mask[:, 0] = True  # every row can see something
    out, cache = scaled_dot_product_attention_forward(q, k, v, mask)
    assert np.all(cache.p[~mask] == 0.0)
    # changing a key or value that nobody may see changes nothing
    hidden = ~mask.any(axis=0)
    k2, v2 = k.copy(), v.copy()
    k2[hidden] += 100.0
    v2[hidden] -= 100.0
    np.testing.assert_allclose(
        scaled_dot_product_attention_forward(q, k2, v2, mask)[0], out, atol=1e-12
    )
    _, dk, dv = scaled_dot_product_attention_backward(np.ones_like(out), cache)
    assert np.all(dk[hidden] == 0.0) and np.all(dv[hidden] == 0.0)
    # the visible keys reproduce attention over the visible subset alone
    row = 0
    visible = mask[row]
    sub, _ = scaled_dot_product_attention_forward(q[row : row + 1], k[visible], v[visible])
    np.testing.assert_allclose(sub[0], out[row], atol=1e-12)


def test_fully_masked_row_gives_zeros_not_nan(xp, rng):
    q, k, v = (xp.asarray(a) for a in _qkv(3, 3, 4))
    mask = xp.asarray(np.array([[True, False, True, False], [False] * 4, [True] * 4]))
    out, cache = scaled_dot_product_attention_forward(q, k, v, mask)
    out = to_numpy(out)
    assert np.all(np.isfinite(out)) and np.all(out[1] == 0.0)
    dq, dk, dv = scaled_dot_product_attention_backward(xp.ones_like(q[:, :3]), cache)
    assert np.all(to_numpy(dq)[1] == 0.0) and np.all(np.isfinite(to_numpy(dk)))


def test_sdpa_bad_input(rng):
    q, k, v = _qkv(0, 3, 4)
    with pytest.raises(ValueError, match="k must have size 4"):
        scaled_dot_product_attention_forward(q, k[:, :3], v)
    with pytest.raises(ValueError, match="v must have size 4"):
        scaled_dot_product_attention_forward(q, k, v[:3])
    with pytest.raises(TypeError, match="mask must be boolean"):
        scaled_dot_product_attention_forward(q, k, v, np.ones((3, 4)))
    with pytest.raises(ValueError, match="does not broadcast"):
        scaled_dot_product_attention_forward(q, k, v, np.ones((2, 4), dtype=bool))


def _mha_params(rng, d):
    return [
        rng.standard_normal((3 * d, d)) / np.sqrt(d),
        rng.standard_normal(3 * d) * 0.1,
        rng.standard_normal((d, d)) / np.sqrt(d),
        rng.standard_normal(d) * 0.1,
    ]


def _mha_loop(query, key, value, w_in, b_in, w_out, b_out, m, qpos, kpos, pad):
    """Multi-head attention the slow way: one head at a time, one image at a time."""
    b, lq, d = query.shape
    dh = d // m
    out = np.zeros((b, lq, d))
    for n in range(b):
        q = (query[n] + qpos[n]) @ w_in[:d].T + b_in[:d]
        k = (key[n] + kpos[n]) @ w_in[d : 2 * d].T + b_in[d : 2 * d]
        v = value[n] @ w_in[2 * d :].T + b_in[2 * d :]
        heads = []
        for h in range(m):
            sl = slice(h * dh, (h + 1) * dh)
            scores = q[:, sl] @ k[:, sl].T / np.sqrt(dh)
            scores[:, pad[n]] = -np.inf
            p, _ = softmax_forward(scores)
            heads.append(p @ v[:, sl])
        out[n], _ = linear_forward(np.concatenate(heads, axis=1), w_out, b_out)
    return out


def test_multi_head_attention_matches_a_loop_over_heads(rng):
    b, lq, lk, d, m = 2, 4, 6, 8, 2
    query, key, value = (rng.standard_normal((b, n, d)) for n in (lq, lk, lk))
    qpos, kpos = rng.standard_normal((b, lq, d)), rng.standard_normal((b, lk, d))
    pad = np.zeros((b, lk), dtype=bool)
    pad[0, -2:] = True
    params = _mha_params(rng, d)
    out, _ = multi_head_attention_forward(
        query, key, value, *params, num_heads=m, query_pos=qpos, key_pos=kpos, key_padding_mask=pad
    )
    expected = _mha_loop(query, key, value, *params, m, qpos, kpos, pad)
    np.testing.assert_allclose(out, expected, rtol=1e-11, atol=1e-12)


def test_multi_head_attention_gradients(xp, rng):
    b, lq, lk, d, m = 2, 3, 5, 8, 2
    query, key, value = (xp.asarray(rng.standard_normal((b, n, d))) for n in (lq, lk, lk))
    qpos = xp.asarray(rng.standard_normal((b, lq, d)))
    pad = xp.asarray(np.array([[False] * 3 + [True] * 2, [False] * 5]))
    attn_mask = xp.asarray(rng.random((lq, lk)) > 0.3)
    params = [xp.asarray(p) for p in _mha_params(rng, d)]

    def forward(*args):
        return multi_head_attention_forward(
            *args, num_heads=m, query_pos=qpos, attn_mask=attn_mask, key_padding_mask=pad
        )

    names = ["query", "key", "value", "in_w", "in_b", "out_w", "out_b"]
    result = gradcheck(
        forward, multi_head_attention_backward, [query, key, value, *params], names=names
    )
    assert result.max_error < TOL, result.report()


def test_multi_head_attention_bad_input(rng):
    x = rng.standard_normal((2, 3, 8))
    params = _mha_params(rng, 8)
    with pytest.raises(ValueError, match="num_heads must divide"):
        multi_head_attention_forward(x, x, x, *params, num_heads=3)
    with pytest.raises(ValueError, match="query must have 3 dimensions"):
        multi_head_attention_forward(x[0], x, x, *params, num_heads=2)
    with pytest.raises(ValueError, match="key_padding_mask must have shape"):
        multi_head_attention_forward(
            x, x, x, *params, num_heads=2, key_padding_mask=np.zeros((2, 4), dtype=bool)
        )
