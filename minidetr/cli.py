"""The ``minidetr`` command: train a tiny DETR, evaluate a checkpoint, draw its detections.

    minidetr train                      # default preset on the shapes set, on the CPU
    minidetr train --device cuda        # the same on a GPU, with CuPy
    minidetr eval runs/<stamp>/checkpoint.npz
    minidetr predict runs/<stamp>/checkpoint.npz picture.png

User mistakes (unknown preset, a folder holding another run, a corrupt
checkpoint, an unreadable image, no GPU) end with one line saying what to do,
not a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from minidetr.backend import Array, asarray


class UserError(Exception):
    """A mistake the user can fix; printed as one line, exit status 2."""


def device_like(name: str) -> Array:
    """A float32 array on the requested device, for the rest of the run to copy."""
    if name == "cpu":
        return np.zeros(1, dtype=np.float32)
    if name != "cuda":
        raise UserError(f"unknown device {name!r}; use cpu or cuda")
    try:
        import cupy
    except ImportError as err:
        raise UserError(
            "--device cuda needs CuPy: pip install 'minidetr[gpu]' "
            "(cupy-cuda12x for CUDA 12 drivers, cupy-cuda13x for CUDA 13)"
        ) from err
    try:
        cupy.cuda.runtime.getDeviceCount()
        return cupy.zeros(1, dtype=cupy.float32)
    except Exception as err:
        raise UserError(f"--device cuda: CuPy found no usable CUDA GPU ({err})") from err


def limit_threads(n: int) -> None:
    """Use ``n`` BLAS and Numba threads.

    minidetr's matrices are small: on two cores, one thread each measured 1.5 to
    3x faster per training step than the libraries' defaults, whose idle threads
    spin and compete for the same cores.
    """
    if n < 1:
        raise UserError(f"--threads must be at least 1, got {n}")
    import numba
    from threadpoolctl import threadpool_limits

    threadpool_limits(n)
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def _prepare_out_dir(out: Path, resume: bool, force: bool) -> None:
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
    out.mkdir(parents=True, exist_ok=True)


def cmd_train(args: argparse.Namespace) -> int:
    from minidetr.train.loop import TrainConfig, TrainingError, progress_bar, train

    overrides = {
        "preset": args.preset,
        "dataset": args.dataset,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "lr": args.lr,
    }
    cfg = replace(TrainConfig(), **{k: v for k, v in overrides.items() if v is not None})
    out = Path(args.out) if args.out else Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    if args.resume and args.out is None:
        raise UserError("--resume needs --out DIR naming the run to continue")
    like = device_like(args.device)
    if args.resume:
        cfg = _train_config_of(out / "checkpoint.npz", cfg, args)
    _prepare_out_dir(out, args.resume, args.force)
    print(f"minidetr: training preset {cfg.preset!r} on {cfg.dataset!r} ({args.device}) into {out}")
    t0 = time.perf_counter()
    try:
        run = train(
            cfg, out, like, resume=args.resume, progress=None if args.quiet else progress_bar
        )
    except KeyboardInterrupt:
        sys.stderr.write(
            f"\nminidetr: interrupted; checkpoint saved, resume with --resume --out {out}\n"
        )
        return 130
    except TrainingError as err:
        raise UserError(f"{err}; the last good checkpoint is in {out}") from err
    seconds = time.perf_counter() - t0
    _write_report(run, out, seconds, args.device)
    return 0


def _train_config_of(path: Path, cfg: Any, args: argparse.Namespace) -> Any:
    """On --resume the run's own config wins; options given again must agree with it."""
    from minidetr.train.checkpoint import load_checkpoint
    from minidetr.train.loop import TrainConfig

    try:
        saved = load_checkpoint(path).meta["train_config"]
    except ValueError as err:
        raise UserError(str(err)) from err
    known = {f.name for f in fields(TrainConfig)}
    resumed = TrainConfig(
        **{k: (tuple(v) if isinstance(v, list) else v) for k, v in saved.items() if k in known}
    )
    for name in ("preset", "dataset", "batch_size", "seed", "lr"):
        given = getattr(args, name, None)
        if given is not None and given != getattr(resumed, name):
            flag, saved_value = name.replace("_", "-"), getattr(resumed, name)
            raise UserError(f"--{flag} {given} differs from the run's {saved_value}")
    if args.steps is not None:
        resumed = replace(resumed, steps=args.steps)
    return resumed


def display_threshold(focal: bool) -> float:
    """The lowest score drawn: sigmoid scores of focal models run lower than softmax ones."""
    return 0.3 if focal else 0.5


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
    print(
        f"minidetr: AP {report['AP']:.3f}  AP50 {report['AP50']:.3f}  AP75 {report['AP75']:.3f}  "
        f"({report['steps']} steps, {report['seconds']:.0f} s); wrote {out}/"
        "{checkpoint.npz, metrics.json, loss.png, predictions.png}"
    )
    return report


