"""DETR's set criterion: golden values, a plain-loop reference, gradients and invariances."""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minidetr.backend import to_numpy
from minidetr.gradcheck import gradcheck
from minidetr.setloss.criterion import LossWeights, SetCriterion
from minidetr.setloss.denoising import make_denoising_queries
from minidetr.setloss.matching import HungarianMatcher

DATA = Path(__file__).parent / "data"
WEIGHTS = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}  # the plain reference's
TERMS = ("loss_ce", "loss_bbox", "loss_giou")


def make_criterion(num_classes, focal=False, eos_coef=0.1, weights=None):
    weights = LossWeights(ce=1.0, bbox=5.0, giou=2.0) if weights is None else weights
    return SetCriterion(
        num_classes, HungarianMatcher(focal=focal), weights, eos_coef=eos_coef, focal=focal
    )


def random_problem(
    seed, b=3, q=5, num_classes=4, counts=(2, 0, 3), n_aux=1, focal=False, dn=0, enc=False
):
    """Random predictions and targets (NumPy): ``n_aux`` aux layers, ``dn`` groups, proposals."""
    r = np.random.default_rng(seed)
    k = num_classes + (0 if focal else 1)

    def layer(n):
        centre = r.uniform(0.2, 0.8, (b, n, 2))
        size = r.uniform(0.05, 0.5, (b, n, 2))
        return {
            "pred_logits": r.normal(0, 1.5, (b, n, k)),
            "pred_boxes": np.concatenate([centre, size], -1),
        }

    targets = []
    for t in counts[:b]:
        centre, size = r.uniform(0.25, 0.75, (t, 2)), r.uniform(0.05, 0.4, (t, 2))
        targets.append(
            {"labels": r.integers(0, num_classes, t), "boxes": np.concatenate([centre, size], -1)}
        )
    outputs = layer(q)
    if n_aux:
        outputs["aux_outputs"] = [layer(q) for _ in range(n_aux)]
    if enc:
        outputs["enc_outputs"] = layer(q)
    if dn:
        meta = make_denoising_queries(
            targets,
            dn,
            0.3,
            0.4,
            num_classes,
            np.random.default_rng(seed),
            num_queries=q,
            contrastive=True,
        )
        qdn = meta.labels.shape[1]
        outputs["dn"] = {**layer(qdn), "aux_outputs": [layer(qdn)], "meta": meta}
    return outputs, targets


def to_xp(tree, xp):
    """Every NumPy array of a nested dict/list moved into namespace ``xp`` (meta stays as is)."""
    if isinstance(tree, dict):
        return {k: (v if k == "meta" else to_xp(v, xp)) for k, v in tree.items()}
    if isinstance(tree, list):
        return [to_xp(v, xp) for v in tree]
    return xp.asarray(tree)


def leaves(tree, prefix=""):
    """(path, array) of every prediction array of an outputs/grads dict, in a fixed order."""
    for key in ("pred_logits", "pred_boxes"):
        if key in tree:
            yield prefix + key, tree[key]
    for i, layer in enumerate(tree.get("aux_outputs", [])):
        yield from leaves(layer, f"{prefix}aux{i}.")
    if "enc_outputs" in tree:
        yield from leaves(tree["enc_outputs"], prefix + "enc.")
    if "dn" in tree:
        yield from leaves(tree["dn"], prefix + "dn.")


def rebuild(outputs, arrays):
    """``outputs`` with its prediction arrays replaced, in the order of ``leaves``."""
    it = iter(arrays)

    def walk(tree):
        new = {k: v for k, v in tree.items() if k not in ("aux_outputs", "enc_outputs", "dn")}
        for key in ("pred_logits", "pred_boxes"):
            new[key] = next(it)
        if "aux_outputs" in tree:
            new["aux_outputs"] = [walk(a) for a in tree["aux_outputs"]]
        if "enc_outputs" in tree:
            new["enc_outputs"] = walk(tree["enc_outputs"])
        if "dn" in tree:
            new["dn"] = walk(tree["dn"])
        return new

    return walk(outputs)


# ---------------------------------------------------------------- golden values from PyTorch


