"""What a MiniDETR is made of: one frozen dataclass and a few named presets.

A config is a value, never a dict of strings: ``ModelConfig`` checks itself
when it is made, so a width that the heads cannot divide or a deformable model
without reference boxes is refused at construction, not three layers deep.
Change a field with ``dataclasses.replace(PRESETS["tiny"], num_classes=10)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

VARIANTS = ("standard", "deformable")
BACKBONES = ("convnet", "resnet")
RESNET_BLOCKS = ("basic", "bottleneck")
ENCODER_ATTENTIONS = (
    "softmax", "linear", "performer", "topk", "window", "linformer", "hierarchical"
)  # fmt: skip


@dataclass(frozen=True)
class ModelConfig:
    """Sizes and switches of a MiniDETR.

    Dimension letters used across ``minidetr.model`` (the style guide's, which are
    Deformable DETR's): B batch, Q queries, S tokens (S = sum_l H_l W_l, the
    pixels of every used feature map), L ``num_levels``, D ``d_model``, M
    ``num_heads``, Dh = D / M head width, P ``num_points``, C ``num_classes``,
    F ``ffn_dim``.
    """

    variant: str = "standard"  # "standard" (DETR) or "deformable" (Deformable DETR)
    num_classes: int = 4  # object classes C, without the no-object class
    image_size: int = (
        64  # the input side the preset is meant for (any multiple of the stride works)
    )
    # backbone: one stride-2 stage per entry, stage i followed by backbone_blocks[i] residual convs
    backbone_channels: tuple[int, ...] = (16, 32, 64, 128)
    backbone_blocks: tuple[int, ...] = (0, 0, 1, 1)
    num_groups: int = 8  # GroupNorm groups, in the backbone and the input projections
    num_levels: int = 1  # L, how many of the last backbone stages feed the transformer
    d_model: int = 128
    num_heads: int = 8
    ffn_dim: int = 256
    num_encoder_layers: int = 2
    num_decoder_layers: int = 2
    num_queries: int = 16
    dropout: float = 0.0
    num_points: int = 4  # P, sampling points per head and level (deformable only)
    focal: bool = False  # C sigmoid logits (focal loss) instead of C + 1 softmax logits
    anchor_queries: bool = False  # queries carry a box (DAB-DETR) instead of a learned embedding
    box_refine: bool = False  # each decoder layer refines the previous layer's box
    two_stage: bool = False  # initial boxes from the encoder's best proposals (DINO mixed queries)
    proposal_size: float = 0.05  # two-stage proposal side at the finest level, doubling per level
    denoising: bool = False  # a label embedding for DN-DETR's noised ground-truth queries
    # Switches that reproduce the published architectures where minidetr's defaults differ
    # (minidetr.interop converts DETR and Deformable DETR weights with them):
    learned_content: bool = True  # False: content queries start at zero (tgt = 0), as in DETR
    share_heads: bool = True  # False: each decoder layer its own class and box head (Deformable
    # DETR with box refinement); True: one pair for all layers (DETR, DINO)
    backbone: str = "convnet"  # "convnet" (GroupNorm, from scratch) or "resnet" (frozen BatchNorm)
    resnet_block: str = "basic"  # "basic" or "bottleneck" blocks (backbone="resnet")
    resnet_stem: int = 64  # width of the ResNet stem (backbone="resnet")
    input_proj_norm: bool = True  # GroupNorm after each input projection (DETR has none)
    final_norm: bool = False  # DETR's shared LayerNorm on every decoder output the heads read
    extra_levels: int = 0  # of the num_levels, how many are made by 3x3 stride-2 convs (Deformable)
    sine_half_pixel: bool = False  # sine positions of pixel centres (i + 1/2), as Deformable DETR
    learned_reference: bool = False  # Deformable DETR's queries: learned positions, fixed over the
    # layers, and 2-D reference points sigmoid(Linear(position)) (needs anchor_queries=False)
    proposal_queries: bool = False  # Deformable DETR's two-stage: each query's position and
    # content from its proposal's sine embedding (Linear + LayerNorm), proposals ranked by the
    # first class and those outside (0.01, 0.99) masked (needs two_stage, anchor_queries=False)
    # the standard encoder's self-attention core (minidetr.attention.multihead), one feature map
    encoder_attention: str = "softmax"
    # an L2 penalty on the deformable sampling offsets in level pixels, averaged over the
    # deformable layers (minidetr.deformable.offset_penalty); 0 = off
    offset_l2: float = 0.0

    def __post_init__(self) -> None:
        for name in ("backbone_channels", "backbone_blocks"):  # lists, e.g. from JSON, to tuples
            object.__setattr__(self, name, tuple(int(n) for n in getattr(self, name)))
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.resnet_block not in RESNET_BLOCKS:
            raise ValueError(
                f"resnet_block must be one of {RESNET_BLOCKS}, got {self.resnet_block!r}"
            )
        positive = ("num_classes", "d_model", "num_heads", "ffn_dim", "num_queries")
        positive += ("num_levels", "num_points", "num_groups", "image_size", "resnet_stem")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_encoder_layers < 0:
            raise ValueError(f"num_encoder_layers must be >= 0, got {self.num_encoder_layers}")
        if self.num_decoder_layers < 1:
            raise ValueError(f"num_decoder_layers must be >= 1, got {self.num_decoder_layers}")
        if not self.backbone_channels:
            raise ValueError("backbone_channels must name at least one stage")
        if len(self.backbone_blocks) != len(self.backbone_channels) or min(
            self.backbone_blocks
        ) < int(self.backbone == "resnet"):
            raise ValueError(
                f"backbone_blocks must give a count >= {int(self.backbone == 'resnet')} for each "
                f"of the "
                f"{len(self.backbone_channels)} stages, got {self.backbone_blocks}"
            )
        if self.d_model % self.num_heads:
            raise ValueError(f"num_heads {self.num_heads} must divide d_model {self.d_model}")
        if self.d_model % 4:
            raise ValueError(
                f"d_model must be a multiple of 4 (sine encodings), got {self.d_model}"
            )
        grouped = self.backbone_channels if self.backbone == "convnet" else ()
        if self.backbone == "resnet" and self.resnet_block == "bottleneck":
            for c in self.backbone_channels:
                if c % 4:
                    raise ValueError(f"bottleneck widths must be multiples of 4, not {c}")
        for c in (*grouped, *((self.d_model,) if self.input_proj_norm else ())):
            if c % self.num_groups:
                raise ValueError(f"num_groups {self.num_groups} must divide every width, not {c}")
        if not 0 <= self.extra_levels < self.num_levels:
            raise ValueError(f"extra_levels must be in [0, num_levels), got {self.extra_levels}")
        if self.backbone_levels > len(self.backbone_channels):
            raise ValueError(
                f"num_levels {self.num_levels} less extra_levels {self.extra_levels} exceeds the "
                f"{len(self.backbone_channels)} stages"
            )
        if not 0.0 < self.proposal_size * 2 ** (self.num_levels - 1) < 1.0:
            raise ValueError(
                f"proposal_size {self.proposal_size} doubled over {self.num_levels} levels "
                "must stay in (0, 1)"
            )
        if not (isinstance(self.offset_l2, (int, float)) and 0.0 <= self.offset_l2 < math.inf):
            raise ValueError(f"offset_l2 must be a finite number >= 0, got {self.offset_l2!r}")
        if self.offset_l2 and self.variant != "deformable":
            raise ValueError(
                "offset_l2 penalises deformable sampling offsets: it needs variant='deformable'"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        needs_anchor = [n for n in ("two_stage", "denoising") if getattr(self, n)]
        if self.proposal_queries:
            if not self.two_stage or self.anchor_queries or self.denoising:
                raise ValueError(
                    "proposal_queries is Deformable DETR's two-stage: it needs two_stage=True "
                    "and excludes anchor_queries and denoising"
                )
            if self.learned_content or self.learned_reference:
                raise ValueError("proposal_queries makes the content and the reference points")
            needs_anchor = []
        elif self.learned_reference:
            if self.anchor_queries or needs_anchor:
                raise ValueError(
                    "learned_reference is Deformable DETR's plain queries: it excludes "
                    "anchor_queries, two_stage and denoising"
                )
        else:
            needs_anchor += [n for n in ("box_refine",) if getattr(self, n)]
            if self.variant == "deformable":
                needs_anchor.append("variant='deformable'")
        if needs_anchor and not self.anchor_queries:
            raise ValueError(
                f"{', '.join(needs_anchor)} needs anchor_queries=True (or learned_reference=True)"
            )
        if self.image_size % self.stride:
            raise ValueError(f"image_size must be a multiple of the stride {self.stride}")
        if self.encoder_attention not in ENCODER_ATTENTIONS:
            raise ValueError(
                f"encoder_attention must be one of {ENCODER_ATTENTIONS}, "
                f"got {self.encoder_attention!r}"
            )
        if self.encoder_attention != "softmax" and (
            self.variant != "standard" or self.num_levels != 1
        ):
            raise ValueError(
                f"encoder_attention {self.encoder_attention!r} needs variant='standard' "
                "with num_levels=1 (one token grid)"
            )

    @property
    def stride(self) -> int:
        """How much the backbone shrinks the image: 2 per stage (and 4 for a ResNet's stem)."""
        return 2 ** (len(self.backbone_channels) + (self.backbone == "resnet"))

    @property
    def backbone_levels(self) -> int:
        """How many of the levels are backbone maps (the last stages); the rest are extra."""
        return self.num_levels - self.extra_levels

    @property
    def level_strides(self) -> tuple[int, ...]:
        """Strides of the L feature maps that feed the transformer, finest first."""
        n, extra = len(self.backbone_channels), int(self.backbone == "resnet")
        maps = tuple(2 ** (i + 1 + extra) for i in range(n - self.backbone_levels, n))
        return maps + tuple(maps[-1] * 2 ** (k + 1) for k in range(self.extra_levels))

    @property
    def num_logits(self) -> int:
        """C with focal loss (one sigmoid per class), C + 1 with softmax (last = no object)."""
        return self.num_classes if self.focal else self.num_classes + 1


# Presets. `tiny` and `tiny-deformable` are for tests and gradient checks: every
# feature switched on, sizes as small as still meaningful. `standard` is plain
# DETR at the size of the usual tiny PyTorch baseline (64 pixels, width 128,
# 2 + 2 layers, 16 queries; one stride-16 map, 16 tokens). `deformable` is the
# default training preset: the tricks that make DETR converge in minutes instead
# of days (multi-scale deformable attention over strides 8, 16 and 32, focal
# loss, anchor queries refined layer by layer, mixed query selection,
# denoising), at width 64 so a step stays cheap on two CPU cores.
_TINY = dict(
    num_classes=3,
    image_size=32,
    backbone_channels=(8, 16, 16),
    backbone_blocks=(1, 0, 1),
    num_groups=4,
    num_levels=2,
    d_model=16,
    num_heads=2,
    ffn_dim=24,
    num_encoder_layers=1,
    num_decoder_layers=2,
    num_queries=5,
)
PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(
        variant="standard", anchor_queries=True, box_refine=True, denoising=True, **_TINY
    ),
    "tiny-deformable": ModelConfig(
        variant="deformable",
        num_points=2,
        focal=True,
        anchor_queries=True,
        box_refine=True,
        two_stage=True,
        denoising=True,
        **_TINY,
    ),
    "standard": ModelConfig(
        variant="standard",
        num_classes=3,
        image_size=64,
        backbone_channels=(16, 32, 64, 128),
        backbone_blocks=(0, 0, 1, 1),
        num_levels=1,
        d_model=128,
        num_heads=8,
        ffn_dim=256,
        num_encoder_layers=2,
        num_decoder_layers=2,
        num_queries=16,
        final_norm=True,
    ),
    "deformable": ModelConfig(
        variant="deformable",
        num_classes=3,
        image_size=64,
        backbone_channels=(16, 32, 64, 128, 128),
        backbone_blocks=(0, 0, 1, 1, 1),
        num_levels=3,
        d_model=64,
        num_heads=4,
        ffn_dim=128,
        num_encoder_layers=2,
        num_decoder_layers=3,
        num_queries=16,
        num_points=4,
        focal=True,
        anchor_queries=True,
        box_refine=True,
        two_stage=True,
        proposal_size=0.1,  # 6, 13, 26 pixels: the span of the shapes' sizes
        denoising=True,
    ),
}

DEFAULT_PRESET = "deformable"
