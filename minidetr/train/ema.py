"""An exponential moving average of the weights, the model that is evaluated and shipped.

avg_t = sum_{s <= t} d^(t-s) (1 - d) theta_s / (1 - d^t): every step's weights, the
recent ones weighted most, normalised like Adam's bias-corrected moments, so that
avg_1 = theta_1 and no warm-up of the decay is needed. Written as a running update,
avg_t = avg_{t-1} + (1 - d) / (1 - d^t) * (theta_t - avg_{t-1}).

Averaging the last few hundred iterates removes most of the noise the last steps of
SGD leave in the weights (Polyak and Juditsky, "Acceleration of Stochastic
Approximation by Averaging", 1992; the weight EMA of Mean Teacher, timm and DINO's
detectors). Training itself never reads the average: the run is the same with or
without it, only what is evaluated changes.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from minidetr.backend import Array

Params = dict[str, Array]


class EMAState(NamedTuple):
    step: int  # t, how many weights have been averaged
    params: Params  # avg_t, shaped like the model's parameters


def check_decay(decay: float) -> float:
    """``decay`` if it is a number in [0, 1); else a ``ValueError``/``TypeError`` naming it."""
    if isinstance(decay, bool) or not isinstance(decay, (int, float)):
        raise TypeError(f"ema_decay must be a number, got {decay!r}")
    if not (math.isfinite(decay) and 0.0 <= decay < 1.0):
        raise ValueError(f"ema_decay must be in [0, 1), got {decay!r}")
    return float(decay)


def ema_init(params: Params) -> EMAState:
    """No weights averaged yet: the first update copies ``params``."""
    return EMAState(0, dict(params))


def ema_update(state: EMAState, params: Params, decay: float) -> EMAState:
    """avg_t = avg_{t-1} + w_t (theta_t - avg_{t-1}), w_t = (1 - d) / (1 - d^t).

    state: the average of the t - 1 earlier weights; params: theta_t, the same names and
    shapes. Returns the new state; the inputs are left untouched.
    """
    decay = check_decay(decay)
    missing = state.params.keys() ^ params.keys()
    if missing:
        raise ValueError(f"params and the average differ in {sorted(missing)[:5]}")
    t = state.step + 1
    w = (1.0 - decay) / (1.0 - decay**t)  # 1 at t = 1, towards 1 - d as t grows
    avg = {k: a + w * (params[k] - a) for k, a in state.params.items()}
    return EMAState(t, avg)
