"""Captured attention maps and their gradients, against finite differences through the model."""

from __future__ import annotations

import numpy as np
import pytest

import minidetr.attention.dense as dense
import minidetr.deformable.module as deformable_module
from minidetr.attention.record import record_attention_grad, record_attention_grads
from minidetr.explain.capture import capture_attention, explain_backward
from minidetr.model import PRESETS, MiniDETR


def model_and_images(preset, seed=0):
    model = MiniDETR(PRESETS[preset])
    params = model.init_params(seed, dtype=np.float64)
    size = model.config.image_size
    images = np.random.default_rng(seed).uniform(size=(2, 3, size, size))
    return model, params, images


def score(model, params, images, query, cls, detached):
    outputs, _ = model.forward(params, images, train=False, detached=detached)
    return float(np.sum(outputs.pred_logits[:, query, cls]))


@pytest.mark.parametrize("preset", ["tiny", "tiny-deformable"])
def test_every_map_is_captured_by_name(preset):
    model, params, images = model_and_images(preset)
    cfg = model.config
    outputs, cache = model.forward(params, images, train=False)
    maps = capture_attention(cache)
    want = [f"encoder.layers.{i}.self_attn" for i in range(cfg.num_encoder_layers)]
    for i in range(cfg.num_decoder_layers):
        want += [f"decoder.layers.{i}.self_attn", f"decoder.layers.{i}.cross_attn"]
    assert list(maps) == want
    q = cfg.num_queries
    for name, m in maps.items():
        if m.kind == "dense":
            np.testing.assert_allclose(m.weights.sum(-1), 1.0, rtol=1e-12)
            assert m.weights.shape[:2] == (2, cfg.num_heads)
        else:
            assert m.weights.shape == (
                2,
                m.weights.shape[1],
                cfg.num_heads,
                len(m.spatial_shapes),
                cfg.num_points,
            )
            assert m.locations.shape == (*m.weights.shape, 2)
            np.testing.assert_allclose(m.weights.sum((-1, -2)), 1.0, rtol=1e-12)
        if name.endswith("cross_attn"):
            assert (m.weights.shape[2] if m.kind == "dense" else m.weights.shape[1]) == q
    assert maps["decoder.layers.0.self_attn"].kind == "dense"
    assert maps["decoder.layers.0.cross_attn"].kind == (
        "deformable" if "deformable" in preset else "dense"
    )


def test_nothing_is_recorded_outside_the_block():
    with record_attention_grads() as grads:
        pass
    record_attention_grad(object(), np.ones(2))  # outside: a no-op
    assert len(grads) == 0


TARGETS = (
    "encoder.layers.0.self_attn",
    "decoder.layers.1.self_attn",
    "decoder.layers.1.cross_attn",
)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("preset", ["tiny", "tiny-deformable"])
def test_captured_gradients_equal_finite_differences(preset, target, monkeypatch):
    """Perturb one captured map inside the forward by eps * E; dy/deps must be <dy/dA, E>."""
    model, params, images = model_and_images(preset, seed=1)
    query, cls = 2, 1
    _, maps, grads = explain_backward(model, params, images, [query, query], [cls, cls])
    # the forward detaches refined boxes and the two-stage choice; hold them fixed, as the
    # backward does
    detached = model.forward(params, images, train=False)[1].detached
    kind = maps[target].kind
    # the n-th call of the op in the forward is the n-th captured map of that kind
    index = [n for n in maps if maps[n].kind == kind].index(target)
    direction = np.random.default_rng(7).standard_normal(maps[target].weights.shape)
    calls = {"n": 0, "eps": 0.0}

    if kind == "dense":
        original = dense.scaled_dot_product_attention_forward

        def patched(q, k, v, mask=None):
            out, c = original(q, k, v, mask)
            if calls["n"] == index:
                p = c.p + calls["eps"] * direction
                out, c = np.matmul(p, v), c._replace(p=p)
            calls["n"] += 1
            return out, c

        monkeypatch.setattr(dense, "scaled_dot_product_attention_forward", patched)
    else:
        original = deformable_module.ms_deform_attn_forward

        def patched(value, shapes, loc, attn, **options):
            if calls["n"] == index:
                attn = attn + calls["eps"] * direction
            calls["n"] += 1
            return original(value, shapes, loc, attn, **options)

        monkeypatch.setattr(deformable_module, "ms_deform_attn_forward", patched)

    def y(eps):
        calls["n"], calls["eps"] = 0, eps
        return score(model, params, images, query, cls, detached)

    h = 1e-6
    numeric = (y(h) - y(-h)) / (2 * h)
    analytic = float(np.sum(grads[target] * direction))
    assert abs(analytic) > 1e-6  # a test that cannot pass by zeros
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5)
