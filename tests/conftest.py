"""Shared test set-up: hypothesis profiles and the array-namespace fixture.

Profiles (choose with ``--hypothesis-profile NAME`` or ``HYPOTHESIS_PROFILE``):
``ci`` deterministic and modest (the default), ``dev`` more examples with a
random seed, ``thorough`` for long runs before a release.
"""

from __future__ import annotations

import os
import shutil

# numba.cuda kernels run in Numba's CUDA simulator where no GPU is present. This must be
# set before anything imports numba.cuda, hence here, at the top of the test session.
if "NUMBA_ENABLE_CUDASIM" not in os.environ and shutil.which("nvidia-smi") is None:
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=25,
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.register_profile(
    "thorough", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _cupy_or_skip():
    try:
        import cupy

        cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # no CuPy, or CuPy without a usable GPU
        pytest.skip(f"cupy unavailable: {type(err).__name__}: {err}")
    return cupy


@pytest.fixture(params=["numpy", "array_api_strict", "cupy"])
def xp(request):
    """The array namespace a test builds its inputs with."""
    if request.param == "numpy":
        return np
    if request.param == "array_api_strict":
        return pytest.importorskip("array_api_strict")
    return _cupy_or_skip()


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
