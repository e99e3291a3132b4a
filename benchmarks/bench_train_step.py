"""One full training step per preset, minidetr against the same DETR in PyTorch (CPU, float32).

Run:  python benchmarks/bench_train_step.py [--rounds 7] [--steps 3] [--threads 1 2]
      [--presets standard deformable] [--no-torch]

A step is what ``minidetr train`` does each iteration, ``Run.train_step``:
sample a batch of 16 shapes images (64 pixels for ``standard`` and
``deformable``, 32 for the test presets), forward, set criterion (Hungarian
matching of every decoder layer on the host, DETR's losses with auxiliary
terms, denoising where the preset has it), backward, gradient clipping at 0.1,
AdamW with a slower backbone.

The PyTorch contender is the ``standard`` preset written again with
``torch.nn`` (when torch is installed): the same layers and sizes (GroupNorm
conv backbone, 1x1 input projection, DETR's normalised sine positions, post-norm
``nn.MultiheadAttention`` encoder and decoder layers, learned content and
positional queries, class head and 3-layer box MLP on every decoder layer),
loaded with minidetr's initial parameters (``load_state_dict(strict=True)``, so
every name and shape must match), trained on the same batches with DETR's
criterion (matching by ``scipy.optimize.linear_sum_assignment`` on the detached
cost, softmax cross-entropy with ``eos_coef``, L1, GIoU, auxiliary losses),
``clip_grad_norm_`` at 0.1 and ``torch.optim.AdamW`` (``fused=True``, its
fastest CPU path). Eager mode, no ``torch.compile``. Before timing, the first
steps of both from the same parameters and batches are compared (loss and
gradient norm), which checks that architecture, criterion and optimizer agree.
There is no PyTorch ``deformable`` contender: plain PyTorch has no compiled
multi-scale deformable attention (Deformable DETR builds its own CUDA op).

Each contender (implementation x preset x thread count) lives in its own
process, so that one library's thread pools cannot spin while another runs:
BLAS and ``torch.set_num_threads`` get the same count, Numba gets 1 thread.
The contenders run interleaved: ``--rounds`` rounds, each giving every
contender ``--steps`` consecutive steps (the order rotating from round to
round), and the table keeps each one's best and median step. Use it on an
otherwise idle machine if you can; on a shared one (other jobs on the same
cores) the median moves with the load and the best is the steadier figure. The
CPU time of each worker process is recorded too: at one thread it is the step's
own work, which other jobs on the cores stretch far less than the wall clock
(at two threads it adds up both threads, so only the wall clock compares).
"first step" (Numba compilation or loading it from its cache, PyTorch's first
call) is reported apart and not in the times. "data" is the part of a step
spent drawing and stacking the batch (the same generator for both).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time

import numpy as np

MARK = "@@bench "  # prefix of the worker's answers on stdout (anything else there is noise)
TORCH_PRESETS = ("standard",)
CHECK_STEPS = 3
torch = F = None  # imported by the PyTorch workers only (see _import_torch)


# --------------------------------------------------------------------------- PyTorch DETR


def _import_torch() -> None:
    global torch, F
    import torch as _torch
    import torch.nn.functional as _F

    torch, F = _torch, _F


def torch_model(cfg):
    """The ``standard`` preset as ``torch.nn`` modules named like minidetr's parameters."""
    if cfg.variant != "standard" or cfg.anchor_queries or cfg.focal or cfg.num_levels != 1:
        raise ValueError("the PyTorch contender is plain DETR: one level, softmax, learned queries")
    nn, d = torch.nn, cfg.d_model

    def conv_unit(c_in, c, stride):  # conv3x3 (no bias: GroupNorm follows) + GroupNorm
        return nn.ModuleDict(
            {
                "conv": nn.Conv2d(c_in, c, 3, stride=stride, padding=1, bias=False),
                "norm": nn.GroupNorm(cfg.num_groups, c),
            }
        )

    stages, c_in = nn.ModuleList(), 3
    for c, blocks in zip(cfg.backbone_channels, cfg.backbone_blocks):
        stage = conv_unit(c_in, c, 2)
        stage["blocks"] = nn.ModuleList(conv_unit(c, c, 1) for _ in range(blocks))
        stages.append(stage)
        c_in = c

    def layer(attentions, num_norms):
        m = nn.ModuleDict(
            {a: nn.MultiheadAttention(d, cfg.num_heads, batch_first=True) for a in attentions}
        )
        m["linear1"] = nn.Linear(d, cfg.ffn_dim)
        m["linear2"] = nn.Linear(cfg.ffn_dim, d)
        for j in range(1, num_norms + 1):
            m[f"norm{j}"] = nn.LayerNorm(d)
        return m

    q, dec_attn = cfg.num_queries, ["self_attn", "cross_attn"]
    proj = nn.ModuleDict({"conv": nn.Conv2d(c_in, d, 1), "norm": nn.GroupNorm(cfg.num_groups, d)})
    encoder = nn.ModuleList(layer(["self_attn"], 2) for _ in range(cfg.num_encoder_layers))
    decoder = nn.ModuleList(layer(dec_attn, 3) for _ in range(cfg.num_decoder_layers))
    query = {"content": nn.Parameter(torch.zeros(q, d)), "pos": nn.Parameter(torch.zeros(q, d))}
    box_head = nn.ModuleList([nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, 4)])
    decoder_modules = {"layers": decoder}
    if cfg.final_norm:  # DETR's shared LayerNorm before the heads
        decoder_modules["norm"] = nn.LayerNorm(d)
    return nn.ModuleDict(
        {
            "backbone": nn.ModuleDict({"stages": stages}),
            "input_proj": nn.ModuleList([proj]),
            "encoder": nn.ModuleDict({"layers": encoder}),
            "decoder": nn.ModuleDict(decoder_modules),
            "query": nn.ParameterDict(query),
            "class_head": nn.Linear(d, cfg.num_classes + 1),
            "box_head": nn.ModuleDict({"layers": box_head}),
        }
    )


