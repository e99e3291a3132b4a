"""Max pooling over K x K windows: each output keeps the largest input of its window.

Shapes: B batch, C channels, H x W input, Ho x Wo output, K window side.

The backward sends each output's gradient to the one input that won its window
(the first in row-major window order on a tie, as PyTorch's ``max_pool2d``).
Padding is by minus infinity, so a padded cell never wins.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from minidetr.backend import Array, namespace
from minidetr.checks import check_floating, check_ndim


class MaxPoolCache(NamedTuple):
    winner: Array  # (B, C, Ho, Wo) integer: which of the K*K window cells won
    x_shape: tuple[int, int, int, int]
    kernel: int
    stride: int
    padding: int


def _windows(xpad: Array, k: int, stride: int, ho: int, wo: int) -> list[Array]:
    """The K*K strided views xpad[:, :, s*i + u, s*j + v], each (B, C, Ho, Wo), row-major (u, v)."""
    last_h, last_w = stride * (ho - 1) + 1, stride * (wo - 1) + 1
    return [
        xpad[:, :, u : u + last_h : stride, v : v + last_w : stride]
        for u in range(k)
        for v in range(k)
    ]


def max_pool2d_forward(
    x: Array, kernel: int = 3, stride: int = 2, padding: int = 1
) -> tuple[Array, MaxPoolCache]:
    """y[b, c, i, j] = max_{u, v < K} x_pad[b, c, s*i + u, s*j + v].

    x (B, C, H, W). Returns (B, C, Ho, Wo), Ho = (H + 2 padding - K) // stride + 1,
    as ``nn.MaxPool2d(kernel, stride, padding)`` (ResNet's stem uses 3, 2, 1).
    """
    check_floating(x, "x")
    check_ndim(x, 4, "x", "(B, C, H, W)")
    if kernel < 1 or stride < 1 or not 0 <= padding <= kernel // 2:
        raise ValueError(
            f"need kernel >= 1, stride >= 1 and 0 <= padding <= kernel // 2, "
            f"got {kernel}, {stride}, {padding}"
        )
    xp = namespace(x)
    b, c, h, w = x.shape
    ho, wo = (h + 2 * padding - kernel) // stride + 1, (w + 2 * padding - kernel) // stride + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"x of spatial size {h}x{w} is smaller than the {kernel}x{kernel} window")
    hp, wp = h + 2 * padding, w + 2 * padding
    xpad = xp.full((b, c, hp, wp), -math.inf, dtype=x.dtype, device=x.device)
    xpad[:, :, padding : padding + h, padding : padding + w] = x
    stacked = xp.stack(_windows(xpad, kernel, stride, ho, wo), axis=0)  # (K*K, B, C, Ho, Wo)
    winner = xp.argmax(stacked, axis=0)  # (B, C, Ho, Wo), first maximum on ties
    y = xp.max(stacked, axis=0)
    return y, MaxPoolCache(winner, (b, c, h, w), kernel, stride, padding)


def max_pool2d_backward(dy: Array, cache: MaxPoolCache) -> tuple[Array]:
    """dx: each dy[b, c, i, j] goes to the input cell that won window (i, j); overlaps add."""
    xp = namespace(dy)
    b, c, h, w = cache.x_shape
    k, s, p = cache.kernel, cache.stride, cache.padding
    ho, wo = dy.shape[2], dy.shape[3]
    dxpad = xp.zeros((b, c, h + 2 * p, w + 2 * p), dtype=dy.dtype, device=dy.device)
    zero = xp.zeros_like(dy)
    for u in range(k):
        for v in range(k):
            rows = slice(u, u + s * (ho - 1) + 1, s)
            cols = slice(v, v + s * (wo - 1) + 1, s)
            won = xp.where(cache.winner == u * k + v, dy, zero)  # (B, C, Ho, Wo)
            dxpad[:, :, rows, cols] = dxpad[:, :, rows, cols] + won
    return (dxpad[:, :, p : p + h, p : p + w],)
