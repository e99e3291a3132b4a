"""The way out: a model exported to transformers trains in PyTorch, starting from minidetr's loss.

On one batch, the transformers loss of the exported DETR (its own Hungarian matcher,
cross-entropy with the no-object weight, L1 and GIoU, weights 1/5/2) equals
minidetr's SetCriterion with the same weights on minidetr's outputs; then PyTorch
takes an AdamW step and the loss goes down.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_interop_detr import images, tiny_detr  # noqa: E402

from minidetr.interop import from_transformers, to_transformers  # noqa: E402
from minidetr.model import MiniDETR  # noqa: E402
from minidetr.setloss import HungarianMatcher, LossWeights, SetCriterion  # noqa: E402

TARGETS = [
    {"labels": np.array([0, 2]), "boxes": np.array([[0.3, 0.3, 0.2, 0.3], [0.6, 0.7, 0.3, 0.2]])},
    {"labels": np.array([1]), "boxes": np.array([[0.5, 0.4, 0.4, 0.3]])},
]


def test_exported_model_trains_in_pytorch_from_minidetr_loss():
    cfg, params = from_transformers(tiny_detr("basic", seed=4), image_size=64)
    x = images(2)
    # minidetr's loss, DETR's weights, no auxiliary layers (transformers' auxiliary_loss=False)
    outputs, _ = MiniDETR(cfg).forward(params, x, train=False)
    criterion = SetCriterion(
        cfg.num_classes,
        HungarianMatcher(cost_class=1.0, cost_bbox=5.0, cost_giou=2.0),
        LossWeights(ce=1.0, bbox=5.0, giou=2.0, aux=0.0),
        eos_coef=0.1,
        losses=("labels", "boxes"),
    )
    targets = [
        {k: v.astype(np.float32) if k == "boxes" else v for k, v in t.items()} for t in TARGETS
    ]
    losses, _ = criterion.forward(outputs, targets)
    ours = float(losses["loss"])

    model = to_transformers(cfg, params).train()  # dropout is 0: train mode changes nothing
    labels = [
        {
            "class_labels": torch.from_numpy(t["labels"]),
            "boxes": torch.from_numpy(t["boxes"]).float(),
        }
        for t in TARGETS
    ]
    pixels = torch.from_numpy(x)
    theirs = model(pixel_values=pixels, labels=labels).loss.detach()
    assert abs(float(theirs) - ours) < 1e-4 * max(1.0, abs(ours))

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(3):
        opt.zero_grad()
        loss = model(pixel_values=pixels, labels=labels).loss
        loss.backward()
        opt.step()
    after = float(model(pixel_values=pixels, labels=labels).loss.detach())
    assert np.isfinite(after) and after < float(theirs)
