"""Published checkpoints into minidetr, with NumPy only where the format allows it.

* transformers' layout: a folder (or its ``model.safetensors``) with ``config.json``,
  read with the ``safetensors`` package's NumPy API; no PyTorch needed.
* facebookresearch/detr's ``.pth`` (``{"model": state_dict}``), read with
  ``torch.load(weights_only=True)``; its config is read off the tensor shapes
  (the head count is not in the file: 8, as every published DETR, unless given).

minidetr downloads nothing. The published DETR-R50 is ``facebook/detr-resnet-50`` on
the Hugging Face hub (``model.safetensors`` and ``config.json``) or
``detr-r50-e632da11.pth`` from the facebookresearch/detr README; fetch it yourself.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

import minidetr.interop.detr as detr
from minidetr.interop.names import timm_resnet_name
from minidetr.model.config import ModelConfig


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    try:
        from safetensors.numpy import load_file
    except ImportError as err:
        raise ImportError("reading .safetensors needs: pip install 'minidetr[interop]'") from err
    return load_file(str(path))


def load_transformers_checkpoint(
    path: str | Path, image_size: int = 800
) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """(ModelConfig, float32 params) of a transformers DETR folder or ``.safetensors`` file.

    The folder (or the file's folder) must hold the ``config.json`` saved with it.
    """
    path = Path(path)
    weights = path / "model.safetensors" if path.is_dir() else path
    config_file = weights.parent / "config.json"
    if not weights.exists():
        raise ValueError(f"{weights}: no such file")
    if not config_file.exists():
        raise ValueError(f"{config_file}: no such file; it is saved next to the weights")
    hf = json.loads(config_file.read_text())
    if hf.get("model_type") != "detr":
        raise ValueError(f"{config_file}: model_type {hf.get('model_type')!r} is not 'detr'")
    cfg = detr.config_from_detr(hf, image_size=image_size)
    params = detr.params_from_detr(_read_safetensors(weights), cfg)
    return cfg, {k: np.asarray(v, dtype=np.float32) for k, v in params.items()}


# facebookresearch/detr names -> minidetr's (the backbone through the timm/torchvision table)
_OFFICIAL = (
    (r"input_proj\.(weight|bias)", r"input_proj.0.\1"),
    (r"query_embed\.weight", "query.pos"),
    (r"class_embed\.(weight|bias)", r"class_head.\1"),
    (r"bbox_embed\.layers\.(\d)\.(weight|bias)", r"box_head.layers.\1.\2"),
    (r"transformer\.decoder\.norm\.(weight|bias)", r"decoder.norm.\1"),
    (
        r"transformer\.(encoder|decoder)\.layers\.(\d+)\.multihead_attn\.",
        r"\1.layers.\2.cross_attn.",
    ),
    (r"transformer\.(encoder|decoder)\.layers\.(\d+)\.", r"\1.layers.\2."),
)


def official_name(name: str) -> str | None:
    """minidetr's name of a facebookresearch/detr parameter, or None for one it has no use for."""
    if name.startswith("backbone.0.body."):
        rest = timm_resnet_name(name[len("backbone.0.body.") :])
        return None if rest is None else f"backbone.{rest}"
    for pattern, repl in _OFFICIAL:
        new, n = re.subn(f"^{pattern}", repl, name)
        if n:
            return re.sub(r"_proj_(weight|bias)$", r"_proj.\1", new)  # in_proj_weight
    return None


def config_from_shapes(
    params: dict[str, np.ndarray], num_heads: int = 8, image_size: int = 800
) -> ModelConfig:
    """DETR's ModelConfig read off its parameters' shapes (the head count must be given)."""

    def count(prefix: str) -> int:
        found = {int(m.group(1)) for k in params for m in [re.match(prefix + r"(\d+)\.", k)] if m}
        return max(found) + 1 if found else 0

    stages = count(r"backbone\.stages\.")
    depths = tuple(count(rf"backbone\.stages\.{s}\.blocks\.") for s in range(stages))
    widths = tuple(
        params[f"backbone.stages.{s}.blocks.0.convs.{n - 1}.conv.weight"].shape[0]
        for s in range(stages)
        for n in [count(rf"backbone\.stages\.{s}\.blocks\.0\.convs\.")]
    )
    bottleneck = "backbone.stages.0.blocks.0.convs.2.conv.weight" in params
    d = params["query.pos"].shape[1]
    return ModelConfig(
        variant="standard", num_classes=params["class_head.weight"].shape[0] - 1,
        image_size=image_size, num_levels=1, d_model=d, num_heads=num_heads,
        ffn_dim=params["encoder.layers.0.linear1.weight"].shape[0],
        num_encoder_layers=count(r"encoder\.layers\."),
        num_decoder_layers=count(r"decoder\.layers\."),
        num_queries=params["query.pos"].shape[0], input_proj_norm=False, final_norm=True,
        learned_content=False, backbone="resnet",
        resnet_block="bottleneck" if bottleneck else "basic",
        resnet_stem=params["backbone.stem.conv.weight"].shape[0],
        backbone_channels=widths, backbone_blocks=depths,
    )  # fmt: skip


def load_official_checkpoint(
    path: str | Path, num_heads: int = 8, image_size: int = 800
) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """(ModelConfig, float32 params) of a facebookresearch/detr ``.pth`` (needs torch)."""
    import torch

    ck: Any = torch.load(str(path), map_location="cpu", weights_only=True)
    state = ck.get("model", ck) if isinstance(ck, dict) else ck
    params = {}
    for k, v in state.items():
        name = official_name(k)
        if name is not None:
            params[name] = v.detach().float().numpy()
    cfg = config_from_shapes(params, num_heads=num_heads, image_size=image_size)
    return cfg, params


def load_checkpoint(
    path: str | Path, image_size: int = 800, num_heads: int = 8
) -> tuple[ModelConfig, dict]:
    """A DETR checkpoint by its form: a ``.pth`` file, or a transformers folder/safetensors.

    ``num_heads`` is for the ``.pth`` only, which does not record it (8 in every published DETR).
    """
    path = Path(path)
    if path.suffix in (".pth", ".pt"):
        return load_official_checkpoint(path, num_heads=num_heads, image_size=image_size)
    return load_transformers_checkpoint(path, image_size=image_size)
