"""Deformable DETR in Hugging Face transformers' layout <-> minidetr: config and parameters.

Plain, with box refinement, and two-stage. The correspondence
(minidetr <- transformers), beyond DETR's (``detr.py``):

  input_proj.l (1x1 or 3x3/2 conv), .norm   <- model.input_proj.l.0, .1 (GroupNorm(32, D))
  level_embed                               <- model.level_embed
  encoder.layers.i.self_attn.*              <- the same names (MSDeformAttn)
  decoder.layers.i.cross_attn.*             <- model.decoder.layers.i.encoder_attn.*
  query.pos, query.content                  <- model.query_position_embeddings (Q, 2D), split
  query.ref_point                           <- model.reference_points (Linear(D, 2))
  class_head / box_head (shared)            <- class_embed.0 / bbox_embed.0 (tied in transformers)
  decoder.layers.i.{class,box}_head         <- class_embed.i, bbox_embed.i (box refinement)
  enc_output, enc_output.norm               <- model.enc_output, model.enc_output_norm (two-stage)
  enc_{class,box}_head                      <- class_embed.n, bbox_embed.n (n decoder layers)
  query.pos_trans, query.pos_trans.norm     <- model.pos_trans, model.pos_trans_norm
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from minidetr.interop.detr import (
    DECODER_LAYER,
    ENCODER_LAYER,
    _attention_in,
    _attention_out,
    _backbone_params,
    _backbone_state,
    _need,
    backbone_fields,
    normalize_names,
    num_labels,
)
from minidetr.model.config import ModelConfig

DEFORM = tuple(
    f"{layer}.{t}"
    for layer in ("sampling_offsets", "attention_weights", "value_proj", "output_proj")
    for t in ("weight", "bias")
)


def config_from_deformable(hf: Mapping[str, Any], image_size: int = 800) -> ModelConfig:
    """The ModelConfig of a ``DeformableDetrConfig`` given as a dict."""
    _need(hf.get("position_embedding_type", "sine") == "sine", "learned position embeddings")
    _need(hf.get("activation_function", "relu") == "relu", "a non-relu FFN")
    heads, ffn = hf["encoder_attention_heads"], hf["encoder_ffn_dim"]
    _need(hf["decoder_attention_heads"] == heads, "different encoder and decoder head counts")
    _need(hf["decoder_ffn_dim"] == ffn, "different encoder and decoder FFN widths")
    _need(hf["encoder_n_points"] == hf["decoder_n_points"], "different encoder/decoder points")
    bb = hf.get("backbone_config") or {}
    maps = len(bb.get("out_features") or ["stage2", "stage3", "stage4"])
    levels = hf["num_feature_levels"]
    _need(levels > 1 and levels >= maps, f"{levels} feature levels over {maps} backbone maps")
    refine, two_stage = bool(hf.get("with_box_refine")), bool(hf.get("two_stage"))
    _need(refine or not two_stage, "two-stage without box refinement")
    return ModelConfig(
        variant="deformable",
        num_classes=num_labels(hf),
        image_size=image_size,
        num_groups=32,
        num_levels=levels,
        extra_levels=levels - maps,
        d_model=hf["d_model"],
        num_heads=heads,
        ffn_dim=ffn,
        num_encoder_layers=hf["encoder_layers"],
        num_decoder_layers=hf["decoder_layers"],
        num_queries=hf["two_stage_num_proposals"] if two_stage else hf["num_queries"],
        num_points=hf["encoder_n_points"],
        dropout=float(hf.get("dropout", 0.0)),
        focal=True,
        box_refine=refine,
        share_heads=not refine,
        learned_reference=not two_stage,
        two_stage=two_stage,
        proposal_queries=two_stage,
        proposal_size=0.05,
        learned_content=not two_stage,
        sine_half_pixel=True,
        **backbone_fields(hf, maps),
    )


def _pairs(cfg: ModelConfig) -> list[tuple[str, str]]:
    """(minidetr name, transformers name) of every parameter but the dense attentions."""
    pairs = [("level_embed", "model.level_embed")]
    if cfg.two_stage:
        n = cfg.num_decoder_layers
        pairs += [(f"{a}.{t}", f"{b}.{t}") for t in ("weight", "bias") for a, b in (
            ("enc_output", "model.enc_output"), ("enc_output.norm", "model.enc_output_norm"),
            ("query.pos_trans", "model.pos_trans"),
            ("query.pos_trans.norm", "model.pos_trans_norm"),
            ("enc_class_head", f"class_embed.{n}"),
            *((f"enc_box_head.layers.{k}", f"bbox_embed.{n}.layers.{k}") for k in range(3)),
        )]  # fmt: skip
    else:
        pairs += [("query.ref_point.weight", "model.reference_points.weight"),
                  ("query.ref_point.bias", "model.reference_points.bias")]  # fmt: skip
    for lvl in range(cfg.num_levels):
        for t in ("weight", "bias"):
            pairs.append((f"input_proj.{lvl}.{t}", f"model.input_proj.{lvl}.0.{t}"))
            pairs.append((f"input_proj.{lvl}.norm.{t}", f"model.input_proj.{lvl}.1.{t}"))
    for part, n, table, attn in (
        ("encoder", cfg.num_encoder_layers, ENCODER_LAYER, ("self_attn", "self_attn")),
        ("decoder", cfg.num_decoder_layers, DECODER_LAYER, ("cross_attn", "encoder_attn")),
    ):
        for i in range(n):
            layer = f"{part}.layers.{i}"
            for mini, hf in table.items():
                for t in ("weight", "bias"):
                    pairs.append((f"{layer}.{mini}.{t}", f"model.{layer}.{hf}.{t}"))
            for key in DEFORM:
                pairs.append((f"{layer}.{attn[0]}.{key}", f"model.{layer}.{attn[1]}.{key}"))
    for i in range(cfg.num_decoder_layers):
        prefix = "" if cfg.share_heads else f"decoder.layers.{i}."
        for t in ("weight", "bias"):
            pairs.append((f"{prefix}class_head.{t}", f"class_embed.{i}.{t}"))
            for k in range(3):
                pairs.append((f"{prefix}box_head.layers.{k}.{t}", f"bbox_embed.{i}.layers.{k}.{t}"))
    return pairs


def params_from_deformable(
    state: Mapping[str, np.ndarray], cfg: ModelConfig
) -> dict[str, np.ndarray]:
    """minidetr's parameters from a Deformable DETR state dict (NumPy arrays)."""
    state = normalize_names(state)
    out = _backbone_params(state, "model.backbone.model.")
    d = cfg.d_model
    try:
        for mini, hf in _pairs(cfg):
            out[mini] = state[hf]
        for i in range(cfg.num_decoder_layers):
            layer = f"decoder.layers.{i}.self_attn"
            _attention_in(state, f"model.{layer}", layer, out)
        if not cfg.two_stage:
            embed = state["model.query_position_embeddings.weight"]  # (Q, 2D): position, content
            out["query.pos"], out["query.content"] = embed[:, :d], embed[:, d:]
    except KeyError as err:
        missing = err.args[0]
        raise ValueError(f"the state dict has no {missing!r}: is it a Deformable DETR?") from err
    return out


