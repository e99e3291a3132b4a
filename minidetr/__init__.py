"""minidetr: DETR and its family from first principles, with hand-written backward passes."""

from minidetr import compile_cache

__version__ = "0.1.0"

compile_cache.register()  # before any module of the package compiles: see compile_cache
