"""The ground-truth format shared by the matcher, the criterion and denoising.

``targets`` is a list with one dict per image, as in DETR::

    {"labels": (T,) integers in [0, C), "boxes": (T, 4) cxcywh, normalised to [0, 1]}

T may differ between images and may be 0. Every error names the image index
and the field, so ``targets[3]['boxes']`` is where a user looks, not a NaN later.

:func:`check_targets` returns the list as :class:`Targets`, which remembers that
it was checked: the matcher, the criterion and denoising all call
``check_targets``, and on a ``Targets`` already checked for the same number of
classes it costs nothing (no second pass, no host read). The values of a batch
are checked in one pass over all its images, so a whole batch costs a few host
reads, not a few per image.
"""

from __future__ import annotations

from typing import Any

from minidetr.backend import Array, namespace
from minidetr.checks import check_array, check_floating, check_integral


class Targets(list):
    """A list of target dicts that :func:`check_targets` accepted for ``num_classes`` classes.

    Do not mutate it: a changed entry would not be checked again.
    """

    def __init__(self, targets: list[dict[str, Array]], num_classes: int) -> None:
        super().__init__(targets)
        self.num_classes = num_classes


def check_targets(targets: Any, num_classes: int, batch_size: int | None = None) -> Targets:
    """``targets`` as checked :class:`Targets`, or an error naming ``targets[i]['field']``.

    Labels must be in [0, num_classes); boxes cxcywh with every entry in [0, 1] and
    positive width and height. ``batch_size``, when given, is the number of images
    the predictions hold.
    """
    if not isinstance(targets, (list, tuple)):
        raise TypeError(
            f"targets must be a list of dicts, one per image, got {type(targets).__name__}"
        )
    if batch_size is not None and len(targets) != batch_size:
        raise ValueError(
            f"targets has {len(targets)} images but the predictions have batch size {batch_size}"
        )
    if isinstance(targets, Targets) and targets.num_classes == num_classes:
        return targets
    for i, t in enumerate(targets):
        _check_structure(t, f"targets[{i}]")
    present = [i for i, t in enumerate(targets) if t["labels"].shape[0] > 0]
    if present:  # one pass over the whole batch; only a failure looks for the image
        xp = namespace(*(targets[i]["labels"] for i in present))
        labels = xp.concat([xp.astype(targets[i]["labels"], xp.int64) for i in present])  # (N,)
        boxes = xp.concat([targets[i]["boxes"] for i in present], axis=0)  # (N, 4)
        bad_label = (labels < 0) | (labels >= num_classes)
        bad_box = ~xp.all(xp.isfinite(boxes), axis=1)
        bad_box = bad_box | xp.any((boxes < 0) | (boxes > 1), axis=1)
        bad_box = bad_box | xp.any(boxes[:, 2:] <= 0, axis=1)
        if bool(xp.any(bad_label | bad_box)):
            for i in present:
                _check_values(targets[i], num_classes, f"targets[{i}]")
    return Targets(list(targets), num_classes)


def _check_structure(t: Any, where: str) -> None:
    if not isinstance(t, dict) or "labels" not in t or "boxes" not in t:
        raise TypeError(f"{where} must be a dict with 'labels' and 'boxes'")
    labels, boxes = t["labels"], t["boxes"]
    check_array(labels, f"{where}['labels']")
    check_integral(labels, f"{where}['labels']")
    check_floating(boxes, f"{where}['boxes']")
    if labels.ndim != 1:
        raise ValueError(f"{where}['labels'] must have shape (T,), got {tuple(labels.shape)}")
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{where}['boxes'] must have shape (T, 4), got {tuple(boxes.shape)}")
    if boxes.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{where}['boxes'] has {boxes.shape[0]} boxes but {where}['labels'] has "
            f"{labels.shape[0]} labels"
        )


def _check_values(t: dict[str, Array], num_classes: int, where: str) -> None:
    """The per-image checks, run only to name the image once the batch check failed."""
    labels, boxes = t["labels"], t["boxes"]
    xp = namespace(labels, boxes)
    if bool(xp.any((labels < 0) | (labels >= num_classes))):
        raise ValueError(
            f"{where}['labels'] must be class indices in [0, {num_classes}), "
            f"got min {int(xp.min(labels))} and max {int(xp.max(labels))}"
        )
    if not bool(xp.all(xp.isfinite(boxes))):
        raise ValueError(f"{where}['boxes'] must be finite")
    if bool(xp.any((boxes < 0) | (boxes > 1))):
        raise ValueError(f"{where}['boxes'] must be cxcywh normalised to [0, 1]")
    if bool(xp.any(boxes[:, 2:] <= 0)):
        raise ValueError(f"{where}['boxes'] must have positive width and height")
