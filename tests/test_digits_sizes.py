"""The digits set at every canvas size its class accepts: no crash, boxes on the ink."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn")

from minidetr.data.digits import DigitsDataset  # noqa: E402


@pytest.mark.parametrize("size", [32, 40])
def test_every_image_is_made_and_its_boxes_fit_the_canvas(size):
    data = DigitsDataset("train", num_images=120, image_size=size, seed=3)
    for index in range(len(data)):
        sample = data[index]
        assert sample.image.shape == (3, size, size)
        boxes = sample.boxes  # (T, 4) cxcywh in [0, 1]
        assert len(boxes) == len(sample.labels) >= 1
        lo, hi = boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2
        assert np.all(lo >= -1e-6) and np.all(hi <= 1 + 1e-6)
        for (x0, y0), (x1, y1) in zip(lo * size, hi * size):  # each box holds bright ink
            ink = sample.image[:, round(y0) : round(y1), round(x0) : round(x1)].max()
            assert ink > 0.25
