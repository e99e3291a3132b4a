"""The MiniDETR model: configuration, parameters, forward and hand-written backward.

``MiniDETR(config)`` with ``init_params``, ``forward`` and ``backward``;
``PRESETS`` names ready-made configs; ``summary(config)`` prints the parameter
count of every block.
"""

from minidetr.model.config import DEFAULT_PRESET, PRESETS, ModelConfig
from minidetr.model.detr import MiniDETR
from minidetr.model.summary import parameter_counts, summary

__all__ = [
    "DEFAULT_PRESET",
    "PRESETS",
    "MiniDETR",
    "ModelConfig",
    "parameter_counts",
    "summary",
]
