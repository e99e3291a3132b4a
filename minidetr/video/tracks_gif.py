"""An animated picture of tracks: each clip's frames with its boxes, one colour per identity.

Drawn with Pillow (which matplotlib already depends on), scaled up so that 64-pixel frames are
readable; clips side by side, one GIF frame per video frame. Shapes: T frames, H = W side.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from minidetr.visualize import COLOURS


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))


def save_tracks_gif(
    path: str | Path,
    clips: Sequence[np.ndarray],
    tracks: Sequence[Sequence[dict]],
    *,
    image_size: int,
    scale: int = 4,
    frame_ms: int = 250,
    colors: int = 32,
) -> None:
    """Write ``path``: clips[i] (T, 3, H, W) in [0, 1] with tracks[i][t] = {"track_ids" (n,),
    "boxes" (n, 4) normalised cxcywh} drawn on frame t, the id written above each box;
    ``colors`` colours per picture."""
    from PIL import Image, ImageDraw  # noqa: PLC0415 - a dependency of matplotlib

    if len(clips) != len(tracks) or not clips:
        raise ValueError(f"need one track list per clip, got {len(clips)} clips, {len(tracks)}")
    frames = min(len(c) for c in clips)
    side = image_size * scale
    pictures = []
    for t in range(frames):
        canvas = Image.new("RGB", (len(clips) * (side + 4), side), (255, 255, 255))
        for i, (clip, track) in enumerate(zip(clips, tracks)):
            rgb = (np.clip(clip[t].transpose(1, 2, 0), 0, 1) * 255).astype(np.uint8)
            tile = Image.fromarray(rgb).resize((side, side), Image.NEAREST)
            draw = ImageDraw.Draw(tile)
            for tid, (cx, cy, w, h) in zip(track[t]["track_ids"], track[t]["boxes"] * side):
                colour = _rgb(COLOURS[int(tid) % len(COLOURS)])
                draw.rectangle(
                    [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], outline=colour, width=2
                )
                draw.text((cx - w / 2 + 2, cy - h / 2 + 1), str(int(tid)), fill=colour)
            draw.text((3, side - 12), f"t={t}", fill=(255, 255, 255))
            canvas.paste(tile, (i * (side + 4), 0))
        # a small palette without dithering: the noisy backgrounds then compress well
        pictures.append(
            canvas.quantize(colors, Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
        )
    pictures[0].save(
        path, save_all=True, append_images=pictures[1:], duration=frame_ms, loop=0, optimize=True
    )
