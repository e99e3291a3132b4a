"""Linear assignment: our solver against SciPy, lap and lapjv, alone, batched, in the matcher.

Run:  python benchmarks/bench_assignment.py [--quick]

Tables (time per call, the best of interleaved rounds, so every contender sees the
same machine load). Every contender runs on one thread, so the clock is the CPU time
of this process (``time.process_time``): other work on a shared machine does not
inflate it. ``--wall`` uses wall-clock time (``time.perf_counter``) instead.

1. Square matrices n x n, random and structured (C[i, j] = i * j, a hard case):
   ``minidetr.assignment.linear_sum_assignment`` against
   ``scipy.optimize.linear_sum_assignment``, ``lap.lapjv`` and ``lapjv.lapjv`` when
   those are installed.
2. DETR's workload: 64 images, 100 queries, 1 to 20 targets each (one fixed draw).
   A Python loop of SciPy calls over the per-image (100, T) matrices (contiguous
   copies; and views of one (100, sum T) cost, as DETR's ``C.split``) against our
   one compiled call: a list (``linear_sum_assignment_batch``, of either) or the
   stacked (sum T, 100) layout the matcher builds.
3. The whole matcher, cost construction plus solving, on NumPy: DETR's recipe
   (``models/matcher.py`` in NumPy and SciPy: the (64 * 100, sum T) cost of every
   query against every target of the batch, then SciPy per image), the same recipe
   computing only each image's block, and ``minidetr.setloss.matching.HungarianMatcher``.

Numba compiles on first use and caches the machine code on disk (``cache=True``);
the one-time cost (cold compile into an empty cache, then a warm start that loads
the cache) is measured in fresh processes and reported on its own.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np
from scipy.optimize import linear_sum_assignment as scipy_lsa
from scipy.spatial.distance import cdist

from minidetr.assignment import (
    linear_sum_assignment,
    linear_sum_assignment_batch,
    linear_sum_assignment_stacked,
)
from minidetr.setloss.matching import HungarianMatcher

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_giou import numpy_giou  # DETR's formula, shared with that benchmark

try:
    import lap
except ImportError:  # optional contender
    lap = None
try:
    import lapjv
except ImportError:  # optional contender
    lapjv = None


CLOCK = time.process_time  # CPU time of this process; --wall switches to time.perf_counter


def best_times(contenders: dict[str, Callable[[], object]], rounds: int, number: int) -> dict:
    """Seconds per call of each contender: the best of ``rounds`` interleaved rounds.

    Each timed block starts after one untimed call: the first call after another
    contender pays for that contender's traces in the caches and the allocator (about
    10 us a call on DETR's workload, averaged over 20 calls, for whoever comes second).
    """
    for fn in contenders.values():
        fn()  # warm up (and compile)
    best = dict.fromkeys(contenders, np.inf)
    for _ in range(rounds):
        for name, fn in contenders.items():
            fn()  # untimed: settles caches and allocator after the previous contender
            start = CLOCK()
            for _ in range(number):
                fn()
            best[name] = min(best[name], (CLOCK() - start) / number)
    return best


def fmt(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    return f"{seconds * 1e3:.2f} ms"


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


# ---------------------------------------------------------------- 1. square matrices


def bench_square(rng: np.random.Generator, quick: bool) -> None:
    families = [
        ("Square random matrices (uniform [0, 1) costs)", lambda n: rng.random((n, n)), 15),
        (
            "Square structured matrices C[i, j] = i * j (a hard case: long searches)",
            lambda n: np.outer(np.arange(n), np.arange(n)).astype(np.float64),
            3,
        ),
    ]
    header = ["n", "minidetr", "SciPy", "SciPy / minidetr"]
    header += ["lap.lapjv"] if lap else []
    header += ["lapjv.lapjv"] if lapjv else []
    for title, make, rounds in families:
        rows = []
        for n in [10, 100, 300, 1000]:
            cost = make(n)
            contenders = {
                "minidetr": lambda c=cost: linear_sum_assignment(c),
                "scipy": lambda c=cost: scipy_lsa(c),
            }
            if lap:
                contenders["lap"] = lambda c=cost: lap.lapjv(c)
            if lapjv:
                contenders["lapjv"] = lambda c=cost: lapjv.lapjv(c)
            number = max(1, int(2e4 / n**1.5)) if rounds > 3 else 1
            n_rounds = 3 if quick else (min(rounds, 7) if n >= 1000 else rounds)
            t = best_times(contenders, rounds=n_rounds, number=number)
            ratio = t["scipy"] / t["minidetr"]
            row = [str(n), fmt(t["minidetr"]), fmt(t["scipy"]), f"{ratio:.2f}x"]
            row += [fmt(t["lap"])] if lap else []
            row += [fmt(t["lapjv"])] if lapjv else []
            rows.append(row)
        table(title, header, rows)


# ---------------------------------------------------------------- 2. DETR's workload


def detr_workload(rng: np.random.Generator, n_images=64, n_queries=100, max_targets=20):
    sizes = rng.integers(1, max_targets + 1, n_images)
    padded = rng.random((n_images, n_queries, max_targets))  # (B, Q, Tmax)
    per_image = [np.ascontiguousarray(padded[b, :, :t]) for b, t in enumerate(sizes)]
    whole = np.concatenate(per_image, axis=1)  # (Q, S): DETR's C[i] for every i, side by side
    offsets = np.cumsum([0, *sizes])
    views = [whole[:, offsets[b] : offsets[b + 1]] for b in range(n_images)]  # as C.split(...)
    stacked = np.ascontiguousarray(whole.T)  # (S, Q)
    return sizes, per_image, views, stacked


def bench_batch(rng: np.random.Generator, quick: bool) -> None:
    sizes, per_image, views, stacked = detr_workload(rng)
    size_list = sizes.tolist()
    contenders = {
        "SciPy loop, contiguous (100, T) matrices": lambda: [scipy_lsa(c) for c in per_image],
        "SciPy loop, views of one cost (DETR's split)": lambda: [scipy_lsa(c) for c in views],
        "minidetr batch, list of (100, T) matrices": lambda: linear_sum_assignment_batch(per_image),
        "minidetr batch, views of one cost": lambda: linear_sum_assignment_batch(views),
        "minidetr stacked (sum T, 100), the matcher's": lambda: linear_sum_assignment_stacked(
            stacked, size_list
        ),
        "minidetr loop of single calls": lambda: [linear_sum_assignment(c) for c in per_image],
    }
    if lap:
        contenders["lap.lapjv loop (extend_cost)"] = lambda: [
            lap.lapjv(c, extend_cost=True) for c in per_image
        ]
    t = best_times(contenders, rounds=5 if quick else 25, number=20)
    base = t["SciPy loop, contiguous (100, T) matrices"]
    rows = [[name, fmt(s), f"{base / s:.2f}x"] for name, s in t.items()]
    table(
        f"DETR's workload: 64 images x 100 queries, 1-20 targets (sum {int(sizes.sum())})",
        ["solver", "time", "speed-up vs SciPy loop"],
        rows,
    )


# ---------------------------------------------------------------- 3. the whole matcher


def to_xyxy(b: np.ndarray) -> np.ndarray:
    return np.concatenate([b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2], axis=-1)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def detr_recipe(outputs: dict, targets: list[dict]) -> list:
    """DETR's HungarianMatcher.forward in NumPy: every query against every target."""
    bs, num_queries = outputs["pred_logits"].shape[:2]
    out_prob = softmax(outputs["pred_logits"].reshape(bs * num_queries, -1))  # (B Q, C + 1)
    out_bbox = outputs["pred_boxes"].reshape(bs * num_queries, 4)  # (B Q, 4)
    tgt_ids = np.concatenate([t["labels"] for t in targets])  # (S,)
    tgt_bbox = np.concatenate([t["boxes"] for t in targets])  # (S, 4)
    cost_class = -out_prob[:, tgt_ids]
    cost_bbox = cdist(out_bbox, tgt_bbox, "cityblock")  # torch.cdist(..., p=1)
    cost_giou = -numpy_giou(to_xyxy(out_bbox), to_xyxy(tgt_bbox))
    c = (5 * cost_bbox + 1 * cost_class + 2 * cost_giou).reshape(bs, num_queries, -1)
    splits = np.cumsum([len(t["boxes"]) for t in targets])[:-1]
    return [scipy_lsa(ci[i]) for i, ci in enumerate(np.split(c, splits, axis=-1))]


