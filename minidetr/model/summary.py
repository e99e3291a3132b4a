"""How many parameters each block of a MiniDETR holds, as a printed table."""

from __future__ import annotations

import math
import sys
from typing import TextIO

from minidetr.model.config import ModelConfig
from minidetr.model.detr import MiniDETR


def _block(name: str) -> str:
    parts = name.split(".")
    if parts[0] in ("backbone", "encoder", "decoder") and len(parts) > 2:
        # backbone.stages.0, encoder.layers.1, ...; backbone.stem, decoder.norm
        return ".".join(parts[:3] if parts[1] in ("stages", "layers") else parts[:2])
    if parts[0] in ("class_head", "box_head"):
        return "heads (class_head, box_head)"
    if parts[0].startswith("enc_"):
        return "two-stage (enc_output, enc_*_head)"
    return parts[0]


def parameter_counts(config: ModelConfig) -> dict[str, int]:
    """Block name -> number of scalar parameters, in the order the forward uses them."""
    counts: dict[str, int] = {}
    for name, shape in MiniDETR(config).param_shapes.items():
        block = _block(name)
        counts[block] = counts.get(block, 0) + math.prod(shape)
    return counts


def summary(config: ModelConfig, file: TextIO | None = None) -> str:
    """Print (to ``file``, default stdout) and return a table of parameters per block."""
    counts = parameter_counts(config)
    tokens = sum((config.image_size // s) ** 2 for s in config.level_strides)
    features = [
        n
        for n in ("focal", "anchor_queries", "box_refine", "two_stage", "denoising")
        if getattr(config, n)
    ]
    lines = [
        f"MiniDETR {config.variant}: {config.image_size}x{config.image_size} images, "
        f"strides {list(config.level_strides)} -> {tokens} tokens, D={config.d_model}, "
        f"{config.num_heads} heads, "
        f"{config.num_encoder_layers}+{config.num_decoder_layers} layers, "
        f"{config.num_queries} queries, {config.num_classes} classes",
        f"features: {', '.join(features) if features else 'none (plain DETR)'}",
        "",
        f"| {'block':<36} | {'parameters':>10} |",
        f"| {'-' * 36} | {'-' * 10}:|",
    ]
    lines += [f"| {block:<36} | {n:>10,} |" for block, n in counts.items()]
    lines.append(f"| {'total':<36} | {sum(counts.values()):>10,} |")
    text = "\n".join(lines)
    print(text, file=sys.stdout if file is None else file)
    return text
