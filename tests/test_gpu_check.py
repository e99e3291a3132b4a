"""The one-command GPU check runs its CPU-side parts and skips the GPU ones with a reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"


def test_dry_run_checks_the_cpu_twin_and_trains_on_the_cpu():
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert "[SKIP] GPU: --dry-run: GPU stages skipped" in lines
    assert any(line.startswith("[SKIP] GPU tests: no GPU") for line in lines)
    kernels = [line for line in lines if line.startswith("[PASS] kernels: Numba CPU vs reference")]
    assert len(kernels) == 2  # float64 and float32, forward and backward
    assert any(line.startswith("[PASS] train cpu: tiny-deformable:") for line in lines)
    assert any(line.startswith("[SKIP] train cuda: no GPU") for line in lines)
    assert lines[-1].startswith("6 stages, 0 failed")


def test_refuses_too_few_steps_with_one_line():
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--steps", "1"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "--steps must be at least 2" in done.stderr and "Traceback" not in done.stderr
