"""DETR's set criterion: match predictions to targets, then score the matched pairs.

DETR predicts a fixed set of Q boxes per image and no NMS follows, so the loss
itself must decide which query answers which object. For each decoder layer:

1. the matcher finds the one-to-one assignment of queries to targets of least
   cost (Hungarian algorithm, on the host);
2. every query is classified: a matched query should predict its target's class,
   every other query "no object" (class C, down-weighted by ``eos_coef``); in focal
   mode there is no such class and an unmatched query should say "no" to every class;
3. each matched query's box is pulled towards its target by L1 and 1 - GIoU.

With c_q the class query q should predict, (q, t) ranging over the matched pairs,
N = max(total targets in the batch, 1) and w the class weights (1, ..., 1, eos_coef)::

    loss_ce   = sum_q w[c_q] (-log softmax(x_q)[c_q]) / sum_q w[c_q]      (focal: sum focal / N)
    loss_bbox = sum_(q,t) |b_q - b_t|_1 / N
    loss_giou = sum_(q,t) (1 - GIoU(b_q, b_t)) / N
    loss      = sum over query groups, layers and terms of weight * term

The predictions arrive as :class:`~minidetr.outputs.SetOutputs`, by query group
(``"main"`` decoder layers, ``"enc"`` two-stage proposals, ``"dn"`` denoising
queries; see :mod:`minidetr.outputs`); DETR's ``outputs`` dict is accepted too.
Every layer of every group is scored the same way under its own assignment
(:mod:`minidetr.setloss.assign`): matched groups are matched layer by layer,
denoising queries know their targets. :class:`LossWeights` weighs the three terms
and each group; a layer whose weights are all zero is neither matched nor scored.
The loss dict names each term as DETR does (``loss_ce``, ``loss_ce_0`` for the
first auxiliary layer, ``loss_ce_enc``, ``loss_ce_dn``, ``loss_ce_dn_0``), for logs.

Dimension letters: B images, Q queries (Qdn denoising queries), C classes,
K = C + 1 logits (C with focal), T targets of an image, M matched pairs in a batch.

References: Carion et al., "End-to-End Object Detection with Transformers" (2020),
section 3.1 and ``models/detr.py``; Zhu et al., "Deformable DETR" (2021) for the
focal variant; Li et al., "DN-DETR" (2022) and Zhang et al., "DINO" (2023) for denoising.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

from minidetr.backend import Array, namespace
from minidetr.outputs import DN, ENC, MAIN, Predictions, QueryGroup, SetOutputs
from minidetr.setloss.assign import Assignment, denoising_assignment, matched_assignment
from minidetr.setloss.checks import check_set_outputs
from minidetr.setloss.denoising import DenoisingQueries
from minidetr.setloss.layer_loss import (
    LayerLossCache,
    cardinality_error,
    class_error,
    layer_loss_backward,
    layer_loss_forward,
)
from minidetr.setloss.targets import check_targets

LOSS_KINDS = ("labels", "boxes", "cardinality")


@dataclass(frozen=True)
class LossWeights:
    """The weights of the set loss: each term, and how much each query group counts.

    A layer's term weight is ``term * group`` (times ``aux`` for every decoder layer but
    the last). DETR uses ce/bbox/giou = 1/5/2, Deformable DETR 2/5/2 with focal loss;
    ``aux=0`` is DETR's ``aux_loss=False``: only the last decoder layer is matched.
    """

    ce: float = 1.0
    bbox: float = 5.0
    giou: float = 2.0
    aux: float = 1.0  # each decoder layer before the last, in every group
    enc: float = 1.0  # the two-stage proposals
    dn: float = 1.0  # the denoising queries

    def __post_init__(self) -> None:
        for f in fields(self):
            w = getattr(self, f.name)
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
                raise ValueError(f"LossWeights.{f.name} must be a finite number, got {w!r}")
            if w < 0:
                raise ValueError(f"LossWeights.{f.name} must be >= 0, got {w}")

    def layer(self, group: str, index: int, num_layers: int) -> tuple[float, float, float]:
        """(w_ce, w_bbox, w_giou) of layer ``index`` of ``num_layers`` in ``group``."""
        g = {MAIN: 1.0, ENC: self.enc, DN: self.dn}.get(group, 1.0)
        if index < num_layers - 1:
            g *= self.aux
        return (self.ce * g, self.bbox * g, self.giou * g)


def term_suffix(group: str, index: int, num_layers: int) -> str:
    """DETR's suffix of a layer's loss names: "", "_0", "_enc", "_dn", "_dn_0", "_<group>_1"."""
    head = "" if group == MAIN else f"_{group}"
    return head if index == num_layers - 1 else f"{head}_{index}"


class SetCriterionCache(NamedTuple):
    """What the backward needs: each scored layer's cache, and the outputs' structure."""

    layers: dict[tuple[str, int], LayerLossCache]  # (group, layer index) -> cache
    structure: dict[str, int]  # group -> number of layers, in the outputs' order

    @property
    def matches(self) -> dict[tuple[str, int], list]:
        """The matcher's indices per matched layer; pass back to ``forward`` to hold them fixed."""
        return {k: c.indices for k, c in self.layers.items() if c.indices is not None}