def torch_name(name: str) -> str:
    """minidetr's parameter name -> the PyTorch module's state_dict key."""
    name = name.replace(".in_proj.weight", ".in_proj_weight").replace(
        ".in_proj.bias", ".in_proj_bias"
    )
    if name.startswith("input_proj.") and name.count(".") == 2:  # input_proj.0.weight: the conv
        head, tail = name.rsplit(".", 1)
        name = f"{head}.conv.{tail}"
    return name


def sine_positions(h: int, w: int, d: int, temperature: float = 10000.0):
    """DETR's normalised 2-D sine encoding of an unpadded h x w map, as (1, h w, D) tokens."""
    f = d // 2
    ones = torch.ones(1, h, w)
    y = ones.cumsum(1) / (h + 1e-6) * (2 * math.pi)  # (1, h, w)
    x = ones.cumsum(2) / (w + 1e-6) * (2 * math.pi)
    dim_t = temperature ** (2 * (torch.arange(f) // 2) / f)  # (F,)
    px, py = x[..., None] / dim_t, y[..., None] / dim_t  # (1, h, w, F)
    px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=4).flatten(3)
    py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((py, px), dim=3).reshape(1, h * w, d)  # (1, L, D)


def _ffn(layer, x):
    return layer["linear2"](F.relu(layer["linear1"](x)))


def torch_forward(m, images):
    """[(logits (B, Q, C + 1), boxes (B, Q, 4)) for every decoder layer] of DETR, post-norm."""
    x = images
    for stage in m["backbone"]["stages"]:
        x = F.relu(stage["norm"](stage["conv"](x)))  # stride 2
        for block in stage["blocks"]:
            x = F.relu(x + block["norm"](block["conv"](x)))  # residual
    proj = m["input_proj"][0]
    y = proj["norm"](proj["conv"](x))  # (B, D, h, w)
    b, d, h, w = y.shape
    src = y.flatten(2).transpose(1, 2)  # (B, L, D)
    pos = sine_positions(h, w, d).to(src.dtype)  # (1, L, D)
    for layer in m["encoder"]["layers"]:
        qk = src + pos
        src = layer["norm1"](src + layer["self_attn"](qk, qk, src, need_weights=False)[0])
        src = layer["norm2"](src + _ffn(layer, src))
    memory, memory_key = src, src + pos
    tgt = m["query"]["content"].unsqueeze(0).expand(b, -1, -1)  # (B, Q, D)
    qpos = m["query"]["pos"].unsqueeze(0)  # (1, Q, D)
    box_layers = m["box_head"]["layers"]
    outputs = []
    for layer in m["decoder"]["layers"]:
        qk = tgt + qpos
        tgt = layer["norm1"](tgt + layer["self_attn"](qk, qk, tgt, need_weights=False)[0])
        ca = layer["cross_attn"](tgt + qpos, memory_key, memory, need_weights=False)[0]
        tgt = layer["norm2"](tgt + ca)
        tgt = layer["norm3"](tgt + _ffn(layer, tgt))
        h = m["decoder"]["norm"](tgt) if "norm" in m["decoder"] else tgt  # the heads' input
        hb = F.relu(box_layers[1](F.relu(box_layers[0](h))))
        outputs.append((m["class_head"](h), box_layers[2](hb).sigmoid()))
    return outputs


def _xyxy(b):
    return torch.cat([b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2], -1)


def _giou(a, b, paired: bool):
    """GIoU of xyxy boxes: (N, M) for every pair, or (N,) for a[i] with b[i] when ``paired``."""
    if not paired:
        a, b = a[:, None, :], b[None, :, :]
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    wh = (torch.minimum(a[..., 2:], b[..., 2:]) - torch.maximum(a[..., :2], b[..., :2])).clamp(0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a + area_b - inter
    cwh = torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])
    hull = cwh[..., 0] * cwh[..., 1]
    return inter / union - (hull - union) / hull


