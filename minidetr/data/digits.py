"""Real handwriting as a detection set: scikit-learn's 8x8 digits placed on larger canvases.

scikit-learn ships the 1,797 digits of the UCI "Optical Recognition of Handwritten
Digits" set, so nothing is downloaded. Each canvas holds 1 to ``max_objects``
digits, upscaled 2 to 3 times, on a noisy background. Even-numbered digit
images feed the train split and odd-numbered ones the held-out split, so the
held-out handwriting is never seen in training. Needs ``pip install scikit-learn``.
"""

from __future__ import annotations

import numpy as np

from minidetr.data.dataset import Sample, check_split, place_boxes, xyxy_pixels_to_cxcywh


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the digits dataset needs scikit-learn: pip install 'minidetr[data]'"
        ) from err
    digits = load_digits()
    return digits.images / 16.0, digits.target.astype(np.int64)


class DigitsDataset:
    """Canvases of side ``image_size`` with 1 to ``max_objects`` handwritten digits (10 classes)."""

    classes = tuple(str(d) for d in range(10))

    def __init__(
        self,
        split: str = "train",
        num_images: int = 4096,
        image_size: int = 64,
        max_objects: int = 3,
        seed: int = 0,
    ) -> None:
        self._stream = check_split(split)
        if image_size < 32:
            raise ValueError(f"image_size must be at least 32, got {image_size}")
        images, labels = _load_digits()
        pick = slice(self._stream, None, 2)  # train: even images, val: odd ones
        self._glyphs, self._labels = images[pick], labels[pick]
        self.split, self.num_images, self.image_size = split, num_images, image_size
        self.max_objects, self.seed = max_objects, seed

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images")
        rng = np.random.default_rng([self.seed, 10 + self._stream, index])
        s = self.image_size
        image = rng.uniform(0.0, 0.3) + rng.normal(0.0, 0.05, size=(s, s))
        count = int(rng.integers(1, self.max_objects + 1))
        scales = rng.integers(2, 4, size=count)
        slots = place_boxes(rng, [(8 * k, 8 * k) for k in scales], s, max_iou=0.1)
        boxes, labels = [], []
        for slot in slots:  # a glyph that found no place is left out: size from the slot itself
            k = int(round((slot[2] - slot[0]) / 8))
            i = int(rng.integers(len(self._glyphs)))
            glyph = np.kron(self._glyphs[i], np.ones((k, k)))  # (8k, 8k)
            x0, y0 = int(slot[0]), int(slot[1])
            region = image[y0 : y0 + 8 * k, x0 : x0 + 8 * k]
            np.maximum(region, glyph, out=region)
            rows, cols = np.nonzero(glyph > 0.25)  # the box is the ink, not the 8x8 cell
            boxes.append(
                np.array(
                    [x0 + cols.min(), y0 + rows.min(), x0 + cols.max() + 1, y0 + rows.max() + 1]
                )
            )
            labels.append(self._labels[i])
        colour = rng.uniform(0.5, 1.0, size=3)
        rgb = np.clip(image[None] * colour[:, None, None], 0.0, 1.0).astype(np.float32)
        return Sample(rgb, xyxy_pixels_to_cxcywh(boxes, s), np.asarray(labels, dtype=np.int64))
