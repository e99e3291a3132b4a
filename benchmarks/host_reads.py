"""Where a training step reads the device: every host read of one step, counted by place.

Run:  python benchmarks/host_reads.py [--preset deformable] [--batch-size 2]

array-api-strict stands in for a GPU: each conversion of one of its arrays to a
Python value (``bool``, ``int``, ``float``, an index) or to a host buffer is what
a device-to-host copy (and a wait for the device) would be under CuPy. The script
runs two training steps of ``minidetr.train.loop.Run`` on array-api-strict arrays
and prints the reads of the second, grouped by the line of minidetr that made
them and the line that called it. Counts, not times: the figure does not depend
on the machine.
"""

from __future__ import annotations

import argparse
import collections
import traceback

import array_api_strict as xps
import numpy as np
from array_api_strict._array_object import Array

from minidetr.train.loop import Run, TrainConfig

READS = ("__bool__", "__int__", "__float__", "__index__", "__array__", "__buffer__")


def _place() -> str:
    frames = [f for f in traceback.extract_stack()[:-2] if "/minidetr/" in f.filename]
    lines = [f"{f.filename.split('/minidetr/')[-1]}:{f.lineno}" for f in frames[-2:]]
    return " <- ".join(reversed(lines))


def count_reads(preset: str, batch_size: int) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    counting = [False]
    originals = {name: getattr(Array, name) for name in READS}

    def wrap(name):
        def read(self, *args, **kwargs):
            if counting[0]:
                counts[_place()] += 1
            return originals[name](self, *args, **kwargs)

        return read

    for name in READS:
        setattr(Array, name, wrap(name))
    try:
        cfg = TrainConfig(preset=preset, steps=2, batch_size=batch_size, train_images=64)
        run = Run(cfg, xps.asarray(np.zeros(1, dtype=np.float32)))
        run.train_step()  # the first step may read more (lazy set-up); count the second
        counting[0] = True
        run.train_step()
    finally:
        for name, original in originals.items():
            setattr(Array, name, original)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="deformable")
    parser.add_argument("--batch-size", type=int, default=2)
    args = parser.parse_args()
    counts = count_reads(args.preset, args.batch_size)
    print(f"{args.preset}, batch {args.batch_size}: {sum(counts.values())} host reads per step\n")
    print("| reads | where (minidetr line <- its caller) |")
    print("|---:|---|")
    for place, n in counts.most_common():
        print(f"| {n} | `{place}` |")


if __name__ == "__main__":
    main()
