"""Checks of what a user gives the ``minidetr`` command: options, folders and files.

A mistake in the user's input raises ``UserError``, which the command prints as one
line (exit status 2). Anything else that goes wrong is a bug in minidetr and keeps its
traceback. Every subcommand validates with these helpers:

- option types for ``argparse`` (``positive_int``, ``non_negative_int``,
  ``positive_float``, ``probability``), whose messages name the allowed range;
- ``output_folder`` (exists or can be made, is a folder, is writable) and ``input_file``
  (exists, is a file), run before any work starts;
- ``device_like``: ``--device`` as an array on that device, or why it cannot be used.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from minidetr.backend import Array


class UserError(Exception):
    """A mistake the user can fix; printed as one line, exit status 2."""


def _number(text: str, kind: type) -> float:
    try:
        value = kind(text)
    except ValueError:
        word = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"must be {word}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (steps, batch size, threads)."""
    value = int(_number(text, int))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0 (a seed)."""
    value = int(_number(text, int))
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def finite_float(text: str) -> float:
    """Any finite number (a weight that may be negative)."""
    return _number(text, float)


def positive_float(text: str) -> float:
    """A finite number > 0 (a learning rate)."""
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (a penalty weight)."""
    value = _number(text, float)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def probability(text: str) -> float:
    """A number in [0, 1] (a score threshold)."""
    value = _number(text, float)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text}")
    return value


def output_folder(path: str | Path, option: str = "--out") -> Path:
    """Make ``path`` a folder if needed and prove it writable; ``UserError`` saying why not.

    Writability is tested by creating and removing a file there, which also catches
    read-only file systems and permissions that ``os.access`` misjudges.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path} is a file, not a folder")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise UserError(f"{option} {path}: {parent} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".minidetr-write-test.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise UserError(f"{option} {path} is not writable ({err.strerror or err})") from err
    return path


def input_file(path: str | Path, what: str) -> Path:
    """``path`` as an existing file; ``UserError`` naming ``what`` otherwise."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} {path} does not exist")
    if not path.is_file():
        raise UserError(f"{what} {path} is not a file")
    return path


def device_like(name: str) -> Array:
    """A float32 array on the requested device, for the rest of the run to copy."""
    if name == "cpu":
        return np.zeros(1, dtype=np.float32)
    if name != "cuda":
        raise UserError(f"unknown device {name!r}; use cpu or cuda")
    try:
        import cupy
    except ImportError as err:
        raise UserError(
            "--device cuda needs CuPy: pip install 'minidetr[gpu]' "
            "(cupy-cuda12x for CUDA 12 drivers, cupy-cuda13x for CUDA 13)"
        ) from err
    try:
        cupy.cuda.runtime.getDeviceCount()
        return cupy.zeros(1, dtype=cupy.float32)
    except Exception as err:
        raise UserError(f"--device cuda: CuPy found no usable CUDA GPU ({err})") from err
