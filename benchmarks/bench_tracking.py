"""What tracking by query buys over per-frame detection + IoU association, at equal steps.

Run:  python benchmarks/bench_tracking.py detect --out DIR
      python benchmarks/bench_tracking.py variant NAME --out DIR      (one process per NAME)
      python benchmarks/bench_tracking.py report --out DIR

``detect`` trains the default tracking preset's detection stage (``detect_steps`` steps on
single frames), saves it as ``DIR/detect/checkpoint.npz`` and scores the IoU baseline there.
``variant`` continues from it to the preset's total step count as one of:

* ``baseline``: detection steps all the way, then per-frame detection + IoU association;
* ``track_queries``: the default preset itself, frame-pair training with track queries
  (the same numbers as ``minidetr train --task track``: same config, same seed);
* ``track_queries_consistency``: the same plus the velocity consistency loss (weight 1);
* ``embedding_add`` / ``embedding_replace``: track queries that carry the decoder embedding
  of frame t (TrackFormer), added to / in place of the class embedding;
* ``embedding_memory``: ``embedding_add`` whose query also reads the track's memory bank
  (2 slots, forgetting by score), ``embedding_aggregation``: one that aggregates its last
  2 embeddings (training runs the 2 frames before t without gradient to fill them);
* ``embedding_add_chain``: ``embedding_add`` trained on frames t - 2 .. t tracked with track
  queries (no gradient) before frame t + 1, so that its embeddings come from track queries
  as they do at inference;

so every variant has had the same number of steps under the same learning-rate schedule,
and tracks the held-out clips into ``DIR/<variant>/metrics.json``. ``report`` prints the
table. Each process runs one thread. ``--seed`` gives a replicate (its own initialisation,
data order, and clips, held-out ones included) in another ``DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import numba
import numpy as np
from threadpoolctl import threadpool_limits

from minidetr.train.checkpoint import load_checkpoint
from minidetr.video.association import TrackerConfig
from minidetr.video.commands import load_tracker, write_tracks
from minidetr.video.frames import MovingShapesFrames
from minidetr.video.track_train import TrackRun, TrackTrainConfig

VARIANTS = {
    "baseline": {},
    "track_queries": {},
    "track_queries_consistency": {"consistency_weight": 1.0},
    "embedding_add": {"track_embedding": "add"},
    "embedding_replace": {"track_embedding": "replace"},
    "embedding_memory": {"track_embedding": "add", "memory_size": 2},
    "embedding_aggregation": {"track_embedding": "add", "aggregation_window": 2},
    "embedding_add_chain": {"track_embedding": "add", "chain": True},
}


def _continue(cfg: TrackTrainConfig, out: Path, until: int, resume: bool) -> tuple[TrackRun, float]:
    """Train ``cfg`` up to step ``until``, from scratch or (``resume``) from ``DIR/detect``."""
    like = np.zeros(1, np.float32)
    tr = TrackRun(cfg, like)
    if resume:
        ck = load_checkpoint(out / "detect" / "checkpoint.npz", like=like)
        tr.set_state(ck.params, ck.opt_state, ck.meta)  # the reads (if any) start fresh
    start = time.perf_counter()
    while tr.step < until:
        record = tr.train_step()
        if tr.step % 50 == 0:
            elapsed = time.perf_counter() - start
            print(f"step {tr.step} loss {record['loss']:.3f} {elapsed:.0f} s", flush=True)
    return tr, time.perf_counter() - start


def _finish(tr: TrackRun, folder: Path, seconds: float, track_queries: bool | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tr.save(folder / "checkpoint.npz")
    metrics = write_tracks(tr, folder / "tracks", gifs=False, track_queries=track_queries)
    metrics.update(training_seconds=round(seconds, 1), load=round(os.getloadavg()[0], 2))
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(folder.name, json.dumps({k: metrics[k] for k in ("MOTA", "IDF1", "ID_switches")}))


def detect(out: Path, seed: int = 0) -> None:
    """The default preset's detection stage: the first ``detect_steps`` steps of every variant
    (same config, same seed, so the same numbers), scored with the IoU baseline there."""
    cfg = TrackTrainConfig(seed=seed)
    tr, seconds = _continue(cfg, out, cfg.detect_steps, resume=False)
    _finish(tr, out / "detect", seconds, track_queries=False)


def variant(out: Path, name: str, seed: int = 0) -> None:
    """Continue the detection stage to the default preset's total steps as ``name``."""
    default = TrackTrainConfig(seed=seed)
    if name == "baseline":  # keeps detecting: same total steps, same schedule
        cfg = replace(default, detect_steps=default.steps, track_steps=0)
    else:
        cfg = replace(default, **VARIANTS[name])
    tr, seconds = _continue(cfg, out, default.steps, resume=True)
    _finish(tr, out / name, seconds, track_queries=name != "baseline")


