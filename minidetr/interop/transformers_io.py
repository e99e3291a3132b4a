"""Hugging Face transformers models <-> minidetr (config, params): the PyTorch side.

``from_transformers(model)`` reads a ``DetrForObjectDetection`` or a
``DeformableDetrForObjectDetection`` (plain or with box refinement) into
``(ModelConfig, params)``, float32 NumPy; ``to_transformers(config, params)``
builds the transformers model back, in eval mode. Both are exact: the outputs agree
to float32 rounding (tested).
Needs the ``interop`` extra (torch, transformers).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

import minidetr.interop.deformable as deformable
import minidetr.interop.detr as detr
from minidetr.model.config import ModelConfig

# model_type -> (config reader, parameter reader)
_READERS = {
    "detr": (detr.config_from_detr, detr.params_from_detr),
    "deformable_detr": (deformable.config_from_deformable, deformable.params_from_deformable),
}


def _torch_state(model: Any) -> dict[str, np.ndarray]:
    return {
        k: v.detach().cpu().float().numpy().copy()
        for k, v in model.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }


def _readers(model_type: str) -> tuple:
    if model_type not in _READERS:
        raise TypeError(
            "from_transformers takes DetrForObjectDetection and DeformableDetrForObjectDetection "
            f"models, got model_type {model_type!r}"
        )
    return _READERS[model_type]


def from_transformers(model: Any, image_size: int = 800) -> tuple[ModelConfig, dict]:
    """(ModelConfig, params) of a transformers detection model; params float32 NumPy.

    ``image_size``: the side minidetr's data pipeline will resize images to (a
    multiple of the backbone stride; it does not change the weights).
    """
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "state_dict"):
        raise TypeError(f"model must be a transformers model, got {type(model).__name__}")
    read_config, read_params = _readers(getattr(config, "model_type", None))
    cfg = read_config(config.to_dict(), image_size=image_size)
    params = read_params(_torch_state(model), cfg)
    return cfg, {k: np.asarray(v, dtype=np.float32) for k, v in params.items()}


def to_transformers(config: ModelConfig, params: Mapping[str, Any]) -> Any:
    """The transformers model (eval mode, float32) holding ``params``, for ``config``."""
    import torch
    import transformers

    from minidetr.backend import to_numpy

    if not isinstance(config, ModelConfig):
        raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
    host = {k: to_numpy(v).astype(np.float32) for k, v in params.items()}
    if config.variant == "standard":
        kwargs, state = detr.detr_config_kwargs(config), detr.detr_state(config, host)
        config_class, model_class = transformers.DetrConfig, transformers.DetrForObjectDetection
    else:
        kwargs = deformable.deformable_config_kwargs(config)
        state = deformable.deformable_state(config, host)
        config_class = transformers.DeformableDetrConfig
        model_class = transformers.DeformableDetrForObjectDetection
    kwargs["backbone_config"] = transformers.ResNetConfig(**kwargs["backbone_config"])
    model = model_class(config_class(**kwargs))
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    return model.eval()
