"""A diverging run is caught, reported in one line, and leaves only good checkpoints behind."""

from __future__ import annotations

import math
import os
import signal
from dataclasses import replace

import numpy as np
import pytest
from test_train import LIKE
from test_train import TINY as TRAIN_TINY

from minidetr.train.checkpoint import load_checkpoint
from minidetr.train.loop import Interrupted, Run, TrainingError, train
from minidetr.train.optim import clip_grad_norm, global_norm

TINY = replace(TRAIN_TINY, preset="tiny")  # the end-to-end tests' tiny run, dense attention


# ---------------------------------------------------------------- the gradient norm


@pytest.mark.parametrize(
    ("dtype", "scale"), [(np.float32, 1e20), (np.float32, 1e37), (np.float64, 1e200)]
)
def test_global_norm_of_huge_finite_gradients_is_finite(dtype, scale):
    rng = np.random.default_rng(0)
    grads = {"a": rng.standard_normal((3, 5)), "b": rng.standard_normal(7), "c": np.zeros(2)}
    expected = math.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))  # float64 oracle
    huge = {k: (g * scale).astype(dtype) for k, g in grads.items()}
    norm = global_norm(huge)
    assert math.isfinite(norm)
    assert norm == pytest.approx(expected * scale, rel=1e-6)
    clipped, before = clip_grad_norm(huge, 0.1)
    assert before == norm
    assert global_norm(clipped) == pytest.approx(0.1, rel=1e-4)
    assert all(np.all(np.isfinite(g)) for g in clipped.values())


def test_global_norm_matches_numpy_and_flags_non_finite_entries(xp):
    rng = np.random.default_rng(1)
    grads = {"a": rng.standard_normal((4, 3)), "b": rng.standard_normal(5)}
    flat = np.concatenate([g.ravel() for g in grads.values()])
    assert global_norm({k: xp.asarray(g) for k, g in grads.items()}) == pytest.approx(
        float(np.linalg.norm(flat)), rel=1e-12
    )
    for bad in (np.inf, np.nan):
        poisoned = {**grads, "b": np.array([1.0, bad])}
        assert not math.isfinite(global_norm({k: xp.asarray(g) for k, g in poisoned.items()}))
    assert global_norm({}) == 0.0 and global_norm({"z": xp.zeros(3)}) == 0.0


def test_huge_finite_gradients_are_reported_not_a_stop_iteration(monkeypatch):
    run = Run(TINY, LIKE)
    run.train_step()  # one healthy step gives the gradient norm a reference
    backward = run.model.backward

    def exploding(output_grads, cache):
        return {k: g * np.float32(1e30) for k, g in backward(output_grads, cache).items()}

    monkeypatch.setattr(run.model, "backward", exploding)
    with pytest.raises(TrainingError, match=r"step 1: the gradient norm exploded to .*e\+3\d"):
        run.train_step()


# ---------------------------------------------------------------- divergence in a run


def test_a_learning_rate_far_too_large_is_named_and_nothing_bad_is_saved(tmp_path):
    cfg = replace(TINY, lr=1e3, checkpoint_every=1)
    with pytest.raises(TrainingError) as info:
        train(cfg, tmp_path, LIKE)
    err = info.value
    assert err.step == 0 and "parameters' norm exploded" in str(err)
    assert "learning rate 1000 is too large" in str(err)
    assert err.checkpoint is None and not (tmp_path / "checkpoint.npz").exists()


