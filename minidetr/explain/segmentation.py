"""Attention as segmentation: threshold a relevance map into a mask, compare with the truth.

The shapes world knows every object's exact pixels, so "the map highlights the
object" can be measured instead of eyeballed: the intersection over union of
the thresholded map with the object's visible mask. The threshold is the map's
mean, as in Chefer et al. (2021), section 5's segmentation tests: no tuning per
method.

Shapes: H x W pixels.
"""

from __future__ import annotations

import numpy as np


def relevance_mask(relevance: np.ndarray, threshold: str | float = "mean") -> np.ndarray:
    """mask = relevance > t, t the map's mean (``"mean"``) or the given fraction of its maximum.

    relevance (H, W) -> boolean (H, W). A constant map gives an empty mask.
    """
    r = np.asarray(relevance, dtype=np.float64)
    if r.ndim != 2:
        raise ValueError(f"relevance must be a (H, W) map, got shape {r.shape}")
    if not np.all(np.isfinite(r)):
        raise ValueError("relevance must be finite")
    if isinstance(threshold, str):
        if threshold != "mean":
            raise ValueError(f"threshold must be 'mean' or a number in [0, 1], got {threshold!r}")
        t = r.mean()
    else:
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold must be 'mean' or a number in [0, 1], got {threshold}")
        t = float(threshold) * r.max()
    return r > t


def mask_iou(predicted: np.ndarray, true: np.ndarray) -> float:
    """|P ∩ T| / |P ∪ T| of two boolean (H, W) masks; 1 when both are empty."""
    p, t = np.asarray(predicted, dtype=bool), np.asarray(true, dtype=bool)
    if p.shape != t.shape:
        raise ValueError(f"masks must have the same shape, got {p.shape} and {t.shape}")
    union = np.logical_or(p, t).sum()
    return 1.0 if union == 0 else float(np.logical_and(p, t).sum() / union)


def segmentation_iou(
    relevance: np.ndarray, true_mask: np.ndarray, threshold: str | float = "mean"
) -> float:
    """IoU of the thresholded relevance map (H, W) with the object's true mask (H, W)."""
    return mask_iou(relevance_mask(relevance, threshold), true_mask)
