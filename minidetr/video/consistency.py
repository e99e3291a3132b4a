"""Temporal consistency: a tracked object's predicted box should move as the object does.

Dimension letters: T frames, K tracked objects (matched identities), 4 box coordinates.

L = 1 / |P| sum_{(t, k) in P} || (p_{t+1,k} - p_{t,k}) - (g_{t+1,k} - g_{t,k}) ||^2, over the
pairs P of consecutive frames in which object k is matched in both. It penalises jitter that a
per-frame box loss cannot see: two boxes each 0.01 off in opposite directions cost little
apiece but make a 0.02 jump. Without ground truth (``target=None``) the velocity target is the
previous velocity, a smoothness prior: L = mean || p_{t+1} - 2 p_t + p_{t-1} ||^2 over triples.
The temporal smoothness terms of video detectors and trackers (e.g. Zhou et al., "Tracking
Objects as Points", 2020, which regresses the displacement between frames).
"""

from __future__ import annotations

from typing import NamedTuple

from minidetr.backend import Array, namespace
from minidetr.checks import check_floating, check_ndim


class ConsistencyCache(NamedTuple):
    residual: Array  # (T - 1, K, 4) or (T - 2, K, 4), zero where not counted
    count: int
    smooth: bool
    shape: tuple[int, ...]


def velocity_consistency_forward(
    pred: Array, target: Array | None, valid: Array
) -> tuple[Array, ConsistencyCache]:
    """L = mean over valid consecutive pairs of ||velocity(pred) - velocity(target)||^2.

    pred (T, K, 4) boxes of K tracked objects over T frames; target (T, K, 4) their matched
    ground truth, or None for the smoothness prior; valid (T, K) bool, object k matched in
    frame t. Returns a 0-d array (zero when no pair is valid).
    """
    check_floating(pred, "pred")
    check_ndim(pred, 3, "pred", "(T, K, 4)")
    if tuple(valid.shape) != tuple(pred.shape[:2]):
        raise ValueError(f"valid must have shape {tuple(pred.shape[:2])}, got {valid.shape}")
    xp = namespace(pred, target)
    if valid.dtype != xp.bool:
        raise TypeError(f"valid must be boolean, got {valid.dtype}")
    v_pred = pred[1:, ...] - pred[:-1, ...]  # (T-1, K, 4)
    pair = valid[1:, ...] & valid[:-1, ...]  # (T-1, K)
    if target is None:
        residual = v_pred[1:, ...] - v_pred[:-1, ...]  # (T-2, K, 4) acceleration
        pair = pair[1:, ...] & pair[:-1, ...]
    else:
        if tuple(target.shape) != tuple(pred.shape):
            raise ValueError(f"target must have shape {tuple(pred.shape)}, got {target.shape}")
        residual = v_pred - (target[1:, ...] - target[:-1, ...])  # (T-1, K, 4)
    residual = xp.where(pair[..., None], residual, xp.zeros_like(residual))
    count = int(xp.sum(xp.astype(pair, xp.int64)))
    loss = xp.sum(residual * residual) / max(count, 1)
    return loss, ConsistencyCache(residual, count, target is None, tuple(pred.shape))


def velocity_consistency_backward(dloss: Array, cache: ConsistencyCache) -> Array:
    """dL/dpred (T, K, 4); the target gets no gradient."""
    xp = namespace(cache.residual)
    dr = 2.0 * dloss * cache.residual / max(cache.count, 1)  # (T-1 or T-2, K, 4)
    zero = xp.zeros_like(dr[:1, ...])
    if cache.smooth:  # r_t = v_{t+1} - v_t, so dv = pad(dr, front) - pad(dr, back)
        dr = xp.concat([zero, dr], axis=0) - xp.concat([dr, zero], axis=0)  # (T-1, K, 4)
        zero = xp.zeros_like(dr[:1, ...])
    # v_t = p_{t+1} - p_t
    return xp.concat([zero, dr], axis=0) - xp.concat([dr, zero], axis=0)  # (T, K, 4)
