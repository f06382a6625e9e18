"""Every CUDA kernel the registry lists compiles to PTX for the H100 (sm_90), in float32 and
float64, and the float32 kernels do no double-precision arithmetic. Needs no GPU: the
simulator runs the kernels but checks no types, so this sweep is the compile check."""

import importlib
import os
import pkgutil
import re
from types import SimpleNamespace

import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    pytest.skip("compile_ptx does not work in the CUDA simulator; this sweep runs in the normal "
                "suite", allow_module_level=True)
cuda = pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")
cuda_dispatcher = pytest.importorskip("numba.cuda.dispatcher")

import fastconv.kernels  # noqa: E402
from fastconv import dispatch, registry  # noqa: E402, F401  (dispatch registers them all)
from fastconv.kernels.cuda_device import signature  # noqa: E402

CC = (9, 0)  # the H100
F64 = re.compile(r"\b[a-z][a-z0-9.]*\.f64\b")  # a double-precision instruction
KERNELS = registry.cuda_kernels()
# Sums kept in float64 on purpose, whatever the arrays' dtype (see their docstrings).
FLOAT64_ON_PURPOSE = {"bias_cuda.conv2d_backward_bias", "batch_norm_cuda.batch_norm_forward",
                      "batch_norm_cuda.batch_norm_backward"}


@pytest.fixture(autouse=True)
def h100_device(monkeypatch):
    """numba-cuda 0.30.4 compiles a kernel's device functions for the current device's
    compute capability (CUDADispatcher.compile_device), which needs a GPU; here that device is
    a stand-in with the H100's, matching the cc every kernel is compiled for."""
    monkeypatch.setattr(cuda_dispatcher, "get_current_device",
                        lambda: SimpleNamespace(compute_capability=CC))


@pytest.mark.parametrize("name", KERNELS)
def test_compiles_for_sm90(name):
    kernel = KERNELS[name]
    ptx32, _ = cuda.compile_ptx(kernel.py_func, signature(kernel.params, "float32"), cc=CC)
    ptx64, _ = cuda.compile_ptx(kernel.py_func, signature(kernel.params, "float64"), cc=CC)
    assert ".target sm_90" in ptx32 and ".target sm_90" in ptx64, name
    assert F64.search(ptx64), name  # the check below can see double precision
    if name not in FLOAT64_ON_PURPOSE:
        # float32 kernels keep their accumulators, constants and math (expf, tanhf) in
        # float32: no double-precision register, instruction or conversion at all
        assert ".f64" not in ptx32, (name, sorted(set(F64.findall(ptx32))))


def test_the_registry_lists_every_cuda_kernel():
    """A kernel no registration names would escape this sweep and the launch counter."""
    declared = set()
    for module in pkgutil.iter_modules(fastconv.kernels.__path__):
        if module.name.endswith("_cuda"):
            found = importlib.import_module(f"fastconv.kernels.{module.name}")
            declared |= {f"{module.name}.{name}" for name, value in vars(found).items()
                         if hasattr(value, "params") and hasattr(value, "py_func")}
    assert declared == set(KERNELS)