def golden_problem(xp):
    g = np.load(DATA / "set_criterion.npz")
    n = int(g["n_aux"])

    def layer(j):
        return {
            "pred_logits": xp.asarray(g[f"logits_{j}"]),
            "pred_boxes": xp.asarray(g[f"boxes_{j}"]),
        }

    outputs = {**layer(n), "aux_outputs": [layer(j) for j in range(n)]}
    targets = [
        {"labels": xp.asarray(g[f"labels_{i}"]), "boxes": xp.asarray(g[f"tboxes_{i}"])}
        for i in range(g["logits_0"].shape[0])
    ]
    return g, outputs, targets


def test_losses_and_gradients_equal_pytorch(xp):
    g, outputs, targets = golden_problem(xp)
    n = int(g["n_aux"])
    criterion = make_criterion(int(g["num_classes"]), eos_coef=float(g["eos_coef"]))
    losses, cache = criterion.forward(outputs, targets)
    for key in ("loss", *TERMS, *(f"{t}_{j}" for t in TERMS for j in range(n))):
        np.testing.assert_allclose(float(losses[key]), float(g[key]), rtol=1e-12, err_msg=key)
    grads = criterion.backward(cache)
    pairs = [(grads, n)] + [(grads["aux_outputs"][j], j) for j in range(n)]
    for layer, j in pairs:
        np.testing.assert_allclose(to_numpy(layer["pred_logits"]), g[f"dlogits_{j}"], atol=1e-13)
        np.testing.assert_allclose(to_numpy(layer["pred_boxes"]), g[f"dboxes_{j}"], atol=1e-13)
    assert type(grads["pred_boxes"]) is type(
        outputs["pred_boxes"]
    )  # array type in = array type out


# ---------------------------------------------------------------- a slow reference in plain loops


def _xyxy(b):
    cx, cy, w, h = b
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def _giou(a, b):
    ax0, ay0, ax1, ay1 = _xyxy(a)
    bx0, by0, bx1, by1 = _xyxy(b)
    inter = max(min(ax1, bx1) - max(ax0, bx0), 0.0) * max(min(ay1, by1) - max(ay0, by0), 0.0)
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    hull = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    return inter / union - (hull - union) / hull


def _softmax(row):
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return [v / sum(e) for v in e]


def _focal(x, t, alpha=0.25, gamma=2.0):
    p = 1.0 / (1.0 + math.exp(-x))
    if t == 1:
        return -alpha * (1 - p) ** gamma * math.log(p)
    return -(1 - alpha) * p**gamma * math.log(1 - p)


def _cost(logits, box, label, tbox, focal):
    if focal:
        p = 1.0 / (1.0 + math.exp(-logits[label]))
        cls = 0.25 * (1 - p) ** 2 * -math.log(p) - 0.75 * p**2 * -math.log(1 - p)
    else:
        cls = -_softmax(logits)[label]
    l1 = sum(abs(u - v) for u, v in zip(box, tbox))
    return cls + 5 * l1 - 2 * _giou(box, tbox)


def brute_force_match(logits, boxes, labels, tboxes, focal):
    """Try every injective map of targets to queries; return {query: target} of least cost."""
    q, t = len(boxes), len(labels)
    best, best_cost = {}, math.inf
    for queries in itertools.permutations(range(q), t):
        c = sum(
            _cost(logits[qq], boxes[qq], labels[j], tboxes[j], focal)
            for j, qq in enumerate(queries)
        )
        if c < best_cost:
            best, best_cost = {qq: j for j, qq in enumerate(queries)}, c
    return best


