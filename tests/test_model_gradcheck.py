"""The whole MiniDETR against finite differences, with DETR's set criterion on top.

For each variant the scalar is the criterion's total loss (every decoder layer,
the denoising queries and the two-stage proposals). Sampled entries of every
parameter tensor are compared with central differences in float64. What the
forward detaches (refined boxes, the top-K proposal choice) and the matching are
held fixed, as ``MiniDETR.forward(detached=...)`` and ``SetCriterion.forward(matches=...)``
allow, so the loss is a smooth function of the parameters.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from minidetr.gradcheck import numerical_gradient
from minidetr.model import PRESETS, MiniDETR
from minidetr.setloss.criterion import LossWeights, SetCriterion
from minidetr.setloss.denoising import make_denoising_queries
from minidetr.setloss.matching import HungarianMatcher

TOL = 1e-5
ENTRIES = 2  # sampled entries per parameter tensor

CONFIGS = {
    # plain DETR: learned positional queries, softmax classes, one scale
    "detr": dataclasses.replace(
        PRESETS["tiny"], anchor_queries=False, box_refine=False, denoising=False, num_levels=1
    ),
    # dense attention with anchor boxes refined per layer and denoising queries
    "tiny": PRESETS["tiny"],
    # deformable attention, focal loss, two-stage queries, refinement, denoising
    "tiny-deformable": PRESETS["tiny-deformable"],
}


def _problem(cfg, seed=0):
    r = np.random.default_rng(seed)
    images = r.standard_normal((2, 3, cfg.image_size, cfg.image_size))
    targets = [
        {
            "labels": np.array([0, 2]),
            "boxes": np.array([[0.3, 0.3, 0.2, 0.3], [0.6, 0.7, 0.3, 0.2]]),
        },
        {"labels": np.array([1]), "boxes": np.array([[0.5, 0.4, 0.4, 0.3]])},
    ]
    dn = None
    if cfg.denoising:
        dn = make_denoising_queries(
            targets, 2, 0.3, 0.4, cfg.num_classes, np.random.default_rng(seed),
            num_queries=cfg.num_queries, contrastive=True,
        )  # fmt: skip
    return images, targets, dn


def _params(model, seed=0):
    """Float64 parameters moved off their initial values.

    Deformable DETR starts its offset and attention weights at exactly zero, which
    puts every encoder sample on a pixel centre, where bilinear interpolation has
    a kink; a small perturbation leaves the kinks so central differences apply.
    """
    r = np.random.default_rng(seed + 1)
    params = model.init_params(seed, dtype=np.float64)
    return {k: v + 0.05 * r.standard_normal(v.shape) for k, v in params.items()}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_whole_model_gradient_matches_finite_differences(name):
    cfg = CONFIGS[name]
    model = MiniDETR(cfg)
    params = _params(model)
    images, targets, dn = _problem(cfg)
    criterion = SetCriterion(
        cfg.num_classes,
        HungarianMatcher(focal=cfg.focal),
        LossWeights(ce=1.0, bbox=5.0, giou=2.0),
        focal=cfg.focal,
    )
    outputs, cache = model.forward(params, images, denoising=dn)
    losses, ccache = criterion.forward(outputs, targets)
    grads = model.backward(criterion.backward(ccache), cache)
    detached, matches = cache.detached, ccache.matches
    assert set(grads) == set(params)

    def loss_with(key):
        def f(value):
            trial = dict(params)
            trial[key] = value
            out, _ = model.forward(trial, images, denoising=dn, detached=detached)
            return float(criterion.forward(out, targets, matches=matches)[0]["loss"])

        return f

    rng = np.random.default_rng(7)
    errors = {}
    for key, value in params.items():
        idx = rng.choice(value.size, size=min(ENTRIES, value.size), replace=False)
        numeric = numerical_gradient(loss_with(key), value, indices=idx).reshape(-1)[idx]
        analytic = grads[key].reshape(-1)[idx]
        scale = max(np.abs(grads[key]).max(), 1e-6)  # relative to the tensor's largest gradient
        errors[key] = float(np.max(np.abs(numeric - analytic)) / scale)
    worst = max(errors, key=errors.get)
    assert errors[worst] < TOL, f"{worst}: relative error {errors[worst]:.2e}"
    # the loss reached every parameter group
    assert all(np.any(g != 0) for g in grads.values())
