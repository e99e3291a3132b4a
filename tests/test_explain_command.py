"""The explain pipeline end to end on tiny models: explain(), the report, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from minidetr.cli import main
from minidetr.data import ShapesDataset
from minidetr.explain.command import held_out_targets
from minidetr.explain.heads import ablate_head
from minidetr.explain.report import ExplainConfig, explain
from minidetr.model import PRESETS, MiniDETR


@pytest.mark.parametrize("preset", ["tiny", "tiny-deformable"])
def test_explain_scores_every_detection_with_every_method(preset):
    model = MiniDETR(PRESETS[preset])
    params = model.init_params(0)
    data = ShapesDataset("val", num_images=2, image_size=model.config.image_size)
    images, targets = held_out_targets(data, 2)
    cfg = ExplainConfig(threshold=0.0, max_detections=2, steps=4, match_iou=0.0)
    result = explain(model, params, images, np.zeros(1, np.float32), targets=targets, cfg=cfg)
    assert len(result.detections) == 4  # threshold 0: two per image
    summary = result.summary()
    for method in ("attention", "rollout", "relevance", "random"):
        faith = summary["faithfulness"][method]
        assert 0.0 <= faith["deletion_auc"] and 0.0 <= faith["insertion_auc"]
        assert 0.0 <= summary["segmentation"][method]["miou"] <= 1.0
    for det in result.detections:
        for m in det.maps.values():
            assert m.shape == (model.config.image_size,) * 2 and np.all(np.isfinite(m))
        assert np.all(det.maps["attention"] >= 0)
    heads = model.config.num_heads
    for name, h in summary["entropy"].items():
        assert len(h) == heads and all(0 <= x for x in h), name
    assert summary["intervention"]["heads"] == len(result.maps) * heads


@pytest.mark.parametrize("preset", ["tiny", "tiny-deformable"])
def test_ablating_a_head_zeroes_its_output_only(preset):
    from minidetr.explain.capture import capture_attention  # noqa: F401 - same cache walk

    model = MiniDETR(PRESETS[preset])
    params = model.init_params(0, dtype=np.float64)
    name = "encoder.layers.0.self_attn"
    ablated = ablate_head(params, name, 1, model.config.num_heads)
    changed = [k for k in params if not np.array_equal(params[k], ablated[k])]
    assert changed and all(k.startswith(name) for k in changed)
    with pytest.raises(ValueError, match="head"):
        ablate_head(params, name, model.config.num_heads, model.config.num_heads)
    with pytest.raises(ValueError, match="no attention"):
        ablate_head(params, "encoder.layers.9.self_attn", 0, model.config.num_heads)


def test_cli_explain_writes_figures_and_json(tmp_path, capsys):
    run = tmp_path / "run"
    train = ["train", "--preset", "tiny-deformable", "--batch-size", "2", "--steps", "2"]
    assert main([*train, "--quiet", "--out", str(run)]) == 0
    out = tmp_path / "explain"
    args = ["explain", str(run / "checkpoint.npz"), "--out", str(out), "--num-images", "2"]
    assert main([*args, "--threshold", "0", "--ablation-images", "4"]) == 0
    summary = json.loads((out / "explain.json").read_text())
    assert set(summary["faithfulness"]) == {"attention", "rollout", "relevance", "random"}
    assert set(summary["segmentation"]) == {"attention", "rollout", "relevance", "random"}
    assert summary["detections"] == 8  # threshold 0: four per image
    assert len(summary["head_ablation_ap50_drop"]["encoder.layers.0.self_attn"]) == 2
    for name in ("relevance", "decoder_attention", "sampling_points", "entropy", "head_importance"):
        assert (out / f"{name}.png").exists(), name
    assert main(["explain", str(tmp_path / "missing.npz"), "--out", str(out)]) == 2
    assert "error" in capsys.readouterr().err
