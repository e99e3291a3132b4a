"""Prediction heads: class logits by a linear layer, boxes by the sigmoid of a 3-layer MLP.

logits = h W_c^T + b_c                      (B, Q, K), K = C + 1 (softmax) or C (focal)
boxes  = sigmoid(MLP(h) [+ u_ref])          (B, Q, 4), cxcywh in (0, 1)

With anchor queries the MLP predicts a correction in logit space of the
query's reference box u_ref (Deformable DETR's iterative refinement, DAB-DETR).
The same heads read every decoder layer, which is what DETR's auxiliary losses
need; with ``share_heads=False`` each layer has its own (Deformable DETR's
iterative refinement clones them). Carion et al. (2020), ``models/detr.py``;
Zhu et al. (2021), section 4.2.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from minidetr.backend import Array
from minidetr.model.config import ModelConfig
from minidetr.model.params import accumulate, accumulate_mlp, add_linear, add_mlp, mlp_params
from minidetr.ops import (
    linear_backward,
    linear_forward,
    mlp_backward,
    mlp_forward,
    sigmoid_backward,
    sigmoid_forward,
)
from minidetr.ops.activation import SigmoidCache
from minidetr.ops.linear import LinearCache
from minidetr.ops.mlp import MlpCache

FOCAL_PRIOR = 0.01  # initial probability of every class under focal loss (Lin et al., 2017)
BOX_MLP_LAYERS = 3


def init_heads(cfg: ModelConfig, rng: np.random.Generator, prefix: str = "") -> dict:
    """``{prefix}class_head`` (K, D) and ``{prefix}box_head`` MLP (D, D, D, 4), ``nn.Linear`` init.

    Under focal loss the class bias starts at -log((1 - pi) / pi), pi = 0.01, so
    every query begins by saying "probably nothing" and the many negatives do
    not swamp the first steps (Lin et al., "Focal Loss", section 4.1).
    """
    out: dict = {}
    d = cfg.d_model
    add_linear(out, f"{prefix}class_head", rng, cfg.num_logits, d)
    if cfg.focal:
        out[f"{prefix}class_head.bias"] = np.full(
            cfg.num_logits, -math.log((1 - FOCAL_PRIOR) / FOCAL_PRIOR)
        )
    add_mlp(out, f"{prefix}box_head", rng, (d, d, d, 4))
    out[f"{prefix}box_head.layers.{BOX_MLP_LAYERS - 1}.bias"] = np.zeros(4)
    return out


def decoder_head_prefix(cfg: ModelConfig, layer: int) -> str:
    """The heads decoder layer ``layer`` reads: ``""`` when shared, else ``decoder.layers.i.``."""
    return "" if cfg.share_heads else f"decoder.layers.{layer}."


def init_decoder_heads(cfg: ModelConfig, rng: np.random.Generator) -> dict:
    """One pair of heads shared by every decoder layer, or one pair per layer (``share_heads``)."""
    if cfg.share_heads:
        return init_heads(cfg, rng)
    out: dict = {}
    for i in range(cfg.num_decoder_layers):
        out.update(init_heads(cfg, rng, prefix=decoder_head_prefix(cfg, i)))
    return out


class HeadsCache(NamedTuple):
    cls: LinearCache
    box: MlpCache
    sig: SigmoidCache


def heads_forward(
    params: dict, h: Array, ref_unsig: Array | None = None, prefix: str = ""
) -> tuple[Array, Array, Array, HeadsCache]:
    """(logits (B, N, K), boxes (B, N, 4), u (B, N, 4) the boxes before the sigmoid, cache).

    h (B, N, D); ref_unsig (B, N, 4) the reference boxes in logit space, or None.
    """
    logits, cls = linear_forward(
        h, params[f"{prefix}class_head.weight"], params[f"{prefix}class_head.bias"]
    )
    u, box = mlp_forward(h, *mlp_params(params, f"{prefix}box_head", BOX_MLP_LAYERS))  # (B, N, 4)
    if ref_unsig is not None:
        u = u + ref_unsig
    boxes, sig = sigmoid_forward(u)
    return logits, boxes, u, HeadsCache(cls, box, sig)


def heads_backward(
    dlogits: Array | None, dboxes: Array | None, cache: HeadsCache, grads: dict, prefix: str = ""
) -> tuple[Array | None, Array | None]:
    """(dh, du): gradients of the hidden state and of u = MLP(h) + u_ref (= du_ref).

    A missing (None) output gradient counts as zero (and gives None back).
    """
    dh = du = None
    if dboxes is not None:
        (du,) = sigmoid_backward(dboxes, cache.sig)
        dh, *dparams = mlp_backward(du, cache.box)
        accumulate_mlp(grads, f"{prefix}box_head", tuple(dparams))
    if dlogits is not None:
        dh_c, dw, db = linear_backward(dlogits, cache.cls)
        accumulate(grads, f"{prefix}class_head.weight", dw)
        accumulate(grads, f"{prefix}class_head.bias", db)
        dh = dh_c if dh is None else dh + dh_c
    return dh, du
