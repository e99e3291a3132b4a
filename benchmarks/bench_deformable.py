"""Deformable attention: reference vs Numba CPU vs PyTorch grid_sample; dense vs deformable.

Run:  python benchmarks/bench_deformable.py [--dtype float32] [--repeat 7] [--threads 2]
                                           [--plot speedup.png] [--skip-dense]

Part 1 times forward and forward+backward on a Deformable-DETR-like configuration
(B=2, Q=300, M=8, Dh=32, four levels 32x32 .. 4x4, P=4) for the plain array-API
reference, the Numba CPU kernel, and, when PyTorch is installed, the same function
written with ``torch.nn.functional.grid_sample`` (Deformable DETR's pure-PyTorch
path) with autograd for the backward. Numba's first call (compilation, or loading
from its cache) is reported apart.

Part 2 measures the claim behind deformable attention: encoder self-attention,
where every one of the N tokens of a four-level pyramid is a query, costs O(N^2)
dense and O(N K) deformable, K = L * P samples per head. It times
``scaled_dot_product_attention`` (NumPy) against the Numba kernel as the map grows
and reports the speed-up against N / K. Timings are the best of ``--repeat`` runs
(the least disturbed by other processes); each table is markdown.
"""

from __future__ import annotations

import argparse
import time

import numba
import numpy as np

from minidetr.attention import (
    scaled_dot_product_attention_backward,
    scaled_dot_product_attention_forward,
)
from minidetr.deformable import ms_deform_attn_backward, ms_deform_attn_forward
from minidetr.kernels import ms_deform_cpu

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # PyTorch is optional: the comparison column is left out
    torch = None


def best_ms(fn, repeat: int) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def pyramid(height: int, levels: int) -> list[tuple[int, int]]:
    return [(max(1, height >> i), max(1, height >> i)) for i in range(levels)]


def make_inputs(rng, batch, queries, heads, head_dim, shapes, points, dtype):
    s = sum(h * w for h, w in shapes)
    value = rng.standard_normal((batch, s, heads, head_dim)).astype(dtype)
    loc = rng.uniform(-0.05, 1.05, (batch, queries, heads, len(shapes), points, 2)).astype(dtype)
    logits = rng.standard_normal((batch, queries, heads, len(shapes) * points))
    attn = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    attn = attn.reshape(batch, queries, heads, len(shapes), points).astype(dtype)
    return value, loc, attn


def torch_ms_deform_attn(value, shapes, loc, attn):
    """The same function with grid_sample, level by level (Deformable DETR's PyTorch path)."""
    b, _, m, dh = value.shape
    q, n_levels, p = loc.shape[1], loc.shape[3], loc.shape[4]
    per_level = value.split([h * w for h, w in shapes], dim=1)
    grid = 2.0 * loc - 1.0  # grid_sample wants [-1, 1]
    samples = []
    for level, (h, w) in enumerate(shapes):
        v = per_level[level].permute(0, 2, 3, 1).reshape(b * m, dh, h, w)
        g = grid[:, :, :, level].transpose(1, 2).reshape(b * m, q, p, 2)
        samples.append(
            F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)
        )  # (B*M, Dh, Q, P)
    a = attn.transpose(1, 2).reshape(b * m, 1, q, n_levels * p)
    out = (torch.stack(samples, dim=-2).flatten(-2) * a).sum(-1)  # (B*M, Dh, Q)
    return out.view(b, m * dh, q).transpose(1, 2).contiguous()


def bench_op(args) -> None:
    dtype = np.dtype(args.dtype)
    rng = np.random.default_rng(0)
    shapes = pyramid(32, 4)
    value, loc, attn = make_inputs(rng, 2, 300, 8, 32, shapes, 4, dtype)
    dout = rng.standard_normal((2, 300, 8 * 32)).astype(dtype)

    start = time.perf_counter()
    out, cache = ms_deform_attn_forward(value, shapes, loc, attn, impl="numba")
    ms_deform_attn_backward(dout, cache)
    first = time.perf_counter() - start
    hits = sum(
        sum(k.stats.cache_hits.values())
        for k in (ms_deform_cpu._forward_parallel, ms_deform_cpu._backward_parallel)
    )
    how = "loaded from Numba's cache" if hits else "compiled"
    print(f"Numba first forward+backward call: {first:.2f} s ({how})\n")

    def run(impl, backward):
        def fn():
            o, c = ms_deform_attn_forward(value, shapes, loc, attn, impl=impl)
            if backward:
                ms_deform_attn_backward(dout, c)

        return fn

    rows = {}
    for impl in ("reference", "numba"):
        rows[impl] = [best_ms(run(impl, b), args.repeat) for b in (False, True)]
    ref_out, _ = ms_deform_attn_forward(value, shapes, loc, attn, impl="reference")
    diffs = {"numba": float(np.max(np.abs(out - ref_out)))}

    if torch is not None:
        tv, tl, ta = (torch.from_numpy(a).requires_grad_() for a in (value, loc, attn))
        td = torch.from_numpy(dout)

        def torch_fwd():
            with torch.no_grad():
                torch_ms_deform_attn(tv, shapes, tl, ta)

        def torch_fwd_bwd():
            for t in (tv, tl, ta):
                t.grad = None
            torch_ms_deform_attn(tv, shapes, tl, ta).backward(td)

        rows["torch grid_sample"] = [best_ms(f, args.repeat) for f in (torch_fwd, torch_fwd_bwd)]
        t_out = torch_ms_deform_attn(tv, shapes, tl, ta).detach().numpy()
        diffs["torch grid_sample"] = float(np.max(np.abs(t_out - ref_out)))

    threads = f"Numba {numba.get_num_threads()} threads ({numba.threading_layer()})"
    if torch is not None:
        threads += f", PyTorch {torch.__version__} {torch.get_num_threads()} threads"
    print(f"B=2 Q=300 M=8 Dh=32 levels {shapes} P=4, {dtype}; {threads}\n")
    print("| implementation | forward (ms) | forward+backward (ms) | max abs diff vs reference |")
    print("| --- | ---: | ---: | ---: |")
    for name, (fwd, both) in rows.items():
        diff = f"{diffs[name]:.1e}" if name in diffs else "-"
        print(f"| {name} | {fwd:.2f} | {both:.2f} | {diff} |")
    print()


