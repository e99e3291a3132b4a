"""Convergence at equal steps: COCO AP50 / AP of each DETR variant on the held-out shapes split.

Run:  python benchmarks/bench_convergence.py [--configs NAME ...] [--steps 800]
          [--batch-size 16] [--eval-every 200] [--val-images 256] [--jobs 2] [--quick]

Every configuration trains with the same data, seed, batch size, step count and
learning-rate schedule (``TrainConfig``'s defaults otherwise); only the model
or one training switch changes:

- ``deformable``: the default preset (multi-scale deformable attention, focal
  loss, anchor queries refined layer by layer, two-stage query selection,
  denoising queries), with auxiliary losses;
- ``deformable-no-dn``: the same without denoising queries (``dn_groups=0``);
- ``deformable-no-aux``: the same without auxiliary losses (``aux_loss=False``);
- ``standard``: plain DETR (single-scale attention, softmax cross-entropy,
  learned queries, no denoising), with auxiliary losses;
- ``standard-no-aux``: plain DETR without auxiliary losses.

``NAME@LR`` runs a configuration at another peak learning rate (for example
``standard@2e-4``); ``NAME,FIELD=VALUE,...`` changes fields of ``TrainConfig`` or
of the preset's ``ModelConfig`` (for example ``deformable,num_queries=32,dn_groups=5``).
The model is evaluated with COCO AP (faster-coco-eval) on ``--val-images`` held-out
images at step 0 and every ``--eval-every`` steps. ``--ema D ...`` also keeps an
exponential moving average of the weights for each decay D (``minidetr.train.ema``;
training is unchanged) and evaluates each average beside the trained weights, so one
run answers what the average buys at every evaluated step.

Each configuration runs in its own process, ``--jobs`` at a time, with one
BLAS and one Numba thread (on two cores two single-threaded runs side by side
measured about twice as fast as multi-threaded runs one after the other).
``ms/step`` is the median training step (sampling, forward, loss, backward,
optimizer; evaluation excluded); the first step, which includes Numba's
compilation or cache load, is reported apart as ``first step``. Timings depend
on what else the machine runs; the steps are what is compared.

Writes into ``--out`` (default ``benchmarks/results``), with file names starting
``--prefix`` (default ``convergence``): ``convergence.json``
(every run's evaluations and losses; runs of other configurations with the same
settings are kept, so a configuration can be added later), ``convergence.md``
(the table) and ``convergence.png`` (AP50 and AP against step). ``--report-only`` rewrites the
table and the plot from ``convergence.json`` without training. ``--quick`` is a
smoke run (40 steps, evaluation every 20 on 32 images) written to a temporary
folder unless ``--out`` is given.
"""

from __future__ import annotations

# One BLAS and one Numba thread, set before any array work.
import numba
from threadpoolctl import threadpool_limits

threadpool_limits(1)
numba.set_num_threads(1)

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import fields, replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from minidetr.model import PRESETS, ModelConfig  # noqa: E402
from minidetr.train.ema import check_decay, ema_init, ema_update  # noqa: E402
from minidetr.train.loop import Run, TrainConfig, TrainingError, evaluate_model  # noqa: E402

# name -> (preset, TrainConfig overrides)
CONFIGS: dict[str, tuple[str, dict[str, object]]] = {
    "deformable": ("deformable", {}),
    "deformable-no-dn": ("deformable", {"dn_groups": 0}),
    "deformable-no-aux": ("deformable", {"aux_loss": False}),
    "standard": ("standard", {}),
    "standard-no-aux": ("standard", {"aux_loss": False}),
}
DESCRIPTIONS = {
    "deformable": "default preset: deformable attention, focal loss, anchors + box refinement, "
    "two-stage, denoising, auxiliary losses",
    "deformable-no-dn": "the same without denoising queries",
    "deformable-no-aux": "the same without auxiliary losses",
    "standard": "plain DETR: single-scale attention, softmax cross-entropy, learned queries, "
    "auxiliary losses",
    "standard-no-aux": "plain DETR without auxiliary losses",
}
RESULTS = Path(__file__).resolve().parent / "results"


