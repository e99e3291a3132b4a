"""The detector with each encoder attention: AP at equal steps, step time, and how sparse and
how low-rank the trained softmax encoder's attention maps are.

Run:  python benchmarks/bench_encoder_attention.py [--kinds softmax linear ...] [--steps 300]
          [--eval-every 150] [--batch-size 16] [--val-images 256] [--jobs 2] [--quick]

Every run trains the ``standard`` preset (plain DETR, 16 encoder tokens on a 4 x 4 grid) with
``TrainConfig``'s defaults, the same data, seed and schedule; only
``ModelConfig.encoder_attention`` changes (the settings of each core are
``minidetr.attention.multihead.CoreSettings``'s). Each run is its own process with one BLAS and
one Numba thread, ``--jobs`` at a time; ms/step is the median step after the first, and
depends on what else the machine ran at the time. One encoder attention layer at the preset's
shape is then timed with the kinds interleaved (best of 20), which compares the kinds fairly.

After training, the softmax run's encoder attention maps on 64 held-out images are measured:
the share of each query's attention mass in its top 1, 2, 4, 8 keys (what top-k keeps) and the
singular values of each (S, S) map, normalised by the largest (how much Linformer's rank r
could keep). Writes ``encoder_attention.{json,md,png}`` into ``--out``.
"""

from __future__ import annotations

import numba
from threadpoolctl import threadpool_limits

threadpool_limits(1)
numba.set_num_threads(1)

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from bench_convergence import run_workers  # noqa: E402

from minidetr.attention.multihead import (  # noqa: E402
    KINDS,
    efficient_multi_head_attention_backward,
    efficient_multi_head_attention_forward,
)
from minidetr.data import collate  # noqa: E402
from minidetr.train.loop import Run, TrainConfig, TrainingError  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def train_and_evaluate(kind: str, args: argparse.Namespace, maps: Path | None) -> dict:
    cfg = replace(
        TrainConfig(),
        preset="standard",
        encoder_attention=kind,
        steps=args.steps,
        batch_size=args.batch_size,
        val_images=args.val_images,
    )
    run = Run(cfg, like=np.zeros(1, np.float32))
    record = {"kind": kind, "evals": [], "step_seconds": [], "losses": [], "diverged": None}

    def evaluate() -> None:
        m = run.evaluate()
        record["evals"].append({"step": run.step, "AP50": m["AP50"], "AP": m["AP"]})
        print(f"{kind}: step {run.step} AP50 {m['AP50']:.3f} AP {m['AP']:.3f}", file=sys.stderr)

    while run.step < args.steps:
        t = time.perf_counter()
        try:
            out = run.train_step()
        except TrainingError as err:
            record["diverged"] = str(err)
            break
        record["step_seconds"].append(time.perf_counter() - t)
        record["losses"].append(out["loss"])
        if run.step % args.eval_every == 0 or run.step == args.steps:
            evaluate()
    if maps is not None:
        record["maps"] = attention_statistics(run)
    return record


def attention_statistics(run: Run) -> dict:
    """Top-k mass and normalised singular values of the encoder's attention maps."""
    images, _ = collate([run.val_set[i] for i in range(min(64, len(run.val_set)))], like=run.like)
    _, cache = run.model.forward(run.params, images, train=False)
    stats = {}
    for i, layer in enumerate(cache.encoder):
        p = np.asarray(layer.attn.attention.p, dtype=np.float64)  # (B, M, S, S)
        ordered = -np.sort(-p, axis=-1)
        top = {k: float(ordered[..., :k].sum(-1).mean()) for k in (1, 2, 4, 8)}
        sv = np.linalg.svd(p, compute_uv=False)  # (B, M, S)
        sv = (sv / sv[..., :1]).reshape(-1, p.shape[-1]).mean(0)
        stats[f"layer {i}"] = {"top_mass": top, "singular_values": sv.tolist()}
    return stats


def layer_times(kinds, repeat: int = 20) -> dict[str, float]:
    """Best forward + backward ms of one encoder self-attention layer at the standard preset's
    shape (B = 16, S = 16 on a 4 x 4 grid, D = 128, M = 8, float32), kinds interleaved."""
    rng = np.random.default_rng(0)
    b, s, d = 16, 16, 128
    x = rng.standard_normal((b, s, d)).astype(np.float32)
    pos = rng.standard_normal((1, s, d)).astype(np.float32)
    w = [(rng.standard_normal(shape) / np.sqrt(d)).astype(np.float32)
         for shape in ((3 * d, d), (3 * d,), (d, d), (d,))]  # fmt: skip
    e, f = (rng.standard_normal((8, s)).astype(np.float32) / 4 for _ in range(2))

    def step(kind):
        out, cache = efficient_multi_head_attention_forward(
            x, x, x, *w, num_heads=8, kind=kind, query_pos=pos, key_pos=pos, grid=(4, 4),
            E=e, F=f,
        )  # fmt: skip
        efficient_multi_head_attention_backward(np.ones_like(out), cache)

    best = {k: np.inf for k in kinds}
    for k in kinds:
        step(k)  # warm up (Numba)
    for _ in range(repeat):
        for k in kinds:
            t = time.perf_counter()
            step(k)
            best[k] = min(best[k], time.perf_counter() - t)
    return {k: 1000 * v for k, v in best.items()}


