"""Pictures of an explanation: maps per detection, cross-attention per layer and head,
deformable sampling points, entropy and importance per head, and a decoder-attention
figure in the spirit of the DETR paper's (Carion et al. 2020, fig. 6).

Every function writes one PNG (matplotlib, headless) from what
:func:`minidetr.explain.report.explain` returned.
Shapes: H x W pixels, M heads, L levels, P points.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from minidetr.backend import to_numpy
from minidetr.explain.deformable import tokens_to_image
from minidetr.explain.methods import METHODS, dense_matrix, group_layers
from minidetr.explain.report import Detection, Explanation
from minidetr.visualize import COLOURS, _pyplot


def _show(ax, image: np.ndarray, title: str = "") -> None:
    ax.imshow(np.clip(np.transpose(image, (1, 2, 0)), 0, 1))
    ax.set_title(title, fontsize=7)
    ax.set_axis_off()


def _box(ax, det: Detection, colour: str = "white") -> None:
    from matplotlib.patches import Rectangle

    x0, y0, x1, y1 = det.box
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color=colour, linewidth=1.2))


def _overlay(ax, image: np.ndarray, heat: np.ndarray, title: str) -> None:
    _show(ax, image * 0.5, title)
    ax.imshow(heat, cmap="inferno", alpha=0.75)


def _save(fig, path: str | Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)


def _grid(rows: int, columns: int, side: float = 1.9):
    plt = _pyplot()
    fig, axes = plt.subplots(
        max(1, rows), columns, figsize=(side * columns, side * max(1, rows)), squeeze=False
    )
    for ax in axes.flat:
        ax.set_axis_off()
    return fig, axes


def save_detection_maps(
    path: str | Path,
    images: np.ndarray,
    explanation: Explanation,
    classes: Sequence[str],
    limit: int = 6,
) -> None:
    """One row per detection: the image and its box, every method's map (with its IoU), and the
    true mask of the matched object where there is one (the random map's scores are in
    explain.json; its picture is noise)."""
    dets = explanation.detections[:limit]
    fig, axes = _grid(len(dets), 2 + len(METHODS))
    for row, det in zip(axes, dets):
        image = images[det.image]
        _show(row[0], image, f"{classes[det.label]} {det.score:.2f}")
        _box(row[0], det, COLOURS[det.label % len(COLOURS)])
        for ax, method in zip(row[1:], METHODS):
            extra = f" (IoU {det.iou[method]:.2f})" if det.iou else ""
            _overlay(ax, image, det.maps[method], method + extra)
            _box(ax, det)
        if det.mask is not None:
            _overlay(row[-1], image, det.mask.astype(float), "true mask")
    _save(fig, path)


def save_layer_heads(path: str | Path, images: np.ndarray, explanation: Explanation) -> None:
    """The first detection's cross-attention: one row per decoder layer, one column per head."""
    if not explanation.detections:
        return
    det, maps = explanation.detections[0], explanation.maps
    layers = group_layers(maps).decoder_cross
    rows = [to_numpy(dense_matrix(maps[n]))[det.image, :, det.query] for n in layers]  # (M, S)
    fig, axes = _grid(len(layers), rows[0].shape[0])
    for i, row in enumerate(rows):
        for h, weights in enumerate(row):
            heat = tokens_to_image(weights, explanation.spatial_shapes, explanation.image_size)
            _overlay(axes[i, h], images[det.image], heat, f"layer {i}, head {h}")
            _box(axes[i, h], det)
    _save(fig, path)


