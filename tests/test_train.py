"""Training end to end on the tiny presets: exact resume, clear failures, no NumPy leaks."""

from __future__ import annotations

import os
import signal
from dataclasses import replace

import numpy as np
import pytest

from minidetr.backend import kind
from minidetr.train.checkpoint import load_checkpoint, save_checkpoint
from minidetr.train.loop import Run, TrainConfig, TrainingError, train

TINY = TrainConfig(
    preset="tiny-deformable",
    steps=6,
    batch_size=2,
    val_images=4,
    train_images=64,
    checkpoint_every=2,
    warmup_steps=2,
)
LIKE = np.zeros(1, dtype=np.float32)


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tmp_path):
    (tmp_path / "whole").mkdir()
    whole = train(TINY, tmp_path / "whole", LIKE)

    def interrupt_at_3(run, record, seconds_per_step):
        if record["step"] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does

    (tmp_path / "split").mkdir()
    with pytest.raises(KeyboardInterrupt):
        train(TINY, tmp_path / "split", LIKE, progress=interrupt_at_3)
    assert load_checkpoint(tmp_path / "split" / "checkpoint.npz").meta["step"] == 3
    resumed = train(TINY, tmp_path / "split", LIKE, resume=True)
    assert resumed.step == whole.step == 6
    for name, p in whole.params.items():
        np.testing.assert_array_equal(resumed.params[name], p, err_msg=name)
    for name, m in whole.opt_state.m.items():
        np.testing.assert_array_equal(resumed.opt_state.m[name], m, err_msg=name)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history]


def test_resume_refuses_another_config(tmp_path):
    train(replace(TINY, steps=2), tmp_path, LIKE)
    with pytest.raises(ValueError, match=r"another training config \(\['lr'\]\)"):
        train(replace(TINY, lr=0.5), tmp_path, LIKE, resume=True)


def test_resume_accepts_a_run_saved_before_later_fields_existed(tmp_path):
    train(replace(TINY, steps=2), tmp_path, LIKE)
    path = tmp_path / "checkpoint.npz"
    ck = load_checkpoint(path)
    meta = dict(ck.meta)
    for later in ("offset_l2", "attention_entropy", "encoder_attention"):  # off by default
        meta["train_config"] = {k: v for k, v in meta["train_config"].items() if k != later}
    save_checkpoint(path, ck.params, ck.opt_state, meta)
    assert train(replace(TINY, steps=3), tmp_path, LIKE, resume=True).step == 3
    with pytest.raises(ValueError, match=r"another training config \(\['offset_l2'\]\)"):
        train(replace(TINY, steps=4, offset_l2=0.1), tmp_path, LIKE, resume=True)


def test_non_finite_values_stop_the_run_and_keep_the_last_good_checkpoint(tmp_path):
    name = "backbone.stages.0.conv.weight"

    def break_after_3(run, record, seconds_per_step):
        if record["step"] == 3:  # after step 3 has proved the step-2 state and saved it
            run.params[name] = run.params[name] * np.float32(np.nan)

    with pytest.raises(TrainingError, match=r"step 3: .* must be finite") as info:
        train(TINY, tmp_path, LIKE, progress=break_after_3)
    assert info.value.checkpoint == (str(tmp_path / "checkpoint.npz"), 2)
    ck = load_checkpoint(tmp_path / "checkpoint.npz")
    assert ck.meta["step"] == 2
    assert all(np.all(np.isfinite(p)) for p in ck.params.values())


def test_non_finite_gradient_is_named(monkeypatch):
    run = Run(TINY, LIKE)
    backward = run.model.backward

    def poisoned(output_grads, cache):
        grads = backward(output_grads, cache)
        grads["class_head.bias"] = grads["class_head.bias"] + np.float32(np.inf)
        return grads

    monkeypatch.setattr(run.model, "backward", poisoned)
    with pytest.raises(TrainingError, match="step 0: the gradient of class_head.bias"):
        run.train_step()


def test_training_steps_stay_in_the_strict_namespace():
    xs = pytest.importorskip("array_api_strict")
    cfg = replace(TINY, steps=2)
    run = Run(cfg, xs.zeros(1, dtype=xs.float32))
    record = run.train_step()
    run.train_step()
    assert np.isfinite(record["loss"])
    leaked = [k for k, v in run.params.items() if kind(v) != "generic"]
    leaked += [k for k, v in run.opt_state.v.items() if kind(v) != "generic"]
    assert not leaked


def test_sixty_steps_lower_the_loss():
    run = Run(replace(TINY, steps=60, batch_size=4, lr=5e-3), LIKE)
    losses = [run.train_step()["loss"] for _ in range(60)]
    assert np.mean(losses[-10:]) < 0.75 * np.mean(losses[:10])


def test_without_aux_loss_only_the_last_layers_are_weighted():
    run = Run(replace(TINY, aux_loss=False), LIKE)
    w, n = run.criterion.weights, run.model.config.num_decoder_layers
    assert w.layer("main", 0, n) == (0.0, 0.0, 0.0) and w.layer("dn", 0, n) == (0.0, 0.0, 0.0)
    last = (TINY.weight_class, TINY.weight_bbox, TINY.weight_giou)
    assert w.layer("main", n - 1, n) == last and w.layer("dn", n - 1, n) == last
    assert w.layer("enc", 0, 1) == last  # two-stage proposals are not aux layers
    calls = []
    match = run.criterion.matcher.match
    run.criterion.matcher.match = lambda pred, targets: calls.append(1) or match(pred, targets)
    run.train_step()  # the earlier layers are not even matched
    assert len(calls) == 1 + run.model.config.two_stage
