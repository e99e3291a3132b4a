"""Denoising queries: layout, noise, the attention mask, and their loss."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from minidetr.attention import scaled_dot_product_attention_forward
from minidetr.backend import Rng, to_numpy
from minidetr.setloss.criterion import LossWeights, SetCriterion
from minidetr.setloss.denoising import (
    PADDING_BOX,
    denoising_attention_mask,
    denoising_layout,
    make_denoising_queries,
)
from minidetr.setloss.matching import HungarianMatcher

WEIGHTS = LossWeights(ce=1.0, bbox=5.0, giou=2.0)


def layout(dn, targets):
    """(target_index, positive, valid) host arrays (B, Qdn) of ``dn``'s slots."""
    counts = [int(t["labels"].shape[0]) for t in targets]
    return denoising_layout(counts, dn.num_groups, dn.contrastive)


def make_targets(counts, seed=0, num_classes=5, xp=np):
    r = np.random.default_rng(seed)
    out = []
    for t in counts:
        centre, size = r.uniform(0.3, 0.7, (t, 2)), r.uniform(0.1, 0.4, (t, 2))
        out.append(
            {
                "labels": xp.asarray(r.integers(0, num_classes, t)),
                "boxes": xp.asarray(np.concatenate([centre, size], -1)),
            }
        )
    return out


def make(counts, groups=2, labels=0.2, boxes=0.4, q=3, contrastive=False, seed=0, xp=np):
    targets = make_targets(counts, seed, xp=xp)
    dn = make_denoising_queries(
        targets,
        groups,
        labels,
        boxes,
        5,
        np.random.default_rng(seed),
        num_queries=q,
        contrastive=contrastive,
    )
    return targets, dn


# ---------------------------------------------------------------- the attention mask

layouts = st.tuples(
    st.lists(st.integers(0, 4), min_size=1, max_size=3),  # targets per image
    st.integers(1, 4),  # groups
    st.integers(0, 5),  # matching queries
    st.booleans(),  # contrastive
)


@given(layouts)
def test_mask_forbids_exactly_the_cross_blocks(layout):
    counts, groups, q, contrastive = layout
    _, dn = make(counts, groups, q=q, contrastive=contrastive)
    mask = to_numpy(dn.attn_mask)
    size = max(counts) * (2 if contrastive else 1)
    qdn = groups * size
    assert mask.shape == (qdn + q, qdn + q) and mask.dtype == np.bool_
    assert dn.group_size == size and dn.labels.shape == (len(counts), qdn)
    for i in range(qdn + q):
        for j in range(qdn + q):
            if j >= qdn:
                expected = True  # everyone may look at the matching queries
            elif i >= qdn:
                expected = False  # matching queries must not see the answers
            else:
                expected = i // size == j // size  # a denoising group sees only itself
            assert mask[i, j] == expected, (i, j)


@given(layouts, st.integers(0, 2**31 - 1))
def test_no_information_crosses_a_forbidden_block(layout, seed):
    """Change the keys and values of one group: only that group's outputs may change."""
    counts, groups, q, contrastive = layout
    _, dn = make(counts, groups, q=q, contrastive=contrastive)
    n, size = dn.attn_mask.shape[0], dn.group_size
    assume(n > 0)
    r = np.random.default_rng(seed)
    qkv = r.normal(size=(3, n, 4))
    out, _ = scaled_dot_product_attention_forward(*qkv, mask=dn.attn_mask)
    assert np.all(np.isfinite(out))
    changed_group = int(r.integers(0, groups))
    block = slice(changed_group * size, (changed_group + 1) * size)
    k2, v2 = qkv[1].copy(), qkv[2].copy()
    k2[block] += r.normal(size=k2[block].shape)
    v2[block] += r.normal(size=v2[block].shape)
    out2, _ = scaled_dot_product_attention_forward(qkv[0], k2, v2, mask=dn.attn_mask)
    untouched = np.ones(n, dtype=bool)
    untouched[block] = False
    np.testing.assert_array_equal(out2[untouched], out[untouched])


def test_mask_without_denoising_lets_matching_queries_see_each_other():
    mask = denoising_attention_mask(3, 0, 4, like=np.zeros(1))
    np.testing.assert_array_equal(mask, np.ones((4, 4), dtype=bool))


# ---------------------------------------------------------------- layout and noise


