"""Attention entropy in training: logged from the step's caches, and penalised with its gradient.

The penalised loss of the whole tiny dense model is checked against float64 finite
differences; a zero weight is checked bit for bit against the plain training step.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from minidetr.backend import Rng
from minidetr.cli import main
from minidetr.commands.train import entropy_log
from minidetr.explain.capture import capture_attention
from minidetr.explain.rollout import attention_entropy
from minidetr.gradcheck import numerical_gradient
from minidetr.model import PRESETS, MiniDETR
from minidetr.model.resnet import is_frozen
from minidetr.setloss import check_targets
from minidetr.setloss.criterion import LossWeights, SetCriterion
from minidetr.setloss.matching import HungarianMatcher
from minidetr.train.attention_entropy import (
    adding_penalty_grads,
    attention_entropies,
    entropy_penalty,
)
from minidetr.train.loop import Run, TrainConfig
from minidetr.train.optim import adamw_step, clip_grad_norm, learning_rate

TOL = 1e-5
LIKE = np.zeros(1, dtype=np.float32)
TINY = TrainConfig(
    preset="tiny",
    steps=3,
    batch_size=2,
    val_images=4,
    train_images=16,
    checkpoint_every=2,
    warmup_steps=1,
    dn_groups=0,
)
# plain DETR at test size: dense encoder self-attention and decoder cross-attention
DETR = dataclasses.replace(
    PRESETS["tiny"], anchor_queries=False, box_refine=False, denoising=False, num_levels=1
)


@pytest.mark.parametrize("weight", [3.0, -3.0])
def test_penalised_loss_gradient_matches_finite_differences(weight):
    model = MiniDETR(DETR)
    r = np.random.default_rng(1)
    params = {
        k: v + 0.05 * r.standard_normal(v.shape)
        for k, v in model.init_params(0, dtype=np.float64).items()
    }
    images = r.standard_normal((2, 3, DETR.image_size, DETR.image_size))
    boxes = np.array([[0.3, 0.3, 0.2, 0.3], [0.6, 0.7, 0.3, 0.2]])
    targets = [
        {"labels": np.array([0, 2]), "boxes": boxes},
        {"labels": np.array([1]), "boxes": np.array([[0.5, 0.4, 0.4, 0.3]])},
    ]
    criterion = SetCriterion(
        DETR.num_classes, HungarianMatcher(), LossWeights(ce=1.0, bbox=5.0, giou=2.0)
    )
    outputs, cache = model.forward(params, images)
    _, ccache = criterion.forward(outputs, targets)
    penalty, extra = entropy_penalty(cache, weight)
    assert len(extra) == DETR.num_encoder_layers + DETR.num_decoder_layers  # the penalised maps
    with adding_penalty_grads(extra):
        grads = model.backward(criterion.backward(ccache), cache)
    plain = model.backward(criterion.backward(ccache), cache)
    detached, matches = cache.detached, ccache.matches

    def loss_with(key):
        def f(value):
            out, c = model.forward({**params, key: value}, images, detached=detached)
            loss = criterion.forward(out, targets, matches=matches)[0]["loss"]
            return float(loss + entropy_penalty(c, weight)[0])

        return f

    pick = np.random.default_rng(7)
    errors, moved = {}, 0
    for key, value in params.items():
        idx = pick.choice(value.size, size=min(2, value.size), replace=False)
        numeric = numerical_gradient(loss_with(key), value, indices=idx).reshape(-1)[idx]
        analytic = grads[key].reshape(-1)[idx]
        scale = max(np.abs(grads[key]).max(), 1e-6)
        errors[key] = float(np.max(np.abs(numeric - analytic)) / scale)
        moved += not np.allclose(grads[key], plain[key], rtol=1e-3, atol=1e-8)
    worst = max(errors, key=errors.get)
    assert errors[worst] < TOL, f"{worst}: relative error {errors[worst]:.2e}"
    assert moved > len(params) // 2  # the penalty's gradient reached most parameters


def _plain_step(run: Run) -> dict:
    """The training step without any attention term, from the library's public pieces."""
    cfg, model = run.cfg, run.model
    gen = np.random.default_rng([cfg.seed, run.step])
    images, targets = run.batch(gen)
    targets = check_targets(targets, model.config.num_classes)
    outputs, cache = model.forward(run.params, images, train=True, rng=Rng(gen))
    _, ccache = run.criterion.forward(outputs, targets)
    grads = model.backward(run.criterion.backward(ccache), cache)
    grads, _ = clip_grad_norm(grads, cfg.clip_norm)
    lr = learning_rate(run.step, cfg.steps, cfg.lr, cfg.warmup_steps, cfg.final_lr_ratio)
    rates = {k: lr * (cfg.backbone_lr_ratio if k.startswith("backbone.") else 1.0) for k in grads}
    rates.update({k: 0.0 for k in grads if is_frozen(k)})
    return adamw_step(run.params, grads, run.opt_state, run.opt_cfg, rates)[0]


