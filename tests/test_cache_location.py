"""Compiled kernels are cached where a user's caches go ($FASTCONV_CACHE_DIR/numba, default
~/.cache/fastconv/numba), or where NUMBA_CACHE_DIR points when the user set it: never next to
the kernels' files, which in an installed package is site-packages (it may be read-only, and
`pip uninstall` leaves the files behind, which once turned the leftover folder into a namespace
package shadowing the next install)."""

import os
import subprocess
import sys

import numba
import pytest

from fastconv import kernels, registry, runtime
from fastconv.kernels import bias, conv_direct, im2col, layout, optim, pool


def _cache_path(kernel):
    return kernel._cache._impl.locator.get_cache_path()


def test_cpu_and_cuda_kernels_cache_under_the_users_cache_dir():
    if numba.config.CACHE_DIR:
        pytest.skip("NUMBA_CACHE_DIR is set: Numba's own locator rightly takes over")
    root = str(runtime.cache_dir() / "numba")
    kernels = [k for module in (bias, conv_direct, im2col, optim, pool)
               for k in vars(module).values() if hasattr(k, "_cache") and k._can_compile]
    kernels += list(registry.cuda_kernels().values())  # numba-cuda is a dev dependency
    assert len(kernels) > 20
    for kernel in kernels:
        assert _cache_path(kernel).startswith(root), (kernel, _cache_path(kernel))


_COMPILE = ("import numpy as np, fastconv; "
            "fastconv.ops.max_pool2d(np.ones((1, 1, 4, 4), np.float32), 2)")


def _index_files(folder):
    return [f for _, _, files in os.walk(folder) for f in files if f.endswith(".nbi")]


@pytest.mark.slow
def test_a_fresh_process_writes_its_cache_there_or_where_numba_cache_dir_says(tmp_path):
    ours, numbas = tmp_path / "fastconv", tmp_path / "numba"
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    subprocess.run([sys.executable, "-c", _COMPILE], env={**env, "FASTCONV_CACHE_DIR": str(ours)},
                   check=True, timeout=300)
    assert any("max_pool2d_forward" in f for f in _index_files(ours / "numba"))
    subprocess.run([sys.executable, "-c", _COMPILE],
                   env={**env, "FASTCONV_CACHE_DIR": str(ours / "second"),
                        "NUMBA_CACHE_DIR": str(numbas)}, check=True, timeout=300)
    assert any("max_pool2d_forward" in f for f in _index_files(numbas))
    assert not (ours / "second").exists()


def test_a_kernels_stamp_covers_the_files_it_imports_from_the_package(tmp_path):
    """A kernel inlines intrinsics and helpers of other kernel files: editing any of those
    invalidates its cache entry (Numba's own stamp is the kernel's file alone), editing a file
    it does not import does not."""
    files = {"__init__.py": "LANES = 8\n", "a.py": "from . import LANES, b\nfrom .c import (\n"
             "    f,\n)\nfrom .. import elsewhere\n", "b.py": "B = 1\n",
             "c.py": "from .d import g\n\ndef f(): return g()\n", "d.py": "def g(): return 1\n",
             "e.py": "E = 1\n"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    stamps = [kernels.source_stamp(tmp_path / "a.py")]
    for name in ("__init__.py", "b.py", "c.py", "d.py", "e.py"):
        with open(tmp_path / name, "a") as f:
            f.write("# edited\n")
        stamps.append(kernels.source_stamp(tmp_path / "a.py"))
    assert len(set(stamps[:5])) == 5 and stamps[5] == stamps[4]


def test_the_kernels_caches_are_checked_against_that_stamp():
    if numba.config.CACHE_DIR:
        pytest.skip("NUMBA_CACHE_DIR is set: Numba's own locator (its own stamp) takes over")
    locator = layout.embed._cache._impl.locator
    assert locator.get_source_stamp() == kernels.source_stamp(layout.__file__)
    assert locator.get_source_stamp() != kernels.source_stamp(layout.__file__.replace(
        "layout.py", "bias.py"))