class TorchCriterion:
    """DETR's ``HungarianMatcher`` + ``SetCriterion`` (labels and boxes) on every decoder layer."""

    def __init__(self, num_classes, w_class, w_bbox, w_giou, eos_coef):
        self.c, self.w = num_classes, (w_class, w_bbox, w_giou)
        self.empty_weight = torch.ones(num_classes + 1)
        self.empty_weight[-1] = eos_coef

    def match(self, logits, boxes, targets):
        from scipy.optimize import linear_sum_assignment

        with torch.no_grad():
            b, q = logits.shape[:2]
            prob = logits.flatten(0, 1).softmax(-1)  # (B Q, K)
            out_boxes = boxes.flatten(0, 1)  # (B Q, 4)
            tgt_ids = torch.cat([t["labels"] for t in targets])
            tgt_boxes = torch.cat([t["boxes"] for t in targets])
            wc, wb, wg = self.w
            cost = (
                wb * torch.cdist(out_boxes, tgt_boxes, p=1)
                - wc * prob[:, tgt_ids]
                - wg * _giou(_xyxy(out_boxes), _xyxy(tgt_boxes), paired=False)
            ).view(b, q, -1)  # (B, Q, sum T)
            sizes = [len(t["boxes"]) for t in targets]
            return [
                linear_sum_assignment(c[i].numpy()) for i, c in enumerate(cost.split(sizes, -1))
            ]

    def __call__(self, outputs, targets):
        num_boxes = max(sum(len(t["labels"]) for t in targets), 1)
        wc, wb, wg = self.w
        total = 0.0
        for logits, boxes in outputs:
            indices = self.match(logits, boxes, targets)
            batch_idx = torch.cat([torch.full((len(s),), i) for i, (s, _) in enumerate(indices)])
            src_idx = torch.cat([torch.as_tensor(s, dtype=torch.int64) for s, _ in indices])
            classes = torch.full(logits.shape[:2], self.c, dtype=torch.int64)
            classes[batch_idx, src_idx] = torch.cat(
                [t["labels"][j] for t, (_, j) in zip(targets, indices)]
            )
            loss_ce = F.cross_entropy(logits.transpose(1, 2), classes, self.empty_weight)
            src = boxes[batch_idx, src_idx]  # (M, 4)
            tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)])
            loss_bbox = (src - tgt).abs().sum() / num_boxes
            loss_giou = (1 - _giou(_xyxy(src), _xyxy(tgt), paired=True)).sum() / num_boxes
            total = total + wc * loss_ce + wb * loss_bbox + wg * loss_giou
        return total


