"""The set loss's classification term in softmax mode: DETR's weighted cross-entropy.

loss = sum_i w[c_i] (-log softmax(x_i)[c_i]) / sum_i w[c_i], with w = (1, ..., 1,
eos_coef): PyTorch's weighted mean, as DETR's ``loss_labels``. The formula and its
backward are ``minidetr.ops.cross_entropy_forward`` / ``cross_entropy_backward``,
the reference that runs on every array namespace; on NumPy float arrays this op
pair runs the fused loops of ``minidetr.kernels.softmax_ce_cpu`` instead (same
results to rounding, same errors).

Dimension letters: R scored queries, K logits (C classes + no-object).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minidetr.backend import Array, compiled_kernel
from minidetr.checks import check_dim, check_floating, check_integral, check_ndim
from minidetr.kernels import softmax_ce_cpu
from minidetr.ops.softmax import CrossEntropyCache, cross_entropy_backward, cross_entropy_forward


class FusedCrossEntropyCache(NamedTuple):
    p: np.ndarray  # (R, K) softmax
    classes: np.ndarray  # (R,) int64 class of each row
    w: np.ndarray  # (R,) weight of each row's class
    total_weight: float  # sum of w


def _fused(logits: Array, classes: Array, weight: Array) -> bool:
    """The kernel takes these: NumPy float logits and weights of one dtype, integer classes."""
    return (
        compiled_kernel(logits, weight) == "numba"
        and logits.dtype == weight.dtype
        and type(classes) is np.ndarray
        and classes.dtype.kind in "iu"
    )


def weighted_cross_entropy_forward(
    logits: Array, classes: Array, weight: Array
) -> tuple[Array, CrossEntropyCache | FusedCrossEntropyCache]:
    """loss = sum_i w[c_i] (-log softmax(x_i)[c_i]) / sum_i w[c_i], a 0-d array.

    logits (R, K) floats, classes (R,) integers in [0, K), weight (K,). Carion et al.
    (2020), ``models/detr.py``; the errors of ``ops.cross_entropy_forward``.
    """
    if not _fused(logits, classes, weight):
        return cross_entropy_forward(logits, classes, weight)
    check_floating(logits, "logits")
    check_ndim(logits, 2, "logits", "(N, C)")
    check_integral(classes, "targets")
    check_ndim(classes, 1, "targets", "(N,)")
    check_dim(classes, 0, logits.shape[0], "targets", "rows of logits")
    check_dim(weight, 0, logits.shape[1], "weight", "classes of logits")
    x = np.ascontiguousarray(logits)
    row_max = np.max(x, axis=1) if x.size else np.zeros(x.shape[0], x.dtype)  # (R,)
    if not np.isfinite(row_max).all():  # a NaN or +inf logit (-inf ones: the kernel)
        return cross_entropy_forward(logits, classes, weight)  # raises, naming the entry
    p = np.exp(x - row_max[:, None])  # (R, K), NumPy's SIMD exp; the kernel divides in place
    w = np.empty(x.shape[0], dtype=x.dtype)  # (R,)
    classes = classes.astype(np.int64, copy=False)
    status, loss, total_weight = softmax_ce_cpu.weighted_cross_entropy_forward(
        x, p, row_max, classes, weight, w
    )
    if status != softmax_ce_cpu.OK or not total_weight > 0:
        return cross_entropy_forward(logits, classes, weight)  # raises, naming the problem
    out = np.asarray(loss / total_weight, dtype=x.dtype)
    return out, FusedCrossEntropyCache(p, classes, w, total_weight)


def weighted_cross_entropy_backward(
    dloss: Array, cache: CrossEntropyCache | FusedCrossEntropyCache
) -> tuple[Array]:
    """dlogits_i = dloss * w_i / sum(w) * (softmax(x_i) - onehot(c_i)), (R, K)."""
    if not isinstance(cache, FusedCrossEntropyCache):
        return cross_entropy_backward(dloss, cache)
    dx = softmax_ce_cpu.weighted_cross_entropy_backward(
        float(dloss), cache.p, cache.classes, cache.w, cache.total_weight
    )
    return (dx,)
