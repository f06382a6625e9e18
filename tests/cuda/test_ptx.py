"""Every CUDA kernel of the registry compiles to PTX for the H100 (sm_90), in float32 and
float64, and the float32 kernels do no double-precision arithmetic. Needs no GPU: the
simulator runs the kernels but checks no types, so this sweep is the compile check."""

import os
import re
from types import SimpleNamespace

import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    pytest.skip("compile_ptx does not work in the CUDA simulator; this sweep runs in the normal "
                "suite", allow_module_level=True)
cuda = pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")
cuda_dispatcher = pytest.importorskip("numba.cuda.dispatcher")

from fastconv.kernels.cuda_registry import KERNELS  # noqa: E402

CC = (9, 0)  # the H100
F64 = re.compile(r"\b[a-z][a-z0-9.]*\.f64\b")  # a double-precision instruction


@pytest.fixture(autouse=True)
def h100_device(monkeypatch):
    """numba-cuda 0.30.4 compiles a kernel's device functions for the current device's
    compute capability (CUDADispatcher.compile_device), which needs a GPU; here that device is
    a stand-in with the H100's, matching the cc every kernel is compiled for."""
    monkeypatch.setattr(cuda_dispatcher, "get_current_device",
                        lambda: SimpleNamespace(compute_capability=CC))


@pytest.mark.parametrize("name,py_func,sig32,sig64", KERNELS, ids=[k[0] for k in KERNELS])
def test_compiles_for_sm90(name, py_func, sig32, sig64):
    ptx32, _ = cuda.compile_ptx(py_func, sig32, cc=CC)
    ptx64, _ = cuda.compile_ptx(py_func, sig64, cc=CC)
    assert ".target sm_90" in ptx32 and ".target sm_90" in ptx64, name
    # float32 kernels keep their accumulators, constants and math (expf, tanhf) in float32:
    # no double-precision register, instruction or conversion at all
    assert ".f64" not in ptx32, (name, sorted(set(F64.findall(ptx32))))
    assert F64.search(ptx64), name  # the check above can see double precision
