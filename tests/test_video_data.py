"""Moving shapes: determinism, the clip contract, identities that persist, motion that happens."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minidetr.video import MovingShapes

SET = MovingShapes("train", num_clips=64, frames=8, image_size=48, seed=3)


def test_same_seed_same_clip_and_splits_differ():
    again = MovingShapes("train", num_clips=64, frames=8, image_size=48, seed=3)
    a, b = SET[5], again[5]
    np.testing.assert_array_equal(a["frames"], b["frames"])
    for ta, tb in zip(a["targets"], b["targets"]):
        for key in ("labels", "boxes", "track_ids"):
            np.testing.assert_array_equal(ta[key], tb[key])
    val = MovingShapes("val", num_clips=64, frames=8, image_size=48, seed=3)
    assert not np.array_equal(val[5]["frames"], a["frames"])
    other_seed = MovingShapes("train", num_clips=64, frames=8, image_size=48, seed=4)
    assert not np.array_equal(other_seed[5]["frames"], a["frames"])


@given(st.integers(0, 63))
def test_clip_contract(index):
    clip = SET[index]
    frames, targets = clip["frames"], clip["targets"]
    assert frames.shape == (8, 3, 48, 48) and frames.dtype == np.float32
    assert frames.min() >= 0.0 and frames.max() <= 1.0
    assert len(targets) == 8
    for t in targets:
        n = len(t["labels"])
        assert t["boxes"].shape == (n, 4) and t["boxes"].dtype == np.float32
        assert t["labels"].dtype == np.int64 and t["track_ids"].dtype == np.int64
        assert t["track_ids"].shape == (n,)
        assert len(set(t["track_ids"].tolist())) == n  # one box per identity per frame
        assert np.all((t["labels"] >= 0) & (t["labels"] < 3))
        cx, cy, w, h = t["boxes"].T
        eps = 1e-6
        assert np.all(w > 0) and np.all(h > 0)
        assert np.all(cx - w / 2 >= -eps) and np.all(cx + w / 2 <= 1 + eps)  # inside the frame
        assert np.all(cy - h / 2 >= -eps) and np.all(cy + h / 2 <= 1 + eps)


def test_identities_keep_their_class_and_move_smoothly():
    moved = 0
    for index in range(len(SET)):
        label_of, last_box = {}, {}
        for t in SET[index]["targets"]:
            for tid, label, box in zip(t["track_ids"], t["labels"], t["boxes"]):
                assert label_of.setdefault(int(tid), int(label)) == label  # class never changes
                if int(tid) in last_box:
                    step = np.abs(box[:2] - last_box[int(tid)][:2]).max()
                    assert step < 0.25  # no teleporting between consecutive frames
                    moved += step > 0.005
                last_box[int(tid)] = box
    assert moved > 100  # objects do move


def test_objects_enter_leave_and_occlude():
    """Over the set, some identity first shows after frame 0, some vanishes before the end,
    and some frame draws one object's pixels over another's box."""
    entered = left = occluded = 0
    for index in range(len(SET)):
        targets = SET[index]["targets"]
        present = [set(t["track_ids"].tolist()) for t in targets]
        everyone = set().union(*present)
        entered += sum(1 for i in everyone if i not in present[0])
        left += sum(1 for i in everyone if i not in present[-1])
        for t in targets:
            b = t["boxes"]
            x0, x1 = b[:, 0] - b[:, 2] / 2, b[:, 0] + b[:, 2] / 2
            y0, y1 = b[:, 1] - b[:, 3] / 2, b[:, 1] + b[:, 3] / 2
            iw = np.minimum(x1[:, None], x1[None]) - np.maximum(x0[:, None], x0[None])
            ih = np.minimum(y1[:, None], y1[None]) - np.maximum(y0[:, None], y0[None])
            overlap = (iw > 0) & (ih > 0)
            occluded += int(overlap.sum() - len(b)) // 2
    assert entered > 0 and left > 0 and occluded > 0


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="split"):
        MovingShapes("test")
    with pytest.raises(ValueError, match="frames"):
        MovingShapes(frames=0)
    with pytest.raises(TypeError, match="num_clips"):
        MovingShapes(num_clips=2.5)
    with pytest.raises(IndexError):
        SET[64]
