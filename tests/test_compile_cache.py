"""Numba's on-disk cache follows edits to any module of the package, not only the caller's."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from minidetr import compile_cache
from minidetr.kernels import relu_cpu

CALLER = """
from numba import njit
from pkg.callee import value

@njit(cache=True)
def read():
    return value()
"""
CALLEE = """
from numba import njit

@njit(cache=True)
def value():
    return {}
"""
RUN = """
import sys
from pathlib import Path
sys.path.insert(0, {where!r})
from minidetr import compile_cache
if {register}:
    assert compile_cache.register(Path({where!r}) / "pkg")
from pkg.caller import read
print(read())
"""


def _read_after_editing_the_callee(where: Path, register: bool, env: dict) -> list[str]:
    """What the caller returns before and after its callee's module changes from 1 to 2."""
    (where / "pkg").mkdir(parents=True)
    (where / "pkg" / "__init__.py").write_text("")
    (where / "pkg" / "caller.py").write_text(CALLER)
    script = RUN.format(where=str(where), register=register)
    seen = []
    for value in (1, 2):
        (where / "pkg" / "callee.py").write_text(textwrap.dedent(CALLEE.format(value)))
        out = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        )
        seen.append(out.stdout.strip())
    return seen


@pytest.mark.parametrize("cache_dir", [False, True], ids=["__pycache__", "NUMBA_CACHE_DIR"])
def test_an_edited_callee_recompiles_its_callers(tmp_path, cache_dir):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    if cache_dir:
        env["NUMBA_CACHE_DIR"] = str(tmp_path / "numba-cache")
    stale = _read_after_editing_the_callee(tmp_path / "numba-own", False, env)
    assert stale == ["1", "1"], (  # the hazard, with Numba's own locators
        f"Numba now follows callees ({stale}): compile_cache may no longer be needed"
    )
    assert _read_after_editing_the_callee(tmp_path / "stamped", True, env) == ["1", "2"]


def test_package_functions_take_the_stamped_locators():
    assert compile_cache.register()  # registered on import; again is a no-op
    locator = relu_cpu.relu_forward._cache._impl.locator
    assert type(locator).__name__.startswith("Package")
    stamp = locator.get_source_stamp()
    assert stamp[1] == compile_cache.source_digest()
    import numpy  # a function outside the package keeps Numba's own locators

    assert not compile_cache._inside(numpy.__file__, compile_cache.PACKAGE_ROOT)


def test_source_digest_changes_with_any_file_and_only_then(tmp_path):
    def digest() -> bytes:
        compile_cache.source_digest.cache_clear()
        return compile_cache.source_digest(tmp_path)

    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.py").write_text("y = 2\n")
    first = digest()
    assert digest() == first
    (tmp_path / "notes.txt").write_text("not source")
    assert digest() == first
    (tmp_path / "sub" / "b.py").write_text("y = 3\n")  # same size, other content
    second = digest()
    assert second != first
    (tmp_path / "c.py").write_text("")
    assert digest() not in (first, second)
    (tmp_path / "c.py").rename(tmp_path / "sub" / "c.py")  # moved: the path counts
    assert len({first, second, digest()}) == 3
    compile_cache.source_digest.cache_clear()
