"""The set-prediction loss: targets, matching, focal loss, denoising, DETR's criterion.

* :mod:`~minidetr.setloss.targets`: the ground-truth format and its one check per batch;
* :mod:`~minidetr.setloss.focal`: sigmoid focal loss (forward / backward);
* :mod:`~minidetr.setloss.matching`: DETR's Hungarian matcher (costs built per image);
* :mod:`~minidetr.setloss.denoising`: DN-DETR / DINO denoising queries and their mask;
* :mod:`~minidetr.setloss.assign`: who answers what, matched or fixed by construction;
* :mod:`~minidetr.setloss.layer_loss`: one layer's terms and their backward;
* :mod:`~minidetr.setloss.criterion`: ``SetCriterion`` over every query group and layer.

The predictions come in as :class:`minidetr.outputs.SetOutputs`.
"""

from minidetr.setloss.criterion import LossWeights, SetCriterion, SetCriterionCache
from minidetr.setloss.denoising import DenoisingQueries, make_denoising_queries
from minidetr.setloss.focal import sigmoid_focal_loss_backward, sigmoid_focal_loss_forward
from minidetr.setloss.matching import HungarianMatcher
from minidetr.setloss.targets import Targets, check_targets

__all__ = [
    "DenoisingQueries",
    "HungarianMatcher",
    "LossWeights",
    "SetCriterion",
    "SetCriterionCache",
    "Targets",
    "check_targets",
    "make_denoising_queries",
    "sigmoid_focal_loss_backward",
    "sigmoid_focal_loss_forward",
]
