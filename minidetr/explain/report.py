"""Explain a trained detector on a set of images and measure its explanations.

For each image: one forward, the detections above a score threshold, then per
round k one backward of every image's k-th detection (images do not mix, so one
backward serves the whole batch). Each detection gets one map per method
(:mod:`.methods`), scored by

* faithfulness (:mod:`.faithfulness`): deletion and insertion AUC of the
  detection's score, here s(x) = max_q p_q(c) IoU(box_q, box*), the class
  probability of the query that best reproduces the detection's box (D-RISE's
  similarity, Petsiuk et al. 2021, with the class probability in place of the
  cosine) so that a detection handed to another query still counts;
* segmentation (:mod:`.segmentation`): IoU with the true mask of the object the
  detection matches (box IoU >= 0.5, same class), where masks are known;
* causal intervention: the detection's score with each head removed
  (:func:`.heads.ablate_head`) against the first-order prediction -dy/dxi_h.

Shapes: N images, B batch, Q queries, K logits, H x W pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from minidetr.backend import Array, asarray, to_numpy
from minidetr.explain.capture import AttentionMap, capture_attention, explain_backward
from minidetr.explain.faithfulness import faithfulness_curves, relevance_order
from minidetr.explain.heads import ablate_head, head_entropy, head_gate_gradient
from minidetr.explain.methods import METHODS, image_maps, spatial_shapes_of
from minidetr.explain.segmentation import segmentation_iou


@dataclass(frozen=True)
class ExplainConfig:
    threshold: float = 0.3  # lowest score explained
    max_detections: int = 4  # per image, highest scores first
    steps: int = 16  # deletion / insertion steps
    match_iou: float = 0.5  # a detection explains the true object it overlaps this much
    seed: int = 0  # the random baseline's maps


@dataclass
class Detection:
    image: int
    query: int
    label: int
    score: float
    box: np.ndarray  # (4,) x0, y0, x1, y1 pixels
    rank: int  # 0 for the image's best detection
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # method -> (H, W)
    deletion: dict[str, float] = field(default_factory=dict)
    insertion: dict[str, float] = field(default_factory=dict)
    iou: dict[str, float] = field(default_factory=dict)  # only for a matched true object
    mask: np.ndarray | None = None  # (H, W) the matched true object's visible pixels
    gate_grad: dict[str, np.ndarray] = field(default_factory=dict)  # layer -> (M,) dy/dxi


@dataclass
class Explanation:
    detections: list[Detection]
    maps: dict[str, AttentionMap]  # the first round's capture, for figures
    entropy: dict[str, np.ndarray]  # layer -> (M,) nats
    intervention: dict[str, float]
    image_size: int
    spatial_shapes: tuple[tuple[int, int], ...]  # (H_l, W_l) of the memory's levels

    def summary(self) -> dict[str, Any]:
        """explain.json's content: method averages and the random baseline."""
        methods = (*METHODS, "random")
        faith = {
            m: {
                "deletion_auc": _mean([d.deletion[m] for d in self.detections]),
                "insertion_auc": _mean([d.insertion[m] for d in self.detections]),
            }
            for m in methods
        }
        matched = [d for d in self.detections if d.iou]
        seg = {m: {"miou": _mean([d.iou[m] for d in matched])} for m in methods}
        return {
            "images": len({d.image for d in self.detections}),
            "detections": len(self.detections),
            "matched_detections": len(matched),
            "faithfulness": faith,
            "segmentation": seg,
            "intervention": self.intervention,
            "entropy": {k: [round(float(x), 4) for x in v] for k, v in self.entropy.items()},
        }


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None


def _probabilities(logits: np.ndarray, focal: bool) -> np.ndarray:
    """(..., Q, K) logits -> (..., Q, C) class probabilities (no-object column dropped)."""
    if focal:
        return 1.0 / (1.0 + np.exp(-logits))
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True))[..., :-1]


def _xyxy(boxes: np.ndarray, size: int) -> np.ndarray:
    cx, cy, w, h = np.moveaxis(boxes, -1, 0)
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1) * size