# --------------------------------------------------------------------------- contenders


def minidetr_contender(preset: str, batch: int):
    """(step, batch_fn, info) of minidetr's own training loop."""
    from minidetr.train.loop import Run, TrainConfig

    run = Run(TrainConfig(preset=preset, batch_size=batch), like=np.zeros(1, np.float32))
    gen = np.random.default_rng(1)
    info = {"params": run.model.num_params(), "image": run.model.config.image_size}
    return run.train_step, lambda: run.batch(gen), info


def torch_contender(preset: str, batch: int, check: bool):
    """(step, batch_fn, info) of the PyTorch DETR, starting from minidetr's initial parameters."""
    _import_torch()
    from minidetr.data import DATASETS
    from minidetr.train.loop import Run, TrainConfig, make_criterion, make_datasets, make_model
    from minidetr.train.optim import learning_rate

    cfg = TrainConfig(preset=preset, batch_size=batch)
    model = make_model(preset, len(DATASETS[cfg.dataset].classes))  # as Run makes it
    mcfg = model.config
    train_set, _ = make_datasets(cfg, mcfg.image_size)
    m = torch_model(mcfg)
    params = model.init_params(seed=cfg.seed)
    m.load_state_dict(
        {torch_name(k): torch.from_numpy(np.asarray(v)) for k, v in params.items()}, strict=True
    )
    crit = make_criterion(cfg, mcfg)  # only to read minidetr's weights and make the same one
    criterion = TorchCriterion(
        mcfg.num_classes,
        crit.matcher.cost_class,
        crit.matcher.cost_bbox,
        crit.matcher.cost_giou,
        cfg.eos_coef,
    )
    backbone = [p for n, p in m.named_parameters() if n.startswith("backbone.")]
    rest = [p for n, p in m.named_parameters() if not n.startswith("backbone.")]
    groups = [
        {"params": backbone, "ratio": cfg.backbone_lr_ratio},
        {"params": rest, "ratio": 1.0},
    ]
    opt = torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=cfg.weight_decay, fused=True
    )
    everything = list(m.parameters())
    state = {"step": 0}

    def make_batch(gen):
        idx = gen.integers(len(train_set), size=cfg.batch_size)
        samples = [train_set[int(i)] for i in idx]
        images = torch.from_numpy(np.stack([s.image for s in samples]))
        targets = [
            {"labels": torch.from_numpy(s.labels), "boxes": torch.from_numpy(s.boxes)}
            for s in samples
        ]
        return images, targets

    def step():
        t = state["step"]
        images, targets = make_batch(np.random.default_rng([cfg.seed, t]))  # as Run.batch
        loss = criterion(torch_forward(m, images), targets)
        loss_value = loss.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = float(torch.nn.utils.clip_grad_norm_(everything, cfg.clip_norm))
        lr = learning_rate(t, cfg.steps, cfg.lr, cfg.warmup_steps, cfg.final_lr_ratio)
        for g in opt.param_groups:
            g["lr"] = lr * g["ratio"]
        opt.step()
        state["step"] += 1
        return {"loss": loss_value, "grad_norm": norm}

    info = {
        "params": sum(p.numel() for p in everything),
        "minidetr_params": model.num_params(),
        "image": mcfg.image_size,
    }
    if check:  # the same first steps in both, from the same parameters and batches
        run = Run(cfg, like=np.zeros(1, np.float32))
        ours = [run.train_step() for _ in range(CHECK_STEPS)]
        theirs = [step() for _ in range(CHECK_STEPS)]
        info["check"] = {
            "minidetr": [[r["loss"], r["grad_norm"]] for r in ours],
            "torch": [[r["loss"], r["grad_norm"]] for r in theirs],
        }
        del run
    gen = np.random.default_rng(1)
    return step, lambda: make_batch(gen), info


