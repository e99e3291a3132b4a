"""The training loop: sample a batch, forward, set loss, backward, clip, AdamW, repeat.

Every random choice of step ``t`` (which images, dropout masks, denoising noise)
comes from a generator seeded with ``(seed, t)``, so a run is a pure function
of its config and seed: resuming from a checkpoint at step ``t`` replays
exactly the steps an uninterrupted run would have taken.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from minidetr.backend import Array, Rng
from minidetr.data import Dataset, collate, to_coco
from minidetr.evaluate import coco_detections, coco_evaluate, postprocess
from minidetr.model import MiniDETR
from minidetr.model.resnet import is_frozen
from minidetr.setloss import check_targets
from minidetr.setloss.denoising import make_denoising_queries
from minidetr.train.attention_entropy import (
    adding_penalty_grads,
    attention_entropies,
    entropy_penalty,
)
from minidetr.train.checkpoint import (
    CheckpointError,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
)
from minidetr.train.divergence import (
    SavedCheckpoint,
    TrainingError,
    check_gradients,
    check_loss,
    check_parameters,
    learning_rate_cause,
)
from minidetr.train.ema import EMAState, ema_init, ema_update
from minidetr.train.optim import (
    AdamWConfig,
    AdamWState,
    adamw_init,
    clipped_adamw_step,
    global_norm,
    learning_rate,
    params_norm,
)
from minidetr.train.prefetch import Prefetcher, batch_indices
from minidetr.train.progress import progress_bar  # noqa: F401  (the lesson imports it from here)
from minidetr.train.setup import (  # noqa: F401  (importable from here, as before)
    TrainConfig,
    dataset_class,
    is_coco_file,
    make_criterion,
    make_datasets,
    make_model,
    num_classes,
)

__all__ = ["Interrupted", "Run", "TrainConfig", "TrainingError", "train"]


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped the run; ``checkpoint`` holds it now (None: nothing saved)."""

    def __init__(self, checkpoint: SavedCheckpoint | None) -> None:
        super().__init__()
        self.checkpoint = checkpoint


def _is_backbone(name: str) -> bool:
    return name.startswith("backbone.")


class RunState(NamedTuple):
    """What a checkpoint holds of a run: parameters, optimizer state, step, loss history and
    the weights' moving average (None when the run keeps none)."""

    params: dict[str, Array]
    opt_state: AdamWState
    step: int
    history: list[dict[str, float]]
    ema: EMAState | None = None


