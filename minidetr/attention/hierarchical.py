"""Hierarchical (coarse-to-fine) attention over an H x W grid of keys.

1. Pool the keys and values over c x c cells: C = (H / c)(W / c) coarse tokens.
2. Score every query against every coarse key (global, O(Lq C d)) and keep the
   ``keep`` best cells of each query.
3. One softmax over the fine keys of the kept cells and the coarse tokens of the
   others, a coarse token standing for its c^2 keys (score + log c^2, its value the
   cell's mean value).

With keep = C this is dense attention exactly; with keep = 0 it is attention over the
pooled grid; in between each query scores C - keep + keep c^2 keys. The cell
selection is piecewise constant (it gets no gradient); everything else is
differentiated, the pooling included. After Tang et al., "QuadTree Attention for
Vision Transformers" (ICLR 2022), one level deep, with Zhu and Soricut's
"H-Transformer-1D" (2021) idea of summarising far keys.

Dimension letters: Lq queries, Lk = H W keys (row-major grid), c cell side,
C cells, d head width, dv value width.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from minidetr.attention.gathered import (
    GatheredCache,
    gathered_attention_backward,
    gathered_attention_forward,
)
from minidetr.attention.linear import _check_qkv
from minidetr.attention.sparse import _positive
from minidetr.backend import Array, device, namespace


def pool_cells(x: Array, grid: tuple[int, int], cell: int) -> Array:
    """Mean of x (..., H W, c') over c x c cells -> (..., C, c'), cells row-major."""
    xp = namespace(x)
    (h, w), lead, width = grid, tuple(x.shape[:-2]), x.shape[-1]
    blocks = xp.reshape(x, (*lead, h // cell, cell, w // cell, cell, width))
    pooled = xp.mean(xp.mean(blocks, axis=-2), axis=-3)  # (..., H/c, W/c, c')
    return xp.reshape(pooled, (*lead, (h // cell) * (w // cell), width))


def unpool_cells(dpooled: Array, grid: tuple[int, int], cell: int) -> Array:
    """Backward of :func:`pool_cells`: each key receives 1 / c^2 of its cell's gradient."""
    xp = namespace(dpooled)
    (h, w), lead, width = grid, tuple(dpooled.shape[:-2]), dpooled.shape[-1]
    g = xp.reshape(dpooled, (*lead, h // cell, 1, w // cell, 1, width)) / (cell * cell)
    g = xp.broadcast_to(g, (*lead, h // cell, cell, w // cell, cell, width))
    return xp.reshape(g, (*lead, h * w, width))


def cell_tokens(grid: tuple[int, int], cell: int, *, like: Array | None = None) -> Array:
    """(C, c^2) the row-major token indices of each cell."""
    xp = namespace(np.empty(0) if like is None else like)  # NumPy by default
    dev = None if like is None else device(like)
    h, w = grid
    cy = xp.arange(h // cell, device=dev)[:, None, None, None]
    cx = xp.arange(w // cell, device=dev)[None, :, None, None]
    a = xp.arange(cell, device=dev)[None, None, :, None]
    b = xp.arange(cell, device=dev)[None, None, None, :]
    tokens = (cy * cell + a) * w + cx * cell + b  # (H/c, W/c, c, c)
    return xp.reshape(tokens, ((h // cell) * (w // cell), cell * cell))


class HierarchicalCache(NamedTuple):
    grid: tuple[int, int]
    cell: int
    lk: int
    attention: GatheredCache  # over the keys followed by the C coarse tokens


def hierarchical_attention_forward(
    q: Array, k: Array, v: Array, *, grid: tuple[int, int], cell: int, keep: int
) -> tuple[Array, HierarchicalCache]:
    """out_i = softmax over {fine keys of i's top ``keep`` cells, coarse tokens of the rest}.

    q (..., Lq, d), k (..., H W, d), v (..., H W, dv), equal leading dimensions;
    ``grid=(H, W)`` with H and W multiples of ``cell``; 0 <= ``keep`` <= C. Cells are
    ranked by q . pooled key (ties: lower cell index first). Returns (..., Lq, dv).
    """
    _check_qkv(q, k, v, False)
    h, w = grid
    _positive(h, "grid height")
    _positive(w, "grid width")
    _positive(cell, "cell")
    if h % cell or w % cell:
        raise ValueError(f"cell {cell} must divide the grid {grid}")
    if k.shape[-2] != h * w:
        raise ValueError(f"k must have H W = {h * w} keys for grid {grid}, got {k.shape}")
    n_cells = (h // cell) * (w // cell)
    if isinstance(keep, bool) or not isinstance(keep, int) or not 0 <= keep <= n_cells:
        raise ValueError(f"keep must be an integer in [0, {n_cells}], got {keep!r}")
    xp = namespace(q, k, v)
    lead, lq = tuple(q.shape[:-2]), q.shape[-2]
    kc, vc = pool_cells(k, grid, cell), pool_cells(v, grid, cell)  # (..., C, d), (..., C, dv)
    coarse = xp.matmul(q, kc.mT)  # (..., Lq, C)
    order = xp.argsort(coarse, axis=-1, descending=True, stable=True)  # best cells first
    kept, rest = order[..., :keep], order[..., keep:]  # (..., Lq, keep), (..., Lq, C - keep)
    table = xp.take(cell_tokens(grid, cell, like=q), xp.reshape(kept, (-1,)), axis=0)
    fine = xp.reshape(table, (*lead, lq, keep * cell * cell))  # fine key indices
    index = xp.concat([fine, rest + h * w], axis=-1)  # coarse token c sits at H W + c
    bias = xp.concat(
        [
            xp.zeros(fine.shape, dtype=q.dtype, device=device(q)),
            xp.full(rest.shape, math.log(cell * cell), dtype=q.dtype, device=device(q)),
        ],
        axis=-1,
    )  # (..., Lq, K)
    k_all = xp.concat([k, kc], axis=-2)  # (..., H W + C, d)
    v_all = xp.concat([v, vc], axis=-2)  # (..., H W + C, dv)
    out, cache = gathered_attention_forward(q, k_all, v_all, index, bias)
    return out, HierarchicalCache(grid, cell, h * w, cache)


def hierarchical_attention_backward(
    dout: Array, cache: HierarchicalCache
) -> tuple[Array, Array, Array]:
    """Gradients (dq, dk, dv); the coarse tokens' gradients flow back through the pooling."""
    dq, dk_all, dv_all = gathered_attention_backward(dout, cache.attention)
    n = cache.lk
    dk = dk_all[..., :n, :] + unpool_cells(dk_all[..., n:, :], cache.grid, cache.cell)
    dv = dv_all[..., :n, :] + unpool_cells(dv_all[..., n:, :], cache.grid, cache.cell)
    return dq, dk, dv