def _load_run(checkpoint: str, device: str) -> Any:
    from minidetr.train.checkpoint import load_checkpoint
    from minidetr.train.loop import Run, TrainConfig

    like = device_like(device)
    try:
        ck = load_checkpoint(checkpoint, like=like)
        cfg = TrainConfig(**ck.meta["train_config"])
    except (ValueError, TypeError, KeyError) as err:
        raise UserError(f"cannot use {checkpoint}: {err}") from err
    run = Run(cfg, like)
    try:
        run.model.check_params(ck.params)
    except ValueError as err:
        raise UserError(f"{checkpoint} does not fit preset {cfg.preset!r}: {err}") from err
    run.params, run.step, run.history = ck.params, int(ck.meta["step"]), ck.meta.get("history", [])
    return run


def cmd_eval(args: argparse.Namespace) -> int:
    run = _load_run(args.checkpoint, args.device)
    metrics = run.evaluate()
    print(json.dumps({k: round(v, 4) for k, v in metrics.items()}, indent=2))
    return 0


def _read_image(path: str, size: int) -> np.ndarray:
    """A picture file as a (3, size, size) float32 array in [0, 1]."""
    import matplotlib.image
    from scipy.ndimage import zoom

    try:
        img = np.asarray(matplotlib.image.imread(path), dtype=np.float64)
    except Exception as err:
        raise UserError(f"cannot read image {path}: {err}") from err
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    img = img[..., :3]
    if img.max() > 1.0:
        img = img / 255.0
    h, w = img.shape[:2]
    img = zoom(img, (size / h, size / w, 1), order=1)
    return np.ascontiguousarray(np.transpose(img, (2, 0, 1)), dtype=np.float32)


def cmd_predict(args: argparse.Namespace) -> int:
    from minidetr.evaluate import postprocess
    from minidetr.visualize import save_prediction_grid

    run = _load_run(args.checkpoint, args.device)
    threshold = (
        display_threshold(run.model.config.focal) if args.threshold is None else args.threshold
    )
    size = run.model.config.image_size
    images = [_read_image(p, size) for p in args.images]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    outputs, _ = run.model.forward(
        run.params, asarray(np.stack(images), like=run.like), train=False
    )
    results = postprocess(
        outputs.pred_logits, outputs.pred_boxes, size, focal=run.model.config.focal
    )
    for path, image, result in zip(args.images, images, results):
        target = out / (Path(path).stem + "_pred.png")
        save_prediction_grid(target, [image], [result], run.val_set.classes, threshold, columns=1)
        keep = result["scores"] >= threshold
        found = ", ".join(
            f"{run.val_set.classes[int(c)]} {s:.2f}"
            for c, s in zip(result["labels"][keep], result["scores"][keep])
        )
        print(f"{path}: {found or 'nothing'} -> {target}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from minidetr.data import DATASETS
    from minidetr.model import PRESETS

    parser = argparse.ArgumentParser(prog="minidetr", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--device", default="cpu", help="cpu (NumPy) or cuda (CuPy)")
    common.add_argument(
        "--threads",
        type=int,
        default=1,
        help="BLAS and Numba threads (default 1, fastest on 2 cores)",
    )

    t = sub.add_parser("train", parents=[common], help="train a tiny DETR on built-in data")
    t.add_argument("--preset", choices=sorted(PRESETS), help="model preset (default: deformable)")
    t.add_argument("--dataset", choices=sorted(DATASETS), help="built-in dataset (default: shapes)")
    t.add_argument("--steps", type=int, help="optimizer steps")
    t.add_argument("--batch-size", type=int, help="images per step")
    t.add_argument("--lr", type=float, help="peak learning rate")
    t.add_argument("--seed", type=int, help="seed of data, initialisation and noise")
    t.add_argument("--out", help="output folder (default: runs/<timestamp>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.add_argument("--force", action="store_true", help="overwrite a run already in --out")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser(
        "eval", parents=[common], help="COCO AP of a checkpoint on the held-out split"
    )
    e.add_argument("checkpoint")
    e.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", parents=[common], help="draw a checkpoint's detections on images")
    p.add_argument("checkpoint")
    p.add_argument("images", nargs="+")
    p.add_argument("--out", default="predictions", help="folder for the annotated images")
    p.add_argument(
        "--threshold", type=float, help="lowest score drawn (default 0.3 focal, 0.5 softmax)"
    )
    p.set_defaults(func=cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        limit_threads(args.threads)
        return args.func(args)
    except (UserError, ValueError) as err:
        print(f"minidetr: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