def save_sampling_points(
    path: str | Path, images: np.ndarray, explanation: Explanation, limit: int = 4
) -> None:
    """Deformable models: where each detection's query samples in the last decoder layer.

    One dot per (head, level, point), coloured by head, its area proportional to its
    attention weight. Does nothing for dense attention.
    """
    maps = explanation.maps
    if not explanation.detections:
        return
    last = maps[group_layers(maps).decoder_cross[-1]]
    if last.kind != "deformable":
        return
    dets = explanation.detections[:limit]
    loc, weights = to_numpy(last.locations), to_numpy(last.weights)  # (B, Q, M, L, P, ...)
    size = explanation.image_size
    fig, axes = _grid(1, len(dets), 2.6)
    for ax, det in zip(axes[0], dets):
        _show(ax, images[det.image] * 0.6, f"query {det.query}")
        _box(ax, det)
        xy, w = loc[det.image, det.query] * size, weights[det.image, det.query]  # (M, L, P, 2)
        for h in range(xy.shape[0]):
            ax.scatter(
                xy[h, ..., 0].ravel() - 0.5,
                xy[h, ..., 1].ravel() - 0.5,
                s=300 * w[h].ravel(),
                color=COLOURS[h % len(COLOURS)],
                alpha=0.8,
                linewidths=0,
            )
        ax.set_xlim(-0.5, size - 0.5)
        ax.set_ylim(size - 0.5, -0.5)
    _save(fig, path)


def save_head_table(path: str | Path, table: dict[str, np.ndarray], title: str) -> None:
    """A heat map of one number per layer (rows) and head (columns), values written in."""
    plt = _pyplot()
    names = list(table)
    values = np.array([np.asarray(table[n], dtype=float) for n in names])
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * values.shape[1], 0.9 + 0.38 * len(names)))
    im = ax.imshow(values, cmap="viridis", aspect="auto")
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white")
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xticks(range(values.shape[1]), [f"head {h}" for h in range(values.shape[1])], fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax)
    _save(fig, path)


def save_decoder_attention(
    path: str | Path,
    images: np.ndarray,
    explanation: Explanation,
    classes: Sequence[str],
    image: int | None = None,
) -> None:
    """Where each detection's query looks: the image with every box, then each detection's
    last-layer cross-attention (heads averaged) over the image, framed in its colour."""
    dets = explanation.detections
    if not dets:
        return
    image = dets[0].image if image is None else image
    mine = [d for d in dets if d.image == image]
    fig, axes = _grid(1, 1 + len(mine), 2.4)
    _show(axes[0, 0], images[image], "detections")
    for i, det in enumerate(mine):
        colour = COLOURS[i % len(COLOURS)]
        _box(axes[0, 0], det, colour)
        ax = axes[0, i + 1]
        _overlay(ax, images[image], det.maps["attention"], f"{classes[det.label]} {det.score:.2f}")
        _box(ax, det, colour)
        for spine in ax.spines.values():
            spine.set_edgecolor(colour)
    _save(fig, path)


PAGE_FIGURES = {  # picture of `minidetr explain` -> (lesson 9 figure, width in pixels)
    "decoder_attention.png": ("09_decoder_attention.png", 1100),
    "relevance.png": ("09_relevance.png", 600),
    "attention_layers_heads.png": ("09_attention_layers_heads.png", 640),
    "sampling_points.png": ("09_sampling_points.png", 1000),
    "entropy.png": ("09_entropy.png", 528),
    "head_importance.png": ("09_head_importance.png", 528),
}


def page_figures(explain_dir: str | Path, figures_dir: str | Path) -> list[Path]:
    """Lesson 9's figures from a ``minidetr explain`` folder: resized and reduced to 96 colours,
    so that each stays under the lessons' 150 kB a picture."""
    from PIL import Image

    written = []
    for name, (target, width) in PAGE_FIGURES.items():
        image = Image.open(Path(explain_dir) / name).convert("RGB")
        w, h = image.size
        if w > width:
            image = image.resize((width, round(h * width / w)), Image.LANCZOS)
        small = image.quantize(colors=96, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        path = Path(figures_dir) / target
        small.save(path, "PNG", optimize=True)
        written.append(path)
    return written


if __name__ == "__main__":  # python -m minidetr.explain.figures EXPLAIN_DIR tutorial/figures
    import sys

    for p in page_figures(sys.argv[1], sys.argv[2]):
        print(p, p.stat().st_size)
