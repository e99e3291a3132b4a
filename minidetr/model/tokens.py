"""From feature maps to the transformer's tokens: projection, positions, levels.

Each of the L backbone maps is projected to width D by a 1x1 convolution and
GroupNorm (Deformable DETR's ``input_proj``), flattened row-major and the
levels concatenated into S = sum_l H_l W_l tokens. Every token gets DETR's 2-D
sine position encoding of its own map, plus a learned embedding of its level
when there are several, so that attention can tell a stride-8 pixel from a
stride-32 one. Images in a batch share one size: there is no padding mask (pad
or resize in the data pipeline).

Switches for the published models: DETR's projection has no GroupNorm
(``input_proj_norm=False``); Deformable DETR adds ``extra_levels`` coarser maps,
each a 3x3 stride-2 convolution (+ GroupNorm) of the last backbone map or of the
extra level before it, and encodes pixel centres (``sine_half_pixel``).

Shapes: B batch, L levels, C_l channels of map l, H_l x W_l its size, S tokens, D width.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minidetr.backend import Array, namespace
from minidetr.model.config import ModelConfig
from minidetr.model.memory import TokenLayout
from minidetr.model.params import accumulate, add_norm, xavier_uniform
from minidetr.ops import (
    conv2d_backward,
    conv2d_forward,
    groupnorm_backward,
    groupnorm_forward,
    sine_position_encoding,
)
from minidetr.ops.conv import Conv2dCache
from minidetr.ops.normalization import NormCache


def init_tokens(cfg: ModelConfig, rng: np.random.Generator) -> dict:
    """``input_proj.l``: 1x1 conv (Xavier, zero bias) + GroupNorm; ``level_embed`` (L, D)."""
    out: dict = {}
    d = cfg.d_model
    widths = list(cfg.backbone_channels[-cfg.backbone_levels :])
    widths += [cfg.backbone_channels[-1]] + [d] * (cfg.extra_levels - 1) if cfg.extra_levels else []
    for lvl, c in enumerate(widths):
        k = 1 if lvl < cfg.backbone_levels else 3  # extra levels: 3x3 stride 2
        out[f"input_proj.{lvl}.weight"] = xavier_uniform(rng, (d, c, k, k))
        out[f"input_proj.{lvl}.bias"] = np.zeros(d)
        if cfg.input_proj_norm:
            add_norm(out, f"input_proj.{lvl}.norm", d)
    if cfg.num_levels > 1:
        out["level_embed"] = rng.standard_normal((cfg.num_levels, d))
    return out


class TokensCache(NamedTuple):
    convs: tuple[Conv2dCache, ...]
    norms: tuple[NormCache | None, ...]  # None without the GroupNorm (DETR)
    layout: TokenLayout
    has_level_embed: bool
    num_maps: int  # backbone maps; the levels after them are extra (strided convs)


def tokens_forward(
    params: dict, feats: list[Array], cfg: ModelConfig
) -> tuple[Array, Array, TokenLayout, TokensCache]:
    """(src (B, S, D), pos (1, S, D), layout, cache) from the L maps feats[l] (B, C_l, H_l, W_l)."""
    xp = namespace(feats[0])
    srcs, poss, convs, norms, shapes = [], [], [], [], []
    y = None
    for lvl in range(cfg.num_levels):
        name = f"input_proj.{lvl}"
        if lvl < len(feats):  # a backbone map, 1x1 conv
            feat = feats[lvl]
            y, conv = conv2d_forward(feat, params[f"{name}.weight"], params[f"{name}.bias"])
        else:  # Deformable DETR's extra level: 3x3 stride-2 conv of the last map or extra level
            feat = feats[-1] if lvl == len(feats) else y
            w_ = params[f"{name}.weight"]
            y, conv = conv2d_forward(feat, w_, params[f"{name}.bias"], stride=2, padding=1)
        norm = None
        if cfg.input_proj_norm:
            y, norm = groupnorm_forward(
                y, params[f"{name}.norm.weight"], params[f"{name}.norm.bias"], cfg.num_groups
            )  # (B, D, H_l, W_l)
        b, d, h, w = y.shape
        srcs.append(xp.permute_dims(xp.reshape(y, (b, d, h * w)), (0, 2, 1)))  # (B, H_l W_l, D)
        poss.append(_level_position(params, lvl, h, w, d, feat, cfg.sine_half_pixel))
        convs.append(conv)
        norms.append(norm)
        shapes.append((h, w))
    shapes = tuple(shapes)
    starts = tuple(int(s) for s in np.cumsum([0] + [h * w for h, w in shapes[:-1]]))
    ref = reference_points(shapes, feats[0]) if cfg.variant == "deformable" else None
    layout = TokenLayout(shapes, starts, ref)
    src = xp.concat(srcs, axis=1)  # (B, S, D)
    pos = xp.concat(poss, axis=1)  # (1, S, D)
    return (
        src,
        pos,
        layout,
        TokensCache(tuple(convs), tuple(norms), layout, "level_embed" in params, len(feats)),
    )


def _level_position(
    params: dict, lvl: int, h: int, w: int, d: int, like: Array, half_pixel: bool = False
) -> Array:
    """Sine encoding of an h x w map (+ the level's embedding), as (1, h w, D) tokens.

    ``half_pixel``: pixel centres (i + 1/2) rather than i + 1, as Deformable DETR.
    """
    xp = namespace(like)
    mask = xp.zeros((1, h, w), dtype=xp.bool, device=like.device)
    offset = 0.5 if half_pixel else 0.0
    pos = xp.astype(sine_position_encoding(mask, d, offset=offset), like.dtype)  # (1, D, h, w)
    pos = xp.permute_dims(xp.reshape(pos, (1, d, h * w)), (0, 2, 1))  # (1, h w, D)
    if "level_embed" in params:
        pos = pos + params["level_embed"][lvl, :]
    return pos


def tokens_backward(
    dsrc: Array, dpos: Array | None, cache: TokensCache, grads: dict
) -> list[Array]:
    """Gradients of the L maps from dsrc (B, S, D); dpos (1, S, D) or None feeds ``level_embed``."""
    xp = namespace(dsrc)
    layout = cache.layout
    levels = list(zip(layout.spatial_shapes, layout.level_start))
    dfeats: list = [None] * cache.num_maps
    level_rows: list = [None] * len(levels)
    dnext = None  # gradient of an extra level's input, when that input is the level before it
    for lvl in reversed(range(len(levels))):
        (h, w), start = levels[lvl]
        name = f"input_proj.{lvl}"
        ds = dsrc[:, start : start + h * w, :]  # (B, H_l W_l, D)
        b, _, d = ds.shape
        dy = xp.reshape(xp.permute_dims(ds, (0, 2, 1)), (b, d, h, w))  # (B, D, H_l, W_l)
        if dnext is not None:
            dy, dnext = dy + dnext, None
        if cache.norms[lvl] is not None:
            dy, dgamma, dbeta = groupnorm_backward(dy, cache.norms[lvl])
            accumulate(grads, f"{name}.norm.weight", dgamma)
            accumulate(grads, f"{name}.norm.bias", dbeta)
        dfeat, dw, db = conv2d_backward(dy, cache.convs[lvl])
        accumulate(grads, f"{name}.weight", dw)
        accumulate(grads, f"{name}.bias", db)
        if lvl > cache.num_maps:  # read the extra level before it
            dnext = dfeat
        elif lvl == cache.num_maps:  # the first extra level read the last backbone map
            dfeats[-1] = dfeat
        else:
            dfeats[lvl] = dfeat if dfeats[lvl] is None else dfeats[lvl] + dfeat
        if dpos is not None:
            level_rows[lvl] = xp.sum(dpos[0, start : start + h * w, :], axis=0)  # (D,)
    if cache.has_level_embed and dpos is not None:
        accumulate(grads, "level_embed", xp.stack(level_rows))  # (L, D)
    return dfeats


def reference_points(shapes: tuple[tuple[int, int], ...], like: Array) -> Array:
    """Pixel centres of every level: (1, S, 2) as (x, y) = ((j + 1/2) / W_l, (i + 1/2) / H_l).

    The deformable encoder's reference points (Zhu et al. 2021, ``get_reference_points``).
    """
    xp = namespace(like)
    points = []
    for h, w in shapes:
        ys = (xp.arange(h, dtype=like.dtype, device=like.device) + 0.5) / h  # (H,)
        xs = (xp.arange(w, dtype=like.dtype, device=like.device) + 0.5) / w  # (W,)
        gx = xp.reshape(xp.broadcast_to(xs[None, :], (h, w)), (h * w,))
        gy = xp.reshape(xp.broadcast_to(ys[:, None], (h, w)), (h * w,))
        points.append(xp.stack([gx, gy], axis=-1))  # (H W, 2)
    return xp.concat(points, axis=0)[None, ...]  # (1, S, 2)


def proposals(layout: TokenLayout, like: Array, base_size: float = 0.05) -> Array:
    """One box per token, in logit space: its pixel centre, side base_size * 2^l at level l.

    (S, 4) inverse_sigmoid(cx, cy, w, h); the two-stage encoder refines these
    (Zhu et al. 2021, ``gen_encoder_output_proposals``, base_size 0.05 on images of
    800 pixels). Every centre is inside the image and the config keeps every side
    below 1, so no proposal needs masking here.
    """
    xp = namespace(like)
    centres = reference_points(layout.spatial_shapes, like)[0, ...]  # (S, 2)
    sides = [
        xp.full((h * w, 2), base_size * 2.0**lvl, dtype=like.dtype, device=like.device)
        for lvl, (h, w) in enumerate(layout.spatial_shapes)
    ]
    boxes = xp.concat([centres, xp.concat(sides, axis=0)], axis=1)  # (S, 4)
    return xp.log(boxes / (1.0 - boxes))