def per_image_recipe(outputs: dict, targets: list[dict]) -> list:
    """The same costs in NumPy, only each image's (Q, T) block, then SciPy per image."""
    prob = softmax(outputs["pred_logits"])  # (B, Q, C + 1)
    result = []
    for b, t in enumerate(targets):
        boxes = outputs["pred_boxes"][b]  # (Q, 4)
        c = (
            5 * cdist(boxes, t["boxes"], "cityblock")
            - prob[b][:, t["labels"]]
            - 2 * numpy_giou(to_xyxy(boxes), to_xyxy(t["boxes"]))
        )
        result.append(scipy_lsa(c))
    return result


def bench_matcher(rng: np.random.Generator, quick: bool) -> None:
    n_images, n_queries, n_classes = 64, 100, 91
    sizes = rng.integers(1, 21, n_images)

    def boxes(n: int) -> np.ndarray:
        return np.concatenate([rng.uniform(0.2, 0.8, (n, 2)), rng.uniform(0.05, 0.4, (n, 2))], -1)

    outputs = {
        "pred_logits": rng.normal(size=(n_images, n_queries, n_classes + 1)),
        "pred_boxes": boxes(n_images * n_queries).reshape(n_images, n_queries, 4),
    }
    targets = [{"labels": rng.integers(0, n_classes, t), "boxes": boxes(t)} for t in sizes]
    matcher = HungarianMatcher()
    ours, want = matcher(outputs, targets), detr_recipe(outputs, targets)
    if not all(np.array_equal(a[1], b[1]) for a, b in zip(ours, want)):
        raise RuntimeError("the matcher and DETR's recipe disagree")
    contenders = {
        "DETR's recipe (NumPy + SciPy loop), whole-batch cost": lambda: detr_recipe(
            outputs, targets
        ),
        "same recipe, per-image cost blocks": lambda: per_image_recipe(outputs, targets),
        "minidetr HungarianMatcher": lambda: matcher(outputs, targets),
    }
    t = best_times(contenders, rounds=3 if quick else 7, number=1 if quick else 3)
    base = t["DETR's recipe (NumPy + SciPy loop), whole-batch cost"]
    rows = [[name, fmt(s), f"{base / s:.2f}x"] for name, s in t.items()]
    table(
        f"Whole matcher: 64 images x 100 queries, 92 logits, 1-20 targets (sum {int(sizes.sum())})",
        ["matcher", "time", "speed-up vs DETR's recipe"],
        rows,
    )


