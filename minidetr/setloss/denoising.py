"""Denoising queries: feed the decoder noised ground truth and ask it to clean it up.

DN-DETR's observation is that the Hungarian matching is unstable early in
training: a query may be matched to one object at one step and another at the
next, so its gradient keeps changing direction. Denoising adds a second, easy
task with a fixed answer: copies of the ground-truth boxes, jittered, and their
labels, sometimes flipped, go into the decoder as extra queries, and each must
reconstruct the object it was made from. No matching is involved, so these
queries get a stable signal from the first step. DINO adds contrastive
negatives: copies jittered further, which must predict "no object".

Layout of the Qdn = num_groups * group_size denoising queries, placed before
the Q matching queries in the decoder (Tmax = largest number of targets in an
image of the batch)::

    [ group 0 | group 1 | ... | group G-1 | Q matching queries ]
      group = [ positive slot 0 .. Tmax-1 | negative slot 0 .. Tmax-1 ]   (negatives with
                                                                        contrastive=True)

Slot j of a group copies target j of its image. An image with fewer than Tmax
targets leaves the remaining slots as padding, which the loss ignores.

The self-attention mask (True = may attend, the convention of
``scaled_dot_product_attention``) keeps the tasks honest: matching queries
cannot see any denoising query (they would read the answers), and a
denoising group cannot see another group (each group is an independent noisy
copy of the same objects); denoising queries may see the matching queries.

Noise, DINO's form (Zhang et al., "DINO", ICLR 2023, section 3.3): each box
edge moves by sign * r * lambda * half the box's size, r ~ U[0, 1) for positive
slots and U[1, 2) for negatives, lambda = ``box_noise_scale``; the box is then
clamped to the image. Labels are replaced by a uniformly random class with
probability ``label_noise_ratio`` (Li et al., "DN-DETR", CVPR 2022).
Random numbers come from ``minidetr.backend.Rng`` (a NumPy ``Generator`` is
wrapped in one), drawn on the device of the targets.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minidetr.backend import Array, Rng, asarray, namespace
from minidetr.setloss.targets import check_targets

PADDING_BOX = (0.5, 0.5, 0.5, 0.5)  # a neutral box for padding slots; their outputs are ignored


class DenoisingQueries(NamedTuple):
    """Everything the decoder and the criterion need about the denoising queries.

    B images, Qdn = num_groups * group_size denoising slots, Q matching queries.
    The model's forward puts it in its outputs as the ``"dn"`` group's ``meta``.
    """

    labels: Array  # (B, Qdn) int64 noised labels; padding slots hold num_classes
    boxes: Array  # (B, Qdn, 4) noised boxes, cxcywh in [0, 1]; padding slots hold PADDING_BOX
    attn_mask: Array  # (Qdn + Q, Qdn + Q) bool self-attention mask, True = may attend
    num_groups: int
    num_queries: int  # Q, the matching queries that follow the denoising ones
    contrastive: bool  # whether each group ends with Tmax negative slots

    @property
    def group_size(self) -> int:
        """Tmax, or 2 * Tmax with contrastive negatives."""
        return int(self.labels.shape[1]) // self.num_groups

    # Which target each slot copies depends on the number of targets per image only:
    # ``denoising_layout(counts, num_groups, contrastive)`` gives it on the host.


def denoising_attention_mask(
    num_groups: int, group_size: int, num_queries: int, like: Array
) -> Array:
    """allowed[i, j]: query i may attend to key j, for [num_groups * group_size dn | Q matching].

    allowed = (j is a matching query) or (i and j are denoising queries of the same
    group). Returns a (Qdn + Q, Qdn + Q) bool array on the device of ``like``.
    """
    xp = namespace(like)
    qdn = num_groups * group_size
    n = qdn + num_queries
    idx = xp.arange(n, device=like.device)  # (N,)
    is_dn = idx < qdn
    group = xp.where(is_dn, idx // max(group_size, 1), xp.full_like(idx, -1))  # (N,)
    same_group = is_dn[:, None] & is_dn[None, :] & (group[:, None] == group[None, :])  # (N, N)
    return same_group | ~is_dn[None, :]


def make_denoising_queries(
    targets: list[dict[str, Array]],
    num_groups: int,
    label_noise_ratio: float,
    box_noise_scale: float,
    num_classes: int,
    rng: Rng | np.random.Generator,
    *,
    num_queries: int,
    contrastive: bool = False,
) -> DenoisingQueries:
    """Noised copies of the ground truth, their layout and the decoder's attention mask.

    targets: list of B dicts {"labels": (T,), "boxes": (T, 4) cxcywh}. num_groups >= 1
    noisy copies of every target; label_noise_ratio in [0, 1]; box_noise_scale in
    [0, 1] (with it, a positive's edges move less than half the box size, so its
    centre stays inside the original box); num_queries the number of matching
    queries Q. ``contrastive`` adds DINO's negatives. See the module docstring for the
    layout. Li et al., "DN-DETR" (2022); Zhang et al., "DINO" (2023).
    """
    targets = check_targets(targets, num_classes)
    if len(targets) == 0:
        raise ValueError("targets must hold at least one image")
    if not isinstance(num_groups, int) or num_groups < 1:
        raise ValueError(f"num_groups must be a positive integer, got {num_groups!r}")
    if not 0.0 <= label_noise_ratio <= 1.0:
        raise ValueError(f"label_noise_ratio must be in [0, 1], got {label_noise_ratio}")
    if not 0.0 <= box_noise_scale <= 1.0:
        raise ValueError(f"box_noise_scale must be in [0, 1], got {box_noise_scale}")
    if not isinstance(num_queries, int) or num_queries < 0:
        raise ValueError(f"num_queries must be a non-negative integer, got {num_queries!r}")
    if not isinstance(rng, Rng):
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a minidetr.backend.Rng or numpy Generator, got {rng!r}")
        rng = Rng(rng)

    like = targets[0]["boxes"]
    xp = namespace(like)
    counts = [int(t["labels"].shape[0]) for t in targets]
    tmax = max(counts)

    target_index, positive, valid = denoising_layout(counts, num_groups, contrastive)
    group_size = tmax * (2 if contrastive else 1)

    # gather each slot's clean label and box (padding: num_classes and PADDING_BOX)
    labels, boxes = [], []
    for i, t in enumerate(targets):
        dev = asarray(np.where(valid[i], target_index[i], counts[i]), like=like, dtype=xp.int64)
        pad_label = xp.asarray([num_classes], dtype=xp.int64, device=like.device)
        pad_box = xp.asarray([PADDING_BOX], dtype=like.dtype, device=like.device)
        labels.append(xp.take(xp.concat([xp.astype(t["labels"], xp.int64), pad_label]), dev))
        boxes.append(xp.take(xp.concat([xp.astype(t["boxes"], like.dtype), pad_box]), dev, axis=0))
    clean_labels = xp.stack(labels)  # (B, Qdn)
    clean_boxes = xp.stack(boxes)  # (B, Qdn, 4)
    valid_dev = asarray(valid, like=like)

    noised_labels = _noise_labels(clean_labels, valid_dev, label_noise_ratio, num_classes, rng)
    noised_boxes = _noise_boxes(
        clean_boxes, valid_dev, asarray(positive, like=like), box_noise_scale, rng
    )
    return DenoisingQueries(
        labels=noised_labels,
        boxes=noised_boxes,
        attn_mask=denoising_attention_mask(num_groups, group_size, num_queries, like),
        num_groups=num_groups,
        num_queries=num_queries,
        contrastive=contrastive,
    )


def denoising_layout(
    counts: list[int], num_groups: int, contrastive: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which target each denoising slot copies, from the number of targets per image.

    counts: targets per image (length B). Returns host arrays (B, Qdn):
    target_index (int64, -1 for padding), positive (bool), valid (bool). It depends
    on shapes only, so the criterion rebuilds it without reading any device array.
    """
    tmax = max(counts, default=0)
    group_size = tmax * (2 if contrastive else 1)
    slot = np.arange(num_groups * group_size) % max(group_size, 1)  # (Qdn,) place in its group
    copy_of = slot % max(tmax, 1)  # (Qdn,) which target the slot copies
    target_index = np.where(copy_of[None, :] < np.asarray(counts)[:, None], copy_of, -1)  # (B, Qdn)
    valid = target_index >= 0
    positive = valid & (slot < tmax)[None, :]
    return target_index.astype(np.int64), positive, valid


