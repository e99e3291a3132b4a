"""The allowed range of every field of ``TrainConfig``, checked when one is made.

A bad value (a zero batch size, a negative seed, a learning rate that is 0, negative
or not finite) is refused where it is given, with a message naming the field and its
range, rather than crashing later in the data sampler or the optimizer.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import fields
from typing import Any

# name -> (lowest, highest, lowest allowed?): each numeric field's range, for clear errors
_RANGES: dict[str, tuple[float, float, bool]] = {
    "steps": (1, math.inf, True),
    "batch_size": (1, math.inf, True),
    "lr": (0.0, math.inf, False),
    "backbone_lr_ratio": (0.0, math.inf, True),
    "weight_decay": (0.0, math.inf, True),
    "warmup_steps": (0, math.inf, True),
    "final_lr_ratio": (0.0, 1.0, True),
    "clip_norm": (0.0, math.inf, True),
    "train_images": (1, math.inf, True),
    "val_images": (1, math.inf, True),
    "seed": (0, math.inf, True),
    "checkpoint_every": (1, math.inf, True),
    "weight_class": (0.0, math.inf, True),
    "weight_bbox": (0.0, math.inf, True),
    "weight_giou": (0.0, math.inf, True),
    "eos_coef": (0.0, 1.0, True),
    "dn_groups": (0, math.inf, True),
    "dn_label_noise": (0.0, 1.0, True),
    "dn_box_noise": (0.0, math.inf, True),
    "offset_l2": (0.0, math.inf, True),
}


def check_train_config(cfg: Any) -> None:
    """Raise ``ValueError``/``TypeError`` naming the first field of ``cfg`` out of its range."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.type in ("bool", bool):
            if not isinstance(value, bool):
                raise TypeError(f"{f.name} must be True or False, got {value!r}")
            continue
        if f.type in ("str", str):
            if not isinstance(value, str):
                raise TypeError(f"{f.name} must be a string, got {value!r}")
            continue
        integral = f.type in ("int", int)
        if f.type not in ("int", int, "float", float):
            continue  # a field of another kind carries its own checks
        kind = numbers.Integral if integral else numbers.Real
        if isinstance(value, bool) or not isinstance(value, kind):
            want = "an integer" if integral else "a number"
            raise TypeError(f"{f.name} must be {want}, got {value!r}")
        low, high, closed = _RANGES.get(f.name, (-math.inf, math.inf, True))
        inside = (low <= value if closed else low < value) and value <= high
        if not (math.isfinite(value) and inside):
            bounds = [f"{'>=' if closed else '>'} {low:g}"] if low > -math.inf else []
            bounds += [f"<= {high}"] if high < math.inf else []
            want = "an integer" if integral else "a finite number"
            raise ValueError(f"{f.name} must be {want} {' and '.join(bounds)}, got {value!r}")