def reference_layer(logits, boxes, targets, answer, num_boxes, num_classes, focal, eos, scored):
    """Loss terms of one layer; answer[b][q] = target index or None; scored[b][q] bool."""
    ce_num = ce_den = l1 = giou = 0.0
    for b, t in enumerate(targets):
        for q in range(len(boxes[b])):
            if not scored[b][q]:
                continue
            j = answer[b].get(q)
            cls = num_classes if j is None else int(t["labels"][j])
            if focal:
                ce_num += sum(_focal(logits[b][q][c], int(c == cls)) for c in range(num_classes))
            else:
                w = eos if cls == num_classes else 1.0
                ce_num += -w * math.log(_softmax(logits[b][q])[cls])
                ce_den += w
            if j is not None:
                l1 += sum(abs(u - v) for u, v in zip(boxes[b][q], t["boxes"][j]))
                giou += 1.0 - _giou(boxes[b][q], t["boxes"][j])
    ce = ce_num / num_boxes if focal else (ce_num / ce_den if ce_den else 0.0)
    return {"loss_ce": ce, "loss_bbox": l1 / num_boxes, "loss_giou": giou / num_boxes}


def reference_loss(outputs, targets, num_classes, focal, eos=0.1):
    """Every loss term, matching by brute force and laying out denoising slots by hand."""
    num_boxes = max(sum(len(t["labels"]) for t in targets), 1)
    out = {}
    layers = [("", outputs)] + [(f"_{i}", a) for i, a in enumerate(outputs.get("aux_outputs", []))]
    if "enc_outputs" in outputs:
        layers.append(("_enc", outputs["enc_outputs"]))
    for suffix, layer in layers:
        lg, bx = layer["pred_logits"].tolist(), layer["pred_boxes"].tolist()
        answer = [
            brute_force_match(lg[b], bx[b], t["labels"].tolist(), t["boxes"].tolist(), focal)
            for b, t in enumerate(targets)
        ]
        scored = [[True] * len(bx[b]) for b in range(len(targets))]
        terms = reference_layer(lg, bx, targets, answer, num_boxes, num_classes, focal, eos, scored)
        out.update({k + suffix: v for k, v in terms.items()})
    if "dn" in outputs:
        dn, meta = outputs["dn"], outputs["dn"]["meta"]
        tmax = max(len(t["labels"]) for t in targets)
        answer, scored = [], []
        for t in targets:
            answer.append({})
            scored.append([])
            for g in range(meta.num_groups):
                for j in range(2 * tmax):  # contrastive: tmax positives then tmax negatives
                    slot, copy = g * 2 * tmax + j, j % tmax
                    scored[-1].append(copy < len(t["labels"]))
                    if j < tmax and copy < len(t["labels"]):
                        answer[-1][slot] = copy
        n_dn = max(sum(len(t["labels"]) for t in targets) * meta.num_groups, 1)
        for suffix, layer in [("_dn", dn)] + [
            (f"_dn_{i}", a) for i, a in enumerate(dn["aux_outputs"])
        ]:
            lg, bx = layer["pred_logits"].tolist(), layer["pred_boxes"].tolist()
            terms = reference_layer(lg, bx, targets, answer, n_dn, num_classes, focal, eos, scored)
            out.update({k + suffix: v for k, v in terms.items()})
    out["loss"] = sum(WEIGHTS[re.sub(r"(_dn|_enc)?(_\d+)?$", "", k)] * v for k, v in out.items())
    return out


