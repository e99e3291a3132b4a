"""MOTChallenge text files and the CLEAR-MOT / identity metrics, by py-motmetrics.

One line per box: ``frame, id, x, y, w, h, conf, -1, -1, -1`` with frames counted from 1,
(x, y) the top-left corner and (w, h) the size, in pixels, the top-left pixel being (1, 1) as
in MOTChallenge (the reader subtracts the 1 again); ground truth has conf 1. Files are
read back with motmetrics' own MOT reader, so a file this module writes is a file the MOT
tools read. The metrics (MOTA, IDF1, identity switches, ...) are motmetrics'; only the IoU
distance matrix is computed here (with :func:`minidetr.boxes.box_iou`), because motmetrics
1.4's ``iou_matrix`` calls ``np.asfarray``, which NumPy 2 removed. Bernardin and
Stiefelhagen, "Evaluating Multiple Object Tracking Performance: the CLEAR MOT Metrics" (2008);
Ristani et al., "Performance Measures and a Data Set for Multi-Target, Multi-Camera Tracking"
(2016) for IDF1.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from minidetr.boxes import box_iou

METRICS = (
    "mota",
    "motp",
    "idf1",
    "num_switches",
    "num_false_positives",
    "num_misses",
    "num_objects",
    "mostly_tracked",
)


def _motmetrics():
    try:
        import motmetrics  # noqa: PLC0415
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "tracking metrics need py-motmetrics: pip install 'minidetr[video]'"
        ) from err
    return motmetrics


def to_mot_rows(frames: Sequence[dict], image_size: int) -> np.ndarray:
    """Per-frame dicts with "track_ids" (n,), "boxes" (n, 4) normalised cxcywh and optional
    "scores" (n,) -> MOT rows (R, 10) in pixels, frames from 1."""
    rows = []
    for t, f in enumerate(frames):
        boxes = np.asarray(f["boxes"], dtype=np.float64).reshape(-1, 4) * image_size
        scores = np.asarray(f.get("scores", np.ones(len(boxes))), dtype=np.float64)
        for tid, (cx, cy, w, h), conf in zip(np.asarray(f["track_ids"]), boxes, scores):
            x, y = cx - w / 2 + 1, cy - h / 2 + 1  # MOT pixels count from 1, like frames
            rows.append([t + 1, int(tid) + 1, x, y, w, h, conf, -1, -1, -1])
    return np.asarray(rows, dtype=np.float64).reshape(-1, 10)


def write_mot(path: str | Path, rows: np.ndarray) -> None:
    """Write MOT rows (R, 10) as MOTChallenge text: integers for frame and id, 2 decimals else."""
    with open(path, "w") as f:
        for r in rows:
            f.write(
                f"{int(r[0])},{int(r[1])},{r[2]:.2f},{r[3]:.2f},{r[4]:.2f},{r[5]:.2f},"
                f"{r[6]:.4f},-1,-1,-1\n"
            )


def read_mot(path: str | Path):
    """A MOT text file as motmetrics' data frame (index FrameId, Id; X, Y, Width, Height...)."""
    mm = _motmetrics()
    with warnings.catch_warnings():  # motmetrics 1.4 uses a pandas idiom pandas 3 deprecates
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return mm.io.loadtxt(str(path), fmt="mot15-2D", min_confidence=-1)


def _frame_boxes(df, frame: int) -> tuple[np.ndarray, np.ndarray]:
    """Ids (n,) and pixel xyxy boxes (n, 4) of one frame of a motmetrics data frame."""
    if frame not in df.index.get_level_values(0):
        return np.zeros(0, dtype=np.int64), np.zeros((0, 4))
    part = df.loc[frame]
    ids = part.index.to_numpy().astype(np.int64)
    xywh = part[["X", "Y", "Width", "Height"]].to_numpy(dtype=np.float64)
    return ids, np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)


def accumulate(gt, hyp, *, min_iou: float = 0.5):
    """A motmetrics accumulator for one sequence: per frame, pairs with IoU >= ``min_iou``
    may match (distance 1 - IoU), as the MOT benchmarks score 2D boxes."""
    mm = _motmetrics()
    acc = mm.MOTAccumulator(auto_id=False)
    frames = sorted(set(gt.index.get_level_values(0)) | set(hyp.index.get_level_values(0)))
    for frame in frames:
        gt_ids, gt_boxes = _frame_boxes(gt, frame)
        hyp_ids, hyp_boxes = _frame_boxes(hyp, frame)
        dist = np.full((len(gt_ids), len(hyp_ids)), np.nan)
        if len(gt_ids) and len(hyp_ids):
            iou = box_iou(gt_boxes, hyp_boxes)[0]  # (n_gt, n_hyp)
            dist = np.where(iou >= min_iou, 1.0 - iou, np.nan)
        acc.update(gt_ids.tolist(), hyp_ids.tolist(), dist, frameid=int(frame))
    return acc


def mot_metrics(accumulators: Sequence, names: Sequence[str]) -> dict:
    """motmetrics' summary over sequences: {"per_clip": {name: {...}}, "overall": {...}}."""
    mm = _motmetrics()
    summary = mm.metrics.create().compute_many(
        list(accumulators), metrics=list(METRICS), names=list(names), generate_overall=True
    )
    table = {str(name): {m: float(summary.loc[name, m]) for m in METRICS} for name in summary.index}
    overall = table.pop("OVERALL")
    return {"per_clip": table, "overall": overall}


__all__ = ["accumulate", "mot_metrics", "read_mot", "to_mot_rows", "write_mot"]
