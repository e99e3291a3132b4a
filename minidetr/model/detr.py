"""MiniDETR: one image from pixels to boxes, and every gradient back.

forward, step by step (each a call to an op pair met in the lessons):

1. backbone       conv2d + groupnorm + relu, stride 2 per stage    -> L maps (B, C_l, H_l, W_l)
2. tokens         1x1 conv2d + groupnorm, flatten; sine positions (+ level embedding)
                                                                    -> src (B, S, D), pos (1, S, D)
3. encoder        self-attention (dense or deformable) + FFN, post-norm   -> memory (B, S, D)
4. queries        learned content (Q, D) with DETR's learned positions, learned anchor boxes,
                  or the encoder's Q best proposals (two-stage); denoising queries in front
5. decoder        self-attention, cross-attention to memory, FFN; heads on every layer
6. outputs        SetOutputs: per decoder layer, the "main" queries, "dn" denoising
                  queries and "enc" two-stage proposals (DETR's outputs dict via .to_dict())

backward runs the same list in reverse and returns a gradient for every parameter.
Carion et al., "End-to-End Object Detection with Transformers" (2020); Zhu et
al., "Deformable DETR" (2021); Liu et al., "DAB-DETR" (2022); Li et al., "DN-DETR"
(2022); Zhang et al., "DINO" (2023).

Shapes: B batch, 3 x H x W images, Q matching queries, Qdn denoising queries,
S memory tokens, L levels, D width, K logits (C + 1, or C with focal loss).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from minidetr.backend import Array, Rng, asarray, namespace
from minidetr.model.attention_kind import STANDARD, AttentionKind
from minidetr.model.backbone import (
    BackboneCache,
    backbone_backward,
    backbone_forward,
    init_backbone,
)
from minidetr.model.config import ModelConfig
from minidetr.model.decoder import DecoderCache, Queries, decoder_backward, decoder_forward
from minidetr.model.decoder_layer import init_decoder_layers
from minidetr.model.deformable_transformer import DEFORMABLE, offset_penalty
from minidetr.model.efficient_encoder import EFFICIENT_ENCODER
from minidetr.model.encoder import encoder_backward, encoder_forward, init_encoder
from minidetr.model.heads import init_decoder_heads
from minidetr.model.inputs import check_denoising, check_images
from minidetr.model.memory import Memory
from minidetr.model.params import accumulate, add_norm, check_params
from minidetr.model.queries import (
    ProposalQueryCache,
    init_queries,
    proposal_queries_backward,
    proposal_queries_forward,
    reference_points_backward,
    reference_points_forward,
)
from minidetr.model.sublayers import RunContext
from minidetr.model.tokens import (
    TokensCache,
    init_tokens,
    proposals,
    tokens_backward,
    tokens_forward,
)
from minidetr.model.two_stage import (
    TwoStageCache,
    init_two_stage,
    two_stage_backward,
    two_stage_forward,
)
from minidetr.ops import embedding_backward, embedding_forward, inverse_sigmoid
from minidetr.ops.embedding import EmbeddingCache
from minidetr.ops.linear import LinearCache
from minidetr.outputs import DN, ENC, MAIN, Predictions, QueryGroup, SetOutputs
from minidetr.setloss.denoising import DenoisingQueries


def attention_kind(cfg: ModelConfig) -> AttentionKind:
    """Dense attention for DETR (its encoder core set by ``encoder_attention``), multi-scale
    deformable attention for Deformable DETR."""
    if cfg.variant == "deformable":
        return DEFORMABLE
    return STANDARD if cfg.encoder_attention == "softmax" else EFFICIENT_ENCODER


class MiniDETRCache(NamedTuple):
    backbone: BackboneCache
    tokens: TokensCache
    encoder: list
    two_stage: TwoStageCache | None
    label_embed: EmbeddingCache | None
    decoder: DecoderCache
    num_dn: int  # Qdn, denoising queries in front of the Q matching ones
    ref_point: LinearCache | None = None  # learned_reference: the Linear of the 2-D points
    proposal_query: ProposalQueryCache | None = None  # proposal_queries

    @property
    def detached(self) -> dict:
        """The values the forward detached (top-K choice, refined boxes), to hold them fixed."""
        ts = self.two_stage
        return {
            "two_stage": None if ts is None else (ts.select, ts.anchors),
            "refined": self.decoder.refined,
        }


class MiniDETR:
    """A DETR built from the op kit, with a hand-written backward.

    ``model = MiniDETR(PRESETS["tiny"])``; ``params = model.init_params(seed)``;
    ``outputs, cache = model.forward(params, images, train=True, rng=rng)``;
    ``grads = model.backward(output_grads, cache)`` with output_grads shaped like
    outputs (missing entries count as zero), e.g. ``SetCriterion.backward``'s.
    """

    def __init__(self, config: ModelConfig) -> None:
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
        self.config = config
        self.kind = attention_kind(config)
        self.param_shapes = {k: tuple(v.shape) for k, v in self._init_host(0).items()}

    # ------------------------------------------------------------------ parameters

    def _init_host(self, seed: int) -> dict[str, np.ndarray]:
        cfg, rng = self.config, np.random.default_rng(seed)
        out = init_backbone(cfg, rng)
        out.update(init_tokens(cfg, rng))
        out.update(init_encoder(cfg, rng, self.kind))
        out.update(init_decoder_layers(cfg, rng, self.kind))
        out.update(init_queries(cfg, rng))
        if cfg.final_norm:  # DETR's shared LayerNorm before the heads, at 1 and 0
            add_norm(out, "decoder.norm", cfg.d_model)
        out.update(init_decoder_heads(cfg, rng))
        if cfg.two_stage:
            out.update(init_two_stage(cfg, rng))
        return out

    def init_params(self, seed: int = 0, *, like: Array | None = None, dtype: Any = None) -> dict:
        """Fresh parameters from a seeded generator: name -> array.

        NumPy float32 by default; ``like`` puts them in its namespace and on its
        device (with its dtype unless ``dtype`` is given). The same seed gives the
        same numbers on every backend.
        """
        host = self._init_host(seed)
        if like is None:
            like = np.empty(0, dtype=np.float32 if dtype is None else dtype)
        dtype = like.dtype if dtype is None else dtype
        return {k: asarray(v, like=like, dtype=dtype) for k, v in host.items()}

    def check_params(self, params: dict) -> None:
        """Raise a clear error unless ``params`` has exactly this config's names and shapes."""
        check_params(params, self.param_shapes)

    def num_params(self) -> int:
        """Total number of scalar parameters."""
        return int(sum(np.prod(s) for s in self.param_shapes.values()))

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        params: dict,
        images: Array,
        *,
        train: bool = True,
        rng: Rng | None = None,
        denoising: DenoisingQueries | None = None,
        detached: dict | None = None,
        dn_content: Array | None = None,
    ) -> tuple[SetOutputs, MiniDETRCache]:
        """The predictions for images (B, 3, H, W), and the cache for :meth:`backward`.

        outputs (:class:`~minidetr.outputs.SetOutputs`): group "main" holds, per decoder
        layer, logits (B, Q, K) and boxes (B, Q, 4) cxcywh in (0, 1) (``outputs.pred_logits``
        and ``outputs.pred_boxes`` are the last layer's); two-stage models add "enc" (the Q
        selected proposals); with ``denoising`` (from
        ``minidetr.setloss.denoising.make_denoising_queries``) "dn" holds the same for the
        Qdn denoising queries, with the DenoisingQueries as its ``meta``. ``rng`` feeds
        dropout when ``train`` and ``dropout > 0``. ``detached`` (an earlier
        ``cache.detached``) holds the detached values fixed, so that the outputs are a
        smooth function of the parameters (for gradient checks), as the criterion's
        ``matches`` does for the matching. ``dn_content`` (B, Qdn, D), with ``denoising``, is
        added to the denoising queries' content (their label embedding): what a caller feeds
        those slots beyond a class, e.g. a track's previous decoder embedding (TrackFormer);
        :meth:`backward_dn_content` returns its gradient.
        """
        cfg = self.config
        check_params(params, self.param_shapes)
        check_images(images, params, cfg)
        if isinstance(rng, np.random.Generator):
            rng = Rng(rng)
        xp = namespace(images)
        ctx = RunContext(cfg.dropout, train, rng)
        feats, bb = backbone_forward(params, images, cfg)  # L x (B, C_l, H_l, W_l)
        src, pos, layout, tk = tokens_forward(params, feats, cfg)  # (B, S, D), (1, S, D)
        memory, enc = encoder_forward(params, src, pos, layout, self.kind, cfg, ctx)  # (B, S, D)

        b, q, d = images.shape[0], cfg.num_queries, cfg.d_model
        groups: dict = {}
        if cfg.learned_content:
            tgt = xp.broadcast_to(params["query.content"][None, ...], (b, q, d))  # (B, Q, D)
        else:  # DETR: the decoder starts from zero, the positions say which query is which
            tgt = xp.zeros((b, q, d), dtype=images.dtype, device=images.device)
        ref_unsig = query_pos = ts = ref_lin = pq = None
        if cfg.two_stage:
            if memory.shape[1] < q:
                raise ValueError(
                    f"two-stage needs at least {q} tokens, images give {memory.shape[1]}"
                )
            enc_logits, enc_boxes, ref_unsig, ts = two_stage_forward(
                params,
                memory,
                proposals(layout, memory, cfg.proposal_size),
                cfg,
                None if detached is None else detached["two_stage"],
            )  # ref_unsig (B, Q, 4), a constant
            groups[ENC] = QueryGroup((Predictions(enc_logits, enc_boxes),))
            if cfg.proposal_queries:  # Deformable DETR: position and content from the proposal
                query_pos, tgt, pq = proposal_queries_forward(params, ref_unsig, d)
        elif cfg.anchor_queries:
            ref_unsig = xp.broadcast_to(params["query.anchors"][None, ...], (b, q, 4))
        else:
            query_pos = params["query.pos"][None, ...]  # (1, Q, D)
            if cfg.learned_reference:  # Deformable DETR: points (x, y) = sigmoid(Linear(pos))
                z, ref_lin = reference_points_forward(params, query_pos)  # (1, Q, 2)
                ref_unsig = xp.broadcast_to(z, (b, q, 2))

        mask, emb, qdn = None, None, 0
        if dn_content is not None and denoising is None:
            raise ValueError("dn_content needs denoising: it is the content of those queries")
        if denoising is not None:
            check_denoising(denoising, cfg, b)
            qdn = int(denoising.labels.shape[1])
            dn_tgt, emb = embedding_forward(denoising.labels, params["query.label_embed"])
            if dn_content is not None:
                if tuple(dn_content.shape) != (b, qdn, d):
                    raise ValueError(
                        f"dn_content must have shape {(b, qdn, d)}, got {tuple(dn_content.shape)}"
                    )
                dn_tgt = dn_tgt + xp.astype(dn_content, dn_tgt.dtype)  # (B, Qdn, D)
            dn_ref = inverse_sigmoid(xp.astype(denoising.boxes, images.dtype))  # (B, Qdn, 4)
            tgt = xp.concat([dn_tgt, tgt], axis=1)  # (B, Qdn + Q, D)
            ref_unsig = xp.concat([dn_ref, ref_unsig], axis=1)
            mask = denoising.attn_mask  # (Qdn + Q, Qdn + Q)

        layers, dec = decoder_forward(
            params,
            cfg,
            self.kind,
            queries=Queries(tgt, ref_unsig, query_pos, mask),
            memory=Memory(memory, pos, layout),
            ctx=ctx,
            refined=None if detached is None else detached["refined"],
        )
        main = tuple(Predictions(lg[:, qdn:, :], bx[:, qdn:, :]) for lg, bx in layers)
        groups = {MAIN: QueryGroup(main), **groups}
        if denoising is not None:
            dn = tuple(Predictions(lg[:, :qdn, :], bx[:, :qdn, :]) for lg, bx in layers)
            groups[DN] = QueryGroup(dn, denoising)
        cache = MiniDETRCache(bb, tk, enc, ts, emb, dec, qdn, ref_lin, pq)
        return SetOutputs(groups), cache

    def query_embeddings(self, cache: MiniDETRCache) -> Array:
        """What the heads of the last decoder layer read, per query: (B, Qdn + Q, D), the
        denoising (or track) slots first. TrackFormer's track queries are made of these."""
        return cache.decoder.steps[-1].heads.cls.x

    def offset_penalty(self, cache: MiniDETRCache) -> Array | None:
        """R, the offset L2 penalty of ``cache``'s forward (0-d; None when offset_l2 is 0)."""
        return offset_penalty(cache.encoder, cache.decoder.steps)

    # ------------------------------------------------------------------ backward

    def backward(self, output_grads: SetOutputs | dict, cache: MiniDETRCache) -> dict:
        """dLoss/dparams for every parameter (same keys and shapes as ``params``).

        output_grads mirrors ``outputs`` (SetOutputs, e.g. ``SetCriterion.backward``'s, or
        DETR's dict); a group, layer or array that is missing or None is a zero gradient
        (a loss that does not read it). With ``config.offset_l2`` > 0 the gradient of
        :meth:`offset_penalty` is added: the result is d(loss + R)/dparams.
        """
        return self.backward_dn_content(output_grads, cache)[0]

    def backward_dn_content(
        self, output_grads: SetOutputs | dict, cache: MiniDETRCache
    ) -> tuple[dict, Array | None]:
        """(:meth:`backward`'s gradients, dLoss/d``dn_content`` (B, Qdn, D) or None without
        denoising queries)."""
        if not isinstance(output_grads, (SetOutputs, dict)):
            raise TypeError(
                f"output_grads must be SetOutputs or a dict, got {type(output_grads).__name__}"
            )
        output_grads = SetOutputs.from_dict(output_grads)
        cfg = self.config
        grads: dict = {}
        doutputs = self._layer_grads(output_grads, cache)
        dtgt, dref, dqpos, dmemory, dmemory_pos = decoder_backward(doutputs, cache.decoder, grads)
        xp = namespace(dtgt)
        qdn = cache.num_dn
        if cache.label_embed is not None:
            (dtable,) = embedding_backward(dtgt[:, :qdn, :], cache.label_embed)
            accumulate(grads, "query.label_embed", dtable)
        if cfg.learned_content:
            accumulate(grads, "query.content", xp.sum(dtgt[:, qdn:, :], axis=0))
        if cache.two_stage is not None:
            enc = output_grads.group(ENC)
            denc = Predictions(None, None) if enc is None else enc.layers[-1]
            dmem = two_stage_backward(denc.logits, denc.boxes, cache.two_stage, grads)
            dmemory = dmemory if dmem is None else dmemory + dmem
            if cache.proposal_query is not None:  # position and content made from the proposal
                proposal_queries_backward(dqpos, dtgt[:, qdn:, :], cache.proposal_query, grads)
        elif cfg.anchor_queries:
            accumulate(grads, "query.anchors", xp.sum(dref[:, qdn:, :], axis=0))
        else:
            dpos = dqpos[0, ...]
            if cache.ref_point is not None:  # the reference points' Linear, and its input
                dz = xp.sum(dref, axis=0, keepdims=True)  # (1, Q, 2)
                dpos = dpos + reference_points_backward(dz, cache.ref_point, grads)[0]
            accumulate(grads, "query.pos", dpos)
        dsrc, dpos = encoder_backward(dmemory, cache.encoder, self.kind, grads)
        if dmemory_pos is not None:
            dpos = dmemory_pos if dpos is None else dpos + dmemory_pos
        dfeats = tokens_backward(dsrc, dpos, cache.tokens, grads)
        backbone_backward(dfeats, cache.backbone, grads)
        like = dtgt
        full = {
            k: grads[k] if k in grads else xp.zeros(s, dtype=like.dtype, device=like.device)
            for k, s in self.param_shapes.items()
        }
        return full, dtgt[:, :qdn, :] if qdn else None

    def _layer_grads(self, output_grads: SetOutputs, cache: MiniDETRCache) -> list[tuple]:
        """(dlogits, dboxes) per decoder layer over all Qdn + Q queries, zeros where absent."""
        steps = cache.decoder.steps
        n = len(steps)
        main = _per_layer(output_grads.group(MAIN), n, "main")
        dn = _per_layer(output_grads.group(DN), n, "dn")
        out = []
        for i, step in enumerate(steps):
            like = step.heads.cls.x
            xp = namespace(like)
            b, nq = like.shape[0], like.shape[1]
            pair = []
            k = self.config.num_logits
            for width, g_dn, g_main in (
                (k, dn[i].logits, main[i].logits),
                (4, dn[i].boxes, main[i].boxes),
            ):
                blocks = []
                for name, g, count in (
                    ("dn", g_dn, cache.num_dn),
                    ("main", g_main, nq - cache.num_dn),
                ):
                    if count == 0:
                        continue
                    if g is None:
                        g = xp.zeros((b, count, width), dtype=like.dtype, device=like.device)
                    elif tuple(g.shape) != (b, count, width):
                        raise ValueError(
                            f"the {name} gradient of decoder layer {i} must have shape "
                            f"{(b, count, width)}, got {tuple(g.shape)}"
                        )
                    blocks.append(g)
                pair.append(blocks[0] if len(blocks) == 1 else xp.concat(blocks, axis=1))
            out.append(tuple(pair))
        return out


def _per_layer(group: QueryGroup | None, n: int, name: str) -> list[Predictions]:
    """A group's n per-layer gradients; a group given for its last layer only is padded."""
    if group is None:
        return [Predictions(None, None)] * n
    layers = list(group.layers)
    if len(layers) == 1:
        layers = [Predictions(None, None)] * (n - 1) + layers
    if len(layers) != n:
        raise ValueError(
            f"output_grads group {name!r} must hold {n} decoder layers (or the last), "
            f"got {len(layers)}"
        )
    return layers
