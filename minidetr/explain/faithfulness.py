"""Faithfulness: does removing what an explanation calls relevant remove the detection?

A relevance map is a claim about the model. Deletion tests it by replacing the
image's pixels with a neutral baseline in order of decreasing relevance and
recording the explained score after each step: a faithful map makes the score
fall at once (small area under the curve). Insertion starts from the baseline and
reveals pixels in the same order: a faithful map makes the score rise at once
(large area). A random order is the yardstick every method must beat.

    deletion(k)  = y(x with the k most relevant pixels replaced by the baseline) / y(x)
    insertion(k) = y(baseline with the k most relevant pixels of x revealed) / y(x)
    AUC          = trapezoid over the fraction of pixels k / (H W) in [0, 1]

Shapes: C channels, H x W pixels, N images scored at once.
Petsiuk, Das & Saenko, "RISE: Randomized Input Sampling for Explanation of
Black-box Models" (BMVC 2018), section 4.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

ScoreFn = Callable[[np.ndarray], np.ndarray]  # images (N, C, H, W) -> scores (N,)


class Curves(NamedTuple):
    fractions: np.ndarray  # (K + 1,) share of pixels removed / revealed, 0 to 1
    deletion: np.ndarray  # (K + 1,) score / score of the full image
    insertion: np.ndarray  # (K + 1,)
    deletion_auc: float  # lower is better
    insertion_auc: float  # higher is better


def trapezoid_area(curve: np.ndarray, fractions: np.ndarray) -> float:
    """Area under ``curve`` sampled at ``fractions`` (trapezoid rule)."""
    return float(np.sum(0.5 * (curve[1:] + curve[:-1]) * np.diff(fractions)))


def relevance_order(relevance: np.ndarray) -> np.ndarray:
    """Flat pixel indices (H W,) from most to least relevant; ties keep raster order."""
    r = np.asarray(relevance, dtype=np.float64)
    if r.ndim != 2:
        raise ValueError(f"relevance must be a (H, W) map, got shape {r.shape}")
    if not np.all(np.isfinite(r)):
        raise ValueError("relevance must be finite")
    return np.argsort(-r.ravel(), kind="stable")


def random_order(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random order of the H W pixels: the baseline every method must beat."""
    return rng.permutation(height * width)


def mean_colour_baseline(image: np.ndarray) -> np.ndarray:
    """The neutral image: every pixel the image's mean colour. image (C, H, W) -> (C, H, W)."""
    return np.broadcast_to(image.mean(axis=(1, 2), keepdims=True), image.shape).copy()


def perturbed_images(
    image: np.ndarray, baseline: np.ndarray, order: np.ndarray, steps: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fractions (K+1,), deleted (K+1, C, H, W), inserted (K+1, C, H, W)) for K = ``steps``.

    Step k replaces (deletion) or reveals (insertion) the first round(k n / K)
    pixels of ``order``, n = H W; step 0 is the image (deletion) or the baseline
    (insertion), step K the other way round.
    """
    c, h, w = image.shape
    n = h * w
    if sorted(order.shape) != [n] or not np.array_equal(np.sort(order), np.arange(n)):
        raise ValueError(f"order must be a permutation of the {n} pixels")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    counts = np.round(np.arange(steps + 1) * n / steps).astype(np.int64)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)  # rank of each pixel in the order
    chosen = rank[None, :] < counts[:, None]  # (K+1, n) pixels touched by step k
    chosen = chosen.reshape(steps + 1, 1, h, w)
    deleted = np.where(chosen, baseline[None], image[None])
    inserted = np.where(chosen, image[None], baseline[None])
    return counts / n, deleted, inserted


def faithfulness_curves(
    score_fn: ScoreFn,
    image: np.ndarray,
    order: np.ndarray,
    *,
    steps: int = 16,
    baseline: np.ndarray | None = None,
) -> Curves:
    """Deletion and insertion curves of ``score_fn`` for pixels taken in ``order``.

    image (C, H, W); order (H W,) flat pixel indices, most relevant first
    (:func:`relevance_order`, :func:`random_order`); baseline (C, H, W), the image's
    mean colour by default. Scores are divided by the full image's score, which
    must be positive. Petsiuk et al. (2018).
    """
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got shape {image.shape}")
    baseline = mean_colour_baseline(image) if baseline is None else np.asarray(baseline)
    if baseline.shape != image.shape:
        raise ValueError(f"baseline must have the image's shape {image.shape}")
    fractions, deleted, inserted = perturbed_images(image, baseline, np.asarray(order), steps)
    scores = np.asarray(score_fn(np.concatenate([deleted, inserted]).astype(image.dtype)))
    if scores.shape != (2 * (steps + 1),):
        raise ValueError(f"score_fn must return one score per image, got shape {scores.shape}")
    full = float(scores[0])
    if not full > 0:
        raise ValueError(f"the explained score on the full image must be positive, got {full}")
    deletion, insertion = scores[: steps + 1] / full, scores[steps + 1 :] / full
    return Curves(
        fractions,
        deletion,
        insertion,
        trapezoid_area(deletion, fractions),
        trapezoid_area(insertion, fractions),
    )
