"""Joint vs divided space-time attention: operations, time and peak memory as T and N grow.

Run:  python benchmarks/bench_space_time.py [--repeat 5] [--threads 1] [--dtype float32]
                                           [--json results.json]

For q, k, v of shape (B=1, M=4 heads, T, N, Dh=32) it measures, for each (T, N):

* the count: multiply-adds x 2 of q k^T and p v (``attention_flops``), joint against time +
  space; the ratio is T N / (T + N);
* the time of forward + backward, best of ``--repeat`` rounds, joint and divided run
  interleaved in each round so both see the same machine load;
* the peak memory the forward + backward allocates (``tracemalloc``, which NumPy reports to),
  in its own pass.

The ratio columns are joint / divided. One table in markdown on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import tracemalloc

import numba
import numpy as np
from threadpoolctl import threadpool_limits

from minidetr.video.space_time import (
    attention_flops,
    space_time_attention_backward,
    space_time_attention_forward,
)

SIZES = [(4, 64), (8, 64), (8, 128), (8, 256), (16, 256)]


def joint(q, k, v, dout):
    out, cache = space_time_attention_forward(q, k, v, mode="joint")
    return space_time_attention_backward(dout, cache)


def divided(q, k, v, dout):
    """Time then space on the same tokens (the projections between them are not counted)."""
    mid, c_time = space_time_attention_forward(q, k, v, mode="time")
    out, c_space = space_time_attention_forward(mid, k, v, mode="space")
    dmid, dk2, dv2 = space_time_attention_backward(dout, c_space)
    dq, dk1, dv1 = space_time_attention_backward(dmid, c_time)
    return dq, dk1 + dk2, dv1 + dv2


def peak_mib(fn, *args) -> float:
    tracemalloc.start()
    fn(*args)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    threadpool_limits(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    rng = np.random.default_rng(0)
    heads, dh = 4, 32
    rows = []
    print(f"load average at start: {os.getloadavg()[0]:.2f}; {args.threads} thread(s)\n")
    print(
        "| T | N | count joint / divided | time joint (ms) | time divided (ms) | time ratio "
        "| peak joint (MiB) | peak divided (MiB) | memory ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for t, n in SIZES:
        q, k, v, dout = (
            rng.standard_normal((1, heads, t, n, dh)).astype(args.dtype) for _ in range(4)
        )
        count = attention_flops(t, n, dh, "joint") / (
            attention_flops(t, n, dh, "time") + attention_flops(t, n, dh, "space")
        )
        best = {"joint": float("inf"), "divided": float("inf")}
        joint(q, k, v, dout), divided(q, k, v, dout)  # warm up
        for _ in range(args.repeat):  # interleaved: both see the same load
            for name, fn in (("joint", joint), ("divided", divided)):
                start = time.perf_counter()
                fn(q, k, v, dout)
                best[name] = min(best[name], time.perf_counter() - start)
        mem_j, mem_d = peak_mib(joint, q, k, v, dout), peak_mib(divided, q, k, v, dout)
        row = {
            "T": t,
            "N": n,
            "count_ratio": count,
            "joint_ms": 1e3 * best["joint"],
            "divided_ms": 1e3 * best["divided"],
            "joint_mib": mem_j,
            "divided_mib": mem_d,
        }
        rows.append(row)
        print(
            f"| {t} | {n} | {count:.1f}x | {row['joint_ms']:.1f} | {row['divided_ms']:.1f} "
            f"| {best['joint'] / best['divided']:.1f}x | {mem_j:.1f} | {mem_d:.1f} "
            f"| {mem_j / mem_d:.1f}x |"
        )
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
