"""Sine position encodings: of pixels (DETR) and of boxes (DAB-DETR's anchor queries).

``sine_position_encoding``: DETR's 2-D encoding (``models/position_encoding.py``,
normalised form). Each pixel gets D numbers: D/2 describe its row y and D/2 its
column x, as sin/cos pairs at geometrically spaced frequencies, like the 1-D
encoding of Vaswani et al. (2017) applied once per axis. No parameters, no gradient.

``box_sine_embedding``: the same 1-D encoding applied to each of a box's four
coordinates, with its backward, since the box it encodes is learned.

Shapes: B batch, Q boxes, D width, F = D / 2 features per coordinate.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from minidetr.backend import Array, namespace
from minidetr.checks import check_dim, check_ndim


def sine_position_encoding(
    mask: Array,
    dim: int,
    temperature: float = 10000.0,
    normalize: bool = True,
    offset: float = 0.0,
) -> Array:
    """pos[b, :, i, j] = [sin/cos(y_ij / T^(2k/F)) ..., sin/cos(x_ij / T^(2k/F)) ...], F = dim/2.

    mask (B, H, W) boolean, True = padded pixel (DETR's convention); y and x count
    the unpadded pixels up to (i, j), scaled to (0, 2 pi] when ``normalize``;
    ``offset`` 0.5 counts to the pixel's centre instead (Deformable DETR).
    Returns (B, dim, H, W) in the floating dtype float64 on mask's device.
    """
    check_ndim(mask, 3, "mask", "(B, H, W)")
    if dim < 4 or dim % 4:
        raise ValueError(f"dim must be a positive multiple of 4, got {dim}")
    xp = namespace(mask)
    f = dim // 2
    not_mask = xp.astype(~mask, xp.float64)  # (B, H, W)
    y_embed = xp.cumulative_sum(not_mask, axis=1)
    x_embed = xp.cumulative_sum(not_mask, axis=2)
    if normalize:
        eps, scale = 1e-6, 2 * math.pi
        y_embed = (y_embed - offset) / (y_embed[:, -1:, :] + eps) * scale
        x_embed = (x_embed - offset) / (x_embed[:, :, -1:] + eps) * scale
    k = xp.arange(f, dtype=xp.float64, device=mask.device)
    dim_t = temperature ** (2 * xp.floor(k / 2) / f)  # (F,)
    pos_x = x_embed[..., None] / dim_t  # (B, H, W, F)
    pos_y = y_embed[..., None] / dim_t
    even = (xp.arange(f, device=mask.device) % 2) == 0
    pos_x = xp.where(even, xp.sin(pos_x), xp.cos(pos_x))
    pos_y = xp.where(even, xp.sin(pos_y), xp.cos(pos_y))
    pos = xp.concat([pos_y, pos_x], axis=-1)  # (B, H, W, dim)
    return xp.permute_dims(pos, (0, 3, 1, 2))  # (B, dim, H, W)


class BoxSineCache(NamedTuple):
    phase: Array  # (B, Q, 4, F) coordinate times frequency
    freq: Array  # (F,) 2 pi / T^(2 floor(k/2) / F)
    even: Array  # (F,) bool, True where the feature is a sine


def box_sine_embedding_forward(
    boxes: Array, dim: int, temperature: float = 10000.0
) -> tuple[Array, BoxSineCache]:
    """e[..., c, k] = sin(2 pi b_c / T^(2 floor(k/2)/F)) for even k, cos for odd k.

    The 1-D sine encoding of Vaswani et al. applied to each of the four box
    coordinates (DAB-DETR's ``gen_sineembed_for_position``). boxes (B, Q, 4) in
    [0, 1]; dim D (each coordinate gets F = D / 2 features). Returns (B, Q, 2 D).
    """
    check_ndim(boxes, 3, "boxes", "(B, Q, 4)")
    check_dim(boxes, 2, 4, "boxes", "cx, cy, w, h")
    if dim < 2 or dim % 2:
        raise ValueError(f"dim must be a positive even number, got {dim}")
    xp = namespace(boxes)
    f = dim // 2
    k = xp.arange(f, device=boxes.device)
    exponent = xp.astype(2 * (k // 2), boxes.dtype) / f
    freq = (2 * math.pi) / (temperature**exponent)  # (F,)
    phase = boxes[..., None] * freq  # (B, Q, 4, F)
    even = (k % 2) == 0
    emb = xp.where(even, xp.sin(phase), xp.cos(phase))  # (B, Q, 4, F)
    b, q = boxes.shape[:2]
    return xp.reshape(emb, (b, q, 4 * f)), BoxSineCache(phase, freq, even)


def box_sine_embedding_backward(demb: Array, cache: BoxSineCache) -> tuple[Array]:
    """dboxes[..., c] = sum_k demb[..., c, k] * freq_k * (cos(phase) if even k else -sin(phase))."""
    xp = namespace(demb)
    b, q, four, f = cache.phase.shape
    demb = xp.reshape(demb, (b, q, four, f))
    dphase = demb * xp.where(cache.even, xp.cos(cache.phase), -xp.sin(cache.phase))
    return (xp.sum(dphase * cache.freq, axis=-1),)  # (B, Q, 4)
