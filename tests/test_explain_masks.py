"""The shapes generator's exact object masks, the ground truth of attention-as-segmentation."""

from __future__ import annotations

import numpy as np

from minidetr.data import ShapesDataset


def test_masks_are_the_visible_pixels_of_each_object():
    data = ShapesDataset("val", num_images=16, image_size=64)
    for i in range(len(data)):
        sample, masks = data[i], data.masks(i)
        assert masks.shape == (len(sample.labels), 64, 64) and masks.dtype == bool
        assert np.all(masks.sum(0) <= 1)  # an object hides what it covers of earlier ones
        for box, mask in zip(sample.boxes, masks):
            assert mask.any()
            cx, cy, w, h = box * 64
            ys, xs = np.nonzero(mask)
            assert xs.min() + 0.5 >= cx - w / 2 - 1e-3 and xs.max() + 0.5 <= cx + w / 2 + 1e-3
            assert ys.min() + 0.5 >= cy - h / 2 - 1e-3 and ys.max() + 0.5 <= cy + h / 2 + 1e-3
            colours = sample.image[:, mask]  # one flat colour, unlike the noisy background
            np.testing.assert_allclose(colours, colours[:, :1].repeat(colours.shape[1], 1))
