"""Training track queries from decoder embeddings: frames t - h .. t run without gradient.

Dimension letters: B clips of the batch, F frames run without gradient (all clips together),
Q object queries, D width.

TrackFormer's training pair, with a short past: frames max(0, t - h) .. t of each clip go
through the model in one batch without gradient; the Hungarian matcher pairs each frame's
predictions with its objects, and every matched object's decoder embedding is observed by that
object's :class:`~minidetr.video.track_history.TrackHistory`, in frame order (so the window and
the memory bank hold what inference would have gathered). The objects matched in frame t
become track queries (their predicted box as anchor, their history as content), each dropped
with probability ``drop_track``; with probability ``stale_track`` one more query is made from
a prediction of frame t that no object matched (its box and embedding: TrackFormer's false
positive), which must answer "no object".
"""

from __future__ import annotations

import numpy as np

from minidetr.backend import asarray, to_numpy
from minidetr.video.association import query_detections
from minidetr.video.track_history import HistoryConfig, TrackHistory
from minidetr.video.track_queries import TrackQueries, make_track_queries


def embedding_track_queries(
    run, gen: np.random.Generator, cfg, history: HistoryConfig, clips: list[dict], ts: list[int]
) -> tuple[TrackQueries, list[TrackHistory]]:
    """Track queries for frame t + 1 of each clip of ``clips`` (t = ``ts[i]``), and the
    histories of their real slots in row-major slot order. ``cfg`` is the
    :class:`~minidetr.video.track_train.TrackTrainConfig`; ``run`` the still-image run."""
    model, like = run.model, run.like
    c, focal = model.config.num_classes, model.config.focal
    h = cfg.history_frames if history.memory_size or history.window else 0
    frames = [(i, s) for i, t in enumerate(ts) for s in range(max(0, t - h), t + 1)]
    images = asarray(
        np.stack([clips[i]["frames"][s] for i, s in frames]), like=like, dtype=like.dtype
    )  # (F, 3, H, W)
    outputs, cache = model.forward(run.params, images, train=False)
    emb = to_numpy(model.query_embeddings(cache)).astype(np.float64)  # (F, Q, D)
    targets = [clips[i]["targets"][s] for i, s in frames]
    indices = run.criterion.matcher(
        {"pred_logits": outputs.pred_logits, "pred_boxes": outputs.pred_boxes},
        [{k: asarray(tg[k], like=like) for k in ("labels", "boxes")} for tg in targets],
    )
    logits, boxes = to_numpy(outputs.pred_logits), to_numpy(outputs.pred_boxes)
    per_clip, slot_histories = [], []
    seen: dict[int, TrackHistory] = {}
    for f, ((i, s), (q_idx, t_idx)) in enumerate(zip(frames, indices)):
        if f == 0 or frames[f - 1][0] != i:
            seen = {}  # a new clip
        q_idx, t_idx = np.asarray(q_idx), np.asarray(t_idx)
        scores, _ = query_detections(logits[f], focal)
        ids = targets[f]["track_ids"][t_idx]
        for q, k in zip(q_idx, ids):
            seen.setdefault(int(k), TrackHistory(history)).observe(emb[f, q], scores[q])
        if s != ts[i]:
            continue
        keep = gen.random(len(t_idx)) >= cfg.drop_track
        kept_ids, labels = ids[keep], targets[f]["labels"][t_idx[keep]]
        box = boxes[f, q_idx[keep]].astype(np.float64)
        hist = [seen[int(k)] for k in kept_ids]
        free = np.setdiff1d(np.arange(logits.shape[1]), q_idx)
        if gen.random() < cfg.stale_track and free.size:  # a query for nothing
            q = int(gen.choice(free))
            kept_ids, labels = np.append(kept_ids, -2), np.append(labels, gen.integers(c))
            box = np.concatenate([box, boxes[f, q : q + 1].astype(np.float64)])
            stale = TrackHistory(history)
            stale.observe(emb[f, q], scores[q])
            hist.append(stale)
        per_clip.append((kept_ids, labels, box))
        slot_histories.extend(hist)
    tq = make_track_queries(per_clip, c, hide_class=cfg.track_embedding == "replace")
    return tq, slot_histories