def _noise_labels(labels: Array, valid: Array, ratio: float, num_classes: int, rng: Rng) -> Array:
    """Replace each valid label by a uniform random class with probability ``ratio``."""
    xp = namespace(labels)
    if labels.shape[1] == 0:
        return labels
    flip = rng.uniform(tuple(labels.shape), like=labels, dtype=xp.float64) < ratio  # (B, Qdn)
    u = rng.uniform(tuple(labels.shape), like=labels, dtype=xp.float64)
    random_class = xp.clip(xp.astype(xp.floor(u * num_classes), xp.int64), 0, num_classes - 1)
    return xp.where(flip & valid, random_class, labels)


def _noise_boxes(boxes: Array, valid: Array, positive: Array, scale: float, rng: Rng) -> Array:
    """Move each edge by sign * r * scale * half size; r in [0, 1) positives, [1, 2) negatives."""
    xp = namespace(boxes)
    if boxes.shape[1] == 0 or scale == 0.0:
        return boxes
    shape = tuple(boxes.shape)  # (B, Qdn, 4)
    cx, cy, w, h = boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]
    xyxy = xp.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)  # (B, Qdn, 4)
    half = xp.stack([w / 2, h / 2, w / 2, h / 2], axis=-1)  # (B, Qdn, 4)
    sign = 1.0 - 2.0 * xp.astype(rng.uniform(shape, like=boxes) < 0.5, boxes.dtype)  # +-1
    r = rng.uniform(shape, like=boxes) + xp.astype(~positive, boxes.dtype)[..., None]
    moved = xp.clip(xyxy + sign * r * scale * half, 0.0, 1.0)
    # a negative's edges can cross (r * scale up to 2): sort each pair back into order
    x0 = xp.minimum(moved[..., 0], moved[..., 2])
    x1 = xp.maximum(moved[..., 0], moved[..., 2])
    y0 = xp.minimum(moved[..., 1], moved[..., 3])
    y1 = xp.maximum(moved[..., 1], moved[..., 3])
    noised = xp.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], axis=-1)  # cxcywh
    return xp.where(valid[..., None], noised, boxes)
