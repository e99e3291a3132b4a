"""Checks of the predictions the set loss receives, with DETR's names in every message.

Shapes and dtypes are checked layer by layer (no device read); the values (finite,
non-negative box sizes) of every layer of every group are checked with one host
read for the whole batch, and only a failure goes back to name the layer and entry.
"""

from __future__ import annotations

from minidetr.backend import namespace
from minidetr.checks import check_finite, check_floating
from minidetr.outputs import DN, ENC, MAIN, Predictions, SetOutputs


def layer_name(group: str, index: int, num_layers: int) -> str:
    """Where a layer sits in DETR's ``outputs`` dict, for error messages."""
    last = index == num_layers - 1
    if group == MAIN:
        return "outputs" if last else f"outputs['aux_outputs'][{index}]"
    if group == ENC:
        return "outputs['enc_outputs']"
    if group == DN:
        return "outputs['dn']" if last else f"outputs['dn']['aux_outputs'][{index}]"
    return f"outputs group {group!r} layer {index}"


def check_set_outputs(outputs: SetOutputs, num_classes: int, focal: bool) -> int:
    """Raise an error naming the layer and field unless every prediction is usable; returns B."""
    k = num_classes + (0 if focal else 1)
    main = outputs.groups[MAIN].layers
    bsz, _ = _check_shapes(
        main[-1], layer_name(MAIN, len(main) - 1, len(main)), k, num_classes, focal
    )
    layers = []
    for name, group in outputs:
        queries = None
        for i, pred in enumerate(group.layers):
            where = layer_name(name, i, len(group.layers))
            b, q = _check_shapes(pred, where, k, num_classes, focal)
            if b != bsz:
                raise ValueError(f"{where} has batch size {b}, outputs has {bsz}")
            if queries is not None and q != queries:
                raise ValueError(f"{where} must hold as many queries as the group's first layer")
            queries = q
            layers.append((where, pred))
    xp = namespace(*(p.logits for _, p in layers))
    flags = [
        xp.any(~xp.isfinite(p.logits))
        | xp.any(~xp.isfinite(p.boxes))
        | xp.any(p.boxes[..., 2:] < 0)
        for _, p in layers
    ]
    if bool(xp.any(xp.stack(flags))):  # the one host read; name the culprit only on failure
        for where, p in layers:
            check_finite(p.logits, f"{where}['pred_logits']")
            check_finite(p.boxes, f"{where}['pred_boxes']")
            if bool(xp.any(p.boxes[..., 2:] < 0)):
                raise ValueError(
                    f"{where}['pred_boxes'] must be cxcywh with non-negative width and height"
                )
    return int(bsz)


def _check_shapes(
    pred: Predictions, where: str, k: int, num_classes: int, focal: bool
) -> tuple[int, int]:
    for key, x in (("pred_logits", pred.logits), ("pred_boxes", pred.boxes)):
        if x is None:
            raise ValueError(f"{where} is missing '{key}'")
        check_floating(x, f"{where}['{key}']")
    logits, boxes = pred.logits, pred.boxes
    if logits.ndim != 3 or logits.shape[2] != k:
        raise ValueError(
            f"{where}['pred_logits'] must have shape (B, Q, {k}) for {num_classes} "
            f"classes{' with focal loss' if focal else ' plus no-object'}, "
            f"got {tuple(logits.shape)}"
        )
    if tuple(boxes.shape) != (*logits.shape[:2], 4):
        raise ValueError(
            f"{where}['pred_boxes'] must have shape {(*logits.shape[:2], 4)}, "
            f"got {tuple(boxes.shape)}"
        )
    return int(logits.shape[0]), int(logits.shape[1])
