"""Running a trained model over clips: tracking by query, or detection plus IoU association.

Dimension letters: B clips processed together, one frame of each at a time; Qt track queries;
Q object queries.

``track_clips`` walks B clips frame by frame. With ``track_queries`` (TrackFormer's inference):

* every live track enters the frame as a track query (its class and last box);
* a track query scoring at least ``keep_score`` continues its track with its new box; one that
  scores less leaves its track unseen, and a track unseen for more than ``patience`` frames ends;
* an object query scoring at least ``new_score`` starts a new track, unless its box overlaps a
  box already given out in this frame by ``duplicate_iou`` or more.

With a ``content`` whose mode is not "none", a track query also carries the decoder embedding
its track was last seen with (TrackFormer), read with the track's window and memory bank
(:mod:`minidetr.video.track_content`); each track keeps its history on the host.
Without (the baseline) the model sees each frame alone and :class:`IoUTracker` links the boxes.
Returns, per clip and frame, the tracks seen: {"track_ids", "boxes", "scores", "labels"}.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minidetr.backend import Array, asarray, to_numpy
from minidetr.outputs import DN
from minidetr.video.association import IoUTracker, TrackerConfig, iou_links, query_detections
from minidetr.video.track_content import ContentSpec, slot_content_forward
from minidetr.video.track_history import HistoryConfig, TrackHistory
from minidetr.video.track_queries import decoder_queries, make_track_queries

LIVE = ("ids", "labels", "boxes", "misses", "history")


class _Live:
    """One clip's live tracks (host arrays)."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.labels: list[int] = []
        self.boxes: list[np.ndarray] = []
        self.misses: list[int] = []
        self.history: list[TrackHistory] = []
        self.next_id = 0


def _frame_result(ids, boxes, scores, labels) -> dict:
    return {
        "track_ids": np.asarray(ids, dtype=np.int64),
        "boxes": np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        "scores": np.asarray(scores, dtype=np.float64),
        "labels": np.asarray(labels, dtype=np.int64),
    }


def _new_tracks(live: _Live, out: dict, scores, labels, boxes, emb, spec, cfg) -> None:
    """Start tracks from object-query detections that no box of this frame already covers."""
    for q in np.argsort(-scores, kind="stable"):
        if scores[q] < cfg.new_score:
            break
        taken = np.asarray(out["boxes"], dtype=np.float64).reshape(-1, 4)
        if iou_links(taken, boxes[q : q + 1], cfg.duplicate_iou):
            continue
        history = TrackHistory(spec.history)
        if spec.mode != "none":
            history.observe(emb[q], scores[q])
        for key, value in zip(LIVE, (live.next_id, int(labels[q]), boxes[q], 0, history)):
            getattr(live, key).append(value)
        out["boxes"].append(boxes[q])
        for key, value in zip(
            ("track_ids", "scores", "labels"), (live.next_id, scores[q], labels[q])
        ):
            out[key].append(value)
        live.next_id += 1


def _continue_tracks(live: _Live, out: dict, scores, boxes, emb, cfg: TrackerConfig) -> None:
    """Update each live track from its track query (slot j = track j)."""
    keep = []
    for j in range(len(live.ids)):
        if scores[j] >= cfg.keep_score:
            live.boxes[j], live.misses[j] = boxes[j], 0
            if emb is not None:
                live.history[j].observe(emb[j], scores[j])
            for key, value in zip(
                ("track_ids", "boxes", "scores", "labels"),
                (live.ids[j], boxes[j], scores[j], live.labels[j]),
            ):
                out[key].append(value)
        else:
            live.misses[j] += 1
        keep.append(live.misses[j] <= cfg.patience)
    for key in LIVE:
        setattr(live, key, [v for v, k in zip(getattr(live, key), keep) if k])


def track_clips(
    model: Any,
    params: dict[str, Array],
    clips: list[np.ndarray],
    like: Array,
    config: TrackerConfig | None = None,
    *,
    track_queries: bool = True,
    content: ContentSpec | None = None,
) -> list[list[dict]]:
    """Track every clip of ``clips`` (each (T, 3, H, W)); see the module docstring.
    ``content`` (default: class embeddings only) says what the track queries carry."""
    cfg = TrackerConfig() if config is None else config
    spec = ContentSpec("none", {}, HistoryConfig(), 1) if content is None else content
    embed = spec.mode != "none"
    focal, c = model.config.focal, model.config.num_classes
    b, frames = len(clips), min(len(x) for x in clips)
    live = [_Live() for _ in range(b)]
    baseline = [IoUTracker(cfg) for _ in range(b)]
    results: list[list[dict]] = [[] for _ in range(b)]
    for t in range(frames):
        images = asarray(np.stack([x[t] for x in clips]), like=like, dtype=like.dtype)
        tq = None
        if track_queries:
            tq = make_track_queries(
                [(np.asarray(s.ids), np.asarray(s.labels), np.asarray(s.boxes)) for s in live],
                c,
                hide_class=spec.mode == "replace",  # the class is not given: the padding row
            )
        dn = dn_content = None
        if tq is not None and tq.count:
            dn = decoder_queries(tq, model.config.num_queries, like)
            if embed:
                hist = [h for s in live for h in s.history]
                dn_content, _ = slot_content_forward(hist, tq.ids != -1, spec, like)
        outputs, cache = model.forward(
            params, images, train=False, denoising=dn, dn_content=dn_content
        )
        logits, boxes = to_numpy(outputs.pred_logits), to_numpy(outputs.pred_boxes)
        emb = to_numpy(model.query_embeddings(cache)).astype(np.float64) if embed else None
        qdn = 0 if dn is None else tq.count  # track slots come first in the embeddings
        if dn is not None:
            last = outputs.group(DN).layers[-1]
            t_logits, t_boxes = to_numpy(last.logits), to_numpy(last.boxes)
        for i in range(b):
            scores, labels = query_detections(logits[i], focal)
            box = boxes[i].astype(np.float64)
            if not track_queries:
                results[i].append(baseline[i].step(scores, labels, box))
                continue
            out = {k: [] for k in ("track_ids", "boxes", "scores", "labels")}
            if dn is not None and live[i].ids:
                n = len(live[i].ids)
                t_scores, _ = query_detections(t_logits[i, :n], focal)
                t_emb = None if emb is None else emb[i, :n]
                _continue_tracks(
                    live[i], out, t_scores, t_boxes[i, :n].astype(np.float64), t_emb, cfg
                )
            q_emb = None if emb is None else emb[i, qdn:]
            _new_tracks(live[i], out, scores, labels, box, q_emb, spec, cfg)
            results[i].append(
                _frame_result(out["track_ids"], out["boxes"], out["scores"], out["labels"])
            )
    return results