@pytest.mark.parametrize("focal", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_plain_loop_reference(focal, seed):
    outputs, targets = random_problem(
        seed, focal=focal, dn=2, enc=True, counts=((2, 0, 3), (1, 1, 2), (0, 0, 1))[seed]
    )
    losses, _ = make_criterion(4, focal=focal).forward(outputs, targets)
    expected = reference_loss(outputs, targets, 4, focal)
    for key, value in expected.items():
        assert abs(float(losses[key]) - value) <= 1e-10 * max(1.0, abs(value)), key


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("focal", [False, True])
def test_gradcheck_through_every_layer(xp, focal):
    outputs, targets = random_problem(
        7, b=2, q=3, num_classes=3, counts=(2, 1), focal=focal, dn=2, enc=True
    )
    outputs, targets = to_xp(outputs, xp), to_xp(targets, xp)
    criterion = make_criterion(3, focal=focal)
    _, cache = criterion.forward(outputs, targets)
    matches = cache.matches  # held fixed: the loss is then smooth in the predictions
    names, inputs = zip(*leaves(outputs))

    def forward(*arrays):
        losses, c = criterion.forward(rebuild(outputs, arrays), targets, matches=matches)
        return losses["loss"], c

    def backward(dloss, c):
        return [dloss * g for _, g in leaves(criterion.backward(c).to_dict())]

    result = gradcheck(
        forward, backward, inputs, names=names, max_entries=12 if xp is not np else None
    )
    assert result.max_error < 1e-6, result.report()


def test_gradients_of_unmatched_queries_touch_only_their_logits():
    outputs, targets = random_problem(3, n_aux=0)
    losses, cache = make_criterion(4).forward(outputs, targets)
    grads = make_criterion(4).backward(cache)
    for b, (pred_idx, _) in enumerate(cache.matches[("main", 0)]):
        unmatched = np.setdiff1d(np.arange(5), pred_idx)
        assert np.all(grads["pred_boxes"][b, unmatched] == 0)
        assert np.all(np.abs(grads["pred_logits"][b, unmatched]).sum(-1) > 0)


# ---------------------------------------------------------------- invariances


@given(st.integers(0, 2**31 - 1), st.booleans())
def test_invariant_to_permuting_targets_and_queries(seed, focal):
    outputs, targets = random_problem(seed, focal=focal)
    criterion = make_criterion(4, focal=focal)
    losses, cache = criterion.forward(outputs, targets)
    grads = criterion.backward(cache)
    r = np.random.default_rng(seed)
    shuffled_targets = []
    for t in targets:
        p = r.permutation(len(t["labels"]))
        shuffled_targets.append({"labels": t["labels"][p], "boxes": t["boxes"][p]})
    perm = r.permutation(outputs["pred_logits"].shape[1])
    shuffled = {k: v[:, perm] for k, v in outputs.items() if k != "aux_outputs"}
    shuffled["aux_outputs"] = [
        {k: v[:, perm] for k, v in a.items()} for a in outputs["aux_outputs"]
    ]
    losses2, cache2 = criterion.forward(shuffled, shuffled_targets)
    grads2 = criterion.backward(cache2)
    for key in ("loss", *TERMS, "cardinality_error", "class_error"):
        np.testing.assert_allclose(float(losses2[key]), float(losses[key]), rtol=1e-12, err_msg=key)
    for key in ("pred_logits", "pred_boxes"):
        np.testing.assert_allclose(grads2[key], grads[key][:, perm], atol=1e-14)


# ---------------------------------------------------------------- images without objects


def test_zero_targets_leave_only_the_no_object_term(xp):
    outputs, targets = random_problem(5, counts=(0, 0, 0))
    outputs, targets = to_xp(outputs, xp), to_xp(targets, xp)
    criterion = make_criterion(4)
    losses, cache = criterion.forward(outputs, targets)
    grads = criterion.backward(cache)
    logits = to_numpy(outputs["pred_logits"])
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    no_object = -logp[..., 4].mean()  # every query is "no object", all with weight eos_coef
    assert math.isfinite(float(losses["loss"]))
    np.testing.assert_allclose(float(losses["loss_ce"]), no_object, rtol=1e-12)
    for suffix in ("", "_0"):
        assert float(losses["loss_bbox" + suffix]) == 0.0
        assert float(losses["loss_giou" + suffix]) == 0.0
    np.testing.assert_allclose(
        float(losses["loss"]), float(losses["loss_ce"] + losses["loss_ce_0"])
    )
    assert np.all(to_numpy(grads["pred_boxes"]) == 0)
    assert np.all(to_numpy(grads["aux_outputs"][0]["pred_boxes"]) == 0)


def test_an_empty_image_in_a_batch_gets_zero_box_gradients():
    outputs, targets = random_problem(6, counts=(2, 0, 3), dn=1)
    grads = make_criterion(4).backward(make_criterion(4).forward(outputs, targets)[1])
    assert np.all(grads["pred_boxes"][1] == 0)
    assert np.all(grads["dn"]["pred_boxes"][1] == 0)
    assert np.all(grads["dn"]["pred_logits"][1] == 0)  # all its slots are padding


# ---------------------------------------------------------------- a case worked by hand


def test_two_queries_one_target_by_hand():
    # one class; query 0 is close to the target, query 1 far away and confident of "no object"
    outputs = {
        "pred_logits": np.array([[[0.0, 0.0], [0.0, math.log(3.0)]]]),
        "pred_boxes": np.array([[[0.5, 0.5, 0.4, 0.3], [0.1, 0.1, 0.1, 0.1]]]),
    }
    targets = [{"labels": np.array([0]), "boxes": np.array([[0.5, 0.5, 0.2, 0.2]])}]
    criterion = make_criterion(1)
    losses, cache = criterion.forward(outputs, targets)
    # query 0 -> class 0 with p = 1/2 (weight 1); query 1 -> no object with p = 3/4 (weight 0.1)
    loss_ce = (math.log(2.0) + 0.1 * math.log(4.0 / 3.0)) / 1.1
    # xyxy: prediction (0.3, 0.35, 0.7, 0.65) contains the target (0.4, 0.4, 0.6, 0.6):
    # IoU = 0.04 / 0.12 = 1/3 and the hull is the prediction, so GIoU = 1/3
    expected = {
        "loss_ce": loss_ce,
        "loss_bbox": 0.2 + 0.1,
        "loss_giou": 1.0 - 1.0 / 3.0,
        "loss": loss_ce + 5 * 0.3 + 2 * (2.0 / 3.0),
        "cardinality_error": 0.0,  # query 0 argmax ties -> first class (an object), query 1 none
        "class_error": 0.0,
    }
    for key, value in expected.items():
        assert float(losses[key]) == pytest.approx(value, rel=1e-14, abs=1e-14), key
    np.testing.assert_array_equal(cache.matches[("main", 0)][0][0], [0])
    grads = criterion.backward(cache)
    # dCE/dx = w / sum(w) * (softmax - onehot)
    dlogits = np.array([[[-0.5 / 1.1, 0.5 / 1.1], [0.1 / 1.1 * 0.25, -0.1 / 1.1 * 0.25]]])
    # GIoU = 0.04 / (w h) while the target stays inside: dGIoU/dw = -0.04 / (w^2 h) = -5/6,
    # dGIoU/dh = -0.04 / (w h^2) = -10/9; the centre moves nothing. L1 adds 5 * sign.
    dboxes = np.array([[[0.0, 0.0, 5 + 2 * 5 / 6, 5 + 2 * 10 / 9], [0.0, 0.0, 0.0, 0.0]]])
    np.testing.assert_allclose(grads["pred_logits"], dlogits, atol=1e-15)
    np.testing.assert_allclose(grads["pred_boxes"], dboxes, atol=1e-14)


# ---------------------------------------------------------------- weights and options


def test_layer_weights_multiply_term_group_and_aux_weights():
    w = LossWeights(ce=2.0, bbox=5.0, giou=3.0, aux=0.5, enc=0.25, dn=4.0)
    assert w.layer("main", 2, 3) == (2.0, 5.0, 3.0)
    assert w.layer("main", 0, 3) == (1.0, 2.5, 1.5)
    assert w.layer("enc", 0, 1) == (0.5, 1.25, 0.75)
    assert w.layer("dn", 2, 3) == (8.0, 20.0, 12.0)
    assert w.layer("dn", 1, 3) == (4.0, 10.0, 6.0)
    for bad_value in (-1.0, float("nan"), float("inf"), "1", True):
        with pytest.raises(ValueError, match="LossWeights.aux"):
            LossWeights(aux=bad_value)
    with pytest.raises(TypeError, match="LossWeights"):
        SetCriterion(4, HungarianMatcher(), WEIGHTS)


class CountingMatcher(HungarianMatcher):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def match(self, pred, targets):
        self.calls += 1
        return super().match(pred, targets)


def test_a_group_of_zero_weight_is_neither_matched_nor_scored():
    outputs, targets = random_problem(4, n_aux=2, dn=1, enc=True)
    full = make_criterion(4)
    losses, cache = full.forward(outputs, targets)
    matcher = CountingMatcher()
    no_aux = SetCriterion(4, matcher, LossWeights(ce=1.0, bbox=5.0, giou=2.0, aux=0.0, enc=0.0))
    losses0, cache0 = no_aux.forward(outputs, targets)
    assert matcher.calls == 1  # the last decoder layer only: no aux layer, no proposals
    assert set(cache0.layers) == {("main", 2), ("dn", 1)}
    assert not any(k.endswith(("_0", "_1", "_enc")) for k in losses0)
    expected = sum(
        w * float(losses[t + s]) for s in ("", "_dn") for t, w in zip(TERMS, (1.0, 5.0, 2.0))
    )
    np.testing.assert_allclose(float(losses0["loss"]), expected, rtol=1e-12)
    grads = no_aux.backward(cache0)
    assert grads.group("main").layers[0] == (None, None)  # read as zero by the model
    assert grads.group("enc").layers[0] == (None, None)
    np.testing.assert_array_equal(grads["pred_logits"], full.backward(cache)["pred_logits"])


def test_losses_option_selects_terms():
    outputs, targets = random_problem(8)
    weights = LossWeights(ce=1.0, bbox=5.0, giou=2.0)
    losses, cache = SetCriterion(4, HungarianMatcher(), weights, losses=("boxes",)).forward(
        outputs, targets
    )
    assert "loss_ce" not in losses and "cardinality_error" not in losses
    grads = SetCriterion(4, HungarianMatcher(), weights, losses=("boxes",)).backward(cache)
    assert np.all(grads["pred_logits"] == 0)
    np.testing.assert_allclose(
        float(losses["loss"]),
        sum(
            5 * float(losses[f"loss_bbox{s}"]) + 2 * float(losses[f"loss_giou{s}"])
            for s in ("", "_0")
        ),
    )


# ---------------------------------------------------------------- bad input


def bad(outputs, targets, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make_criterion(4).forward(outputs, targets)


def test_bad_targets_name_the_image_and_field():
    outputs, targets = random_problem(9)
    t = [dict(x) for x in targets]
    t[2]["labels"] = np.array([0, 4, 1])
    bad(outputs, t, r"targets\[2\]\['labels'\]")
    t = [dict(x) for x in targets]
    t[0]["boxes"] = t[0]["boxes"] + 0.9
    bad(outputs, t, r"targets\[0\]\['boxes'\]")
    t = [dict(x) for x in targets]
    t[2]["boxes"] = t[2]["boxes"] * np.array([1.0, 1.0, 0.0, 1.0])
    bad(outputs, t, r"targets\[2\]\['boxes'\] must have positive width")
    t = [dict(x) for x in targets]
    t[0]["labels"] = t[0]["labels"][:1]
    bad(outputs, t, r"targets\[0\]\['boxes'\] has 2 boxes")
    bad(outputs, targets[:2], "batch size 3")
    t = [dict(x) for x in targets]
    t[1]["labels"] = t[1]["labels"].astype(np.float64)
    bad(outputs, t, r"targets\[1\]\['labels'\]")


def test_bad_predictions_name_the_layer_and_field():
    outputs, targets = random_problem(10)
    o = dict(outputs, aux_outputs=[dict(outputs["aux_outputs"][0])])
    o["aux_outputs"][0]["pred_logits"] = o["aux_outputs"][0]["pred_logits"].copy()
    o["aux_outputs"][0]["pred_logits"][1, 2, 3] = np.nan
    bad(o, targets, r"outputs\['aux_outputs'\]\[0\]\['pred_logits'\] must be finite")
    o = dict(outputs, pred_boxes=outputs["pred_boxes"].copy())
    o["pred_boxes"][0, 0, 0] = np.inf
    bad(o, targets, r"outputs\['pred_boxes'\] must be finite")
    bad(dict(outputs, pred_logits=outputs["pred_logits"][..., :4]), targets, r"\(B, Q, 5\)")
    bad(dict(outputs, pred_box=outputs["pred_boxes"]), targets, "unknown keys")
    o = dict(outputs, aux_outputs=[{k: v[:2] for k, v in outputs["aux_outputs"][0].items()}])
    bad(o, targets, "batch size 2")
    with pytest.raises(ValueError, match="focal"):
        SetCriterion(4, HungarianMatcher(focal=True), focal=False)