def _iou(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    """IoU of (..., 4) boxes with one (4,) box, all x0, y0, x1, y1."""
    lt = np.maximum(boxes[..., :2], box[:2])
    rb = np.minimum(boxes[..., 2:], box[2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area = np.prod(boxes[..., 2:] - boxes[..., :2], -1) + np.prod(box[2:] - box[:2])
    return inter / np.maximum(area - inter, 1e-12)


def find_detections(outputs: Any, size: int, focal: bool, cfg: ExplainConfig) -> list[Detection]:
    """Every image's detections above the threshold, one per query (its best class)."""
    prob = _probabilities(to_numpy(outputs.pred_logits).astype(np.float64), focal)
    boxes = _xyxy(to_numpy(outputs.pred_boxes).astype(np.float64), size)
    found = []
    for b in range(prob.shape[0]):
        best, label = prob[b].max(-1), prob[b].argmax(-1)  # (Q,)
        order = [q for q in np.argsort(-best, kind="stable") if best[q] >= cfg.threshold]
        for rank, q in enumerate(order[: cfg.max_detections]):
            found.append(Detection(b, int(q), int(label[q]), float(best[q]), boxes[b, q], rank))
    return found


def predictions(model: Any, params: dict, images: np.ndarray, like: Array) -> tuple:
    """(class probabilities (N, Q, C), boxes (N, Q, 4) x0 y0 x1 y1 pixels) on the host."""
    cfg = model.config
    outputs, _ = model.forward(params, asarray(images, like=like), train=False)
    prob = _probabilities(to_numpy(outputs.pred_logits).astype(np.float64), cfg.focal)
    return prob, _xyxy(to_numpy(outputs.pred_boxes).astype(np.float64), cfg.image_size)


def detection_score(prob: np.ndarray, boxes: np.ndarray, det: Detection) -> np.ndarray:
    """s = max_q p_q(c) IoU(box_q, box*) for (..., Q, C) probabilities and (..., Q, 4) boxes."""
    return np.max(prob[..., det.label] * _iou(boxes, det.box), axis=-1)


class Scorer:
    """s(x) of one detection on a batch of images (N, 3, H, W) -> (N,)."""

    def __init__(self, model: Any, params: dict, like: Array, det: Detection) -> None:
        self.model, self.params, self.like, self.det = model, params, like, det

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return detection_score(*predictions(self.model, self.params, images, self.like), self.det)


def _match(det: Detection, boxes: np.ndarray, labels: np.ndarray, iou: float) -> int | None:
    if len(boxes) == 0:
        return None
    overlaps = np.where(labels == det.label, _iou(boxes, det.box), 0.0)
    best = int(np.argmax(overlaps))
    return best if overlaps[best] >= iou else None


def explain(
    model: Any,
    params: dict,
    images: np.ndarray,
    like: Array,
    *,
    targets: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None,
    cfg: ExplainConfig = ExplainConfig(),
    interventions: bool = True,
) -> Explanation:
    """Explain every detection of ``images`` (N, 3, H, W) and measure the explanations.

    ``targets``, per image (boxes (T, 4) x0 y0 x1 y1 pixels, labels (T,), masks
    (T, H, W)), enables the segmentation scores. ``interventions`` runs the head
    ablations (one forward per head).
    """
    mc = model.config
    size, rng = mc.image_size, np.random.default_rng(cfg.seed)
    batch = asarray(images, like=like)
    outputs, cache = model.forward(params, batch, train=False)
    detections = find_detections(outputs, size, mc.focal, cfg)
    entropy = {name: head_entropy(m) for name, m in capture_attention(cache).items()}
    first_maps: dict[str, AttentionMap] = {}
    shapes = spatial_shapes_of(capture_attention(cache), mc)
    for k in range(cfg.max_detections):
        chosen = {
            d.image: d
            for d in detections
            if sum(e.image == d.image and e.score > d.score for e in detections) == k
        }
        if not chosen:
            break
        queries = [chosen[b].query if b in chosen else None for b in range(len(images))]
        labels = [chosen[b].label if b in chosen else 0 for b in range(len(images))]
        _, maps, grads = explain_backward(model, params, batch, queries, labels)
        first_maps = first_maps or maps
        for b, det in chosen.items():
            det.maps = image_maps(maps, grads, b, det.query, shapes, size, rng)
            det.gate_grad = {n: head_gate_gradient(maps[n], grads[n])[b] for n in maps}
    for det in detections:
        scorer = Scorer(model, params, like, det)
        for method, relevance in det.maps.items():
            curves = faithfulness_curves(
                scorer, images[det.image], relevance_order(relevance), steps=cfg.steps
            )
            det.deletion[method], det.insertion[method] = curves.deletion_auc, curves.insertion_auc
        if targets is not None:
            boxes, labels, masks = targets[det.image]
            t = _match(det, boxes, labels, cfg.match_iou)
            if t is not None:
                det.mask = masks[t]
                det.iou = {m: segmentation_iou(r, masks[t]) for m, r in det.maps.items()}
    intervention = (
        head_interventions(model, params, images, like, detections) if interventions else {}
    )
    return Explanation(detections, first_maps, entropy, intervention, size, shapes)


def head_interventions(
    model: Any, params: dict, images: np.ndarray, like: Array, detections: list[Detection]
) -> dict[str, float]:
    """Remove each head, then each layer's attention, in turn; rank-correlate each detection's
    score change with the gradients' first-order prediction -dy/dxi (summed over a layer's
    heads), averaged over detections."""
    if not detections:
        return {}
    heads = model.config.num_heads
    names = list(detections[0].gate_grad)

    def scores(p: dict) -> np.ndarray:
        prob, boxes = predictions(model, p, images, like)
        return np.array([detection_score(prob[d.image], boxes[d.image], d) for d in detections])

    base = scores(params)  # (detections,)
    change = np.stack(
        [scores(ablate_head(params, n, h, heads)) - base for n in names for h in range(heads)], 1
    )  # (detections, layers * M)
    layer_change = np.stack([scores(_ablate_layer(params, n, heads)) - base for n in names], 1)
    out: dict[str, Any] = {"detections": len(detections), "heads": len(names) * heads}
    for key, actual_all, per in (
        ("spearman_head_removal", change, 1),
        ("spearman_layer_removal", layer_change, heads),
    ):
        rhos = []
        for d, actual in zip(detections, actual_all):
            gate = np.concatenate([d.gate_grad[n] for n in names])  # (layers * M,)
            predicted = -gate.reshape(-1, per).sum(1)  # first order: y(xi = 0) - y(xi = 1)
            if np.ptp(actual) > 0 and np.ptp(predicted) > 0:
                rhos.append(float(spearmanr(predicted, actual).statistic))
        out[key] = _mean(rhos)
    return out


def _ablate_layer(params: dict, name: str, heads: int) -> dict:
    """Every head of attention ``name`` removed: the layer's attention contributes nothing."""
    for h in range(heads):
        params = ablate_head(params, name, h, heads)
    return params