def worker(impl: str, preset: str, threads: int, batch: int, check: bool) -> None:
    """Build one contender, warm it up, then answer ``run N`` with N step times until ``quit``."""
    import numba
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads, user_api="blas")
    numba.set_num_threads(1)
    start = time.perf_counter()
    if impl == "PyTorch":
        step, make_batch, info = torch_contender(preset, batch, check)
        torch.set_num_threads(threads)
    else:
        step, make_batch, info = minidetr_contender(preset, batch)
    info["setup_s"] = time.perf_counter() - start
    t = time.perf_counter()
    step()
    info["first_step_s"] = time.perf_counter() - t
    step()
    data = []
    for _ in range(5):
        t = time.perf_counter()
        make_batch()
        data.append(time.perf_counter() - t)
    info["data_s"] = float(np.median(data))
    print(MARK + json.dumps(info), flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] != "run":
            break
        times = []  # (wall, CPU time of this process) per step
        for _ in range(int(words[1])):
            t, c = time.perf_counter(), time.process_time()
            step()
            times.append((time.perf_counter() - t, time.process_time() - c))
        print(MARK + json.dumps(times), flush=True)


# --------------------------------------------------------------------------- the driver


class Contender:
    """A worker process running one implementation x preset x thread count."""

    def __init__(self, impl, preset, threads, batch, check=False):
        self.impl, self.preset, self.threads = impl, preset, threads
        env = dict(os.environ)
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(threads)
        env["NUMBA_NUM_THREADS"] = "1"
        args = [impl, preset, str(threads), str(batch), "1" if check else "0"]
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.info = self._answer()
        self.times: list[float] = []  # wall-clock seconds per step
        self.cpu: list[float] = []  # CPU seconds of the worker per step (all its threads)

    def _answer(self):
        for line in self.proc.stdout:
            if line.startswith(MARK):
                return json.loads(line[len(MARK) :])
        raise RuntimeError(f"{self.impl} {self.preset} worker ended early (see its stderr)")

    def run(self, steps: int) -> None:
        self.proc.stdin.write(f"run {steps}\n")
        self.proc.stdin.flush()
        for wall, cpu in self._answer():
            self.times.append(wall)
            self.cpu.append(cpu)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _has_torch() -> bool:
    try:
        import torch as _torch  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3, help="steps per contender per round")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--presets", nargs="+", default=None)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=150.0,
        help="stop after the round that passes this many seconds of timing (at least 2 rounds)",
    )
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        impl, preset, threads, batch, check = args.worker
        worker(impl, preset, int(threads), int(batch), check == "1")
        return

    from minidetr.model import PRESETS

    presets = args.presets or list(PRESETS)
    with_torch = not args.no_torch and _has_torch()
    plan = []
    for preset in presets:
        for threads in args.threads:
            plan.append(("minidetr", preset, threads))
            if with_torch and preset in TORCH_PRESETS:
                plan.append(("PyTorch", preset, threads))
    contenders: list[Contender] = []
    wall, load = time.perf_counter(), os.getloadavg()[0]
    try:
        checked = False
        for impl, preset, threads in plan:  # one at a time, so warm-ups do not overlap
            check = impl == "PyTorch" and not checked
            checked = checked or check
            contenders.append(Contender(impl, preset, threads, args.batch, check))
        timing = time.perf_counter()
        for r in range(args.rounds):
            k = r % len(contenders)
            for c in contenders[k:] + contenders[:k]:
                c.run(args.steps)
            if r >= 1 and time.perf_counter() - timing > args.max_seconds:
                args.rounds = r + 1  # whole rounds only, so every contender had the same share
                break
    finally:
        for c in contenders:
            c.close()
    wall = time.perf_counter() - wall
    report(contenders, args, with_torch, wall, (load, os.getloadavg()[0]))


