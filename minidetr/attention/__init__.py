"""Attention: dense scaled dot-product and DETR's multi-head attention.

Every op is a ``name_forward`` / ``name_backward`` pair over arrays, like the op
kit in :mod:`minidetr.ops`, on which this package builds (linear layers).
"""

from minidetr.attention.dense import (
    AttentionCache,
    MultiHeadAttentionCache,
    multi_head_attention_backward,
    multi_head_attention_forward,
    scaled_dot_product_attention_backward,
    scaled_dot_product_attention_forward,
)

__all__ = [
    "AttentionCache",
    "MultiHeadAttentionCache",
    "multi_head_attention_backward",
    "multi_head_attention_forward",
    "scaled_dot_product_attention_backward",
    "scaled_dot_product_attention_forward",
]