def test_zero_weight_is_bit_for_bit_the_plain_step():
    run = Run(TINY, LIKE)
    for _ in range(2):  # step 2 logs its entropy: logging must not change a bit either
        want = _plain_step(run)
        run.train_step()
        assert all(np.array_equal(run.params[k], want[k]) for k in want)
    assert "attention_entropy" in run.history[1] and "loss_attention" not in run.history[1]
    penalised = Run(dataclasses.replace(TINY, attention_entropy=0.5), LIKE)
    penalised.train_step()
    assert not all(np.array_equal(penalised.params[k], want[k]) for k in want)
    assert penalised.history[0]["loss_attention"] != 0


@pytest.mark.parametrize("preset", ["tiny", "tiny-deformable"])
def test_entropy_is_logged_on_checkpoint_steps_from_the_caches(preset):
    run = Run(dataclasses.replace(TINY, preset=preset), LIKE)
    for _ in range(3):
        run.train_step()
    assert [("attention_entropy" in h) for h in run.history] == [False, True, True]
    logged = run.history[1]["attention_entropy"]
    heads = run.model.config.num_heads
    assert set(logged) >= {"encoder.layers.0.self_attn", "decoder.layers.1.cross_attn"}
    for name, values in logged.items():
        assert len(values) == heads and all(0 <= v for v in values), name
    # the per-head figure is the mean of the explain module's row entropies of that map
    images = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    _, cache = run.model.forward(run.params, images, train=False)
    ours = attention_entropies(cache)
    for name, m in capture_attention(cache).items():
        w = np.asarray(m.weights, dtype=np.float64)
        if m.kind == "dense":
            rows, n = attention_entropy(w).transpose(1, 0, 2).reshape(heads, -1), w.shape[-1]
        else:
            b, q = w.shape[:2]
            flat = w.reshape(b, q, heads, -1)
            rows, n = attention_entropy(flat).transpose(2, 0, 1).reshape(heads, -1), flat.shape[-1]
        np.testing.assert_allclose(ours[name], rows.mean(axis=1), rtol=1e-5, atol=1e-6)
        assert max(ours[name]) <= math.log(n) + 1e-5
    log = entropy_log(run.history)
    assert log["step"] == [2, 3]
    name = "encoder.layers.0.self_attn"
    assert log["per_layer"][name][0] == pytest.approx(np.mean(logged[name]), abs=1e-4)


def test_the_penalty_is_refused_where_attention_is_not_dense():
    with pytest.raises(ValueError, match="attention_entropy needs dense softmax attention"):
        TrainConfig(preset="deformable", attention_entropy=0.1)
    with pytest.raises(ValueError, match="attention_entropy"):
        TrainConfig(preset="standard", encoder_attention="linear", attention_entropy=0.1)
    with pytest.raises(ValueError, match="attention_entropy must be a finite number"):
        TrainConfig(preset="standard", attention_entropy=math.inf)
    TrainConfig(preset="deformable", attention_entropy=0.0)  # off: every preset


def test_cli_option_errors_in_one_line_and_writes_the_log(tmp_path, capsys):
    base = ["train", "--preset", "tiny", "--batch-size", "2", "--quiet", "--steps", "2"]
    with pytest.raises(SystemExit) as exit_:  # argparse refuses it
        main([*base, "--attention-entropy", "nan", "--out", str(tmp_path / "a")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "--attention-entropy" in err and "finite" in err and len(err.splitlines()) == 1
    bad = ["--preset", "tiny-deformable", "--attention-entropy", "0.1", "--out", str(tmp_path)]
    assert main([*base, *bad]) == 2
    err = capsys.readouterr().err.strip()
    assert "attention_entropy" in err and len(err.splitlines()) == 1
    out = tmp_path / "run"
    args = ["--attention-entropy", "-0.5", "--checkpoint-every", "1", "--out", str(out)]
    assert main([*base, *args]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["attention_entropy_weight"] == -0.5
    assert metrics["attention_entropy"]["step"] == [1, 2]
    assert len(metrics["attention_entropy"]["per_head"]["decoder.layers.0.cross_attn"]) == 2
