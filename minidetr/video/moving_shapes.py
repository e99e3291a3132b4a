"""Moving shapes: the shapes world in motion, a clip of T frames with an identity per object.

Each object is one of the still set's circles, squares and triangles (drawn by the same
functions, :func:`minidetr.data.shapes.shape_mask`), with a colour, a size, a velocity and a
small constant acceleration. Most objects bounce off the walls; some are drawn to leave through
a wall and some enter from outside the frame later in the clip. Objects drawn later occlude
earlier ones. A clip is a pure function of (seed, split, index).

Dimension letters: T frames, n objects visible in one frame, H = W image side.
Boxes are DETR's (cx, cy, w, h), normalised to [0, 1], of the part of the object's box inside
the frame; an object is listed in a frame while at least ``MIN_VISIBLE`` of its area shows.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minidetr.data.dataset import check_split, place_boxes, xyxy_pixels_to_cxcywh
from minidetr.data.shapes import ShapesDataset, contrasting_colour, shape_mask

MIN_VISIBLE = 0.3  # an object shows in a frame's targets when >= 30% of its area is visible
FILL = {"square": 1.0, "circle": np.pi / 4, "triangle": 0.5}  # shape area / box area


class Track(NamedTuple):
    """One object's life in a clip: pixel boxes (T, 4) xyxy and its look."""

    boxes: np.ndarray  # (T, 4) x0, y0, x1, y1 in pixels, unclipped
    alive: np.ndarray  # (T,) bool, the object exists in this frame (entered, not yet gone)
    label: int
    colour: np.ndarray  # (3,)