def _fault_at(monkeypatch, step: int, how: str) -> None:
    """Make training step ``step`` go wrong: a NaN or huge parameter, or an infinite gradient."""
    original = Run.train_step

    def faulty(self):
        if self.step == step:
            name = "class_head.bias"
            if how == "nan parameter":
                self.params[name] = self.params[name] * np.float32(np.nan)
            elif how == "huge parameters":
                self.params = {k: p * np.float32(1e4) for k, p in self.params.items()}
            else:
                backward = self.model.backward

                def poisoned(output_grads, cache):
                    grads = backward(output_grads, cache)
                    return {**grads, name: grads[name] + np.float32(np.inf)}

                self.model.backward = poisoned
        return original(self)

    monkeypatch.setattr(Run, "train_step", faulty)


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("nan parameter", r"must be finite"),
        ("infinite gradient", r"the gradient of class_head.bias is not finite"),
        ("huge parameters", r"the loss exploded to .*times its recent median"),
    ],
)
def test_fault_at_a_chosen_step_keeps_the_last_good_checkpoint(monkeypatch, tmp_path, how, message):
    _fault_at(monkeypatch, 4, how)
    with pytest.raises(TrainingError, match=rf"step 4: .*{message}.*likely cause") as info:
        train(TINY, tmp_path, LIKE)
    # the state at step 4 was due to be saved, but step 4 failed from it: step 2 is the last good
    assert info.value.checkpoint == (str(tmp_path / "checkpoint.npz"), 2)
    ck = load_checkpoint(tmp_path / "checkpoint.npz")
    assert ck.meta["step"] == 2 and len(ck.meta["history"]) == 2
    assert all(np.all(np.isfinite(p)) for p in ck.params.values())
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.npz"]


def test_a_fault_before_the_first_checkpoint_leaves_none(monkeypatch, tmp_path):
    _fault_at(monkeypatch, 1, "nan parameter")
    with pytest.raises(TrainingError, match="step 1: ") as info:
        train(TINY, tmp_path, LIKE)
    assert info.value.checkpoint is None and list(tmp_path.iterdir()) == []


def test_the_last_state_is_proved_before_it_is_saved(monkeypatch, tmp_path):
    _fault_at(monkeypatch, 6, "nan parameter")  # the trial step after the last one fails
    with pytest.raises(TrainingError, match="step 6: "):
        train(TINY, tmp_path, LIKE)
    assert load_checkpoint(tmp_path / "checkpoint.npz").meta["step"] == 4


# ---------------------------------------------------------------- interrupts and leftovers


def test_an_interrupt_names_the_checkpoint_it_wrote(tmp_path):
    def interrupt_at_3(run, record, seconds_per_step):
        if record["step"] == 3:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted) as info:
        train(TINY, tmp_path, LIKE, progress=interrupt_at_3)
    assert info.value.checkpoint == (str(tmp_path / "checkpoint.npz"), 3)
    assert load_checkpoint(tmp_path / "checkpoint.npz").meta["step"] == 3


def test_stale_temporary_files_are_removed_on_start_and_on_resume(tmp_path):
    stale = tmp_path / "checkpoint.npz.k3j2.tmp"
    stale.write_bytes(b"half a checkpoint")
    train(replace(TINY, steps=2), tmp_path, LIKE)
    assert not stale.exists()
    stale.write_bytes(b"half a checkpoint")
    train(replace(TINY, steps=3), tmp_path, LIKE, resume=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.npz"]


# ---------------------------------------------------------------- the config


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("steps", -3, "steps must be an integer >= 1, got -3"),
        ("batch_size", 0, "batch_size must be an integer >= 1, got 0"),
        ("seed", -1, "seed must be an integer >= 0, got -1"),
        ("lr", 0.0, "lr must be a finite number > 0, got 0.0"),
        ("lr", float("nan"), "lr must be a finite number > 0, got nan"),
        ("lr", float("inf"), "lr must be a finite number > 0, got inf"),
        ("checkpoint_every", 0, "checkpoint_every must be an integer >= 1"),
        ("eos_coef", 1.5, "eos_coef must be a finite number >= 0 and <= 1.0, got 1.5"),
    ],
)
def test_train_config_names_the_field_and_its_range(field, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        replace(TINY, **{field: value})


def test_train_config_refuses_the_wrong_type():
    with pytest.raises(TypeError, match="batch_size must be an integer, got 2.5"):
        replace(TINY, batch_size=2.5)
