"""The offset L2 penalty's effect on training: AP and offset lengths at equal steps.

Run:  python benchmarks/bench_offset_penalty.py --offset-l2 0.1 [--steps 300] [--batch-size 16]
      [--seed 0] [--threads 1] [--out results/offset_l2_0.1.json]

Trains the ``deformable`` preset on shapes with ``TrainConfig(offset_l2=...)`` (one
weight per process, so that two weights can run side by side on two cores), then
reports COCO AP50 / AP on the held-out set and the mean |offset| in level pixels,
per level, of the encoder's and the decoder's deformable layers over the held-out
images (train=False: no denoising queries). Every step's batch comes from (seed,
step), so runs with different weights see the same images in the same order.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from minidetr.backend import to_numpy
from minidetr.data import collate
from minidetr.deformable.offset_penalty import offset_pixels
from minidetr.model.deformable_transformer import deformable_caches
from minidetr.train.loop import Run, TrainConfig


def mean_offset_pixels(run: Run, batch_size: int = 32) -> dict[str, list[float]]:
    """Mean |offset| in level pixels per level: {"encoder": [L floats], "decoder": [...]}."""
    model, data = run.model, run.val_set
    n_enc = model.config.num_encoder_layers
    sums = {"encoder": 0.0, "decoder": 0.0}
    counts = {"encoder": 0, "decoder": 0}
    for start in range(0, len(data), batch_size):
        images, _ = collate(
            [data[i] for i in range(start, min(start + batch_size, len(data)))], like=run.like
        )
        _, cache = model.forward(run.params, images, train=False)
        mods = deformable_caches(cache.encoder, cache.decoder.steps)
        for i, c in enumerate(mods):
            pix = to_numpy(offset_pixels(c.offsets, c.reference_points, c.normalizer))
            length = np.sqrt((pix.astype(np.float64) ** 2).sum(-1))  # (B, Q, M, L, P)
            part = "encoder" if i < n_enc else "decoder"
            sums[part] = sums[part] + length.sum(axis=(0, 1, 2, 4))  # (L,)
            counts[part] += length.size // length.shape[3]
    return {k: [float(v) for v in sums[k] / counts[k]] for k in sums}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--offset-l2", type=float, required=True)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import numba

    numba.set_num_threads(args.threads)
    cfg = TrainConfig(
        steps=args.steps, batch_size=args.batch_size, seed=args.seed, offset_l2=args.offset_l2
    )
    with threadpool_limits(args.threads):
        run = Run(cfg, np.empty(0, dtype=np.float32))
        t0 = time.perf_counter()
        while run.step < cfg.steps:
            record = run.train_step()
            if run.step % 50 == 0:
                print(json.dumps(record), flush=True)
        seconds = time.perf_counter() - t0
        metrics = run.evaluate()
        offsets = mean_offset_pixels(run)
    result = {
        "offset_l2": args.offset_l2,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "AP50": metrics["AP50"],
        "AP": metrics["AP"],
        "mean_offset_px": offsets,
        "last": run.history[-1],
        "train_seconds": seconds,
        "load_average": os.getloadavg(),
    }
    print(json.dumps(result))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
