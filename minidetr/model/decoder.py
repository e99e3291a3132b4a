"""The decoder stack: queries read the memory layer by layer, the heads read every layer.

Two kinds of query:

* DETR's: a learned positional embedding per query, the same at every layer;
  each layer's boxes are predicted from scratch, boxes = sigmoid(MLP(h_l)).
* anchor queries (DAB-DETR, Deformable DETR, DINO): query i carries a box b_i,
  given in logit space u_i = inverse_sigmoid(b_i). At each layer

      qpos_l  = MLP_pos(sine(sigmoid(u_l)))            positional query from the box
      h_l     = DecoderLayer(h_{l-1}, qpos_l, memory, reference box sigmoid(u_l))
      boxes_l = sigmoid(MLP_box(h_l) + u_l)            a correction of the box
      u_{l+1} = inverse_sigmoid(boxes_l), detached     (box_refine; else u_{l+1} = u_l)

  Detaching between layers (Deformable DETR, section A.4) makes each layer
  learn its own correction instead of passing gradients down the stack.
* both given (Deformable DETR's own queries): the positional query stays the
  given one; the reference u_0 is a 2-D point (x, y), which corrects the box
  centre only, (u_x, u_y, 0, 0), or with two-stage the selected proposal's box;
  with box_refine each later layer reads the previous layer's box.

With ``final_norm`` (DETR) the heads read LN(h_l), one LayerNorm shared by all
layers, while the next layer reads h_l itself.

The stack's inputs come in two bundles, :class:`Queries` (the queries before the
first layer) and :class:`~minidetr.model.memory.Memory` (what every layer reads).

Shapes: B batch, N queries in the decoder (denoising and matching), S memory
tokens, D width, K logits.
"""

from __future__ import annotations

from typing import NamedTuple

from minidetr.backend import Array, namespace
from minidetr.model.attention_kind import AttentionKind
from minidetr.model.config import ModelConfig
from minidetr.model.decoder_layer import (
    DecoderLayerCache,
    LayerQueries,
    decoder_layer_backward,
    decoder_layer_forward,
)
from minidetr.model.heads import HeadsCache, decoder_head_prefix, heads_backward, heads_forward
from minidetr.model.memory import Memory
from minidetr.model.params import accumulate, accumulate_mlp, mlp_params
from minidetr.model.sublayers import RunContext, sum_to
from minidetr.ops import (
    box_sine_embedding_backward,
    box_sine_embedding_forward,
    inverse_sigmoid,
    layernorm_backward,
    layernorm_forward,
    mlp_backward,
    mlp_forward,
    sigmoid_backward,
    sigmoid_forward,
)
from minidetr.ops.activation import SigmoidCache
from minidetr.ops.mlp import MlpCache
from minidetr.ops.normalization import NormCache
from minidetr.ops.position import BoxSineCache

POS_HEAD_LAYERS = 2  # MLP_pos: 2 D -> D -> D, as DAB-DETR's ref_point_head


class Queries(NamedTuple):
    """The decoder's N queries before the first layer: either anchors or DETR's positions."""

    content: Array  # (B, N, D) tgt, what each query carries into the first layer
    anchors: Array | None  # (B, N, 4) anchor boxes in logit space u_0, or None
    pos: Array | None  # (1, N, D) DETR's learned positional queries, or None (anchors)
    self_mask: Array | None  # (N, N) True = may attend, or None


class DecoderStepCache(NamedTuple):
    ref: SigmoidCache | None  # anchor queries only: sigmoid(u_l)
    sine: BoxSineCache | None
    pos_head: MlpCache | None
    layer: DecoderLayerCache
    final_norm: NormCache | None  # DETR's shared decoder LayerNorm before the heads, or None
    heads: HeadsCache
    head_prefix: str  # whose heads read this layer: "" (shared) or "decoder.layers.i."


class DecoderCache(NamedTuple):
    steps: tuple[DecoderStepCache, ...]
    kind: AttentionKind
    box_refine: bool
    refined: tuple[Array, ...]  # the detached u_1 .. u_{n-1} (box_refine only)
    pos_batch: int = 1  # learned positions: 1 when shared by the batch, B when per image


def _add(a: Array | None, b: Array | None) -> Array | None:
    return b if a is None else a if b is None else a + b


