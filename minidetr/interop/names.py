"""Parameter names: minidetr's on one side, Hugging Face transformers' on the other.

One table of regular expressions per part of the model, each a pair
(minidetr pattern, transformers pattern) with the same numbered groups, read in
both directions. Only the ResNet backbone, whose layout is shared by DETR and
Deformable DETR, lives here; the transformer's names are in ``detr.py`` and
``deformable.py``.
"""

from __future__ import annotations

import re

# minidetr name (after "backbone.") <-> transformers ResNetBackbone name (after its prefix)
RESNET_NAMES = (
    (r"stem\.conv\.weight", r"embedder\.embedder\.convolution\.weight"),
    (r"stem\.bn\.(\w+)", r"embedder\.embedder\.normalization\.(\w+)"),
    (
        r"stages\.(\d+)\.blocks\.(\d+)\.convs\.(\d+)\.conv\.weight",
        r"encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.convolution\.weight",
    ),
    (
        r"stages\.(\d+)\.blocks\.(\d+)\.convs\.(\d+)\.bn\.(\w+)",
        r"encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.normalization\.(\w+)",
    ),
    (
        r"stages\.(\d+)\.blocks\.(\d+)\.shortcut\.conv\.weight",
        r"encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution\.weight",
    ),
    (
        r"stages\.(\d+)\.blocks\.(\d+)\.shortcut\.bn\.(\w+)",
        r"encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization\.(\w+)",
    ),
)


def _fill(pattern: str, groups: tuple[str, ...]) -> str:
    """The pattern with its groups replaced, in order, by ``groups``; escapes removed."""
    parts = re.split(r"\([^)]*\)", pattern)
    out = parts[0]
    for g, rest in zip(groups, parts[1:]):
        out += g + rest
    return out.replace("\\", "")


def rename(name: str, table: tuple[tuple[str, str], ...], to_hf: bool) -> str | None:
    """The other side's name of ``name`` by ``table``, or None when no row matches."""
    for mini, hf in table:
        src, dst = (mini, hf) if to_hf else (hf, mini)
        m = re.fullmatch(src, name)
        if m:
            return _fill(dst, m.groups())
    return None
