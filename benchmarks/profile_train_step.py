"""Where a training step's time goes: per-stage times, the matrix products, the costliest functions.

Run:  python benchmarks/profile_train_step.py [--presets standard deformable] [--steps 20]

Runs ``Run.train_step`` (what ``minidetr train`` does each iteration; batch 16,
float32, one BLAS and Numba thread) after two warm-up steps, three times over:

1. stage times: each stage's function (drawing the batch, model forward, criterion
   forward with matching, criterion backward, model backward, the gradient norm with
   clipping and AdamW) is wrapped in a CPU-time clock
   (``time.process_time``: other jobs on the cores do not count), with nothing else
   instrumented;
2. the matrix-product census: every ``matmul`` of the array namespace timed and
   grouped by operand shapes, with its GFLOP/s;
3. cProfile, for the functions with the most time of their own. cProfile adds a
   little time to every Python call, so stages made of many small calls look
   bigger there; its ranking is what it is for.

``bench_train_step.py`` gives the step times against PyTorch.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from collections import defaultdict
from dataclasses import replace

import numpy as np

from minidetr import backend
from minidetr.cli import limit_threads
from minidetr.train import loop
from minidetr.train.loop import Run, TrainConfig


def stages(run: Run) -> list[tuple[str, object, str]]:
    """(label, owner, attribute) of each stage of ``run.train_step``."""
    return [
        ("batch (draw and stack)", Run, "batch"),
        ("model forward", type(run.model), "forward"),
        ("criterion forward (with matching)", type(run.criterion), "forward"),
        ("  of which Hungarian matching", type(run.criterion.matcher), "match"),
        ("criterion backward", type(run.criterion), "backward"),
        ("model backward", type(run.model), "backward"),
        ("gradient norm, clipping and AdamW", loop, "clipped_adamw_step"),
    ]


def timed_steps(run: Run, steps: int, wrap: list[tuple[object, str, object]]) -> float:
    """CPU seconds per step of ``steps`` steps with ``wrap``'s (owner, name, f) put in place."""
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in wrap]
    for owner, name, f in wrap:
        setattr(owner, name, f)
    try:
        start = time.process_time()
        for _ in range(steps):
            run.train_step()
        return (time.process_time() - start) / steps
    finally:
        for owner, name, f in saved:
            setattr(owner, name, f)


def clocked(f, totals: dict, key: str):
    """``f`` that adds its CPU time to ``totals[key]``."""

    def g(*args, **kwargs):
        start = time.process_time()
        try:
            return f(*args, **kwargs)
        finally:
            totals[key] += time.process_time() - start

    return g


def stage_times(run: Run, steps: int) -> tuple[float, list[tuple[str, float]]]:
    """(ms per step, [(stage, ms per step)]) with only the stage functions clocked."""
    totals: dict = defaultdict(float)
    wrap = [(o, n, clocked(getattr(o, n), totals, label)) for label, o, n in stages(run)]
    step = timed_steps(run, steps, wrap)
    return 1e3 * step, [(label, 1e3 * totals[label] / steps) for label, _, _ in stages(run)]


def matmul_census(run: Run, steps: int) -> list[tuple[float, int, float, str]]:
    """[(ms per step, calls per step, GFLOP/s, shapes)] of every matrix product, costliest first."""
    found: dict = defaultdict(lambda: [0, 0.0, 0.0])
    xp = backend.namespace(np.zeros(1))
    plain = xp.matmul

    def matmul(a, b, **kwargs):
        start = time.process_time()
        out = plain(a, b, **kwargs)
        entry = found[f"{tuple(a.shape)} @ {tuple(b.shape)}"]
        entry[0] += 1
        entry[1] += time.process_time() - start
        entry[2] += 2.0 * out.size * a.shape[-1]
        return out

    timed_steps(run, steps, [(xp, "matmul", matmul)])
    rows = [
        (1e3 * t / steps, n // steps, flops / max(t, 1e-12) / 1e9, shapes)
        for shapes, (n, t, flops) in found.items()
    ]
    return sorted(rows, reverse=True)


def top_functions(run: Run, steps: int, n: int) -> list[tuple[str, float, int]]:
    """The n functions with the most time of their own under cProfile: (where, ms, calls)."""
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    for _ in range(steps):
        run.train_step()
    profiler.disable()
    rows = []
    for (path, line, func), v in pstats.Stats(profiler).stats.items():
        where = f"{path.split('site-packages/')[-1].split('minidetr/')[-1]}:{line} {func}"
        rows.append((where, 1e3 * v[2] / steps, v[1] // steps))
    return sorted(rows, key=lambda r: -r[1])[:n]


def profile(preset: str, steps: int, top: int) -> None:
    run = Run(replace(TrainConfig(), preset=preset, steps=3 * steps + 2), np.zeros(1, np.float32))
    for _ in range(2):  # compile (or load) the Numba kernels, warm the caches
        run.train_step()
    step_ms, rows = stage_times(run, steps)
    print(f"\n### {preset}: {step_ms:.1f} ms of CPU time per step ({steps} steps)\n")
    print("| stage | ms/step | share |\n|---|---|---|")
    for label, ms in rows:
        print(f"| {label} | {ms:.1f} | {100 * ms / step_ms:.0f}% |")
    census = matmul_census(run, steps)
    total = sum(r[0] for r in census)
    calls = sum(r[1] for r in census)
    print(f"\nMatrix products: {total:.1f} ms per step in {calls} calls; the costliest:\n")
    print("| operands | ms/step | calls/step | GFLOP/s |\n|---|---|---|---|")
    for ms, n, gflops, shapes in census[:top]:
        print(f"| `{shapes}` | {ms:.2f} | {n} | {gflops:.0f} |")
    print(f"\nTop {top} functions by own time (cProfile):\n")
    print("| function | ms/step | calls/step |\n|---|---|---|")
    for where, ms, n in top_functions(run, steps, top):
        print(f"| `{where}` | {ms:.2f} | {n} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["standard", "deformable"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    limit_threads(1)
    for preset in args.presets:
        profile(preset, args.steps, args.top)


if __name__ == "__main__":
    main()
