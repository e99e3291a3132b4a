"""Track bookkeeping on the host: who is who from frame to frame.

Dimension letters: n live tracks, m detections in a frame, Q queries, C classes.

Two pieces every tracker here shares:

* :func:`assign_track_queries`, the training-time rule of tracking by query (TrackFormer,
  MOTR): a track query belongs to the object whose identity it carries, by construction, and
  only the objects no track query carries are left to the Hungarian matching of the object
  queries;
* :class:`IoUTracker`, the baseline of tracking by detection: detect every frame on its own,
  then link detections to live tracks by the Hungarian algorithm on 1 - IoU (SORT without
  the Kalman filter; Bewley et al., "Simple Online and Realtime Tracking", 2016). New tracks
  start above ``new_score``; a track that finds no detection for ``patience`` frames ends.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minidetr.assignment import linear_sum_assignment
from minidetr.boxes import box_cxcywh_to_xyxy, box_iou


@dataclass(frozen=True)
class TrackerConfig:
    """When a track starts, continues and ends."""

    # scores are focal (sigmoid) scores, which run low; 0.3 / 0.3 were chosen for track queries on
    # unseen clips of the training split (benchmarks/bench_tracking.py sweep), never held-out ones
    new_score: float = 0.3  # a detection (or object query) starts a track above this score
    keep_score: float = 0.3  # a track query (or detection linked to a track) keeps it above this
    patience: int = 2  # frames a track may go unseen before it ends
    min_iou: float = 0.3  # IoU a detection needs with a track's last box to continue it
    duplicate_iou: float = 0.6  # a new object overlapping a live track this much is a duplicate

    def __post_init__(self) -> None:
        for name in ("new_score", "keep_score", "min_iou", "duplicate_iou"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.patience < 0:
            raise ValueError(f"patience must be non-negative, got {self.patience}")


def assign_track_queries(
    query_ids: np.ndarray, target_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Which target each track query answers, and which targets the object queries must find.

    query_ids (Qt,) the identity each track query carries; target_ids (n,) the identities in
    this frame. Returns (query_target (Qt,) int64, the index of the target with that identity
    or -1 for a track whose object is gone, which must then say "no object"; untracked (n,)
    bool, the targets no track query carries, left to the Hungarian matching).
    """
    query_ids, target_ids = np.asarray(query_ids), np.asarray(target_ids)
    if len(set(target_ids.tolist())) != len(target_ids):
        raise ValueError(f"target_ids must be distinct, got {target_ids.tolist()}")
    where = {int(i): j for j, i in enumerate(target_ids)}
    query_target = np.array([where.get(int(i), -1) for i in query_ids], dtype=np.int64)
    untracked = np.ones(len(target_ids), dtype=bool)
    untracked[query_target[query_target >= 0]] = False
    return query_target, untracked


def query_detections(logits: np.ndarray, focal: bool) -> tuple[np.ndarray, np.ndarray]:
    """Each query's (score, label): its best class, by sigmoid (focal) or softmax without the
    no-object column. logits (Q, K) on the host."""
    logits = np.asarray(logits, dtype=np.float64)
    if focal:
        prob = 1.0 / (1.0 + np.exp(-logits))
    else:
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        prob = (e / e.sum(axis=-1, keepdims=True))[:, :-1]
    return prob.max(axis=-1), prob.argmax(axis=-1)


def iou_links(
    track_boxes: np.ndarray, det_boxes: np.ndarray, min_iou: float
) -> list[tuple[int, int]]:
    """Pairs (track, detection) of the assignment maximising total IoU, each with IoU >= min_iou.

    Boxes are normalised cxcywh: track_boxes (n, 4), det_boxes (m, 4).
    """
    if len(track_boxes) == 0 or len(det_boxes) == 0:
        return []
    iou = box_iou(box_cxcywh_to_xyxy(track_boxes), box_cxcywh_to_xyxy(det_boxes))[0]  # (n, m)
    rows, cols = linear_sum_assignment(1.0 - iou)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if iou[r, c] >= min_iou]


class IoUTracker:
    """Per-frame detections linked by IoU: the baseline every temporal model must beat."""

    def __init__(self, config: TrackerConfig | None = None) -> None:
        self.config = TrackerConfig() if config is None else config
        self.ids: list[int] = []
        self.boxes = np.zeros((0, 4))
        self.misses: list[int] = []
        self.next_id = 0

    def step(self, scores: np.ndarray, labels: np.ndarray, boxes: np.ndarray) -> dict:
        """One frame's detections, scores (m,), labels (m,), boxes (m, 4) cxcywh -> the frame's
        tracks {"track_ids", "boxes", "scores", "labels"} (the tracks seen in this frame)."""
        cfg = self.config
        keep = np.asarray(scores) >= cfg.keep_score
        scores, labels, boxes = scores[keep], labels[keep], np.asarray(boxes)[keep]
        links = iou_links(self.boxes, boxes, cfg.min_iou)
        linked_tracks = {t for t, _ in links}
        linked_dets = {d for _, d in links}
        out_ids, out_idx = [], []
        ids, new_boxes, misses = [], [], []
        for t, d in links:  # continue
            ids.append(self.ids[t])
            new_boxes.append(boxes[d])
            misses.append(0)
            out_ids.append(self.ids[t])
            out_idx.append(d)
        for t in range(len(self.ids)):  # unseen: wait, or end
            if t not in linked_tracks and self.misses[t] < cfg.patience:
                ids.append(self.ids[t])
                new_boxes.append(self.boxes[t])
                misses.append(self.misses[t] + 1)
        for d in np.argsort(-scores, kind="stable"):  # start, best first, no duplicates
            if int(d) in linked_dets or scores[d] < cfg.new_score:
                continue
            taken = boxes[np.asarray(out_idx, dtype=np.int64)].reshape(-1, 4)
            if iou_links(taken, boxes[d : d + 1], cfg.duplicate_iou):
                continue
            ids.append(self.next_id)
            new_boxes.append(boxes[d])
            misses.append(0)
            out_ids.append(self.next_id)
            out_idx.append(int(d))
            self.next_id += 1
        self.ids, self.misses = ids, misses
        self.boxes = np.asarray(new_boxes, dtype=np.float64).reshape(-1, 4)
        idx = np.asarray(out_idx, dtype=np.int64)
        return {
            "track_ids": np.asarray(out_ids, dtype=np.int64),
            "boxes": boxes[idx].reshape(-1, 4),
            "scores": scores[idx],
            "labels": labels[idx],
        }