def _value(text: str) -> object:
    """A field's value as written after ``=``: an int, a float, true/false, or the text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_name(name: str) -> tuple[str, dict[str, object], dict[str, object]]:
    """``NAME[,FIELD=VALUE...][@LR]`` -> (preset, TrainConfig overrides, ModelConfig overrides)."""
    spec, _, lr = name.partition("@")
    base, *changes = spec.split(",")
    if base not in CONFIGS:
        raise ValueError(f"unknown configuration {base!r}; choose from {', '.join(CONFIGS)}")
    preset, overrides = CONFIGS[base]
    overrides, model = dict(overrides), {}
    train_fields = {f.name for f in fields(TrainConfig)}
    model_fields = {f.name for f in fields(ModelConfig)}
    for change in changes:
        key, eq, text = change.partition("=")
        if not eq or key not in train_fields | model_fields:
            raise ValueError(f"{change!r} in {name!r} is not FIELD=VALUE of a config field")
        (overrides if key in train_fields else model)[key] = _value(text)
    if lr:
        try:
            overrides["lr"] = float(lr)
        except ValueError:
            raise ValueError(f"learning rate {lr!r} in {name!r} is not a number") from None
    return preset, overrides, model


def refuse_bad_args(
    parser: argparse.ArgumentParser, args: argparse.Namespace, positive: tuple[str, ...]
) -> None:
    """One-line CLI errors for the ``positive`` options below 1 and unparsable ``--configs``."""
    for name in positive:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in args.configs:
        try:
            parse_name(name)
        except ValueError as err:
            parser.error(str(err))


def make_run(name: str, steps: int, batch_size: int, val_images: int) -> Run:
    """The run of configuration ``name``; a changed model is registered as preset ``name``."""
    preset, overrides, model = parse_name(name)
    if model:
        PRESETS[name] = replace(PRESETS[preset], **model)  # this worker process only
        preset = name
    cfg = replace(
        TrainConfig(),
        preset=preset,
        steps=steps,
        batch_size=batch_size,
        val_images=val_images,
        **overrides,
    )
    return Run(cfg, like=np.zeros(1, np.float32))


def train_and_evaluate(
    name: str,
    steps: int,
    batch_size: int,
    eval_every: int,
    val_images: int,
    ema_decays: tuple[float, ...] = (),
):
    """Train configuration ``name`` for ``steps`` steps, evaluating every ``eval_every``
    the weights and their moving average for each of ``ema_decays``."""
    run = make_run(name, steps, batch_size, val_images)
    cfg = run.cfg
    record: dict[str, object] = {
        "name": name,
        "preset": run.model.config.variant,
        "lr": cfg.lr,
        "aux_loss": cfg.aux_loss,
        "denoising": bool(run.model.config.denoising and cfg.dn_groups > 0),
        "params": run.model.num_params(),
        "evals": [],
        "losses": [],
        "step_seconds": [],
        "diverged": None,
        "ema": list(ema_decays),
    }
    averages = {d: ema_init(run.params) for d in ema_decays}

    def evaluate() -> None:
        t = time.perf_counter()
        metrics = run.evaluate()
        entry = {"step": run.step, **{k: metrics[k] for k in ("AP50", "AP", "AP75")}}
        message = f"AP50 {metrics['AP50']:.3f} AP {metrics['AP']:.3f}"
        for d, avg in averages.items():
            m = evaluate_model(run.model, avg.params, run.val_set, run.like)
            entry[f"ema {d:g}"] = {k: m[k] for k in ("AP50", "AP", "AP75")}
            message += f"; EMA {d:g} AP50 {m['AP50']:.3f} AP {m['AP']:.3f}"
        record["evals"].append(entry)
        print(
            f"{name}: step {run.step} {message} ({time.perf_counter() - t:.1f} s)",
            file=sys.stderr,
            flush=True,
        )

    evaluate()
    while run.step < steps:
        t = time.perf_counter()
        try:
            out = run.train_step()
        except TrainingError as err:  # a diverged run is a result, not a crash
            record["diverged"] = str(err)
            print(f"{name}: diverged: {err}", file=sys.stderr, flush=True)
            break
        averages = {d: ema_update(avg, run.params, d) for d, avg in averages.items()}
        record["step_seconds"].append(round(time.perf_counter() - t, 4))
        record["losses"].append(round(out["loss"], 4))
        if run.step % eval_every == 0 or run.step == steps:
            evaluate()
    return record


def settings_of(args: argparse.Namespace) -> dict[str, int]:
    return {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "eval_every": args.eval_every,
        "val_images": args.val_images,
    }


def run_workers(
    script: str, names: list[str], flags: list[str], jobs: int, work: Path
) -> tuple[list[dict], list[str]]:
    """Run ``script --worker NAME`` for each name in its own single-threaded process, ``jobs``
    at a time; the records they wrote (``work/NAME.json``) and the names that failed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    pending = list(names)
    running: list[tuple[str, subprocess.Popen, Path]] = []
    records, failed = [], []
    while pending or running:
        while pending and len(running) < jobs:
            name = pending.pop(0)
            dest = work / f"{name}.json"
            cmd = [sys.executable, script, "--worker", name, "--worker-out", str(dest), *flags]
            running.append((name, subprocess.Popen(cmd, env=env), dest))
        time.sleep(1.0)
        for item in list(running):
            name, proc, dest = item
            if proc.poll() is None:
                continue
            running.remove(item)
            if proc.returncode == 0 and dest.exists():
                records.append(json.loads(dest.read_text()))
            else:
                failed.append(name)
    return records, failed


