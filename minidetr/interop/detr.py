"""DETR in Hugging Face transformers' layout <-> minidetr: the config and every parameter.

Works on plain dicts (a config as ``to_dict()`` or ``config.json`` gives it, a state
dict of NumPy arrays), so that a checkpoint can be read without PyTorch. Names are
transformers v5's (``q_proj``/``k_proj``/``v_proj``/``o_proj``, ``mlp.fc1``); the
older layout of the published files (``out_proj``, ``fc1``, ``backbone.conv_encoder``,
a timm ResNet) is renamed on the way in, as transformers itself does.

The correspondence, layer by layer (minidetr <- transformers):

  backbone.*                       <- model.backbone.model.* (ResNet, frozen BatchNorm)
  input_proj.0                     <- model.input_projection (1x1 conv, no norm)
  {encoder,decoder}.layers.i
      self_attn.in_proj [q; k; v]  <- self_attn.{q,k,v}_proj   (stacked as nn.MultiheadAttention)
      self_attn.out_proj           <- self_attn.o_proj
      cross_attn.*                 <- encoder_attn.*
      norm1                        <- self_attn_layer_norm
      norm2 (decoder)              <- encoder_attn_layer_norm
      norm2 (encoder), norm3       <- final_layer_norm
      linear1, linear2             <- mlp.fc1, mlp.fc2
  decoder.norm                     <- model.decoder.layernorm
  query.pos                        <- model.query_position_embeddings (content starts at zero)
  class_head, box_head             <- class_labels_classifier, bbox_predictor
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from minidetr.interop.names import RESNET_NAMES, rename, timm_resnet_name
from minidetr.model.config import ModelConfig

# per layer: minidetr suffix <- transformers suffix (attention projections handled apart)
ENCODER_LAYER = {
    "norm1": "self_attn_layer_norm",
    "linear1": "mlp.fc1",
    "linear2": "mlp.fc2",
    "norm2": "final_layer_norm",
}
DECODER_LAYER = {
    "norm1": "self_attn_layer_norm",
    "norm2": "encoder_attn_layer_norm",
    "linear1": "mlp.fc1",
    "linear2": "mlp.fc2",
    "norm3": "final_layer_norm",
}
LEGACY_RENAMES = (  # the published files' names -> transformers v5's (its conversion_mapping)
    (r"backbone\.conv_encoder\.", "backbone."),
    (r"\.out_proj\.", ".o_proj."),
    (r"layers\.(\d+)\.fc([12])\.", r"layers.\1.mlp.fc\2."),
)
TIMM_RESNETS = {  # name -> (block, depths, widths), stem 64
    "resnet18": ("basic", (2, 2, 2, 2), (64, 128, 256, 512)),
    "resnet34": ("basic", (3, 4, 6, 3), (64, 128, 256, 512)),
    "resnet50": ("bottleneck", (3, 4, 6, 3), (256, 512, 1024, 2048)),
    "resnet101": ("bottleneck", (3, 4, 23, 3), (256, 512, 1024, 2048)),
}


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise ValueError(f"this DETR cannot be represented in minidetr: {what}")


def backbone_fields(hf: Mapping[str, Any], num_levels: int) -> dict[str, Any]:
    """ModelConfig's ResNet fields from a DETR config dict (transformers or timm ResNet)."""
    bb = hf.get("backbone_config") or {}
    timm_name = None
    if bb.get("model_type") == "timm_backbone":
        timm_name = bb.get("backbone")
    elif not bb and hf.get("use_timm_backbone", True):
        timm_name = hf.get("backbone") or "resnet50"
    if timm_name is not None:
        _need(timm_name in TIMM_RESNETS, f"timm backbone {timm_name!r} is not a plain ResNet")
        _need(not hf.get("dilation"), "a dilated backbone (DC5)")
        block, depths, widths = TIMM_RESNETS[timm_name]
        return dict(
            backbone="resnet", resnet_block=block, resnet_stem=64,
            backbone_channels=widths, backbone_blocks=depths,
        )  # fmt: skip
    _need(bb.get("model_type") == "resnet", f"backbone {bb.get('model_type')!r} is not a ResNet")
    _need(not bb.get("downsample_in_first_stage", False), "downsample_in_first_stage=True")
    _need(not bb.get("downsample_in_bottleneck", False), "downsample_in_bottleneck=True")
    _need(bb.get("hidden_act", "relu") == "relu", f"activation {bb.get('hidden_act')!r}")
    n = len(bb["hidden_sizes"])
    want = [f"stage{i}" for i in range(n - num_levels + 1, n + 1)]
    _need(
        list(bb.get("out_features") or [f"stage{n}"]) == want,
        f"backbone out_features {bb.get('out_features')} (minidetr reads {want})",
    )
    return dict(
        backbone="resnet",
        resnet_block=bb.get("layer_type", "bottleneck"),
        resnet_stem=int(bb["embedding_size"]),
        backbone_channels=tuple(bb["hidden_sizes"]),
        backbone_blocks=tuple(bb["depths"]),
    )


