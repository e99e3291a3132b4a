"""``minidetr eval``, ``predict`` and ``explain``: what a trained checkpoint does."""

from __future__ import annotations

import argparse
import json

import numpy as np

from minidetr.backend import asarray
from minidetr.options import input_file, output_folder


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
    run = load_run(args.checkpoint, args.device)
    threshold = (
        display_threshold(run.model.config.focal) if args.threshold is None else args.threshold
    )
    size = run.model.config.image_size
    images = [read_image(p, size) for p in args.images]
    out = output_folder(args.out)  # made once every input has been read: a failure leaves none
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


def cmd_explain(args: argparse.Namespace) -> int:
    from minidetr.explain.command import explain_command
    from minidetr.inference import load_run, read_image

    for path in args.images:
        input_file(path, "image")
    out = output_folder(args.out)
    run = load_run(args.checkpoint, args.device)
    images = [read_image(p, run.model.config.image_size) for p in args.images]
    summary = explain_command(
        run,
        images,
        out,
        num_images=args.num_images,
        ablation_images=args.ablation_images,
        threshold=args.threshold,
    )
    print(f"minidetr: explained {summary['detections']} detections; wrote {out}/explain.json")
    return 0
