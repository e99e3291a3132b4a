"""Multi-head attention with an exchangeable core: softmax reproduces dense MHA; every core's
gradients through the projections pass a float64 check."""

from __future__ import annotations

import numpy as np
import pytest

from minidetr.attention import multi_head_attention_forward
from minidetr.attention.multihead import (
    KINDS,
    CoreSettings,
    efficient_multi_head_attention_backward,
    efficient_multi_head_attention_forward,
)
from minidetr.gradcheck import gradcheck

GRID = (4, 4)
SETTINGS = CoreSettings(features=8, top_k=5, window=1, rank=3, cell=2, keep=2)


def _inputs(rng, b=2, n=16, d=8):
    x = rng.standard_normal((b, n, d))
    pos = 0.1 * rng.standard_normal((1, n, d))
    params = [
        rng.standard_normal((3 * d, d)) / np.sqrt(d),
        0.1 * rng.standard_normal(3 * d),
        rng.standard_normal((d, d)) / np.sqrt(d),
        0.1 * rng.standard_normal(d),
    ]
    e, f = rng.standard_normal((SETTINGS.rank, n)) / 4, rng.standard_normal((SETTINGS.rank, n)) / 4
    return x, pos, params, e, f


def test_softmax_core_is_dense_multi_head_attention(rng):
    x, pos, params, _, _ = _inputs(rng)
    out, _ = efficient_multi_head_attention_forward(
        x, x, x, *params, num_heads=2, kind="softmax", query_pos=pos, key_pos=pos
    )
    want, _ = multi_head_attention_forward(
        x, x, x, *params, num_heads=2, query_pos=pos, key_pos=pos
    )
    np.testing.assert_allclose(out, want, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_every_core_passes_the_gradient_check(rng, kind):
    x, pos, params, e, f = _inputs(rng)

    def forward(x, w_in, b_in, w_out, b_out, e, f):
        return efficient_multi_head_attention_forward(
            x, x, x, w_in, b_in, w_out, b_out, num_heads=2, kind=kind, query_pos=pos,
            key_pos=pos, grid=GRID, E=e, F=f, settings=SETTINGS, seed=3,
        )  # fmt: skip

    def backward(dout, cache):
        dq, dk, dv, *grads = efficient_multi_head_attention_backward(dout, cache)
        de, df = grads[4:]
        zero = np.zeros_like(e)
        return (dq + dk + dv, *grads[:4], zero if de is None else de, zero if df is None else df)

    result = gradcheck(forward, backward, [x, *params, e, f], max_entries=30)
    assert result.max_error < 1e-7, result.report()


def test_unknown_kind_is_refused(rng):
    x, _, params, _, _ = _inputs(rng)
    with pytest.raises(ValueError, match="attention kind must be one of"):
        efficient_multi_head_attention_forward(x, x, x, *params, num_heads=2, kind="flash")
