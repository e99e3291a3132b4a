"""Space-time attention: each mode is reshaped scaled dot-product attention; gradients; costs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minidetr.attention import scaled_dot_product_attention_forward
from minidetr.backend import to_numpy
from minidetr.gradcheck import gradcheck
from minidetr.video.divided import (
    init_space_time_params,
    space_time_layer_backward,
    space_time_layer_forward,
)
from minidetr.video.space_time import (
    MODES,
    attention_flops,
    space_time_attention_backward,
    space_time_attention_forward,
)

TOL = 1e-7


def _qkv(seed, b=2, t=3, n=4, d=5, dv=3):
    r = np.random.default_rng(seed)
    return (
        r.standard_normal((b, t, n, d)),
        r.standard_normal((b, t, n, d)),
        r.standard_normal((b, t, n, dv)),
    )


def _oracle(q, k, v, mode):
    """Loop over the sets of tokens that attend to each other, one plain attention each."""
    b, t, n, _ = q.shape
    out = np.zeros((b, t, n, v.shape[-1]))
    for i in range(b):
        if mode == "joint":
            o = scaled_dot_product_attention_forward(
                q[i].reshape(t * n, -1), k[i].reshape(t * n, -1), v[i].reshape(t * n, -1)
            )[0]
            out[i] = o.reshape(t, n, -1)
        elif mode == "time":
            for j in range(n):
                out[i, :, j] = scaled_dot_product_attention_forward(
                    q[i, :, j], k[i, :, j], v[i, :, j]
                )[0]
        else:
            for f in range(t):
                out[i, f] = scaled_dot_product_attention_forward(q[i, f], k[i, f], v[i, f])[0]
    return out


@given(st.integers(0, 2**32 - 1), st.sampled_from(MODES), st.integers(1, 4), st.integers(1, 5))
def test_each_mode_is_reshaped_attention(seed, mode, t, n):
    q, k, v = _qkv(seed, t=t, n=n)
    out, _ = space_time_attention_forward(q, k, v, mode=mode)
    np.testing.assert_allclose(out, _oracle(q, k, v, mode), rtol=1e-12, atol=1e-12)


@given(st.integers(0, 2**32 - 1), st.integers(2, 4), st.integers(2, 5))
def test_one_frame_or_one_position_reduces_the_modes(seed, t, n):
    """With one frame, joint = space; with one position, joint = time."""
    q, k, v = _qkv(seed, t=1, n=n)
    joint = space_time_attention_forward(q, k, v, mode="joint")[0]
    np.testing.assert_allclose(space_time_attention_forward(q, k, v, mode="space")[0], joint)
    q, k, v = _qkv(seed, t=t, n=1)
    joint = space_time_attention_forward(q, k, v, mode="joint")[0]
    np.testing.assert_allclose(space_time_attention_forward(q, k, v, mode="time")[0], joint)


@given(st.integers(0, 2**32 - 1))
def test_time_attention_ignores_other_positions(seed):
    """Changing the keys and values at position 0 leaves time attention at position 1 alone."""
    q, k, v = _qkv(seed)
    out = space_time_attention_forward(q, k, v, mode="time")[0]
    k2, v2 = k.copy(), v.copy()
    k2[:, :, 0] += 3.0
    v2[:, :, 0] -= 3.0
    out2 = space_time_attention_forward(q, k2, v2, mode="time")[0]
    np.testing.assert_array_equal(out2[:, :, 1:], out[:, :, 1:])
    assert not np.allclose(out2[:, :, 0], out[:, :, 0])


@pytest.mark.parametrize("mode", MODES)
def test_space_time_attention_gradients(xp, mode):
    q, k, v = (xp.asarray(a) for a in _qkv(7))

    def forward(q, k, v):
        return space_time_attention_forward(q, k, v, mode=mode)

    result = gradcheck(forward, space_time_attention_backward, [q, k, v], names=["q", "k", "v"])
    assert result.max_error < TOL, result.report()


@pytest.mark.parametrize("modes", [("time", "space"), ("joint",)])
def test_space_time_layer_gradients(modes):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 4, 8))
    params = init_space_time_params(8, like=x, modes=modes, seed=2)
    names = sorted(params)
    for name in names:  # non-trivial values so that a wrong backward cannot hide
        params[name] = params[name] + 0.1 * rng.standard_normal(params[name].shape)

    def forward(x, *values):
        return space_time_layer_forward(x, dict(zip(names, values)), num_heads=2, modes=modes)

    def backward(dy, cache):
        dx, grads = space_time_layer_backward(dy, cache)
        return (dx, *(grads[n] for n in names))

    result = gradcheck(forward, backward, [x, *(params[n] for n in names)], names=["x", *names])
    assert result.max_error < TOL, result.report()


def test_divided_layer_mixes_time_and_space():
    """One divided layer lets token (t=0, n=0) feel a change at (t=2, n=3): time then space."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 4, 8))
    params = init_space_time_params(8, like=x, seed=0)
    y = space_time_layer_forward(x, params, num_heads=2)[0]
    x2 = x.copy()
    x2[0, 2, 3] += rng.standard_normal(8)  # not a constant shift, which layer norm removes
    y2 = space_time_layer_forward(x2, params, num_heads=2)[0]
    assert np.abs(to_numpy(y2 - y))[0, 0, 0].max() > 1e-6
    # time alone cannot carry it across positions
    t_only = space_time_layer_forward(x, params, num_heads=2, modes=("time",))[0]
    t_only2 = space_time_layer_forward(x2, params, num_heads=2, modes=("time",))[0]
    np.testing.assert_array_equal(t_only2[0, 0, 0], t_only[0, 0, 0])


def test_the_count_says_divided_is_about_7_8x_cheaper_at_t8_n256():
    joint = attention_flops(8, 256, 64, "joint")
    divided = attention_flops(8, 256, 64, "time") + attention_flops(8, 256, 64, "space")
    assert joint / divided == pytest.approx(8 * 256 / (8 + 256))
    assert 7.7 < joint / divided < 7.8


def test_bad_input_is_named():
    q, k, v = _qkv(0)
    with pytest.raises(ValueError, match="mode"):
        space_time_attention_forward(q, k, v, mode="diagonal")
    with pytest.raises(ValueError, match="k must"):
        space_time_attention_forward(q, k[:, :2], v, mode="joint")
    with pytest.raises(ValueError, match="q must"):
        space_time_attention_forward(q[0], k[0], v[0], mode="joint")
    with pytest.raises(TypeError, match="q must"):
        space_time_attention_forward(q.astype(int), k, v, mode="joint")
