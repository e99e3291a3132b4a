"""Chefer et al.'s gradient-weighted relevance and the deformable splat."""

from __future__ import annotations

import numpy as np
import pytest

from minidetr.attention import (
    scaled_dot_product_attention_backward,
    scaled_dot_product_attention_forward,
)
from minidetr.deformable.reference import (
    ms_deform_attn_backward_reference,
    ms_deform_attn_forward_reference,
)
from minidetr.explain.deformable import (
    deformable_attention_matrix,
    deformable_relevance,
    tokens_to_image,
)
from minidetr.explain.relevance import (
    MapAndGrad,
    encoder_decoder_relevance,
    gradient_weighted_heads,
)


def softmax(s):
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def pair(rng, b, m, lq, lk):
    return MapAndGrad(
        softmax(rng.standard_normal((b, m, lq, lk))), rng.standard_normal((b, m, lq, lk))
    )


def explicit_relevance(enc, dec_self, dec_cross, i):
    """Chefer et al. (2021) eqs. 6-11 for image i, one layer and one matrix at a time."""

    def bar(p):
        return np.maximum(p.grad[i] * p.attention[i], 0).mean(0)

    def norm(r):
        e = np.eye(len(r))
        x = r - e
        sums = x.sum(1, keepdims=True)
        x = np.divide(x, sums, out=np.zeros_like(x), where=sums > 0)
        return x + e

    s, q = dec_cross[0].attention.shape[-1], dec_cross[0].attention.shape[-2]
    r_ss, r_qq, r_qs = np.eye(s), np.eye(q), np.zeros((q, s))
    for p in enc:
        r_ss = r_ss + bar(p) @ r_ss
    for ps, pc in zip(dec_self, dec_cross):
        a = bar(ps)
        r_qq, r_qs = r_qq + a @ r_qq, r_qs + a @ r_qs
        r_qs = r_qs + norm(r_qq).T @ bar(pc) @ norm(r_ss)
    return r_qs


def test_relevance_matches_the_equations_layer_by_layer(rng):
    b, m, s, q = 2, 3, 6, 4
    enc = [pair(rng, b, m, s, s) for _ in range(2)]
    dec_self = [pair(rng, b, m, q, q) for _ in range(3)]
    dec_cross = [pair(rng, b, m, q, s) for _ in range(3)]
    got = encoder_decoder_relevance(enc, dec_self, dec_cross)
    assert got.qs.shape == (b, q, s) and got.ss.shape == (b, s, s) and got.qq.shape == (b, q, q)
    for i in range(b):
        np.testing.assert_allclose(got.qs[i], explicit_relevance(enc, dec_self, dec_cross, i))


def test_heads_fused_as_the_mean_of_the_positive_part():
    a = np.array([[[[0.5, 0.5]], [[1.0, 0.0]]]])  # (1, 2, 1, 2)
    g = np.array([[[[2.0, -4.0]], [[-1.0, 3.0]]]])
    np.testing.assert_allclose(gradient_weighted_heads(a, g), [[[0.5, 0.0]]])
    with pytest.raises(ValueError, match="grad"):
        gradient_weighted_heads(a, g[:, :1])


def test_relevance_concentrates_on_the_region_the_score_reads(rng):
    """A query whose score reads only tokens 5 and 6 (the others carry zero values)."""
    s, d, region = 12, 4, [5, 6]
    k = rng.standard_normal((1, 1, s, d))
    v = np.zeros((1, 1, s, d))
    v[0, 0, region] = 1.0 + rng.uniform(size=(2, d))
    q = rng.standard_normal((1, 1, 1, d))
    out, cache = scaled_dot_product_attention_forward(q, k, v)
    # y = sum(out): dy/dA comes from the same backward the model uses (dA = dout v^T)
    dp = np.ones_like(out) @ np.swapaxes(v, -1, -2)
    scaled_dot_product_attention_backward(np.ones_like(out), cache)  # runs, for completeness
    enc = [MapAndGrad(softmax(rng.standard_normal((1, 2, s, s))), np.zeros((1, 2, s, s)))]
    dec_self = [MapAndGrad(np.ones((1, 1, 1, 1)), np.zeros((1, 1, 1, 1)))]
    r = encoder_decoder_relevance(enc, dec_self, [MapAndGrad(cache.p, dp)]).qs[0, 0]
    assert set(np.flatnonzero(r)) == set(region)
    # uniform attention as the raw baseline would spread everywhere instead
    assert np.count_nonzero(cache.p) == s


def test_relevance_rejects_mismatched_layers(rng):
    with pytest.raises(ValueError, match="same"):
        encoder_decoder_relevance([], [pair(rng, 1, 1, 2, 2)], [])
    with pytest.raises(TypeError, match="MapAndGrad"):
        encoder_decoder_relevance([], [(1, 2)], [pair(rng, 1, 1, 2, 3)])


# ---------------------------------------------------------------- deformable attention


SHAPES = ((4, 4), (2, 3))  # two levels, S = 22


