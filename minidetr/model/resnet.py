"""ResNet backbones as DETR uses them: basic or bottleneck blocks over frozen BatchNorm.

stem      conv7x7/2 + BN + relu, maxpool 3x3/2                       stride 4, width E
stage s   blocks; the first takes stride 1 (s = 0) or 2 and a projection shortcut
          when its width or stride changes                            stride 4 * 2^s
basic     y = relu(BN(conv3x3(relu(BN(conv3x3/s(x))))) + shortcut(x))
bottleneck y = relu(BN(conv1x1(relu(BN(conv3x3/s(relu(BN(conv1x1(x)))))))) + shortcut(x)),
           inner width = width / 4, stride on the 3x3 (torchvision's ResNet "v1.5")

DETR freezes BatchNorm: y = x * w / sqrt(var + eps) + (b - mean * w / sqrt(var + eps)),
four per-channel constants from pretraining. The op is then an affine map of x whose
backward passes dx = dy * scale, and gives the constants no gradient: the trainer
leaves every name :func:`is_frozen` says is frozen as it is. He et al., "Deep Residual
Learning" (2016); Carion et al. (2020), ``models/backbone.py``; parameter layout of
torchvision and Hugging Face transformers' ``ResNetBackbone``.

Shapes: B batch, C_s width of stage s, H_s x W_s its map = (H, W) / (4 * 2^s).
The config supplies ``backbone_channels`` (C_s), ``backbone_blocks`` (blocks per
stage), ``resnet_block`` ("basic" or "bottleneck"), ``resnet_stem`` (E) and
``backbone_levels`` (the last L stages are returned).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from minidetr.backend import Array, namespace
from minidetr.checks import check_floating, check_ndim
from minidetr.model.params import accumulate, kaiming_normal
from minidetr.ops import conv2d_backward, conv2d_forward, relu_backward, relu_forward
from minidetr.ops.activation import ReluCache
from minidetr.ops.conv import Conv2dCache
from minidetr.ops.pool import MaxPoolCache, max_pool2d_backward, max_pool2d_forward

BN_EPS = 1e-5
BOTTLENECK_REDUCTION = 4
FROZEN_STATS = ("weight", "bias", "running_mean", "running_var")


def is_frozen(name: str) -> bool:
    """Whether a parameter is a frozen BatchNorm constant (never trained)."""
    return ".bn." in name and name.startswith("backbone.")


# ------------------------------------------------------------------------ frozen BatchNorm


class FrozenBatchNormCache(NamedTuple):
    scale: Array  # (C,) w / sqrt(var + eps)


def frozen_batchnorm_forward(
    x: Array,
    weight: Array,
    bias: Array,
    running_mean: Array,
    running_var: Array,
    eps: float = BN_EPS,
) -> tuple[Array, FrozenBatchNormCache]:
    """y = (x - mean) / sqrt(var + eps) * w + b per channel, with fixed statistics.

    x (B, C, H, W); weight, bias, running_mean, running_var (C,). Ioffe and
    Szegedy (2015) at inference; DETR's ``FrozenBatchNorm2d`` (scale, then shift).
    """
    check_floating(x, "x")
    check_ndim(x, 4, "x", "(B, C, H, W)")
    c = x.shape[1]
    for name, t in (("weight", weight), ("bias", bias), ("running_mean", running_mean)):
        if tuple(t.shape) != (c,):
            raise ValueError(f"{name} must have shape ({c},), the channels of x, got {t.shape}")
    if tuple(running_var.shape) != (c,):
        raise ValueError(f"running_var must have shape ({c},), got {running_var.shape}")
    xp = namespace(x, weight)
    scale = weight * (1.0 / xp.sqrt(running_var + eps))  # (C,)
    shift = bias - running_mean * scale
    return x * scale[:, None, None] + shift[:, None, None], FrozenBatchNormCache(scale)


def frozen_batchnorm_backward(dy: Array, cache: FrozenBatchNormCache) -> tuple[Array]:
    """dx = dy * scale; the four constants are frozen and get no gradient."""
    return (dy * cache.scale[:, None, None],)


# ------------------------------------------------------------------- conv + BN (+ relu)


class ConvBnCache(NamedTuple):
    conv: Conv2dCache
    bn: FrozenBatchNormCache
    relu: ReluCache | None


def _bn(params: dict, name: str) -> tuple[Array, ...]:
    return tuple(params[f"{name}.bn.{k}"] for k in FROZEN_STATS)


def conv_bn_forward(
    params: dict, name: str, x: Array, stride: int, relu: bool
) -> tuple[Array, ConvBnCache]:
    """[relu](BN(conv(x))): a K x K convolution with padding K // 2 and no bias."""
    w = params[f"{name}.conv.weight"]
    y, conv = conv2d_forward(x, w, stride=stride, padding=w.shape[-1] // 2)
    y, bn = frozen_batchnorm_forward(y, *_bn(params, name))
    r = None
    if relu:
        y, r = relu_forward(y)
    return y, ConvBnCache(conv, bn, r)


def conv_bn_backward(dy: Array, cache: ConvBnCache, grads: dict, name: str) -> Array:
    """dx of :func:`conv_bn_forward`; the weight's gradient goes into ``grads``."""
    if cache.relu is not None:
        (dy,) = relu_backward(dy, cache.relu)
    (dy,) = frozen_batchnorm_backward(dy, cache.bn)
    dx, dw, _ = conv2d_backward(dy, cache.conv)
    accumulate(grads, f"{name}.conv.weight", dw)
    return dx


# --------------------------------------------------------------------------------- blocks


class BlockCache(NamedTuple):
    convs: tuple[ConvBnCache, ...]
    shortcut: ConvBnCache | None
    relu: ReluCache


def _block_strides(block: str, stride: int) -> tuple[int, ...]:
    return (stride, 1) if block == "basic" else (1, stride, 1)


def block_forward(
    params: dict, name: str, x: Array, block: str, stride: int
) -> tuple[Array, BlockCache]:
    """One basic or bottleneck block: relu(convs(x) + shortcut(x)). x (B, C_in, H, W)."""
    strides = _block_strides(block, stride)
    h, convs = x, []
    for k, s in enumerate(strides):
        h, c = conv_bn_forward(params, f"{name}.convs.{k}", h, s, relu=k + 1 < len(strides))
        convs.append(c)
    skip, sc = x, None
    if f"{name}.shortcut.conv.weight" in params:
        skip, sc = conv_bn_forward(params, f"{name}.shortcut", x, stride, relu=False)
    y, r = relu_forward(h + skip)  # (B, C_out, H / stride, W / stride)
    return y, BlockCache(tuple(convs), sc, r)


def block_backward(dy: Array, cache: BlockCache, grads: dict, name: str) -> Array:
    """dx of :func:`block_forward`: the residual sum sends dy down both paths."""
    (dh,) = relu_backward(dy, cache.relu)
    dskip = dh
    for k in reversed(range(len(cache.convs))):
        dh = conv_bn_backward(dh, cache.convs[k], grads, f"{name}.convs.{k}")
    if cache.shortcut is not None:
        dskip = conv_bn_backward(dskip, cache.shortcut, grads, f"{name}.shortcut")
    return dh + dskip


# -------------------------------------------------------------------------------- network


def _add_conv_bn(out: dict, name: str, rng: np.random.Generator, c_out: int, c_in: int, k: int):
    out[f"{name}.conv.weight"] = kaiming_normal(rng, (c_out, c_in, k, k))
    out[f"{name}.bn.weight"] = np.ones(c_out)
    out[f"{name}.bn.bias"] = np.zeros(c_out)
    out[f"{name}.bn.running_mean"] = np.zeros(c_out)
    out[f"{name}.bn.running_var"] = np.ones(c_out)


def init_resnet(cfg: Any, rng: np.random.Generator) -> dict:
    """Kaiming-normal convolutions, BatchNorm at its identity (w 1, b 0, mean 0, var 1)."""
    out: dict = {}
    _add_conv_bn(out, "backbone.stem", rng, cfg.resnet_stem, 3, 7)
    c_in = cfg.resnet_stem
    for s, (c, depth) in enumerate(zip(cfg.backbone_channels, cfg.backbone_blocks)):
        for j in range(depth):
            name = f"backbone.stages.{s}.blocks.{j}"
            stride = 2 if s > 0 and j == 0 else 1
            if cfg.resnet_block == "basic":
                shapes = [(c, c_in, 3), (c, c, 3)]
            else:
                r = c // BOTTLENECK_REDUCTION
                shapes = [(r, c_in, 1), (r, r, 3), (c, r, 1)]
            for k, (o, i, ks) in enumerate(shapes):
                _add_conv_bn(out, f"{name}.convs.{k}", rng, o, i, ks)
            if c_in != c or stride != 1:
                _add_conv_bn(out, f"{name}.shortcut", rng, c, c_in, 1)
            c_in = c
    return out


class ResNetCache(NamedTuple):
    stem: ConvBnCache
    pool: MaxPoolCache
    blocks: tuple[tuple[BlockCache, ...], ...]  # per stage
    num_levels: int


def resnet_forward(params: dict, images: Array, cfg: Any) -> tuple[list[Array], ResNetCache]:
    """Feature maps of the last S stages, finest first: each (B, C_s, H / 4 2^s, W / 4 2^s)."""
    x, stem = conv_bn_forward(params, "backbone.stem", images, 2, relu=True)  # (B, E, H/2, W/2)
    x, pool = max_pool2d_forward(x, 3, 2, 1)  # (B, E, H/4, W/4)
    n = len(cfg.backbone_channels)
    feats, stages = [], []
    for s in range(n):
        caches = []
        for j in range(cfg.backbone_blocks[s]):
            stride = 2 if s > 0 and j == 0 else 1
            x, c = block_forward(
                params, f"backbone.stages.{s}.blocks.{j}", x, cfg.resnet_block, stride
            )
            caches.append(c)
        stages.append(tuple(caches))
        if s >= n - cfg.backbone_levels:
            feats.append(x)
    return feats, ResNetCache(stem, pool, tuple(stages), cfg.backbone_levels)


def resnet_backward(dfeats: list[Array], cache: ResNetCache, grads: dict) -> Array:
    """Accumulate the convolutions' gradients from the S maps' gradients; returns dimages."""
    n = len(cache.blocks)
    dx = None
    for s in reversed(range(n)):
        level = s - (n - cache.num_levels)
        if level >= 0:
            dx = dfeats[level] if dx is None else dx + dfeats[level]
        for j in reversed(range(len(cache.blocks[s]))):
            dx = block_backward(dx, cache.blocks[s][j], grads, f"backbone.stages.{s}.blocks.{j}")
    (dx,) = max_pool2d_backward(dx, cache.pool)
    return conv_bn_backward(dx, cache.stem, grads, "backbone.stem")
