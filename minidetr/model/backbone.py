"""The backbone: a small convolutional network trained from scratch.

Each stage halves the resolution with a stride-2 3x3 convolution, then
GroupNorm and ReLU, then ``backbone_blocks[i]`` residual blocks
y = relu(x + GN(conv3x3(x))). Stage i has stride 2^(i+1); the last L stages are
the feature maps the transformer reads (L = 1 for DETR, which reads only the
coarsest; several scales for Deformable DETR). GroupNorm rather than DETR's
frozen BatchNorm: there are no pretrained statistics to freeze, and GroupNorm
behaves the same at batch 1 and batch 64.

Shapes: B batch, C_i channels of stage i, H_i x W_i its map = (H, W) / 2^(i+1),
L levels (the maps the transformer reads).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minidetr.backend import Array
from minidetr.model.config import ModelConfig
from minidetr.model.params import accumulate, add_norm, kaiming_normal
from minidetr.model.resnet import ResNetCache, init_resnet, resnet_backward, resnet_forward
from minidetr.ops import conv2d_backward, conv2d_forward
from minidetr.ops.conv import Conv2dCache
from minidetr.ops.normalization import (
    GroupNormReluCache,
    groupnorm_relu_backward,
    groupnorm_relu_forward,
)


def init_backbone(cfg: ModelConfig, rng: np.random.Generator) -> dict:
    """Kaiming-normal convolutions (no bias: GroupNorm follows), GroupNorm at 1 and 0.

    With ``cfg.backbone == "resnet"`` a ResNet over frozen BatchNorm instead (``resnet.py``).
    """
    if cfg.backbone == "resnet":
        return init_resnet(cfg, rng)
    out: dict = {}
    c_in = 3
    for i, c in enumerate(cfg.backbone_channels):
        name = f"backbone.stages.{i}"
        out[f"{name}.conv.weight"] = kaiming_normal(rng, (c, c_in, 3, 3))
        add_norm(out, f"{name}.norm", c)
        for j in range(cfg.backbone_blocks[i]):
            out[f"{name}.blocks.{j}.conv.weight"] = kaiming_normal(rng, (c, c, 3, 3))
            add_norm(out, f"{name}.blocks.{j}.norm", c)
        c_in = c
    return out


class ConvUnitCache(NamedTuple):
    conv: Conv2dCache
    norm_relu: GroupNormReluCache


class BackboneCache(NamedTuple):
    stages: tuple[ConvUnitCache, ...]  # the stride-2 unit of each stage
    blocks: tuple[tuple[ConvUnitCache, ...], ...]  # the residual blocks of each stage
    num_levels: int


def _conv_unit_forward(
    params: dict, name: str, x: Array, stride: int, groups: int, skip: Array | None = None
) -> tuple[Array, ConvUnitCache]:
    """relu(skip + GN(conv3x3(x))), skip = 0 for the stride-2 units."""
    h, conv = conv2d_forward(x, params[f"{name}.conv.weight"], stride=stride, padding=1)
    y, norm_relu = groupnorm_relu_forward(
        h, params[f"{name}.norm.weight"], params[f"{name}.norm.bias"], groups, skip
    )
    return y, ConvUnitCache(conv, norm_relu)


def _conv_unit_backward(
    dy: Array, cache: ConvUnitCache, grads: dict, name: str, input_grad: bool = True
) -> tuple:
    """(dx, dskip) of :func:`_conv_unit_forward`; parameter gradients go into ``grads``.

    dx is None when ``input_grad`` is False (the first unit, which reads the images).
    """
    dconv, dgamma, dbeta, dh = groupnorm_relu_backward(dy, cache.norm_relu)
    accumulate(grads, f"{name}.norm.weight", dgamma)
    accumulate(grads, f"{name}.norm.bias", dbeta)
    dx, dw, _ = conv2d_backward(dconv, cache.conv, input_grad=input_grad)
    accumulate(grads, f"{name}.conv.weight", dw)
    return dx, dh


def backbone_forward(
    params: dict, images: Array, cfg: ModelConfig
) -> tuple[list[Array], BackboneCache | ResNetCache]:
    """Feature maps of the last L stages, finest first: each (B, C_i, H/2^(i+1), W/2^(i+1)).

    images (B, 3, H, W), H and W multiples of ``cfg.stride`` (checked by the model).
    """
    if cfg.backbone == "resnet":
        return resnet_forward(params, images, cfg)
    x = images
    stages, blocks, feats = [], [], []
    n = len(cfg.backbone_channels)
    for i in range(n):
        name = f"backbone.stages.{i}"
        x, c = _conv_unit_forward(params, name, x, 2, cfg.num_groups)  # (B, C_i, H_i, W_i)
        stages.append(c)
        stage_blocks = []
        for j in range(cfg.backbone_blocks[i]):
            x, c = _conv_unit_forward(params, f"{name}.blocks.{j}", x, 1, cfg.num_groups, skip=x)
            stage_blocks.append(c)
        blocks.append(tuple(stage_blocks))
        if i >= n - cfg.backbone_levels:
            feats.append(x)
    return feats, BackboneCache(tuple(stages), tuple(blocks), cfg.backbone_levels)


def backbone_backward(dfeats: list[Array], cache: BackboneCache | ResNetCache, grads: dict) -> None:
    """Accumulate the backbone's parameter gradients from the gradients of its L maps.

    The image gradient is not needed (images are data), so it is dropped.
    """
    if isinstance(cache, ResNetCache):
        resnet_backward(dfeats, cache, grads)
        return
    n = len(cache.stages)
    dx = None
    for i in reversed(range(n)):
        level = i - (n - cache.num_levels)
        if level >= 0:
            dx = dfeats[level] if dx is None else dx + dfeats[level]
        name = f"backbone.stages.{i}"
        for j in reversed(range(len(cache.blocks[i]))):
            dx_in, dskip = _conv_unit_backward(dx, cache.blocks[i][j], grads, f"{name}.blocks.{j}")
            dx = dx_in + dskip
        dx, _ = _conv_unit_backward(dx, cache.stages[i], grads, name, input_grad=i > 0)