# ---------------------------------------------------------------- compile time


SNIPPET = """
import time
start = time.perf_counter()
import numpy as np
from minidetr.assignment import (
    linear_sum_assignment, linear_sum_assignment_batch, linear_sum_assignment_stacked)
imported = time.perf_counter()
linear_sum_assignment(np.random.rand(5, 5))
linear_sum_assignment(np.random.rand(5, 3), maximize=True)
linear_sum_assignment_batch([np.random.rand(4, 3), np.random.rand(3, 4)])
linear_sum_assignment_stacked(np.random.rand(5, 4), [2, 3])
print(imported - start, time.perf_counter() - imported)
"""


def bench_compile() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for label in ("cold: compile into an empty cache", "warm: load the cached machine code"):
            out = subprocess.run(
                [sys.executable, "-c", SNIPPET], env=env, capture_output=True, text=True, check=True
            )
            imported, first_calls = (float(x) for x in out.stdout.split())
            rows.append([label, f"{imported:.2f} s", f"{first_calls:.2f} s"])
    table("One-time cost (fresh process)", ["start", "import", "first calls"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke test)")
    parser.add_argument("--wall", action="store_true", help="wall-clock instead of CPU time")
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.perf_counter if args.wall else time.process_time
    rng = np.random.default_rng(0)
    versions = f"NumPy {np.__version__}, SciPy {__import__('scipy').__version__}"
    versions += f", lap {lap.__version__}" if lap else ""
    versions += f", lapjv {lapjv.__version__}" if lapjv and hasattr(lapjv, "__version__") else ""
    clock = "wall-clock" if args.wall else "CPU"
    print(f"# Linear assignment benchmark ({versions}; {os.cpu_count()} CPUs; {clock} time)")
    bench_compile()
    bench_square(rng, args.quick)
    bench_batch(rng, args.quick)
    bench_matcher(rng, args.quick)


if __name__ == "__main__":
    main()
