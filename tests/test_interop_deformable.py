"""Deformable DETR both ways (plain and with box refinement): equal outputs in float32.

Small random DeformableDetrForObjectDetection models built offline: a ResNetConfig
backbone with three maps and one extra strided level, every weight and BatchNorm
statistic perturbed (the sampling offsets too, so that samples leave the pixel
centres and the bilinear weights are exercised).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_interop_detr import (  # noqa: E402
    TOL,
    assert_gradients_at_samples,
    images,
    perturb,
    run_hf,
    run_mini,
)

from minidetr.interop import from_transformers, to_transformers  # noqa: E402
from minidetr.interop.deformable import deformable_state  # noqa: E402
from minidetr.model import MiniDETR  # noqa: E402


def tiny_deformable(refine: bool, seed: int = 0, block: str = "basic"):
    backbone = transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 2, 1], layer_type=block,
        out_features=["stage2", "stage3", "stage4"],
    )  # fmt: skip
    cfg = transformers.DeformableDetrConfig(
        backbone_config=backbone, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=40,
        decoder_ffn_dim=40, num_queries=7, num_labels=3, num_feature_levels=4,
        encoder_n_points=2, decoder_n_points=2, with_box_refine=refine, dropout=0.0,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = transformers.DeformableDetrForObjectDetection(cfg).eval()
    perturb(model, seed)
    return model


@pytest.mark.parametrize("refine", [False, True], ids=["plain", "box_refine"])
def test_from_transformers_matches(refine):
    model = tiny_deformable(refine)
    cfg, params = from_transformers(model, image_size=64)
    assert (cfg.num_levels, cfg.extra_levels, cfg.box_refine) == (4, 1, refine)
    x = images(5)
    want_logits, want_boxes = run_hf(model, x)
    logits, boxes = run_mini(cfg, params, x)
    assert np.abs(logits - want_logits).max() < TOL
    assert np.abs(boxes - want_boxes).max() < TOL
    assert np.abs(want_logits).max() > 0.1 and want_boxes.std() > 0.01


@pytest.mark.parametrize("refine", [False, True], ids=["plain", "box_refine"])
def test_to_transformers_matches_and_round_trips(refine):
    cfg, params = from_transformers(tiny_deformable(refine, seed=1, block="bottleneck"), 64)
    exported = to_transformers(cfg, params)
    x = images(6)
    want = run_mini(cfg, params, x)
    got = run_hf(exported, x)
    assert np.abs(got[0] - want[0]).max() < TOL and np.abs(got[1] - want[1]).max() < TOL
    cfg2, params2 = from_transformers(exported, image_size=64)
    assert cfg2 == cfg and params2.keys() == params.keys()
    for k in params:
        np.testing.assert_array_equal(params2[k], params[k])
    theirs = {k for k in exported.state_dict() if not k.endswith("num_batches_tracked")}
    assert set(deformable_state(cfg, params)) == theirs


def test_untied_class_heads_are_refused():
    cfg, params = from_transformers(tiny_deformable(True, seed=2), image_size=64)
    params = dict(params)
    params["decoder.layers.1.class_head.bias"] = params["decoder.layers.1.class_head.bias"] + 1
    params["decoder.layers.1.class_head.weight"] = params["decoder.layers.1.class_head.weight"] * 2
    with pytest.raises(ValueError, match="ties the class heads"):
        to_transformers(cfg, params)


def test_learned_reference_gradient_matches_finite_differences():
    """2-D reference points from Linear(position), extra levels, half-pixel sines: float64."""
    cfg, _ = from_transformers(tiny_deformable(False), image_size=64)
    model = MiniDETR(cfg)
    r = np.random.default_rng(3)
    params = {
        k: v + 0.05 * r.standard_normal(v.shape)
        for k, v in model.init_params(0, dtype=np.float64).items()
    }
    x = r.standard_normal((1, 3, 64, 64))
    w_logits = r.standard_normal((1, cfg.num_queries, cfg.num_logits))
    w_boxes = r.standard_normal((1, cfg.num_queries, 4))

    def loss(p):
        out, _ = model.forward(p, x, train=False)
        return float(np.sum(out.pred_logits * w_logits) + np.sum(out.pred_boxes * w_boxes))

    _, cache = model.forward(params, x, train=False)
    grads = model.backward({"pred_logits": w_logits, "pred_boxes": w_boxes}, cache)
    names = ["query.ref_point.weight", "query.ref_point.bias", "query.pos", "level_embed",
             "input_proj.3.weight", "input_proj.2.norm.weight",
             "backbone.stages.3.blocks.0.convs.0.conv.weight"]  # fmt: skip
    assert_gradients_at_samples(loss, params, grads, names, r)


def tiny_two_stage(seed: int = 0):
    model = tiny_deformable(True, seed)
    cfg = model.config
    cfg.two_stage, cfg.two_stage_num_proposals = True, 9
    torch.manual_seed(seed)
    model = transformers.DeformableDetrForObjectDetection(cfg).eval()
    perturb(model, seed)
    return model


def test_two_stage_both_ways():
    model = tiny_two_stage(seed=4)
    cfg, params = from_transformers(model, image_size=64)
    assert cfg.two_stage and cfg.proposal_queries and cfg.num_queries == 9
    x = images(7)
    want = run_hf(model, x)
    got = run_mini(cfg, params, x)
    assert np.abs(got[0] - want[0]).max() < TOL and np.abs(got[1] - want[1]).max() < TOL
    exported = to_transformers(cfg, params)
    again = run_hf(exported, x)
    assert np.abs(again[0] - got[0]).max() < TOL and np.abs(again[1] - got[1]).max() < TOL
    theirs = {k for k in exported.state_dict() if not k.endswith("num_batches_tracked")}
    assert set(deformable_state(cfg, params)) == theirs


def test_proposal_queries_gradient_matches_finite_differences():
    """Two-stage queries from LN(Linear(sine(proposal))), the choice held fixed: float64."""
    cfg, _ = from_transformers(tiny_two_stage(seed=5), image_size=64)
    model = MiniDETR(cfg)
    r = np.random.default_rng(4)
    params = {
        k: v + 0.05 * r.standard_normal(v.shape)
        for k, v in model.init_params(0, dtype=np.float64).items()
    }
    x = r.standard_normal((1, 3, 64, 64))
    shape = (1, cfg.num_queries)
    w = {k: r.standard_normal(shape + (n,)) for k, n in (("l", cfg.num_logits), ("b", 4))}
    w_enc = {k: r.standard_normal(shape + (n,)) for k, n in (("l", cfg.num_logits), ("b", 4))}
    _, cache = model.forward(params, x, train=False)
    fixed = cache.detached

    def loss(p):
        out, _ = model.forward(p, x, train=False, detached=fixed)
        enc = out.enc_outputs
        main = np.sum(out.pred_logits * w["l"]) + np.sum(out.pred_boxes * w["b"])
        return float(
            main + np.sum(enc["pred_logits"] * w_enc["l"]) + np.sum(enc["pred_boxes"] * w_enc["b"])
        )

    _, cache = model.forward(params, x, train=False, detached=fixed)
    grads = model.backward(
        {"pred_logits": w["l"], "pred_boxes": w["b"],
         "enc_outputs": {"pred_logits": w_enc["l"], "pred_boxes": w_enc["b"]}}, cache
    )  # fmt: skip
    names = ["query.pos_trans.weight", "query.pos_trans.norm.weight", "enc_output.weight",
             "enc_class_head.weight", "decoder.layers.1.box_head.layers.2.bias"]  # fmt: skip
    assert_gradients_at_samples(loss, params, grads, names, r)
