"""What tracking by query buys over per-frame detection + IoU association, at equal steps.

Run:  python benchmarks/bench_tracking.py detect --out DIR [--steps 1000]
      python benchmarks/bench_tracking.py variant NAME --out DIR [--steps 400]
      python benchmarks/bench_tracking.py report --out DIR

``detect`` trains the tracking preset's detection stage (single frames) and saves it as
``DIR/detect/checkpoint.npz``. ``variant`` continues from that checkpoint for ``--steps`` more
steps, one of:

* ``baseline``: more detection steps, then per-frame detection + IoU association;
* ``track_queries``: frame-pair training with track queries (TrackFormer's recipe);
* ``track_queries_consistency``: the same plus the velocity consistency loss (weight 1);

so every variant has had the same number of steps, and tracks the held-out clips into
``DIR/<variant>/metrics.json``. ``report`` prints the table. Each process runs one thread.
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
from minidetr.video.commands import train_tracker, write_tracks
from minidetr.video.track_train import TrackRun, TrackTrainConfig

VARIANTS = {
    "baseline": {"track_steps": 0},
    "track_queries": {},
    "track_queries_consistency": {"consistency_weight": 1.0},
}


def detect(out: Path, steps: int) -> None:
    cfg = TrackTrainConfig(detect_steps=steps, track_steps=0)
    tr, seconds = train_tracker(cfg, out / "detect", np.zeros(1, np.float32))
    metrics = write_tracks(tr, out / "detect" / "tracks", gifs=False, track_queries=False)
    metrics.update(training_seconds=round(seconds, 1), load=os.getloadavg()[0])
    (out / "detect" / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps({k: metrics[k] for k in ("MOTA", "IDF1", "AP50_per_frame")}), seconds)


def variant(out: Path, name: str, steps: int) -> None:
    like = np.zeros(1, np.float32)
    ck = load_checkpoint(out / "detect" / "checkpoint.npz", like=like)
    detect_steps = int(ck.meta["step"])
    extra = dict(VARIANTS[name])
    if extra.get("track_steps") == 0:  # the baseline keeps detecting for the same steps
        cfg = TrackTrainConfig(detect_steps=detect_steps + steps, track_steps=0)
    else:
        cfg = replace(TrackTrainConfig(detect_steps=detect_steps, track_steps=steps), **extra)
    tr = TrackRun(cfg, like)
    tr.run.params, tr.run.opt_state, tr.run.step = ck.params, ck.opt_state, detect_steps
    start = time.perf_counter()
    while tr.step < cfg.steps:
        tr.train_step()
    seconds = time.perf_counter() - start
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    tr.save(folder / "checkpoint.npz")
    metrics = write_tracks(tr, folder / "tracks", gifs=False)
    metrics.update(training_seconds=round(seconds, 1), extra_steps=steps, load=os.getloadavg()[0])
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(name, json.dumps({k: metrics[k] for k in ("MOTA", "IDF1", "ID_switches")}), seconds)


def report(out: Path) -> None:
    print("| variant | steps | MOTA | IDF1 | ID switches | false positives | misses | AP50 |")
    print("|---|---|---|---|---|---|---|---|")
    for name in ("detect", *VARIANTS):
        path = out / name / "metrics.json"
        if path.exists():
            m = json.loads(path.read_text())
            print(
                f"| {name} | {m['checkpoint_step']} | {m['MOTA']:.3f} | {m['IDF1']:.3f} | "
                f"{m['ID_switches']:.0f} | {m['false_positives']:.0f} | {m['misses']:.0f} | "
                f"{m['AP50_per_frame']:.3f} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=("detect", "variant", "report"))
    parser.add_argument("name", nargs="?", choices=sorted(VARIANTS))
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int)
    args = parser.parse_args()
    threadpool_limits(1)
    numba.set_num_threads(1)
    out = Path(args.out)
    if args.stage == "detect":
        detect(out, args.steps or TrackTrainConfig().detect_steps)
    elif args.stage == "variant":
        if args.name is None:
            parser.error("variant needs a NAME")
        variant(out, args.name, args.steps or TrackTrainConfig().track_steps)
    else:
        report(out)


if __name__ == "__main__":
    main()
