"""Tracking by query on the model: the track queries' layout, the identity matcher, a training
step of each stage, the tracker over clips, and the two commands end to end (tiny preset)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from minidetr.cli import main
from minidetr.video.association import TrackerConfig
from minidetr.video.query_tracker import track_clips
from minidetr.video.track_queries import (
    IdentityMatcher,
    decoder_queries,
    make_track_queries,
    split_outputs,
)
from minidetr.video.track_train import TrackRun, TrackTrainConfig

pytest.importorskip("motmetrics")
LIKE = np.zeros(1, dtype=np.float32)
TINY = TrackTrainConfig(
    preset="tiny-deformable", detect_steps=2, track_steps=2, batch_size=3, train_clips=8,
    val_clips=3, consistency_weight=1.0,
)  # fmt: skip


def test_track_queries_are_padded_and_hidden_from_the_others():
    boxes = np.array([[0.5, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1]])
    empty = (np.array([], dtype=int), np.array([], dtype=int), np.zeros((0, 4)))
    tq = make_track_queries([(np.array([4, 1]), np.array([2, 0]), boxes), empty], num_classes=3)
    assert tq.count == 2
    np.testing.assert_array_equal(tq.ids, [[4, 1], [-1, -1]])
    np.testing.assert_array_equal(tq.labels[1], [3, 3])  # padding uses the extra label row
    dq = decoder_queries(tq, num_queries=5, like=LIKE)
    mask = dq.attn_mask  # (B, 1, 7, 7)
    assert mask.shape == (2, 1, 7, 7)
    assert mask[0].all()  # two real tracks: everyone sees everyone
    assert not mask[1, 0, 2:, 0].any() and not mask[1, 0, 0, 1]  # padding hidden ...
    assert mask[1, 0, 0, 0] and mask[1, 0, 0, 2:].all()  # ... but sees itself and the others


def test_hidden_class_gives_every_slot_the_padding_label():
    tracks = [(np.array([4, 1]), np.array([2, 0]), np.array([[0.5, 0.5, 0.2, 0.2]] * 2))]
    shown = make_track_queries(tracks, num_classes=3)
    hidden = make_track_queries(tracks, num_classes=3, hide_class=True)
    np.testing.assert_array_equal(hidden.labels, [[3, 3]])
    for a, b in zip(shown[1:], hidden[1:]):  # boxes, ids and valid are unchanged
        np.testing.assert_array_equal(a, b)


def test_identity_matcher_returns_the_fixed_assignment():
    matcher = IdentityMatcher([np.array([2, -1, 0]), np.array([-1])], focal=True)
    (q0, t0), (q1, t1) = matcher({}, [{}, {}])
    np.testing.assert_array_equal(q0, [0, 2])
    np.testing.assert_array_equal(t0, [2, 0])
    assert q1.size == 0 and t1.size == 0
    with pytest.raises(ValueError, match="images"):
        matcher({}, [{}])


@pytest.fixture(scope="module")
def trained():
    tr = TrackRun(TINY, LIKE)
    records = [tr.train_step() for _ in range(TINY.steps)]
    return tr, records


def test_both_stages_take_finite_steps_and_move_the_parameters(trained):
    tr, records = trained
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in records)
    fresh = tr.run.model.init_params(seed=TINY.seed, like=LIKE)
    assert any(not np.array_equal(fresh[k], tr.run.params[k]) for k in fresh)


def test_a_track_step_is_deterministic():
    a, b = TrackRun(TINY, LIKE), TrackRun(TINY, LIKE)
    a.run.step = b.run.step = TINY.detect_steps  # straight to the tracking stage
    ra, rb = a.train_step(), b.train_step()
    assert ra["loss"] == rb["loss"]


def test_track_queries_answer_in_the_model_outputs(trained):
    tr, _ = trained
    clip = tr.run.val_set.clip(0)
    tq = make_track_queries(
        [
            (
                clip["targets"][0]["track_ids"],
                clip["targets"][0]["labels"],
                clip["targets"][0]["boxes"],
            )
        ],
        3,
    )
    dn = decoder_queries(tq, tr.run.model.config.num_queries, LIKE)
    outputs, _ = tr.run.model.forward(tr.run.params, clip["frames"][1:2], train=False, denoising=dn)
    main_out, track = split_outputs(outputs)
    assert "dn" not in main_out
    assert track["pred_boxes"].shape == (1, tq.count, 4)
    assert main_out["pred_boxes"].shape[1] == tr.run.model.config.num_queries


@pytest.mark.parametrize("track_queries", [True, False])
def test_tracker_output_contract(trained, track_queries):
    tr, _ = trained
    clips = [tr.run.val_set.clip(i)["frames"] for i in range(2)]
    cfg = TrackerConfig(new_score=0.0, keep_score=0.0)  # an untrained model: accept everything
    results = track_clips(
        tr.run.model, tr.run.params, clips, LIKE, cfg, track_queries=track_queries
    )
    assert len(results) == 2 and all(len(r) == TINY.frames for r in results)
    for frame in results[0]:
        n = len(frame["track_ids"])
        assert frame["boxes"].shape == (n, 4) and frame["scores"].shape == (n,)
        assert len(set(frame["track_ids"].tolist())) == n
    if track_queries:  # with every score accepted, frame 0's tracks all continue into frame 1
        first = set(results[0][0]["track_ids"].tolist())
        assert first and first <= set(results[0][1]["track_ids"].tolist())


def test_train_track_then_track_commands(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--task", "track", "--preset", "tiny-deformable", "--steps", "3"]
    assert main([*args, "--batch-size", "2", "--out", str(run), "--quiet"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("MOTA", "IDF1", "ID_switches", "AP50_per_frame", "training_seconds"):
        assert key in metrics
    out = tmp_path / "tracks"
    assert main(["track", str(run / "checkpoint.npz"), "--out", str(out), "--clips", "2"]) == 0
    for clip in ("clip000", "clip001"):
        for name in ("gt.txt", "pred.txt", "tracks.gif"):
            assert (out / clip / name).exists()
    first = (out / "clip000" / "gt.txt").read_text().splitlines()[0].split(",")
    assert first[0] == "1" and first[7:] == ["-1", "-1", "-1"]  # frames from 1, MOT layout
    assert json.loads((out / "metrics.json").read_text())["clips"] == 2
    capsys.readouterr()
    assert main(["track", str(tmp_path / "missing.npz"), "--out", str(out)]) == 2
    assert "missing.npz" in capsys.readouterr().err


def test_track_command_refuses_a_detection_checkpoint(tmp_path, capsys, trained):
    tr, _ = trained
    tr.run.save(tmp_path / "det.npz")  # a still-image checkpoint: no tracking config
    assert main(["track", str(tmp_path / "det.npz"), "--out", str(tmp_path / "t")]) == 2
    assert "not a tracking checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()  # refused before the output folder is made


def test_write_tracks_on_other_clips_leaves_ap_out(trained, tmp_path):
    from minidetr.video.commands import write_tracks

    tr, _ = trained
    m = write_tracks(tr, tmp_path, clips=1, dataset=tr.run.train_set, first_clip=7, gifs=False)
    assert m["clips"] == 1 and m["AP50_per_frame"] is None
    assert (tmp_path / "clip007" / "pred.txt").exists()
    with pytest.raises(ValueError, match="clips"):
        write_tracks(tr, tmp_path, dataset=tr.run.train_set, first_clip=8)
