"""Efficient attention measured: Performer's approximation error, and time and memory against N.

Run:  python benchmarks/bench_attention.py [--repeat 5] [--threads 1] [--out benchmarks/results]
                                           [--sizes 256 512 1024 2048 4096] [--quick]

Part 1, approximation. Relative error ||out - exact|| / ||exact|| of Performer attention
against exact softmax attention (L = 256 tokens, d = 32, random values), mean over 8
projections, with q, k ~ s N(0, I) (logits q . k / sqrt(d) of standard deviation s^2):
against the number of features m at s = 0.5 for iid / orthogonal projections and
positive / trig features, and against s at m = 256.

Part 2, cost. Forward and forward+backward time (best of ``--repeat`` rounds, the
contenders interleaved within each round) and peak memory (tracemalloc, a separate
untimed run) of one head, d = dv = 32, for: exact softmax, linear (elu), Performer
(m = 128, positive), top-k (k = 32; forms all scores), windowed (w = 16, the Numba
kernel), Linformer (r = 128) and hierarchical attention (4 x 4 cells, 8 kept),
on an H x W grid of N tokens. PyTorch's ``scaled_dot_product_attention`` joins when
PyTorch is installed. Threads are capped (``--threads``) for NumPy's BLAS and Numba.

Writes attention_error.{json,png}, attention_cost.{json,md,png} under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import tracemalloc
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numba  # noqa: E402
import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from minidetr import attention as att  # noqa: E402

try:
    import torch
except ImportError:  # optional contender
    torch = None

D = 32


# ------------------------------------------------------------------------ approximation


def relative_error(out, exact) -> float:
    return float(np.linalg.norm(out - exact) / np.linalg.norm(exact))


def approximation(seeds: int = 8, length: int = 256) -> dict:
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal((length, D)), rng.standard_normal((length, D))
    v = rng.standard_normal((length, D))
    curves = {}
    for kind in ("positive", "trig"):
        for orthogonal in (False, True):
            label = f"{kind}, {'orthogonal' if orthogonal else 'iid'}"
            by_m = {}
            for m in (16, 32, 64, 128, 256, 512, 1024):
                by_m[m] = _mean_error(q, k, v, 0.5, m, kind, orthogonal, seeds)
            by_s = {}
            for s in (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0):
                by_s[s] = _mean_error(q, k, v, s, 256, kind, orthogonal, seeds)
            curves[label] = {"m": by_m, "scale": by_s}
    return curves


def _mean_error(q, k, v, s, m, kind, orthogonal, seeds) -> float:
    exact, _ = att.scaled_dot_product_attention_forward(s * q, s * k, v)
    errors = []
    for seed in range(seeds):
        w = att.draw_projection(D, m, orthogonal=orthogonal, seed=seed)
        out, _ = att.performer_attention_forward(s * q, s * k, v, w, kind=kind)
        errors.append(relative_error(out, exact))
    return float(np.mean(errors))


def plot_error(curves: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, c in curves.items():
        style = "-" if "orthogonal" in label else "--"
        axes[0].loglog(list(c["m"]), list(c["m"].values()), style, marker="o", label=label)
        axes[1].semilogy(list(c["scale"]), list(c["scale"].values()), style, marker="o")
    axes[0].set(xlabel="random features m", ylabel="relative error of the output",
                title=f"against m (L=256, d={D}, q, k ~ 0.5 N(0, I))")  # fmt: skip
    axes[1].axhline(1.0, color="k", lw=0.8, ls=":")
    axes[1].set(xlabel="scale s of q and k (logit std s^2)", ylabel="relative error",
                title="against the norms of q and k (m=256)")  # fmt: skip
    axes[0].legend(fontsize=8)
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------ cost


def grid_of(n: int) -> tuple[int, int]:
    h = 2 ** (int(np.log2(n)) // 2)
    return h, n // h


def contenders(n: int, rng) -> dict:
    """name -> (forward, backward) closures over fixed inputs of N tokens."""
    q, k, v = (rng.standard_normal((1, n, D)) for _ in range(3))
    w = att.draw_projection(D, 128)
    e, f = (rng.standard_normal((128, n)) / np.sqrt(n) for _ in range(2))
    grid = grid_of(n)
    ops = {
        "exact": (lambda: att.scaled_dot_product_attention_forward(q, k, v),
                  att.scaled_dot_product_attention_backward),
        "linear": (lambda: att.linear_attention_forward(q, k, v), att.linear_attention_backward),
        "performer": (lambda: att.performer_attention_forward(q, k, v, w),
                      att.performer_attention_backward),
        "top-k": (lambda: att.topk_attention_forward(q, k, v, top_k=32),
                  att.topk_attention_backward),
        "window": (lambda: att.window_attention_forward(q, k, v, window=16),
                   att.window_attention_backward),
        "linformer": (lambda: att.linformer_attention_forward(q, k, v, e, f),
                      att.linformer_attention_backward),
        "hierarchical": (lambda: att.hierarchical_attention_forward(
                             q, k, v, grid=grid, cell=4, keep=min(8, n // 16)),
                         att.hierarchical_attention_backward),
    }  # fmt: skip
    if torch is not None:
        tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
        sdpa = torch.nn.functional.scaled_dot_product_attention

        def torch_backward(dout, out):
            out.backward(torch.from_numpy(dout))

        ops["torch sdpa"] = (lambda: (lambda o: (o, o))(sdpa(tq, tk, tv)), torch_backward)
    return ops


def _run(forward, backward, with_backward: bool):
    out, cache = forward()
    if with_backward:
        o = out.detach().numpy() if hasattr(out, "detach") else out
        backward(np.ones_like(o), cache)


def cost(sizes, repeat: int) -> dict:
    rng = np.random.default_rng(0)
    table = {}
    for n in sizes:
        ops = contenders(n, rng)
        for fwd, bwd in ops.values():  # warm up: Numba compiles or loads its cache
            _run(fwd, bwd, True)
        best = {(name, b): np.inf for name in ops for b in (False, True)}
        for _ in range(repeat):
            for name, (fwd, bwd) in ops.items():
                for b in (False, True):
                    start = time.perf_counter()
                    _run(fwd, bwd, b)
                    best[name, b] = min(best[name, b], time.perf_counter() - start)
        for name, (fwd, bwd) in ops.items():
            tracemalloc.start()
            _run(fwd, bwd, True)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            table.setdefault(name, {})[n] = {
                "forward_ms": 1e3 * best[name, False],
                "forward_backward_ms": 1e3 * best[name, True],
                "peak_mib": peak / 2**20,
            }
        print(
            f"N={n}: "
            + ", ".join(f"{k} {v[n]['forward_backward_ms']:.1f} ms" for k, v in table.items())
        )
    return table


def crossover(table: dict, key: str) -> dict:
    """Smallest measured N from which each contender stays faster than exact attention."""
    sizes = sorted(table["exact"])
    result = {}
    for name, rows in table.items():
        faster = [rows[n][key] < table["exact"][n][key] for n in sizes]
        result[name] = next((n for i, n in enumerate(sizes) if all(faster[i:])), None)
    return result


def markdown(table: dict, load: tuple[float, float], threads: int) -> str:
    sizes = sorted(table["exact"])
    lines = [f"Times in ms (best of the rounds), peak memory in MiB; one head, d = {D}, "
             f"{threads} thread(s); load average {load[0]:.1f} before, {load[1]:.1f} after.",
             ""]  # fmt: skip
    for key, what in (("forward_ms", "forward"), ("forward_backward_ms", "forward + backward"),
                      ("peak_mib", "peak memory of forward + backward (MiB)")):  # fmt: skip
        lines += [f"**{what}**", "", "| N | " + " | ".join(table) + " |",
                  "|---|" + "---:|" * len(table)]  # fmt: skip
        for n in sizes:
            lines.append(f"| {n} | " + " | ".join(f"{table[c][n][key]:.1f}" for c in table) + " |")
        lines.append("")
    cross = crossover(table, "forward_backward_ms")
    lines.append("Crossover (forward + backward): the smallest N from which each beats exact: "
                 + ", ".join(f"{k} {v if v is not None else 'never here'}"
                             for k, v in cross.items() if k != "exact"))  # fmt: skip
    top = max(sizes)
    speedup = (
        table["exact"][top]["forward_backward_ms"] / table["linear"][top]["forward_backward_ms"]
    )
    lines += [
        "",
        f"Linear attention forward + backward at N = {top}: {speedup:.0f}x faster than exact.",
    ]
    return "\n".join(lines) + "\n"


def plot_cost(table: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for name, rows in table.items():
        ns = sorted(rows)
        for ax, key in zip(axes, ("forward_ms", "forward_backward_ms", "peak_mib")):
            ax.loglog(ns, [rows[n][key] for n in ns], marker="o", label=name,
                      lw=2.5 if name == "exact" else 1.2)  # fmt: skip
    for ax, title in zip(axes, ("forward (ms)", "forward + backward (ms)", "peak memory (MiB)")):
        ax.set(xlabel="tokens N", title=title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args()
    sizes = [64, 256] if args.quick else args.sizes
    args.out.mkdir(parents=True, exist_ok=True)
    numba.set_num_threads(args.threads)
    with threadpool_limits(args.threads):
        curves = approximation(seeds=2 if args.quick else 8)
        (args.out / "attention_error.json").write_text(json.dumps(curves, indent=1))
        plot_error(curves, args.out / "attention_error.png")
        load = os.getloadavg()[0]
        table = cost(sizes, args.repeat)
        load = (load, os.getloadavg()[0])
    (args.out / "attention_cost.json").write_text(json.dumps(table, indent=1))
    (args.out / "attention_cost.md").write_text(markdown(table, load, args.threads))
    plot_cost(table, args.out / "attention_cost.png")
    print(markdown(table, load, args.threads))


if __name__ == "__main__":
    main()
