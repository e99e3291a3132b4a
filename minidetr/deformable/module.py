"""MSDeformAttn: Deformable DETR's multi-scale deformable attention module.

Each query predicts, from its own features, where to look (sampling offsets
around its reference point) and how much each look counts (attention weights,
a softmax over the L * P samples of a head); the looks read a projection of the
multi-scale feature maps by bilinear interpolation.

    value     = input_flatten W_v + b_v, zeroed where padded     (B, S, M, Dh)
    offsets   = query W_o + b_o                                   (B, Q, M, L, P, 2)
    A         = softmax_{L*P}(query W_a + b_a)                    (B, Q, M, L, P)
    locations = ref + offsets / (W_l, H_l)          for points   (B, Q, L, 2)
              = ref_xy + offsets / P * ref_wh / 2   for boxes    (B, Q, L, 4) as (cx, cy, w, h)
    out       = ms_deform_attn(value, locations, A) W_out + b_out (B, Q, D)

Parameters live in a plain dict ``name -> array`` (names as in Deformable DETR:
``value_proj``, ``sampling_offsets``, ``attention_weights``, ``output_proj``, each
with ``.weight`` (out, in) and ``.bias``); the backward returns a dict with the
same keys. D = M * Dh is the model width; other letters as in
:mod:`minidetr.deformable.layout`. Zhu et al., "Deformable DETR" (ICLR 2021),
section 4.1 and its reference code's ``MSDeformAttn``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from minidetr.attention.record import record_attention_grad
from minidetr.backend import Array, Rng, asarray, device, namespace
from minidetr.checks import check_dim, check_finite, check_floating, check_ndim
from minidetr.deformable.layout import SpatialShapes, as_spatial_shapes
from minidetr.deformable.ms_deform_attn import (
    MSDeformAttnCache,
    ms_deform_attn_backward,
    ms_deform_attn_forward,
)
from minidetr.deformable.offset_penalty import (
    OffsetPenaltyCache,
    check_offset_weight,
    offset_penalty_backward,
    offset_penalty_forward,
)
from minidetr.ops.linear import LinearCache, linear_backward, linear_forward
from minidetr.ops.softmax import SoftmaxCache, softmax_backward, softmax_forward

PARAM_NAMES = tuple(
    f"{layer}.{kind}"
    for layer in ("sampling_offsets", "attention_weights", "value_proj", "output_proj")
    for kind in ("weight", "bias")
)


def sampling_offset_bias(n_heads: int, n_levels: int, n_points: int) -> np.ndarray:
    """Deformable DETR's initial offsets: head m looks along angle 2 pi m / M, point p at p + 1.

    The direction (cos, sin) is scaled so that its larger component is 1 (a step of
    one pixel), then the same for every level. Returns (M * L * P * 2,) float64.
    """
    theta = np.arange(n_heads) * (2.0 * math.pi / n_heads)  # (M,)
    direction = np.stack([np.cos(theta), np.sin(theta)], axis=-1)  # (M, 2)
    direction = direction / np.abs(direction).max(axis=-1, keepdims=True)
    scale = np.arange(1, n_points + 1, dtype=np.float64)  # (P,)
    grid = direction[:, None, None, :] * scale[None, None, :, None]  # (M, 1, P, 2)
    return np.broadcast_to(grid, (n_heads, n_levels, n_points, 2)).reshape(-1)


def init_ms_deform_attn_params(
    d_model: int,
    n_levels: int,
    n_heads: int,
    n_points: int,
    rng: Rng | int | np.random.Generator,
    *,
    like: Array | None = None,
) -> dict[str, Array]:
    """Parameters initialised as Deformable DETR does.

    Sampling offsets: zero weight, directional bias (:func:`sampling_offset_bias`);
    attention weights: zero weight and bias (uniform attention); value and output
    projections: Xavier-uniform weight, zero bias. Arrays follow ``like``'s
    namespace, device and dtype (default: NumPy float64).
    """
    if d_model < 1 or n_heads < 1 or d_model % n_heads:
        raise ValueError(f"n_heads ({n_heads}) must divide d_model ({d_model})")
    for name, n in (("n_levels", n_levels), ("n_points", n_points)):
        if n < 1:
            raise ValueError(f"{name} must be at least 1, got {n}")
    rng = rng if isinstance(rng, Rng) else Rng(rng)
    like = np.zeros((), dtype=np.float64) if like is None else like
    xp = namespace(like)
    n_samples = n_heads * n_levels * n_points

    def zeros(*shape: int) -> Array:
        return xp.zeros(shape, dtype=like.dtype, device=device(like))

    def xavier(n_out: int, n_in: int) -> Array:
        bound = math.sqrt(6.0 / (n_in + n_out))
        return (2.0 * rng.uniform((n_out, n_in), like=like) - 1.0) * bound

    return {
        "sampling_offsets.weight": zeros(n_samples * 2, d_model),
        "sampling_offsets.bias": asarray(
            sampling_offset_bias(n_heads, n_levels, n_points), like=like, dtype=like.dtype
        ),
        "attention_weights.weight": zeros(n_samples, d_model),
        "attention_weights.bias": zeros(n_samples),
        "value_proj.weight": xavier(d_model, d_model),
        "value_proj.bias": zeros(d_model),
        "output_proj.weight": xavier(d_model, d_model),
        "output_proj.bias": zeros(d_model),
    }


class MSDeformAttnModuleCache(NamedTuple):
    value_proj: LinearCache
    sampling_offsets: LinearCache
    attention_logits: LinearCache
    softmax: SoftmaxCache
    sampling: MSDeformAttnCache
    output_proj: LinearCache
    offsets: Array  # (B, Q, M, L, P, 2) raw offsets, for the gradient of box sizes
    reference_points: Array  # (B, Q, L, 2) or (B, Q, L, 4)
    padding_mask: Array | None  # (B, S) True = padded
    normalizer: Array  # (L, 2) as (W_l, H_l)
    n_heads: int
    n_levels: int
    n_points: int
    penalty: Array | None = None  # 0-d, the offset L2 penalty of this call (offset_l2 > 0)
    penalty_cache: OffsetPenaltyCache | None = None


def _check_params(params: dict[str, Array], d_model: int, n_samples: int) -> None:
    want = {
        "sampling_offsets.weight": (2 * n_samples, d_model),
        "sampling_offsets.bias": (2 * n_samples,),
        "attention_weights.weight": (n_samples, d_model),
        "attention_weights.bias": (n_samples,),
        "value_proj.weight": (d_model, d_model),
        "value_proj.bias": (d_model,),
        "output_proj.weight": (d_model, d_model),
        "output_proj.bias": (d_model,),
    }
    for name, shape in want.items():
        if name not in params:
            raise ValueError(f"params is missing {name!r}; expected the keys {PARAM_NAMES}")
        check_floating(params[name], f"params[{name!r}]")
        if tuple(params[name].shape) != shape:
            raise ValueError(
                f"params[{name!r}] must have shape {shape}, got {tuple(params[name].shape)}"
            )


def ms_deform_attn_module_forward(
    params: dict[str, Array],
    query: Array,
    reference_points: Array,
    input_flatten: Array,
    spatial_shapes: Sequence[Sequence[int]] | Array,
    padding_mask: Array | None = None,
    *,
    n_heads: int,
    n_levels: int,
    n_points: int,
    impl: str = "auto",
    offset_l2: float = 0.0,
) -> tuple[Array, MSDeformAttnModuleCache]:
    """out = MSDeformAttn(query, reference_points, input_flatten), see the module docstring.

    query (B, Q, D), reference_points (B, Q, L, 2) normalised (x, y) or (B, Q, L, 4)
    normalised (cx, cy, w, h), input_flatten (B, S, D) the L maps flattened and
    stacked, spatial_shapes (L, 2) as (H_l, W_l), padding_mask (B, S) boolean, True
    = padded token (its value is zeroed). ``impl`` picks the sampling kernel as in
    :func:`~minidetr.deformable.ms_deform_attn.ms_deform_attn_forward`.
    ``offset_l2`` > 0 also computes the L2 penalty of the offsets in level pixels
    (:mod:`minidetr.deformable.offset_penalty`) into ``cache.penalty``; the backward
    then adds its gradient. Returns out (B, Q, D).
    """
    offset_l2 = check_offset_weight(offset_l2)
    check_floating(query, "query")
    check_ndim(query, 3, "query", "(B, Q, D)")
    check_ndim(input_flatten, 3, "input_flatten", "(B, S, D)")
    check_floating(reference_points, "reference_points")
    check_ndim(reference_points, 4, "reference_points", "(B, Q, L, 2) or (B, Q, L, 4)")
    b, q, d_model = query.shape
    if n_heads < 1 or d_model % n_heads:
        raise ValueError(f"n_heads ({n_heads}) must divide the model width of query ({d_model})")
    shapes: SpatialShapes = as_spatial_shapes(spatial_shapes)
    if len(shapes) != n_levels:
        raise ValueError(
            f"spatial_shapes must list n_levels = {n_levels} levels, got {len(shapes)}"
        )
    check_dim(input_flatten, 0, b, "input_flatten", "batch size of query")
    check_dim(input_flatten, 2, d_model, "input_flatten", "model width of query")
    check_dim(input_flatten, 1, sum(h * w for h, w in shapes), "input_flatten", "S = sum H_l * W_l")
    check_dim(reference_points, 0, b, "reference_points", "batch size of query")
    check_dim(reference_points, 1, q, "reference_points", "queries of query")
    check_dim(reference_points, 2, n_levels, "reference_points", "levels")
    if reference_points.shape[-1] not in (2, 4):
        raise ValueError(
            "reference_points must end in 2 (x, y) or 4 (cx, cy, w, h), "
            f"got shape {tuple(reference_points.shape)}"
        )
    m, lv, p = n_heads, n_levels, n_points
    _check_params(params, d_model, m * lv * p)
    xp = namespace(query, reference_points, input_flatten)
    s = input_flatten.shape[1]

    value, v_cache = linear_forward(
        input_flatten, params["value_proj.weight"], params["value_proj.bias"]
    )
    if padding_mask is not None:
        if padding_mask.dtype != xp.bool or tuple(padding_mask.shape) != (b, s):
            raise ValueError(
                f"padding_mask must be boolean of shape (B, S) = {(b, s)}, "
                f"got {padding_mask.dtype} {tuple(padding_mask.shape)}"
            )
        value = xp.where(padding_mask[..., None], xp.zeros_like(value), value)
    value = xp.reshape(value, (b, s, m, d_model // m))  # (B, S, M, Dh)

    offsets, o_cache = linear_forward(
        query, params["sampling_offsets.weight"], params["sampling_offsets.bias"]
    )
    offsets = xp.reshape(offsets, (b, q, m, lv, p, 2))  # (B, Q, M, L, P, 2)
    logits, a_cache = linear_forward(
        query, params["attention_weights.weight"], params["attention_weights.bias"]
    )
    attn, s_cache = softmax_forward(xp.reshape(logits, (b, q, m, lv * p)))  # over L*P
    attn = xp.reshape(attn, (b, q, m, lv, p))  # (B, Q, M, L, P)

    normalizer = asarray([[w, h] for h, w in shapes], like=query, dtype=query.dtype)  # (L, 2)
    ref = reference_points[:, :, None, :, None, :]  # (B, Q, 1, L, 1, 2 or 4)
    if reference_points.shape[-1] == 2:
        locations = ref + offsets / normalizer[:, None, :]
    else:
        locations = ref[..., :2] + offsets / p * ref[..., 2:] * 0.5  # (B, Q, M, L, P, 2)

    # one read of the device per call: a non-finite sample has no pixel to read, and the
    # error names the input it came from
    if not bool(xp.all(xp.isfinite(locations))):
        check_finite(reference_points, "reference_points")
        check_finite(query, "query")  # the offsets are a function of the query
        check_finite(locations, "sampling_locations")  # then the parameters are to blame
    sampled, d_cache = ms_deform_attn_forward(
        value, shapes, locations, attn, impl=impl, assume_finite=True
    )
    out, p_cache = linear_forward(sampled, params["output_proj.weight"], params["output_proj.bias"])
    # sampled and out: (B, Q, D)
    penalty = pen_cache = None
    if offset_l2 > 0:
        penalty, pen_cache = offset_penalty_forward(
            offsets, reference_points, normalizer, offset_l2
        )
    cache = MSDeformAttnModuleCache(
        v_cache, o_cache, a_cache, s_cache, d_cache, p_cache,
        offsets, reference_points, padding_mask, normalizer, m, lv, p, penalty, pen_cache,
    )  # fmt: skip
    return out, cache


def _sum_heads_points(x: Array) -> Array:
    """sum over heads and points of x (B, Q, M, L, P, 2) -> (B, Q, L, 2), as M + P - 2 adds of
    slices: NumPy's reduction over these two short strided axes measured 10x slower."""
    acc = x[:, :, 0, ...]
    for i in range(1, x.shape[2]):
        acc = acc + x[:, :, i, ...]  # (B, Q, L, P, 2)
    out = acc[:, :, :, 0, ...]
    for j in range(1, acc.shape[3]):
        out = out + acc[:, :, :, j, ...]  # (B, Q, L, 2)
    return out