class MovingShapes:
    """``num_clips`` clips of ``frames`` frames of side ``image_size``, 1 to ``max_objects`` shapes.

    ``clip = dataset[i]`` is a dict with ``"frames"`` (T, 3, H, W) float32 in [0, 1] and
    ``"targets"``, a list of T dicts with ``"labels"`` (n,) int64, ``"boxes"`` (n, 4) float32
    normalised cxcywh and ``"track_ids"`` (n,) int64 (0, 1, ... in order of appearance in the
    clip's object list; an id means the same object in every frame).
    """

    classes = ShapesDataset.classes

    def __init__(
        self,
        split: str = "train",
        *,
        num_clips: int = 256,
        frames: int = 8,
        image_size: int = 64,
        seed: int = 0,
        max_objects: int = 4,
    ) -> None:
        self._stream = check_split(split)
        for name, value, low in (
            ("num_clips", num_clips, 1),
            ("frames", frames, 1),
            ("image_size", image_size, 16),
            ("max_objects", max_objects, 1),
        ):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
            if value < low:
                raise ValueError(f"{name} must be at least {low}, got {value}")
        self.split, self.num_clips, self.frames = split, int(num_clips), int(frames)
        self.image_size, self.seed, self.max_objects = int(image_size), seed, int(max_objects)
        centres = np.arange(image_size) + 0.5
        self._yy, self._xx = np.meshgrid(centres, centres, indexing="ij")  # pixel centres

    def __len__(self) -> int:
        return self.num_clips

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_clips:
            raise IndexError(f"index {index} out of range for {self.num_clips} clips")
        rng = np.random.default_rng([self.seed, self._stream, 7, index])
        s, t_count = self.image_size, self.frames
        background = rng.uniform(0.0, 0.6, size=3)
        tracks = self._tracks(rng, background)
        frames = background[None, :, None, None] + rng.normal(0.0, 0.06, size=(t_count, 3, s, s))
        targets = []
        for t in range(t_count):
            owner = np.full((s, s), -1)  # which object each pixel shows; later ones on top
            masks = {}
            for j, tr in enumerate(tracks):
                if tr.alive[t]:
                    masks[j] = shape_mask(self._xx, self._yy, tr.boxes[t], self.classes[tr.label])
                    owner[masks[j]] = j
                    frames[t][:, masks[j]] = tr.colour[:, None]
            boxes, labels, ids = [], [], []
            for j in masks:
                x0, y0, x1, y1 = tr_box = tracks[j].boxes[t]
                area = (x1 - x0) * (y1 - y0) * FILL[self.classes[tracks[j].label]]
                if np.sum(owner == j) >= MIN_VISIBLE * area:
                    boxes.append(np.clip(tr_box, 0.0, s))
                    labels.append(tracks[j].label)
                    ids.append(j)
            targets.append(
                {
                    "labels": np.asarray(labels, dtype=np.int64),
                    "boxes": xyxy_pixels_to_cxcywh(boxes, s),
                    "track_ids": np.asarray(ids, dtype=np.int64),
                }
            )
        frames = np.clip(frames, 0.0, 1.0).astype(np.float32)  # (T, 3, H, W)
        return {"frames": frames, "targets": targets}

    def _tracks(self, rng: np.random.Generator, background: np.ndarray) -> list[Track]:
        """Draw each object's look and roll its motion forward over the clip."""
        s, t_count = self.image_size, self.frames
        count = int(rng.integers(1, self.max_objects + 1))
        sides = rng.uniform(0.18, 0.32, size=count) * s
        starts = place_boxes(rng, [(a, a) for a in sides], s, max_iou=0.1)
        tracks = []
        for j, box in enumerate(starts):
            side = box[2] - box[0]
            speed = rng.uniform(0.02, 0.06) * s  # pixels per frame
            angle = rng.uniform(0, 2 * np.pi)
            velocity = speed * np.array([np.cos(angle), np.sin(angle)])
            accel = rng.normal(0.0, 0.003 * s, size=2)
            leaves = rng.random() < 0.2  # passes through the walls instead of bouncing
            enter = 0
            corner = box[:2].copy()
            if j > 0 and t_count > 2 and rng.random() < 0.25:  # enters later, from an edge
                enter = int(rng.integers(1, t_count - 1))
                corner, velocity = _edge_start(rng, side, speed, s)
            boxes, alive = np.zeros((t_count, 4)), np.zeros(t_count, dtype=bool)
            for t in range(enter, t_count):
                boxes[t] = [corner[0], corner[1], corner[0] + side, corner[1] + side]
                alive[t] = _overlaps_frame(boxes[t], s)
                if t > enter and not alive[t]:
                    break  # gone for good
                velocity = velocity + accel
                corner = corner + velocity
                if not leaves:
                    corner, velocity = _bounce(corner, velocity, side, s)
            tracks.append(
                Track(boxes, alive, int(rng.integers(0, 3)), contrasting_colour(rng, background))
            )
        return tracks


def _edge_start(
    rng: np.random.Generator, side: float, speed: float, s: int
) -> tuple[np.ndarray, np.ndarray]:
    """A top-left corner half outside a random edge and a velocity pointing into the frame."""
    edge = int(rng.integers(0, 4))
    along = rng.uniform(0, s - side)
    spread = rng.uniform(-0.5, 0.5)
    inward = {0: (1.0, spread), 1: (-1.0, spread), 2: (spread, 1.0), 3: (spread, -1.0)}[edge]
    corner = {
        0: (-side / 2, along),
        1: (s - side / 2, along),
        2: (along, -side / 2),
        3: (along, s - side / 2),
    }[edge]
    direction = np.asarray(inward) / np.linalg.norm(inward)
    return np.asarray(corner, dtype=np.float64), speed * direction


def _bounce(
    corner: np.ndarray, velocity: np.ndarray, side: float, s: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mirror a box that crossed a wall while moving outwards back inside, reversing that axis."""
    corner, velocity = corner.copy(), velocity.copy()
    for a in range(2):
        if corner[a] < 0 and velocity[a] < 0:
            corner[a], velocity[a] = -corner[a], -velocity[a]
        elif corner[a] + side > s and velocity[a] > 0:
            corner[a], velocity[a] = 2 * (s - side) - corner[a], -velocity[a]
    return corner, velocity


def _overlaps_frame(box: np.ndarray, s: int) -> bool:
    return bool(box[2] > 0 and box[0] < s and box[3] > 0 and box[1] < s)
