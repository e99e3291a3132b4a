"""The one array-module switch.

Array code in minidetr is written against the Python array API standard: a
function asks :func:`namespace` for the namespace of the arrays it was given
and returns arrays of the same kind. NumPy is the default, CuPy runs the same
code on a GPU, and array-api-strict proves on CPU that nothing outside the
standard slipped in.

Everything a backend must do its own way lives here and nowhere else:

* creating arrays on the right device (``asarray``, ``from_numpy``),
* random numbers (``Rng``), drawn on the device of the arrays they feed,
* the named host transfer (``to_numpy``),
* the one scatter the standard lacks (``index_add``),
* telling kernels which backend they face (``kind``), and whether a compiled
  kernel takes an array (``compiled_kernel``).
"""

from __future__ import annotations

import types
from typing import Any

import array_api_compat
import array_api_compat.numpy  # the namespace of NumPy arrays, returned by namespace()
import numpy as np

Array = Any  # an array of any namespace the array API standard covers

# array-api-compat wraps these NumPy functions only to check a ``device`` argument or to
# route a call through its own helpers; NumPy 2 gives them the standard's signature and
# meaning itself, and the wrapper cost about 1 us a call (hundreds a training step).
_NUMPY_OWN = (
    "matmul",
    "permute_dims",
    "zeros_like",
    "ones_like",
    "astype",
    "zeros",
    "ones",
    "empty",
)


def _reshape(x: Any, /, shape: tuple[int, ...], *, copy: bool | None = None) -> Any:
    """The standard's ``reshape`` on NumPy: the array's own method when no copy is asked for
    (``np.reshape`` goes through two layers of Python dispatch first, 299 calls a step)."""
    if copy is None and type(x) is np.ndarray:
        return x.reshape(shape)
    return np.reshape(x, shape, copy=copy)


def _numpy_namespace() -> types.SimpleNamespace:
    """array-api-compat's NumPy namespace, with NumPy's own functions for ``_NUMPY_OWN``."""
    ns = types.SimpleNamespace(**vars(array_api_compat.numpy))
    if np.lib.NumpyVersion(np.__version__) >= "2.1.0":  # astype, and ``device=`` everywhere
        for name in _NUMPY_OWN:
            setattr(ns, name, getattr(np, name))
        ns.reshape = _reshape
    return ns


NUMPY = _numpy_namespace()


def namespace(*arrays: Array) -> Any:
    """The array API namespace shared by ``arrays`` (NumPy gets its compat wrapper, ``NUMPY``).

    Python scalars and ``None`` are skipped, so optional arguments can be passed
    through. Mixing array libraries raises ``TypeError``.
    """
    for a in arrays:  # the common case, NumPy arrays only, answered without the lookup below
        if type(a) is not np.ndarray and a is not None:
            break
    else:
        return NUMPY
    present = [a for a in arrays if a is not None and not isinstance(a, (int, float, bool))]
    if not present:
        return NUMPY
    xp = array_api_compat.array_namespace(*present)
    return NUMPY if xp is array_api_compat.numpy else xp


def kind(x: Array) -> str:
    """Which backend an array belongs to: ``"numpy"``, ``"cupy"`` or ``"generic"``."""
    if array_api_compat.is_numpy_array(x):
        return "numpy"
    if array_api_compat.is_cupy_array(x):
        return "cupy"
    return "generic"


def compiled_kernel(*arrays: Array) -> str | None:
    """Which compiled kernel family takes all of ``arrays``, or ``None`` for the plain code.

    ``"numba"`` when every array is a NumPy float32/float64 array, ``"cuda"`` when every
    one is a CuPy float32/float64 array: the types the kernels are compiled for. Any
    other namespace or dtype (array-api-strict, float16) runs the array-API reference.
    ``None`` entries are skipped.
    """
    if len(arrays) == 1 and type(arrays[0]) is np.ndarray and arrays[0].dtype.char in "fd":
        return "numba"  # the commonest case: one NumPy float array
    present = [a for a in arrays if a is not None]
    if present and all(type(a) is np.ndarray and a.dtype.char in "fd" for a in present):
        return "numba"  # the common case, answered without the lookups below
    kinds = {kind(a) for a in present}
    if len(kinds) != 1 or not all(str(a.dtype) in ("float32", "float64") for a in present):
        return None
    return {"numpy": "numba", "cupy": "cuda"}.get(kinds.pop())


