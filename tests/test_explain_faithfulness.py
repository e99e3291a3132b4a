"""Deletion/insertion curves and attention-as-segmentation on constructed cases."""

from __future__ import annotations

import numpy as np
import pytest

from minidetr.explain.faithfulness import (
    faithfulness_curves,
    perturbed_images,
    random_order,
    relevance_order,
)
from minidetr.explain.segmentation import mask_iou, relevance_mask, segmentation_iou


def disc_image(size=24):
    yy, xx = np.mgrid[:size, :size] + 0.5
    mask = (xx - 8) ** 2 + (yy - 14) ** 2 <= 5**2
    image = np.full((3, size, size), 0.2)
    image[:, mask] = np.array([0.9, 0.1, 0.5])[:, None]
    return image, mask


def object_score(mask, colour=(0.9, 0.1, 0.5)):
    """A detector stand-in: the share of the object's pixels that still show its colour."""

    def score(images):
        close = np.abs(images - np.array(colour)[:, None, None]).sum(1) < 0.05  # (N, H, W)
        return (close & mask).sum((1, 2)) / mask.sum()

    return score


def test_perturbed_images_run_from_image_to_baseline():
    image, _ = disc_image(6)
    base = np.zeros_like(image)
    order = np.arange(36)[::-1]
    fractions, deleted, inserted = perturbed_images(image, base, order, steps=4)
    np.testing.assert_allclose(fractions, [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_array_equal(deleted[0], image)
    np.testing.assert_array_equal(deleted[-1], base)
    np.testing.assert_array_equal(inserted[0], base)
    np.testing.assert_array_equal(inserted[-1], image)
    assert np.all(deleted[1][:, -1, -1] == 0) and np.all(deleted[1][:, 0, 0] == image[:, 0, 0])
    with pytest.raises(ValueError, match="permutation"):
        perturbed_images(image, base, np.zeros(36, dtype=int), 4)


def test_the_true_mask_beats_random_on_deletion_and_insertion():
    image, mask = disc_image()
    score = object_score(mask)
    perfect = faithfulness_curves(score, image, relevance_order(mask.astype(float)), steps=24)
    rng = np.random.default_rng(0)
    randoms = [
        faithfulness_curves(score, image, random_order(24, 24, rng), steps=24) for _ in range(5)
    ]
    rand_del = np.mean([c.deletion_auc for c in randoms])
    rand_ins = np.mean([c.insertion_auc for c in randoms])
    area = mask.mean()  # the object covers this share of the image
    assert perfect.deletion_auc < area  # gone once its pixels are: area under about area / 2
    assert perfect.insertion_auc > 1 - area
    assert perfect.deletion_auc < rand_del - 0.3  # random removes it only linearly: about 0.5
    assert perfect.insertion_auc > rand_ins + 0.3
    np.testing.assert_allclose(perfect.deletion[0], 1.0)
    np.testing.assert_allclose(perfect.insertion[-1], 1.0)
    # the reversed order, least relevant first, is worse than random
    worst = faithfulness_curves(score, image, relevance_order(-mask.astype(float)), steps=24)
    assert worst.deletion_auc > rand_del and worst.insertion_auc < rand_ins


def test_faithfulness_rejects_a_zero_score():
    image, mask = disc_image()
    with pytest.raises(ValueError, match="positive"):
        faithfulness_curves(lambda x: np.zeros(len(x)), image, np.arange(24 * 24))
    with pytest.raises(ValueError, match="relevance"):
        relevance_order(np.ones(3))


def test_segmentation_of_the_true_mask_and_of_noise():
    _, mask = disc_image()
    assert segmentation_iou(mask.astype(float), mask) == 1.0
    blurred = mask + 0.01 * np.random.default_rng(1).uniform(size=mask.shape)
    assert segmentation_iou(blurred, mask) == 1.0
    noise = np.random.default_rng(2).uniform(size=mask.shape)
    assert segmentation_iou(noise, mask) < 0.2
    assert mask_iou(mask, ~mask) == 0.0
    assert mask_iou(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0
    np.testing.assert_array_equal(
        relevance_mask(np.array([[0.0, 1.0], [0.4, 0.6]]), 0.5), [[0, 1], [0, 1]]
    )
    with pytest.raises(ValueError, match="threshold"):
        relevance_mask(noise, "otsu")
    with pytest.raises(ValueError, match="same shape"):
        mask_iou(mask, mask[1:])