class Run:
    """The state of one training run: model, data, criterion, parameters and optimizer."""

    def __init__(self, cfg: TrainConfig, like: Array) -> None:
        self.cfg = cfg
        self.like = like
        self.model = make_model(cfg.preset, num_classes(cfg), cfg.encoder_attention, cfg.offset_l2)
        self.train_set, self.val_set = make_datasets(cfg, self.model.config.image_size)
        self.criterion = make_criterion(cfg, self.model.config)
        self.params = self.model.init_params(seed=cfg.seed, like=like)
        self.opt_cfg = AdamWConfig(lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.opt_state: AdamWState = adamw_init(self.params)
        self.initial_norm = global_norm(self.params)  # the reference for check_parameters
        self.ema = ema_init(self.params) if cfg.ema_decay > 0 else None  # read, never trained
        self.prefetch: Prefetcher | None = None  # draws the next batch in a worker process
        self.step = 0
        self.history: list[dict[str, float]] = []

    # --- one step -----------------------------------------------------------------------

    def batch(self, rng: np.random.Generator) -> tuple[Array, list[dict[str, Array]]]:
        idx = batch_indices(rng, len(self.train_set), self.cfg.batch_size)
        if self.prefetch is None:
            return collate([self.train_set[int(i)] for i in idx], like=self.like)
        return collate(self.prefetch.samples(self.step, idx, self.cfg.steps), like=self.like)

    def train_step(self) -> dict[str, float]:
        cfg, model_cfg = self.cfg, self.model.config
        gen = np.random.default_rng([cfg.seed, self.step])  # all of this step's randomness
        images, targets = self.batch(gen)
        targets = check_targets(targets, model_cfg.num_classes)  # once per step
        rng = Rng(gen)
        dn = None
        if model_cfg.denoising and cfg.dn_groups > 0:
            dn = make_denoising_queries(
                targets,
                cfg.dn_groups,
                cfg.dn_label_noise,
                cfg.dn_box_noise,
                model_cfg.num_classes,
                rng,
                num_queries=model_cfg.num_queries,
                contrastive=cfg.dn_contrastive,
            )
        try:
            outputs, cache = self.model.forward(
                self.params, images, train=True, rng=rng, denoising=dn
            )
            losses, ccache = self.criterion.forward(outputs, targets)
            penalty = self.model.offset_penalty(cache)  # None unless offset_l2 > 0
            if penalty is not None:  # its gradient comes with model.backward
                losses = {**losses, "loss": losses["loss"] + penalty, "loss_offset": penalty}
            penalty_grads = None
            if cfg.attention_entropy != 0:
                entropy_term, penalty_grads = entropy_penalty(cache, cfg.attention_entropy)
                losses = {**losses, "loss_attention": entropy_term}  # minimised: loss + this
        except ValueError as err:
            if "finite" not in str(err):  # anything but a non-finite value is a bug: keep it
                raise
            cause = "the input data" if str(err).startswith("images") else None
            raise TrainingError(
                self.step, str(err), cause or learning_rate_cause(cfg.lr, bool(self.history))
            ) from err
        loss = float(losses["loss"])
        terms = {k: float(v) for k, v in losses.items() if k.startswith("loss")}
        terms.pop("loss_attention", None)  # may be negative: the set loss is what is watched
        check_loss(self.step, terms, self.history, cfg.lr)
        logged = self.logs_entropy(self.step + 1)
        entropy = attention_entropies(cache) if logged else None  # this forward's maps
        output_grads = self.criterion.backward(ccache)
        if penalty_grads is None:
            grads = self.model.backward(output_grads, cache)
        else:
            with adding_penalty_grads(penalty_grads):
                grads = self.model.backward(output_grads, cache)
        lr = learning_rate(self.step, cfg.steps, cfg.lr, cfg.warmup_steps, cfg.final_lr_ratio)
        rates = {k: lr * (cfg.backbone_lr_ratio if _is_backbone(k) else 1.0) for k in self.params}
        rates.update({k: 0.0 for k in self.params if is_frozen(k)})  # frozen BatchNorm constants
        params, opt_state, norm = clipped_adamw_step(
            self.params, grads, self.opt_state, self.opt_cfg, rates, cfg.clip_norm
        )
        check_gradients(self.step, grads, norm, self.history, cfg.lr)  # else the update is dropped
        self.params, self.opt_state = params, opt_state
        if self.ema is not None:
            self.ema = ema_update(self.ema, self.params, cfg.ema_decay)
        self.step += 1
        record: dict[str, Any] = {"step": self.step, "loss": loss, "lr": lr, "grad_norm": norm}
        for k in ("loss_ce", "loss_bbox", "loss_giou", "loss_offset", "loss_attention"):
            if k in losses:
                record[k] = float(losses[k])
        if entropy is not None:
            record["attention_entropy"] = entropy  # per layer name: per-head mean, nats
        self.history.append(record)
        return record

    def logs_entropy(self, step: int) -> bool:
        """Whether step ``step`` (counted from 1) records its attention entropy: on the
        checkpoint steps and the last one."""
        return step % self.cfg.checkpoint_every == 0 or step == self.cfg.steps

    # --- checkpoints --------------------------------------------------------------------

    def snapshot(self) -> RunState:
        return RunState(dict(self.params), self.opt_state, self.step, list(self.history), self.ema)

    def set_state(self, state: RunState) -> None:
        self.params, self.opt_state = dict(state.params), state.opt_state
        self.step, self.history, self.ema = state.step, list(state.history), state.ema

    @property
    def eval_params(self) -> dict[str, Array]:
        """The weights to evaluate and ship: their moving average once it has averaged any,
        else the trained weights."""
        return self.ema.params if self.ema is not None and self.ema.step > 0 else self.params

    def save(
        self, path: Path, extra: dict[str, Any] | None = None, state: RunState | None = None
    ) -> None:
        """Write the current state, or ``state`` (an earlier ``snapshot()``), to ``path``."""
        state = state or self.snapshot()
        meta = {
            "model_config": asdict(self.model.config),
            "train_config": asdict(self.cfg),
            "step": state.step,
            # every step's randomness is derived from (seed, step): this is the RNG state
            "rng_state": {"seed": self.cfg.seed, "next_step": state.step},
            "history": state.history,
            **(extra or {}),
        }
        save_checkpoint(path, state.params, state.opt_state, meta, ema=state.ema)

    def check_update(self) -> None:
        """Raise ``TrainingError`` unless the parameters after the last step are sound."""
        norm = params_norm(self.params, self.opt_state)
        check_parameters(self.step - 1, self.params, norm, self.initial_norm, self.cfg.lr)

    def vet(self) -> None:
        """Raise ``TrainingError`` unless one more step from the current state is healthy.

        The trial step is undone: the state afterwards is the state before.
        """
        state = self.snapshot()
        try:
            self.train_step()
        finally:
            self.set_state(state)

    def restore(self, path: Path) -> None:
        ck = load_checkpoint(path, like=self.like)
        # the step budget may be extended on resume; everything else must be the run's own
        free = ("steps", "checkpoint_every")
        # a field added since the run was saved takes its default (new features start off)
        defaults = json.loads(json.dumps(asdict(TrainConfig())))
        saved = {**defaults, **ck.meta.get("train_config", {})}
        saved = {k: v for k, v in saved.items() if k not in free}
        mine = {k: v for k, v in json.loads(json.dumps(asdict(self.cfg))).items() if k not in free}
        if saved != mine:
            diff = sorted(k for k in mine if saved.get(k) != mine[k])
            raise CheckpointError(
                f"checkpoint {path} was made with another training config ({diff})"
            )
        try:
            self.model.check_params(ck.params)
        except ValueError as err:
            raise CheckpointError(f"checkpoint {path} does not fit the model: {err}") from err
        self.params, self.opt_state = ck.params, ck.opt_state
        self.step, self.history = int(ck.meta["step"]), list(ck.meta["history"])
        if self.cfg.ema_decay > 0:  # a run saved before it kept one starts its average here
            self.ema = ck.ema if ck.ema is not None else ema_init(self.params)

    # --- evaluation ---------------------------------------------------------------------

    def evaluate(self, dataset: Dataset | None = None, batch_size: int = 32) -> dict[str, float]:
        return evaluate_model(
            self.model, self.eval_params, dataset or self.val_set, self.like, batch_size
        )


def evaluate_model(
    model: MiniDETR, params: dict[str, Array], dataset: Dataset, like: Array, batch_size: int = 32
) -> dict[str, float]:
    """COCO AP of ``model`` on every image of ``dataset``."""
    detections = []
    for start in range(0, len(dataset), batch_size):
        ids = list(range(start, min(start + batch_size, len(dataset))))
        images, _ = collate([dataset[i] for i in ids], like=like)
        outputs, _ = model.forward(params, images, train=False)
        results = postprocess(
            outputs.pred_logits,
            outputs.pred_boxes,
            dataset.image_size,
            focal=model.config.focal,
        )
        detections += coco_detections(ids, results)
    return coco_evaluate(to_coco(dataset), detections)


def train(
    cfg: TrainConfig,
    out_dir: Path,
    like: Array,
    *,
    resume: bool = False,
    progress: Callable[[Run, dict[str, float], float], None] | None = None,
    prefetch: bool = False,
) -> Run:
    """Train to ``cfg.steps``, checkpointing atomically to ``out_dir/checkpoint.npz``.

    A state due to be saved (every ``cfg.checkpoint_every`` steps) is written only once
    the next step from it has proved healthy (see ``divergence``); the last state is
    proved by a trial step that is then undone. So every checkpoint is a good one.
    Ctrl-C (SIGINT) and SIGTERM finish the current step, save, and raise ``Interrupted``
    (a ``KeyboardInterrupt``) naming the checkpoint. A diverging step raises
    ``TrainingError`` whose ``checkpoint`` names the last good one, or None when none
    was written. Temporary files of interrupted saves are removed first. ``prefetch``
    draws each next batch in a worker process (``minidetr.train.prefetch``); the run is
    the same either way.
    """
    run = Run(cfg, like)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = out_dir / "checkpoint.npz"
    remove_stale_temporaries(out_dir, ckpt.name)
    saved = None
    if resume:
        run.restore(ckpt)
        saved = SavedCheckpoint(str(ckpt), run.step)
    stop = {"now": False}

    def request_stop(signum: int, frame: Any) -> None:
        stop["now"] = True

    def write(state: RunState) -> SavedCheckpoint:
        run.save(ckpt, state=state)
        return SavedCheckpoint(str(ckpt), state.step)

    if prefetch:
        run.prefetch = Prefetcher(run.train_set, cfg.seed, cfg.batch_size)
    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    pending: RunState | None = None  # due to be saved, once the next step has proved it
    try:
        start = time.perf_counter()
        first_step = run.step
        while run.step < cfg.steps and not stop["now"]:
            record = run.train_step()
            run.check_update()
            if pending is not None:
                saved, pending = write(pending), None
            if run.step % cfg.checkpoint_every == 0 or run.step == cfg.steps:
                pending = run.snapshot()
            if progress is not None:
                progress(run, record, (time.perf_counter() - start) / (run.step - first_step))
        if stop["now"] and pending is None and run.step > first_step:
            pending = run.snapshot()
        if pending is not None:
            run.vet()
            saved = write(pending)
    except TrainingError as err:
        err.checkpoint = saved
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if run.prefetch is not None:
            run.prefetch.close()
            run.prefetch = None
    if stop["now"]:
        raise Interrupted(saved)
    return run
