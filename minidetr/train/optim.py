"""AdamW, gradient-norm clipping and the learning-rate schedule, over flat ``name -> array`` dicts.

DETR trains with AdamW (lr 1e-4, backbone 1e-5, weight decay 1e-4) and clips the
global gradient norm at 0.1. Loshchilov and Hutter, "Decoupled Weight Decay
Regularization" (2019); Kingma and Ba, "Adam" (2015).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from minidetr.backend import Array, namespace, to_numpy
from minidetr.kernels.optim_cpu import adamw_update_segments, scaled_sum_of_squares
from minidetr.train.buffers import FlatBuffers, pooled_buffer

Params = dict[str, Array]


@dataclass(frozen=True)
class AdamWConfig:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 1e-4


class AdamWState(NamedTuple):
    step: int
    m: Params  # first moment of each gradient
    v: Params  # second moment
    flat: FlatBuffers | None = None  # set by adamw_step when m and v are views of buffers


def adamw_init(params: Params) -> AdamWState:
    """Zero moments shaped like ``params``."""
    return AdamWState(
        0,
        {k: namespace(p).zeros_like(p) for k, p in params.items()},
        {k: namespace(p).zeros_like(p) for k, p in params.items()},
    )


def adamw_step(
    params: Params,
    grads: Params,
    state: AdamWState,
    cfg: AdamWConfig,
    lr: dict[str, float] | float,
    grad_scale: float = 1.0,
) -> tuple[Params, AdamWState]:
    """theta <- theta - lr (m_hat / (sqrt(v_hat) + eps) + wd theta), PyTorch's AdamW.

    ``lr`` is one rate, or one per parameter name (for a slower backbone).
    ``grad_scale`` multiplies every gradient first: gradient clipping's factor (see
    :func:`clip_scale`), applied here so that no scaled copy of the gradients is made.
    Returns new dicts; the inputs are left untouched. NumPy arrays of one float dtype
    take one call of ``kernels.optim_cpu.adamw_update_segments`` over flat buffers,
    with the same results as the array code, bit for bit.
    """
    _check_grads(params, grads)
    return _adamw(params, grads, state, cfg, lr, grad_scale, _flat_inputs(params, grads, state))


def _adamw(
    params: Params,
    grads: Params,
    state: AdamWState,
    cfg: AdamWConfig,
    lr: dict[str, float] | float,
    grad_scale: float,
    flat: tuple | None,
) -> tuple[Params, AdamWState]:
    """The step, over the flat buffers ``flat`` (see :func:`_flat_inputs`), else array code."""
    b1, b2 = cfg.betas
    t = state.step + 1
    if flat is not None:
        return _adamw_flat(params, state, cfg, lr, grad_scale, t, flat)
    c1, c2 = 1.0 - b1**t, 1.0 - b2**t
    new_params, new_m, new_v = {}, {}, {}
    for name, p in params.items():
        g, m0, v0 = grads[name], state.m[name], state.v[name]
        rate = lr[name] if isinstance(lr, dict) else lr
        xp = namespace(p)
        if grad_scale != 1.0:
            g = g * grad_scale
        m = b1 * m0 + (1.0 - b1) * g
        v = b2 * v0 + (1.0 - b2) * (g * g)
        update = (m / c1) / (xp.sqrt(v / c2) + cfg.eps)
        new_params[name] = p * (1.0 - rate * cfg.weight_decay) - rate * update
        new_m[name], new_v[name] = m, v
    return new_params, AdamWState(t, new_m, new_v)


def clipped_adamw_step(
    params: Params,
    grads: Params,
    state: AdamWState,
    cfg: AdamWConfig,
    lr: dict[str, float] | float,
    max_norm: float,
) -> tuple[Params, AdamWState, float]:
    """:func:`global_norm`, :func:`clip_scale` and :func:`adamw_step` in one call.

    Returns (new params, new state, ||g|| before clipping). When the one-buffer path runs,
    the norm is taken over the flat gradient buffer the update reads: one pass instead of
    a call per parameter, the same norm to float64 rounding. A non-finite norm leaves the
    gradients unscaled, and the caller decides what to do with the update.
    """
    _check_grads(params, grads)
    flat = _flat_inputs(params, grads, state)
    norm = global_norm(grads if flat is None else {"all": flat[2]})
    return (*_adamw(params, grads, state, cfg, lr, clip_scale(norm, max_norm), flat), norm)


def _check_grads(params: Params, grads: Params) -> None:
    missing = params.keys() - grads.keys()
    if missing:
        raise ValueError(f"grads has no entry for parameters {sorted(missing)[:5]}")


def _flat_inputs(params: Params, grads: Params, state: AdamWState) -> tuple | None:
    """(offsets, p, g, m, v, pool) as flat buffers in ``params``' order, or None for the
    per-parameter path (anything but NumPy arrays of one float dtype and matching shapes).

    The gradients are copied into one buffer; the parameters and moments are read in
    place when they are the views the previous step returned, else copied too.
    """
    names = tuple(params)
    if not names or not _fused(params[names[0]]):
        return None
    dtype = params[names[0]].dtype
    for n in names:
        p, g = params[n], grads[n]
        if not (type(g) is np.ndarray and g.dtype == dtype and g.shape == p.shape):
            return None
    prev = state.flat
    if (
        _views_of(params, prev, "p")
        and prev.p.dtype == dtype
        and _views_of(state.m, prev, "m")
        and _views_of(state.v, prev, "v")
    ):
        offsets, p, m, v = prev.offsets, prev.p, prev.m, prev.v
    else:
        for n in names:
            if not _fused(params[n], state.m[n], state.v[n]) or params[n].dtype != dtype:
                return None
        sizes = [params[n].size for n in names]
        offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])  # (P + 1,)
        p, m, v = (
            np.concatenate([d[n].reshape(-1) for n in names]) for d in (params, state.m, state.v)
        )
    pool = prev.pool if prev is not None else []
    g = pooled_buffer(pool, int(offsets[-1]), dtype)
    np.concatenate([grads[n].reshape(-1) for n in names], out=g)  # (N,)
    return offsets, p, g, m, v, pool


def _views_of(arrays: Params, flat: FlatBuffers | None, which: str) -> bool:
    """Whether ``arrays`` are the views of buffer ``which`` ("p", "m" or "v") of ``flat``,
    in its order: what the step that made ``flat`` returned."""
    if flat is None or flat.names != tuple(arrays):
        return False
    base = getattr(flat, which)
    return all(arrays[n].base is base for n in flat.names)


def _adamw_flat(
    params: Params,
    state: AdamWState,
    cfg: AdamWConfig,
    lr: dict[str, float] | float,
    grad_scale: float,
    t: int,
    flat: tuple,
) -> tuple[Params, AdamWState]:
    """``adamw_step`` of every parameter in one call of ``adamw_update_segments``.

    Each parameter's constants are the per-parameter path's, rounded to the dtype the
    same way, so the two agree bit for bit. Returns views of three new flat buffers
    (the inputs stay untouched).
    """
    offsets, p, g, m, v, pool = flat
    names = tuple(params)
    b1, b2 = cfg.betas
    rates = np.array([lr[n] for n in names] if isinstance(lr, dict) else [lr] * len(names))
    consts = np.empty((len(names), 10))  # float64, rounded to the dtype once, below
    consts[:] = (b1, 1.0 - b1, b2, 1.0 - b2, 1.0 - b1**t, 1.0 - b2**t, cfg.eps, 0, 0, grad_scale)
    consts[:, 7] = 1.0 - rates * cfg.weight_decay
    consts[:, 8] = rates
    out = [pooled_buffer(pool, p.shape[0], p.dtype) for _ in range(3)]  # never p, m or v: in use
    adamw_update_segments(p, g, m, v, offsets, consts.astype(p.dtype), *out)
    views = [{}, {}, {}]
    for k, n in enumerate(names):
        lo, hi, shape = offsets[k], offsets[k + 1], params[n].shape
        for d, buf in zip(views, out):
            d[n] = buf[lo:hi].reshape(shape)
    return views[0], AdamWState(t, views[1], views[2], FlatBuffers(names, offsets, *out, pool))


def _fused(*arrays: Array) -> bool:
    """Whether the Numba loops take ``arrays``: NumPy arrays of one float dtype and shape."""
    first = arrays[0]
    if type(first) is not np.ndarray or first.dtype.char not in "fd":
        return False
    dtype, shape = first.dtype, first.shape
    for a in arrays[1:]:
        if type(a) is not np.ndarray or a.dtype != dtype or a.shape != shape:
            return False
    return True


def global_norm(grads: Params) -> float:
    """||g|| = sqrt(sum of squares of every gradient entry), without overflow; two host syncs.

    Each gradient is first divided by its largest magnitude a_k, so the sum of squares
    s_k of its scaled entries is at most its size; the norm is then
    A sqrt(sum_k (a_k / A)^2 s_k) with A = max_k a_k, in float64 on the host. Squaring
    in float32 instead overflows to inf once entries pass 1.8e19, while every entry is
    still finite. The result is non-finite exactly when some entry is. On NumPy
    arrays ``kernels.optim_cpu.scaled_sum_of_squares`` gives each (a_k, s_k) with
    the same meaning (a_k^2 s_k is the sum of squares), usually a_k = 1 in one pass.
    """
    peaks, sums = [], []
    host = []  # (a_k, s_k) from the Numba loop
    for g in grads.values():
        if g.size == 0:
            continue
        if _fused(g):
            host.append(scaled_sum_of_squares(g.reshape(-1)))
            continue
        xp = namespace(g)
        peak = xp.max(xp.abs(g))  # a_k, 0-d on the device
        usable = xp.isfinite(peak) & (peak > 0)  # else divide by 1: no 0 / 0 nor inf / inf
        safe = xp.where(usable, peak, xp.ones_like(peak))
        peaks.append(xp.astype(peak, g.dtype))
        sums.append(xp.sum((g / safe) * (g / safe)))  # s_k <= g.size
    if not peaks and not host:
        return 0.0
    a = np.array([h[0] for h in host], dtype=np.float64)
    s = np.array([h[1] for h in host], dtype=np.float64)
    if peaks:
        xp = namespace(*peaks)
        a_dev = to_numpy(xp.stack([xp.astype(p, xp.float64) for p in peaks])).astype(np.float64)
        s_dev = to_numpy(xp.stack([xp.astype(q, xp.float64) for q in sums])).astype(np.float64)
        a, s = np.concatenate([a, a_dev]), np.concatenate([s, s_dev])
    with np.errstate(invalid="ignore", over="ignore"):
        top = float(np.max(a))  # the sum is taken relative to the largest entry, too
        if not 0.0 < top < math.inf:
            return 0.0 if top == 0.0 else float(top + np.sum(s))  # 0, or inf / nan as found
        return top * float(np.sqrt(np.sum((a / top) ** 2 * s)))


def params_norm(params: Params, state: AdamWState) -> float:
    """``global_norm(params)``, over AdamW's flat parameter buffer when ``params`` are the
    views the last step returned (one pass instead of a call per parameter)."""
    if _views_of(params, state.flat, "p"):
        return global_norm({"all": state.flat.p})
    return global_norm(params)


def clip_scale(norm: float, max_norm: float) -> float:
    """The factor min(1, max_norm / (||g|| + 1e-6)) that clipping at ``max_norm`` applies.

    1 when ``max_norm`` <= 0 (no clipping), when the norm is within it, or when the norm
    is not finite (the gradients are left as they are, for the caller to report).
    """
    if max_norm <= 0 or norm <= max_norm or not math.isfinite(norm):
        return 1.0
    return max_norm / (norm + 1e-6)


def clip_grad_norm(grads: Params, max_norm: float) -> tuple[Params, float]:
    """Scale all gradients by :func:`clip_scale`; returns (grads, ||g|| before clipping).

    The training loop passes the scale to :func:`adamw_step` instead, which applies it
    without writing scaled copies.
    """
    norm = global_norm(grads)
    scale = clip_scale(norm, max_norm)
    if scale == 1.0:
        return grads, norm
    return {k: g * scale for k, g in grads.items()}, norm


def learning_rate(
    step: int, total_steps: int, base_lr: float, warmup: int, final_ratio: float
) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``final_ratio * base_lr``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return base_lr * (
        final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    )
