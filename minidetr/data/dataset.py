"""What every minidetr dataset is: a deterministic map from index to (image, boxes, labels).

Shapes: S image side in pixels, T objects in one image, B batch.
Boxes are DETR's: (cx, cy, w, h), normalised to [0, 1] by the image side.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

import numpy as np

from minidetr.backend import Array, asarray

# The two splits of every built-in dataset: each number seeds its own random
# stream (and, for digits, picks its half of the source images), so the
# held-out images never appear in training.
SPLITS = {"train": 0, "val": 1}


def check_split(split: str) -> int:
    """The number of ``split`` in :data:`SPLITS`; ``ValueError`` naming the splits otherwise."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    return SPLITS[split]


class Sample(NamedTuple):
    image: np.ndarray  # (3, S, S) float32 in [0, 1]
    boxes: np.ndarray  # (T, 4) float32 cxcywh, normalised
    labels: np.ndarray  # (T,) int64 in [0, num_classes)


class Dataset(Protocol):
    classes: tuple[str, ...]
    image_size: int

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...


def collate(
    samples: Sequence[Sample], like: Array | None = None
) -> tuple[Array, list[dict[str, Array]]]:
    """Stack samples into DETR's batch: images (B, 3, S, S) and a list of target dicts.

    With ``like`` the arrays are placed in its namespace and on its device (CuPy
    on a GPU, say); otherwise they stay NumPy.
    """
    images = np.stack([s.image for s in samples])  # (B, 3, S, S)
    targets = [{"labels": s.labels, "boxes": s.boxes} for s in samples]
    if like is None:
        return images, targets
    images = asarray(images, like=like)
    targets = [{k: asarray(v, like=like) for k, v in t.items()} for t in targets]
    return images, targets


def box_iou_single(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two (x0, y0, x1, y1) boxes; used when placing objects, not in training."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def place_boxes(
    rng: np.random.Generator, sizes: Sequence[tuple[float, float]], canvas: int, max_iou: float
) -> list[np.ndarray]:
    """Drop boxes of the given (w, h) at random on the canvas, overlapping by at most ``max_iou``.

    A box that finds no place in 30 tries is left out. Returns (x0, y0, x1, y1) pixel boxes.
    """
    placed: list[np.ndarray] = []
    for w, h in sizes:
        for _ in range(30):
            x0 = rng.uniform(0, canvas - w)
            y0 = rng.uniform(0, canvas - h)
            box = np.array([x0, y0, x0 + w, y0 + h])
            if all(box_iou_single(box, p) <= max_iou for p in placed):
                placed.append(box)
                break
    return placed


def xyxy_pixels_to_cxcywh(boxes: Sequence[np.ndarray], canvas: int) -> np.ndarray:
    """Pixel (x0, y0, x1, y1) boxes to normalised (cx, cy, w, h), shape (T, 4) float32."""
    if not boxes:
        return np.zeros((0, 4), dtype=np.float32)
    b = np.asarray(boxes, dtype=np.float64) / canvas
    out = np.stack(
        [(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1
    )
    return out.astype(np.float32)
