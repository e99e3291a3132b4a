"""The set criterion: minidetr's hand-written forward + backward against PyTorch autograd.

Run:  python benchmarks/bench_criterion.py [--quick]

Columns (milliseconds per call, NumPy / PyTorch on CPU; the contenders run in
interleaved rounds, so each sees the same machine load, and each keeps its best round):

* ``matching``: ``SetCriterion.forward`` minus the loss terms, i.e. the matcher
  of every layer (cost matrices and assignments, on the host);
* ``minidetr fwd+bwd``: ``forward(..., matches=...)`` with the matching held
  fixed, then ``backward``: the loss terms and every gradient, input checks included;
* ``PyTorch fwd+bwd``: the same loss terms written as DETR writes them
  (``F.cross_entropy`` with class weights, L1, 1 - diag GIoU, or the sigmoid focal
  loss), on the same matching, then ``loss.backward()``; when torch is installed.

Settings: DETR (softmax, 100 queries, 91 classes + no-object, 6 decoder layers),
Deformable DETR (focal, 300 queries, 6 layers) and a DINO-like setting (focal,
900 queries, 6 layers, 5 contrastive denoising groups), each with 4 images of
about 7 objects, in float32 as in training.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from minidetr.outputs import SetOutputs
from minidetr.setloss.criterion import LossWeights, SetCriterion
from minidetr.setloss.denoising import make_denoising_queries
from minidetr.setloss.matching import HungarianMatcher

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the comparison is optional
    torch = None

WEIGHTS = LossWeights(ce=1.0, bbox=5.0, giou=2.0)
SETTINGS = [  # name, queries, focal, decoder layers, denoising groups
    ("DETR, Q=100", 100, False, 6, 0),
    ("Deformable, Q=300, focal", 300, True, 6, 0),
    ("DINO-like, Q=900, focal, 5 dn groups", 900, True, 6, 5),
]
NUM_CLASSES, BATCH = 91, 4


def problem(rng, q, focal, layers, groups):
    k = NUM_CLASSES + (0 if focal else 1)

    def layer(n):
        boxes = np.concatenate(
            [rng.uniform(0.2, 0.8, (BATCH, n, 2)), rng.uniform(0.05, 0.4, (BATCH, n, 2))], -1
        )
        return {
            "pred_logits": rng.normal(0, 1, (BATCH, n, k)).astype(np.float32),
            "pred_boxes": boxes.astype(np.float32),
        }

    targets = []
    for t in rng.integers(3, 12, BATCH):
        boxes = np.concatenate(
            [rng.uniform(0.25, 0.75, (t, 2)), rng.uniform(0.05, 0.4, (t, 2))], -1
        )
        targets.append(
            {"labels": rng.integers(0, NUM_CLASSES, t), "boxes": boxes.astype(np.float32)}
        )
    outputs = {**layer(q), "aux_outputs": [layer(q) for _ in range(layers - 1)]}
    if groups:
        dn = make_denoising_queries(
            targets, groups, 0.5, 0.4, NUM_CLASSES, rng, num_queries=q, contrastive=True
        )
        n = dn.labels.shape[1]
        outputs["dn"] = {
            **layer(n),
            "aux_outputs": [layer(n) for _ in range(layers - 1)],
            "meta": dn,
        }
    return outputs, targets


def best_times(contenders: dict, rounds: int) -> dict:
    """Milliseconds per call of each contender: the best of ``rounds`` interleaved rounds."""
    for fn in contenders.values():
        fn()  # warm up (and compile)
    best = dict.fromkeys(contenders, float("inf"))
    for _ in range(rounds):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], (time.perf_counter() - start) * 1e3)
    return best


def torch_loss(outputs, targets, cache, focal):
    """DETR's loss terms in PyTorch on the assignments minidetr used; returns (loss, leaves)."""
    leaves, total = [], 0.0
    groups = SetOutputs.from_dict(outputs).groups
    for (group, index), c in cache.layers.items():
        layer = groups[group].layers[index]
        logits = torch.tensor(layer.logits, requires_grad=True)
        boxes = torch.tensor(layer.boxes, requires_grad=True)
        leaves += [logits, boxes]
        a = c.assignment
        src = torch.as_tensor(np.asarray(a.src))
        flat_logits = logits.reshape(-1, logits.shape[-1])
        if a.rows is not None:
            flat_logits = flat_logits[torch.as_tensor(np.asarray(a.rows))]
        classes = torch.as_tensor(np.asarray(a.row_classes))
        if focal:
            onehot = F.one_hot(classes, NUM_CLASSES + 1)[:, :NUM_CLASSES].to(flat_logits.dtype)
            p = flat_logits.sigmoid()
            ce = F.binary_cross_entropy_with_logits(flat_logits, onehot, reduction="none")
            p_t = p * onehot + (1 - p) * (1 - onehot)
            alpha_t = 0.25 * onehot + 0.75 * (1 - onehot)
            loss_ce = (alpha_t * ce * (1 - p_t) ** 2).sum() / a.num_boxes
        else:
            weight = torch.ones(NUM_CLASSES + 1)
            weight[-1] = 0.1
            loss_ce = F.cross_entropy(flat_logits, classes, weight)
        sb = boxes.reshape(-1, 4)[src]
        tb = torch.as_tensor(np.asarray(a.tgt_boxes))
        loss_bbox = (sb - tb).abs().sum() / a.num_boxes
        giou = _torch_paired_giou(_xyxy(sb), _xyxy(tb))
        loss_giou = (1 - giou).sum() / a.num_boxes
        total = total + loss_ce + 5 * loss_bbox + 2 * loss_giou
    return total, leaves


