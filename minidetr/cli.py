"""The ``minidetr`` command: train a tiny DETR, evaluate a checkpoint, draw its detections.

    minidetr train                      # default preset on the shapes set, on the CPU
    minidetr train --device cuda        # the same on a GPU, with CuPy
    minidetr eval runs/<stamp>/checkpoint.npz
    minidetr predict runs/<stamp>/checkpoint.npz picture.png
    minidetr explain runs/<stamp>/checkpoint.npz --out explain

User mistakes (an option out of range, an unusable output folder, a folder
holding another run, a corrupt checkpoint, an unreadable image, no GPU, a run
that diverges) raise ``minidetr.options.UserError`` and end with one line saying
what to do, exit status 2; a bug inside minidetr keeps its traceback. Each
subcommand is one ``cmd_*`` function (in ``minidetr.commands``) and one
``add_*_parser`` function here.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from minidetr.commands import checkpoints, track, train
from minidetr.options import (
    UserError,
    finite_float,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
)

DESCRIPTION = "Train a tiny DETR, evaluate a checkpoint, draw its detections."


def limit_threads(n: int) -> None:
    """Use ``n`` BLAS and Numba threads.

    minidetr's matrices are small: on two cores, one thread each measured 1.5 to
    3x faster per training step than the libraries' defaults, whose idle threads
    spin and compete for the same cores.
    """
    import numba
    from threadpoolctl import threadpool_limits

    threadpool_limits(n)
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def cmd_train(args: argparse.Namespace) -> int:
    """``train``: a detector, or with ``--task track`` a tracker."""
    if args.task == "track":
        return track.cmd_train_track(args)
    return train.cmd_train(args)


class Parser(argparse.ArgumentParser):
    """argparse, with a mistake reported in one line (and a pointer to --help)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu (NumPy) or cuda (CuPy)")
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="BLAS and Numba threads (default 1, fastest on 2 cores)",
    )


def add_train_parser(sub: Any) -> None:
    from minidetr.data import DATASETS
    from minidetr.model import PRESETS
    from minidetr.model.config import ENCODER_ATTENTIONS
    from minidetr.train.loop import TrainConfig

    d = TrainConfig()
    what = "train a tiny DETR on built-in data"
    t = sub.add_parser("train", help=what, description=what)
    add_common_options(t)
    t.add_argument("--preset", choices=sorted(PRESETS), help=f"model preset (default {d.preset})")
    t.add_argument(
        "--dataset",
        help=f"built-in dataset {sorted(DATASETS)} (default {d.dataset}) or a COCO file PATH.json",
    )
    t.add_argument("--val-dataset", help="COCO validation file (default: a held-out tenth)")
    t.add_argument("--images", help="folder of the COCO files' images (default: the JSON's)")
    t.add_argument(
        "--encoder-attention",
        choices=ENCODER_ATTENTIONS,
        help="the standard preset's encoder self-attention (default softmax)",
    )
    t.add_argument("--steps", type=positive_int, help=f"optimizer steps (default {d.steps})")
    t.add_argument(
        "--batch-size", type=positive_int, help=f"images per step (default {d.batch_size})"
    )
    t.add_argument("--lr", type=positive_float, help=f"peak learning rate (default {d.lr:g})")
    t.add_argument(
        "--seed",
        type=non_negative_int,
        help=f"seed of data, initialisation and noise, >= 0 (default {d.seed})",
    )
    t.add_argument(
        "--checkpoint-every",
        type=positive_int,
        help=f"steps between checkpoints (default {d.checkpoint_every})",
    )
    t.add_argument(
        "--attention-entropy",
        type=finite_float,
        metavar="W",
        help="add W x the mean entropy of the encoder self- and decoder cross-attention to "
        "the loss (W > 0 sharpens, W < 0 spreads; standard preset only; default 0, off)",
    )
    t.add_argument(
        "--offset-l2",
        type=non_negative_float,
        metavar="LAMBDA",
        help="L2 penalty on deformable sampling offsets in level pixels, >= 0 (default 0: off)",
    )
    t.add_argument("--out", help="output folder (default runs/<timestamp>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.add_argument("--force", action="store_true", help="overwrite a run already in --out")
    t.add_argument("--quiet", action="store_true", help="no progress output")
    t.add_argument(
        "--task", choices=("detect", "track"), default="detect", help="detect (default) or track"
    )
    t.set_defaults(func=cmd_train)


def add_track_parser(sub: Any) -> None:
    what = "track held-out moving-shapes clips with a --task track checkpoint"
    k = sub.add_parser("track", help=what, description=what)
    add_common_options(k)
    k.add_argument("checkpoint")
    k.add_argument("--out", required=True, help="folder for MOT files, animations, metrics")
    k.add_argument("--clips", type=positive_int, help="how many held-out clips (default all)")
    k.set_defaults(func=track.cmd_track)


def add_eval_parser(sub: Any) -> None:
    what = "COCO AP of a checkpoint on the held-out split"
    e = sub.add_parser("eval", help=what, description=what)
    add_common_options(e)
    e.add_argument("checkpoint")
    e.set_defaults(func=checkpoints.cmd_eval)


def add_predict_parser(sub: Any) -> None:
    what = "draw a checkpoint's detections on images"
    p = sub.add_parser("predict", help=what, description=what)
    add_common_options(p)
    p.add_argument("checkpoint")
    p.add_argument("images", nargs="+")
    p.add_argument("--out", default="predictions", help="folder for the annotated images")
    p.add_argument(
        "--threshold",
        type=probability,
        help="lowest score drawn, in [0, 1] (default 0.3 focal, 0.5 softmax)",
    )
    p.set_defaults(func=checkpoints.cmd_predict)


def add_explain_parser(sub: Any) -> None:
    what = "attention maps, relevance and their faithfulness for a checkpoint's detections"
    x = sub.add_parser("explain", help=what, description=what)
    add_common_options(x)
    x.add_argument("checkpoint")
    x.add_argument("images", nargs="*", help="pictures (default: held-out images)")
    x.add_argument("--out", default="explain", help="folder for the figures and explain.json")
    x.add_argument(
        "--num-images", type=positive_int, default=16, help="held-out images explained (16)"
    )
    x.add_argument(
        "--ablation-images",
        type=non_negative_int,
        default=64,
        help="held-out images for the AP lost per removed head (64; 0 skips it)",
    )
    x.add_argument(
        "--threshold",
        type=probability,
        help="lowest score explained, in [0, 1] (default 0.3 focal, 0.5 softmax)",
    )
    x.set_defaults(func=checkpoints.cmd_explain)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="minidetr", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    add_train_parser(sub)
    add_eval_parser(sub)
    add_predict_parser(sub)
    add_track_parser(sub)
    add_explain_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; a ``UserError`` is one line on stderr and exit status 2."""
    try:
        args = build_parser().parse_args(argv)
        limit_threads(args.threads)
        return args.func(args)
    except UserError as err:
        print(f"minidetr: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nminidetr: interrupted; nothing was saved", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
