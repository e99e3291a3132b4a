"""The model reads the device only where it must: its images, and each deformable attention.

array-api-strict stands in for a GPU: every conversion of one of its arrays to a
Python value (``bool``, ``int``, ``float``, an index) or to a host buffer is a
read of the device, and is counted here.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from minidetr.boxes import generalized_box_iou_forward
from minidetr.deformable import init_ms_deform_attn_params, ms_deform_attn_module_forward
from minidetr.model import PRESETS, MiniDETR
from minidetr.ops import cross_entropy_forward

xps = pytest.importorskip("array_api_strict")
READS = ("__bool__", "__int__", "__float__", "__index__", "__array__", "__buffer__")


@pytest.fixture
def reads(monkeypatch):
    """A list that collects the name of every device read while the test runs."""
    from array_api_strict._array_object import Array

    seen: list[str] = []
    for name in READS:
        original = getattr(Array, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            seen.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(Array, name, counted)
    return seen


CONFIGS = {
    "detr": dataclasses.replace(PRESETS["tiny"], anchor_queries=False, box_refine=False,
                                denoising=False),
    "tiny": PRESETS["tiny"],
    "tiny-deformable": PRESETS["tiny-deformable"],
}  # fmt: skip


def _model_inputs(name):
    cfg = CONFIGS[name]
    model = MiniDETR(cfg)
    like = xps.asarray(np.zeros(1, dtype=np.float64))
    params = model.init_params(0, like=like)
    images = xps.asarray(np.random.default_rng(0).random((2, 3, cfg.image_size, cfg.image_size)))
    return cfg, model, params, images


@pytest.mark.parametrize("name", list(CONFIGS))
def test_model_reads_the_device_for_its_images_and_each_deformable_attention(name, reads):
    cfg, model, params, images = _model_inputs(name)
    outputs, cache = model.forward(params, images, train=False)
    deformable_calls = cfg.num_encoder_layers + cfg.num_decoder_layers
    # one read checks the images are finite, then one per deformable attention call
    assert len(reads) == 1 + (deformable_calls if cfg.variant == "deformable" else 0)
    reads.clear()
    dout = {
        "pred_logits": xps.ones_like(outputs.pred_logits),
        "pred_boxes": xps.ones_like(outputs.pred_boxes),
    }
    model.backward(dout, cache)
    assert reads == []


def test_deformable_module_reads_the_device_once(reads):
    r = np.random.default_rng(0)
    params = init_ms_deform_attn_params(8, 2, 2, 2, r, like=xps.asarray(np.zeros(1)))
    query = xps.asarray(r.standard_normal((1, 3, 8)))
    ref = xps.asarray(r.uniform(0.2, 0.8, (1, 3, 2, 2)))
    memory = xps.asarray(r.standard_normal((1, 20, 8)))
    ms_deform_attn_module_forward(
        params, query, ref, memory, ((4, 4), (2, 2)), n_heads=2, n_levels=2, n_points=2
    )
    assert reads == ["__bool__"]


def test_cross_entropy_reads_the_device_once(reads):
    logits = xps.asarray(np.random.default_rng(0).standard_normal((5, 4)))
    cross_entropy_forward(logits, xps.asarray([0, 3, 1, 3, 2]), xps.asarray([1.0, 1, 1, 0.1]))
    assert reads == ["__bool__"]


def test_giou_checks_both_box_arrays_in_one_read(reads):
    boxes = xps.asarray([[0.1, 0.1, 0.4, 0.5], [0.2, 0.3, 0.9, 0.6]])
    generalized_box_iou_forward(boxes, boxes[:1, :])
    assert reads.count("__bool__") == 1  # the validity of both; the range scaling reads floats
