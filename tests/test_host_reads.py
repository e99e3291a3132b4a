"""The model reads the device only where it must: one read per deformable attention call.

array-api-strict stands in for a GPU: every conversion of one of its arrays to a
Python value (``bool``, ``int``, ``float``, an index) or to a host buffer is a
read of the device, and is counted here.
"""

from __future__ import annotations

import numpy as np
import pytest

from minidetr.deformable import init_ms_deform_attn_params, ms_deform_attn_module_forward
from minidetr.model import PRESETS, MiniDETR

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


def _model_inputs(name):
    cfg = PRESETS[name]
    model = MiniDETR(cfg)
    like = xps.asarray(np.zeros(1, dtype=np.float64))
    params = model.init_params(0, like=like)
    images = xps.asarray(np.random.default_rng(0).random((2, 3, cfg.image_size, cfg.image_size)))
    return cfg, model, params, images


@pytest.mark.parametrize("name", ["tiny", "tiny-deformable"])
def test_model_reads_the_device_once_per_deformable_attention(name, reads):
    cfg, model, params, images = _model_inputs(name)
    outputs, cache = model.forward(params, images, train=False)
    deformable_calls = cfg.num_encoder_layers + cfg.num_decoder_layers
    assert len(reads) == (deformable_calls if cfg.variant == "deformable" else 0)
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
