"""Dropout on the GPU: the CUDA twin of kernels/dropout.py, the same masks from the same
(seed, index) hash, one thread per element."""

from . import dropout
from .cuda_device import cuda, device_function, flat_grid, kernel, launch

kept = device_function(dropout.kept)


@kernel(1, "int", "int", "scalar", 1, "mask1")
def dropout_forward(x, seed, threshold, scale, y, mask):
    """kernels/dropout.dropout_forward, same layout and arguments. Each thread owns y[i] and
    mask[i] (1-D grid over the flat arrays)."""
    i = cuda.grid(1)
    if i < x.size:
        keep = kept(seed, i, threshold)
        mask[i] = keep
        y[i] = x[i] * (scale if keep else scale - scale)


@kernel(1, "mask1", "scalar", 1)
def dropout_backward(gy, mask, scale, gx):
    """kernels/dropout.dropout_backward, same layout and arguments. Each thread owns gx[i]."""
    i = cuda.grid(1)
    if i < gy.size:
        gx[i] = gy[i] * (scale if mask[i] else scale - scale)


def launch_dropout_forward(x, *args, block=(256, 1), stream=0):
    grid, threads = flat_grid(x.size, block)
    launch(dropout_forward, grid, threads, stream, x, *args)


def launch_dropout_backward(gy, *args, block=(256, 1), stream=0):
    grid, threads = flat_grid(gy.size, block)
    launch(dropout_backward, grid, threads, stream, gy, *args)
