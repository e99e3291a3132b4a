"""``minidetr train --task track`` and ``minidetr track``: a tracker on moving shapes."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from minidetr.commands.train import prepare_out_dir
from minidetr.options import UserError, device_like, input_file, output_folder


def cmd_train_track(args: argparse.Namespace) -> int:
    """``train --task track``: the tracking preset (minidetr.video); --steps is the total."""
    from dataclasses import asdict

    from minidetr.train.loop import TrainingError
    from minidetr.train.progress import ProgressBar
    from minidetr.video.commands import train_tracker, write_tracks
    from minidetr.video.track_train import TrackTrainConfig

    if args.resume or args.dataset is not None or args.checkpoint_every is not None:
        raise UserError("--task track trains on moving shapes from scratch; drop --dataset, "
                        "--resume and --checkpoint-every")  # fmt: skip
    cfg = TrackTrainConfig()
    if args.steps is not None:  # keep the preset's split between detection and tracking
        detect = round(args.steps * cfg.detect_steps / cfg.steps)
        cfg = replace(cfg, detect_steps=detect, track_steps=args.steps - detect)
    overrides = {"preset": args.preset, "batch_size": args.batch_size, "seed": args.seed}
    cfg = replace(
        cfg, lr=args.lr or cfg.lr, **{k: v for k, v in overrides.items() if v is not None}
    )
    out = Path(args.out) if args.out else Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    like = device_like(args.device)  # before the folder is made: an unusable device leaves none
    prepare_out_dir(out, False, args.force)
    print(f"minidetr: training a tracker ({cfg.detect_steps} + {cfg.track_steps} steps) into {out}")
    bar = None if args.quiet else ProgressBar()
    t0 = time.perf_counter()
    try:
        tr, seconds = train_tracker(cfg, out, like, bar)
    except TrainingError as err:
        raise UserError(f"tracking training stopped: {err}") from err
    finally:
        if bar is not None:
            bar.close()
    metrics = write_tracks(tr, out / "tracks", gifs=False)
    metrics.update(training_seconds=round(seconds, 1), seconds=round(time.perf_counter() - t0, 1))
    metrics.update(steps=tr.step, device=args.device, train_config=asdict(cfg))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"minidetr: MOTA {metrics['MOTA']:.3f}  IDF1 {metrics['IDF1']:.3f}  ({seconds:.0f} s)")
    return 0


def cmd_track(args: argparse.Namespace) -> int:
    """``track CHECKPOINT --out DIR``: MOT files, animations and metrics on held-out clips."""
    from minidetr.video.commands import load_tracker, write_tracks

    try:
        tr = load_tracker(input_file(args.checkpoint, "checkpoint"), device_like(args.device))
    except (OSError, KeyError, ValueError) as err:
        raise UserError(f"cannot use {args.checkpoint}: {err}") from err
    output_folder(Path(args.out))  # once the checkpoint is usable: a refusal leaves no folder
    metrics = write_tracks(tr, Path(args.out), clips=args.clips)
    print(
        f"minidetr: MOTA {metrics['MOTA']:.3f}  IDF1 {metrics['IDF1']:.3f}  ID switches "
        f"{metrics['ID_switches']:.0f} on {metrics['clips']} clips; wrote {args.out}/"
    )
    return 0
