"""Moving shapes seen two ways by the trainer: single frames (a still detection set) and pairs.

``MovingShapesFrames`` is a :class:`minidetr.data.Dataset` over every frame of every clip
(image i is frame i mod T of clip i // T), so the still-image training loop trains a detector
on video frames. ``frame_pair`` hands out two consecutive frames of a clip with their targets,
the unit a tracking-by-query step trains on. Clips are cached, since a pair or two neighbouring
frames come from the same clip and drawing one costs more than a training step's indexing.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from minidetr.data.dataset import Sample
from minidetr.video.moving_shapes import MovingShapes


class MovingShapesFrames:
    """Every frame of ``num_clips`` moving-shapes clips as a still detection set."""

    classes = MovingShapes.classes

    def __init__(
        self,
        split: str = "train",
        num_clips: int = 1024,
        frames: int = 8,
        image_size: int = 64,
        seed: int = 0,
    ) -> None:
        self.clips = MovingShapes(
            split, num_clips=num_clips, frames=frames, image_size=image_size, seed=seed
        )
        self.image_size, self.frames = image_size, frames
        self._clip = lru_cache(maxsize=64)(self.clips.__getitem__)

    def __len__(self) -> int:
        return len(self.clips) * self.frames

    def clip(self, index: int) -> dict:
        """Clip ``index`` (cached)."""
        return self._clip(index)

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} frames")
        clip = self.clip(index // self.frames)
        t = index % self.frames
        target = clip["targets"][t]
        return Sample(clip["frames"][t], target["boxes"], target["labels"])

    def frame_pair(self, clip: int, t: int) -> tuple[np.ndarray, dict, np.ndarray, dict]:
        """(image t, targets t, image t + 1, targets t + 1) of clip ``clip``; images (3, H, W)."""
        if not 0 <= t < self.frames - 1:
            raise ValueError(f"t must be in [0, {self.frames - 2}], got {t}")
        c = self.clip(clip)
        return c["frames"][t], c["targets"][t], c["frames"][t + 1], c["targets"][t + 1]
