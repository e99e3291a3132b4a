"""The detector with each encoder attention: gradients through the whole model, config checks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from minidetr.gradcheck import numerical_gradient
from minidetr.model import PRESETS, MiniDETR, ModelConfig
from minidetr.model.config import ENCODER_ATTENTIONS
from minidetr.setloss.criterion import LossWeights, SetCriterion
from minidetr.setloss.matching import HungarianMatcher

# plain DETR on a 4 x 4 token grid (32-pixel images, stride 8, one feature map)
DETR = dataclasses.replace(
    PRESETS["tiny"], anchor_queries=False, box_refine=False, denoising=False, num_levels=1
)
TARGETS = [
    {"labels": np.array([0, 2]), "boxes": np.array([[0.3, 0.3, 0.2, 0.3], [0.6, 0.7, 0.3, 0.2]])},
    {"labels": np.array([1]), "boxes": np.array([[0.5, 0.4, 0.4, 0.3]])},
]


@pytest.mark.parametrize("kind", ENCODER_ATTENTIONS)
def test_encoder_gradients_through_the_whole_model(kind):
    cfg = dataclasses.replace(DETR, encoder_attention=kind)
    model = MiniDETR(cfg)
    r = np.random.default_rng(1)
    params = {
        k: v + 0.05 * r.standard_normal(v.shape)
        for k, v in model.init_params(0, dtype=np.float64).items()
    }
    images = np.random.default_rng(0).standard_normal((2, 3, 32, 32))
    criterion = SetCriterion(cfg.num_classes, HungarianMatcher(), LossWeights(1.0, 5.0, 2.0))
    outputs, cache = model.forward(params, images)
    _, ccache = criterion.forward(outputs, TARGETS)
    grads = model.backward(criterion.backward(ccache), cache)
    assert set(grads) == set(params)
    encoder_keys = [k for k in params if k.startswith("encoder.")]
    if kind == "linformer":
        assert "encoder.layers.0.self_attn.proj_e" in encoder_keys

    def loss_with(key):
        def f(value):
            out, _ = model.forward({**params, key: value}, images)
            return float(criterion.forward(out, TARGETS, matches=ccache.matches)[0]["loss"])

        return f

    pick = np.random.default_rng(7)
    for key in encoder_keys:
        idx = pick.choice(params[key].size, size=min(2, params[key].size), replace=False)
        numeric = numerical_gradient(loss_with(key), params[key], indices=idx).reshape(-1)[idx]
        analytic = grads[key].reshape(-1)[idx]
        scale = max(np.abs(grads[key]).max(), 1e-6)
        assert np.max(np.abs(numeric - analytic)) / scale < 1e-5, key


def test_softmax_is_the_default_and_other_kinds_change_the_output():
    images = np.random.default_rng(0).standard_normal((1, 3, 32, 32))
    base = MiniDETR(DETR)
    params = base.init_params(0, dtype=np.float64)
    out, _ = base.forward(params, images)
    linear = MiniDETR(dataclasses.replace(DETR, encoder_attention="linear"))
    out_linear, _ = linear.forward(params, images)
    assert DETR.encoder_attention == "softmax"
    assert not np.allclose(out.pred_boxes, out_linear.pred_boxes)


def test_config_refuses_efficient_attention_where_it_does_not_apply():
    with pytest.raises(ValueError, match="encoder_attention must be one of"):
        dataclasses.replace(DETR, encoder_attention="flash")
    with pytest.raises(ValueError, match="needs variant='standard'"):
        dataclasses.replace(PRESETS["tiny-deformable"], encoder_attention="linear")
    with pytest.raises(ValueError, match="num_levels=1"):
        ModelConfig(**{**dataclasses.asdict(PRESETS["tiny"]), "encoder_attention": "window"})