def deformable_state(cfg: ModelConfig, params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """transformers' Deformable DETR state dict (NumPy arrays) of minidetr parameters."""
    check_exportable(cfg)
    out = _backbone_state(params, "model.backbone.model.")
    for mini, hf in _pairs(cfg):
        out[hf] = params[mini]
    for i in range(cfg.num_decoder_layers):
        layer = f"decoder.layers.{i}.self_attn"
        _attention_out(params, layer, f"model.{layer}", out)
    if not cfg.two_stage:
        out["model.query_position_embeddings.weight"] = np.concatenate(
            [params["query.pos"], params["query.content"]], axis=1
        )
    n = cfg.num_decoder_layers + cfg.two_stage  # the heads the decoder holds too (tied)
    for i in range(n if cfg.box_refine else 0):
        for t in ("weight", "bias"):
            for k in range(3):
                key = f"bbox_embed.{i}.layers.{k}.{t}"
                out[f"model.decoder.{key}"] = out[key]
            if cfg.two_stage:
                out[f"model.decoder.class_embed.{i}.{t}"] = out[f"class_embed.{i}.{t}"]
    if cfg.box_refine and not cfg.two_stage:  # transformers ties these class heads
        first = params["decoder.layers.0.class_head.weight"]
        for i in range(1, cfg.num_decoder_layers):
            if not np.array_equal(params[f"decoder.layers.{i}.class_head.weight"], first):
                raise ValueError(
                    "transformers ties the class heads of every decoder layer; this model's "
                    f"layer {i} has its own"
                )
    return out


def check_exportable(cfg: ModelConfig) -> None:
    """ValueError naming the first switch transformers' Deformable DETR has no counterpart for."""
    wanted = dict(
        variant="deformable", backbone="resnet", input_proj_norm=True, focal=True,
        learned_reference=not cfg.two_stage, proposal_queries=cfg.two_stage,
        learned_content=not cfg.two_stage, sine_half_pixel=True, anchor_queries=False,
        denoising=False, final_norm=False, num_groups=32, share_heads=not cfg.box_refine,
    )  # fmt: skip
    for name, value in wanted.items():
        if getattr(cfg, name) != value:
            raise ValueError(
                f"transformers' Deformable DETR needs {name}={value!r}, "
                f"the config has {getattr(cfg, name)!r}"
            )


def deformable_config_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    """Keyword arguments of ``DeformableDetrConfig`` (and its ``ResNetConfig``) for ``cfg``."""
    check_exportable(cfg)
    n, maps = len(cfg.backbone_channels), cfg.backbone_levels
    backbone = dict(
        embedding_size=cfg.resnet_stem, hidden_sizes=list(cfg.backbone_channels),
        depths=list(cfg.backbone_blocks), layer_type=cfg.resnet_block,
        out_features=[f"stage{i}" for i in range(n - maps + 1, n + 1)],
    )  # fmt: skip
    return dict(
        backbone_config=backbone, d_model=cfg.d_model, encoder_layers=cfg.num_encoder_layers,
        decoder_layers=cfg.num_decoder_layers, encoder_attention_heads=cfg.num_heads,
        decoder_attention_heads=cfg.num_heads, encoder_ffn_dim=cfg.ffn_dim,
        decoder_ffn_dim=cfg.ffn_dim, num_queries=cfg.num_queries, num_labels=cfg.num_classes,
        num_feature_levels=cfg.num_levels, encoder_n_points=cfg.num_points,
        decoder_n_points=cfg.num_points, with_box_refine=cfg.box_refine,
        two_stage=cfg.two_stage, two_stage_num_proposals=cfg.num_queries,
        dropout=cfg.dropout, attention_dropout=0.0, activation_dropout=0.0, auxiliary_loss=False,
    )  # fmt: skip