def run_all(args: argparse.Namespace, work: Path) -> list[dict]:
    """Each configuration in its own process, ``args.jobs`` at a time; their records."""
    flags = ["--steps", str(args.steps), "--batch-size", str(args.batch_size)]
    flags += ["--eval-every", str(args.eval_every), "--val-images", str(args.val_images)]
    if args.ema:
        flags += ["--ema", *(str(d) for d in args.ema)]
    records, failed = run_workers(__file__, args.configs, flags, args.jobs, work)
    if failed:
        print(f"failed (see messages above): {', '.join(failed)}", file=sys.stderr)
    order = {n: i for i, n in enumerate(args.configs)}
    return sorted(records, key=lambda r: order[r["name"]])


def ms_per_step(record: dict) -> tuple[float, float]:
    """(median step after the first, first step) in milliseconds."""
    secs = record["step_seconds"]
    if not secs:
        return float("nan"), float("nan")
    rest = secs[1:] or secs
    return 1000 * float(np.median(rest)), 1000 * secs[0]


def table(records: list[dict], settings: dict[str, int]) -> str:
    steps = sorted({e["step"] for r in records for e in r["evals"]})
    head = ["configuration", "lr", *(f"{s}" for s in steps), "ms/step", "first step"]
    lines = [
        f"AP50 / AP on {settings['val_images']} held-out shapes images, at each step; "
        f"batch {settings['batch_size']}, {settings['steps']} steps, one thread per run, "
        f"{platform.machine()} with {os.cpu_count()} CPUs.",
        "",
        "| " + " | ".join(head) + " |",
        "|---|---:|" + "---:|" * (len(head) - 2),
    ]
    for r in records:
        at = {e["step"]: e for e in r["evals"]}
        ms, first = ms_per_step(r)
        for label, key in [
            (r["name"], None),
            *((f"{r['name']}, EMA {d:g}", f"ema {d:g}") for d in r.get("ema", [])),
        ]:
            cells = [label, f"{r['lr']:.0e}"]
            for s in steps:
                e = at.get(s, {}) if key is None else at.get(s, {}).get(key)
                cells.append(f"{e['AP50']:.3f} / {e['AP']:.3f}" if e else "-")
            cells += [f"{ms:.0f}", f"{first / 1000:.1f} s"]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for r in records:
        spec, _, lr = r["name"].partition("@")
        base, *changes = spec.split(",")
        more = f", with {', '.join(changes)}" if changes else ""
        more += f", at peak learning rate {lr}" if lr else ""
        lines.append(f"- {r['name']}: {DESCRIPTIONS[base]}{more}")
    if any(r.get("ema") for r in records):
        lines.append(
            "- EMA d: the same run's bias-corrected moving average of the weights, decay d "
            "(training unchanged)"
        )
    notes = [r for r in records if r["diverged"]]
    if notes:
        lines.append("")
        lines += [f"- {r['name']} diverged: {r['diverged']}" for r in notes]
    lines.append("")
    lines.append(
        "ms/step: median training step (evaluation excluded); first step: the first training "
        "step, after the step-0 evaluation, with the rest of Numba's compilation or cache load. "
        "Wall times are indicative only (the machine was shared with other work)."
    )
    return "\n".join(lines) + "\n"


