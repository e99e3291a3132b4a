"""Gradient-weighted relevance for an encoder-decoder transformer (Chefer et al. 2021).

Attention says where a layer looked; its gradient says whether looking there
raised the explained score. For one detection's score y, every attention map A
(B, M, Lq, Lk) comes with dy/dA from the hand-written backward, and the heads
are fused as

    Ā = E_m[(dy/dA ⊙ A)^+]                       (positive part, mean over heads)

Relevance matrices start as R_ss = I (image tokens), R_qq = I (queries),
R_qs = 0, and are updated layer by layer in the order of the forward:

    encoder self-attention:   R_ss += Ā R_ss
    decoder self-attention:   R_qq += Ā R_qq,   R_qs += Ā R_qs
    decoder cross-attention:  R_qs += norm(R_qq)^T Ā norm(R_ss)

where norm(R) = rownorm(R - I) + I keeps the residual (identity) part and
rescales what attention added. Row q of R_qs is the relevance of every image
token to query q's output.

Shapes: B batch, M heads, S image tokens, Q queries.
Chefer, Gur & Wolf, "Generic Attention-model Explainability for Interpreting
Bi-Modal and Encoder-Decoder Transformers" (ICCV 2021), eqs. 5-11, and its
reference code (``avg_heads``, ``apply_mm_attention_rules``, ``handle_residual``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from minidetr.backend import Array, device, namespace
from minidetr.checks import check_floating, check_ndim
from minidetr.explain.rollout import normalize_rows


class MapAndGrad(NamedTuple):
    """One attention map A (B, M, Lq, Lk) and dy/dA of the explained score, same shape."""

    attention: Array
    grad: Array


class Relevance(NamedTuple):
    qs: Array  # (B, Q, S) relevance of every image token to every query
    ss: Array  # (B, S, S) image-token relevance after the encoder
    qq: Array  # (B, Q, Q) query relevance after the decoder's self-attention


def gradient_weighted_heads(attention: Array, grad: Array) -> Array:
    """Ā = mean_m (grad ⊙ A)^+. attention and grad (B, M, Lq, Lk) -> (B, Lq, Lk)."""
    check_floating(attention, "attention")
    check_ndim(attention, 4, "attention", "(B, M, Lq, Lk)")
    if tuple(grad.shape) != tuple(attention.shape):
        raise ValueError(
            f"grad must have the shape {tuple(attention.shape)} of attention, "
            f"got {tuple(grad.shape)}"
        )
    xp = namespace(attention, grad)
    return xp.mean(xp.clip(grad * attention, 0.0, None), axis=1)


def _eye(n: int, like: Array) -> Array:
    xp = namespace(like)
    return xp.eye(n, dtype=like.dtype, device=device(like))


def _residual_normalized(r: Array) -> Array:
    """norm(R) = rownorm(R - I) + I; a row to which attention added nothing stays the identity."""
    eye = _eye(r.shape[-1], r)
    return normalize_rows(r - eye) + eye


def _layers(maps: Sequence[MapAndGrad], name: str) -> list[MapAndGrad]:
    if isinstance(maps, MapAndGrad) or not isinstance(maps, Sequence):
        raise TypeError(f"{name} must be a sequence of MapAndGrad, one per layer")
    out = []
    for i, m in enumerate(maps):
        if not isinstance(m, MapAndGrad):
            raise TypeError(f"{name}[{i}] must be a MapAndGrad, got {type(m).__name__}")
        out.append(m)
    return out


def encoder_decoder_relevance(
    encoder_self: Sequence[MapAndGrad],
    decoder_self: Sequence[MapAndGrad],
    decoder_cross: Sequence[MapAndGrad],
) -> Relevance:
    """Chefer et al.'s relevance R_qs (B, Q, S) of image tokens to queries, with R_ss and R_qq.

    encoder_self: per encoder layer, maps (B, M, S, S); decoder_self: per decoder
    layer, (B, M, Q, Q); decoder_cross: per decoder layer, (B, M, Q, S); each with
    the gradient of the one explained score. Layers first to last; decoder layer
    i's self-attention is applied before its cross-attention. Chefer et al. (2021).
    """
    enc = _layers(encoder_self, "encoder_self")
    dec_self = _layers(decoder_self, "decoder_self")
    dec_cross = _layers(decoder_cross, "decoder_cross")
    if len(dec_self) != len(dec_cross) or not dec_cross:
        raise ValueError(
            "decoder_self and decoder_cross must list the same (non-zero) number of layers, "
            f"got {len(dec_self)} and {len(dec_cross)}"
        )
    b, _, q, s = dec_cross[0].attention.shape
    like = dec_cross[0].attention
    xp = namespace(like)
    r_ss = xp.broadcast_to(_eye(s, like), (b, s, s))
    for i, layer in enumerate(enc):
        a = gradient_weighted_heads(layer.attention, layer.grad)  # (B, S, S)
        if tuple(a.shape) != (b, s, s):
            raise ValueError(f"encoder_self[{i}] must be (B, M, S, S) with S = {s}")
        r_ss = r_ss + xp.matmul(a, r_ss)
    r_qq = xp.broadcast_to(_eye(q, like), (b, q, q))
    r_qs = xp.zeros((b, q, s), dtype=like.dtype, device=device(like))
    r_ss_hat = _residual_normalized(r_ss)
    for i, (self_layer, cross_layer) in enumerate(zip(dec_self, dec_cross)):
        a = gradient_weighted_heads(self_layer.attention, self_layer.grad)  # (B, Q, Q)
        if tuple(a.shape) != (b, q, q):
            raise ValueError(f"decoder_self[{i}] must be (B, M, Q, Q) with Q = {q}")
        r_qq = r_qq + xp.matmul(a, r_qq)
        r_qs = r_qs + xp.matmul(a, r_qs)
        a = gradient_weighted_heads(cross_layer.attention, cross_layer.grad)  # (B, Q, S)
        if tuple(a.shape) != (b, q, s):
            raise ValueError(f"decoder_cross[{i}] must be (B, M, Q, S) with (Q, S) = {(q, s)}")
        r_qq_hat = _residual_normalized(r_qq)
        r_qs = r_qs + xp.matmul(xp.matrix_transpose(r_qq_hat), xp.matmul(a, r_ss_hat))
    return Relevance(r_qs, r_ss, r_qq)
