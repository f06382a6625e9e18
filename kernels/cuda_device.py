"""The one module that imports Numba's CUDA target, with what every CUDA kernel file shares:
the activation epilogue as a device function and the launch geometry.

Kernels are declared lazily (``@cuda.jit`` with no signature): an eager signature compiles at
import, which needs a GPU. Under ``NUMBA_ENABLE_CUDASIM=1`` (set before numba is imported) the
same kernels run in Numba's simulator on NumPy arrays.
"""

import math

from numba import config, cuda

from .activation import RELU, SIGMOID, TANH

__all__ = ["cuda", "activate", "launch", "output_reading", "plane_grid", "flat_grid",
           "MAX_GRID_Z"]

# The hardware limit on gridDim.z; kernels with more planes loop over them with stride gridDim.z.
MAX_GRID_Z = 65535


@cuda.jit(device=True, inline="always")
def activate(v, code, dtype):
    """a(v) for an activation code of kernels/activation.py (0 none, 1 relu, 2 tanh, 3 sigmoid).

    Constants are made in ``dtype`` (the output array's): a bare literal is float64 in Numba
    and would turn a float32 kernel's epilogue into double-precision arithmetic.
    """
    zero, one = dtype.type(0), dtype.type(1)
    if code == RELU:
        return v if v > zero else zero
    if code == TANH:
        return math.tanh(v)
    if code == SIGMOID:
        # the exp of a non-positive argument only, so it cannot overflow
        if v >= zero:
            return one / (one + math.exp(-v))
        e = math.exp(v)
        return e / (one + e)
    return v


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


if config.ENABLE_CUDASIM:
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