def bench_dense_vs_deformable(args) -> list[tuple[float, float]]:
    dtype = np.dtype(args.dtype)
    rng = np.random.default_rng(1)
    heads, head_dim, levels, points = 8, 32, 4, 4
    k = levels * points
    print(f"Encoder self-attention, B=1, M={heads}, Dh={head_dim}, {levels} levels, P={points}")
    print("(K = L*P = 16 samples per head), every token a query; forward and forward+backward.\n")
    print("| finest map | N tokens | N/K | dense fwd (ms) | deformable fwd (ms) | speed-up fwd "
          "| dense fwd+bwd (ms) | deformable fwd+bwd (ms) | speed-up fwd+bwd |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    points_out = []
    for h in args.sizes:
        shapes = pyramid(h, levels)
        n = sum(a * b for a, b in shapes)
        value, loc, attn = make_inputs(rng, 1, n, heads, head_dim, shapes, points, dtype)
        qkv = [rng.standard_normal((1, heads, n, head_dim)).astype(dtype) for _ in range(3)]
        dout = rng.standard_normal((1, n, heads * head_dim)).astype(dtype)
        dout_dense = dout.reshape(1, n, heads, head_dim).transpose(0, 2, 1, 3)

        def dense(backward, qkv=qkv, dout_dense=dout_dense):
            o, c = scaled_dot_product_attention_forward(*qkv)
            if backward:
                scaled_dot_product_attention_backward(dout_dense, c)

        def deform(backward, value=value, shapes=shapes, loc=loc, attn=attn, dout=dout):
            o, c = ms_deform_attn_forward(value, shapes, loc, attn, impl="numba")
            if backward:
                ms_deform_attn_backward(dout, c)

        repeat = max(3, args.repeat // 2)
        t = [best_ms(lambda b=b, f=f: f(b), repeat) for b in (False, True) for f in (dense, deform)]
        points_out.append((n / k, t[0] / t[1], t[2] / t[3]))
        print(f"| {h}x{h} | {n} | {n / k:.0f} | {t[0]:.1f} | {t[1]:.1f} | {t[0] / t[1]:.1f}x "
              f"| {t[2]:.1f} | {t[3]:.1f} | {t[2] / t[3]:.1f}x |")  # fmt: skip
    print()
    return points_out


def plot(points, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratio, fwd, both = zip(*points)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.loglog(ratio, fwd, "o-", label="forward")
    ax.loglog(ratio, both, "s-", label="forward+backward")
    ax.set_xlabel("N / K (tokens per sample read)")
    ax.set_ylabel("dense time / deformable time")
    ax.set_title("Dense vs deformable self-attention")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 24, 32, 48])
    parser.add_argument("--plot", default=None, help="save the speed-up plot to this file")
    parser.add_argument(
        "--threads", type=int, default=None, help="threads for Numba, PyTorch, BLAS"
    )
    parser.add_argument("--skip-dense", action="store_true", help="only the first table")
    args = parser.parse_args()
    if args.threads:
        numba.set_num_threads(args.threads)
        if torch is not None:
            torch.set_num_threads(args.threads)
        try:  # NumPy's BLAS (dense attention) keeps its own thread pool
            from threadpoolctl import threadpool_limits
        except ImportError:
            pass
        else:
            threadpool_limits(args.threads)
    bench_op(args)
    if args.skip_dense:
        return
    points = bench_dense_vs_deformable(args)
    if args.plot:
        plot(points, args.plot)


if __name__ == "__main__":
    main()
