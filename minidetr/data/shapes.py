"""A synthetic detection set: coloured circles, squares and triangles on noisy backgrounds.

Every image is a pure function of (seed, split, index), so the set needs no
download, no disk, and is the same on every machine. The train and held-out
splits draw from disjoint random streams.
"""

from __future__ import annotations

import numpy as np

from minidetr.data.dataset import Sample, check_split, place_boxes, xyxy_pixels_to_cxcywh


class ShapesDataset:
    """``num_images`` images of side ``image_size`` with 0 to ``max_objects`` shapes each.

    Shapes are 18% to 45% of the image side, in random colours that contrast with
    a random noisy background; two shapes overlap by at most IoU 0.25.
    """

    classes = ("circle", "square", "triangle")

    def __init__(
        self,
        split: str = "train",
        num_images: int = 4096,
        image_size: int = 64,
        max_objects: int = 4,
        seed: int = 0,
    ) -> None:
        self._stream = check_split(split)
        if image_size < 16:
            raise ValueError(f"image_size must be at least 16, got {image_size}")
        self.split, self.num_images, self.image_size = split, num_images, image_size
        self.max_objects, self.seed = max_objects, seed
        centres = np.arange(image_size) + 0.5
        self._yy, self._xx = np.meshgrid(centres, centres, indexing="ij")  # pixel centres

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> Sample:
        image, boxes, labels, _ = self._draw(index)
        return Sample(image, xyxy_pixels_to_cxcywh(boxes, self.image_size), labels)

    def masks(self, index: int) -> np.ndarray:
        """The exact visible pixels of each object of image ``index``: (T, S, S) boolean.

        Objects are painted in order, so a later one hides what it covers of an earlier one.
        """
        return self._draw(index)[3]

    def _draw(self, index: int) -> tuple[np.ndarray, list, np.ndarray, np.ndarray]:
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images")
        rng = np.random.default_rng([self.seed, self._stream, index])
        s = self.image_size
        background = rng.uniform(0.0, 0.6, size=3)
        image = background[:, None, None] + rng.normal(0.0, 0.06, size=(3, s, s))
        count = int(rng.integers(0, self.max_objects + 1))
        sides = rng.uniform(0.18, 0.45, size=count) * s
        boxes = place_boxes(rng, [(a, a) for a in sides], s, max_iou=0.25)
        labels = rng.integers(0, len(self.classes), size=len(boxes))
        masks = np.zeros((len(boxes), s, s), dtype=bool)  # (T, S, S)
        for t, (box, label) in enumerate(zip(boxes, labels)):
            colour = contrasting_colour(rng, background)
            masks[t] = self._mask(box, int(label))
            masks[:t] &= ~masks[t]  # what it covers of earlier objects is no longer visible
            image[:, masks[t]] = colour[:, None]
        image = np.clip(image, 0.0, 1.0).astype(np.float32)
        return image, boxes, labels.astype(np.int64), masks

    def _mask(self, box: np.ndarray, label: int) -> np.ndarray:
        return shape_mask(self._xx, self._yy, box, self.classes[label])


def shape_mask(xx: np.ndarray, yy: np.ndarray, box: np.ndarray, shape: str) -> np.ndarray:
    """Pixels (centres ``xx``, ``yy``) covered by a circle, square or triangle filling ``box``."""
    x0, y0, x1, y1 = box
    inside = (xx >= x0) & (xx <= x1) & (yy >= y0) & (yy <= y1)
    if shape == "square":
        return inside
    cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    if shape == "circle":
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= half**2
    # triangle: apex at the top centre, base along the bottom edge
    return inside & (np.abs(xx - cx) <= half * (yy - y0) / (y1 - y0))


def contrasting_colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    for _ in range(20):
        colour = rng.uniform(0.0, 1.0, size=3)
        if np.abs(colour - background).sum() > 0.6:
            return colour
    return 1.0 - background
