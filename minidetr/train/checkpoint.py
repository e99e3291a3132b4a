"""Checkpoints that are never half-written and resume a run exactly.

A checkpoint is one ``.npz`` holding every parameter, both AdamW moments, the
moving average of the weights when the run keeps one (``minidetr.train.ema``), and a
JSON header (format version, model and training config, step, the host RNG
state, the loss history). It is written to a temporary file in the same folder,
flushed to disk, then renamed over the old one: a crash leaves either the old
checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from minidetr.backend import Array, asarray, to_numpy
from minidetr.train.ema import EMAState
from minidetr.train.optim import AdamWState

FORMAT = "minidetr-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint file that is missing, corrupt, foreign, or from another run."""


class Checkpoint(NamedTuple):
    params: dict[str, np.ndarray]
    opt_state: AdamWState | None
    meta: dict[str, Any]  # model_config, train_config, step, rng_state, history, ...
    ema: EMAState | None = None  # the weights' moving average, if the run keeps one


def save_checkpoint(
    path: str | Path,
    params: dict[str, Array],
    opt_state: AdamWState | None,
    meta: dict[str, Any],
    ema: EMAState | None = None,
) -> None:
    """Write a checkpoint atomically (temporary file, fsync, rename)."""
    path = Path(path)
    arrays = {f"param/{k}": to_numpy(v) for k, v in params.items()}
    if opt_state is not None:
        arrays.update({f"m/{k}": to_numpy(v) for k, v in opt_state.m.items()})
        arrays.update({f"v/{k}": to_numpy(v) for k, v in opt_state.v.items()})
        meta = {**meta, "opt_step": opt_state.step}
    if ema is not None:
        arrays.update({f"ema/{k}": to_numpy(v) for k, v in ema.params.items()})
        meta = {**meta, "ema_step": ema.step}
    header = json.dumps({"format": FORMAT, **meta})
    arrays["header"] = np.frombuffer(header.encode(), dtype=np.uint8)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temporaries(folder: str | Path, name: str = "checkpoint.npz") -> list[Path]:
    """Delete the ``name.*.tmp`` files an interrupted save left in ``folder``; return them.

    ``save_checkpoint`` removes its temporary file itself unless the process is killed
    outright (SIGKILL, a power cut) between creating and renaming it.
    """
    stale = sorted(Path(folder).glob(f"{name}.*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def load_checkpoint(path: str | Path, like: Array | None = None) -> Checkpoint:
    """Read a checkpoint; arrays go to the namespace/device of ``like`` when given.

    A missing, truncated or foreign file raises ``CheckpointError`` (a ``ValueError``)
    saying so.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(bytes(data["header"]).decode())
            if header.get("format") != FORMAT:
                raise CheckpointError(f"{path} is not a minidetr checkpoint")
            params, m, v, avg = {}, {}, {}, {}
            for key in data.files:
                kind, _, name = key.partition("/")
                target = {"param": params, "m": m, "v": v, "ema": avg}.get(kind)
                if target is not None:
                    target[name] = data[key]
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError, EOFError) as err:
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupt ({err})") from err

    def place(d: dict[str, np.ndarray]) -> dict[str, Array]:
        return d if like is None else {k: asarray(a, like=like) for k, a in d.items()}

    opt_state = None
    if "opt_step" in header:
        opt_state = AdamWState(int(header["opt_step"]), place(m), place(v))
    ema = EMAState(int(header["ema_step"]), place(avg)) if "ema_step" in header else None
    return Checkpoint(place(params), opt_state, header, ema)
