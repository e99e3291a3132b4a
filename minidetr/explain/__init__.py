"""Looking inside a detector: attention maps, rollout, gradient relevance, faithfulness.

Pure methods on given maps and gradients: :mod:`.rollout` (head fusion, rollout,
entropy), :mod:`.relevance` (Chefer et al.'s encoder-decoder relevance),
:mod:`.deformable` (deformable attention as a matrix, its gradient splat),
:mod:`.faithfulness` (deletion and insertion curves), :mod:`.segmentation`
(relevance maps as masks), :mod:`.regularize` (an entropy penalty).
On a model: :mod:`.capture` (every map from the caches, dL/dA from the backward),
:mod:`.heads` (entropy, gate gradients, ablation), :mod:`.methods` (one map per
detection and method), :mod:`.report` (the measurements), :mod:`.figures`,
:mod:`.command` (``minidetr explain``). Lesson 9.
"""

from minidetr.explain.deformable import (
    deformable_attention_matrix,
    deformable_relevance,
    tokens_to_image,
)
from minidetr.explain.faithfulness import (
    Curves,
    faithfulness_curves,
    random_order,
    relevance_order,
)
from minidetr.explain.relevance import MapAndGrad, Relevance, encoder_decoder_relevance
from minidetr.explain.rollout import attention_entropy, attention_rollout, fuse_heads
from minidetr.explain.segmentation import mask_iou, relevance_mask, segmentation_iou

__all__ = [
    "Curves",
    "MapAndGrad",
    "Relevance",
    "attention_entropy",
    "attention_rollout",
    "deformable_attention_matrix",
    "deformable_relevance",
    "encoder_decoder_relevance",
    "faithfulness_curves",
    "fuse_heads",
    "mask_iou",
    "random_order",
    "relevance_mask",
    "relevance_order",
    "segmentation_iou",
    "tokens_to_image",
]
