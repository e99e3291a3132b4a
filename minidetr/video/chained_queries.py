"""Training track queries as inference makes them: frames t - h .. t tracked without gradient.

Dimension letters: B clips of the batch, Qt track-query slots, Q object queries, D width.

:mod:`minidetr.video.embedding_queries` takes every embedding from an object query of a frame
seen alone; at inference a track older than one frame carries the embedding its own *track
query* produced. Here (MOTR's clip training, cut short) frames max(0, t - h) .. t are walked in
order, each without gradient: a frame's tracks enter the next frame as track queries (content
from their histories, as at inference); a track query whose object is still there continues
with its output embedding and box, one whose object is gone ends; objects no track holds are
matched to the object queries (Hungarian) and start tracks. Frame t's tracks then become frame
t + 1's track queries with the same augmentation as the pair step (drop, stale).
"""

from __future__ import annotations

import numpy as np

from minidetr.backend import asarray, to_numpy
from minidetr.outputs import DN
from minidetr.video.association import query_detections
from minidetr.video.track_content import ContentSpec, slot_content_forward
from minidetr.video.track_history import TrackHistory
from minidetr.video.track_queries import TrackQueries, decoder_queries, make_track_queries


class _Tracks:
    """One clip's tracks after a frame: identity -> (label, box (4,), history)."""

    def __init__(self) -> None:
        self.items: dict[int, tuple[int, np.ndarray, TrackHistory]] = {}


def _queries(tracks: list[_Tracks], spec: ContentSpec, c: int) -> tuple[TrackQueries, list]:
    per_clip = [
        (np.array(list(t.items), dtype=np.int64),
         np.array([v[0] for v in t.items.values()], dtype=np.int64),
         np.array([v[1] for v in t.items.values()]).reshape(-1, 4))
        for t in tracks
    ]  # fmt: skip
    tq = make_track_queries(per_clip, c, hide_class=spec.mode == "replace")
    return tq, [v[2] for t in tracks for v in t.items.values()]


def _track_frame(run, spec: ContentSpec, clips: list[dict], frames: list[int], tracks) -> list:
    """Advance each clip's tracks through its frame ``frames[i]`` (no gradient). Returns per
    clip the object queries no object matched: (embeddings (n, D), boxes (n, 4), scores (n,))."""
    model, like = run.model, run.like
    c, focal = model.config.num_classes, model.config.focal
    images = asarray(
        np.stack([clip["frames"][s] for clip, s in zip(clips, frames)]), like=like, dtype=like.dtype
    )  # (B, 3, H, W)
    tq, hist = _queries(tracks, spec, c)
    dn = content = None
    if tq.count:
        dn = decoder_queries(tq, model.config.num_queries, like)
        content, _ = slot_content_forward(hist, tq.ids != -1, spec, like)
    outputs, cache = model.forward(
        run.params, images, train=False, denoising=dn, dn_content=content
    )
    emb = to_numpy(model.query_embeddings(cache)).astype(np.float64)  # (B, Qt + Q, D)
    free_targets = []
    for i, (clip, s) in enumerate(zip(clips, frames)):
        target = clip["targets"][s]
        present = set(target["track_ids"].tolist())
        if tq.count:
            last = outputs.group(DN).layers[-1]
            t_scores, _ = query_detections(to_numpy(last.logits)[i], focal)
            t_boxes = to_numpy(last.boxes)[i].astype(np.float64)
        kept = {}
        for j, k in enumerate(tq.ids[i]):
            if k in present:  # the object is still there: the track continues
                label, _, h = tracks[i].items[int(k)]
                h.observe(emb[i, j], t_scores[j])
                kept[int(k)] = (label, t_boxes[j], h)
        tracks[i].items = kept
        free = np.array([k not in kept for k in target["track_ids"].tolist()], dtype=bool)
        free_targets.append(free)
    indices = run.criterion.matcher(
        {"pred_logits": outputs.pred_logits, "pred_boxes": outputs.pred_boxes},
        [
            {k: asarray(clip["targets"][s][k][free], like=like) for k in ("labels", "boxes")}
            for clip, s, free in zip(clips, frames, free_targets)
        ],
    )
    logits, boxes = to_numpy(outputs.pred_logits), to_numpy(outputs.pred_boxes)
    spare = []
    for i, ((q_idx, t_idx), clip, s, free) in enumerate(zip(indices, clips, frames, free_targets)):
        target = clip["targets"][s]
        scores, _ = query_detections(logits[i], focal)
        ids, labels = target["track_ids"][free], target["labels"][free]
        for q, t in zip(np.asarray(q_idx), np.asarray(t_idx)):  # newcomers start tracks
            h = TrackHistory(spec.history)
            h.observe(emb[i, tq.count + q], scores[q])
            tracks[i].items[int(ids[t])] = (int(labels[t]), boxes[i, q].astype(np.float64), h)
        rest = np.setdiff1d(np.arange(logits.shape[1]), np.asarray(q_idx))
        spare.append((emb[i, tq.count + rest], boxes[i, rest].astype(np.float64), scores[rest]))
    return spare


def chained_track_queries(
    run, gen: np.random.Generator, cfg, spec: ContentSpec, clips: list[dict], ts: list[int]
) -> tuple[TrackQueries, list[TrackHistory]]:
    """Track queries for frame t + 1 of each clip (t = ``ts[i]``) after tracking frames
    max(0, t - ``cfg.history_frames``) .. t, and the histories of their filled slots."""
    c = run.model.config.num_classes
    h = max(cfg.history_frames, 1)
    tracks = [_Tracks() for _ in clips]
    for back in range(h, -1, -1):  # frames t - h, ..., t; a clip joins when its frame exists
        active = [i for i, t in enumerate(ts) if t - back >= 0]
        sub = [tracks[i] for i in active]
        spare = _track_frame(
            run, spec, [clips[i] for i in active], [ts[i] - back for i in active], sub
        )  # the last frame, t, has every clip: spare[i] is clip i's
    per_clip, hist = [], []
    for i, t in enumerate(tracks):
        items = list(t.items.items())
        keep = gen.random(len(items)) >= cfg.drop_track
        ids = np.array([k for (k, _), ok in zip(items, keep) if ok], dtype=np.int64)
        labels = np.array([v[0] for (_, v), ok in zip(items, keep) if ok], dtype=np.int64)
        box = np.array([v[1] for (_, v), ok in zip(items, keep) if ok]).reshape(-1, 4)
        hs = [v[2] for (_, v), ok in zip(items, keep) if ok]
        s_emb, s_box, s_score = spare[i]
        if gen.random() < cfg.stale_track and len(s_score):  # a query for nothing
            q = int(gen.integers(len(s_score)))
            ids, labels = np.append(ids, -2), np.append(labels, gen.integers(c))
            box = np.concatenate([box, s_box[q : q + 1]])
            stale = TrackHistory(spec.history)
            stale.observe(s_emb[q], s_score[q])
            hs.append(stale)
        per_clip.append((ids, labels, box))
        hist.extend(hs)
    return make_track_queries(per_clip, c, hide_class=cfg.track_embedding == "replace"), hist
