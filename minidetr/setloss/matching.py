"""Hungarian matching: DETR's one-to-one assignment of predictions to ground truth.

For each image, the matching cost of query q and target t is

    C[t, q] = w_class * class_cost + w_bbox * ||b_q - b_t||_1 - w_giou * GIoU(b_q, b_t)

with boxes cxcywh for the L1 distance and xyxy for the GIoU. The class cost is
-p_q(c_t), the softmax probability of the target's class (DETR), or with
``focal`` the focal loss the query would pay labelled c_t minus what it pays
unlabelled (Deformable DETR): with p = sigmoid(x),

    alpha (1 - p)^gamma (-log p) - (1 - alpha) p^gamma (-log(1 - p)).

Each image's T x Q block is built in the outputs' array namespace, one block per
image (DETR builds the whole (B Q) x (sum T) matrix and keeps only its diagonal
blocks; here only the blocks are made); on NumPy arrays one compiled loop
(``kernels.matching_cost_cpu``) writes every block with the same arithmetic. The
blocks are stacked one below the other, one row per target of the batch, and cross
to the host once, through ``backend.to_numpy``, the one named boundary.
``linear_sum_assignment_stacked`` then solves every image in one compiled call,
reading each block in place.

The matching is held fixed: it picks indices and has no gradient, as DETR's
matcher runs under ``torch.no_grad()``.

Shapes: B images, Q queries, K logits per query (C + 1 with softmax, the last
being no-object; C with focal), T targets of one image, S targets in the batch.

Reference: Carion et al., "End-to-End Object Detection with Transformers" (2020),
``models/matcher.py``; Zhu et al., "Deformable DETR" (2021), ``models/matcher.py``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from minidetr.assignment import (
    linear_sum_assignment,
    linear_sum_assignment_batch,
    linear_sum_assignment_stacked,
)
from minidetr.backend import Array, compiled_kernel, namespace, to_numpy
from minidetr.boxes import box_cxcywh_to_xyxy, generalized_box_iou
from minidetr.boxes.checks import safe_coordinate_limit
from minidetr.checks import check_floating
from minidetr.kernels.matching_cost_cpu import stacked_matching_cost
from minidetr.ops.softmax import softmax_forward
from minidetr.outputs import Predictions, SetOutputs
from minidetr.setloss.focal import sigmoid_focal_loss_forward
from minidetr.setloss.targets import check_targets

__all__ = ["HungarianMatcher", "linear_sum_assignment", "linear_sum_assignment_batch"]


class HungarianMatcher:
    """DETR's matcher: ``matcher(outputs, targets) -> [(pred_idx, tgt_idx)]``, one per image.

    cost_class, cost_bbox, cost_giou: the weights of the three terms (>= 0, not all 0).
    focal: Deformable DETR's focal class cost, with focal_alpha and focal_gamma.
    outputs: {"pred_logits": (B, Q, K), "pred_boxes": (B, Q, 4) cxcywh}; targets: a
    list of B dicts {"labels": (T,) integers, "boxes": (T, 4) cxcywh}, as in DETR.
    Each pair holds int64 NumPy arrays of length min(Q, T): pred_idx sorted, and
    tgt_idx the target matched to each; an image without targets gets two empty arrays.
    """

    def __init__(
        self,
        cost_class: float = 1.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        focal: bool = False,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        weights = {"cost_class": cost_class, "cost_bbox": cost_bbox, "cost_giou": cost_giou}
        for name, w in weights.items():
            if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {w!r}")
        if cost_class == cost_bbox == cost_giou == 0:
            raise ValueError("cost_class, cost_bbox and cost_giou cannot all be 0")
        if focal and not focal_alpha <= 1.0:
            raise ValueError(f"focal_alpha must be in [0, 1] (or negative), got {focal_alpha}")
        if focal and not focal_gamma >= 0.0:
            raise ValueError(f"focal_gamma must be >= 0, got {focal_gamma}")
        self.cost_class = float(cost_class)
        self.cost_bbox = float(cost_bbox)
        self.cost_giou = float(cost_giou)
        self.focal = bool(focal)
        self.focal_alpha = float(focal_alpha)
        self.focal_gamma = float(focal_gamma)

    def __repr__(self) -> str:
        return (
            f"HungarianMatcher(cost_class={self.cost_class}, cost_bbox={self.cost_bbox}, "
            f"cost_giou={self.cost_giou}, focal={self.focal}, focal_alpha={self.focal_alpha}, "
            f"focal_gamma={self.focal_gamma})"
        )

    def __call__(
        self, outputs: dict | Predictions, targets: list[dict]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """The optimal (pred_idx, tgt_idx) of every image, as NumPy int64 arrays.

        outputs: DETR's {"pred_logits", "pred_boxes"}, a :class:`Predictions`, or the
        model's :class:`SetOutputs` (its last layer's matching queries).
        """
        pred = self._check_outputs(outputs)
        targets = check_targets(
            targets, _num_classes(pred.logits, self.focal), pred.logits.shape[0]
        )
        return self.match(pred, targets)

    def match(self, pred: Predictions, targets: list[dict]) -> list[tuple[np.ndarray, np.ndarray]]:
        """``__call__`` without the input checks, for callers that made them (the criterion)."""
        stacked = self.cost(pred, targets, checked=True)  # (S, Q), in the outputs' namespace
        sizes = [int(t["labels"].shape[0]) for t in targets]
        return linear_sum_assignment_stacked(to_numpy(stacked), sizes)  # the one host copy

    def cost(
        self, outputs: dict | Predictions, targets: list[dict], *, checked: bool = False
    ) -> Array:
        """Matching costs stacked per image: (S, Q), rows o_b .. o_b + T_b - 1 for image b.

        Row o_b + t, column q is C[t, q] of image b (the module docstring gives C);
        o_b is the number of targets in the images before b. ``checked``: the inputs
        were already checked (by :meth:`__call__` or the criterion).
        """
        if checked:
            logits, boxes = outputs
        else:
            logits, boxes = self._check_outputs(outputs)
            check_targets(targets, _num_classes(logits, self.focal), batch_size=logits.shape[0])
        xp = namespace(logits, boxes)
        n_queries = logits.shape[1]
        class_cost = self._class_cost(logits)  # (B, Q, K)
        pred_xyxy = box_cxcywh_to_xyxy(boxes)  # (B, Q, 4)
        stacked = self._compiled_cost(class_cost, boxes, pred_xyxy, targets)
        if stacked is not None:
            return stacked
        blocks = []
        for b, target in enumerate(targets):
            labels, tgt_boxes = target["labels"], target["boxes"]  # (T,), (T, 4)
            if labels.shape[0] == 0:
                continue
            c_class = xp.take(class_cost[b, ...], labels, axis=1).T  # (T, Q)
            c_bbox = xp.sum(xp.abs(tgt_boxes[:, None, :] - boxes[b, None, :, :]), axis=-1)  # (T, Q)
            c_giou = -generalized_box_iou(
                box_cxcywh_to_xyxy(tgt_boxes), pred_xyxy[b, ...]
            )  # (T, Q)
            blocks.append(
                self.cost_class * c_class + self.cost_bbox * c_bbox + self.cost_giou * c_giou
            )
        if not blocks:
            return xp.zeros((0, n_queries), dtype=logits.dtype, device=logits.device)
        return xp.concat(blocks, axis=0)  # (S, Q)

    def _compiled_cost(
        self, class_cost: Array, boxes: Array, pred_xyxy: Array, targets: list[dict]
    ) -> np.ndarray | None:
        """The stacked costs from ``kernels.matching_cost_cpu`` (the same numbers as the
        loop over images in :meth:`cost`), or None where that loop must run: arrays other
        than NumPy float ones of one dtype, no targets, or predicted coordinates beyond
        GIoU's safe range (the loop rescales those per image)."""
        dtype = boxes.dtype
        if compiled_kernel(class_cost, boxes, pred_xyxy) != "numba" or class_cost.dtype != dtype:
            return None
        present = [(b, t) for b, t in enumerate(targets) if t["labels"].shape[0] > 0]
        if not present or any(type(t["boxes"]) is not np.ndarray for _, t in present):
            return None
        tgt = np.concatenate([t["boxes"] for _, t in present])  # (S, 4), checked in [0, 1]
        if tgt.dtype != dtype or not np.abs(pred_xyxy).max() <= safe_coordinate_limit(boxes):
            return None
        labels = np.concatenate([t["labels"] for _, t in present]).astype(np.int64)  # (S,)
        counts = [t["labels"].shape[0] for _, t in present]
        image = np.repeat(np.array([b for b, _ in present], dtype=np.int64), counts)  # (S,)
        weights = np.array((self.cost_class, self.cost_bbox, self.cost_giou), dtype=dtype)
        out = np.empty((tgt.shape[0], boxes.shape[1]), dtype=dtype)  # (S, Q)
        stacked_matching_cost(
            np.ascontiguousarray(class_cost),
            np.ascontiguousarray(boxes),
            np.ascontiguousarray(pred_xyxy),
            image,
            labels,
            tgt,
            box_cxcywh_to_xyxy(tgt),
            weights,
            out,
        )
        return out

    def _class_cost(self, logits: Array) -> Array:
        """(B, Q, K): the cost of labelling query q with class k."""
        xp = namespace(logits)
        if not self.focal:
            prob, _ = softmax_forward(logits)
            return -prob
        a, g = self.focal_alpha, self.focal_gamma
        labelled, _ = sigmoid_focal_loss_forward(logits, xp.ones_like(logits), a, g)
        unlabelled, _ = sigmoid_focal_loss_forward(logits, xp.zeros_like(logits), a, g)
        return labelled - unlabelled

    def _check_outputs(self, outputs: Any) -> Predictions:
        """pred_logits (B, Q, K) and pred_boxes (B, Q, 4), finite, with w, h >= 0."""
        if isinstance(outputs, SetOutputs):  # the whole outputs: match the last layer, as DETR
            outputs = outputs.final
        if isinstance(outputs, Predictions):
            logits, boxes = outputs
        elif isinstance(outputs, dict) and {"pred_logits", "pred_boxes"} <= outputs.keys():
            logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        else:
            raise TypeError("outputs must be a dict with 'pred_logits' and 'pred_boxes'")
        check_floating(logits, "outputs['pred_logits']")
        check_floating(boxes, "outputs['pred_boxes']")
        if logits.ndim != 3:
            raise ValueError(
                f"outputs['pred_logits'] must have shape (B, Q, K), got {tuple(logits.shape)}"
            )
        if tuple(boxes.shape) != (*logits.shape[:2], 4):
            raise ValueError(
                f"outputs['pred_boxes'] must have shape {(*logits.shape[:2], 4)}, "
                f"got {tuple(boxes.shape)}"
            )
        if logits.shape[2] < (1 if self.focal else 2):
            raise ValueError(f"outputs['pred_logits'] has too few logits: {tuple(logits.shape)}")
        xp = namespace(logits, boxes)
        for name, x in (("pred_logits", logits), ("pred_boxes", boxes)):
            _raise_at_first_query(~xp.isfinite(x), x, name, "is not finite")
        _raise_at_first_query(boxes[..., 2:] < 0, boxes, "pred_boxes", "has a negative size")
        return Predictions(logits, boxes)


def _num_classes(logits: Array, focal: bool) -> int:
    """C from K logits: K with focal, K - 1 (the no-object logit) with softmax."""
    return logits.shape[2] if focal else logits.shape[2] - 1


def _raise_at_first_query(bad: Array, x: Array, name: str, what: str) -> None:
    """Raise a ValueError naming the image and query of the first True in bad (B, Q, n)."""
    xp = namespace(bad)
    per_query = xp.reshape(xp.any(bad, axis=-1), (-1,))  # (B Q,)
    if not bool(xp.any(per_query)):
        return
    b, q = divmod(int(xp.argmax(xp.astype(per_query, xp.int8))), x.shape[1])
    values = to_numpy(x[b, q, ...]).tolist()
    raise ValueError(f"outputs['{name}'][{b}, {q}] (image {b}, query {q}) {what}: {values}")
