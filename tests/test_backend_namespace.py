"""NumPy's namespace: NumPy's own functions where array-api-compat only wrapped them."""

from __future__ import annotations

import array_api_compat
import array_api_compat.numpy as compat
import numpy as np
import pytest

from minidetr import backend
from minidetr.backend import NUMPY, compiled_kernel, namespace


def test_numpy_arrays_get_the_one_namespace():
    a = np.ones((2, 3), dtype=np.float32)
    assert namespace(a) is NUMPY and namespace(a, None, a) is NUMPY
    assert namespace(a, 1.5) is NUMPY  # through array-api-compat's lookup
    public = {n for n in vars(compat) if not n.startswith("_")}
    assert public <= set(vars(NUMPY))  # nothing of the standard went missing


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.bool_])
def test_numpy_own_functions_answer_as_the_compat_wrappers(dtype):
    r = np.random.default_rng(0)
    x = (r.standard_normal((2, 3, 4)) * 3).astype(dtype)
    y = (r.standard_normal((4, 5)) * 3).astype(dtype)
    calls = [
        ("matmul", (x, y), {}),
        ("matmul", (x.mT, x), {}),
        ("permute_dims", (x, (2, 0, 1)), {}),
        ("zeros_like", (x,), {}),
        ("zeros_like", (x,), {"dtype": np.float64, "device": "cpu"}),
        ("ones_like", (x.mT,), {"dtype": dtype}),
        ("astype", (x, np.float32), {}),
        ("astype", (x, dtype), {"copy": False}),
        ("astype", (x, np.int32), {"copy": True, "device": "cpu"}),
        ("zeros", ((3, 2),), {"dtype": dtype}),
        ("ones", ((4,),), {"dtype": dtype, "device": "cpu"}),
        ("ones", (5,), {}),
        ("reshape", (x, (6, 4)), {}),
        ("reshape", (x.mT, (-1,)), {}),  # not viewable flat: a copy, in both
        ("reshape", (x, (4, 6)), {"copy": True}),
        ("reshape", (x, (24,)), {"copy": False}),
    ]
    for name, args, kwargs in calls:
        if name == "matmul" and dtype == np.bool_:
            continue
        got, want = getattr(NUMPY, name)(*args, **kwargs), getattr(compat, name)(*args, **kwargs)
        assert type(got) is type(want) and got.dtype == want.dtype, name
        assert got.shape == want.shape and got.strides == want.strides, name
        np.testing.assert_array_equal(got, want, err_msg=name)
        if name == "astype" and not kwargs.get("copy", True):
            assert got is x  # no copy asked and none needed, in both
    with pytest.raises(ValueError):
        NUMPY.zeros_like(x, device="gpu")
    for name in ("zeros", "ones", "empty"):
        with pytest.raises(ValueError):
            getattr(NUMPY, name)(3, device="gpu")
    assert NUMPY.empty((2, 3), dtype=dtype).shape == (2, 3)
    with pytest.raises(ValueError):  # a view is impossible and no copy is allowed, in both
        NUMPY.reshape(x.mT, (-1,), copy=False)
    assert backend.device(x) == array_api_compat.device(x) == "cpu"


def test_compiled_kernel_of_one_array():
    assert compiled_kernel(np.ones(3, np.float32)) == "numba"
    assert compiled_kernel(np.ones(3, np.int32)) is None
    assert compiled_kernel(np.ones(3), None) == "numba"
    assert backend.compiled_kernel(np.ones(3, np.float16)) is None
