"""MiniDETR: shapes, initialisation, bad input, query equivariance, backends, live gradients."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from minidetr.backend import to_numpy
from minidetr.deformable.module import sampling_offset_bias
from minidetr.model import DEFAULT_PRESET, PRESETS, MiniDETR, ModelConfig, parameter_counts, summary
from minidetr.setloss.criterion import LossWeights, SetCriterion
from minidetr.setloss.denoising import make_denoising_queries
from minidetr.setloss.matching import HungarianMatcher

TINY = ("tiny", "tiny-deformable")


def _images(cfg, b=2, seed=0, dtype=np.float32):
    r = np.random.default_rng(seed)
    return r.standard_normal((b, 3, cfg.image_size, cfg.image_size)).astype(dtype)


def _targets(b):
    r = np.random.default_rng(1)
    out = []
    for i in range(b):
        t = i % 3 + 1
        boxes = np.concatenate([r.uniform(0.3, 0.7, (t, 2)), r.uniform(0.1, 0.4, (t, 2))], 1)
        out.append({"labels": r.integers(0, 3, t), "boxes": boxes.astype(np.float32)})
    return out


def _off_init(params, scale=0.02, seed=0):
    """Parameters moved slightly off their initial values.

    Deformable DETR initialises its offset and attention-weight projections to
    exactly zero: every encoder sample then sits on a pixel centre, a kink of
    bilinear interpolation, and the queries feeding those projections get no
    gradient at step 0 (by design). A small move leaves both special cases.
    """
    r = np.random.default_rng(seed)
    return {k: v + (scale * r.standard_normal(v.shape)).astype(v.dtype) for k, v in params.items()}


def _denoising(cfg, targets, seed=0):
    return make_denoising_queries(
        targets, 2, 0.3, 0.4, cfg.num_classes, np.random.default_rng(seed),
        num_queries=cfg.num_queries, contrastive=True,
    )  # fmt: skip


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("name", list(PRESETS))
def test_forward_shapes_for_every_preset(name):
    cfg = PRESETS[name]
    model = MiniDETR(cfg)
    params = model.init_params(0)
    b, q, k = 2, cfg.num_queries, cfg.num_logits
    targets = _targets(b)
    dn = _denoising(cfg, targets) if cfg.denoising else None
    outputs, _ = model.forward(params, _images(cfg, b), denoising=dn)
    assert outputs["pred_logits"].shape == (b, q, k)
    assert outputs["pred_boxes"].shape == (b, q, 4)
    assert len(outputs["aux_outputs"]) == cfg.num_decoder_layers - 1
    for layer in outputs["aux_outputs"]:
        assert layer["pred_logits"].shape == (b, q, k) and layer["pred_boxes"].shape == (b, q, 4)
    assert ("enc_outputs" in outputs) == cfg.two_stage
    if cfg.two_stage:
        assert outputs["enc_outputs"]["pred_logits"].shape == (b, q, k)
    if dn is not None:
        qdn = dn.labels.shape[1]
        assert outputs["dn"]["pred_logits"].shape == (b, qdn, k)
        assert outputs["dn"]["pred_boxes"].shape == (b, qdn, 4)
        assert outputs["dn"]["meta"] is dn
    boxes = outputs["pred_boxes"]
    assert boxes.dtype == np.float32 and np.all((boxes > 0) & (boxes < 1))


def test_default_preset_is_the_deformable_one():
    assert DEFAULT_PRESET in PRESETS and PRESETS[DEFAULT_PRESET].variant == "deformable"


def test_float32_stays_float32():
    model = MiniDETR(PRESETS["tiny-deformable"])
    params = model.init_params(0)
    outputs, cache = model.forward(params, _images(model.config))
    grads = model.backward({"pred_boxes": np.ones_like(outputs["pred_boxes"])}, cache)
    assert {g.dtype for g in grads.values()} == {np.dtype(np.float32)}
    assert outputs["pred_logits"].dtype == np.float32


# ----------------------------------------------------------------------------- parameters


def test_parameter_names_and_initialisation():
    std, dfm = MiniDETR(PRESETS["standard"]), MiniDETR(PRESETS["deformable"])
    p = std.init_params(3, dtype=np.float64)
    assert p["encoder.layers.0.self_attn.in_proj.weight"].shape == (3 * 128, 128)
    assert "decoder.layers.1.cross_attn.out_proj.bias" in p and "query.pos" in p
    # Xavier: uniform within sqrt(6 / (fan_in + fan_out))
    bound = math.sqrt(6 / (128 + 3 * 128))
    w = p["encoder.layers.1.self_attn.in_proj.weight"]
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    assert np.all(p["encoder.layers.0.self_attn.in_proj.bias"] == 0)
    q = dfm.init_params(3, dtype=np.float64)
    cfg = dfm.config
    # focal prior: every class starts at probability 0.01
    prior = 1 / (1 + np.exp(-q["class_head.bias"]))
    np.testing.assert_allclose(prior, 0.01, rtol=1e-12)
    np.testing.assert_allclose(q["enc_class_head.bias"], q["class_head.bias"])
    # deformable offsets: zero weights, the directional bias
    name = "encoder.layers.0.self_attn.sampling_offsets"
    assert np.all(q[f"{name}.weight"] == 0)
    want = sampling_offset_bias(cfg.num_heads, cfg.num_levels, cfg.num_points)
    np.testing.assert_array_equal(q[f"{name}.bias"], want)
    assert "query.anchors" not in q and "query.label_embed" in q  # two-stage, denoising


def test_init_is_seeded_and_follows_like():
    import array_api_strict as xps

    model = MiniDETR(PRESETS["tiny"])
    a, b, c = model.init_params(5), model.init_params(5), model.init_params(6)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["query.content"], c["query.content"])
    s = model.init_params(5, like=xps.asarray([0.0], dtype=xps.float64))
    np.testing.assert_allclose(to_numpy(s["query.content"]), a["query.content"], rtol=1e-6)
    assert model.num_params() == sum(v.size for v in a.values())


def test_params_from_another_config_are_refused():
    tiny, dfm = MiniDETR(PRESETS["tiny"]), MiniDETR(PRESETS["tiny-deformable"])
    x = _images(tiny.config)
    with pytest.raises(ValueError, match="another config"):
        dfm.forward(tiny.init_params(0), x)
    wider = MiniDETR(dataclasses.replace(PRESETS["tiny"], ffn_dim=32))
    with pytest.raises(
        ValueError, match=r"params\['encoder.layers.0.linear1.weight'\].*\(24, 16\)"
    ):
        tiny.forward(wider.init_params(0), x)
    with pytest.raises(TypeError, match="params must be a dict"):
        tiny.forward([1, 2], x)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("images", "error", "match"),
    [
        (np.zeros((3, 32, 32), np.float32), ValueError, "4 dimensions"),
        (np.zeros((1, 1, 32, 32), np.float32), ValueError, "RGB channels"),
        (np.zeros((1, 3, 32, 32), np.int64), TypeError, "real floating"),
        (np.zeros((1, 3, 32, 32), np.float64), TypeError, "parameters' dtype float32"),
        (np.zeros((1, 3, 36, 32), np.float32), ValueError, "multiples of the backbone stride 8"),
        ([[0.0]], TypeError, "images must be an array"),
    ],
)
def test_bad_images_get_clear_errors(images, error, match):
    model = MiniDETR(PRESETS["tiny"])
    with pytest.raises(error, match=match):
        model.forward(model.init_params(0), images)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"variant": "sparse"}, "variant"),
        ({"num_heads": 3}, "must divide d_model"),
        ({"num_groups": 5}, "num_groups"),
        ({"num_levels": 4}, "exceeds"),
        ({"backbone_blocks": (1,)}, "backbone_blocks"),
        ({"anchor_queries": False}, "needs anchor_queries"),
        ({"image_size": 36}, "multiple of the stride"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_bad_configs_are_refused(change, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(PRESETS["tiny"], **change)


def test_bad_denoising_and_gradients_are_refused():
    cfg = PRESETS["tiny"]
    model = MiniDETR(cfg)
    params, x = model.init_params(0), _images(cfg)
    plain = MiniDETR(dataclasses.replace(cfg, denoising=False))
    with pytest.raises(ValueError, match="denoising=True"):
        plain.forward(plain.init_params(0), x, denoising=_denoising(cfg, _targets(2)))
    with pytest.raises(ValueError, match="holds 3 images"):
        model.forward(params, x, denoising=_denoising(cfg, _targets(3)))
    outputs, cache = model.forward(params, x)
    with pytest.raises(ValueError, match="must have shape"):
        model.backward({"pred_logits": np.ones((2, 3, 4), np.float32)}, cache)


def test_dropout_needs_a_random_source_only_in_training():
    cfg = dataclasses.replace(PRESETS["tiny"], dropout=0.1)
    model = MiniDETR(cfg)
    params, x = model.init_params(0), _images(cfg)
    with pytest.raises(ValueError, match="rng"):
        model.forward(params, x, train=True)
    a, _ = model.forward(params, x, train=False)
    b, _ = model.forward(params, x, train=True, rng=np.random.default_rng(0))
    assert not np.allclose(a["pred_boxes"], b["pred_boxes"])


# ----------------------------------------------------------------------------- properties


@pytest.mark.parametrize(
    "cfg",
    [
        dataclasses.replace(
            PRESETS["tiny"], anchor_queries=False, box_refine=False, denoising=False
        ),
        dataclasses.replace(PRESETS["tiny"], denoising=False),
        dataclasses.replace(PRESETS["tiny-deformable"], two_stage=False),
    ],
    ids=["detr", "anchors", "deformable"],
)
def test_permuting_the_queries_permutes_the_outputs(cfg):
    model = MiniDETR(cfg)
    params = model.init_params(1, dtype=np.float64)
    x = _images(cfg, dtype=np.float64)
    perm = np.random.default_rng(0).permutation(cfg.num_queries)
    moved = dict(params)
    for key in ("query.content", "query.pos", "query.anchors"):
        if key in params:
            moved[key] = params[key][perm]
    a, _ = model.forward(params, x)
    b, _ = model.forward(moved, x)
    for layer_a, layer_b in zip([a, *a["aux_outputs"]], [b, *b["aux_outputs"]]):
        for key in ("pred_logits", "pred_boxes"):
            np.testing.assert_allclose(layer_b[key], layer_a[key][:, perm], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", TINY)
def test_forward_and_backward_run_under_array_api_strict(name):
    xps = pytest.importorskip("array_api_strict")
    cfg = PRESETS[name]
    model = MiniDETR(cfg)
    params = _off_init(model.init_params(0, dtype=np.float64))
    x = _images(cfg, dtype=np.float64)
    targets = _targets(2)
    dn = _denoising(cfg, targets)
    dn_strict = _denoising(cfg, [{k: xps.asarray(v) for k, v in t.items()} for t in targets])
    like = xps.asarray([0.0], dtype=xps.float64)
    sparams = {k: xps.asarray(v) for k, v in params.items()}
    out_np, cache_np = model.forward(params, x, denoising=dn)
    out_s, cache_s = model.forward(sparams, xps.asarray(x), denoising=dn_strict)
    assert isinstance(out_s["pred_logits"], type(like))
    np.testing.assert_allclose(to_numpy(out_s["pred_boxes"]), out_np["pred_boxes"], atol=1e-10)
    np.testing.assert_allclose(
        to_numpy(out_s["dn"]["pred_logits"]), out_np["dn"]["pred_logits"], atol=1e-9
    )
    r = np.random.default_rng(2)
    dlogits = r.standard_normal(out_np["pred_logits"].shape)
    dboxes = r.standard_normal(out_np["pred_boxes"].shape)
    g_np = model.backward({"pred_logits": dlogits, "pred_boxes": dboxes}, cache_np)
    g_s = model.backward(
        {"pred_logits": xps.asarray(dlogits), "pred_boxes": xps.asarray(dboxes)}, cache_s
    )
    for key, g in g_np.items():
        assert isinstance(g_s[key], type(like)), key
        np.testing.assert_allclose(to_numpy(g_s[key]), g, rtol=1e-7, atol=1e-9, err_msg=key)


@pytest.mark.parametrize("name", TINY)
def test_every_parameter_gets_a_live_gradient_in_a_training_step(name):
    """One training step of the set loss reaches every parameter (no detached path).

    From parameters slightly off their initial values (see ``_off_init``).
    """
    cfg = PRESETS[name]
    model = MiniDETR(cfg)
    r = np.random.default_rng(0)
    params = _off_init(model.init_params(0))
    targets = _targets(4)
    dn = _denoising(cfg, targets)
    criterion = SetCriterion(
        cfg.num_classes, HungarianMatcher(focal=cfg.focal),
        LossWeights(ce=2.0, bbox=5.0, giou=2.0), focal=cfg.focal,
    )  # fmt: skip
    outputs, cache = model.forward(params, _images(cfg, 4), train=True, rng=r, denoising=dn)
    losses, ccache = criterion.forward(outputs, targets)
    grads = model.backward(criterion.backward(ccache), cache)
    assert np.isfinite(float(losses["loss"]))
    dead = [k for k, g in grads.items() if not np.any(g != 0)]
    bad = [k for k, g in grads.items() if not np.all(np.isfinite(g))]
    assert not dead and not bad, (dead, bad)


# ----------------------------------------------------------------------------- summary


def test_summary_counts_every_parameter(capsys):
    for name, cfg in PRESETS.items():
        counts = parameter_counts(cfg)
        assert sum(counts.values()) == MiniDETR(cfg).num_params(), name
        text = summary(cfg)
        assert text in capsys.readouterr().out
        assert f"| {'total':<36} | {sum(counts.values()):>10,} |" in text
    assert "encoder.layers.0" in parameter_counts(PRESETS["standard"])
    assert "two-stage (enc_output, enc_*_head)" in parameter_counts(PRESETS["deformable"])


def test_model_config_is_frozen():
    cfg = PRESETS["tiny"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.d_model = 32  # type: ignore[misc]
    assert isinstance(cfg, ModelConfig) and cfg.num_logits == cfg.num_classes + 1
