"""DETR both ways: transformers' DetrForObjectDetection <-> MiniDETR, equal outputs in float32.

The transformers models are built offline from small random configurations (a
ResNetConfig backbone, nothing pretrained) and every weight is moved off its
initial value, BatchNorm statistics included, so that no mapping error can hide
behind a zero or a one.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from minidetr.gradcheck import numerical_gradient  # noqa: E402
from minidetr.interop import from_transformers, to_transformers  # noqa: E402
from minidetr.interop.detr import detr_state, params_from_detr  # noqa: E402
from minidetr.model import MiniDETR  # noqa: E402

TOL = 1e-4  # the bound on the max absolute difference, float32


def tiny_detr(block: str = "basic", seed: int = 0):
    """A small DetrForObjectDetection, eval mode, with every weight perturbed."""
    widths = [8, 16, 16, 32] if block == "basic" else [8, 16, 16, 32]
    backbone = transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=widths, depths=[1, 2, 1, 1], layer_type=block,
        out_features=["stage4"],
    )  # fmt: skip
    cfg = transformers.DetrConfig(
        backbone_config=backbone, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48,
        decoder_ffn_dim=48, num_queries=6, num_labels=3, dropout=0.0,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = transformers.DetrForObjectDetection(cfg).eval()
    perturb(model, seed)
    return model


def perturb(model, seed: int) -> None:
    """Move every parameter and buffer off its initial value (variances stay positive)."""
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(0.5 + 1.5 * torch.rand(t.shape, generator=gen))
            else:
                t.add_(0.1 * torch.randn(t.shape, generator=gen))


def images(seed: int = 0, h: int = 64, w: int = 96) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((2, 3, h, w)).astype(np.float32)


def run_hf(model, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(x))
    return out.logits.numpy(), out.pred_boxes.numpy()


def run_mini(cfg, params, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    outputs, _ = MiniDETR(cfg).forward(params, x, train=False)
    return outputs["pred_logits"], outputs["pred_boxes"]


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_from_transformers_matches(block):
    model = tiny_detr(block)
    cfg, params = from_transformers(model, image_size=64)
    x = images()
    want_logits, want_boxes = run_hf(model, x)
    logits, boxes = run_mini(cfg, params, x)
    assert np.abs(logits - want_logits).max() < TOL
    assert np.abs(boxes - want_boxes).max() < TOL
    assert np.abs(want_logits).max() > 0.1  # the outputs are not trivially small


def test_to_transformers_matches_and_round_trips():
    """minidetr's own (perturbed) parameters -> transformers -> the same outputs, and back."""
    model = tiny_detr("bottleneck", seed=3)
    cfg, _ = from_transformers(model, image_size=64)
    rng = np.random.default_rng(7)
    params = {
        k: (v + 0.1 * rng.standard_normal(v.shape)).astype(np.float32)
        for k, v in MiniDETR(cfg).init_params(seed=5).items()
    }
    for k in params:
        if k.endswith("running_var"):
            params[k] = rng.uniform(0.5, 2.0, params[k].shape).astype(np.float32)
    exported = to_transformers(cfg, params)
    x = images(1)
    want_logits, want_boxes = run_mini(cfg, params, x)
    logits, boxes = run_hf(exported, x)
    assert np.abs(logits - want_logits).max() < TOL
    assert np.abs(boxes - want_boxes).max() < TOL
    cfg2, params2 = from_transformers(exported, image_size=64)
    assert cfg2 == cfg
    assert params2.keys() == params.keys()
    for k in params:
        np.testing.assert_array_equal(params2[k], params[k])


def test_state_dict_names_cover_every_parameter():
    model = tiny_detr()
    cfg, params = from_transformers(model, image_size=64)
    theirs = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    assert set(detr_state(cfg, params)) == theirs
    MiniDETR(cfg).check_params(params)


def test_legacy_names_are_read():
    """The published files' names (backbone.conv_encoder, out_proj, fc1) map to the same params."""
    model = tiny_detr()
    cfg, params = from_transformers(model, image_size=64)
    legacy = {}
    for k, v in model.state_dict().items():
        k = k.replace("model.backbone.", "model.backbone.conv_encoder.")
        k = k.replace(".o_proj.", ".out_proj.").replace(".mlp.fc", ".fc")
        legacy[k] = v.numpy()
    again = params_from_detr(legacy, cfg)
    assert again.keys() == params.keys()
    for k in params:
        np.testing.assert_array_equal(again[k], params[k])


def test_unsupported_models_are_refused():
    from minidetr.model import PRESETS

    with pytest.raises(ValueError, match="transformers' DETR needs backbone='resnet'"):
        to_transformers(PRESETS["standard"], MiniDETR(PRESETS["standard"]).init_params())
    with pytest.raises(TypeError, match="model must be a transformers model"):
        from_transformers(object())


def test_detr_r_switches_gradient_matches_finite_differences():
    """ResNet backbone, no input-projection norm, zero content, final decoder norm: float64."""
    cfg, _ = from_transformers(tiny_detr("bottleneck"), image_size=64)
    model = MiniDETR(cfg)
    r = np.random.default_rng(2)
    params = {
        k: v + 0.05 * r.standard_normal(v.shape)
        for k, v in model.init_params(0, dtype=np.float64).items()
    }
    x = r.standard_normal((1, 3, 64, 64))
    w_logits = r.standard_normal((1, cfg.num_queries, cfg.num_logits))
    w_boxes = r.standard_normal((1, cfg.num_queries, 4))

    def loss(p):
        out, _ = model.forward(p, x, train=False)
        aux = sum(np.sum(a["pred_logits"] * w_logits) for a in out["aux_outputs"])
        return float(
            np.sum(out["pred_logits"] * w_logits) + np.sum(out["pred_boxes"] * w_boxes) + aux
        )

    out, cache = model.forward(params, x, train=False)
    aux = [{"pred_logits": w_logits} for _ in out["aux_outputs"]]
    grads = model.backward(
        {"pred_logits": w_logits, "pred_boxes": w_boxes, "aux_outputs": aux}, cache
    )
    names = ["decoder.norm.weight", "query.pos", "input_proj.0.weight", "backbone.stem.conv.weight",
             "backbone.stages.3.blocks.0.convs.1.conv.weight"]  # fmt: skip
    assert_gradients_at_samples(loss, params, grads, names, r)
    frozen = [k for k in params if ".bn." in k]
    assert frozen and all(not np.any(grads[k]) for k in frozen)


def assert_gradients_at_samples(loss, params, grads, names, r):
    """grads[name] against finite differences of ``loss`` at up to three random entries of
    each named parameter (float64; relative to the largest numeric entry, 1e-3 at least)."""
    for name in names:
        idx = r.choice(params[name].size, size=min(3, params[name].size), replace=False)

        def f(v, name=name):
            return loss({**params, name: v})

        numeric = numerical_gradient(f, params[name].copy(), indices=idx).reshape(-1)[idx]
        analytic = grads[name].reshape(-1)[idx]
        scale = max(np.abs(numeric).max(), 1e-3)
        assert np.abs(numeric - analytic).max() / scale < 1e-5, name
