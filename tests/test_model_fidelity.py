"""Switches that reproduce the published architectures: DETR's zero content queries and
Deformable DETR's per-layer heads. Each is held to the default model it generalises
(an oracle) and to finite differences."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from minidetr.gradcheck import numerical_gradient
from minidetr.model import PRESETS, MiniDETR, parameter_counts
from minidetr.setloss.denoising import make_denoising_queries

DETR_LIKE = dataclasses.replace(
    PRESETS["tiny"], anchor_queries=False, box_refine=False, denoising=False, num_levels=1
)
ZERO_CONTENT = dataclasses.replace(DETR_LIKE, learned_content=False)
UNSHARED = dataclasses.replace(PRESETS["tiny-deformable"], share_heads=False)


def _flatten(outputs: dict, prefix: str = "") -> dict:
    """Every array in a DETR outputs dict, by path."""
    flat = {}
    for key, value in outputs.items():
        if key == "meta":
            continue
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                flat.update(_flatten(v, f"{prefix}{key}/{i}/"))
        else:
            flat[prefix + key] = value
    return flat


def _weights_like(outputs, rng):
    """Random output gradients of the outputs' structure: the loss sum(W * outputs)."""
    if isinstance(outputs, dict):
        return {k: _weights_like(v, rng) for k, v in outputs.items() if k != "meta"}
    if isinstance(outputs, list):
        return [_weights_like(v, rng) for v in outputs]
    return rng.standard_normal(outputs.shape)


def _dot(outputs, weights) -> float:
    a, w = _flatten(outputs), _flatten(weights)
    return float(sum(np.sum(a[k] * w[k]) for k in w))


def _run(cfg, params, seed=0):
    model = MiniDETR(cfg)
    r = np.random.default_rng(seed)
    images = r.standard_normal((2, 3, cfg.image_size, cfg.image_size))
    dn = None
    if cfg.denoising:
        targets = [{"labels": np.array([0, 2]), "boxes": np.array([[0.3, 0.3, 0.2, 0.3]] * 2)}] * 2
        dn = make_denoising_queries(
            targets, 2, 0.3, 0.4, cfg.num_classes, np.random.default_rng(seed),
            num_queries=cfg.num_queries, contrastive=True,
        )  # fmt: skip
    outputs, cache = model.forward(params, images, denoising=dn)
    return model, images, dn, outputs.to_dict(), cache


def test_zero_content_queries_are_learned_ones_held_at_zero():
    learned = MiniDETR(DETR_LIKE).init_params(0, dtype=np.float64)
    learned["query.content"] = np.zeros_like(learned["query.content"])
    zero = {k: v for k, v in learned.items() if k != "query.content"}
    assert set(MiniDETR(ZERO_CONTENT).param_shapes) == set(zero)
    *_, out_l, cache_l = _run(DETR_LIKE, learned)
    model_z, *_, out_z, cache_z = _run(ZERO_CONTENT, zero)
    flat_l, flat_z = _flatten(out_l), _flatten(out_z)
    assert flat_l.keys() == flat_z.keys()
    for key in flat_l:
        np.testing.assert_array_equal(flat_z[key], flat_l[key], err_msg=key)
    dout = _weights_like(out_l, np.random.default_rng(3))
    grads_l = MiniDETR(DETR_LIKE).backward(dout, cache_l)
    grads_z = model_z.backward(dout, cache_z)
    assert set(grads_z) == set(zero)
    for key in grads_z:
        np.testing.assert_array_equal(grads_z[key], grads_l[key], err_msg=key)
    # with tgt = 0 the first self-attention reads v = b_v for every query, so its
    # output does not depend on the attention weights: W_q, W_k, W_v learn nothing there
    first = np.abs(grads_z["decoder.layers.0.self_attn.in_proj.weight"]).max()
    second = np.abs(grads_z["decoder.layers.1.self_attn.in_proj.weight"]).max()
    assert first <= 1e-12 * second  # zero up to rounding


def test_unshared_heads_are_shared_ones_copied_per_layer():
    shared_cfg = PRESETS["tiny-deformable"]
    shared = MiniDETR(shared_cfg).init_params(0, dtype=np.float64)
    unshared = {}
    for key, value in shared.items():
        if key.startswith(("class_head.", "box_head.")):
            for i in range(UNSHARED.num_decoder_layers):
                unshared[f"decoder.layers.{i}.{key}"] = value.copy()
        else:
            unshared[key] = value
    assert set(MiniDETR(UNSHARED).param_shapes) == set(unshared)
    model_s, *_, out_s, cache_s = _run(shared_cfg, shared)
    model_u, *_, out_u, cache_u = _run(UNSHARED, unshared)
    flat_s, flat_u = _flatten(out_s), _flatten(out_u)
    for key in flat_s:
        np.testing.assert_array_equal(flat_u[key], flat_s[key], err_msg=key)
    dout = _weights_like(out_s, np.random.default_rng(3))
    grads_s, grads_u = model_s.backward(dout, cache_s), model_u.backward(dout, cache_u)
    for key, g in grads_s.items():
        if key.startswith(("class_head.", "box_head.")):  # shared = sum over the layers
            per_layer = [grads_u[f"decoder.layers.{i}.{key}"] for i in range(2)]
            assert not np.array_equal(per_layer[0], per_layer[1])
            np.testing.assert_allclose(per_layer[0] + per_layer[1], g, rtol=1e-12, atol=1e-12)
        else:
            np.testing.assert_allclose(grads_u[key], g, rtol=1e-12, atol=1e-12, err_msg=key)


def test_unshared_heads_are_counted_with_their_layer():
    counts = parameter_counts(UNSHARED)
    shared = parameter_counts(PRESETS["tiny-deformable"])
    heads = shared["heads (class_head, box_head)"]
    assert "heads (class_head, box_head)" not in counts
    for i in range(2):
        assert counts[f"decoder.layers.{i}"] == shared[f"decoder.layers.{i}"] + heads


@pytest.mark.parametrize("cfg", [ZERO_CONTENT, UNSHARED], ids=["zero-content", "unshared-heads"])
def test_gradient_matches_finite_differences(cfg):
    r = np.random.default_rng(1)
    params = {
        k: v + 0.05 * r.standard_normal(v.shape)  # off Deformable DETR's exact-zero init kinks
        for k, v in MiniDETR(cfg).init_params(0, dtype=np.float64).items()
    }
    model, images, dn, outputs, cache = _run(cfg, params)
    dout = _weights_like(outputs, np.random.default_rng(3))
    grads = model.backward(dout, cache)
    detached = cache.detached

    def loss_with(key):
        def f(value):
            trial = dict(params)
            trial[key] = value
            out, _ = model.forward(trial, images, denoising=dn, detached=detached)
            return _dot(out.to_dict(), dout)

        return f

    rng = np.random.default_rng(7)
    worst = 0.0
    for key, value in params.items():
        idx = rng.choice(value.size, size=min(2, value.size), replace=False)
        numeric = numerical_gradient(loss_with(key), value, indices=idx).reshape(-1)[idx]
        # relative to the tensor's largest gradient; a tensor whose gradient is exactly zero
        # is compared with the difference quotient's rounding noise (about 1e-9 here)
        scale = max(np.abs(grads[key]).max(), 1e-3)
        err = float(np.max(np.abs(numeric - grads[key].reshape(-1)[idx])) / scale)
        worst = max(worst, err)
    assert worst < 1e-5
