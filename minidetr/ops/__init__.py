"""The op kit: every differentiable op as a ``name_forward`` / ``name_backward`` pair.

``name_forward(x, *params) -> (out, cache)`` and ``name_backward(dout, cache)``
returning the gradients of the forward's differentiable array arguments, in order.

Attention lives one level up, in :mod:`minidetr.attention`, which builds on this
kit; its four dense ops are still reachable as ``minidetr.ops.<name>`` (resolved on
first use, since ``minidetr.attention`` itself imports ``minidetr.ops``).
"""

from minidetr.ops.activation import (
    dropout_backward,
    dropout_forward,
    inverse_sigmoid,
    relu_backward,
    relu_forward,
    sigmoid_backward,
    sigmoid_forward,
)
from minidetr.ops.conv import conv2d_backward, conv2d_forward
from minidetr.ops.embedding import embedding_backward, embedding_forward
from minidetr.ops.linear import linear_backward, linear_forward
from minidetr.ops.mlp import mlp_backward, mlp_forward
from minidetr.ops.normalization import (
    groupnorm_backward,
    groupnorm_forward,
    layernorm_backward,
    layernorm_forward,
)
from minidetr.ops.position import (
    box_sine_embedding_backward,
    box_sine_embedding_forward,
    sine_position_encoding,
)
from minidetr.ops.softmax import (
    cross_entropy_backward,
    cross_entropy_forward,
    log_softmax_backward,
    log_softmax_forward,
    softmax_backward,
    softmax_forward,
)

_ATTENTION = (
    "multi_head_attention_backward",
    "multi_head_attention_forward",
    "scaled_dot_product_attention_backward",
    "scaled_dot_product_attention_forward",
)


def __getattr__(name: str):
    if name in _ATTENTION:
        import minidetr.attention

        return getattr(minidetr.attention, name)
    raise AttributeError(f"module 'minidetr.ops' has no attribute {name!r}")


__all__ = [
    *_ATTENTION,
    "box_sine_embedding_backward",
    "box_sine_embedding_forward",
    "conv2d_backward",
    "conv2d_forward",
    "cross_entropy_backward",
    "cross_entropy_forward",
    "dropout_backward",
    "dropout_forward",
    "embedding_backward",
    "embedding_forward",
    "groupnorm_backward",
    "groupnorm_forward",
    "inverse_sigmoid",
    "layernorm_backward",
    "layernorm_forward",
    "linear_backward",
    "linear_forward",
    "log_softmax_backward",
    "log_softmax_forward",
    "mlp_backward",
    "mlp_forward",
    "relu_backward",
    "relu_forward",
    "sigmoid_backward",
    "sigmoid_forward",
    "sine_position_encoding",
    "softmax_backward",
    "softmax_forward",
]
