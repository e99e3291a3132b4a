"""The ``minidetr`` command: train a tiny DETR, evaluate a checkpoint, draw its detections.

    minidetr train                      # default preset on the shapes set, on the CPU
    minidetr train --device cuda        # the same on a GPU, with CuPy
    minidetr eval runs/<stamp>/checkpoint.npz
    minidetr predict runs/<stamp>/checkpoint.npz picture.png

User mistakes (an option out of range, an unusable output folder, a folder
holding another run, a corrupt checkpoint, an unreadable image, no GPU, a run
that diverges) raise ``minidetr.options.UserError`` and end with one line saying
what to do, exit status 2; a bug inside minidetr keeps its traceback. Each
subcommand is one ``cmd_*`` function and one ``add_*_parser`` function.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from dataclasses import fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from minidetr.backend import asarray
from minidetr.options import (
    UserError,
    device_like,
    input_file,
    non_negative_float,
    non_negative_int,
    output_folder,
    positive_float,
    positive_int,
    probability,
)

DESCRIPTION = "Train a tiny DETR, evaluate a checkpoint, draw its detections."


def limit_threads(n: int) -> None:
    """Use ``n`` BLAS and Numba threads.

    minidetr's matrices are small: on two cores, one thread each measured 1.5 to
    3x faster per training step than the libraries' defaults, whose idle threads
    spin and compete for the same cores.
    """
    import numba
    from threadpoolctl import threadpool_limits

    threadpool_limits(n)
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def _prepare_out_dir(out: Path, resume: bool, force: bool) -> None:
    """Check the output folder before any work: usable, and holding a run iff resuming."""
    output_folder(out)
    holds_run = (out / "checkpoint.npz").exists() or (out / "metrics.json").exists()
    if resume:
        if not (out / "checkpoint.npz").exists():
            raise UserError(f"--resume: {out} holds no checkpoint.npz to resume from")
        return
    if holds_run and not force:
        raise UserError(
            f"{out} already holds a run; pass --resume to continue it or --force to overwrite it"
        )
    if force:
        for name in ("checkpoint.npz", "metrics.json", "loss.png", "predictions.png"):
            (out / name).unlink(missing_ok=True)


def _checkpoint_words(checkpoint: Any) -> str:
    """What a stopped run leaves behind, in words, naming only a file that is there."""
    if checkpoint is None or not Path(checkpoint.path).is_file():
        return "no checkpoint was written"
    return f"the last good checkpoint is {checkpoint.path} (step {checkpoint.step})"


def cmd_train(args: argparse.Namespace) -> int:
    from minidetr.data.coco_json import CocoFormatError
    from minidetr.train.checkpoint import CheckpointError
    from minidetr.train.loop import Interrupted, TrainConfig, TrainingError, train
    from minidetr.train.progress import ProgressBar

    if args.task == "track":
        return cmd_train_track(args)
    if args.resume and args.out is None:
        raise UserError("--resume needs --out DIR naming the run to continue")
    out = Path(args.out) if args.out else Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    overrides = {
        "preset": args.preset,
        "dataset": args.dataset,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "lr": args.lr,
        "encoder_attention": args.encoder_attention,
        "checkpoint_every": args.checkpoint_every,
        "offset_l2": args.offset_l2,
        **_coco_paths(args),
    }
    try:
        cfg = replace(TrainConfig(), **{k: v for k, v in overrides.items() if v is not None})
    except (ValueError, TypeError) as err:  # the parser checks first; this is the backstop
        raise UserError(str(err)) from err
    if cfg.dataset == "digits" and importlib.util.find_spec("sklearn") is None:
        raise UserError("--dataset digits needs scikit-learn: pip install 'minidetr[data]'")
    _prepare_out_dir(out, args.resume, args.force)
    if args.resume:
        cfg = _train_config_of(out / "checkpoint.npz", cfg, args)
    like = device_like(args.device)
    print(f"minidetr: training preset {cfg.preset!r} on {cfg.dataset!r} ({args.device}) into {out}")
    bar = None if args.quiet else ProgressBar()
    t0 = time.perf_counter()
    try:
        run = train(cfg, out, like, resume=args.resume, progress=bar)
    except Interrupted as err:
        if bar is not None:
            bar.close()
        where = _checkpoint_words(err.checkpoint)
        hint = f"; resume with --resume --out {out}" if err.checkpoint else ""
        sys.stderr.write(f"minidetr: interrupted; {where}{hint}\n")
        return 130
    except CocoFormatError as err:  # the user's COCO file, named with the entry at fault
        raise UserError(str(err)) from err
    except CheckpointError as err:
        raise UserError(f"--resume: {err}") from err
    except OSError as err:  # the output folder filled up or went away mid-run
        where = Path(err.filename).resolve() if err.filename is not None else None
        if where is None or out.resolve() not in (where, *where.parents):
            raise
        raise UserError(f"cannot write {err.filename} ({err.strerror})") from err
    except TrainingError as err:
        hint = ""
        if "learning rate" in err.cause:
            hint = "; start a new run with a smaller --lr"
        raise UserError(
            f"training stopped at step {err.step}: {err.what}; likely cause: {err.cause}{hint}; "
            f"{_checkpoint_words(err.checkpoint)}"
        ) from err
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    try:
        _write_report(run, out, seconds, args.device)
    except KeyboardInterrupt:
        sys.stderr.write(
            f"minidetr: interrupted while evaluating; the checkpoint {out / 'checkpoint.npz'} "
            f"(step {run.step}) is saved: `minidetr eval` it\n"
        )
        return 130
    return 0


def _coco_paths(args: argparse.Namespace) -> dict[str, str | None]:
    """--dataset PATH.json, --val-dataset, --images as absolute paths (checked, one line if bad)."""
    from minidetr.data import DATASETS

    if args.dataset is not None and args.dataset not in DATASETS:
        if not args.dataset.endswith(".json"):
            raise UserError(
                f"--dataset must be one of {sorted(DATASETS)} or a COCO file PATH.json, "
                f"got {args.dataset!r}"
            )
    if (args.val_dataset or args.images) and not (args.dataset or "").endswith(".json"):
        raise UserError("--val-dataset and --images go with --dataset PATH.json")
    paths = {"dataset": args.dataset, "val_dataset": args.val_dataset, "images": args.images}
    out = dict(paths)
    for k, v in paths.items():
        if v is not None and (k != "dataset" or v.endswith(".json")):
            out[k] = str(Path(v).resolve())
    args.dataset = out["dataset"]  # so that --resume compares the same absolute path
    return out


def _train_config_of(path: Path, cfg: Any, args: argparse.Namespace) -> Any:
    """On --resume the run's own config wins; options given again must agree with it."""
    from minidetr.train.checkpoint import load_checkpoint
    from minidetr.train.loop import TrainConfig

    try:
        meta = load_checkpoint(path).meta
        known = {f.name for f in fields(TrainConfig)}
        saved = {k: v for k, v in meta["train_config"].items() if k in known}
        resumed = TrainConfig(
            **{k: (tuple(v) if isinstance(v, list) else v) for k, v in saved.items()}
        )
        step = int(meta["step"])
    except (ValueError, TypeError, KeyError) as err:
        raise UserError(f"--resume: cannot use {path}: {err}") from err
    for name in ("preset", "dataset", "batch_size", "seed", "lr", "encoder_attention", "offset_l2"):
        given = getattr(args, name, None)
        if given is not None and given != getattr(resumed, name):
            flag, saved_value = name.replace("_", "-"), getattr(resumed, name)
            raise UserError(f"--{flag} {given} differs from the run's {saved_value}")
    steps = resumed.steps if args.steps is None else args.steps
    if steps <= step:
        raise UserError(
            f"{path} is already at step {step}; pass --steps above {step} to train it further"
        )
    every = args.checkpoint_every or resumed.checkpoint_every
    return replace(resumed, steps=steps, checkpoint_every=every)


