"""Embedding lookup: a row of a learned table per integer index (``nn.Embedding``).

out[...] = table[indices[...]], written as onehot(indices) @ table so that it
keeps to the array API standard and its backward is a matrix product too.
DN-DETR's denoising queries take their content from the class embedding this way.

Shapes: N... lookups, V table rows, D width.
"""

from __future__ import annotations

from typing import NamedTuple

from minidetr.backend import Array, namespace
from minidetr.checks import check_floating, check_integral, check_ndim


class EmbeddingCache(NamedTuple):
    onehot: Array  # (N..., V) float one-hot of the looked-up rows


def embedding_forward(indices: Array, table: Array) -> tuple[Array, EmbeddingCache]:
    """out[...] = table[indices[...]] = onehot(indices) @ table.

    indices (N...) integers in [0, V) (an index outside reads a zero row), table
    (V, D). Returns (N..., D).
    """
    check_integral(indices, "indices")
    check_floating(table, "table")
    check_ndim(table, 2, "table", "(V, D)")
    xp = namespace(indices, table)
    v = table.shape[0]
    rows = xp.arange(v, device=table.device)
    onehot = xp.astype(indices[..., None] == rows, table.dtype)  # (N..., V)
    return xp.matmul(onehot, table), EmbeddingCache(onehot)


def embedding_backward(dout: Array, cache: EmbeddingCache) -> tuple[Array]:
    """dtable = sum over lookups of onehot^T dout: rows looked up twice add up."""
    xp = namespace(dout)
    v, d = cache.onehot.shape[-1], dout.shape[-1]
    oh = xp.reshape(cache.onehot, (-1, v))  # (N, V)
    return (xp.matmul(oh.mT, xp.reshape(dout, (-1, d))),)  # (V, D)