def decoder_forward(
    params: dict,
    cfg: ModelConfig,
    kind: AttentionKind,
    queries: Queries,
    memory: Memory,
    ctx: RunContext,
    refined: tuple[Array, ...] | None = None,
) -> tuple[list[tuple[Array, Array]], DecoderCache]:
    """[(logits (B, N, K), boxes (B, N, 4)) for every layer], cache.

    ``queries`` carries either anchor boxes (B, N, 4) in logit space or DETR's
    learned positional queries (1, N, D); ``memory`` the encoder's output
    (B, S, D), its positions (1, S, D) and layout. ``refined`` (an earlier
    cache's) replaces the detached u_1 .. u_{n-1}, so the outputs become a smooth
    function of the parameters, as a gradient check needs.
    """
    outputs, steps, new_refs = [], [], []
    h, ref_unsig, query_pos = queries.content, queries.anchors, queries.pos
    for i in range(cfg.num_decoder_layers):
        ref = ref_cache = sine = pos_head = None
        if ref_unsig is not None:
            ref, ref_cache = sigmoid_forward(ref_unsig)  # (B, N, 4), or (B, N, 2) points
        if ref_unsig is not None and queries.pos is None:  # anchors: the position from the box
            emb, sine = box_sine_embedding_forward(ref, cfg.d_model)  # (B, N, 2 D)
            query_pos, pos_head = mlp_forward(
                emb, *mlp_params(params, "query.pos_head", POS_HEAD_LAYERS)
            )  # (B, N, D)
        h, layer = decoder_layer_forward(
            params,
            f"decoder.layers.{i}",
            queries=LayerQueries(h, query_pos, ref, queries.self_mask),
            memory=memory,
            kind=kind,
            cfg=cfg,
            ctx=ctx,
        )  # (B, N, D)
        h_out, final_norm = h, None
        if cfg.final_norm:  # DETR: the heads read LN(h_l); the next layer reads h_l itself
            h_out, final_norm = layernorm_forward(
                h, params["decoder.norm.weight"], params["decoder.norm.bias"]
            )
        prefix = decoder_head_prefix(cfg, i)
        logits, boxes, _, heads = heads_forward(params, h_out, _as_box(ref_unsig), prefix=prefix)
        outputs.append((logits, boxes))
        steps.append(DecoderStepCache(ref_cache, sine, pos_head, layer, final_norm, heads, prefix))
        if ref_unsig is not None and cfg.box_refine and i + 1 < cfg.num_decoder_layers:
            # detached: no gradient flows back through the next layer's reference
            ref_unsig = inverse_sigmoid(boxes) if refined is None else refined[i]
            new_refs.append(ref_unsig)
    pos_batch = 1 if queries.pos is None else queries.pos.shape[0]
    return outputs, DecoderCache(tuple(steps), kind, cfg.box_refine, tuple(new_refs), pos_batch)


def _as_box(ref_unsig: Array | None) -> Array | None:
    """A 2-D reference point (x, y) corrects the box centre only: (u_x, u_y, 0, 0)."""
    if ref_unsig is None or ref_unsig.shape[-1] == 4:
        return ref_unsig
    xp = namespace(ref_unsig)
    return xp.concat([ref_unsig, xp.zeros_like(ref_unsig)], axis=-1)  # (B, N, 4)


def decoder_backward(
    doutputs: list[tuple[Array, Array]], cache: DecoderCache, grads: dict
) -> tuple[Array, Array | None, Array | None, Array, Array | None]:
    """(dtgt (B, N, D), dref_unsig (B, N, 4) or None, dquery_pos (1, N, D) or None,
    dmemory (B, S, D), dmemory_pos (1, S, D) or None) from each layer's (dlogits, dboxes)."""
    dh = dref0 = dqpos0 = dmemory = dmemory_pos = None
    for i in reversed(range(len(cache.steps))):
        step = cache.steps[i]
        dlogits, dboxes = doutputs[i]
        dh_heads, du = heads_backward(dlogits, dboxes, step.heads, grads, step.head_prefix)
        if step.final_norm is not None and dh_heads is not None:
            dh_heads, dgamma, dbeta = layernorm_backward(dh_heads, step.final_norm)
            accumulate(grads, "decoder.norm.weight", dgamma)
            accumulate(grads, "decoder.norm.bias", dbeta)
        dh = _add(dh, dh_heads)
        dh, dqpos, dmem, dmem_pos, dref = decoder_layer_backward(
            dh, step.layer, cache.kind, grads, f"decoder.layers.{i}"
        )
        dmemory = _add(dmemory, dmem)
        dmemory_pos = _add(dmemory_pos, None if dmem_pos is None else sum_to(dmem_pos, 1))
        if step.pos_head is None:  # learned positions, the same for all layers (DETR, Deformable)
            dqpos0 = _add(dqpos0, sum_to(dqpos, cache.pos_batch))
            if step.ref is not None and (i == 0 or not cache.box_refine):  # 2-D points
                k = step.ref.y.shape[-1]
                du_ref = None if dref is None else sigmoid_backward(dref, step.ref)[0]
                dref0 = _add(dref0, _add(du_ref, None if du is None else du[..., :k]))
            continue
        demb, *dparams = mlp_backward(dqpos, step.pos_head)
        accumulate_mlp(grads, "query.pos_head", tuple(dparams))
        if i == 0 or not cache.box_refine:  # otherwise u_i is a detached constant
            (dref_s,) = box_sine_embedding_backward(demb, step.sine)  # (B, N, 4)
            (du_ref,) = sigmoid_backward(_add(dref_s, dref), step.ref)
            dref0 = _add(dref0, _add(du_ref, du))
    return dh, dref0, dqpos0, dmemory, dmemory_pos