def plot(records: list[dict], path: Path, settings: dict[str, int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.6))
    for r in records:
        steps = [e["step"] for e in r["evals"]]
        style = "-" if r["preset"] == "deformable" else "--"
        line = None
        for ax, key in zip(axes, ("AP50", "AP")):
            (line,) = ax.plot(
                steps,
                [e[key] for e in r["evals"]],
                style,
                marker="o",
                markersize=3,
                label=r["name"] if line is None else None,
                color=None if line is None else line.get_color(),
            )
    for ax, key in zip(axes, ("AP50", "AP (IoU .50:.95)")):
        ax.set_xlabel("training step")
        ax.set_ylabel(key)
        ax.set_ylim(0.0, 1.0)
        ax.grid(alpha=0.3)
    axes[1].legend(*axes[0].get_legend_handles_labels(), fontsize=8, loc="upper left")
    fig.suptitle(
        f"Held-out shapes ({settings['val_images']} images), batch {settings['batch_size']}, "
        f"{settings['steps']} steps",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), metavar="NAME[@LR]")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--val-images", type=int, default=256)
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    parser.add_argument(
        "--ema", type=float, nargs="+", default=[], metavar="D", help="also evaluate weight EMAs"
    )
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/results")
    parser.add_argument(
        "--prefix", default="convergence", help="file names: PREFIX.json, PREFIX.md, PREFIX.png"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 40 steps, 32 images")
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the table and plot from the JSON"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.eval_every, args.val_images = 40, 20, 32
    refuse_bad_args(parser, args, ("steps", "batch_size", "eval_every", "val_images", "jobs"))
    for d in args.ema:
        try:
            check_decay(d)
        except ValueError as err:
            parser.error(f"--ema: {err}")

    if args.worker:  # one configuration, in this process
        record = train_and_evaluate(
            args.worker,
            args.steps,
            args.batch_size,
            args.eval_every,
            args.val_images,
            tuple(args.ema),
        )
        record["settings"] = settings_of(args)
        args.worker_out.write_text(json.dumps(record))
        return

    out = args.out or (Path(tempfile.mkdtemp(prefix="convergence-")) if args.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    settings = settings_of(args)
    records = []
    if not args.report_only:
        with tempfile.TemporaryDirectory() as work:
            records = run_all(args, Path(work))
    store = out / f"{args.prefix}.json"
    kept = []
    if store.exists():  # earlier runs of other configurations at the same settings
        ran = {r["name"] for r in records}
        kept = [
            r
            for r in json.loads(store.read_text())
            if r.get("settings") == settings and r["name"] not in ran
        ]
    known = [*CONFIGS]
    records = sorted(
        kept + records,
        key=lambda r: (known.index(r["name"].partition("@")[0].split(",")[0]), r["name"]),
    )
    store.write_text(json.dumps(records))
    text = table(records, settings)
    (out / f"{args.prefix}.md").write_text("# Convergence at equal steps\n\n" + text)
    plot(records, out / f"{args.prefix}.png", settings)
    print(text)
    print(f"wrote {out / args.prefix}.md, {out / args.prefix}.png, {store}")


if __name__ == "__main__":
    main()