def num_labels(hf: Mapping[str, Any]) -> int:
    if hf.get("id2label"):
        return len(hf["id2label"])
    return int(hf["num_labels"])


def config_from_detr(hf: Mapping[str, Any], image_size: int = 800) -> ModelConfig:
    """The ModelConfig of a ``DetrConfig`` given as a dict. ``image_size``: the side to run at."""
    _need(hf.get("position_embedding_type", "sine") == "sine", "learned position embeddings")
    _need(hf.get("activation_function", "relu") == "relu", "a non-relu FFN")
    heads, ffn = hf["encoder_attention_heads"], hf["encoder_ffn_dim"]
    _need(hf["decoder_attention_heads"] == heads, "different encoder and decoder head counts")
    _need(hf["decoder_ffn_dim"] == ffn, "different encoder and decoder FFN widths")
    return ModelConfig(
        variant="standard",
        num_classes=num_labels(hf),
        image_size=image_size,
        num_levels=1,
        d_model=hf["d_model"],
        num_heads=heads,
        ffn_dim=ffn,
        num_encoder_layers=hf["encoder_layers"],
        num_decoder_layers=hf["decoder_layers"],
        num_queries=hf["num_queries"],
        dropout=float(hf.get("dropout", 0.0)),
        input_proj_norm=False,
        final_norm=True,
        learned_content=False,
        **backbone_fields(hf, 1),
    )