def _xyxy(b):
    return torch.cat([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], 1)


def _torch_paired_giou(a, b):
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    wh = (torch.min(a[:, 2:], b[:, 2:]) - torch.max(a[:, :2], b[:, :2])).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = area_a + area_b - inter
    hull = torch.max(a[:, 2:], b[:, 2:]) - torch.min(a[:, :2], b[:, :2])
    enclose = hull[:, 0] * hull[:, 1]
    return inter / union - (enclose - union) / enclose


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args()
    rounds = 3 if args.quick else 15
    if torch is not None:
        torch.set_num_threads(1)
    print("| setting | matching (ms) | minidetr fwd+bwd (ms) | PyTorch fwd+bwd (ms) |")
    print("| --- | ---: | ---: | ---: |")
    for name, q, focal, layers, groups in SETTINGS:
        print(bench_setting(name, q, focal, layers, groups, rounds))


def bench_setting(name, q, focal, layers, groups, rounds):
    """One markdown row: matching, minidetr forward + backward, PyTorch forward + backward."""
    rng = np.random.default_rng(0)
    outputs, targets = problem(rng, q, focal, layers, groups)
    criterion = SetCriterion(NUM_CLASSES, HungarianMatcher(focal=focal), WEIGHTS, focal=focal)
    losses, cache = criterion.forward(outputs, targets)
    matches = cache.matches

    def fixed():
        _, c = criterion.forward(outputs, targets, matches=matches)
        criterion.backward(c)

    contenders = {
        "full": lambda: criterion.forward(outputs, targets),
        "terms": lambda: criterion.forward(outputs, targets, matches=matches),
        "ours": fixed,
    }
    if torch is not None:
        loss, _ = torch_loss(outputs, targets, cache, focal)
        if not np.isclose(loss.item(), float(losses["loss"]), rtol=1e-4):
            raise RuntimeError(f"{name}: PyTorch {loss.item()} != minidetr {float(losses['loss'])}")

        def torch_step():
            total, _ = torch_loss(outputs, targets, cache, focal)
            total.backward()

        contenders["torch"] = torch_step
    t = best_times(contenders, rounds)
    theirs = f"{t['torch']:.1f}" if "torch" in t else "n/a"
    return f"| {name} | {t['full'] - t['terms']:.1f} | {t['ours']:.1f} | {theirs} |"


if __name__ == "__main__":
    main()
