"""Every CUDA kernel the registry lists compiles to PTX for the H100 (sm_90), in float32 and
float64, the float32 kernels do no double-precision arithmetic, and ptxas assembles them with
no register spills. Needs no GPU: the simulator runs the kernels but checks no types, so this
sweep is the compile check."""

import ctypes
import functools
import importlib
import os
import pkgutil
import re
import subprocess
import sys
import types

import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    pytest.skip("compile_ptx does not work in the CUDA simulator; this sweep runs in the normal "
                "suite", allow_module_level=True)
cuda = pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")

import fastconv.kernels  # noqa: E402
from fastconv import dispatch, registry  # noqa: E402, F401  (dispatch registers them all)
from fastconv.bench import kernels  # noqa: E402

CC = (9, 0)  # the H100
F64 = re.compile(r"\b[a-z][a-z0-9.]*\.f64\b")  # a double-precision instruction
KERNELS = registry.cuda_kernels()
# Sums kept in float64 on purpose, whatever the arrays' dtype (see their docstrings).
FLOAT64_ON_PURPOSE = {"bias_cuda.conv2d_backward_bias", "batch_norm_cuda.batch_norm_forward",
                      "batch_norm_cuda.batch_norm_backward", "loss_cuda.softmax_cross_entropy"}


@functools.cache
def _ptx(name, dtype):
    """The kernel's PTX for sm_90 (numba-cuda asks a stand-in device for the cc)."""
    return kernels.ptx(KERNELS[name], dtype, CC)


@pytest.mark.parametrize("name", KERNELS)
def test_compiles_for_sm90(name):
    ptx32, ptx64 = _ptx(name, "float32"), _ptx(name, "float64")
    assert ".target sm_90" in ptx32 and ".target sm_90" in ptx64, name
    assert F64.search(ptx64), name  # the check below can see double precision
    if name not in FLOAT64_ON_PURPOSE:
        # float32 kernels keep their accumulators, constants and math (expf, tanhf) in
        # float32: no double-precision register, instruction or conversion at all
        assert ".f64" not in ptx32, (name, sorted(set(F64.findall(ptx32))))


@pytest.mark.parametrize("name", KERNELS)
def test_float32_kernels_do_not_spill(name):
    """ptxas's verdict on the float32 PTX for sm_90: a spilling kernel is slow on any GPU."""
    if kernels.tool("ptxas") is None or kernels.tool("nvdisasm") is None:
        pytest.skip("ptxas or nvdisasm is missing: pip install nvidia-cuda-nvcc "
                    "nvidia-cuda-nvdisasm (the dev extra has them; CI installs it)")
    usage, _ = kernels.assemble(_ptx(name, "float32"), CC)
    assert usage["spill_bytes"] == 0, (name, usage)


def test_the_float32_gemm_meets_its_static_targets():
    """The tiled GEMM for sm_90 (issue 17's targets, read without a GPU): at most 128
    registers, so two blocks of 256 threads fit an SM (25% occupancy), and FFMA at least 60%
    of its main loop's instructions."""
    if kernels.tool("ptxas") is None or kernels.tool("nvdisasm") is None:
        pytest.skip("ptxas or nvdisasm is missing: pip install nvidia-cuda-nvcc "
                    "nvidia-cuda-nvdisasm (the dev extra has them; CI installs it)")
    row = kernels.report("gemm_cuda.gemm", KERNELS["gemm_cuda.gemm"], "float32", CC)
    assert row.registers <= 128 and row.spill_bytes == 0, row
    assert row.occupancy >= 0.25, row
    assert row.loop_ffma >= 0.6 * row.loop_instructions, row


# A declared kernel parameter: ".param .u64 name" (a scalar of that width) or
# ".param .align A .b8 name[bytes]" (an aggregate)
PARAM = re.compile(r"^\s*\.param\s+(?:\.align\s+\d+\s+)?\.[a-z]+(\d+)\s+\S+?(?:\[(\d+)\])?,?$",
                   re.MULTILINE)


def _parameter_sizes(name, dtype):
    """The bytes of each parameter the kernel's PTX declares, in order."""
    return [int(bits) // 8 * int(count or 1) for bits, count in PARAM.findall(
        _ptx(name, dtype).split(".entry", 1)[1].split(")", 1)[0])]


@pytest.mark.parametrize("name", KERNELS)
def test_parameters_fit_in_4_kb(name):
    """A kernel's parameters must fit in 4 KB, the limit before CUDA 12.1 (and on PTX ISA
    below 8.1): the Adam kernel's tuples of tensors (optim_cuda.MAX_TENSORS) are the ones
    near it. Numba passes a 1-D array as seven 8-byte fields."""
    for dtype in ("float32", "float64"):
        sizes = _parameter_sizes(name, dtype)
        assert sizes and sum(sizes) <= 4096, (name, dtype, sum(sizes))


class _DeviceArray:
    """What the direct launch reads of a CuPy array."""

    def __init__(self, ndim, itemsize):
        self.shape, self.strides = (3,) * ndim, tuple(itemsize * 3 ** k for k in range(ndim))
        self.size, self.itemsize, self.data = 3 ** ndim, itemsize, types.SimpleNamespace(ptr=64)


def _value(ty):
    from numba import types as nb
    from numba.np.numpy_support import as_dtype
    if isinstance(ty, nb.Array):
        return _DeviceArray(ty.ndim, as_dtype(ty.dtype).itemsize)
    if isinstance(ty, nb.BaseTuple):
        return tuple(map(_value, ty))
    return True if ty == nb.boolean else 1


def _size(value):
    """The bytes cuda.core's launch passes for a value: a Python int as an intptr_t."""
    if isinstance(value, bool):
        return 1
    return 8 if isinstance(value, int) else ctypes.sizeof(value)


@pytest.mark.parametrize("name", KERNELS)
def test_the_direct_launch_lays_out_every_parameter(name):
    """cuda_device's direct launch lays each argument out as the compiled kernel's
    parameters by hand (what numba-cuda's dispatcher does per launch): for every kernel and
    dtype, as many values as the PTX declares parameters, each of its width."""
    from fastconv.kernels.cuda_device import _parameters, signature
    for dtype in ("float32", "float64"):
        argtypes = signature(KERNELS[name].params, dtype).args
        values = [v for ty in argtypes for v in _parameters(ty)(_value(ty))]
        assert list(map(_size, values)) == _parameter_sizes(name, dtype), (name, dtype)


def test_the_registry_lists_every_cuda_kernel():
    """A kernel no registration names would escape this sweep and the launch counter."""
    declared = set()
    for module in pkgutil.iter_modules(fastconv.kernels.__path__):
        if module.name.endswith("_cuda"):
            found = importlib.import_module(f"fastconv.kernels.{module.name}")
            declared |= {f"{module.name}.{name}" for name, value in vars(found).items()
                         if hasattr(value, "params") and hasattr(value, "py_func")}
    assert declared == set(KERNELS)


def test_kernels_compile_under_a_numpy_without_row_stack():
    """NumPy 2.5 removed np.row_stack, which numba-cuda 0.30 looks up when its CUDA target
    first loads (seen on the GPU machine: every compile failed); kernels/cuda_device restores
    the alias. A fresh process, since the target loads once."""
    script = ("import numpy as np, scipy.linalg  # SciPy for NumPy 2.4 still lists it\n"
              "del np.row_stack\n"
              "from fastconv import registry, dispatch\n"
              "from fastconv.bench import kernels\n"
              "ptx = kernels.ptx(registry.cuda_kernels()['gemm_cuda.gemm'], 'float32', (9, 0))\n"
              "assert '.target sm_90' in ptx\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
