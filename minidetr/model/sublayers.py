"""The sub-layers every transformer layer is built from: the FFN and the post-norm residual.

    FFN(x)          = W2 dropout(relu(W1 x + b1)) + b2
    AddNorm(x, sub) = LN(x + dropout(sub))

Post-norm, as DETR and Deformable DETR: with 2 or 3 layers the depth problems
that pre-norm cures do not arise, and post-norm hands the shared heads outputs
that are already normalised at every layer. Vaswani et al., "Attention Is All
You Need" (2017), section 3.3; Carion et al. (2020), ``models/transformer.py``.

Shapes: B batch, N tokens or queries, D width, F FFN width.
Backward functions add parameter gradients into a ``grads`` dict and return
the gradients of their array inputs.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from minidetr.backend import Array, Rng, namespace
from minidetr.model.params import accumulate, add_linear, add_norm
from minidetr.ops import (
    dropout_backward,
    dropout_forward,
    layernorm_backward,
    layernorm_forward,
    linear_backward,
    linear_forward,
    relu_backward,
    relu_forward,
)
from minidetr.ops.activation import DropoutCache, ReluCache
from minidetr.ops.linear import LinearCache
from minidetr.ops.normalization import NormCache


class RunContext(NamedTuple):
    """What every layer needs to know about the run: dropout rate, mode, random source."""

    dropout: float
    train: bool
    rng: Rng | None


def sum_to(x: Array, batch: int) -> Array:
    """Reduce a broadcast (B, N, D) gradient to the (batch, N, D) shape it came from."""
    if batch == x.shape[0]:
        return x
    return namespace(x).sum(x, axis=0, keepdims=True)


class FfnCache(NamedTuple):
    linear1: LinearCache
    relu: ReluCache
    drop: DropoutCache
    linear2: LinearCache


def ffn_forward(params: dict, name: str, x: Array, ctx: RunContext) -> tuple[Array, FfnCache]:
    """FFN(x) = W2 dropout(relu(W1 x + b1)) + b2. x (B, N, D) -> (B, N, D), hidden (B, N, F)."""
    h, l1 = linear_forward(x, params[f"{name}.linear1.weight"], params[f"{name}.linear1.bias"])
    h, relu = relu_forward(h)  # (B, N, F)
    h, drop = dropout_forward(h, ctx.dropout, train=ctx.train, rng=ctx.rng)
    y, l2 = linear_forward(h, params[f"{name}.linear2.weight"], params[f"{name}.linear2.bias"])
    return y, FfnCache(l1, relu, drop, l2)


def ffn_backward(dy: Array, cache: FfnCache, grads: dict, name: str) -> Array:
    """dx of the FFN; its four parameter gradients go into ``grads``."""
    dh, dw2, db2 = linear_backward(dy, cache.linear2)
    (dh,) = dropout_backward(dh, cache.drop)
    (dh,) = relu_backward(dh, cache.relu)
    dx, dw1, db1 = linear_backward(dh, cache.linear1)
    for key, g in (("linear1.weight", dw1), ("linear1.bias", db1)):
        accumulate(grads, f"{name}.{key}", g)
    for key, g in (("linear2.weight", dw2), ("linear2.bias", db2)):
        accumulate(grads, f"{name}.{key}", g)
    return dx


class AddNormCache(NamedTuple):
    drop: DropoutCache
    norm: NormCache


def add_norm_forward(
    params: dict, name: str, x: Array, sub: Array, ctx: RunContext
) -> tuple[Array, AddNormCache]:
    """y = LN(x + dropout(sub)), the residual connection of a post-norm transformer."""
    sub, drop = dropout_forward(sub, ctx.dropout, train=ctx.train, rng=ctx.rng)
    y, norm = layernorm_forward(x + sub, params[f"{name}.weight"], params[f"{name}.bias"])
    return y, AddNormCache(drop, norm)


def add_norm_backward(dy: Array, cache: AddNormCache, grads: dict, name: str) -> tuple:
    """(dx, dsub) of ``LN(x + dropout(sub))``."""
    dsum, dgamma, dbeta = layernorm_backward(dy, cache.norm)
    accumulate(grads, f"{name}.weight", dgamma)
    accumulate(grads, f"{name}.bias", dbeta)
    (dsub,) = dropout_backward(dsum, cache.drop)
    return dsum, dsub


def init_ffn_and_norms(out: dict, name: str, cfg: Any, rng: np.random.Generator, num_norms: int):
    """``name.linear1``, ``name.linear2`` (Xavier, zero biases) and ``name.norm1..num_norms``."""
    add_linear(out, f"{name}.linear1", rng, cfg.ffn_dim, cfg.d_model, xavier=True)
    add_linear(out, f"{name}.linear2", rng, cfg.d_model, cfg.ffn_dim, xavier=True)
    for j in range(1, num_norms + 1):
        add_norm(out, f"{name}.norm{j}", cfg.d_model)
