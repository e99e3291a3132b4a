"""2-D convolution by im2col: gather every kernel offset, then one matrix product.

Shapes: B batch, C input channels, O output channels, H x W input, K x K kernel,
Ho x Wo output. Weight layout (O, C, K, K) as in PyTorch's ``nn.Conv2d``.

The columns are laid out (C*K*K, B*Ho*Wo), so that the whole batch is one matrix
product with the flattened weight (O, C*K*K): B separate products would be slow on
the small maps of the late stages. On NumPy float arrays the gather (im2col) and
the scatter-add of the backward (col2im) run as compiled loops
(``minidetr.kernels.conv_cpu``), the matrix products stay with BLAS, and the output
is made contiguous, so that the GroupNorm after it reduces over contiguous memory.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minidetr.backend import Array, compiled_kernel, namespace
from minidetr.checks import check_dim, check_floating, check_ndim
from minidetr.kernels.conv_cpu import col2im, im2col


class Conv2dCache(NamedTuple):
    cols: Array  # (C*K*K, B*Ho*Wo) the im2col patches, one column per output pixel
    weight: Array  # (O, C, K, K)
    x_shape: tuple[int, int, int, int]
    stride: int
    padding: int
    has_bias: bool


def _out_size(n: int, k: int, stride: int, padding: int) -> int:
    return (n + 2 * padding - k) // stride + 1


def _compiled(x: Array) -> bool:
    """Whether the Numba loops take ``x``: a NumPy array of float32 or float64."""
    return compiled_kernel(x) == "numba"


def _im2col(x: Array, k: int, stride: int, padding: int, ho: int, wo: int) -> Array:
    """cols[(c, u, v), (b, i, j)] = x_pad[b, c, s*i + u, s*j + v]: (C*K*K, B*Ho*Wo)."""
    if _compiled(x):
        return im2col(np.ascontiguousarray(x), k, stride, padding, ho, wo)
    xp = namespace(x)
    b, c, h, w = x.shape
    x_t = xp.permute_dims(x, (1, 0, 2, 3))  # (C, B, H, W)
    if padding:
        xpad = xp.zeros((c, b, h + 2 * padding, w + 2 * padding), dtype=x.dtype, device=x.device)
        xpad[:, :, padding : padding + h, padding : padding + w] = x_t
    else:
        xpad = x_t
    patches = [
        xpad[:, :, u : u + stride * (ho - 1) + 1 : stride, v : v + stride * (wo - 1) + 1 : stride]
        for u in range(k)
        for v in range(k)
    ]  # K*K of (C, B, Ho, Wo)
    return xp.reshape(xp.stack(patches, axis=1), (c * k * k, b * ho * wo))  # (C*K*K, B*Ho*Wo)


def _col2im(
    dcols: Array, x_shape: tuple[int, int, int, int], k: int, stride: int, padding: int, wo: int
) -> Array:
    """Adjoint of :func:`_im2col`: add each column entry back onto its pixel, (B, C, H, W)."""
    b, c, h, w = x_shape
    if _compiled(dcols):  # the kernel reads (B*Ho*Wo, C*K*K): free when dcols is its .T view
        return col2im(np.ascontiguousarray(dcols.T), b, c, h, w, k, stride, padding, wo)
    xp = namespace(dcols)
    ho = dcols.shape[1] // (b * wo)
    dcols = xp.reshape(dcols, (c, k * k, b, ho, wo))
    hp, wp = h + 2 * padding, w + 2 * padding
    dxpad = xp.zeros((c, b, hp, wp), dtype=dcols.dtype, device=dcols.device)
    for u in range(k):
        for v in range(k):
            rows = slice(u, u + stride * (ho - 1) + 1, stride)
            cols = slice(v, v + stride * (wo - 1) + 1, stride)
            dxpad[:, :, rows, cols] = dxpad[:, :, rows, cols] + dcols[:, u * k + v, ...]
    dx = dxpad[:, :, padding : padding + h, padding : padding + w] if padding else dxpad
    return xp.permute_dims(dx, (1, 0, 2, 3))  # (B, C, H, W)


def conv2d_forward(
    x: Array, weight: Array, bias: Array | None = None, *, stride: int = 1, padding: int = 0
) -> tuple[Array, Conv2dCache]:
    """y[b, o, i, j] = sum_{c, u, v} w[o, c, u, v] x_pad[b, c, s*i + u, s*j + v] + bias[o].

    x (B, C, H, W), weight (O, C, K, K), bias (O,) or None. Returns (B, O, Ho, Wo)
    with Ho = (H + 2 padding - K) // stride + 1 (zero padding), as ``nn.Conv2d``.
    """
    check_floating(x, "x")
    check_ndim(x, 4, "x", "(B, C, H, W)")
    check_ndim(weight, 4, "weight", "(O, C, K, K)")
    check_dim(x, 1, weight.shape[1], "x", "input channels of weight")
    if stride < 1 or padding < 0:
        raise ValueError(f"stride must be >= 1 and padding >= 0, got {stride} and {padding}")
    xp = namespace(x, weight, bias)
    b, c, h, w = x.shape
    o, _, k, k2 = weight.shape
    if k != k2:
        raise ValueError(f"weight must have a square kernel, got {k}x{k2}")
    ho, wo = _out_size(h, k, stride, padding), _out_size(w, k, stride, padding)
    if ho < 1 or wo < 1:
        raise ValueError(f"x of spatial size {h}x{w} is smaller than the {k}x{k} kernel")
    cols = _im2col(x, k, stride, padding, ho, wo)  # (C*K*K, B*Ho*Wo)
    y = xp.matmul(xp.reshape(weight, (o, c * k * k)), cols)  # (O, B*Ho*Wo)
    if bias is not None:
        check_dim(bias, 0, o, "bias", "output channels of weight")
        y = y + bias[:, None]
    y = xp.permute_dims(xp.reshape(y, (o, b, ho, wo)), (1, 0, 2, 3))  # (B, O, Ho, Wo)
    if _compiled(y):
        y = np.ascontiguousarray(y)  # (B, O, Ho, Wo) in memory too, for the next op
    return y, Conv2dCache(cols, weight, (b, c, h, w), stride, padding, bias is not None)


def conv2d_backward(
    dy: Array, cache: Conv2dCache, *, input_grad: bool = True
) -> tuple[Array | None, Array, Array | None]:
    """Gradients (dx, dweight, dbias): col2im adds each patch gradient back onto its pixels.

    ``input_grad=False`` skips dx (returned as None): a network's first convolution reads
    the images, whose gradient nobody needs, and dx is half of the backward's work.
    """
    xp = namespace(dy)
    b, c, h, w = cache.x_shape
    o, _, k, _ = cache.weight.shape
    ho, wo = dy.shape[2], dy.shape[3]
    dy2 = xp.reshape(xp.permute_dims(dy, (1, 0, 2, 3)), (o, b * ho * wo))  # (O, B*Ho*Wo)
    # dW = dy2 cols^T, taken as (cols dy2^T)^T: the same sums, and BLAS runs the long
    # B*Ho*Wo contraction 10 to 35% faster in this orientation on the backbone's shapes
    dweight = xp.reshape(xp.matmul(cache.cols, dy2.mT).mT, (o, c, k, k))  # (O, C, K, K)
    if _compiled(dweight):
        dweight = np.ascontiguousarray(dweight)  # a strided view until here; AdamW reads it flat
    dbias = xp.sum(dy2, axis=1) if cache.has_bias else None
    if not input_grad:
        return None, dweight, dbias
    # dcols = W^T dy2 (C*K*K, B*Ho*Wo), taken as (dy2^T W)^T: BLAS runs it 5 to 30% faster
    dcols = xp.matmul(dy2.mT, xp.reshape(cache.weight, (o, c * k * k))).mT
    dx = _col2im(dcols, cache.x_shape, k, cache.stride, cache.padding, wo)  # (B, C, H, W)
    return dx, dweight, dbias