def device(x: Array) -> Any:
    """The device of ``x`` (portable across namespaces)."""
    if type(x) is np.ndarray:
        return "cpu"  # what array-api-compat answers for NumPy, without its type lookups
    return array_api_compat.device(x)


def asarray(obj: Any, like: Array, dtype: Any = None) -> Array:
    """``obj`` as an array of the same namespace and device as ``like``."""
    return namespace(like).asarray(obj, dtype=dtype, device=device(like))


def to_numpy(x: Array) -> np.ndarray:
    """Copy ``x`` to a host NumPy array. The one named device-to-host boundary."""
    k = kind(x)
    if k == "numpy":
        return np.asarray(x)
    if k == "cupy":
        return x.get()
    return np.asarray(x)  # array-api-strict and friends expose the buffer protocol


def from_numpy(a: np.ndarray, like: Array) -> Array:
    """Put the host array ``a`` into the namespace and onto the device of ``like``."""
    return asarray(a, like=like)


def index_add(target: Array, index: Array, values: Array) -> Array:
    """``out = target.copy(); out[index[i]] += values[i]`` along axis 0, repeats summed.

    The array API has no scatter-add; each backend does it its own way.
    target (N, ...), index (K,) integers, values (K, ...). Returns a new array.
    """
    k = kind(target)
    if k == "numpy":
        out = np.array(target, copy=True)
        np.add.at(out, np.asarray(index), np.asarray(values))
        return out
    if k == "cupy":
        import cupyx  # only present with the gpu extra

        out = target.copy()
        cupyx.scatter_add(out, index, values)
        return out
    # generic path: a one-hot matrix product keeps to the standard
    xp = namespace(target)
    n = target.shape[0]
    onehot = xp.astype(index[None, :] == xp.arange(n, device=device(target))[:, None], values.dtype)
    flat = xp.reshape(values, (values.shape[0], -1))  # (K, F)
    return target + xp.reshape(onehot @ flat, target.shape)


class Rng:
    """A seeded random source that draws on the device of the arrays it feeds.

    The state lives on the host (a NumPy ``Generator``) so that it can be saved
    in a checkpoint and restored exactly. On CuPy each draw seeds a device
    generator from the host stream, so the numbers are made on the GPU.
    """

    def __init__(self, seed: int | np.random.Generator | None = 0) -> None:
        if isinstance(seed, np.random.Generator):
            self.generator = seed
        else:
            self.generator = np.random.default_rng(seed)

    def _device_rng(self) -> Any:
        """A CuPy generator seeded from the host stream (so the host state stays the truth)."""
        import cupy  # only present with the gpu extra

        return cupy.random.default_rng(int(self.generator.integers(2**63)))

    def uniform(self, shape: tuple[int, ...], like: Array, dtype: Any = None) -> Array:
        """Uniform numbers in [0, 1) of ``shape``, in the namespace of ``like``."""
        dtype = like.dtype if dtype is None else dtype
        if kind(like) == "cupy":
            return self._device_rng().random(shape).astype(dtype)
        return asarray(self.generator.random(shape), like=like, dtype=dtype)

    def normal(self, shape: tuple[int, ...], like: Array, dtype: Any = None) -> Array:
        """Standard normal numbers of ``shape``, in the namespace of ``like``."""
        dtype = like.dtype if dtype is None else dtype
        if kind(like) == "cupy":
            return self._device_rng().standard_normal(shape).astype(dtype)
        return asarray(self.generator.standard_normal(shape), like=like, dtype=dtype)

    def get_state(self) -> dict:
        """The generator's state, for a checkpoint."""
        return self.generator.bit_generator.state

    def set_state(self, state: dict) -> None:
        """Restore a state saved by :meth:`get_state`."""
        self.generator.bit_generator.state = state
