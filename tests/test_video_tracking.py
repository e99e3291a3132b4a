"""Tracking: MOT files round-trip through py-motmetrics; track queries keep identities; the IoU
baseline follows ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from minidetr.video import MovingShapes
from minidetr.video.association import (
    IoUTracker,
    TrackerConfig,
    assign_track_queries,
    query_detections,
)
from minidetr.video.mot import accumulate, mot_metrics, read_mot, to_mot_rows, write_mot

pytest.importorskip("motmetrics")
CLIPS = MovingShapes("val", num_clips=6, frames=8, image_size=64, seed=1)


def _score(tmp_path, gt_frames, pred_frames, name="clip"):
    write_mot(tmp_path / f"{name}_gt.txt", to_mot_rows(gt_frames, 64))
    write_mot(tmp_path / f"{name}_pred.txt", to_mot_rows(pred_frames, 64))
    acc = accumulate(read_mot(tmp_path / f"{name}_gt.txt"), read_mot(tmp_path / f"{name}_pred.txt"))
    return mot_metrics([acc], [name])["overall"]


def test_mot_rows_round_trip_through_the_library_reader(tmp_path):
    targets = CLIPS[0]["targets"]
    rows = to_mot_rows(targets, 64)
    write_mot(tmp_path / "gt.txt", rows)
    df = read_mot(tmp_path / "gt.txt")
    assert len(df) == sum(len(t["labels"]) for t in targets)
    first = df.loc[1]  # frame 1 is the clip's frame 0
    cx, cy, w, h = targets[0]["boxes"][0] * 64
    tid = int(targets[0]["track_ids"][0]) + 1  # MOT ids count from 1
    np.testing.assert_allclose(
        first.loc[tid, ["X", "Y", "Width", "Height"]].to_numpy(dtype=float),
        [cx - w / 2, cy - h / 2, w, h],
        atol=0.006,  # two decimals in the file
    )


def test_perfect_tracks_score_one_and_a_swap_costs_identity(tmp_path):
    clip = next(
        c for c in (CLIPS[i] for i in range(len(CLIPS))) if len(c["targets"][4]["labels"]) >= 2
    )
    targets = clip["targets"]
    relabelled = [{**t, "track_ids": t["track_ids"] + 10} for t in targets]  # names differ only
    perfect = _score(tmp_path, targets, relabelled, "perfect")
    assert perfect["mota"] == pytest.approx(1.0) and perfect["idf1"] == pytest.approx(1.0)
    assert perfect["num_switches"] == 0
    swapped = [dict(t) for t in relabelled]
    for t in range(4, len(swapped)):  # from frame 4 on, the first two objects trade ids
        ids = swapped[t]["track_ids"].copy()
        ids[[0, 1]] = ids[[1, 0]]
        swapped[t]["track_ids"] = ids
    bad = _score(tmp_path, targets, swapped, "swapped")
    assert bad["num_switches"] >= 2 and bad["idf1"] < 0.9 and bad["mota"] < 1.0


def test_missed_and_false_boxes_lower_mota(tmp_path):
    targets = CLIPS[1]["targets"]
    pred = [dict(t) for t in targets]
    pred[2] = {k: v[:0] for k, v in targets[2].items()}  # frame 2 forgotten
    ghost = {"track_ids": np.array([99]), "boxes": np.array([[0.1, 0.1, 0.05, 0.05]])}
    pred[3] = {k: np.concatenate([targets[3][k], ghost[k]]) for k in ghost}
    m = _score(tmp_path, targets, pred)
    assert m["num_misses"] == len(targets[2]["labels"]) and m["num_false_positives"] == 1
    total = sum(len(t["labels"]) for t in targets)
    assert m["mota"] == pytest.approx(1 - (m["num_misses"] + 1) / total)


def test_track_queries_keep_their_identity_across_a_constructed_clip():
    """Frame t's objects become frame t+1's track queries; each must answer its own object,
    whatever order the targets come in, and the newcomer goes to the object queries."""
    query_ids = np.array([7, 3, 5])  # tracks alive after frame t
    target_ids = np.array([5, 9, 7])  # frame t+1: 3 left, 9 entered, order shuffled
    query_target, untracked = assign_track_queries(query_ids, target_ids)
    np.testing.assert_array_equal(query_target, [2, -1, 0])  # 7 -> target 2, 3 gone, 5 -> 0
    np.testing.assert_array_equal(untracked, [False, True, False])  # only 9 is matched freely
    # along a whole clip, following the assignment never changes whose box a query holds
    clip = CLIPS[2]["targets"]
    ids = clip[0]["track_ids"]
    for t in range(1, len(clip)):
        q_to_t, _ = assign_track_queries(ids, clip[t]["track_ids"])
        for qi, ti in enumerate(q_to_t):
            if ti >= 0:
                assert clip[t]["track_ids"][ti] == ids[qi]
        ids = clip[t]["track_ids"]
    with pytest.raises(ValueError, match="target_ids"):
        assign_track_queries(query_ids, np.array([1, 1]))


def test_iou_tracker_follows_ground_truth_boxes(tmp_path):
    """Fed the true boxes, the IoU baseline keeps every identity on these slow shapes."""
    accs, names = [], []
    for i in range(len(CLIPS)):
        targets = CLIPS[i]["targets"]
        tracker = IoUTracker(TrackerConfig(min_iou=0.2))
        out = [
            tracker.step(np.ones(len(t["labels"])), t["labels"], t["boxes"].astype(np.float64))
            for t in targets
        ]
        write_mot(tmp_path / f"{i}_gt.txt", to_mot_rows(targets, 64))
        write_mot(tmp_path / f"{i}_pred.txt", to_mot_rows(out, 64))
        accs.append(
            accumulate(read_mot(tmp_path / f"{i}_gt.txt"), read_mot(tmp_path / f"{i}_pred.txt"))
        )
        names.append(str(i))
    overall = mot_metrics(accs, names)["overall"]
    assert overall["mota"] > 0.95 and overall["idf1"] > 0.9


def test_iou_tracker_starts_ends_and_drops_duplicates():
    tracker = IoUTracker(TrackerConfig(new_score=0.5, keep_score=0.3, patience=1))
    box = np.array([[0.5, 0.5, 0.2, 0.2]])
    first = tracker.step(np.array([0.9, 0.8]), np.array([0, 0]), np.concatenate([box, box + 0.001]))
    assert first["track_ids"].tolist() == [0]  # the near-copy is a duplicate
    assert tracker.step(np.array([0.4]), np.array([0]), box + 0.01)["track_ids"].tolist() == [0]
    assert tracker.step(np.array([0.2]), np.array([0]), box)["track_ids"].tolist() == []  # too weak
    assert tracker.step(np.zeros(0), np.zeros(0, int), np.zeros((0, 4)))["track_ids"].size == 0
    # unseen for longer than the patience: the object comes back as a new track
    assert tracker.step(np.array([0.9]), np.array([0]), box)["track_ids"].tolist() == [1]


def test_query_detections_softmax_and_focal():
    logits = np.array([[2.0, 0.0, 5.0], [0.0, 3.0, -1.0]])
    scores, labels = query_detections(logits, focal=True)
    np.testing.assert_array_equal(labels, [2, 1])
    np.testing.assert_allclose(scores, 1 / (1 + np.exp([-5.0, -3.0])))
    scores, labels = query_detections(logits, focal=False)  # the last column is "no object"
    np.testing.assert_array_equal(labels, [0, 1])
    assert scores[0] < 0.1


def test_tracker_config_is_checked():
    with pytest.raises(ValueError, match="new_score"):
        TrackerConfig(new_score=1.5)
    with pytest.raises(ValueError, match="patience"):
        TrackerConfig(patience=-1)


def test_tracks_gif_has_one_picture_per_frame(tmp_path):
    from PIL import Image

    from minidetr.video.tracks_gif import save_tracks_gif

    clip = CLIPS[0]
    save_tracks_gif(tmp_path / "t.gif", [clip["frames"]], [clip["targets"]], image_size=64, scale=2)
    with Image.open(tmp_path / "t.gif") as im:
        assert im.n_frames == 8 and im.size == (2 * 64 + 4, 2 * 64)
    with pytest.raises(ValueError, match="one track list per clip"):
        save_tracks_gif(tmp_path / "u.gif", [clip["frames"]], [], image_size=64)
