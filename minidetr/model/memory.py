"""The memory: the encoder's tokens, their positions, and the maps they come from.

The backbone hands the transformer L maps of sizes H_l x W_l; each is flattened
row-major and the levels are stacked into S = sum_l H_l W_l tokens. Attention
that reads the tokens as maps again (deformable attention) needs that
bookkeeping back: :class:`TokenLayout` carries it from the tokens to the
encoder, and :class:`Memory` bundles it with the encoder's output and positions
for the decoder's cross-attention.

Shapes: B batch, S tokens, L levels, D width.
"""

from __future__ import annotations

from typing import NamedTuple

from minidetr.backend import Array


class TokenLayout(NamedTuple):
    """How the S memory tokens split into L levels.

    spatial_shapes ((H_0, W_0), ...), level_start (the L offsets along S), and for
    the deformable encoder the pixel-centre reference points (1, S, 2) in [0, 1].
    """

    spatial_shapes: tuple[tuple[int, int], ...]
    level_start: tuple[int, ...]
    reference_points: Array | None


class Memory(NamedTuple):
    """What the decoder's cross-attention reads."""

    tokens: Array  # (B, S, D) the encoder's output
    pos: Array  # (1, S, D) their position encoding
    layout: TokenLayout
