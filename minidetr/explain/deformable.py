"""Deformable attention seen as a (sparse) attention matrix, and its gradient relevance.

A deformable query reads P bilinear samples per head and level instead of all S
tokens, but each sample is a weighted sum of the four tokens around it, so the
whole op is exactly a dense attention whose matrix is mostly zero:

    out[q, m] = sum_{l, p} A[q, m, l, p] sum_c w_c(loc[q, m, l, p]) v[token_c, m]
              = sum_s W[m, q, s] v[s, m],   W[m, q, s] = sum over samples landing on s of A w_c

:func:`deformable_attention_matrix` builds W. With the gradient dy/dA of an
explained score, splatting (A ⊙ dy/dA)^+ the same way gives, per detection,
where the samples that raised the score looked (:func:`deformable_relevance`):
no public Deformable DETR explainer offers this.

Shapes: B batch, Q queries, M heads, L levels, P points, S = sum_l H_l W_l tokens.
Sampling as in :mod:`minidetr.deformable.reference` (``grid_sample``,
``align_corners=False``, zeros outside). Zhu et al., "Deformable DETR" (2021), eq. 3.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from minidetr.backend import Array, device, index_add, namespace, to_numpy
from minidetr.checks import check_floating, check_ndim
from minidetr.deformable.layout import as_spatial_shapes, level_start_index
from minidetr.deformable.reference import bilinear_corners


def deformable_attention_matrix(
    sampling_locations: Array,
    attention_weights: Array,
    spatial_shapes: Sequence[Sequence[int]],
) -> Array:
    """W (B, M, Q, S) with out = W v: each sample's weight spread over its four bilinear corners.

    sampling_locations (B, Q, M, L, P, 2) normalised (x, y); attention_weights
    (B, Q, M, L, P), or any per-sample quantity to splat (such as A ⊙ dy/dA). A row of
    W sums to the row's weights that fell inside the maps (1 for softmax weights
    with every sample inside).
    """
    check_floating(sampling_locations, "sampling_locations")
    check_ndim(sampling_locations, 6, "sampling_locations", "(B, Q, M, L, P, 2)")
    check_ndim(attention_weights, 5, "attention_weights", "(B, Q, M, L, P)")
    if tuple(attention_weights.shape) != tuple(sampling_locations.shape[:5]):
        raise ValueError(
            f"attention_weights must have shape {tuple(sampling_locations.shape[:5])}, "
            f"got {tuple(attention_weights.shape)}"
        )
    shapes = as_spatial_shapes(spatial_shapes)
    if len(shapes) != sampling_locations.shape[3]:
        raise ValueError(
            f"spatial_shapes lists {len(shapes)} levels, sampling_locations has "
            f"{sampling_locations.shape[3]}"
        )
    xp = namespace(sampling_locations, attention_weights)
    b, q, m = sampling_locations.shape[:3]
    s = sum(h * w for h, w in shapes)
    corners, _, _ = bilinear_corners((b, s, m, 1), shapes, sampling_locations)
    dev = device(sampling_locations)
    batch = xp.reshape(xp.arange(b, device=dev), (b, 1, 1, 1, 1))
    query = xp.reshape(xp.arange(q, device=dev), (1, q, 1, 1, 1))
    head = xp.reshape(xp.arange(m, device=dev), (1, 1, m, 1, 1))
    rows, values = [], []
    for c in corners:
        token = (c.row // m) % s  # row = (b * S + token) * M + head
        flat = ((batch * m + head) * q + query) * s + token  # index into (B, M, Q, S)
        rows.append(xp.reshape(flat, (-1,)))
        values.append(xp.reshape(attention_weights * c.weight, (-1,)))
    table = xp.zeros((b * m * q * s,), dtype=attention_weights.dtype, device=dev)
    table = index_add(table, xp.concat(rows), xp.concat(values))
    return xp.reshape(table, (b, m, q, s))


def deformable_relevance(
    layers: Sequence[tuple[Array, Array, Array]],
    spatial_shapes: Sequence[Sequence[int]],
    query: int | None = None,
) -> Array:
    """r[b, s] = sum over layers, heads, points (and queries) of (A ⊙ dy/dA)^+ splatted at s.

    layers: per layer (sampling_locations (B, Q, M, L, P, 2), attention_weights
    (B, Q, M, L, P), grad dy/dA (B, Q, M, L, P)), the gradient that of the one
    explained score. ``query`` picks one query's samples (a decoder
    cross-attention layer); None sums over all queries (an encoder layer, whose
    queries are the tokens). Returns (B, S).
    """
    total = None
    for i, (loc, attn, grad) in enumerate(layers):
        if tuple(grad.shape) != tuple(attn.shape):
            raise ValueError(f"layers[{i}]: grad must have the shape of the attention weights")
        xp = namespace(attn, grad)
        if query is not None:
            if not 0 <= query < attn.shape[1]:
                raise ValueError(f"query must be in [0, {attn.shape[1]}), got {query}")
            loc, attn, grad = (
                loc[:, query : query + 1],
                attn[:, query : query + 1],
                grad[:, query : query + 1],
            )
        w = deformable_attention_matrix(loc, xp.clip(attn * grad, 0.0, None), spatial_shapes)
        r = xp.sum(w, axis=(1, 2))  # (B, S)
        total = r if total is None else total + r
    if total is None:
        raise ValueError("layers must hold at least one layer")
    return total


def tokens_to_image(
    relevance: Array, spatial_shapes: Sequence[Sequence[int]], size: int
) -> np.ndarray:
    """Token relevance (..., S) to an image map (..., size, size) on the host.

    Each level's map (H_l, W_l) is resampled bilinearly to the image (pixel
    centres aligned, edges clamped) and divided by its cells' area in pixels, so a
    token's relevance is spread over the pixels it covers; levels are summed.
    """
    shapes = as_spatial_shapes(spatial_shapes)
    r = to_numpy(relevance).astype(np.float64)
    s = sum(h * w for h, w in shapes)
    if r.shape[-1] != s:
        raise ValueError(f"relevance must end in S = {s} tokens, got shape {r.shape}")
    out = np.zeros((*r.shape[:-1], size, size))
    for (h, w), start in zip(shapes, level_start_index(shapes)):
        level = r[..., start : start + h * w].reshape(*r.shape[:-1], h, w)
        out += _resize_bilinear(level, size) * (h * w) / (size * size)
    return out


def _resize_bilinear(a: np.ndarray, size: int) -> np.ndarray:
    """(..., h, w) -> (..., size, size), align_corners=False, clamped at the edges."""

    def axis_weights(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = np.clip((np.arange(size) + 0.5) * n / size - 0.5, 0.0, n - 1)
        lo = np.floor(x).astype(np.int64)
        hi = np.minimum(lo + 1, n - 1)
        return lo, hi, x - lo

    h, w = a.shape[-2:]
    y0, y1, fy = axis_weights(h)
    x0, x1, fx = axis_weights(w)
    rows = a[..., y0, :] * (1 - fy)[:, None] + a[..., y1, :] * fy[:, None]  # (..., size, w)
    return rows[..., x0] * (1 - fx) + rows[..., x1] * fx
