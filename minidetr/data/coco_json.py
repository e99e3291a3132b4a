"""Your own data: any COCO-format detection file, checked, resized and padded for a preset.

A COCO file lists ``images`` (id, file_name, width, height), ``annotations`` (id,
image_id, category_id, bbox = [x, y, w, h] in pixels, iscrowd) and ``categories``
(id, name). Each image is resized so its longer side is the preset's side S, the
aspect ratio kept, and padded with zeros at the right and bottom to S x S, as
DETR pads a batch; its boxes are scaled the same way and normalised by S. Category
ids, whatever they are, become labels 0..C-1 in increasing id order. Crowd
annotations are skipped, as DETR's training does.

Everything a file can get wrong is found when it is opened, with a message that
names the annotation id or the file: boxes with non-positive size or outside
their image, unknown category or image ids, duplicate ids, missing or unreadable
images, an empty dataset. Images are read once and kept in memory, resized.

Shapes: S side of the padded square image, T objects in one image.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from minidetr.data.dataset import Sample

VAL_FRACTION = 0.1  # the held-out share of the training file when no validation file is given
EDGE_TOLERANCE = 1e-3  # pixels a box may pass its image's edge (float rounding in exporters)


class CocoFormatError(ValueError):
    """A COCO file that cannot be used as it is; the message names the file and the entry."""


def _fail(path: Path, what: str) -> CocoFormatError:
    return CocoFormatError(f"{path}: {what}")


def read_coco_file(path: str | Path) -> dict[str, Any]:
    """The parsed JSON of a COCO file, with its three lists checked to exist."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise _fail(path, "no such file") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _fail(path, f"cannot read it as JSON ({err})") from err
    if not isinstance(data, dict):
        raise _fail(path, "must hold a JSON object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise _fail(path, f"has no list {key!r}")
    return data


def _unique_ids(path: Path, entries: list, kind: str) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for e in entries:
        if not isinstance(e, dict) or not isinstance(e.get("id"), int):
            raise _fail(path, f"an entry of {kind} has no integer id: {str(e)[:80]}")
        if e["id"] in out:
            raise _fail(path, f"duplicate {kind} id {e['id']}")
        out[e["id"]] = e
    return out


def check_coco(path: str | Path, data: dict[str, Any], categories: list[int] | None = None):
    """(image entries by id, annotations by image id, sorted category ids), or CocoFormatError.

    ``categories``: the category ids a validation file must use (the training file's).
    """
    path = Path(path)
    images = _unique_ids(path, data["images"], "image")
    cats = _unique_ids(path, data["categories"], "category")
    anns = _unique_ids(path, data["annotations"], "annotation")
    if not images:
        raise _fail(path, "holds no images: the dataset is empty")
    if not cats:
        raise _fail(path, "holds no categories")
    cat_ids = sorted(cats) if categories is None else list(categories)
    for img in images.values():
        w, h = img.get("width"), img.get("height")
        if not isinstance(img.get("file_name"), str):
            raise _fail(path, f"image id {img['id']} has no file_name")
        if not (isinstance(w, (int, float)) and isinstance(h, (int, float)) and w > 0 and h > 0):
            raise _fail(path, f"image id {img['id']} needs a positive width and height")
    by_image: dict[int, list[dict]] = {i: [] for i in images}
    for a in anns.values():
        aid = a["id"]
        if a.get("image_id") not in images:
            raise _fail(path, f"annotation id {aid} refers to unknown image id {a.get('image_id')}")
        if a.get("category_id") not in cats or a["category_id"] not in cat_ids:
            raise _fail(path, f"annotation id {aid} has unknown category id {a.get('category_id')}")
        box = a.get("bbox")
        if not (isinstance(box, list) and len(box) == 4):
            raise _fail(path, f"annotation id {aid} needs a bbox [x, y, width, height]")
        x, y, w, h = (float(v) for v in box)
        if not (w > 0 and h > 0):
            raise _fail(path, f"annotation id {aid} has a box of non-positive size {w} x {h}")
        img = images[a["image_id"]]
        tol = EDGE_TOLERANCE
        if x < -tol or y < -tol or x + w > img["width"] + tol or y + h > img["height"] + tol:
            raise _fail(
                path,
                f"annotation id {aid} has a box {box} outside its image "
                f"({img['width']} x {img['height']}, image id {img['id']})",
            )
        if not a.get("iscrowd", 0):
            by_image[a["image_id"]].append(a)
    return images, by_image, cat_ids


def load_image(path: Path, size: int) -> tuple[np.ndarray, float]:
    """(image (3, S, S) float32 in [0, 1] padded at right and bottom, scale new / old)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
    except FileNotFoundError as err:
        raise CocoFormatError(f"{path}: image file not found") from err
    except (OSError, UnidentifiedImageError) as err:
        raise CocoFormatError(f"{path}: cannot read the image ({err})") from err
    w, h = rgb.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    small = np.asarray(rgb.resize((nw, nh), Image.BILINEAR), dtype=np.float32) / 255.0
    out = np.zeros((3, size, size), dtype=np.float32)
    out[:, :nh, :nw] = np.transpose(small, (2, 0, 1))
    return out, scale


class CocoDataset:
    """The images of a COCO file (or a subset of their ids), resized and padded to S x S.

    ``images_dir``: where file names are looked up (default: the JSON file's folder).
    ``category_ids``: the label order (default: this file's category ids, sorted).
    """

    def __init__(
        self,
        path: str | Path,
        image_size: int,
        *,
        images_dir: str | Path | None = None,
        image_ids: list[int] | None = None,
        category_ids: list[int] | None = None,
    ) -> None:
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        self.path = Path(path)
        data = read_coco_file(self.path)
        images, by_image, cat_ids = check_coco(self.path, data, category_ids)
        names = {c["id"]: str(c.get("name", c["id"])) for c in data["categories"]}
        self.category_ids = tuple(cat_ids)
        self.classes = tuple(names[c] for c in cat_ids)
        self.image_size = image_size
        root = Path(images_dir) if images_dir is not None else self.path.parent
        ids = sorted(images) if image_ids is None else list(image_ids)
        if not ids:
            raise _fail(self.path, "no images selected: the dataset is empty")
        label_of = {c: k for k, c in enumerate(cat_ids)}
        self.image_ids = tuple(ids)
        self._samples = []
        for i in ids:
            image, scale = load_image(root / images[i]["file_name"], image_size)
            anns = by_image[i]
            xywh = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
            xywh = xywh * scale / image_size
            boxes = np.concatenate([xywh[:, :2] + xywh[:, 2:] / 2, xywh[:, 2:]], axis=1)
            labels = np.array([label_of[a["category_id"]] for a in anns], dtype=np.int64)
            self._samples.append(Sample(image, boxes.astype(np.float32), labels))

    def __len__(self) -> int:
        return len(self._samples)

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < len(self._samples):
            raise IndexError(f"index {index} out of range for {len(self._samples)} images")
        return self._samples[index]


def open_coco_datasets(
    train_path: str | Path,
    image_size: int,
    *,
    val_path: str | Path | None = None,
    images_dir: str | Path | None = None,
    seed: int = 0,
) -> tuple[CocoDataset, CocoDataset]:
    """(train, val): the validation file, or else a held-out tenth of the training images.

    The held-out images are chosen by a generator seeded with ``seed``, so a run
    and its resumption hold out the same ones. The validation file must use the
    training file's category ids.
    """
    if val_path is not None:
        train = CocoDataset(train_path, image_size, images_dir=images_dir)
        val = CocoDataset(
            val_path, image_size, images_dir=images_dir, category_ids=list(train.category_ids)
        )
        return train, val
    data = read_coco_file(train_path)
    images, _, _ = check_coco(Path(train_path), data)
    ids = sorted(images)
    if len(ids) < 2:
        raise _fail(Path(train_path), "needs at least 2 images to hold one out for validation")
    n_val = max(1, round(VAL_FRACTION * len(ids)))
    order = np.random.default_rng(seed).permutation(len(ids))
    val_ids = sorted(ids[k] for k in order[:n_val])
    train_ids = sorted(ids[k] for k in order[n_val:])
    kw = {"images_dir": images_dir}
    return (
        CocoDataset(train_path, image_size, image_ids=train_ids, **kw),
        CocoDataset(train_path, image_size, image_ids=val_ids, **kw),
    )
