"""Track queries: what the decoder is given about last frame's objects, and how they are scored.

Dimension letters: B clips (one frame each), Qt track-query slots (padded to the batch's
largest), Q object queries, C classes.

Tracking by query (Meinhardt et al., "TrackFormer", 2022; Zeng et al., "MOTR", 2022): every
object found in frame t enters frame t + 1's decoder as one more query, next to the Q object
queries, and the query's output in frame t + 1 is that object's box there: the identity rides
on the query slot, with no association step. Here a track query is the object's class embedding
with its last box as the query's anchor (the decoder refines anchors layer by layer, so a small
move is a small refinement), fed through the decoder's extra-query input, the one denoising
queries use. TrackFormer feeds the previous decoder embedding instead; the anchor box is what
carries position here, and the class embedding what the object is.

All queries see each other in self-attention, so an object query can learn to leave an object
that a track query already holds; padding slots are hidden. In training a track query answers
the object with its identity, or "no object" when that object is gone
(:func:`~minidetr.video.association.assign_track_queries`); :class:`IdentityMatcher` hands that
fixed answer to DETR's set criterion in place of the Hungarian matcher.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minidetr.backend import Array, asarray, namespace
from minidetr.outputs import DN, MAIN, QueryGroup, SetOutputs
from minidetr.setloss.denoising import PADDING_BOX, DenoisingQueries


class TrackQueries(NamedTuple):
    """Host arrays describing the track queries of a batch; slot j of clip b is one track."""

    labels: np.ndarray  # (B, Qt) int64 class of the track; padding holds C
    boxes: np.ndarray  # (B, Qt, 4) last box, normalised cxcywh; padding holds PADDING_BOX
    ids: np.ndarray  # (B, Qt) int64 identity the slot carries; -1 for padding
    valid: np.ndarray  # (B, Qt) bool, the slot holds a track

    @property
    def count(self) -> int:
        return int(self.labels.shape[1])


def make_track_queries(
    tracks: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    num_classes: int,
    *,
    hide_class: bool = False,
) -> TrackQueries:
    """Pad per-clip (ids (n,), labels (n,), boxes (n, 4)) into one :class:`TrackQueries`.

    ``hide_class``: every slot takes the padding row's label (``num_classes``), for track
    queries whose content replaces the class embedding (``track_embedding="replace"``).
    """
    b = len(tracks)
    qt = max((len(ids) for ids, _, _ in tracks), default=0)
    labels = np.full((b, qt), num_classes, dtype=np.int64)
    boxes = np.tile(np.asarray(PADDING_BOX, dtype=np.float64), (b, qt, 1))
    ids_out = np.full((b, qt), -1, dtype=np.int64)
    for i, (ids, lab, box) in enumerate(tracks):
        n = len(ids)
        ids_out[i, :n] = ids
        if not hide_class:
            labels[i, :n] = lab
        boxes[i, :n] = np.clip(np.asarray(box, dtype=np.float64).reshape(n, 4), 1e-3, 1 - 1e-3)
    return TrackQueries(labels, boxes, ids_out, ids_out >= 0)


def decoder_queries(track: TrackQueries, num_queries: int, like: Array) -> DenoisingQueries:
    """The track queries in the form the model's extra-query input takes.

    Self-attention mask (B, 1, Qt + Q, Qt + Q), True = may attend: every query sees every
    object query and every real track query; a padding slot is seen by nobody but itself.
    """
    xp = namespace(like)
    b, qt = track.labels.shape
    n = qt + num_queries
    seen = np.concatenate([track.valid, np.ones((b, num_queries), dtype=bool)], axis=1)  # (B, N)
    allowed = seen[:, None, None, :] | np.eye(n, dtype=bool)[None, None]  # (B, 1, N, N)
    return DenoisingQueries(
        labels=asarray(track.labels, like=like, dtype=xp.int64),
        boxes=asarray(track.boxes, like=like),
        attn_mask=asarray(allowed, like=like),
        num_groups=1,
        num_queries=num_queries,
        contrastive=False,
    )


def split_outputs(outputs: SetOutputs) -> tuple[SetOutputs, SetOutputs | None]:
    """The outputs of a forward with track queries -> (the object queries' groups, the track
    queries' layers as a group of their own, "main" so that a criterion matches them)."""
    main = SetOutputs({k: g for k, g in outputs if k != DN})
    track = outputs.group(DN)
    return main, None if track is None else SetOutputs({MAIN: QueryGroup(track.layers)})


def merge_grads(main: SetOutputs, track: SetOutputs | None) -> SetOutputs:
    """Gradients of :func:`split_outputs`'s two parts, back in the model's layout."""
    groups = dict(main.groups)
    if track is not None:
        groups[DN] = QueryGroup(track.groups[MAIN].layers)
    return SetOutputs(groups)


class IdentityMatcher:
    """A matcher whose answer is fixed: track query j of image b answers target
    ``query_target[b][j]`` (-1: nothing, so it must say "no object")."""

    def __init__(self, query_target: list[np.ndarray], *, focal: bool) -> None:
        self.query_target = [np.asarray(q, dtype=np.int64) for q in query_target]
        self.focal = focal

    def __call__(self, outputs: dict, targets: list[dict]) -> list[tuple[np.ndarray, np.ndarray]]:
        if len(targets) != len(self.query_target):
            raise ValueError(
                f"IdentityMatcher holds {len(self.query_target)} images, got {len(targets)}"
            )
        return [(np.flatnonzero(q >= 0), q[q >= 0]) for q in self.query_target]
