"""The weights' moving average: the closed form, bounds, training left unchanged, exact resume."""

from __future__ import annotations

import os
import signal
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_train import LIKE
from test_train import TINY as TRAIN_TINY

from minidetr.inference import load_run
from minidetr.train.checkpoint import load_checkpoint
from minidetr.train.ema import EMAState, check_decay, ema_init, ema_update
from minidetr.train.loop import TrainConfig, train

TINY = replace(TRAIN_TINY, ema_decay=0.9)  # the end-to-end tests' tiny run, averaged


def average_of(thetas: list[np.ndarray], decay: float) -> np.ndarray:
    """The oracle: sum_s d^(t-s) (1 - d) theta_s / (1 - d^t), summed in float64."""
    t = len(thetas)
    weights = np.array([decay ** (t - s) * (1 - decay) for s in range(1, t + 1)])
    return np.tensordot(weights, np.stack(thetas), axes=1) / (1 - decay**t)


def run_average(thetas: list[np.ndarray], decay: float) -> EMAState:
    state = ema_init({"w": thetas[0]})
    for theta in thetas:
        state = ema_update(state, {"w": theta}, decay)
    return state


def test_the_running_update_is_the_normalised_weighted_sum():
    rng = np.random.default_rng(0)
    thetas = [rng.normal(size=(3, 4)) for _ in range(30)]
    for decay in (0.0, 0.5, 0.9, 0.998):
        state = run_average(thetas, decay)
        assert state.step == 30
        np.testing.assert_allclose(state.params["w"], average_of(thetas, decay), rtol=1e-10)


@given(
    st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=20),
    st.floats(0.0, 0.999),
)
def test_the_average_stays_between_the_extremes_and_starts_at_the_first(values, decay):
    thetas = [np.array([v]) for v in values]
    avg = run_average(thetas, decay).params["w"][0]
    span = max(values) - min(values)
    assert min(values) - 1e-9 * span <= avg <= max(values) + 1e-9 * span  # a convex combination
    assert run_average(thetas[:1], decay).params["w"][0] == values[0]  # avg_1 = theta_1
    constant = run_average([np.array([values[0]])] * len(values), decay).params["w"][0]
    assert constant == pytest.approx(values[0], rel=1e-12, abs=1e-12)


def test_bad_decays_and_mismatched_weights_are_named():
    for bad in (1.0, -0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="ema_decay"):
            check_decay(bad)
        with pytest.raises(ValueError, match="ema_decay"):
            TrainConfig(ema_decay=bad)
    with pytest.raises(TypeError, match="ema_decay"):
        check_decay("0.99")
    with pytest.raises(ValueError, match="differ in"):
        ema_update(ema_init({"a": np.zeros(2)}), {"b": np.zeros(2)}, 0.9)


def test_training_is_the_same_with_or_without_the_average(tmp_path):
    with_avg = train(replace(TINY, steps=3), tmp_path / "a", LIKE)
    without = train(replace(TINY, steps=3, ema_decay=0.0), tmp_path / "b", LIKE)
    assert without.ema is None and with_avg.ema.step == 3
    for name, p in without.params.items():
        np.testing.assert_array_equal(with_avg.params[name], p, err_msg=name)
    avg, trained = with_avg.ema.params, with_avg.params
    assert any(not np.array_equal(avg[k], trained[k]) for k in trained)  # the average lags
    assert with_avg.eval_params is avg and without.eval_params is without.params


def test_interrupted_and_resumed_average_equals_an_uninterrupted_one(tmp_path):
    whole = train(TINY, tmp_path / "whole", LIKE)

    def interrupt_at_3(run, record, seconds_per_step):
        if record["step"] == 3:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        train(TINY, tmp_path / "split", LIKE, progress=interrupt_at_3)
    saved = load_checkpoint(tmp_path / "split" / "checkpoint.npz")
    assert saved.ema is not None and saved.ema.step == 3
    resumed = train(TINY, tmp_path / "split", LIKE, resume=True)
    assert resumed.ema.step == whole.ema.step == 6
    for name, a in whole.ema.params.items():
        np.testing.assert_array_equal(resumed.ema.params[name], a, err_msg=name)


def test_a_saved_run_is_loaded_as_its_average(tmp_path):
    run = train(replace(TINY, steps=2), tmp_path, LIKE)
    loaded = load_run(str(tmp_path / "checkpoint.npz"), "cpu")
    for name, a in run.ema.params.items():
        np.testing.assert_array_equal(loaded.params[name], a, err_msg=name)
