"""``minidetr train``: check the options and the output folder, train, write the report.

Every mistake in the user's input (an option the run cannot take, an unusable
folder, a run to resume that does not match) is a :class:`~minidetr.options.UserError`
before any work starts; a stopped run names only the checkpoint it really left.
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

from minidetr.options import UserError, device_like, input_file, output_folder


def prepare_out_dir(out: Path, resume: bool, force: bool) -> None:
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
        "attention_entropy": args.attention_entropy,
        "offset_l2": args.offset_l2,
        **_coco_paths(args),
    }
    try:
        cfg = replace(TrainConfig(), **{k: v for k, v in overrides.items() if v is not None})
    except (ValueError, TypeError) as err:  # the parser checks first; this is the backstop
        raise UserError(str(err)) from err
    if cfg.dataset == "digits" and importlib.util.find_spec("sklearn") is None:
        raise UserError("--dataset digits needs scikit-learn: pip install 'minidetr[data]'")
    like = device_like(args.device)  # before the folder is made: an unusable device leaves none
    prepare_out_dir(out, args.resume, args.force)
    if args.resume:
        cfg = _train_config_of(out / "checkpoint.npz", cfg, args)
    print(f"minidetr: training preset {cfg.preset!r} on {cfg.dataset!r} ({args.device}) into {out}")
    bar = None if args.quiet else ProgressBar()
    t0 = time.perf_counter()
    try:
        run = train(cfg, out, like, resume=args.resume, progress=bar, prefetch=True)
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
    for flag, v in (("--dataset", args.dataset), ("--val-dataset", args.val_dataset)):
        if v is not None and v.endswith(".json"):
            input_file(v, f"{flag} file")  # before any work, not after the folder is made
    if args.images is not None and not Path(args.images).is_dir():
        raise UserError(f"--images {args.images} is not a folder")
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


def entropy_log(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The attention entropy (nats) logged over training: ``step`` and, per layer, the mean
    over heads (``per_layer``) and each head's (``per_head``), one entry per logged step."""
    logged = [h for h in history if "attention_entropy" in h]
    names = list(logged[0]["attention_entropy"]) if logged else []
    return {
        "step": [h["step"] for h in logged],
        "per_layer": {
            n: [round(float(np.mean(h["attention_entropy"][n])), 4) for h in logged] for n in names
        },
        "per_head": {
            n: [[round(v, 4) for v in h["attention_entropy"][n]] for h in logged] for n in names
        },
    }


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
        "attention_entropy_weight": run.cfg.attention_entropy,
        "attention_entropy": entropy_log(run.history),
    }
    (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    save_loss_curve(out / "loss.png", run.history)
    from minidetr.data import collate

    samples = [run.val_set[i] for i in range(min(8, len(run.val_set)))]
    images, _ = collate(samples, like=run.like)
    outputs, _ = run.model.forward(run.eval_params, images, train=False)
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