def run_all(args: argparse.Namespace, work: Path) -> list[dict]:
    flags = ["--steps", str(args.steps), "--batch-size", str(args.batch_size)]
    flags += ["--eval-every", str(args.eval_every), "--val-images", str(args.val_images)]
    records, failed = run_workers(__file__, args.kinds, flags, args.jobs, work)
    for kind in failed:
        print(f"{kind}: failed", file=sys.stderr)
    order = {k: i for i, k in enumerate(args.kinds)}
    return sorted(records, key=lambda r: order[r["kind"]])


def report(
    records: list[dict], args: argparse.Namespace, load: tuple[float, float], layer: dict
) -> str:
    steps = sorted({e["step"] for r in records for e in r["evals"]})
    lines = [
        "# Encoder attention at equal steps",
        "",
        f"`standard` preset, batch {args.batch_size}, AP50 / AP on {args.val_images} held-out "
        f"shapes images; one thread per run, {args.jobs} runs at a time; load average "
        f"{load[0]:.1f} at the start, {load[1]:.1f} at the end (a shared machine).",
        "",
        "| encoder attention | "
        + " | ".join(f"step {s}" for s in steps)
        + " | ms/step (load-dependent) | one encoder attention layer, fwd + bwd (ms) |",
        "|---|" + "---:|" * (len(steps) + 2),
    ]
    for r in records:
        by_step = {e["step"]: e for e in r["evals"]}
        cells = [
            f"{by_step[s]['AP50']:.3f} / {by_step[s]['AP']:.3f}" if s in by_step else "—"
            for s in steps
        ]
        ms = 1000 * float(np.median(r["step_seconds"][1:] or r["step_seconds"] or [np.nan]))
        note = " (diverged)" if r["diverged"] else ""
        lines.append(
            f"| {r['kind']}{note} | "
            + " | ".join(cells)
            + f" | {ms:.0f} | {layer.get(r['kind'], float('nan')):.2f} |"
        )
    for r in records:
        for layer, s in r.get("maps", {}).items():
            top = ", ".join(f"top {k}: {v:.2f}" for k, v in s["top_mass"].items())
            sv = ", ".join(f"{x:.2f}" for x in s["singular_values"][:8])
            lines += ["", f"Trained {r['kind']} encoder, {layer}: attention mass in {top}; "
                      f"singular values / largest (mean over maps): {sv} ..."]  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(records: list[dict], path: Path) -> None:
    maps = next((r["maps"] for r in records if "maps" in r), None)
    fig, axes = plt.subplots(1, 3 if maps else 1, figsize=(15 if maps else 5, 3.8), squeeze=False)
    ax = axes[0, 0]
    for r in records:
        ax.plot(
            [e["step"] for e in r["evals"]], [e["AP50"] for e in r["evals"]], "o-", label=r["kind"]
        )
    ax.set(xlabel="step", ylabel="AP50", title="standard preset, by encoder attention")
    ax.legend(fontsize=8)
    if maps:
        for layer, s in maps.items():
            sv = s["singular_values"]
            axes[0, 1].semilogy(range(1, len(sv) + 1), sv, "o-", label=layer)
            ks = list(s["top_mass"])
            axes[0, 2].plot([int(k) for k in ks], list(s["top_mass"].values()), "o-", label=layer)
        axes[0, 1].set(xlabel="index", ylabel="singular value / largest",
                       title="trained softmax encoder maps: spectrum")  # fmt: skip
        axes[0, 2].set(xlabel="k keys kept", ylabel="share of attention mass",
                       title="mass in each query's top k keys")  # fmt: skip
        axes[0, 1].legend()
        axes[0, 2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--val-images", type=int, default=256)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--quick", action="store_true", help="20 steps, for a smoke run")
    parser.add_argument(
        "--report-only", action="store_true", help="redo the layer timing and the report only"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        maps = args.worker_out if args.worker == "softmax" else None
        record = train_and_evaluate(args.worker, args, maps)
        args.worker_out.write_text(json.dumps(record))
        return
    if args.quick:
        args.steps, args.eval_every, args.val_images = 20, 10, 32
        args.out = args.out or Path(tempfile.mkdtemp())
    out = args.out or RESULTS
    out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    if args.report_only:
        saved = json.loads((out / "encoder_attention.json").read_text())
        records, load = saved["runs"], tuple(saved["load"])
    else:
        with tempfile.TemporaryDirectory() as work:
            records = run_all(args, Path(work))
        load = (load, os.getloadavg()[0])
    (out / "encoder_attention.json").write_text(
        json.dumps({"runs": records, "load": load}, indent=1)
    )
    layer = layer_times([r["kind"] for r in records])
    text = report(records, args, load, layer)
    (out / "encoder_attention.md").write_text(text)
    plot(records, out / "encoder_attention.png")
    print(text)


if __name__ == "__main__":
    main()
