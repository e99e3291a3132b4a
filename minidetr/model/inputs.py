"""What a MiniDETR is given, checked once where the forward starts.

Images must be a float batch (B, 3, H, W) in the parameters' dtype and array
library, with H and W multiples of the backbone stride; denoising queries must
be made for this model's queries and batch. Each check names the argument; only
the images' finiteness reads the device (once per forward), the rest are shapes
and dtypes.
"""

from __future__ import annotations

from typing import Any

from minidetr.backend import namespace
from minidetr.checks import check_dim, check_finite, check_floating, check_ndim
from minidetr.model.config import ModelConfig
from minidetr.setloss.denoising import DenoisingQueries


def check_images(images: Any, params: dict, cfg: ModelConfig) -> None:
    """Raise ``TypeError``/``ValueError`` unless ``images`` fits the model and ``params``."""
    check_floating(images, "images")
    check_ndim(images, 4, "images", "(B, 3, H, W)")
    check_dim(images, 1, 3, "images", "RGB channels, layout (B, 3, H, W)")
    s = cfg.stride
    h, w = images.shape[2], images.shape[3]
    if h % s or w % s or h == 0 or w == 0:
        raise ValueError(
            f"images height and width must be positive multiples of the backbone stride {s}, "
            f"got {h}x{w}; pad or resize them"
        )
    dtype = params["input_proj.0.weight"].dtype  # present in every config
    if images.dtype != dtype:
        raise TypeError(f"images must have the parameters' dtype {dtype}, got {images.dtype}")
    namespace(images, *params.values())  # TypeError when array libraries mix
    check_finite(images, "images")  # else NaN pixels surface layers later, under other names


def check_denoising(dn: Any, cfg: ModelConfig, batch: int) -> None:
    """Raise ``TypeError``/``ValueError`` unless ``dn`` was made for this model and batch."""
    if not isinstance(dn, DenoisingQueries):
        raise TypeError(f"denoising must be a DenoisingQueries, got {type(dn).__name__}")
    if not cfg.denoising:
        raise ValueError("denoising queries need a config with denoising=True (a label embedding)")
    if dn.num_queries != cfg.num_queries:
        raise ValueError(
            f"denoising was made for {dn.num_queries} matching queries, the model has "
            f"{cfg.num_queries}"
        )
    if dn.labels.shape[0] != batch:
        raise ValueError(f"denoising holds {dn.labels.shape[0]} images, images hold {batch}")
