"""One command for a machine with an NVIDIA GPU: install CuPy, test, check the kernels, time a run.

Run:  python benchmarks/gpu_check.py              # everything; a few minutes on a GPU machine
      python benchmarks/gpu_check.py --dry-run    # the CPU-side parts at toy sizes (seconds)

Stages, each printed as PASS, FAIL or SKIP with a reason:

1. GPU: ``nvidia-smi`` names the GPU and the driver's CUDA version; if CuPy is missing
   it is installed with pip (``cupy-cuda12x`` or ``cupy-cuda13x`` to match the driver,
   with ``numba-cuda[cu12]`` / ``[cu13]``, the CUDA target numba.cuda compiles with).
2. The CuPy and numba.cuda legs of the test suite (``pytest -k "cupy or cuda"``) on the
   real device: conftest.py switches Numba's CUDA simulator on only without a GPU.
3. Each CUDA kernel against its CPU twin: multi-scale deformable attention, forward and
   backward, numba.cuda on CuPy arrays against the Numba CPU kernel on NumPy arrays, in
   float64 and float32, on a problem whose samples crowd onto the same few pixels, so a
   scatter into dvalue without atomics loses contributions and fails. Without a GPU the
   CPU twin is checked against the plain reference on the same problem instead.
4. Training: ``--steps`` steps (200) of the default preset on ``--device cuda`` and on
   the CPU (one thread, as ``minidetr train``), from the same seed and batches: the first
   step's loss must agree, and steps per second are printed side by side. The step rate
   excludes the first step (compilation).

Without a GPU, the GPU stages are skipped with a clear message and the CPU halves run.
Exit status 0 when every stage that ran passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS: list[tuple[str, str, str]] = []  # (stage, PASS / FAIL / SKIP, detail)


def report(stage: str, status: str, detail: str) -> None:
    RESULTS.append((stage, status, detail))
    print(f"[{status}] {stage}: {detail}", flush=True)


# ---------------------------------------------------------------- 1. GPU and CuPy


def driver_cuda_major() -> int | None:
    """The CUDA major version the driver supports (nvidia-smi's header), or None without one."""
    if shutil.which("nvidia-smi") is None:
        return None
    out = subprocess.run(["nvidia-smi"], capture_output=True, text=True, check=False).stdout
    found = re.search(r"CUDA Version:\s*(\d+)\.", out)
    return int(found.group(1)) if found else None


def cupy_usable() -> str | None:
    """The GPU's name if CuPy imports and sees a device, else None."""
    try:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(0)
        return props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    except Exception:
        return None


def ensure_gpu(install: bool) -> bool:
    """Stage 1. True when CuPy can use a GPU (installing CuPy first if allowed)."""
    major = driver_cuda_major()
    if major is None:
        report("GPU", "SKIP", "no NVIDIA GPU (nvidia-smi not found): GPU stages skipped")
        return False
    name = cupy_usable()
    if name is None and install:
        suffix = "13" if major >= 13 else "12"
        packages = [f"cupy-cuda{suffix}x", f"numba-cuda[cu{suffix}]"]
        print(f"installing {' '.join(packages)} for the CUDA {major} driver ...", flush=True)
        cmd = [sys.executable, "-m", "pip", "install", "-q", *packages]
        done = subprocess.run(cmd, check=False)
        if done.returncode != 0:
            report("GPU", "FAIL", f"pip install {' '.join(packages)} failed")
            return False
        name = cupy_usable()
    if name is None:
        report("GPU", "FAIL", f"a CUDA {major} driver is present but CuPy cannot use it")
        return False
    report("GPU", "PASS", f"{name}, driver CUDA {major}")
    return True


# ---------------------------------------------------------------- 2. the test suite's GPU legs


def gpu_tests(timeout_s: int) -> None:
    """Stage 2: the tests parametrised over CuPy and the numba.cuda kernel tests."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cupy or cuda"]
    cmd += ["-o", "addopts=-ra", str(ROOT / "tests")]
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    start = time.perf_counter()
    try:
        done = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        report("GPU tests", "FAIL", f"did not finish within {timeout_s} s")
        return
    summary = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    seconds = time.perf_counter() - start
    status = "PASS" if done.returncode == 0 else "FAIL"
    if status == "FAIL":
        print(done.stdout[-4000:], done.stderr[-2000:], sep="\n")
    report("GPU tests", status, f"{summary} ({seconds:.0f} s)")


# ---------------------------------------------------------------- 3. CUDA kernels vs CPU twins


def crowded_problem(dtype: type, rng: np.random.Generator, scale: int) -> tuple:
    """Deformable attention inputs whose samples crowd onto a few shared pixels.

    Every query of every head samples inside a window of about two by two pixels of each
    level, so each pixel of dvalue receives thousands of contributions at once.
    """
    shapes = [(12, 10), (6, 5), (3, 3)]
    b, q, m, dh, p = 2, 25 * scale, 4, 8, 4
    value = rng.standard_normal((b, sum(h * w for h, w in shapes), m, dh)).astype(dtype)
    loc = rng.uniform(0.42, 0.58, size=(b, q, m, len(shapes), p, 2)).astype(dtype)
    attn = rng.random((b, q, m, len(shapes), p)).astype(dtype)
    dout = rng.standard_normal((b, q, m * dh)).astype(dtype)
    return shapes, value, loc, attn, dout


def kernel_check(gpu: bool, scale: int) -> None:
    """Stage 3: forward and backward of the CUDA kernels against the Numba CPU kernels."""
    from minidetr.deformable import ms_deform_attn_backward, ms_deform_attn_forward

    names = ("out", "dvalue", "dsampling_locations", "dattention_weights")
    for dtype, tol in ((np.float64, 1e-10), (np.float32, 1e-3)):
        shapes, value, loc, attn, dout = crowded_problem(dtype, np.random.default_rng(0), scale)
        twin = "numba" if gpu else "reference"  # what the fast kernel is held to
        out, cache = ms_deform_attn_forward(value, shapes, loc, attn, impl=twin)
        want = (out, *ms_deform_attn_backward(dout, cache))
        if gpu:
            import cupy

            value_d, loc_d, attn_d, dout_d = (cupy.asarray(a) for a in (value, loc, attn, dout))
            out, cache = ms_deform_attn_forward(value_d, shapes, loc_d, attn_d, impl="cuda")
            got = tuple(cupy.asnumpy(a) for a in (out, *ms_deform_attn_backward(dout_d, cache)))
            label = f"CUDA vs Numba CPU, {np.dtype(dtype).name}"
        else:
            out, cache = ms_deform_attn_forward(value, shapes, loc, attn, impl="numba")
            got = (out, *ms_deform_attn_backward(dout, cache))
            label = f"Numba CPU vs reference, {np.dtype(dtype).name} (CUDA part skipped: no GPU)"
        errors = {  # largest difference relative to the largest entry
            name: float(np.abs(g - w).max() / max(float(np.abs(w).max()), 1e-30))
            for name, g, w in zip(names, got, want)
        }
        worst = max(errors, key=errors.get)
        ok = errors[worst] <= tol
        detail = f"{label}: worst {worst} differs by {errors[worst]:.1e} of its scale"
        report("kernels", "PASS" if ok else "FAIL", detail + ("" if ok else f" > {tol:.0e}"))


# ---------------------------------------------------------------- 4. training speed


def time_training(device: str, preset: str, steps: int) -> tuple[float, float]:
    """(first step's loss, steps per second after the first) of ``steps`` training steps."""
    from minidetr.cli import limit_threads
    from minidetr.options import device_like
    from minidetr.train.loop import Run, TrainConfig

    limit_threads(1)
    run = Run(replace(TrainConfig(), preset=preset, steps=steps), device_like(device))
    first = run.train_step()["loss"]
    start = time.perf_counter()
    for _ in range(steps - 1):
        run.train_step()
    return first, (steps - 1) / (time.perf_counter() - start)


def training(gpu: bool, preset: str, steps: int) -> None:
    loss_cpu, rate_cpu = time_training("cpu", preset, steps)
    report("train cpu", "PASS", f"{preset}: {rate_cpu:.2f} steps/s over {steps} steps")
    if not gpu:
        report("train cuda", "SKIP", "no GPU: --device cuda not timed")
        return
    loss_gpu, rate_gpu = time_training("cuda", preset, steps)
    agree = abs(loss_gpu - loss_cpu) <= 1e-3 * abs(loss_cpu)
    detail = (
        f"{preset}: {rate_gpu:.2f} steps/s over {steps} steps, {rate_gpu / rate_cpu:.2f}x the "
        f"CPU; first loss {loss_gpu:.5f} (CPU {loss_cpu:.5f})"
    )
    report("train cuda", "PASS" if agree else "FAIL", detail)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU-side parts at toy sizes")
    parser.add_argument("--steps", type=int, default=200, help="training steps per device")
    parser.add_argument("--no-install", action="store_true", help="never pip install CuPy")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the first step is not timed)")
    start = time.perf_counter()
    gpu = False if args.dry_run else ensure_gpu(install=not args.no_install)
    if args.dry_run:
        report("GPU", "SKIP", "--dry-run: GPU stages skipped")
    if gpu:
        gpu_tests(timeout_s=300)
    else:
        report("GPU tests", "SKIP", "no GPU: the CuPy and numba.cuda legs were not run")
    kernel_check(gpu, scale=1 if args.dry_run else 8)
    if args.dry_run:
        training(False, "tiny-deformable", 3)
    else:
        training(gpu, "deformable", args.steps)
    failed = [stage for stage, status, _ in RESULTS if status == "FAIL"]
    print(f"\n{len(RESULTS)} stages, {len(failed)} failed, {time.perf_counter() - start:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
