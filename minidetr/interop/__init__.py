"""Real models and real checkpoints: exact conversion to and from the reference implementations.

``from_transformers`` / ``to_transformers`` (needs the ``interop`` extra: torch and
transformers) and ``load_checkpoint`` (safetensors through its NumPy API, no
PyTorch; the official ``.pth`` when torch is installed).
"""

from minidetr.interop.transformers_io import from_transformers, to_transformers

__all__ = ["from_transformers", "to_transformers"]