def ms_deform_attn_module_backward(
    dout: Array, cache: MSDeformAttnModuleCache
) -> tuple[Array, Array, Array, dict[str, Array]]:
    """Gradients (dquery, dreference_points, dinput_flatten, dparams) for dout (B, Q, D).

    ``dparams`` has the keys of ``params``. The query receives gradient through
    both the offsets and the attention weights; a reference point through every
    sample that starts from it (summed over heads and points).
    """
    xp = namespace(dout)
    c = cache
    m, lv, p = c.n_heads, c.n_levels, c.n_points
    b, q = dout.shape[:2]
    dparams: dict[str, Array] = {}

    dsampled, dparams["output_proj.weight"], dparams["output_proj.bias"] = linear_backward(
        dout, c.output_proj
    )
    dvalue, dloc, dattn = ms_deform_attn_backward(dsampled, c.sampling)
    record_attention_grad(c, dattn)  # kept only while explanations record dL/dA

    (dlogits,) = softmax_backward(xp.reshape(dattn, (b, q, m, lv * p)), c.softmax)
    dquery_a, dparams["attention_weights.weight"], dparams["attention_weights.bias"] = (
        linear_backward(xp.reshape(dlogits, (b, q, m * lv * p)), c.attention_logits)
    )

    if c.reference_points.shape[-1] == 2:
        doffsets = dloc / c.normalizer[:, None, :]  # (B, Q, M, L, P, 2)
        dref = _sum_heads_points(dloc)  # (B, Q, L, 2)
    else:
        size = c.reference_points[:, :, None, :, None, 2:]  # (B, Q, 1, L, 1, 2) as (w, h)
        doffsets = dloc * size * (0.5 / p)
        dsize = _sum_heads_points(dloc * c.offsets * (0.5 / p))  # (B, Q, L, 2)
        dref = xp.concat([_sum_heads_points(dloc), dsize], axis=-1)  # (B, Q, L, 4)
    if c.penalty_cache is not None:  # the offset penalty's own gradient, dR = 1
        doffsets_r, dref_r = offset_penalty_backward(1.0, c.penalty_cache)
        doffsets, dref = doffsets + doffsets_r, dref + dref_r
    dquery_o, dparams["sampling_offsets.weight"], dparams["sampling_offsets.bias"] = (
        linear_backward(xp.reshape(doffsets, (b, q, m * lv * p * 2)), c.sampling_offsets)
    )

    dvalue = xp.reshape(dvalue, (dvalue.shape[0], dvalue.shape[1], -1))  # (B, S, D)
    if c.padding_mask is not None:
        dvalue = xp.where(c.padding_mask[..., None], xp.zeros_like(dvalue), dvalue)
    dinput, dparams["value_proj.weight"], dparams["value_proj.bias"] = linear_backward(
        dvalue, c.value_proj
    )
    dparams = {name: dparams[name] for name in PARAM_NAMES}
    return dquery_a + dquery_o, dref, dinput, dparams
