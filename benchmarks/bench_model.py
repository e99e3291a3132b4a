"""MiniDETR forward + backward per training step, per preset and per stage (NumPy, float32).

Run:  python benchmarks/bench_model.py [--batch 16] [--repeats 7] [--blas-threads N]

One step is what training does before the optimizer: ``model.forward`` with the
denoising queries of a typical batch (3 contrastive groups, 3 objects per image)
and ``model.backward`` with a gradient for every output. The criterion is not
included (see ``bench_criterion.py``). Medians over ``--repeats`` steps after
one warm-up step (each column its own median); the warm-up (Numba compilation
of the deformable kernels, or loading them from the cache) is reported apart.

The per-stage columns time the stage functions ``minidetr.model.detr`` calls
(forward + backward of each): backbone, tokens (input projection and
positions), encoder, two-stage proposals, decoder (with the heads).

``--blas-threads`` caps the BLAS thread pool with threadpoolctl. On a small,
busy CPU, BLAS threads that spin while Numba's threads run (or while another
process holds the cores) can make a step several times slower; compare 1 with
the default.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time

import numpy as np

import minidetr.model.detr as detr
from minidetr.model import PRESETS, MiniDETR
from minidetr.outputs import Predictions, QueryGroup, SetOutputs
from minidetr.setloss.denoising import make_denoising_queries

STAGES = {
    "backbone": ("backbone_forward", "backbone_backward"),
    "tokens": ("tokens_forward", "tokens_backward"),
    "encoder": ("encoder_forward", "encoder_backward"),
    "two-stage": ("two_stage_forward", "two_stage_backward"),
    "decoder": ("decoder_forward", "decoder_backward"),
}
_spent: dict[str, float] = {}


def _timed(name, fn):
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        _spent[name] = _spent.get(name, 0.0) + time.perf_counter() - t
        return out

    return wrapper


for _pair in STAGES.values():
    for _name in _pair:
        setattr(detr, _name, _timed(_name, getattr(detr, _name)))


def _ones(outputs):
    """A gradient of ones for every prediction, in the outputs' structure."""
    return SetOutputs(
        {
            name: QueryGroup(tuple(Predictions(*map(np.ones_like, p)) for p in group.layers))
            for name, group in outputs
        }
    )


def bench(name: str, batch: int, repeats: int) -> dict:
    cfg = PRESETS[name]
    model = MiniDETR(cfg)
    params = model.init_params(0)
    rng = np.random.default_rng(0)
    images = rng.random((batch, 3, cfg.image_size, cfg.image_size), dtype=np.float32)
    boxes = np.array([[0.3, 0.3, 0.2, 0.2], [0.6, 0.4, 0.3, 0.25], [0.5, 0.75, 0.3, 0.2]])
    targets = [
        {"labels": rng.integers(0, cfg.num_classes, 3), "boxes": boxes.astype(np.float32)}
        for _ in range(batch)
    ]

    def step():
        dn = None
        if cfg.denoising:
            dn = make_denoising_queries(
                targets, 3, 0.25, 0.4, cfg.num_classes, rng,
                num_queries=cfg.num_queries, contrastive=True,
            )  # fmt: skip
        t0 = time.perf_counter()
        outputs, cache = model.forward(params, images, train=True, rng=rng, denoising=dn)
        t1 = time.perf_counter()
        model.backward(_ones(outputs), cache)
        return t1 - t0, time.perf_counter() - t1

    t = time.perf_counter()
    step()
    warmup = time.perf_counter() - t
    fwd, bwd, per_step = [], [], []
    for _ in range(repeats):
        _spent.clear()
        f, b = step()
        fwd.append(f)
        bwd.append(b)
        per_step.append({s: sum(_spent.get(n, 0.0) for n in pair) for s, pair in STAGES.items()})
    stages = {s: float(np.median([p[s] for p in per_step])) for s in STAGES}
    return {
        "preset": name,
        "params": model.num_params(),
        "warmup": warmup,
        "forward": float(np.median(fwd)),
        "backward": float(np.median(bwd)),
        "total": float(np.median(np.add(fwd, bwd))),  # every column is a median over steps
        **stages,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--presets", nargs="+", default=["standard", "deformable"])
    parser.add_argument("--blas-threads", type=int, default=None)
    args = parser.parse_args()
    limit = contextlib.nullcontext()
    if args.blas_threads is not None:
        from threadpoolctl import threadpool_limits  # optional

        limit = threadpool_limits(args.blas_threads, user_api="blas")
    with limit:
        rows = [bench(name, args.batch, args.repeats) for name in args.presets]
    blas = args.blas_threads if args.blas_threads is not None else "default"
    print(f"batch {args.batch}, float32, NumPy; {os.cpu_count()} CPUs, BLAS threads {blas}\n")
    cols = ["preset", "params", "forward", "backward", "total", *STAGES, "warmup"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---" if c == "preset" else "---:" for c in cols) + "|")
    for r in rows:
        cells = [r["preset"], f"{r['params']:,}"]
        cells += [f"{1000 * r[c]:.0f} ms" for c in cols[2:-1]]
        cells.append(f"{r['warmup']:.1f} s")
        print("| " + " | ".join(cells) + " |")
    print("\nstage columns: forward + backward of each stage, per step; warmup: first step")


if __name__ == "__main__":
    main()