def report(contenders, args, with_torch, wall, load) -> None:
    import numpy
    import scipy

    versions = f"NumPy {numpy.__version__}, SciPy {scipy.__version__}"
    if with_torch:
        import torch as _torch

        versions += f", PyTorch {_torch.__version__}"
    print(
        f"batch {args.batch}, float32, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs; {versions}; Numba threads 1; "
        f"{args.rounds} rounds x {args.steps} steps per contender, interleaved\n"
    )
    cols = ["preset", "implementation", "threads", "ms/step (best)", "ms/step (median)"]
    cols += ["CPU ms/step (best)", "steps/s (median)", "params", "data", "first step"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---" if i < 2 else "---:" for i in range(len(cols))) + "|")
    medians, cpu = {}, {}
    for c in contenders:
        best, med = min(c.times), float(np.median(c.times))
        medians[(c.impl, c.preset, c.threads)] = (best, med)
        cpu[(c.impl, c.preset, c.threads)] = (min(c.cpu), float(np.median(c.cpu)))
        cells = [
            f"{c.preset} ({c.info['image']} px)",
            c.impl,
            str(c.threads),
            f"{1e3 * best:.0f}",
            f"{1e3 * med:.0f}",
            f"{1e3 * min(c.cpu):.0f}",
            f"{1 / med:.2f}",
            f"{c.info['params']:,}",
            f"{1e3 * c.info['data_s']:.0f} ms",
            f"{c.info['first_step_s']:.1f} s",
        ]
        print("| " + " | ".join(cells) + " |")
    print()
    for c in contenders:
        if c.impl != "PyTorch":
            continue
        ours = medians[("minidetr", c.preset, c.threads)]
        theirs = medians[("PyTorch", c.preset, c.threads)]
        print(
            f"{c.preset}, {c.threads} thread(s): minidetr / PyTorch = "
            f"{ours[0] / theirs[0]:.2f} (best), {ours[1] / theirs[1]:.2f} (median)"
        )
        if c.threads == 1:  # one thread: CPU time is the work itself, steadier under load
            ours, theirs = cpu[("minidetr", c.preset, 1)], cpu[("PyTorch", c.preset, 1)]
            print(
                f"{c.preset}, 1 thread, CPU time: minidetr / PyTorch = "
                f"{ours[0] / theirs[0]:.2f} (best), {ours[1] / theirs[1]:.2f} (median)"
            )
        if "check" in c.info:
            n, ck = c.info["minidetr_params"], c.info["check"]
            same = "match" if n == c.info["params"] else "DIFFER"
            print(
                f"{c.preset} parameters: minidetr {n:,}, PyTorch {c.info['params']:,} ({same}; "
                "every name and shape checked by load_state_dict(strict=True))"
            )
            for i, (a, b) in enumerate(zip(ck["minidetr"], ck["torch"])):
                print(
                    f"  step {i} from the same parameters and batch: loss {a[0]:.6f} vs "
                    f"{b[0]:.6f}, gradient norm {a[1]:.6f} vs {b[1]:.6f} (minidetr vs PyTorch)"
                )
    if not with_torch:
        print("PyTorch is not installed (or --no-torch): minidetr only.")
    busy = max(load) > (os.cpu_count() or 1)
    print(
        f"\nwhole run {wall:.0f} s; load average (1 min) {load[0]:.1f} at the start, "
        f"{load[1]:.1f} at the end, on {os.cpu_count()} CPUs "
        + (
            "(above the CPU count, other jobs shared the cores: trust the best column more "
            "than the median)"
            if busy
            else "(within the CPU count: the benchmark's own workers, nothing else to speak of)"
        )
    )


if __name__ == "__main__":
    main()
