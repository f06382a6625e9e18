"""The bias gradient of a convolution on the GPU: the CUDA twin of kernels/bias.py."""

from numba import float64

from . import activation
from .activation import NONE
from .cuda_device import block_sum, block_threads, cuda, device_function, kernel, launch

MAX_THREADS = 256  # a block's threads, at most: the shared array of block_sum
slope = device_function(activation.slope)


@kernel(3, 3, "int", 3, 1)
def conv2d_backward_bias(gy, y, act, gz, gb):
    """kernels/bias.conv2d_backward_bias, same layout and arguments. Block k owns channel k:
    its threads stride over the channel's N*P cells (consecutive threads on consecutive cells,
    so reads coalesce in NCHW), each writing its cells of gz[:, k] and summing them in float64;
    the sums are reduced through shared memory and thread 0 writes gb[k]."""
    shared = cuda.shared.array(MAX_THREADS, float64)
    n_, _, p_ = gy.shape
    k = cuda.blockIdx.x
    acc = 0.0
    for n in range(n_):
        for p in range(cuda.threadIdx.x, p_, cuda.blockDim.x):
            g = gy[n, k, p]
            if act != NONE:
                g *= slope(y[n, k, p], act, gy.dtype)
                gz[n, k, p] = g
            acc += g
    total = block_sum(acc, shared)
    if cuda.threadIdx.x == 0:
        gb[k] = total


def launch_conv2d_backward_bias(gy, y, act, gz, gb, threads=None, stream=0):
    launch(conv2d_backward_bias, gb.shape[0], threads or block_threads(gy.shape[2], MAX_THREADS),
           stream, gy, y, act, gz, gb)
