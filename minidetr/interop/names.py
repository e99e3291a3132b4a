"""Parameter names: minidetr's on one side, the reference implementations' on the other.

Tables of regular expressions, each row a pair (minidetr pattern, other pattern)
with the same groups in the same order, read in both directions. Backbones come in
two layouts: transformers' ``ResNetBackbone`` and timm's / torchvision's ResNet
(``conv1``, ``layer1.0.conv2``, ``downsample.1``), which the published DETR files use.
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

# timm / torchvision ResNet: layer numbers and conv/bn numbers count from 1
_TIMM = (
    (r"conv1\.weight", lambda: "stem.conv.weight"),
    (r"bn1\.(\w+)", lambda k: f"stem.bn.{k}"),
    (
        r"layer(\d+)\.(\d+)\.conv(\d+)\.weight",
        lambda s, j, k: f"stages.{int(s) - 1}.blocks.{j}.convs.{int(k) - 1}.conv.weight",
    ),
    (
        r"layer(\d+)\.(\d+)\.bn(\d+)\.(\w+)",
        lambda s, j, k, x: f"stages.{int(s) - 1}.blocks.{j}.convs.{int(k) - 1}.bn.{x}",
    ),
    (
        r"layer(\d+)\.(\d+)\.downsample\.0\.weight",
        lambda s, j: f"stages.{int(s) - 1}.blocks.{j}.shortcut.conv.weight",
    ),
    (
        r"layer(\d+)\.(\d+)\.downsample\.1\.(\w+)",
        lambda s, j, x: f"stages.{int(s) - 1}.blocks.{j}.shortcut.bn.{x}",
    ),
)


def timm_resnet_name(name: str) -> str | None:
    """minidetr's backbone name (after "backbone.") of a timm/torchvision ResNet name, or None."""
    for pattern, make in _TIMM:
        m = re.fullmatch(pattern, name)
        if m:
            return make(*m.groups())
    return None


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
