"""DETR's transformer, one concept per file; this module only gathers the names.

* :mod:`~minidetr.model.memory`: ``TokenLayout`` and ``Memory``, what the tokens are;
* :mod:`~minidetr.model.sublayers`: the FFN and the post-norm residual ``LN(x + sub)``;
* :mod:`~minidetr.model.attention_kind`: ``AttentionKind`` and DETR's dense ``STANDARD``
  (Deformable DETR's ``DEFORMABLE`` is in :mod:`~minidetr.model.deformable_transformer`);
* :mod:`~minidetr.model.encoder`: encoder layers and the stack;
* :mod:`~minidetr.model.decoder_layer`: one decoder layer; the stack with its
  queries and heads is :mod:`~minidetr.model.decoder`.

Nothing inside ``minidetr`` imports this module: it is for readers and users.
"""

from minidetr.model.attention_kind import STANDARD, AttentionKind
from minidetr.model.decoder_layer import (
    DecoderLayerCache,
    LayerQueries,
    decoder_layer_backward,
    decoder_layer_forward,
    init_decoder_layers,
)
from minidetr.model.encoder import (
    EncoderLayerCache,
    encoder_backward,
    encoder_forward,
    encoder_layer_backward,
    encoder_layer_forward,
    init_encoder,
)
from minidetr.model.memory import Memory, TokenLayout
from minidetr.model.sublayers import RunContext

__all__ = [
    "STANDARD",
    "AttentionKind",
    "DecoderLayerCache",
    "EncoderLayerCache",
    "LayerQueries",
    "Memory",
    "RunContext",
    "TokenLayout",
    "decoder_layer_backward",
    "decoder_layer_forward",
    "encoder_backward",
    "encoder_forward",
    "encoder_layer_backward",
    "encoder_layer_forward",
    "init_decoder_layers",
    "init_encoder",
]
