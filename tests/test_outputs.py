"""The typed model -> loss boundary: SetOutputs, and targets checked once per step."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

import minidetr.setloss.targets as targets_module
from minidetr.model import PRESETS, MiniDETR
from minidetr.outputs import Predictions, QueryGroup, SetOutputs
from minidetr.setloss import LossWeights, SetCriterion, Targets, check_targets
from minidetr.setloss.denoising import make_denoising_queries
from minidetr.setloss.matching import HungarianMatcher
from minidetr.train.loop import Run, TrainConfig


def layer(r, b=2, q=3, k=4):
    return Predictions(r.normal(size=(b, q, k)), r.uniform(0.1, 0.6, (b, q, 4)))


def test_detr_dict_round_trip_keeps_every_array_and_names():
    r = np.random.default_rng(0)
    meta = object()
    outputs = SetOutputs(
        {
            "main": QueryGroup((layer(r), layer(r), layer(r))),
            "enc": QueryGroup((layer(r),)),
            "dn": QueryGroup((layer(r, q=5), layer(r, q=5), layer(r, q=5)), meta),
        }
    )
    d = outputs.to_dict()
    assert d["pred_logits"] is outputs.groups["main"].layers[2].logits
    assert [a["pred_boxes"] for a in d["aux_outputs"]] == [
        p.boxes for p in outputs.groups["main"].layers[:2]
    ]
    assert d["enc_outputs"]["pred_logits"] is outputs.groups["enc"].layers[0].logits
    assert d["dn"]["meta"] is meta and len(d["dn"]["aux_outputs"]) == 2
    back = SetOutputs.from_dict(d)
    assert list(back.groups) == ["main", "enc", "dn"]
    for name, group in outputs:
        assert back.groups[name].meta is group.meta
        for p, p2 in zip(group.layers, back.groups[name].layers):
            assert p.logits is p2.logits and p.boxes is p2.boxes
    assert outputs.pred_boxes is outputs["pred_boxes"] is outputs.final.boxes
    assert "enc_outputs" in outputs and "dn" in outputs and "track" not in outputs


def test_bad_structures_are_named():
    r = np.random.default_rng(1)
    with pytest.raises(ValueError, match="'main' group"):
        SetOutputs({"dn": QueryGroup((layer(r),))})
    with pytest.raises(TypeError, match=r"groups\['main'\].layers\[0\] must be Predictions"):
        SetOutputs({"main": QueryGroup(({"pred_logits": 1},))})
    with pytest.raises(ValueError, match="unknown keys"):
        SetOutputs.from_dict({"pred_logits": 1, "pred_boxes": 2, "logits": 3})
    only_main = SetOutputs({"main": QueryGroup((layer(r),))})
    with pytest.raises(KeyError, match="DETR's outputs keys"):
        only_main["main"]
    with pytest.raises(KeyError, match="no such group"):
        only_main["enc_outputs"]  # as DETR's dict: an absent entry is a KeyError, not None


def test_targets_are_checked_once_and_then_pass_through(monkeypatch):
    t = [
        {"labels": np.array([0, 2]), "boxes": np.array([[0.5, 0.5, 0.2, 0.2]] * 2)},
        {"labels": np.zeros(0, np.int64), "boxes": np.zeros((0, 4))},
    ]
    checked = check_targets(t, 3, batch_size=2)
    assert isinstance(checked, Targets) and checked.num_classes == 3

    def fail(*args):
        raise AssertionError("checked twice")

    monkeypatch.setattr(targets_module, "_check_structure", fail)
    assert check_targets(checked, 3, batch_size=2) is checked
    with pytest.raises(ValueError, match="batch size 3"):
        check_targets(checked, 3, batch_size=3)  # the cheap batch-size check still runs
    with pytest.raises(AssertionError, match="checked twice"):
        check_targets(checked, 4)  # checked for another number of classes: checked again


def test_a_bad_target_in_a_batch_is_still_named_by_image():
    t = [{"labels": np.array([1]), "boxes": np.array([[0.5, 0.5, 0.2, 0.2]])} for _ in range(4)]
    t[2] = {"labels": np.array([1]), "boxes": np.array([[0.5, 0.5, 0.2, np.nan]])}
    with pytest.raises(ValueError, match=r"targets\[2\]\['boxes'\] must be finite"):
        check_targets(t, 3)


def test_a_training_step_checks_its_targets_once(monkeypatch):
    cfg = TrainConfig(preset="tiny-deformable", steps=2, batch_size=3, train_images=8, val_images=2)
    run = Run(cfg, np.zeros(0, np.float32))
    calls = []
    original = targets_module._check_structure
    monkeypatch.setattr(
        targets_module, "_check_structure", lambda t, w: calls.append(w) or original(t, w)
    )
    run.train_step()
    assert calls == [f"targets[{i}]" for i in range(3)]  # one pass over the batch, not six


@pytest.mark.parametrize("name", ["tiny", "tiny-deformable"])
def test_model_takes_the_criterions_gradients_as_dict_or_set_outputs(name):
    cfg = replace(PRESETS[name], dropout=0.0)
    model = MiniDETR(cfg)
    params = model.init_params(0, dtype=np.float64)
    r = np.random.default_rng(0)
    images = r.normal(size=(2, 3, cfg.image_size, cfg.image_size))
    targets = [
        {
            "labels": np.array([0, 1]),
            "boxes": np.array([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.2]]),
        },
        {"labels": np.array([2]), "boxes": np.array([[0.5, 0.5, 0.4, 0.4]])},
    ]
    dn = make_denoising_queries(
        targets, 2, 0.2, 0.4, cfg.num_classes, r, num_queries=cfg.num_queries, contrastive=True
    )
    outputs, cache = model.forward(params, images, train=False, denoising=dn)
    assert set(outputs.groups) == {"main", "dn"} | ({"enc"} if cfg.two_stage else set())
    assert len(outputs.groups["main"].layers) == cfg.num_decoder_layers
    criterion = SetCriterion(
        cfg.num_classes, HungarianMatcher(focal=cfg.focal), LossWeights(), focal=cfg.focal
    )
    _, ccache = criterion.forward(outputs, targets)
    doutputs = criterion.backward(ccache)
    a = model.backward(doutputs, cache)
    b = model.backward(doutputs.to_dict(), cache)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    three = doutputs.groups["main"].layers * 3  # neither every layer nor the last alone
    with pytest.raises(ValueError, match="group 'main' must hold"):
        model.backward(SetOutputs({"main": QueryGroup(three)}), cache)
