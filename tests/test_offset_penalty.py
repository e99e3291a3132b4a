"""The L2 penalty on deformable sampling offsets: value, gradient, wiring and refusals.

R = offset_l2 / (N_enc + N_dec) * sum over deformable layers of the layer's mean
|offset in level pixels|^2. Its value is checked against a loop over that
definition (from the sampling locations the module really used), its gradient
against float64 central differences, alone and through the whole tiny-deformable
model, and offset_l2 = 0 against the unpenalised model.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from minidetr.cli import main
from minidetr.deformable.offset_penalty import offset_penalty_backward, offset_penalty_forward
from minidetr.gradcheck import numerical_gradient
from minidetr.model import PRESETS, MiniDETR, ModelConfig
from minidetr.model.deformable_transformer import deformable_caches
from minidetr.setloss.criterion import LossWeights, SetCriterion
from minidetr.setloss.denoising import make_denoising_queries
from minidetr.setloss.matching import HungarianMatcher
from minidetr.train.loop import Run, TrainConfig

CFG = PRESETS["tiny-deformable"]


def _offsets_problem(k: int, seed: int = 0):
    r = np.random.default_rng(seed)
    b, q, m, lv, p = 2, 3, 2, 3, 2
    offsets = 3.0 * r.standard_normal((b, q, m, lv, p, 2))
    ref = r.uniform(0.1, 0.9, size=(b, q, lv, k))
    normalizer = np.array([[8.0, 6.0], [4.0, 3.0], [2.0, 2.0]])  # (W_l, H_l)
    return offsets, ref, normalizer


def _brute_force(offsets, ref, normalizer, weight):
    """weight / count * sum |pix|^2, pix = (location - ref_xy) * (W_l, H_l), sample by sample."""
    b, q, m, lv, p, _ = offsets.shape
    total = 0.0
    for i in range(b):
        for j in range(q):
            for h in range(m):
                for level in range(lv):
                    w_l, h_l = normalizer[level]
                    for k in range(p):
                        ox, oy = offsets[i, j, h, level, k]
                        r = ref[i, j, level]
                        if len(r) == 2:
                            loc = (r[0] + ox / w_l, r[1] + oy / h_l)
                        else:
                            loc = (r[0] + ox / p * r[2] / 2, r[1] + oy / p * r[3] / 2)
                        px, py = (loc[0] - r[0]) * w_l, (loc[1] - r[1]) * h_l
                        total += px * px + py * py
    return weight * total / (b * q * m * lv * p)


@pytest.mark.parametrize("k", [2, 4])
def test_penalty_equals_a_loop_over_its_definition(k):
    offsets, ref, normalizer = _offsets_problem(k)
    r, _ = offset_penalty_forward(offsets, ref, normalizer, 0.3)
    assert float(r) == pytest.approx(_brute_force(offsets, ref, normalizer, 0.3), rel=1e-12)


@pytest.mark.parametrize("k", [2, 4])
def test_penalty_gradient_matches_finite_differences(k):
    offsets, ref, normalizer = _offsets_problem(k, seed=1)
    weight, dr = 0.7, 1.3
    _, cache = offset_penalty_forward(offsets, ref, normalizer, weight)
    doffsets, dref = offset_penalty_backward(dr, cache)

    def r_of_offsets(x):
        return dr * float(offset_penalty_forward(x, ref, normalizer, weight)[0])

    def r_of_ref(x):
        return dr * float(offset_penalty_forward(offsets, x, normalizer, weight)[0])

    np.testing.assert_allclose(doffsets, numerical_gradient(r_of_offsets, offsets), atol=1e-8)
    np.testing.assert_allclose(dref, numerical_gradient(r_of_ref, ref), atol=1e-8)
    assert np.all(dref[..., :2] == 0)  # the centre never moves a sample relative to itself
    if k == 4:
        assert np.any(dref[..., 2:] != 0)  # box sizes scale the offsets: they get gradient


def _problem(cfg, seed=0):
    r = np.random.default_rng(seed)
    images = r.standard_normal((2, 3, cfg.image_size, cfg.image_size))
    targets = [
        {
            "labels": np.array([0, 2]),
            "boxes": np.array([[0.3, 0.3, 0.2, 0.3], [0.6, 0.7, 0.3, 0.2]]),
        },
        {"labels": np.array([1]), "boxes": np.array([[0.5, 0.4, 0.4, 0.3]])},
    ]
    dn = make_denoising_queries(
        targets, 2, 0.3, 0.4, cfg.num_classes, np.random.default_rng(seed),
        num_queries=cfg.num_queries, contrastive=True,
    )  # fmt: skip
    return images, targets, dn


def _params(model, seed=0):
    """Float64 parameters moved off their initial values (off bilinear kinks, see
    test_model_gradcheck)."""
    r = np.random.default_rng(seed + 1)
    params = model.init_params(seed, dtype=np.float64)
    return {k: v + 0.05 * r.standard_normal(v.shape) for k, v in params.items()}


def _criterion(cfg):
    return SetCriterion(
        cfg.num_classes,
        HungarianMatcher(focal=cfg.focal),
        LossWeights(ce=1.0, bbox=5.0, giou=2.0),
        focal=cfg.focal,
    )


def test_model_penalty_is_the_layer_average_of_the_sampling_locations():
    lam = 0.4
    model = MiniDETR(dataclasses.replace(CFG, offset_l2=lam))
    images, _, dn = _problem(CFG)
    _, cache = model.forward(_params(model), images, denoising=dn)
    mods = deformable_caches(cache.encoder, cache.decoder.steps)
    assert len(mods) == CFG.num_encoder_layers + CFG.num_decoder_layers
    expected = 0.0
    for c in mods:  # from the locations the sampler read, not from the penalty's own formula
        loc = c.sampling.sampling_locations  # (B, Q, M, L, P, 2)
        ref_xy = c.reference_points[:, :, None, :, None, :2]
        pix = (loc - ref_xy) * c.normalizer[:, None, :]
        expected += np.mean(np.sum(pix**2, axis=-1)) * lam / len(mods)
    assert float(model.offset_penalty(cache)) == pytest.approx(expected, rel=1e-10)


def test_whole_model_gradient_with_the_penalty_matches_finite_differences():
    """d(loss + R)/dparams, and dR/dparams alone (the difference the penalty makes)."""
    lam = 2.0
    model = MiniDETR(dataclasses.replace(CFG, offset_l2=lam))
    plain = MiniDETR(CFG)
    params = _params(model)
    images, targets, dn = _problem(CFG)
    criterion = _criterion(CFG)
    outputs, cache = model.forward(params, images, denoising=dn)
    losses, ccache = criterion.forward(outputs, targets)
    output_grads = criterion.backward(ccache)
    grads = model.backward(output_grads, cache)
    grads_plain = plain.backward(output_grads, plain.forward(params, images, denoising=dn)[1])
    detached, matches = cache.detached, ccache.matches

    def objective(key, with_loss):
        def f(value):
            trial = {**params, key: value}
            out, c = model.forward(trial, images, denoising=dn, detached=detached)
            r = float(model.offset_penalty(c))
            if not with_loss:
                return r
            return float(criterion.forward(out, targets, matches=matches)[0]["loss"]) + r

        return f

    rng = np.random.default_rng(7)
    for with_loss in (True, False):
        errors = {}
        for key, value in params.items():
            analytic = grads[key] if with_loss else grads[key] - grads_plain[key]
            idx = rng.choice(value.size, size=min(2, value.size), replace=False)
            numeric = numerical_gradient(objective(key, with_loss), value, indices=idx)
            diff = np.abs(numeric.reshape(-1)[idx] - analytic.reshape(-1)[idx])
            errors[key] = float(diff.max() / max(np.abs(analytic).max(), 1e-6))
        worst = max(errors, key=errors.get)
        assert errors[worst] < 1e-5, f"{worst} (with loss {with_loss}): {errors[worst]:.2e}"
    dr = {k: grads[k] - grads_plain[k] for k in params}
    # R reaches the offset projections of every layer and, through the queries, the backbone
    assert all(np.any(dr[k] != 0) for k in params if k.endswith("sampling_offsets.weight"))
    assert any(np.any(dr[k] != 0) for k in params if k.startswith("backbone."))
    # nothing downstream of the last layer's offsets reads its weights, values or output
    last = f"decoder.layers.{CFG.num_decoder_layers - 1}.cross_attn."
    downstream = [last + n for n in ("attention_weights", "value_proj", "output_proj")]
    assert not any(np.any(dr[k] != 0) for k in params if k.startswith(tuple(downstream)))


def test_penalty_reaches_learned_anchor_sizes():
    """Without two-stage the reference boxes are learned anchors, and their (w, h) scale R."""
    cfg = dataclasses.replace(CFG, two_stage=False, offset_l2=2.0)
    model = MiniDETR(cfg)
    params = _params(model)
    images, _, dn = _problem(cfg)
    _, cache = model.forward(params, images, denoising=dn)
    grads = model.backward({}, cache)  # no loss on the outputs: the gradient of R alone

    def r_of_anchors(value):
        trial = {**params, "query.anchors": value}
        _, c = model.forward(trial, images, denoising=dn, detached=cache.detached)
        return float(model.offset_penalty(c))

    anchors = params["query.anchors"]
    numeric = numerical_gradient(r_of_anchors, anchors)
    np.testing.assert_allclose(grads["query.anchors"], numeric, atol=1e-7 * np.abs(numeric).max())
    assert np.abs(numeric[:, 2:]).max() > 0  # the sizes, not only through the refined boxes


def _arrays(tree) -> list:
    """Every array in a nest of dicts, lists and tuples, in order."""
    if isinstance(tree, dict):
        return [a for k in sorted(tree) for a in _arrays(tree[k])]
    if isinstance(tree, (list, tuple)):
        return [a for t in tree for a in _arrays(t)]
    return [tree] if isinstance(tree, np.ndarray) else []


def test_zero_weight_changes_nothing():
    images, targets, dn = _problem(CFG)
    zero = MiniDETR(dataclasses.replace(CFG, offset_l2=0.0))
    on = MiniDETR(dataclasses.replace(CFG, offset_l2=1.0))
    params = _params(zero)
    criterion = _criterion(CFG)
    out0, cache0 = zero.forward(params, images, denoising=dn)
    out1, cache1 = on.forward(params, images, denoising=dn)
    # the penalty never enters the predictions: the forward is the same either way
    arrays0, arrays1 = _arrays(out0.to_dict()), _arrays(out1.to_dict())
    assert len(arrays0) == len(arrays1) > 0
    for a, b in zip(arrays0, arrays1, strict=True):
        np.testing.assert_array_equal(a, b)
    assert zero.offset_penalty(cache0) is None and float(on.offset_penalty(cache1)) > 0
    losses, ccache = criterion.forward(out0, targets)
    grads0 = zero.backward(criterion.backward(ccache), cache0)
    grads_default = MiniDETR(CFG).backward(criterion.backward(ccache), cache0)
    for k in params:
        np.testing.assert_array_equal(grads0[k], grads_default[k])
    # a training step with offset_l2 = 0 logs no penalty and the same numbers as the default
    small = dict(preset="tiny-deformable", steps=2, batch_size=2, train_images=8, val_images=2)
    like = np.empty(0, dtype=np.float32)
    run0, run_default, run_on = (
        Run(TrainConfig(**small, offset_l2=0.0), like),
        Run(TrainConfig(**small), like),
        Run(TrainConfig(**small, offset_l2=1.0), like),
    )
    rec0, rec_default, rec_on = run0.train_step(), run_default.train_step(), run_on.train_step()
    assert rec0 == rec_default and "loss_offset" not in rec0
    # float32 run: the sum is rounded once
    assert rec_on["loss"] == pytest.approx(rec0["loss"] + rec_on["loss_offset"], rel=1e-6)
    for k in run0.params:
        np.testing.assert_array_equal(run0.params[k], run_default.params[k])


@pytest.mark.parametrize("bad", [-0.1, math.nan, math.inf])
def test_bad_weights_are_refused_by_name(bad):
    with pytest.raises(ValueError, match="offset_l2"):
        ModelConfig(variant="deformable", anchor_queries=True, offset_l2=bad)
    with pytest.raises(ValueError, match="offset_l2"):
        TrainConfig(offset_l2=bad)
    offsets, ref, normalizer = _offsets_problem(2)
    with pytest.raises(ValueError, match="weight"):
        offset_penalty_forward(offsets, ref, normalizer, bad)


def test_penalty_needs_a_deformable_model():
    with pytest.raises(ValueError, match="offset_l2.*deformable"):
        dataclasses.replace(PRESETS["tiny"], offset_l2=0.1)
    with pytest.raises(ValueError, match="offset_l2.*deformable"):
        TrainConfig(preset="standard", offset_l2=0.1)
    with pytest.raises(TypeError, match="offset_l2"):
        TrainConfig(offset_l2="0.1")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-1", "argument --offset-l2: must be a finite number >= 0, got -1"),
        ("nan", "argument --offset-l2: must be a finite number, got 'nan'"),
        ("x", "argument --offset-l2: must be a number"),
    ],
)
def test_cli_option_is_validated_on_one_line(value, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", f"--offset-l2={value}", "--quiet"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err.splitlines()[-1] and "Traceback" not in err


def test_cli_refuses_the_penalty_on_a_dense_preset(tmp_path, capsys):
    argv = ["train", "--preset", "standard", "--offset-l2", "0.1", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "offset_l2" in err and "deformable" in err and err.count("\n") == 0
    assert not (tmp_path / "run" / "checkpoint.npz").exists()
