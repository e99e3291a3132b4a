"""Where a training step's time goes: per-stage times and the costliest functions (cProfile).

Run:  python benchmarks/profile_train_step.py [--presets standard deformable] [--steps 20]

Runs ``Run.train_step`` (what ``minidetr train`` does each iteration; batch 16,
float32, one BLAS and Numba thread) under cProfile after two warm-up steps, then
prints for each preset the time per step of each stage (drawing the batch, model
forward, criterion forward with matching, criterion backward, model backward,
gradient clipping, AdamW) and the functions with the most time of their own.
cProfile adds a little time to every Python call, so stages made of many small
calls are inflated somewhat; the ranking is what this script is for, and
``bench_train_step.py`` gives the step times.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from dataclasses import replace

import numpy as np

from minidetr.cli import limit_threads
from minidetr.train.loop import Run, TrainConfig
from minidetr.train.optim import adamw_step, clip_grad_norm


def stages(run: Run) -> list[tuple[str, object]]:
    """(label, function) of each stage of ``run.train_step``; a stage's time is its function's."""
    return [
        ("batch (draw and stack)", Run.batch),
        ("model forward", type(run.model).forward),
        ("criterion forward (with matching)", type(run.criterion).forward),
        ("  of which Hungarian matching", type(run.criterion.matcher).match),
        ("criterion backward", type(run.criterion).backward),
        ("model backward", type(run.model).backward),
        ("gradient clipping", clip_grad_norm),
        ("AdamW", adamw_step),
    ]


def stage_times(stats: pstats.Stats, run: Run, steps: int) -> list[tuple[str, float]]:
    """Milliseconds per step of each stage: the cumulative time of its function."""
    rows = []
    for label, fn in stages(run):
        code = fn.__code__
        entry = stats.stats.get((code.co_filename, code.co_firstlineno, code.co_name))
        rows.append((label, 1e3 * entry[3] / steps if entry else 0.0))
    return rows


def top_functions(stats: pstats.Stats, steps: int, n: int) -> list[tuple[str, float, int]]:
    """The n functions with the most time of their own: (where, ms per step, calls per step)."""
    rows = []
    for (path, line, func), v in stats.stats.items():
        where = f"{path.split('site-packages/')[-1].split('minidetr/')[-1]}:{line} {func}"
        rows.append((where, 1e3 * v[2] / steps, v[1] // steps))
    return sorted(rows, key=lambda r: -r[1])[:n]


def profile(preset: str, steps: int, top: int) -> None:
    run = Run(replace(TrainConfig(), preset=preset, steps=steps + 2), np.zeros(1, np.float32))
    for _ in range(2):  # compile (or load) the Numba kernels, warm the caches
        run.train_step()
    profiler = cProfile.Profile(time.process_time)  # CPU time: other jobs do not count
    profiler.enable()
    for _ in range(steps):
        run.train_step()
    profiler.disable()
    stats = pstats.Stats(profiler)
    step_ms = 1e3 * stats.total_tt / steps
    print(f"\n### {preset}: {step_ms:.1f} ms per step under cProfile ({steps} steps)\n")
    print("| stage | ms/step | share |\n|---|---|---|")
    for label, ms in stage_times(stats, run, steps):
        print(f"| {label} | {ms:.1f} | {100 * ms / step_ms:.0f}% |")
    print(f"\nTop {top} functions by own time:\n")
    print("| function | ms/step | calls/step |\n|---|---|---|")
    for where, ms, calls in top_functions(stats, steps, top):
        print(f"| `{where}` | {ms:.2f} | {calls} |")


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