def test_layout_with_contrastive_negatives(xp):
    targets, dn = make([2, 0, 1], groups=2, q=3, contrastive=True, xp=xp)
    index = [[0, 1, 0, 1, 0, 1, 0, 1], [-1] * 8, [0, -1, 0, -1, 0, -1, 0, -1]]
    positive = [[1, 1, 0, 0, 1, 1, 0, 0], [0] * 8, [1, 0, 0, 0, 1, 0, 0, 0]]
    got_index, got_positive, got_valid = layout(dn, targets)
    np.testing.assert_array_equal(got_index, index)
    np.testing.assert_array_equal(got_positive, np.array(positive, dtype=bool))
    np.testing.assert_array_equal(got_valid, np.array(index) >= 0)
    assert dn.labels.shape == (3, 8)
    labels, boxes = to_numpy(dn.labels), to_numpy(dn.boxes)
    assert np.all(labels[~got_valid] == 5)  # padding carries the no-object label
    np.testing.assert_array_equal(boxes[1], np.tile(PADDING_BOX, (8, 1)))
    assert type(dn.boxes) is type(targets[0]["boxes"])


def test_without_noise_the_queries_are_the_targets(xp):
    targets, dn = make([3, 1], groups=3, labels=0.0, boxes=0.0, xp=xp)
    index, _, valid = layout(dn, targets)
    for b, t in enumerate(targets):
        idx = index[b][valid[b]]
        np.testing.assert_array_equal(to_numpy(dn.labels)[b][valid[b]], to_numpy(t["labels"])[idx])
        np.testing.assert_array_equal(to_numpy(dn.boxes)[b][valid[b]], to_numpy(t["boxes"])[idx])


def _edges(boxes):
    return np.concatenate(
        [boxes[..., :2] - boxes[..., 2:] / 2, boxes[..., :2] + boxes[..., 2:] / 2], -1
    )


@given(st.integers(0, 2**31 - 1), st.floats(0.05, 0.5))
def test_box_noise_bounds(seed, scale):
    """Positive edges move less than scale * half size; negatives between 1x and 2x that."""
    targets = make_targets([4, 2], seed)
    dn = make_denoising_queries(
        targets, 3, 0.0, scale, 5, np.random.default_rng(seed), num_queries=0, contrastive=True
    )
    index, positive, valid = layout(dn, targets)
    for b, t in enumerate(targets):
        clean = _edges(t["boxes"][index[b][valid[b]]])  # (n, 4)
        noised = _edges(dn.boxes[b][valid[b]])
        half = np.concatenate([t["boxes"][:, 2:] / 2] * 2, -1)[index[b][valid[b]]]
        moved = np.abs(noised - clean) / (scale * half)
        pos = positive[b][valid[b]]
        assert np.all(moved[pos] < 1 + 1e-9)
        inside = np.all((noised > 1e-12) & (noised < 1 - 1e-12), axis=1)  # not clamped
        neg = ~pos & inside
        assert np.all((moved[neg] > 1 - 1e-9) & (moved[neg] < 2 + 1e-9))
        assert np.all(dn.boxes[b][valid[b]][:, 2:] > 0)


def test_label_noise_rate_and_range():
    targets = make_targets([40] * 5, seed=1)
    dn = make_denoising_queries(targets, 10, 0.5, 0.0, 5, Rng(3), num_queries=0)
    index = layout(dn, targets)[0]
    clean = np.stack([t["labels"][index[b]] for b, t in enumerate(targets)])
    changed = np.mean(dn.labels != clean)  # a flip lands on the same class 1 time in 5
    assert 0.35 < changed < 0.45
    assert dn.labels.min() >= 0 and dn.labels.max() < 5


def test_same_seed_same_queries_and_generator_or_rng_alike():
    targets = make_targets([3, 2])
    a = make_denoising_queries(targets, 2, 0.5, 0.4, 5, np.random.default_rng(9), num_queries=2)
    b = make_denoising_queries(targets, 2, 0.5, 0.4, 5, Rng(9), num_queries=2)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.boxes, b.boxes)


def test_bad_arguments_are_named():
    targets = make_targets([2])
    rng = np.random.default_rng(0)
    for kwargs, match in [
        ({"num_groups": 0}, "num_groups"),
        ({"label_noise_ratio": 1.5}, "label_noise_ratio"),
        ({"box_noise_scale": -0.1}, "box_noise_scale"),
        ({"num_queries": -1}, "num_queries"),
        ({"rng": 3}, "rng"),
    ]:
        args = {"num_groups": 2, "label_noise_ratio": 0.2, "box_noise_scale": 0.4, "rng": rng}
        args.update(kwargs)
        num_queries = args.pop("num_queries", 3)
        with pytest.raises((ValueError, TypeError), match=match):
            make_denoising_queries(targets, num_classes=5, num_queries=num_queries, **args)
    bad = [{"labels": np.array([7]), "boxes": np.array([[0.5, 0.5, 0.1, 0.1]])}]
    with pytest.raises(ValueError, match=r"targets\[0\]\['labels'\]"):
        make_denoising_queries(bad, 1, 0.0, 0.0, 5, rng, num_queries=1)


