"""Attention: dense scaled dot-product, DETR's multi-head attention, and efficient variants.

Every op is a ``name_forward`` / ``name_backward`` pair over arrays, like the op
kit in :mod:`minidetr.ops`, on which this package builds (linear layers).

* ``dense.py``: softmax(q k^T / sqrt(d)) v, O(N^2 d); multi-head attention.
* ``linear.py``: kernel (linear) attention, O(N d^2), causal by prefix sums.
* ``performer.py``: random-feature estimates of softmax attention (FAVOR+, Fourier).
* ``sparse.py``: top-k attention and sparsity masks (local, strided, 2-D window).
* ``gathered.py``, ``window.py``: attention over a neighbour table; windowed attention.
* ``linformer.py``: low-rank projections of keys and values.
* ``hierarchical.py``: coarse-to-fine attention over a pooled grid.
"""

from minidetr.attention.dense import (
    AttentionCache,
    MultiHeadAttentionCache,
    multi_head_attention_backward,
    multi_head_attention_forward,
    scaled_dot_product_attention_backward,
    scaled_dot_product_attention_forward,
)
from minidetr.attention.gathered import gathered_attention_backward, gathered_attention_forward
from minidetr.attention.hierarchical import (
    hierarchical_attention_backward,
    hierarchical_attention_forward,
)
from minidetr.attention.linear import linear_attention_backward, linear_attention_forward
from minidetr.attention.linformer import (
    linformer_attention_backward,
    linformer_attention_forward,
)
from minidetr.attention.performer import (
    draw_projection,
    performer_attention_backward,
    performer_attention_forward,
)
from minidetr.attention.sparse import (
    grid_local_mask,
    local_mask,
    strided_mask,
    topk_attention_backward,
    topk_attention_forward,
    topk_mask,
)
from minidetr.attention.window import (
    window_attention_backward,
    window_attention_forward,
    window_neighbours,
)

__all__ = [
    "AttentionCache",
    "MultiHeadAttentionCache",
    "draw_projection",
    "gathered_attention_backward",
    "gathered_attention_forward",
    "grid_local_mask",
    "hierarchical_attention_backward",
    "hierarchical_attention_forward",
    "linear_attention_backward",
    "linear_attention_forward",
    "linformer_attention_backward",
    "linformer_attention_forward",
    "local_mask",
    "multi_head_attention_backward",
    "multi_head_attention_forward",
    "performer_attention_backward",
    "performer_attention_forward",
    "scaled_dot_product_attention_backward",
    "scaled_dot_product_attention_forward",
    "strided_mask",
    "topk_attention_backward",
    "topk_attention_forward",
    "topk_mask",
    "window_attention_backward",
    "window_attention_forward",
    "window_neighbours",
]
