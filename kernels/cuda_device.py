"""The one module that imports Numba's CUDA target, with what every CUDA kernel file shares:
the kernel decorator, scalar code compiled for the GPU, the launch and its grids.

Kernels are declared lazily (``@kernel`` compiles on first launch): an eager signature compiles
at import, which needs a GPU. Under ``NUMBA_ENABLE_CUDASIM=1`` (set before numba is imported)
the same kernels run in Numba's simulator on NumPy arrays.
"""

from numba import cuda, types
from numba.cuda.core import caching

from . import activation, cuda_simulated, install_cache_locator

install_cache_locator(caching)  # before the first @kernel: the GPU's compiled kernels too

__all__ = ["cuda", "kernel", "signature", "device_function", "activate", "launch",
           "output_reading", "plane_grid", "flat_grid", "MAX_GRID_Z"]

# The hardware limit on gridDim.z; kernels with more planes loop over them with stride gridDim.z.
MAX_GRID_Z = 65535


def kernel(*params):
    """``@cuda.jit(cache=True)``, keeping the kernel's parameter kinds for the compile sweep:
    an int n is an n-D array of the kernel's dtype (any layout: NHWC arrives as transposed
    views), "index4" a 4-D int64 array, "mask1" a 1-D boolean array, "int" an int64, "bool" a
    boolean, "scalar" a number of the kernel's dtype."""
    def declare(fn):
        compiled = cuda.jit(cache=True)(fn)
        compiled.params = params
        return compiled
    return declare


def signature(params, dtype):
    """The Numba signature of a kernel declared with ``params``, for arrays of ``dtype``."""
    number = types.float32 if dtype == "float32" else types.float64
    kinds = {"int": types.int64, "bool": types.boolean, "scalar": number,
             "index4": types.Array(types.int64, 4, "A"),
             "mask1": types.Array(types.boolean, 1, "A")}
    return types.void(*(types.Array(number, p, "A") if isinstance(p, int) else kinds[p]
                        for p in params))


def device_function(fn):
    """The GPU build of scalar code written once for both targets: ``fn`` is an
    ``@njit(inline="always")`` function (or a plain one) calling no other fastconv function."""
    return cuda.jit(device=True, inline="always")(getattr(fn, "py_func", fn))


activate = device_function(activation.activate)


@cuda.jit(device=True, inline="always")
def output_reading(i, before, tap, stride, out_size):
    """The output o whose window reads input cell ``i`` at offset ``tap`` (tap index times
    dilation) along one axis, i.e. ``o * stride - before + tap == i`` with 0 <= o < out_size;
    -1 when no output does. The gather of the backward kernels (no atomics) asks this."""
    t = i + before - tap
    if t < 0 or t % stride != 0 or t // stride >= out_size:
        return -1
    return t // stride


def plane_grid(rows, cols, planes, block):
    """Grid for a block (bx, by) of threads over (column, row) tiles of ``planes`` planes."""
    bx, by = block
    return (-(-cols // bx), -(-rows // by), min(planes, MAX_GRID_Z))


def flat_grid(total, block):
    """1-D grid and block (bx * by threads) covering ``total`` elements."""
    threads = block[0] * block[1]
    return -(-total // threads), threads


if cuda_simulated():
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    def _argument(a):
        # The simulator copies a NumPy argument to a fake device and back, which needs a
        # contiguous buffer; wrapped, the kernel reads and writes any view in place, as it
        # does a CuPy view on a GPU.
        return FakeCUDAArray(a) if hasattr(a, "ndim") and a.ndim > 0 else a
else:
    def _argument(a):
        return a


def launch(kernel, grid, block, stream, *args):
    """kernel[grid, block, stream](*args): every launch of fastconv goes through here."""
    kernel[grid, block, stream](*(_argument(a) for a in args))
