"""Loading a trained run and reading pictures for it: what ``eval`` and ``predict`` share.

Problems with the user's files (a missing or corrupt checkpoint, an unreadable
image) raise ``minidetr.options.UserError``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from minidetr.options import UserError, device_like, input_file


def display_threshold(focal: bool) -> float:
    """The lowest score drawn: sigmoid scores of focal models run lower than softmax ones."""
    return 0.3 if focal else 0.5


def load_run(checkpoint: str, device: str) -> Any:
    from minidetr.train.checkpoint import load_checkpoint
    from minidetr.train.loop import Run, TrainConfig

    like = device_like(device)
    input_file(checkpoint, "checkpoint")
    try:
        ck = load_checkpoint(checkpoint, like=like)
        cfg = TrainConfig(**ck.meta["train_config"])
    except (ValueError, TypeError, KeyError) as err:
        raise UserError(f"cannot use {checkpoint}: {err}") from err
    from minidetr.data.coco_json import CocoFormatError

    try:
        run = Run(cfg, like)  # a COCO-format run reads its files again
    except CocoFormatError as err:
        raise UserError(f"cannot use {checkpoint}: {err}") from err
    try:
        run.model.check_params(ck.params)
    except ValueError as err:
        raise UserError(f"{checkpoint} does not fit preset {cfg.preset!r}: {err}") from err
    run.params, run.step, run.history = ck.params, int(ck.meta["step"]), ck.meta.get("history", [])
    if ck.ema is not None and ck.ema.step > 0:  # the run kept a moving average: it is the model
        run.params = ck.ema.params
    run.ema = None
    return run


def read_image(path: str, size: int) -> np.ndarray:
    """A picture file as a (3, size, size) float32 array in [0, 1]."""
    import matplotlib.image
    from scipy.ndimage import zoom

    try:
        img = np.asarray(matplotlib.image.imread(path), dtype=np.float64)
    except Exception as err:
        raise UserError(f"cannot read image {path}: {err}") from err
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    img = img[..., :3]
    if img.max() > 1.0:
        img = img / 255.0
    h, w = img.shape[:2]
    img = zoom(img, (size / h, size / w, 1), order=1)
    return np.ascontiguousarray(np.transpose(img, (2, 0, 1)), dtype=np.float32)


def output_names(paths: list[str]) -> list[str]:
    """A distinct ``*_pred.png`` name per input: the stem, else the file name, else its position.

    ``a.png`` and ``a.jpg`` become ``a_png_pred.png`` and ``a_jpg_pred.png``; the same
    name in two folders becomes ``a_png_1_pred.png`` and ``a_png_2_pred.png``.
    """

    def spell(path: str, level: int, index: int) -> str:
        p = Path(path)
        base = p.stem if level == 0 else p.name.replace(".", "_")
        return f"{base}_{index + 1}" if level == 2 else base

    names = [spell(p, 0, i) for i, p in enumerate(paths)]
    for level in (1, 2):
        clashing = {n for n in names if names.count(n) > 1}
        names = [
            spell(p, level, i) if n in clashing else n for i, (p, n) in enumerate(zip(paths, names))
        ]
    return [f"{n}_pred.png" for n in names]
