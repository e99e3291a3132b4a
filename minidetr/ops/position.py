"""DETR's 2-D sine positional encoding (``models/position_encoding.py``, normalised form).

Each pixel gets D numbers: D/2 describe its row y and D/2 its column x, as
sin/cos pairs at geometrically spaced frequencies, like the 1-D encoding of
Vaswani et al. (2017) applied once per axis. No parameters, no gradient.
"""

from __future__ import annotations

import math

from minidetr.backend import Array, namespace
from minidetr.checks import check_ndim


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
