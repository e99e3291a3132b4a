"""Video: moving shapes, attention through space and time, a bounded memory, tracking by query.

Dimension letters in this package: B batch, T frames, N spatial tokens per frame, D model
width, M heads, Dh head width, Q queries, K memory slots, W window of past frames.
"""

from minidetr.video.moving_shapes import MovingShapes

__all__ = ["MovingShapes"]