# ---------------------------------------------------------------- the denoising loss


def dn_outputs(targets, dn, logits, boxes, q=3):
    b = len(targets)
    return {
        "pred_logits": np.zeros((b, q, 6)),
        "pred_boxes": np.full((b, q, 4), 0.5),
        "dn": {"pred_logits": logits, "pred_boxes": boxes, "meta": dn},
    }


def test_perfect_reconstruction_costs_only_the_softmax_floor():
    targets, dn = make([2, 0, 3], groups=2, contrastive=True)
    b, qdn = dn.labels.shape
    boxes = np.full((b, qdn, 4), 0.5)
    logits = np.zeros((b, qdn, 6))
    index, positive, valid = layout(dn, targets)
    for i, t in enumerate(targets):
        for s in range(qdn):
            j = index[i, s]
            if positive[i, s]:
                boxes[i, s] = t["boxes"][j]
                logits[i, s, t["labels"][j]] = 10.0
            else:
                logits[i, s, 5] = 10.0  # negatives and padding: "no object"
    criterion = SetCriterion(5, HungarianMatcher(), WEIGHTS)
    losses, cache = criterion.forward(dn_outputs(targets, dn, logits, boxes), targets)
    assert float(losses["loss_bbox_dn"]) == 0.0
    assert float(losses["loss_giou_dn"]) == pytest.approx(0.0, abs=1e-15)
    # every scored slot puts logit 10 on its class and 0 on five others
    assert float(losses["loss_ce_dn"]) == pytest.approx(np.log1p(5 * np.exp(-10.0)), rel=1e-12)
    grads = criterion.backward(cache)["dn"]
    assert np.all(grads["pred_boxes"][~positive] == 0)
    assert np.all(grads["pred_logits"][~valid] == 0)  # padding is not scored


def test_box_terms_are_normalised_by_targets_times_groups():
    """Every group predicting the same boxes gives the one-group value: sum / (N * groups)."""
    counts = [2, 1]
    targets = make_targets(counts, seed=4)
    r = np.random.default_rng(5)
    values = {}
    for groups in (1, 3):
        dn = make_denoising_queries(targets, groups, 0.0, 0.0, 5, r, num_queries=3)
        one = np.concatenate([r.uniform(0.3, 0.7, (2, 2, 2)), r.uniform(0.1, 0.3, (2, 2, 2))], -1)
        one_logits = r.normal(size=(2, 2, 6))
        if groups == 1:
            first, first_logits = one, one_logits
        boxes, logits = np.tile(first, (1, groups, 1)), np.tile(first_logits, (1, groups, 1))
        losses, _ = SetCriterion(5, HungarianMatcher(), WEIGHTS).forward(
            dn_outputs(targets, dn, logits, boxes), targets
        )
        values[groups] = [float(losses[k]) for k in ("loss_ce_dn", "loss_bbox_dn", "loss_giou_dn")]
    np.testing.assert_allclose(values[3], values[1], rtol=1e-13)


def test_no_targets_anywhere_gives_zero_denoising_terms():
    targets, dn = make([0, 0], groups=3)
    assert dn.labels.shape == (2, 0)
    losses, cache = SetCriterion(5, HungarianMatcher(), WEIGHTS).forward(
        dn_outputs(targets, dn, np.zeros((2, 0, 6)), np.zeros((2, 0, 4))), targets
    )
    assert all(float(losses[k + "_dn"]) == 0.0 for k in ("loss_ce", "loss_bbox", "loss_giou"))
    grads = SetCriterion(5, HungarianMatcher(), WEIGHTS).backward(cache)
    assert grads["dn"]["pred_logits"].shape == (2, 0, 6)


def test_criterion_rejects_outputs_that_do_not_fit_the_layout():
    targets, dn = make([2, 1], groups=2)
    outputs = dn_outputs(targets, dn, np.zeros((2, 5, 6)), np.full((2, 5, 4), 0.5))
    with pytest.raises(ValueError, match=r"outputs\['dn'\] holds 5 queries"):
        SetCriterion(5, HungarianMatcher(), WEIGHTS).forward(outputs, targets)
    outputs["dn"]["meta"] = None
    with pytest.raises(TypeError, match=r"outputs\['dn'\]\['meta'\]"):
        SetCriterion(5, HungarianMatcher(), WEIGHTS).forward(outputs, targets)
