"""``minidetr explain CHECKPOINT [IMAGE ...] --out DIR``: figures and ``explain.json``.

Without images it explains the first held-out images of the checkpoint's
dataset, whose true boxes and (for the shapes set) exact masks make the
segmentation scores and the head-ablation AP possible.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from minidetr.explain.figures import (
    save_decoder_attention,
    save_detection_maps,
    save_head_table,
    save_layer_heads,
    save_sampling_points,
)
from minidetr.explain.heads import ablate_head
from minidetr.explain.report import ExplainConfig, explain


def held_out_targets(dataset: Any, count: int) -> tuple[np.ndarray, list | None]:
    """The first ``count`` images (N, 3, H, W) and, per image, (boxes x0 y0 x1 y1 pixels,
    labels, masks or None)."""
    samples = [dataset[i] for i in range(min(count, len(dataset)))]
    size = dataset.image_size
    targets = []
    for i, s in enumerate(samples):
        cx, cy, w, h = s.boxes.T
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1) * size
        masks = dataset.masks(i) if hasattr(dataset, "masks") else None
        targets.append((boxes, s.labels, masks))
    return np.stack([s.image for s in samples]), targets


def head_ablation_ap(model: Any, params: dict, dataset: Any, like: Any) -> dict[str, list]:
    """AP50 and AP lost on ``dataset`` when each head of each attention layer is removed."""
    from minidetr.train.loop import evaluate_model

    base = evaluate_model(model, params, dataset, like)
    names = sorted({k.rsplit(".", 2)[0] for k in params if "_attn." in k})
    heads = model.config.num_heads
    out: dict[str, list] = {"baseline": [round(base["AP50"], 4), round(base["AP"], 4)]}
    for name in names:
        drops = []
        for h in range(heads):
            m = evaluate_model(model, ablate_head(params, name, h, heads), dataset, like)
            drops.append(round(base["AP50"] - m["AP50"], 4))
        out[name] = drops
    return out


class _Subset:
    def __init__(self, dataset: Any, count: int) -> None:
        self.dataset, self.count = dataset, min(count, len(dataset))
        self.classes, self.image_size = dataset.classes, dataset.image_size

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> Any:
        if not 0 <= i < self.count:
            raise IndexError(i)
        return self.dataset[i]


def explain_command(
    run: Any,
    images: list[np.ndarray] | None,
    out: Path,
    *,
    num_images: int = 16,
    ablation_images: int = 64,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Explain ``images`` (or held-out ones) with the run's model; write figures and explain.json.

    Returns explain.json's content.
    """
    model, params, like = run.model, run.params, run.like
    classes = run.val_set.classes
    cfg = ExplainConfig(
        threshold=(0.3 if model.config.focal else 0.5) if threshold is None else threshold
    )
    if images:
        batch, targets = np.stack(images).astype(np.float32), None
    else:
        batch, targets = held_out_targets(run.val_set, num_images)
        if any(t[2] is None for t in targets):
            targets = None
    out.mkdir(parents=True, exist_ok=True)
    result = explain(model, params, batch, like, targets=targets, cfg=cfg)
    summary = result.summary()
    summary["preset"] = getattr(run.cfg, "preset", None)
    summary["threshold"] = cfg.threshold
    importance = {}
    for d in result.detections:
        for name, g in d.gate_grad.items():
            importance[name] = importance.get(name, 0) + np.abs(g) / len(result.detections)
    summary["head_importance"] = {k: [round(float(x), 4) for x in v] for k, v in importance.items()}
    if not images and ablation_images > 0:
        subset = _Subset(run.val_set, ablation_images)
        summary["head_ablation_ap50_drop"] = head_ablation_ap(model, params, subset, like)
    save_detection_maps(out / "relevance.png", batch, result, classes)
    save_decoder_attention(out / "decoder_attention.png", batch, result, classes)
    save_layer_heads(out / "attention_layers_heads.png", batch, result)
    save_sampling_points(out / "sampling_points.png", batch, result)
    save_head_table(out / "entropy.png", result.entropy, "attention entropy (nats)")
    if importance:
        save_head_table(out / "head_importance.png", importance, "head importance |dy/dxi|")
    (out / "explain.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
