"""HungarianMatcher against DETR's recipe written in NumPy and SciPy, and its properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment as scipy_lsa
from scipy.spatial.distance import cdist

from minidetr.boxes import box_cxcywh_to_xyxy
from minidetr.setloss.matching import HungarianMatcher

# ---------------------------------------------------------------- inputs and oracle


def make_batch(rng, counts, n_queries=9, n_classes=5, focal=False):
    """NumPy outputs and targets: boxes cxcywh inside the unit square."""

    def boxes(n):
        centre = rng.uniform(0.25, 0.75, (n, 2))
        size = rng.uniform(0.05, 0.4, (n, 2))
        return np.concatenate([centre, size], axis=-1)

    n_logits = n_classes if focal else n_classes + 1
    outputs = {
        "pred_logits": rng.normal(size=(len(counts), n_queries, n_logits)),
        "pred_boxes": boxes(len(counts) * n_queries).reshape(len(counts), n_queries, 4),
    }
    targets = [{"labels": rng.integers(0, n_classes, t), "boxes": boxes(t)} for t in counts]
    return outputs, targets


def to_xp(xp, outputs, targets):
    return (
        {k: xp.asarray(v) for k, v in outputs.items()},
        [{k: xp.asarray(v) for k, v in t.items()} for t in targets],
    )


def giou_oracle(a, b):
    """GIoU of every xyxy box in a (N, 4) with every one in b (M, 4), written out plainly."""
    a, b = a[:, None, :], b[None, :, :]
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    union = area_a + area_b - inter
    hull = (np.maximum(a[..., 2], b[..., 2]) - np.minimum(a[..., 0], b[..., 0])) * (
        np.maximum(a[..., 3], b[..., 3]) - np.minimum(a[..., 1], b[..., 1])
    )
    return inter / union - (hull - union) / hull


def xyxy(boxes):
    cx, cy, w, h = boxes.T
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


def detr_recipe(outputs, targets, w_class=1.0, w_bbox=5.0, w_giou=2.0, focal=False):
    """DETR's models/matcher.py in NumPy: the whole (B Q) x S cost, then SciPy per image."""
    logits = outputs["pred_logits"].reshape(-1, outputs["pred_logits"].shape[-1])  # (B Q, K)
    boxes = outputs["pred_boxes"].reshape(-1, 4)  # (B Q, 4)
    labels = np.concatenate([t["labels"] for t in targets])  # (S,)
    tgt = np.concatenate([t["boxes"] for t in targets])  # (S, 4)
    if focal:  # Deformable DETR's formula
        p = 1 / (1 + np.exp(-logits))
        neg = 0.75 * p**2 * -np.log(1 - p + 1e-8)
        pos = 0.25 * (1 - p) ** 2 * -np.log(p + 1e-8)
        c_class = pos[:, labels] - neg[:, labels]
    else:
        p = np.exp(logits - logits.max(-1, keepdims=True))
        c_class = -(p / p.sum(-1, keepdims=True))[:, labels]
    c_bbox = cdist(boxes, tgt, "cityblock")
    c_giou = -giou_oracle(xyxy(boxes), xyxy(tgt))
    cost = (w_bbox * c_bbox + w_class * c_class + w_giou * c_giou).reshape(
        len(targets), -1, len(tgt)
    )
    sizes = np.cumsum([0] + [len(t["labels"]) for t in targets])
    return (
        [scipy_lsa(cost[i][:, sizes[i] : sizes[i + 1]]) for i in range(len(targets))],
        cost,
        sizes,
    )


def assert_same_matches(got, want):
    assert len(got) == len(want)
    for (pred, tgt), (pred_w, tgt_w) in zip(got, want):
        assert pred.dtype == tgt.dtype == np.int64
        np.testing.assert_array_equal(pred, pred_w)
        np.testing.assert_array_equal(tgt, tgt_w)


# ---------------------------------------------------------------- against DETR's recipe


