"""Multi-scale deformable attention: one signature, three implementations.

``impl="auto"`` picks by the arrays' backend:

* NumPy -> the Numba CPU kernel (:mod:`minidetr.kernels.ms_deform_cpu`);
* CuPy -> the numba.cuda kernel (:mod:`minidetr.kernels.ms_deform_cuda`);
* anything else (array-api-strict, ...) -> the readable reference
  (:mod:`minidetr.deformable.reference`), which is also the lesson and the oracle.

``impl`` may also name one: ``"reference"``, ``"numba"`` (NumPy arrays only) or
``"cuda"`` (CuPy arrays, or NumPy arrays that Numba copies to the device and back;
without a GPU that runs in Numba's CUDA simulator). The cache remembers which
implementation ran, so :func:`ms_deform_attn_backward` runs the matching backward.
The kernels are compiled for float32 and float64; other dtypes (float16) run the reference.
Layout and dimension letters: :mod:`minidetr.deformable.layout`.
"""

from __future__ import annotations

from collections.abc import Sequence

from minidetr.backend import Array, asarray, compiled_kernel, device, kind, namespace
from minidetr.deformable.layout import (
    MSDeformAttnCache,
    SpatialShapes,
    check_ms_deform_attn_inputs,
    level_start_index,
)
from minidetr.deformable.reference import (
    ms_deform_attn_backward_reference,
    ms_deform_attn_forward_reference,
)
from minidetr.kernels.ms_deform_cpu import (
    ms_deform_attn_backward_numba,
    ms_deform_attn_forward_numba,
)

IMPLEMENTATIONS = ("auto", "reference", "numba", "cuda")


def _choose(impl: str, value: Array) -> str:
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"impl must be one of {IMPLEMENTATIONS}, got {impl!r}")
    k = kind(value)  # "generic" for anything that is not a NumPy or CuPy array
    if impl == "auto":
        impl = {"numpy": "numba", "cupy": "cuda"}.get(k, "reference")
    elif impl == "numba" and k != "numpy":
        raise TypeError(f"impl='numba' runs on NumPy arrays, got a {k} value")
    elif impl == "cuda" and k not in ("numpy", "cupy"):
        raise TypeError(f"impl='cuda' runs on CuPy (or NumPy) arrays, got a {k} value")
    if impl != "reference" and compiled_kernel(value) is None:
        # the kernels are compiled for these two; float16 (or a bad dtype) goes to the
        # reference, whose checks name the problem
        return "reference"
    return impl


def _tables(shapes: SpatialShapes, like: Array) -> tuple[Array, Array]:
    """spatial_shapes (L, 2) and level_start (L,) as int64 arrays next to ``like``."""
    xp = namespace(like)
    return (
        asarray(shapes, like=like, dtype=xp.int64),
        asarray(level_start_index(shapes), like=like, dtype=xp.int64),
    )


def ms_deform_attn_forward(
    value: Array,
    spatial_shapes: Sequence[Sequence[int]] | Array,
    sampling_locations: Array,
    attention_weights: Array,
    *,
    impl: str = "auto",
    assume_finite: bool = False,
) -> tuple[Array, MSDeformAttnCache]:
    """out[b, q, m] = sum_{l, p} A[b, q, m, l, p] * bilinear(V_l[b, :, m], loc[b, q, m, l, p]).

    value (B, S, M, Dh) with S = sum_l H_l W_l, spatial_shapes (L, 2) as (H_l, W_l),
    sampling_locations (B, Q, M, L, P, 2) normalised (x, y), attention_weights
    (B, Q, M, L, P). Returns out (B, Q, M * Dh). Bilinear sampling as
    ``grid_sample(align_corners=False, padding_mode="zeros")``. Zhu et al.,
    "Deformable DETR" (ICLR 2021), eq. 3. A non-finite location raises
    ``ValueError`` (the kernels would skip it silently) unless ``assume_finite``
    says the caller has checked them: that check is the op's one read of the device.
    """
    impl = _choose(impl, value)
    if impl == "reference":
        return ms_deform_attn_forward_reference(
            value, spatial_shapes, sampling_locations, attention_weights,
            assume_finite=assume_finite,
        )  # fmt: skip
    shapes = check_ms_deform_attn_inputs(
        value, spatial_shapes, sampling_locations, attention_weights, assume_finite=assume_finite
    )
    shape_table, start_table = _tables(shapes, value)
    if impl == "numba":
        out = ms_deform_attn_forward_numba(
            value, shape_table, start_table, sampling_locations, attention_weights
        )
    else:
        # imported on first use: numba.cuda reads NUMBA_ENABLE_CUDASIM when first imported
        from minidetr.kernels.ms_deform_cuda import ms_deform_attn_forward_cuda

        xp = namespace(value)
        b, q = sampling_locations.shape[:2]
        out = xp.zeros(
            (b, q, value.shape[2] * value.shape[3]), dtype=value.dtype, device=device(value)
        )
        out = ms_deform_attn_forward_cuda(
            value, shape_table, start_table, sampling_locations, attention_weights, out
        )
    return out, MSDeformAttnCache(value, shapes, sampling_locations, attention_weights, impl)


def ms_deform_attn_backward(dout: Array, cache: MSDeformAttnCache) -> tuple[Array, Array, Array]:
    """Gradients (dvalue, dsampling_locations, dattention_weights) for dout (B, Q, M * Dh).

    Runs the backward of the implementation that ran the forward.
    """
    value, loc, attn = cache.value, cache.sampling_locations, cache.attention_weights
    b, q = loc.shape[:2]
    want = (b, q, value.shape[2] * value.shape[3])
    if tuple(dout.shape) != want:
        raise ValueError(f"dout must have shape (B, Q, M * Dh) = {want}, got {tuple(dout.shape)}")
    namespace(dout, value)  # TypeError when libraries mix
    if cache.impl == "reference":
        return ms_deform_attn_backward_reference(dout, cache)
    shape_table, start_table = _tables(cache.spatial_shapes, value)
    if cache.impl == "numba":
        return ms_deform_attn_backward_numba(dout, value, shape_table, start_table, loc, attn)
    # imported on first use, as in the forward
    from minidetr.kernels.ms_deform_cuda import ms_deform_attn_backward_cuda

    xp = namespace(value)
    dvalue = xp.zeros(value.shape, dtype=value.dtype, device=device(value))
    dloc = xp.zeros(loc.shape, dtype=loc.dtype, device=device(loc))
    dattn = xp.zeros(attn.shape, dtype=attn.dtype, device=device(attn))
    dout = xp.astype(dout, value.dtype)
    return ms_deform_attn_backward_cuda(
        dout, value, shape_table, start_table, loc, attn, dvalue, dloc, dattn
    )