def normalize_names(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The state dict under transformers v5's names, whichever layout it came in."""
    out = {}
    for k, v in state.items():
        if k.endswith("num_batches_tracked"):
            continue
        for pattern, repl in LEGACY_RENAMES:
            k = re.sub(pattern, repl, k)
        out[k] = v
    return out


def _backbone_params(state: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    out = {}
    for k, v in state.items():
        if not k.startswith(prefix):
            continue
        rest = k[len(prefix) :]
        name = rename(rest, RESNET_NAMES, to_hf=False) or timm_resnet_name(rest)
        if name is None:
            raise ValueError(f"unknown backbone parameter {k!r}")
        out[f"backbone.{name}"] = v
    return out


def _backbone_state(params: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The way back: minidetr's backbone.* parameters under transformers' names."""
    out = {}
    for k, v in params.items():
        if k.startswith("backbone."):
            out[prefix + rename(k[len("backbone.") :], RESNET_NAMES, True)] = v
    return out


def _attention_in(state: Mapping, hf: str, mini: str, out: dict) -> None:
    out[f"{mini}.in_proj.weight"] = np.concatenate(
        [state[f"{hf}.{p}_proj.weight"] for p in "qkv"], axis=0
    )
    out[f"{mini}.in_proj.bias"] = np.concatenate([state[f"{hf}.{p}_proj.bias"] for p in "qkv"])
    out[f"{mini}.out_proj.weight"] = state[f"{hf}.o_proj.weight"]
    out[f"{mini}.out_proj.bias"] = state[f"{hf}.o_proj.bias"]


def _attention_out(params: Mapping, mini: str, hf: str, out: dict) -> None:
    w, b = params[f"{mini}.in_proj.weight"], params[f"{mini}.in_proj.bias"]
    d = w.shape[1]
    for i, p in enumerate("qkv"):
        out[f"{hf}.{p}_proj.weight"] = w[i * d : (i + 1) * d]
        out[f"{hf}.{p}_proj.bias"] = b[i * d : (i + 1) * d]
    out[f"{hf}.o_proj.weight"] = params[f"{mini}.out_proj.weight"]
    out[f"{hf}.o_proj.bias"] = params[f"{mini}.out_proj.bias"]


def _pairs(cfg: ModelConfig) -> list[tuple[str, str]]:
    """(minidetr name, transformers name) of every parameter but the attention projections."""
    pairs = [
        ("input_proj.0.weight", "model.input_projection.weight"),
        ("input_proj.0.bias", "model.input_projection.bias"),
        ("query.pos", "model.query_position_embeddings.weight"),
        ("decoder.norm.weight", "model.decoder.layernorm.weight"),
        ("decoder.norm.bias", "model.decoder.layernorm.bias"),
        ("class_head.weight", "class_labels_classifier.weight"),
        ("class_head.bias", "class_labels_classifier.bias"),
    ]
    for k in range(3):
        for t in ("weight", "bias"):
            pairs.append((f"box_head.layers.{k}.{t}", f"bbox_predictor.layers.{k}.{t}"))
    for part, n, table in (
        ("encoder", cfg.num_encoder_layers, ENCODER_LAYER),
        ("decoder", cfg.num_decoder_layers, DECODER_LAYER),
    ):
        for i in range(n):
            for mini, hf in table.items():
                for t in ("weight", "bias"):
                    pairs.append(
                        (f"{part}.layers.{i}.{mini}.{t}", f"model.{part}.layers.{i}.{hf}.{t}")
                    )
    return pairs


def _attentions(cfg: ModelConfig) -> list[tuple[str, str]]:
    out = [(f"encoder.layers.{i}.self_attn", f"model.encoder.layers.{i}.self_attn")
           for i in range(cfg.num_encoder_layers)]  # fmt: skip
    for i in range(cfg.num_decoder_layers):
        out.append((f"decoder.layers.{i}.self_attn", f"model.decoder.layers.{i}.self_attn"))
        out.append((f"decoder.layers.{i}.cross_attn", f"model.decoder.layers.{i}.encoder_attn"))
    return out


def params_from_detr(state: Mapping[str, np.ndarray], cfg: ModelConfig) -> dict[str, np.ndarray]:
    """minidetr's parameters from a DETR state dict (NumPy arrays, any known layout)."""
    state = normalize_names(state)
    out = _backbone_params(state, "model.backbone.model.")
    try:
        for mini, hf in _pairs(cfg):
            out[mini] = state[hf]
        for mini, hf in _attentions(cfg):
            _attention_in(state, hf, mini, out)
    except KeyError as err:
        raise ValueError(f"the state dict has no {err.args[0]!r}: is it a DETR?") from err
    return out


def detr_state(cfg: ModelConfig, params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """transformers' DETR state dict (NumPy arrays) of minidetr parameters."""
    check_exportable(cfg)
    out = _backbone_state(params, "model.backbone.model.")
    for mini, hf in _pairs(cfg):
        out[hf] = params[mini]
    for mini, hf in _attentions(cfg):
        _attention_out(params, mini, hf, out)
    return out


def check_exportable(cfg: ModelConfig) -> None:
    """ValueError naming the first switch that transformers' DETR has no counterpart for."""
    wanted = dict(
        variant="standard", backbone="resnet", input_proj_norm=False, final_norm=True,
        learned_content=False, anchor_queries=False, focal=False, num_levels=1, denoising=False,
    )  # fmt: skip
    for name, value in wanted.items():
        if getattr(cfg, name) != value:
            raise ValueError(
                f"transformers' DETR needs {name}={value!r}, the config has {getattr(cfg, name)!r}"
            )


def detr_config_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    """Keyword arguments of ``DetrConfig`` (and its ``ResNetConfig``) for ``cfg``."""
    check_exportable(cfg)
    n = len(cfg.backbone_channels)
    backbone = dict(
        embedding_size=cfg.resnet_stem, hidden_sizes=list(cfg.backbone_channels),
        depths=list(cfg.backbone_blocks), layer_type=cfg.resnet_block,
        out_features=[f"stage{n}"],
    )  # fmt: skip
    return dict(
        backbone_config=backbone,
        d_model=cfg.d_model,
        encoder_layers=cfg.num_encoder_layers,
        decoder_layers=cfg.num_decoder_layers,
        encoder_attention_heads=cfg.num_heads,
        decoder_attention_heads=cfg.num_heads,
        encoder_ffn_dim=cfg.ffn_dim,
        decoder_ffn_dim=cfg.ffn_dim,
        num_queries=cfg.num_queries,
        num_labels=cfg.num_classes,
        dropout=cfg.dropout,
        attention_dropout=0.0,
        activation_dropout=0.0,
        auxiliary_loss=False,
    )