def deformable_inputs(rng, b=2, q=3, m=2, p=3, dh=4):
    s = sum(h * w for h, w in SHAPES)
    value = rng.standard_normal((b, s, m, dh))
    loc = rng.uniform(-0.1, 1.1, (b, q, m, len(SHAPES), p, 2))  # some samples fall outside
    attn = softmax(rng.standard_normal((b, q, m, len(SHAPES) * p))).reshape(b, q, m, len(SHAPES), p)
    return value, loc, attn


def test_deformable_attention_is_a_sparse_dense_attention(rng):
    """W v reproduces the deformable op exactly: W is the op's attention matrix."""
    value, loc, attn = deformable_inputs(rng)
    out, _ = ms_deform_attn_forward_reference(value, SHAPES, loc, attn)
    w = deformable_attention_matrix(loc, attn, SHAPES)  # (B, M, Q, S)
    dense = np.einsum("bmqs,bsmd->bqmd", w, value).reshape(out.shape)
    np.testing.assert_allclose(dense, out, rtol=1e-12, atol=1e-12)
    inside = w.sum(-1)
    assert np.all(inside <= 1 + 1e-12)
    loc_in = rng.uniform(0.3, 0.7, loc.shape)  # every corner inside both levels
    np.testing.assert_allclose(deformable_attention_matrix(loc_in, attn, SHAPES).sum(-1), 1.0)


def test_deformable_relevance_concentrates_on_the_region_the_score_reads(rng):
    """Values are zero outside a 2 x 2 block of a 6 x 6 level; y = sum(out)."""
    shapes = ((6, 6), (2, 3))
    b, q, m, p, dh = 1, 3, 2, 4, 3
    loc = rng.uniform(0.0, 1.0, (b, q, m, 2, p, 2))
    loc[:, 1, :, 0] = rng.uniform(0.3, 0.7, (m, p, 2))  # query 1 looks around the middle
    attn = softmax(rng.standard_normal((b, q, m, 2 * p))).reshape(b, q, m, 2, p)
    block = np.zeros((6, 6), dtype=bool)
    block[2:4, 2:4] = True
    value = np.zeros((b, 42, m, dh))
    value[:, :36][:, block.ravel()] = rng.uniform(0.5, 1.0, (b, 4, m, dh))
    out, cache = ms_deform_attn_forward_reference(value, shapes, loc, attn)
    _, _, dattn = ms_deform_attn_backward_reference(np.ones_like(out), cache)
    r = deformable_relevance([(loc, attn, dattn)], shapes, query=1)[0]
    level0 = r[:36].reshape(6, 6)
    assert r.sum() > 0
    assert np.all(r[36:] == 0)  # level 1 holds no value: nothing there raises the score
    # a sample is splatted onto its four corners, so relevance may reach one cell beyond the
    # block, no further
    near = np.zeros((6, 6), dtype=bool)
    near[1:5, 1:5] = True
    assert np.all(level0[~near] == 0)
    assert level0[block].sum() > 0.5 * r.sum()  # most of it on the block itself
    with pytest.raises(ValueError, match="query"):
        deformable_relevance([(loc, attn, dattn)], shapes, query=3)


def test_tokens_to_image_conserves_a_constant_map():
    r = np.ones((1, 22))
    img = tokens_to_image(r, SHAPES, 12)
    assert img.shape == (1, 12, 12)
    np.testing.assert_allclose(img.sum(), 22.0)
    np.testing.assert_allclose(img, img[0, 0, 0])
    with pytest.raises(ValueError, match="S = 22"):
        tokens_to_image(np.ones(5), SHAPES, 12)


def test_methods_run_on_every_array_namespace(xp, rng):
    """The same numbers from NumPy, array-api-strict and (with a GPU) CuPy inputs."""
    from minidetr.backend import to_numpy
    from minidetr.explain.rollout import attention_entropy, attention_rollout

    maps = [softmax(rng.standard_normal((1, 2, 5, 5))) for _ in range(2)]
    got = attention_rollout([xp.asarray(m) for m in maps], discard_ratio=0.4)
    np.testing.assert_allclose(to_numpy(got), attention_rollout(maps, discard_ratio=0.4))
    ent = attention_entropy(xp.asarray(maps[0]))
    np.testing.assert_allclose(to_numpy(ent), attention_entropy(maps[0]), rtol=1e-12)
    b, m, s, q = 1, 2, 5, 3
    layers = (pair(rng, b, m, s, s), pair(rng, b, m, q, q), pair(rng, b, m, q, s))

    def as_xp(p):
        return MapAndGrad(xp.asarray(p.attention), xp.asarray(p.grad))

    ref = encoder_decoder_relevance([layers[0]], [layers[1]], [layers[2]]).qs
    out = encoder_decoder_relevance([as_xp(layers[0])], [as_xp(layers[1])], [as_xp(layers[2])])
    np.testing.assert_allclose(to_numpy(out.qs), ref, rtol=1e-12)
    value, loc, attn = deformable_inputs(rng, b=1, q=2)
    w = deformable_attention_matrix(xp.asarray(loc), xp.asarray(attn), SHAPES)
    np.testing.assert_allclose(to_numpy(w), deformable_attention_matrix(loc, attn, SHAPES))