@pytest.mark.parametrize("focal", [False, True])
def test_matches_detr_recipe(rng, focal):
    counts = [3, 0, 9, 1, 12, 5]  # an empty image, and more targets than the 9 queries
    outputs, targets = make_batch(rng, counts, focal=focal)
    want, cost, sizes = detr_recipe(outputs, targets, focal=focal)
    matcher = HungarianMatcher(focal=focal)
    assert_same_matches(matcher(outputs, targets), want)
    stacked = matcher.cost(outputs, targets)  # (S, Q): the diagonal blocks of DETR's cost
    for b in range(len(counts)):
        block = cost[b][:, sizes[b] : sizes[b + 1]].T
        np.testing.assert_allclose(stacked[sizes[b] : sizes[b + 1]], block, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("weights", [(1, 0, 0), (0, 1, 0), (0, 0, 1), (2, 3, 0.5)])
def test_each_cost_term_gives_the_recipe_optimum(rng, weights):
    """Same optimal total under DETR's cost (the class term alone ties targets of a class)."""
    outputs, targets = make_batch(rng, [4, 7, 2, 0, 12])
    want, cost, sizes = detr_recipe(outputs, targets, *weights)
    got = HungarianMatcher(*weights)(outputs, targets)
    for b, ((pred, tgt), (pred_w, tgt_w)) in enumerate(zip(got, want)):
        block = cost[b][:, sizes[b] : sizes[b + 1]]
        assert len(pred) == len(pred_w) and len(set(tgt.tolist())) == len(tgt)
        assert block[pred, tgt].sum() == pytest.approx(block[pred_w, tgt_w].sum(), abs=1e-9)


def test_box_cost_is_scipy_cityblock_distance(rng):
    outputs, targets = make_batch(rng, [4, 0, 6])
    stacked = HungarianMatcher(cost_class=0, cost_bbox=1, cost_giou=0).cost(outputs, targets)
    want = np.concatenate(
        [cdist(t["boxes"], outputs["pred_boxes"][b], "cityblock") for b, t in enumerate(targets)]
    )
    np.testing.assert_allclose(stacked, want, rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------- properties


@given(
    st.lists(st.integers(0, 12), min_size=1, max_size=5), st.integers(0, 2**32 - 1), st.booleans()
)
def test_batched_equals_per_image_and_counts_are_min_q_t(counts, seed, focal):
    rng = np.random.default_rng(seed)
    outputs, targets = make_batch(rng, counts, focal=focal)
    matcher = HungarianMatcher(focal=focal)
    batched = matcher(outputs, targets)
    for b, (pred, tgt) in enumerate(batched):
        assert len(pred) == len(tgt) == min(9, counts[b])
        assert np.all(np.diff(pred) > 0) and len(set(tgt.tolist())) == len(tgt)
        alone = {k: v[b : b + 1] for k, v in outputs.items()}
        assert_same_matches(matcher(alone, [targets[b]]), [(pred, tgt)])


@given(st.integers(1, 8), st.integers(0, 2**32 - 1))
def test_permuting_targets_permutes_the_matched_indices(count, seed):
    rng = np.random.default_rng(seed)
    outputs, targets = make_batch(rng, [count])
    order = rng.permutation(count)
    shuffled = [{k: v[order] for k, v in targets[0].items()}]
    (pred, tgt), (pred_s, tgt_s) = (
        HungarianMatcher()(outputs, targets)[0],
        HungarianMatcher()(outputs, shuffled)[0],
    )
    np.testing.assert_array_equal(pred_s, pred)
    np.testing.assert_array_equal(order[tgt_s], tgt)


def test_zero_targets_everywhere_gives_empty_int64_arrays(rng):
    outputs, targets = make_batch(rng, [0, 0])
    for pred, tgt in HungarianMatcher()(outputs, targets):
        assert pred.shape == tgt.shape == (0,) and pred.dtype == tgt.dtype == np.int64


@pytest.mark.parametrize("focal", [False, True])
def test_every_namespace_gives_the_numpy_matches(xp, rng, focal):
    outputs, targets = make_batch(rng, [2, 0, 9, 11], focal=focal)
    want = HungarianMatcher(focal=focal)(outputs, targets)
    got = HungarianMatcher(focal=focal)(*to_xp(xp, outputs, targets))
    assert_same_matches(got, want)
    assert all(isinstance(p, np.ndarray) and isinstance(t, np.ndarray) for p, t in got)


def test_float32_predictions_give_the_float64_matches(rng):
    outputs, targets = make_batch(rng, [5, 3, 8])
    want = HungarianMatcher()(outputs, targets)
    low = {k: v.astype(np.float32) for k, v in outputs.items()}
    assert_same_matches(HungarianMatcher()(low, targets), want)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("key", "index", "value", "message"),
    [
        (
            "pred_logits",
            (1, 4, 2),
            np.nan,
            r"outputs\['pred_logits'\]\[1, 4\] \(image 1, query 4\) is not finite",
        ),
        (
            "pred_boxes",
            (2, 0, 1),
            np.inf,
            r"outputs\['pred_boxes'\]\[2, 0\] \(image 2, query 0\) is not finite",
        ),
        (
            "pred_boxes",
            (0, 7, 3),
            -0.1,
            r"outputs\['pred_boxes'\]\[0, 7\] \(image 0, query 7\) has a negative",
        ),
    ],
)
def test_bad_predictions_name_image_and_query(xp, rng, key, index, value, message):
    outputs, targets = make_batch(rng, [2, 3, 1])
    outputs[key][index] = value
    with pytest.raises(ValueError, match=message):
        HungarianMatcher()(*to_xp(xp, outputs, targets))


def test_bad_targets_and_weights_are_refused(rng):
    outputs, targets = make_batch(rng, [2, 3])
    with pytest.raises(
        ValueError, match=r"targets\[1\]\['labels'\] must be class indices in \[0, 5\)"
    ):
        HungarianMatcher()(
            outputs, [targets[0], {"labels": np.array([5]), "boxes": targets[1]["boxes"][:1]}]
        )
    with pytest.raises(ValueError, match="targets has 1 images"):
        HungarianMatcher()(outputs, targets[:1])
    with pytest.raises(ValueError, match="cannot all be 0"):
        HungarianMatcher(0, 0, 0)
    with pytest.raises(ValueError, match="cost_bbox must be a finite number"):
        HungarianMatcher(cost_bbox=-1)
    with pytest.raises(ValueError, match=r"pred_boxes'\] must have shape \(2, 9, 4\)"):
        HungarianMatcher()(
            {"pred_logits": outputs["pred_logits"], "pred_boxes": outputs["pred_boxes"][:, :3]},
            targets,
        )
    with pytest.raises(TypeError, match="must be a dict"):
        HungarianMatcher()(outputs["pred_logits"], targets)


# ---------------------------------------------------------------- the compiled cost


def _looped_cost(matcher, outputs, targets):
    """The matcher's cost with its compiled loop switched off: the per-image array code."""
    compiled = HungarianMatcher._compiled_cost
    HungarianMatcher._compiled_cost = lambda self, *args: None
    try:
        return matcher.cost(outputs, targets)
    finally:
        HungarianMatcher._compiled_cost = compiled


@given(
    st.lists(st.integers(0, 7), min_size=1, max_size=5),
    st.integers(0, 2**32 - 1),
    st.booleans(),
    st.sampled_from([np.float32, np.float64]),
)
def test_compiled_cost_equals_the_per_image_code_bit_for_bit(counts, seed, focal, dtype):
    """Same arithmetic in the same order and dtype: equal costs, hence equal matches."""
    outputs, targets = make_batch(np.random.default_rng(seed), counts, focal=focal)
    outputs = {k: v.astype(dtype) for k, v in outputs.items()}
    targets = [{"labels": t["labels"], "boxes": t["boxes"].astype(dtype)} for t in targets]
    matcher = HungarianMatcher(1.5, 4.0, 2.5, focal=focal)
    got, want = matcher.cost(outputs, targets), _looped_cost(matcher, outputs, targets)
    assert got.dtype == want.dtype == dtype and got.shape == want.shape == (sum(counts), 9)
    np.testing.assert_array_equal(got, want)
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    compiled = matcher._compiled_cost(
        matcher._class_cost(logits), boxes, box_cxcywh_to_xyxy(boxes), targets
    )
    assert (compiled is None) == (sum(counts) == 0)  # the loop ran, unless nothing to match


def test_compiled_cost_leaves_far_predictions_to_the_rescaling_code(rng):
    """Predicted corners beyond GIoU's safe range take the per-image code, which rescales."""
    outputs, targets = make_batch(rng, [2, 3])
    outputs["pred_boxes"] = outputs["pred_boxes"].astype(np.float32)
    targets = [{"labels": t["labels"], "boxes": t["boxes"].astype(np.float32)} for t in targets]
    outputs["pred_boxes"][1, 4, 2:] = 1e30  # a huge but finite box
    matcher = HungarianMatcher()
    assert (
        matcher._compiled_cost(
            -outputs["pred_logits"].astype(np.float32),
            outputs["pred_boxes"],
            outputs["pred_boxes"] * 2,
            targets,
        )
        is None
    )
    np.testing.assert_array_equal(
        matcher.cost(outputs, targets), _looped_cost(matcher, outputs, targets)
    )
