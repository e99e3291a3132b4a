"""COCO-format datasets: resizing, box conversion, category mapping, and every bad input."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minidetr.data.coco_json import CocoDataset, CocoFormatError, open_coco_datasets


def write_coco(folder: Path, num_images: int = 4, name: str = "train.json") -> Path:
    """A small COCO file: images 40 x 20 (w x h), one red box each, categories 7 and 3."""
    folder.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(num_images):
        pixels = np.zeros((20, 40, 3), dtype=np.uint8)
        pixels[4:12, 10:30] = (255, 0, 0)  # x 10..30, y 4..12
        Image.fromarray(pixels).save(folder / f"im{i}.png")
        images.append({"id": 100 + i, "file_name": f"im{i}.png", "width": 40, "height": 20})
        anns.append(
            {"id": 1 + i, "image_id": 100 + i, "category_id": 7 if i % 2 else 3,
             "bbox": [10, 4, 20, 8], "area": 160, "iscrowd": 0}
        )  # fmt: skip
    cats = [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}]
    path = folder / name
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def test_images_resized_keep_aspect_and_boxes_follow(tmp_path):
    ds = CocoDataset(write_coco(tmp_path), image_size=32)
    assert len(ds) == 4 and ds.classes == ("three", "seven")  # ids sorted: 3 -> 0, 7 -> 1
    s = ds[0]
    assert s.image.shape == (3, 32, 32) and s.image.dtype == np.float32
    # 40 x 20 scaled by 32/40 = 0.8 -> 32 x 16, padded below with zeros
    assert np.all(s.image[:, 16:, :] == 0)
    # the box x 10..30, y 4..12 -> 8..24, 3.2..9.6 pixels; (cx, cy, w, h) / 32
    np.testing.assert_allclose(s.boxes, [[16 / 32, 6.4 / 32, 16 / 32, 6.4 / 32]], rtol=1e-6)
    assert s.labels.tolist() == [0] and ds[1].labels.tolist() == [1]
    # the red box is where the box says it is
    x0, y0, x1, y1 = 9, 4, 23, 9
    assert s.image[0, y0:y1, x0:x1].min() > 0.9 and s.image[1, y0:y1, x0:x1].max() < 0.1


def test_held_out_tenth_is_deterministic_and_disjoint(tmp_path):
    path = write_coco(tmp_path, num_images=12)
    train, val = open_coco_datasets(path, 32, seed=3)
    again_train, again_val = open_coco_datasets(path, 32, seed=3)
    assert len(val) == 1 and len(train) == 11
    assert set(train.image_ids).isdisjoint(val.image_ids)
    assert val.image_ids == again_val.image_ids and train.image_ids == again_train.image_ids


def test_validation_file_and_images_folder(tmp_path):
    train_path = write_coco(tmp_path / "a", name="train.json")
    val_path = write_coco(tmp_path / "a", num_images=2, name="val.json")
    moved = tmp_path / "elsewhere.json"
    moved.write_text(val_path.read_text())
    train, val = open_coco_datasets(train_path, 32, val_path=moved, images_dir=tmp_path / "a")
    assert len(train) == 4 and len(val) == 2 and val.classes == train.classes


def _broken(tmp_path: Path, edit) -> Path:
    path = write_coco(tmp_path)
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path


BAD = {
    "non-positive size": (
        lambda d: d["annotations"][1].update(bbox=[1, 1, 0, 5]),
        "annotation id 2 has a box of non-positive size",
    ),
    "outside the image": (
        lambda d: d["annotations"][2].update(bbox=[30, 4, 20, 8]),
        "annotation id 3 has a box .* outside its image",
    ),
    "unknown category": (
        lambda d: d["annotations"][0].update(category_id=99),
        "annotation id 1 has unknown category id 99",
    ),
    "unknown image": (
        lambda d: d["annotations"][0].update(image_id=5),
        "annotation id 1 refers to unknown image id 5",
    ),
    "duplicate annotation id": (
        lambda d: d["annotations"][1].update(id=1),
        "duplicate annotation id 1",
    ),
    "duplicate image id": (lambda d: d["images"][1].update(id=100), "duplicate image id 100"),
    "missing image": (
        lambda d: d["images"][3].update(file_name="gone.png"),
        "gone.png: image file not found",
    ),
    "empty": (lambda d: (d["images"].clear(), d["annotations"].clear()), "the dataset is empty"),
    "no annotations list": (lambda d: d.pop("annotations"), "has no list 'annotations'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_names_the_entry(tmp_path, case):
    edit, message = BAD[case]
    path = _broken(tmp_path, edit)
    with pytest.raises(CocoFormatError, match=message):
        open_coco_datasets(path, 32)


def test_unreadable_image_and_json(tmp_path):
    path = write_coco(tmp_path)
    (tmp_path / "im2.png").write_bytes(b"not a png")
    with pytest.raises(CocoFormatError, match="im2.png: cannot read the image"):
        CocoDataset(path, 32)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{ nope")
    with pytest.raises(CocoFormatError, match="bad.json: cannot read it as JSON"):
        CocoDataset(bad_json, 32)
    with pytest.raises(CocoFormatError, match="missing.json: no such file"):
        CocoDataset(tmp_path / "missing.json", 32)


def test_validation_file_must_use_training_categories(tmp_path):
    train_path = write_coco(tmp_path / "a")
    val = json.loads(write_coco(tmp_path / "b").read_text())
    val2 = copy.deepcopy(val)
    val2["categories"].append({"id": 11, "name": "eleven"})
    val2["annotations"][0]["category_id"] = 11
    (tmp_path / "b" / "val.json").write_text(json.dumps(val2))
    with pytest.raises(CocoFormatError, match="annotation id 1 has unknown category id 11"):
        open_coco_datasets(train_path, 32, val_path=tmp_path / "b" / "val.json")


def test_crowd_annotations_are_skipped(tmp_path):
    path = _broken(tmp_path, lambda d: d["annotations"][0].update(iscrowd=1))
    ds = CocoDataset(path, 32)
    assert len(ds[0].labels) == 0 and len(ds[1].labels) == 1


def test_cli_trains_evaluates_and_predicts_on_a_coco_file(tmp_path, capsys):
    from minidetr.cli import main

    path = write_coco(tmp_path / "data", num_images=10)
    out = tmp_path / "run"
    common = ["--preset", "tiny", "--steps", "2", "--batch-size", "2", "--quiet"]
    assert main(["train", "--dataset", str(path), "--out", str(out), *common]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"AP", "AP50", "AP75"} and metrics["dataset"] == str(path.resolve())
    assert main(["eval", str(out / "checkpoint.npz")]) == 0
    assert '"AP50"' in capsys.readouterr().out
    picture = tmp_path / "data" / "im0.png"
    pred_dir = tmp_path / "pred"
    assert main(["predict", str(out / "checkpoint.npz"), str(picture), "--out", str(pred_dir)]) == 0
    assert (pred_dir / "im0_pred.png").exists()


def test_cli_bad_coco_file_is_one_line(tmp_path, capsys):
    from minidetr.cli import main

    path = _broken(tmp_path, lambda d: d["annotations"][1].update(bbox=[1, 1, -2, 5]))
    args = ["train", "--dataset", str(path), "--preset", "tiny", "--steps", "1"]
    assert main([*args, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "annotation id 2" in err[0] and "Traceback" not in err[0]
    assert main(["train", "--dataset", "nope", "--out", str(tmp_path / "r2")]) == 2
    assert "COCO file PATH.json" in capsys.readouterr().err
    missing = str(tmp_path / "missing.json")
    assert main(["train", "--dataset", missing, "--out", str(tmp_path / "r3")]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"minidetr: error: --dataset file {missing} does not exist"
    )
    assert not (tmp_path / "r3").exists()  # refused before any work
    args = ["train", "--dataset", str(path), "--images", str(tmp_path / "no")]
    args += ["--out", str(tmp_path / "r4")]
    assert main(args) == 2
    assert "--images" in capsys.readouterr().err and not (tmp_path / "r4").exists()


def test_cli_resumes_a_coco_run_given_a_relative_path(tmp_path, monkeypatch):
    from minidetr.cli import main

    write_coco(tmp_path / "data", num_images=10)
    monkeypatch.chdir(tmp_path)
    common = ["--dataset", "data/train.json", "--preset", "tiny", "--batch-size", "2", "--quiet"]
    assert main(["train", *common, "--steps", "1", "--out", "run"]) == 0
    assert main(["train", *common, "--steps", "2", "--out", "run", "--resume"]) == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == 2
