"""What ``minidetr train --task track`` and ``minidetr track`` do, callable from Python too.

``train_tracker`` trains the tracking preset into a folder (checkpoint, loss curve, held-out
MOT metrics); ``write_tracks`` runs a checkpoint over held-out clips and writes, per clip,
``<clip>/gt.txt``, ``<clip>/pred.txt`` (MOTChallenge text) and ``<clip>/tracks.gif``, and over
all clips ``metrics.json`` with MOTA, IDF1, identity switches (py-motmetrics) and per-frame
COCO AP50.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from minidetr.backend import Array
from minidetr.train.checkpoint import load_checkpoint
from minidetr.video.association import TrackerConfig
from minidetr.video.frames import MovingShapesFrames
from minidetr.video.mot import accumulate, mot_metrics, read_mot, to_mot_rows, write_mot
from minidetr.video.query_tracker import track_clips
from minidetr.video.track_train import TrackRun, TrackTrainConfig
from minidetr.video.tracks_gif import save_tracks_gif

REPORTED = {
    "mota": "MOTA",
    "idf1": "IDF1",
    "num_switches": "ID_switches",
    "num_false_positives": "false_positives",
    "num_misses": "misses",
    "num_objects": "objects",
    "motp": "MOTP_1_minus_IoU",
}


def train_tracker(
    cfg: TrackTrainConfig,
    out: Path,
    like: Array,
    progress: Callable[[Any, dict, float], None] | None = None,
) -> tuple[TrackRun, float]:
    """Train ``cfg`` into ``out`` (checkpoint.npz every ``checkpoint_every`` steps and at the
    end). Returns the run and the training seconds."""
    out.mkdir(parents=True, exist_ok=True)
    tr = TrackRun(cfg, like)
    start = time.perf_counter()
    while tr.step < cfg.steps:
        record = tr.train_step()
        if tr.step % max(cfg.checkpoint_every, 1) == 0 or tr.step == cfg.steps:
            tr.save(out / "checkpoint.npz")
        if progress is not None:
            progress(tr.run, record, (time.perf_counter() - start) / tr.step)
    return tr, time.perf_counter() - start


def load_tracker(checkpoint: str | Path, like: Array) -> TrackRun:
    """The :class:`TrackRun` a ``train --task track`` checkpoint was written by, with its
    parameters. Raises ValueError for a checkpoint of another task."""
    ck = load_checkpoint(checkpoint, like=like)
    if ck.meta.get("task") != "track":
        raise ValueError(f"{checkpoint} is not a tracking checkpoint (train it with --task track)")
    try:
        cfg = TrackTrainConfig(**ck.meta["track_config"])
    except TypeError as err:
        raise ValueError(f"{checkpoint}: unreadable track_config ({err})") from err
    tr = TrackRun(cfg, like)
    tr.set_state(ck.params, ck.opt_state, ck.meta)
    return tr


def write_tracks(
    tr: TrackRun,
    out: Path,
    *,
    clips: int | None = None,
    track_queries: bool | None = None,
    tracker: TrackerConfig | None = None,
    batch: int = 8,
    gifs: bool = True,
    dataset: MovingShapesFrames | None = None,
    first_clip: int = 0,
) -> dict[str, Any]:
    """Track the held-out clips, write the MOT files and pictures, return (and write) metrics.

    ``track_queries`` defaults to whether the checkpoint was trained with them (track_steps >
    0); False is the baseline, per-frame detection plus IoU association. ``dataset`` and
    ``first_clip`` track other clips than the held-out split's (e.g. unseen clips of the
    training split, to choose the tracker's thresholds); per-frame AP is then left out.
    """
    val = tr.run.val_set if dataset is None else dataset
    n = len(val.clips) - first_clip if clips is None else min(clips, len(val.clips) - first_clip)
    if n < 1:
        raise ValueError(f"clips must be at least 1, got {clips}")
    use_tq = tr.cfg.track_steps > 0 if track_queries is None else track_queries
    out.mkdir(parents=True, exist_ok=True)
    size = val.image_size
    start = time.perf_counter()
    accs, names = [], []
    for first in range(first_clip, first_clip + n, batch):
        ids = list(range(first, min(first + batch, first_clip + n)))
        frames = [val.clip(i)["frames"] for i in ids]
        results = track_clips(
            tr.run.model, tr.run.params, frames, tr.like, tracker, track_queries=use_tq,
            content=tr.content,
        )  # fmt: skip
        for i, result in zip(ids, results):
            folder = out / f"clip{i:03d}"
            folder.mkdir(exist_ok=True)
            write_mot(folder / "gt.txt", to_mot_rows(val.clip(i)["targets"], size))
            write_mot(folder / "pred.txt", to_mot_rows(result, size))
            accs.append(accumulate(read_mot(folder / "gt.txt"), read_mot(folder / "pred.txt")))
            names.append(folder.name)
            if gifs:
                save_tracks_gif(
                    folder / "tracks.gif", [frames[i - first]], [result], image_size=size
                )
    seconds = time.perf_counter() - start
    summary = mot_metrics(accs, names)
    overall = {REPORTED[k]: _finite(v) for k, v in summary["overall"].items() if k in REPORTED}
    det = tr.evaluate_detection() if dataset is None else {"AP50": math.nan, "AP": math.nan}
    metrics = {
        **overall,
        "AP50_per_frame": _finite(det["AP50"]),
        "AP_per_frame": _finite(det["AP"]),
        "clips": n,
        "frames_per_clip": val.frames,
        "tracker": "track queries" if use_tq else "per-frame detection + IoU association",
        "track_content": _describe(tr.cfg) if use_tq else None,
        "tracker_config": asdict(TrackerConfig() if tracker is None else tracker),
        "tracking_seconds": round(seconds, 1),
        "checkpoint_step": tr.step,
        "per_clip": {k: {REPORTED[m]: _finite(v) for m, v in d.items() if m in REPORTED}
                     for k, d in summary["per_clip"].items()},
    }  # fmt: skip
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def _describe(cfg: TrackTrainConfig) -> str:
    """What the track queries carry, in words."""
    if cfg.track_embedding == "none":
        return "class embedding"
    words = ["class embedding + decoder embedding" if cfg.track_embedding == "add"
             else "decoder embedding"]  # fmt: skip
    if cfg.aggregation_window:
        words.append(f"aggregation of {cfg.aggregation_window} past embeddings")
    if cfg.memory_size:
        words.append(f"memory bank of {cfg.memory_size} ({cfg.memory_policy})")
    return ", ".join(words)


def _finite(v: float) -> float | None:
    """JSON has no NaN: MOTP of a clip with no match is reported as null."""
    return round(float(v), 4) if math.isfinite(v) else None