def _write_report(run: Any, out: Path, seconds: float, device: str) -> dict[str, Any]:
    from minidetr.evaluate import postprocess
    from minidetr.visualize import save_loss_curve, save_prediction_grid

    print("minidetr: evaluating on the held-out split ...")
    metrics = run.evaluate()
    steps_run = len(run.history)
    report = {
        **{k: round(v, 4) for k, v in metrics.items()},
        "final_loss": float(np.mean([h["loss"] for h in run.history[-50:]]))
        if run.history
        else None,
        "steps": run.step,
        "seconds": round(seconds, 1),
        "steps_per_second": round(steps_run / seconds, 2) if seconds > 0 else None,
        "device": device,
        "preset": run.cfg.preset,
        "dataset": run.cfg.dataset,
        "batch_size": run.cfg.batch_size,
        "seed": run.cfg.seed,
    }
    (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    save_loss_curve(out / "loss.png", run.history)
    from minidetr.data import collate

    samples = [run.val_set[i] for i in range(min(8, len(run.val_set)))]
    images, _ = collate(samples, like=run.like)
    outputs, _ = run.model.forward(run.params, images, train=False)
    results = postprocess(
        outputs.pred_logits,
        outputs.pred_boxes,
        run.val_set.image_size,
        focal=run.model.config.focal,
    )
    save_prediction_grid(
        out / "predictions.png", [s.image for s in samples], results, run.val_set.classes
    )
    written = [p for p in ("checkpoint.npz", "metrics.json", "loss.png", "predictions.png")]
    written = [name for name in written if (out / name).is_file()]
    print(
        f"minidetr: AP {report['AP']:.3f}  AP50 {report['AP50']:.3f}  AP75 {report['AP75']:.3f}  "
        f"({report['steps']} steps, {report['seconds']:.0f} s); wrote {out}/"
        f"{{{', '.join(written)}}}"
    )
    return report


def cmd_eval(args: argparse.Namespace) -> int:
    from minidetr.inference import load_run

    run = load_run(args.checkpoint, args.device)
    metrics = run.evaluate()
    print(json.dumps({k: round(v, 4) for k, v in metrics.items()}, indent=2))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from minidetr.evaluate import postprocess
    from minidetr.inference import display_threshold, load_run, output_names, read_image
    from minidetr.visualize import save_prediction_grid

    for path in args.images:
        input_file(path, "image")
    out = output_folder(args.out)
    run = load_run(args.checkpoint, args.device)
    threshold = (
        display_threshold(run.model.config.focal) if args.threshold is None else args.threshold
    )
    size = run.model.config.image_size
    images = [read_image(p, size) for p in args.images]
    outputs, _ = run.model.forward(
        run.params, asarray(np.stack(images), like=run.like), train=False
    )
    results = postprocess(
        outputs.pred_logits, outputs.pred_boxes, size, focal=run.model.config.focal
    )
    for path, name, image, result in zip(args.images, output_names(args.images), images, results):
        target = out / name
        save_prediction_grid(target, [image], [result], run.val_set.classes, threshold, columns=1)
        keep = result["scores"] >= threshold
        found = ", ".join(
            f"{run.val_set.classes[int(c)]} {s:.2f}"
            for c, s in zip(result["labels"][keep], result["scores"][keep])
        )
        print(f"{path}: {found or 'nothing'} -> {target}")
    return 0


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
    _prepare_out_dir(out, False, args.force)
    print(f"minidetr: training a tracker ({cfg.detect_steps} + {cfg.track_steps} steps) into {out}")
    bar = None if args.quiet else ProgressBar()
    t0 = time.perf_counter()
    try:
        tr, seconds = train_tracker(cfg, out, device_like(args.device), bar)
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

    output_folder(Path(args.out))
    try:
        tr = load_tracker(input_file(args.checkpoint, "checkpoint"), device_like(args.device))
    except (OSError, KeyError, ValueError) as err:
        raise UserError(f"cannot use {args.checkpoint}: {err}") from err
    metrics = write_tracks(tr, Path(args.out), clips=args.clips)
    print(
        f"minidetr: MOTA {metrics['MOTA']:.3f}  IDF1 {metrics['IDF1']:.3f}  ID switches "
        f"{metrics['ID_switches']:.0f} on {metrics['clips']} clips; wrote {args.out}/"
    )
    return 0


class Parser(argparse.ArgumentParser):
    """argparse, with a mistake reported in one line (and a pointer to --help)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu (NumPy) or cuda (CuPy)")
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="BLAS and Numba threads (default 1, fastest on 2 cores)",
    )


def add_train_parser(sub: Any) -> None:
    from minidetr.data import DATASETS
    from minidetr.model import PRESETS
    from minidetr.model.config import ENCODER_ATTENTIONS
    from minidetr.train.loop import TrainConfig

    d = TrainConfig()
    what = "train a tiny DETR on built-in data"
    t = sub.add_parser("train", help=what, description=what)
    add_common_options(t)
    t.add_argument("--preset", choices=sorted(PRESETS), help=f"model preset (default {d.preset})")
    t.add_argument(
        "--dataset",
        help=f"built-in dataset {sorted(DATASETS)} (default {d.dataset}) or a COCO file PATH.json",
    )
    t.add_argument("--val-dataset", help="COCO validation file (default: a held-out tenth)")
    t.add_argument("--images", help="folder of the COCO files' images (default: the JSON's)")
    t.add_argument(
        "--encoder-attention",
        choices=ENCODER_ATTENTIONS,
        help="the standard preset's encoder self-attention (default softmax)",
    )
    t.add_argument("--steps", type=positive_int, help=f"optimizer steps (default {d.steps})")
    t.add_argument(
        "--batch-size", type=positive_int, help=f"images per step (default {d.batch_size})"
    )
    t.add_argument("--lr", type=positive_float, help=f"peak learning rate (default {d.lr:g})")
    t.add_argument(
        "--seed",
        type=non_negative_int,
        help=f"seed of data, initialisation and noise, >= 0 (default {d.seed})",
    )
    t.add_argument(
        "--checkpoint-every",
        type=positive_int,
        help=f"steps between checkpoints (default {d.checkpoint_every})",
    )
    t.add_argument(
        "--offset-l2",
        type=non_negative_float,
        metavar="LAMBDA",
        help="L2 penalty on deformable sampling offsets in level pixels, >= 0 (default 0: off)",
    )
    t.add_argument("--out", help="output folder (default runs/<timestamp>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.add_argument("--force", action="store_true", help="overwrite a run already in --out")
    t.add_argument("--quiet", action="store_true", help="no progress output")
    t.add_argument(
        "--task", choices=("detect", "track"), default="detect", help="detect (default) or track"
    )
    t.set_defaults(func=cmd_train)


def add_track_parser(sub: Any) -> None:
    what = "track held-out moving-shapes clips with a --task track checkpoint"
    k = sub.add_parser("track", help=what, description=what)
    add_common_options(k)
    k.add_argument("checkpoint")
    k.add_argument("--out", required=True, help="folder for MOT files, animations, metrics")
    k.add_argument("--clips", type=positive_int, help="how many held-out clips (default all)")
    k.set_defaults(func=cmd_track)


def add_eval_parser(sub: Any) -> None:
    what = "COCO AP of a checkpoint on the held-out split"
    e = sub.add_parser("eval", help=what, description=what)
    add_common_options(e)
    e.add_argument("checkpoint")
    e.set_defaults(func=cmd_eval)


def add_predict_parser(sub: Any) -> None:
    what = "draw a checkpoint's detections on images"
    p = sub.add_parser("predict", help=what, description=what)
    add_common_options(p)
    p.add_argument("checkpoint")
    p.add_argument("images", nargs="+")
    p.add_argument("--out", default="predictions", help="folder for the annotated images")
    p.add_argument(
        "--threshold",
        type=probability,
        help="lowest score drawn, in [0, 1] (default 0.3 focal, 0.5 softmax)",
    )
    p.set_defaults(func=cmd_predict)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="minidetr", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    add_train_parser(sub)
    add_eval_parser(sub)
    add_predict_parser(sub)
    add_track_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; a ``UserError`` is one line on stderr and exit status 2."""
    try:
        args = build_parser().parse_args(argv)
        limit_threads(args.threads)
        return args.func(args)
    except UserError as err:
        print(f"minidetr: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nminidetr: interrupted; nothing was saved", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