class SetCriterion:
    """DETR's Hungarian set loss with a hand-written backward.

    num_classes: C object classes (no-object is the extra class C in softmax mode).
    matcher: a ``minidetr.setloss.matching.HungarianMatcher`` (or any callable
    ``matcher({"pred_logits", "pred_boxes"}, targets) -> [(pred_idx, tgt_idx)]`` per
    image, NumPy int arrays); its ``focal`` must agree with ours. weights: a
    :class:`LossWeights`. losses: any of "labels", "boxes", "cardinality". focal:
    sigmoid focal loss with ``focal_alpha`` and ``focal_gamma`` instead of softmax CE.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: Any,
        weights: LossWeights | None = None,
        eos_coef: float = 0.1,
        losses: tuple[str, ...] = LOSS_KINDS,
        focal: bool = False,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        if not callable(matcher):
            raise TypeError(f"matcher must be callable, got {type(matcher).__name__}")
        if bool(getattr(matcher, "focal", focal)) != bool(focal):
            raise ValueError(
                f"matcher.focal is {matcher.focal} but the criterion's focal is {focal}"
            )
        weights = LossWeights() if weights is None else weights
        if not isinstance(weights, LossWeights):
            raise TypeError(
                f"weights must be a LossWeights (e.g. LossWeights(ce=1, bbox=5, giou=2)), "
                f"got {type(weights).__name__}"
            )
        unknown = [name for name in losses if name not in LOSS_KINDS]
        if unknown:
            raise ValueError(f"losses must be among {LOSS_KINDS}, got {unknown}")
        if not 0.0 < eos_coef <= 1.0 and not focal:
            raise ValueError(f"eos_coef must be in (0, 1], got {eos_coef}")
        self.num_classes = num_classes
        self.matcher = matcher
        self.weights = weights
        self.eos_coef = float(eos_coef)
        self.losses = tuple(losses)
        self.focal = bool(focal)
        self.focal_alpha = float(focal_alpha)
        self.focal_gamma = float(focal_gamma)

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        outputs: SetOutputs | dict,
        targets: list[dict],
        matches: dict[tuple[str, int], list] | None = None,
    ) -> tuple[dict[str, Array], SetCriterionCache]:
        """Every loss term (named as DETR names them), the weighted total ``loss``, the cache.

        ``matches`` (e.g. ``cache.matches`` of an earlier call) replaces the matcher's
        answer layer by layer: the loss is then a smooth function of the predictions,
        which is what a gradient check needs.
        """
        outputs = SetOutputs.from_dict(outputs)
        bsz = check_set_outputs(outputs, self.num_classes, self.focal)
        targets = check_targets(targets, self.num_classes, batch_size=bsz)
        num_boxes = float(max(sum(int(t["labels"].shape[0]) for t in targets), 1))
        first = outputs.final.logits
        xp = namespace(first)
        total = xp.zeros((), dtype=first.dtype, device=first.device)
        options = self._options(first)
        losses: dict[str, Array] = {}
        layers: dict[tuple[str, int], LayerLossCache] = {}
        for name, group in outputs:
            n = len(group.layers)
            for i, pred in enumerate(group.layers):
                weights = self.weights.layer(name, i, n)
                if not any(weights):
                    continue  # not matched, not scored: its gradient is zero
                indices = None
                if matches is not None and (name, i) in matches:
                    indices = matches[(name, i)]
                a, indices = self._assign(name, group, pred, targets, num_boxes, indices)
                terms, cache = layer_loss_forward(pred, a, indices, weights, options)
                suffix = term_suffix(name, i, n)
                for term, value in terms.items():
                    losses[term + suffix] = value
                total = total + sum(w * terms[t] for w, t in zip(weights, _WEIGHTED) if t in terms)
                if "cardinality" in self.losses and indices is not None:
                    losses["cardinality_error" + suffix] = cardinality_error(
                        pred.logits, indices, self.num_classes, self.focal
                    )
                if "labels" in self.losses and name == MAIN and i == n - 1:
                    losses["class_error"] = class_error(pred.logits, a)
                layers[(name, i)] = cache
        losses["loss"] = total
        structure = {name: len(group.layers) for name, group in outputs}
        return losses, SetCriterionCache(layers, structure)

    def _assign(
        self,
        name: str,
        group: QueryGroup,
        pred: Predictions,
        targets: list[dict],
        num_boxes: float,
        indices: list | None,
    ) -> tuple[Assignment, list | None]:
        """The layer's assignment, and the matcher's indices (None for denoising)."""
        if name == DN:
            if not isinstance(group.meta, DenoisingQueries):
                raise TypeError(
                    "outputs['dn']['meta'] must be the DenoisingQueries the queries came from"
                )
            return denoising_assignment(pred, group.meta, targets, self.num_classes), None
        if name not in (MAIN, ENC):
            raise ValueError(f"the criterion has no assignment rule for query group {name!r}")
        if indices is None:
            match = getattr(self.matcher, "match", None)
            if match is not None:  # inputs already checked: no second pass
                indices = match(pred, targets)
            else:
                indices = self.matcher(
                    {"pred_logits": pred.logits, "pred_boxes": pred.boxes}, targets
                )
        return matched_assignment(pred, targets, indices, self.num_classes, num_boxes), indices

    def _options(self, like: Array) -> dict:
        return {
            "labels": "labels" in self.losses,
            "boxes": "boxes" in self.losses,
            "focal": (self.focal_alpha, self.focal_gamma) if self.focal else None,
            "class_weight": None if self.focal else self._class_weight(like),
        }

    # ------------------------------------------------------------------ backward

    def backward(self, cache: SetCriterionCache) -> SetOutputs:
        """dloss/d(every prediction), as SetOutputs shaped like the forward's outputs.

        Layers that were not scored (zero weight) get ``None`` gradients, read as zero.
        """
        groups = {}
        for name, n in cache.structure.items():
            layers = []
            for i in range(n):
                c = cache.layers.get((name, i))
                layers.append(Predictions(None, None) if c is None else layer_loss_backward(c))
            groups[name] = QueryGroup(tuple(layers))
        return SetOutputs(groups)

    def _class_weight(self, logits: Array) -> Array:
        """(C + 1,) ones with eos_coef for the no-object class."""
        xp = namespace(logits)
        classes = xp.arange(self.num_classes + 1, device=logits.device)
        ones = xp.ones((self.num_classes + 1,), dtype=logits.dtype, device=logits.device)
        return xp.where(classes == self.num_classes, self.eos_coef * ones, ones)


_WEIGHTED = ("loss_ce", "loss_bbox", "loss_giou")
