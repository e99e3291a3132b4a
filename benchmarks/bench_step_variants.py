"""Training-step time of convergence variants side by side: what a change costs per step.

Run:  python benchmarks/bench_step_variants.py [--configs NAME ...] [--steps 30] [--rounds 3]
          [--prefetch]

Each configuration (``bench_convergence``'s names: ``deformable``,
``deformable,num_queries=32@3e-3``, ...) gets its own ``Run`` in this one process, with
one BLAS and one Numba thread. The runs then take turns, ``--steps`` training steps
each, for ``--rounds`` rounds, and each configuration's best round is reported in
steps per second, so a passing load spike hurts every configuration alike.
``--prefetch`` adds ``NAME+prefetch`` twins that draw each next batch in a worker
process (``minidetr.train.prefetch``), which only pays when a core is free.
"""

from __future__ import annotations

import numba
from threadpoolctl import threadpool_limits

threadpool_limits(1)
numba.set_num_threads(1)

import argparse  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from bench_convergence import make_run, refuse_bad_args  # noqa: E402

from minidetr.train.prefetch import Prefetcher  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["deformable"], metavar="NAME")
    parser.add_argument("--steps", type=int, default=30, help="steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prefetch", action="store_true", help="also time NAME+prefetch")
    args = parser.parse_args()
    refuse_bad_args(parser, args, ("steps", "rounds"))
    total = 2 + args.steps * args.rounds  # one warm-up step, then the rounds
    runs = {}
    for name in args.configs:
        runs[name] = make_run(name, total, 16, 32)
        if args.prefetch:
            twin = make_run(name, total, 16, 32)
            twin.prefetch = Prefetcher(twin.train_set, twin.cfg.seed, twin.cfg.batch_size)
            runs[f"{name}+prefetch"] = twin
    for run in runs.values():
        run.train_step()  # Numba compilation or cache load, the worker's start
    time.sleep(2.0)  # let the prefetch workers finish importing
    best = {name: float("inf") for name in runs}
    for r in range(args.rounds):
        for name, run in runs.items():
            t = time.perf_counter()
            for _ in range(args.steps):
                run.train_step()
            best[name] = min(best[name], (time.perf_counter() - t) / args.steps)
        print(
            f"round {r + 1}: " + ", ".join(f"{n} {1 / best[n]:.2f}" for n in runs), file=sys.stderr
        )
    for run in runs.values():
        if run.prefetch is not None:
            run.prefetch.close()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"best of {args.rounds} rounds of {args.steps} steps, batch 16, one thread "
        f"(load average {load}):"
    )
    base = best[next(iter(runs))]
    for name, sec in best.items():
        print(f"  {name}: {1 / sec:.2f} steps/s ({1000 * sec:.0f} ms/step, {base / sec:.2f}x)")


if __name__ == "__main__":
    main()
