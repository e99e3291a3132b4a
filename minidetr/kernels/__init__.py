"""Compiled kernels: Numba CPU (``@njit``) and ``numba.cuda`` versions of hot loops.

Each kernel file names at its top the plain array function it speeds up, and a
test holds it to that function. The kernels themselves take what their loops
want (integer tables instead of tuples, contiguous arrays, preallocated outputs);
the plain function's signature is kept by the dispatcher in front of them
(``ops.conv2d_forward``, ``boxes.generalized_box_iou_forward``,
``deformable.ms_deform_attn_forward`` and their backwards), which picks a kernel
with ``backend.compiled_kernel``.
"""