def sweep(out: Path, name: str) -> None:
    """Score ``DIR/<name>``'s checkpoint on 32 clips of the training split that training never
    drew (indices past ``train_clips``) for a grid of start / keep thresholds, to choose the
    tracker's defaults without looking at the held-out clips."""
    tr = load_tracker(out / name / "checkpoint.npz", np.zeros(1, np.float32))
    c = tr.cfg
    size = tr.run.model.config.image_size
    unseen = MovingShapesFrames("train", c.train_clips + 32, c.frames, size, c.seed)
    use_tq = name != "baseline" and name != "detect"
    print(f"{name}: new_score keep_score -> MOTA IDF1 (unseen training-split clips)")
    grid = []
    for new in (0.3, 0.4, 0.5):
        for keep in (0.2, 0.3):
            cfg = TrackerConfig(new_score=new, keep_score=keep)
            m = write_tracks(
                tr, out / "sweep" / name, track_queries=use_tq, tracker=cfg, gifs=False,
                dataset=unseen, first_clip=c.train_clips,
            )  # fmt: skip
            print(f"{new} {keep} -> {m['MOTA']:.3f} {m['IDF1']:.3f}", flush=True)
            grid.append([new, keep, m["MOTA"], m["IDF1"]])
    (out / "sweep" / f"{name}.json").write_text(json.dumps({"grid": grid}, indent=1))


def chosen(out: Path, name: str) -> tuple[float, float]:
    """The thresholds ``sweep`` found best for ``name``: highest MOTA, then highest IDF1."""
    grid = json.loads((out / "sweep" / f"{name}.json").read_text())["grid"]
    new, keep, _, _ = max(grid, key=lambda row: (row[2], row[3]))
    return new, keep


def evaluate(out: Path, name: str, new_score: float | None, keep_score: float | None) -> None:
    """Track the held-out clips again with the thresholds ``sweep`` chose for ``name`` (or
    those given), into ``DIR/<name>/tuned`` (with the animations)."""
    tr = load_tracker(out / name / "checkpoint.npz", np.zeros(1, np.float32))
    if new_score is None or keep_score is None:
        new_score, keep_score = chosen(out, name)
    cfg = TrackerConfig(new_score=new_score, keep_score=keep_score)
    use_tq = name not in ("baseline", "detect")
    m = write_tracks(tr, out / name / "tuned", track_queries=use_tq, tracker=cfg)
    print(name, json.dumps({k: m[k] for k in ("MOTA", "IDF1", "ID_switches", "misses")}))


def report(out: Path) -> None:
    print("| variant | steps | MOTA | IDF1 | ID switches | false positives | misses | AP50 |")
    print("|---|---|---|---|---|---|---|---|")
    for name in ("detect", *VARIANTS):
        for path in (out / name / "metrics.json", out / name / "tuned" / "metrics.json"):
            if not path.exists():
                continue
            m = json.loads(path.read_text())
            t = m["tracker_config"]
            label = f"{name} (start {t['new_score']}, keep {t['keep_score']})"
            print(
                f"| {label} | {m['checkpoint_step']} | {m['MOTA']:.3f} | {m['IDF1']:.3f} | "
                f"{m['ID_switches']:.0f} | {m['false_positives']:.0f} | {m['misses']:.0f} | "
                f"{m['AP50_per_frame']:.3f} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=("detect", "variant", "sweep", "evaluate", "report"))
    parser.add_argument("name", nargs="?", choices=sorted({*VARIANTS, "detect"}))
    parser.add_argument("--out", required=True)
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="detect, variant: the run's seed "
        "(model, data order and clips; sweep and evaluate read it from the run)",
    )
    what = "evaluate: {} threshold (default: the sweep's choice)"
    parser.add_argument("--new-score", type=float, help=what.format("start"))
    parser.add_argument("--keep-score", type=float, help=what.format("keep"))
    args = parser.parse_args()
    threadpool_limits(1)
    numba.set_num_threads(1)
    out = Path(args.out)
    if args.stage == "detect":
        detect(out, args.seed)
    elif args.stage == "variant":
        if args.name is None:
            parser.error("variant needs a NAME")
        variant(out, args.name, args.seed)
    elif args.stage == "sweep":
        sweep(out, args.name or "detect")
    elif args.stage == "evaluate":
        evaluate(out, args.name or "detect", args.new_score, args.keep_score)
    else:
        report(out)


if __name__ == "__main__":
    main()
