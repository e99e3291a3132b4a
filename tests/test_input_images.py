"""Non-finite pixels are refused at the model's door, under the name ``images``."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from minidetr.model import PRESETS, MiniDETR


@pytest.mark.parametrize("preset", ["tiny", "tiny-deformable"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_pixels_are_named_images(preset, bad):
    model = MiniDETR(replace(PRESETS[preset], num_classes=3))
    params = model.init_params(seed=0)
    size = model.config.image_size
    images = np.random.default_rng(0).random((2, 3, size, size)).astype(np.float32)
    images[1, 2, 5, 7] = bad
    with pytest.raises(ValueError, match=r"images must be finite; entry \(1, 2, 5, 7\)"):
        model.forward(params, images, train=False)
