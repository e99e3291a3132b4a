"""Training a tracker by query: detection on frames first, then track queries on frame pairs.

Stage 1 is the still-image training step (:class:`minidetr.train.loop.Run`, with denoising)
on moving-shapes frames: the detector. Stage 2 trains tracking by query on pairs of
consecutive frames (TrackFormer's recipe), one step:

1. frame t goes through the model (no gradient); the Hungarian matcher pairs its predictions
   with frame t's objects, and each matched object becomes a track query for frame t + 1 with
   its predicted box (so training sees the boxes inference will see);
2. augmentation: each track query is dropped with probability ``drop_track`` (its object must
   then be found again by an object query: a track's birth), and with probability
   ``stale_track`` a query is added for an object that is not in frame t + 1 (it must say
   "no object": a track's death);
3. frame t + 1 goes through the model with the track queries; track queries are scored against
   their own objects (:class:`~minidetr.video.track_queries.IdentityMatcher`), and the object
   queries against the objects no track query holds, by Hungarian matching;
4. optionally the velocity consistency loss ties each track's move t -> t + 1 to the truth's.

With ``track_embedding`` "add" or "replace" a track query also carries the decoder embedding
that found its object in frame t (TrackFormer), added to or in place of its class embedding,
optionally read with the track's past (``aggregation_window``, ``memory_size``): frames
t - ``history_frames`` .. t then run without gradient (:mod:`minidetr.video.embedding_queries`)
and the reads (:mod:`minidetr.video.track_content`) train with the model.

Every random choice of step s comes from a generator seeded with (seed, s), as in still
training. Shapes: B pairs, Qt track queries, Q object queries.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import numpy as np

from minidetr.backend import Array, Rng, asarray, namespace, to_numpy
from minidetr.outputs import MAIN, Predictions, QueryGroup, SetOutputs
from minidetr.setloss import SetCriterion
from minidetr.train.divergence import (
    TrainingError,
    check_gradients,
    check_loss,
    learning_rate_cause,
)
from minidetr.train.loop import Run, RunState, TrainConfig, _is_backbone
from minidetr.train.optim import (
    AdamWState,
    adamw_init,
    adamw_step,
    clip_scale,
    global_norm,
    learning_rate,
)
from minidetr.video.association import assign_track_queries
from minidetr.video.chained_queries import chained_track_queries
from minidetr.video.consistency import velocity_consistency_backward, velocity_consistency_forward
from minidetr.video.embedding_queries import embedding_track_queries
from minidetr.video.frames import MovingShapesFrames
from minidetr.video.track_content import (
    MODES,
    ContentSpec,
    init_track_content_params,
    slot_content_backward,
    slot_content_forward,
)
from minidetr.video.track_history import HistoryConfig
from minidetr.video.track_queries import (
    IdentityMatcher,
    decoder_queries,
    make_track_queries,
    merge_grads,
    split_outputs,
)

TRACK = "track."  # checkpoint prefix of the reads' parameters


@dataclass(frozen=True)
class TrackTrainConfig:
    """The tracking preset: what ``minidetr train --task track`` runs by default."""

    preset: str = "deformable"
    detect_steps: int = 1000  # stage 1: detection on single frames
    track_steps: int = 400  # stage 2: track queries on frame pairs (0: the baseline detector)
    batch_size: int = 16
    lr: float = 1e-3
    train_clips: int = 2048
    val_clips: int = 32
    frames: int = 8
    seed: int = 0
    drop_track: float = 0.1  # false-negative augmentation
    stale_track: float = 0.1  # false-positive augmentation
    consistency_weight: float = 0.0  # weight of the velocity consistency loss (0: off)
    checkpoint_every: int = 100
    track_embedding: str = "none"  # track-query content: class only, "add" / "replace" e_t
    aggregation_window: int = 0  # each track's earlier embeddings it aggregates (0: off)
    memory_size: int = 0  # slots of each track's memory bank, read by attention (0: off)
    memory_policy: str = "score"  # the bank's forgetting: "fifo" or "score"
    history_frames: int = 2  # training: frames before t run without gradient for the reads
    chain: bool = False  # training: frames before t are tracked with track queries, not detected

    def __post_init__(self) -> None:
        for name in ("detect_steps", "track_steps", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")
        if self.batch_size < 1 or self.frames < 2:
            raise ValueError(f"batch_size >= 1 and frames >= 2 needed, got {self}")
        for name in ("drop_track", "stale_track"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.track_embedding not in MODES:
            raise ValueError(f"track_embedding must be one of {MODES}, got {self.track_embedding}")
        for name in ("aggregation_window", "memory_size", "history_frames"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")
        if self.track_embedding == "none" and (self.aggregation_window or self.memory_size):
            raise ValueError("aggregation_window and memory_size read past embeddings: "
                             "they need track_embedding 'add' or 'replace'")  # fmt: skip
        if self.chain and self.track_embedding == "none":
            raise ValueError("chain tracks with embeddings: it needs track_embedding 'add' or "
                             "'replace'")  # fmt: skip
        HistoryConfig(self.memory_size, self.aggregation_window, self.memory_policy)

    @property
    def history(self) -> HistoryConfig:
        return HistoryConfig(self.memory_size, self.aggregation_window, self.memory_policy)

    @property
    def steps(self) -> int:
        return self.detect_steps + self.track_steps


class TrackRun:
    """A still-image :class:`Run` on moving-shapes frames, plus the frame-pair tracking step."""

    def __init__(self, cfg: TrackTrainConfig, like: Array) -> None:
        self.cfg = cfg
        train_cfg = TrainConfig(
            preset=cfg.preset, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
            seed=cfg.seed, checkpoint_every=cfg.checkpoint_every,
        )  # fmt: skip
        self.run = Run(train_cfg, like)
        size = self.run.model.config.image_size
        self.run.train_set = MovingShapesFrames(
            "train", cfg.train_clips, cfg.frames, size, cfg.seed
        )
        self.run.val_set = MovingShapesFrames("val", cfg.val_clips, cfg.frames, size, cfg.seed)
        self.like = like
        d = self.run.model.config.d_model
        self.track_params = init_track_content_params(
            d, memory=cfg.memory_size > 0, window=cfg.aggregation_window, like=like, seed=cfg.seed
        )  # the reads of the track's past: trained by the tracking stage only
        self.track_opt = adamw_init(self.track_params)

    @property
    def content(self) -> ContentSpec:
        """How this run's track queries are made (for the tracker)."""
        heads = self.run.model.config.num_heads
        return ContentSpec(self.cfg.track_embedding, self.track_params, self.cfg.history, heads)

    @property
    def step(self) -> int:
        return self.run.step

    def train_step(self) -> dict[str, float]:
        if self.run.step < self.cfg.detect_steps:
            return self.run.train_step()
        return self.track_step()

    def _track_queries(self, gen: np.random.Generator, pairs: list, outputs: dict):
        """Track queries from frame t's matched predictions, with FN / FP augmentation."""
        run, c = self.run, self.run.model.config.num_classes
        targets_t = [{"labels": p[1]["labels"], "boxes": p[1]["boxes"]} for p in pairs]
        indices = run.criterion.matcher(
            {"pred_logits": outputs.pred_logits, "pred_boxes": outputs.pred_boxes},
            [{k: asarray(v, like=self.like) for k, v in t.items()} for t in targets_t],
        )
        boxes = to_numpy(outputs.pred_boxes).astype(np.float64)
        per_clip = []
        for i, ((_, tgt_t, _, _), (q_idx, t_idx)) in enumerate(zip(pairs, indices)):
            q_idx, t_idx = np.asarray(q_idx), np.asarray(t_idx)
            keep = gen.random(len(t_idx)) >= self.cfg.drop_track
            ids = tgt_t["track_ids"][t_idx[keep]]
            labels = tgt_t["labels"][t_idx[keep]]
            box = boxes[i, q_idx[keep]]
            if gen.random() < self.cfg.stale_track:  # a query for an object that is not there
                ids = np.append(ids, -2)  # an identity no target has
                labels = np.append(labels, gen.integers(c))
                box = np.concatenate(
                    [box, [[*gen.uniform(0.2, 0.8, 2), *gen.uniform(0.1, 0.3, 2)]]]
                )
            per_clip.append((ids, labels, box))
        return make_track_queries(per_clip, c)

    def track_step(self) -> dict[str, float]:
        run, cfg = self.run, self.cfg
        model, like = run.model, self.like
        gen = np.random.default_rng([cfg.seed, run.step])
        clip_idx = gen.integers(len(run.train_set.clips), size=cfg.batch_size)
        t_idx = gen.integers(cfg.frames - 1, size=cfg.batch_size)
        pairs = [run.train_set.frame_pair(int(c), int(t)) for c, t in zip(clip_idx, t_idx)]
        content = ccache = None
        if cfg.track_embedding == "none":
            images_t = asarray(np.stack([p[0] for p in pairs]), like=like, dtype=like.dtype)
            prev, _ = model.forward(run.params, images_t, train=False)
            tq = self._track_queries(gen, pairs, prev)
        else:
            clips = [run.train_set.clip(int(c)) for c in clip_idx]
            if cfg.chain:  # frame t's embeddings come from track queries, as at inference
                tq, hist = chained_track_queries(run, gen, cfg, self.content, clips, list(t_idx))
            else:
                tq, hist = embedding_track_queries(run, gen, cfg, cfg.history, clips, list(t_idx))
            if tq.count:
                content, ccache = slot_content_forward(hist, tq.ids != -1, self.content, like)
        images_u = asarray(np.stack([p[2] for p in pairs]), like=like, dtype=like.dtype)
        dn = decoder_queries(tq, model.config.num_queries, like) if tq.count else None
        targets, untracked, query_target = self._targets(pairs, tq)
        try:
            outputs, cache = model.forward(
                run.params, images_u, train=True, rng=Rng(gen), denoising=dn, dn_content=content
            )
            main, track = split_outputs(outputs)
            losses, c_main = run.criterion.forward(main, untracked)  # Hungarian: the rest
            loss, dtrack = float(losses["loss"]), None
            if track is not None:  # track queries: fixed by identity
                matcher = IdentityMatcher(query_target, focal=model.config.focal)
                track_crit = _with_matcher(run.criterion, matcher)
                t_losses, c_track = track_crit.forward(track, targets)
                loss, dtrack = loss + float(t_losses["loss"]), track_crit.backward(c_track)
                if cfg.consistency_weight > 0:
                    value, dtrack = self._consistency(pairs, tq, query_target, track, dtrack)
                    loss += value
        except ValueError as err:
            if "finite" not in str(err):  # anything but a non-finite value is a bug: keep it
                raise
            raise TrainingError(run.step, str(err), learning_rate_cause(cfg.lr, True)) from err
        check_loss(run.step, {"loss": loss}, run.history, cfg.lr)
        grads_out = merge_grads(run.criterion.backward(c_main), dtrack)
        grads, dcontent = model.backward_dn_content(grads_out, cache)
        track_grads = {k: namespace(v).zeros_like(v) for k, v in self.track_params.items()}
        if ccache is not None:
            track_grads.update(slot_content_backward(dcontent, ccache))
        return self._apply(grads, track_grads, loss)

    def _targets(self, pairs: list, tq) -> tuple[list, list, list]:
        """Frame t + 1's targets, those no track query holds, and each track query's target."""
        targets, untracked, query_target = [], [], []
        for i, (_, _, _, tgt) in enumerate(pairs):
            qt, free = assign_track_queries(tq.ids[i][tq.valid[i]], tgt["track_ids"])
            query_target.append(np.concatenate([qt, -np.ones(tq.count - len(qt), np.int64)]))
            targets.append({k: asarray(tgt[k], like=self.like) for k in ("labels", "boxes")})
            untracked.append(
                {k: asarray(tgt[k][free], like=self.like) for k in ("labels", "boxes")}
            )
        return targets, untracked, query_target

    def _consistency(
        self, pairs: list, tq, query_target: list, track: SetOutputs, dtrack: SetOutputs
    ) -> tuple[float, SetOutputs]:
        """w * velocity consistency of each kept track's box, t (detached) -> t + 1, and the
        track gradients with its gradient added to the last layer's boxes."""
        boxes = track.pred_boxes  # (B, Qt, 4)
        b, qt = tq.labels.shape
        gt_t, gt_u, valid = np.zeros((b, qt, 4)), np.zeros((b, qt, 4)), np.zeros((b, qt), bool)
        for i, (_, tgt_t, _, tgt_u) in enumerate(pairs):
            for j in np.flatnonzero(query_target[i] >= 0):
                gt_u[i, j] = tgt_u["boxes"][query_target[i][j]]
                gt_t[i, j] = tgt_t["boxes"][list(tgt_t["track_ids"]).index(tq.ids[i, j])]
                valid[i, j] = True
        host = np.stack([tq.boxes.reshape(-1, 4), np.zeros((b * qt, 4))])  # frame t, detached
        xp = namespace(boxes)
        pred = asarray(host, like=boxes, dtype=boxes.dtype) + xp.stack(
            [xp.zeros_like(xp.reshape(boxes, (-1, 4))), xp.reshape(boxes, (-1, 4))]
        )  # (2, B Qt, 4)
        target = asarray(np.stack([gt_t.reshape(-1, 4), gt_u.reshape(-1, 4)]), like=boxes)
        ok = asarray(np.stack([valid.reshape(-1)] * 2), like=boxes)
        value, cache = velocity_consistency_forward(pred, xp.astype(target, boxes.dtype), ok)
        w = self.cfg.consistency_weight
        dpred = xp.reshape(velocity_consistency_backward(w, cache)[1], (b, qt, 4))  # frame t + 1
        layers = list(dtrack.groups[MAIN].layers)
        last = layers[-1]
        layers[-1] = Predictions(last.logits, dpred if last.boxes is None else last.boxes + dpred)
        return w * float(value), SetOutputs({MAIN: QueryGroup(tuple(layers))})

    def _apply(self, grads: dict, track_grads: dict, loss: float) -> dict[str, float]:
        """One AdamW step of the model and of the reads, clipped by their joint norm."""
        run, cfg = self.run, self.run.cfg
        joint = {**grads, **{TRACK + k: g for k, g in track_grads.items()}}
        norm = global_norm(joint)
        check_gradients(run.step, joint, norm, run.history, cfg.lr)
        scale = clip_scale(norm, cfg.clip_norm)  # applied inside AdamW: no scaled copies
        lr = learning_rate(run.step, cfg.steps, cfg.lr, cfg.warmup_steps, cfg.final_lr_ratio)
        rates = {k: lr * (cfg.backbone_lr_ratio if _is_backbone(k) else 1.0) for k in run.params}
        run.params, run.opt_state = adamw_step(
            run.params, grads, run.opt_state, run.opt_cfg, rates, scale
        )
        if self.track_params:
            self.track_params, self.track_opt = adamw_step(
                self.track_params, track_grads, self.track_opt, run.opt_cfg, lr, scale
            )
        run.step += 1
        record = {"step": run.step, "loss": loss, "lr": lr, "grad_norm": norm}
        run.history.append(record)
        return record

    def save(self, path) -> None:
        """The run's checkpoint; the reads' parameters and moments ride along as ``track.*``."""
        run, opt = self.run, self.run.opt_state
        tp, to = self.track_params, self.track_opt
        state = RunState(
            {**run.params, **{TRACK + k: v for k, v in tp.items()}},
            AdamWState(
                opt.step,
                {**opt.m, **{TRACK + k: v for k, v in to.m.items()}},
                {**opt.v, **{TRACK + k: v for k, v in to.v.items()}},
            ),
            run.step,
            list(run.history),
        )
        extra = {"task": "track", "track_config": asdict(self.cfg), "track_opt_step": to.step}
        run.save(path, extra=extra, state=state)

    def set_state(self, params: dict, opt_state: AdamWState | None, meta: dict) -> None:
        """Load a checkpoint's ``params`` (and ``opt_state``): the model's and the reads'."""
        run = self.run
        run.params = {k: v for k, v in params.items() if not k.startswith(TRACK)}
        run.model.check_params(run.params)
        mine = {k[len(TRACK) :]: v for k, v in params.items() if k.startswith(TRACK)}
        if mine:  # a detection-stage checkpoint has none: the reads keep their initial values
            if mine.keys() != self.track_params.keys():
                raise ValueError(f"track parameters {sorted(mine)} do not fit this config")
            self.track_params = mine
        if opt_state is not None:
            split = [
                {k: v for k, v in d.items() if not k.startswith(TRACK)}
                for d in (opt_state.m, opt_state.v)
            ]
            run.opt_state = AdamWState(opt_state.step, *split)
            if mine:
                m, v = ({k: d[TRACK + k] for k in mine} for d in (opt_state.m, opt_state.v))
                self.track_opt = AdamWState(int(meta.get("track_opt_step", 0)), m, v)
        run.step, run.history = int(meta["step"]), list(meta.get("history", []))

    def evaluate_detection(self) -> dict[str, float]:
        """COCO AP of the object queries on every held-out frame, one frame at a time."""
        return self.run.evaluate()


def _with_matcher(criterion: SetCriterion, matcher: IdentityMatcher) -> SetCriterion:
    """A shallow copy of ``criterion`` that takes its matches from ``matcher``."""
    twin = copy.copy(criterion)
    twin.matcher = matcher
    return twin
