"""Attention over a table of keys per query: the engine of windowed and hierarchical attention.

out_i = sum_r p_ir v_{n(i, r)},  p_i = softmax_r(q_i . k_{n(i, r)} / sqrt(d) + b_ir),

where n(i, r) is the r-th key of query i's neighbour table (``index``, -1 marks an
empty slot) and b an optional fixed bias. Only the Lq x K listed pairs are scored:
O(Lq K d) time and memory instead of O(Lq Lk d), with the same result as dense
attention under the mask "j is listed for i" (tested).

On NumPy float32/float64 the loops in ``kernels/gather_attention_cpu.py`` run; any
other array runs the array-API reference below, which gathers (Lq, K, d) blocks.

Dimension letters: G the leading dimensions (batch, heads) flattened, Lq queries,
Lk keys, K table width, d head width, dv value width.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from minidetr.attention.linear import _check_qkv
from minidetr.backend import Array, compiled_kernel, device, index_add, namespace, to_numpy
from minidetr.checks import check_floating, check_integral


class GatheredCache(NamedTuple):
    q: Array  # (G, Lq, d)
    k: Array  # (G, Lk, d)
    v: Array  # (G, Lk, dv)
    index: Array  # (G, Lq, K) or (1, Lq, K), -1 = empty slot
    p: Array  # (G, Lq, K) weights, 0 on empty slots
    scale: float
    lead: tuple[int, ...]  # the leading shape of q


def _table(t: Array, name: str, lead: tuple[int, ...], g: int, lq: int) -> Array:
    """``t`` (Lq, K) or (*lead, Lq, K) as (1 or G, Lq, K)."""
    xp = namespace(t)
    if t.ndim == 2 and t.shape[0] == lq:
        return t[None, ...]
    if tuple(t.shape[:-1]) == (*lead, lq):
        return xp.reshape(t, (g, lq, t.shape[-1]))
    raise ValueError(f"{name} must have shape (Lq, K) or {(*lead, lq)} + (K,), got {t.shape}")


def _gather(x: Array, flat: Array, shape: tuple[int, ...]) -> Array:
    """Rows ``flat`` of x (G, L, c) (flat index g L + j), shaped ``shape`` + (c,)."""
    xp = namespace(x)
    rows = xp.reshape(x, (x.shape[0] * x.shape[1], x.shape[2]))  # (G L, c)
    return xp.reshape(xp.take(rows, xp.reshape(flat, (-1,)), axis=0), (*shape, x.shape[2]))


def _flat_index(index: Array, g: int, lk: int) -> tuple[Array, Array]:
    """(flat, valid): g Lk + j for every listed key (0 on empty slots), and the listing."""
    xp = namespace(index)
    valid = index >= 0  # (1 or G, Lq, K)
    offset = xp.arange(g, dtype=index.dtype, device=device(index))[:, None, None] * lk
    flat = xp.where(valid, index, xp.zeros_like(index)) + offset  # (G, Lq, K)
    return flat, xp.broadcast_to(valid, flat.shape)


def gathered_attention_forward(
    q: Array, k: Array, v: Array, index: Array, bias: Array | None = None
) -> tuple[Array, GatheredCache]:
    """out_i = softmax_r(q_i . k_n(i,r) / sqrt(d) + b_ir) weighted sum of v_n(i,r).

    q (..., Lq, d), k (..., Lk, d), v (..., Lk, dv) with the same leading dimensions;
    ``index`` integer (Lq, K) shared by the leading dimensions or (..., Lq, K), values in
    [0, Lk) or -1 for an empty slot; ``bias`` float like ``index`` or None (it gets no
    gradient). A query with no listed key outputs 0. Returns (..., Lq, dv).
    """
    _check_qkv(q, k, v, False)
    if q.shape[:-2] != k.shape[:-2] or k.shape[:-2] != v.shape[:-2]:
        raise ValueError(f"q, k, v need equal leading dimensions, got {q.shape}, {k.shape}")
    check_integral(index, "index")
    xp = namespace(q, k, v, index)
    lead, (lq, d), lk = tuple(q.shape[:-2]), q.shape[-2:], k.shape[-2]
    g = math.prod(lead)
    idx = _table(index, "index", lead, g, lq)  # (1 or G, Lq, K)
    if bool(xp.any(idx >= lk)) or bool(xp.any(idx < -1)):
        raise ValueError(f"index entries must lie in [0, {lk}) or be -1 (empty)")
    if bias is not None:
        check_floating(bias, "bias")
        bias = xp.broadcast_to(_table(bias, "bias", lead, g, lq), (g, lq, idx.shape[-1]))
    qf = xp.reshape(q, (g, lq, d))
    kf = xp.reshape(k, (g, lk, d))
    vf = xp.reshape(v, (g, lk, v.shape[-1]))
    scale = 1.0 / math.sqrt(d)
    if compiled_kernel(qf, kf, vf, bias) == "numba":
        from minidetr.kernels import gather_attention_cpu as kern  # noqa: PLC0415

        out, p = kern.forward(qf, kf, vf, to_numpy(idx), bias, scale)
    else:
        out, p = _forward_reference(qf, kf, vf, idx, bias, scale)
    cache = GatheredCache(qf, kf, vf, idx, p, scale, lead)
    return xp.reshape(out, (*lead, lq, v.shape[-1])), cache


def _forward_reference(qf, kf, vf, idx, bias, scale):
    xp = namespace(qf)
    g, lq, kw = qf.shape[0], qf.shape[1], idx.shape[-1]
    flat, valid = _flat_index(idx, g, kf.shape[1])
    kg = _gather(kf, flat, (g, lq, kw))  # (G, Lq, K, d)
    vg = _gather(vf, flat, (g, lq, kw))  # (G, Lq, K, dv)
    s = xp.sum(qf[:, :, None, :] * kg, axis=-1) * scale  # (G, Lq, K)
    if bias is not None:
        s = s + bias
    neg_inf = xp.asarray(-math.inf, dtype=s.dtype, device=device(s))
    m = xp.max(xp.where(valid, s, neg_inf), axis=-1, keepdims=True)
    m = xp.where(xp.isfinite(m), m, xp.zeros_like(m))  # rows with no listed key
    e = xp.exp(xp.where(valid, s - m, neg_inf))  # (G, Lq, K), exactly 0 on empty slots
    den = xp.sum(e, axis=-1, keepdims=True)
    p = e / xp.where(den > 0, den, xp.ones_like(den))
    return xp.sum(p[..., None] * vg, axis=-2), p  # (G, Lq, dv), (G, Lq, K)


def gathered_attention_backward(dout: Array, cache: GatheredCache) -> tuple[Array, Array, Array]:
    """Gradients (dq, dk, dv); a key collects the gradient of every query that lists it."""
    xp = namespace(dout)
    q, k, v, idx, p = cache.q, cache.k, cache.v, cache.index, cache.p
    (g, lq, d), lk, dv_width = q.shape, k.shape[1], v.shape[2]
    do = xp.reshape(dout, (g, lq, dv_width))
    if compiled_kernel(do, q, k, v, p) == "numba":
        from minidetr.kernels import gather_attention_cpu as kern  # noqa: PLC0415

        dq, dk, dv = kern.backward(do, q, k, v, to_numpy(idx), p, cache.scale)
    else:
        flat, _ = _flat_index(idx, g, lk)
        kw = idx.shape[-1]
        kg = _gather(k, flat, (g, lq, kw))  # (G, Lq, K, d)
        vg = _gather(v, flat, (g, lq, kw))  # (G, Lq, K, dv)
        dp = xp.sum(do[:, :, None, :] * vg, axis=-1)  # (G, Lq, K)
        ds = p * (dp - xp.sum(dp * p, axis=-1, keepdims=True)) * cache.scale  # softmax backward
        dq = xp.sum(ds[..., None] * kg, axis=-2)  # (G, Lq, d)
        dkg = ds[..., None] * q[:, :, None, :]  # (G, Lq, K, d)
        dvg = p[..., None] * do[:, :, None, :]  # (G, Lq, K, dv)
        rows = xp.reshape(flat, (-1,))
        dk = index_add(xp.zeros((g * lk, d), dtype=k.dtype, device=device(k)), rows,
                       xp.reshape(dkg, (-1, d)))  # fmt: skip
        dv = index_add(xp.zeros((g * lk, dv_width), dtype=v.dtype, device=device(v)), rows,
                       xp.reshape(dvg, (-1, dv_width)))  # fmt: skip
    lead = cache.lead
    return (
        xp.reshape(dq, (*lead, lq, d)),
        xp.reshape(dk, (*lead, lk, d)),
        xp.reshape(dv, (*lead, lk, dv_width)),
    )
