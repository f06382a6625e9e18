"""Batch normalisation on the GPU: the CUDA twin of kernels/batch_norm.py, with its signatures,
its float64 statistics and its arithmetic.

A block owns a channel (grid x = C): its threads stride over the channel's N*P cells (a
row of P at a time, consecutive threads on consecutive cells, so reads coalesce in NCHW),
each summing in float64, and reduce through shared memory; thread 0 writes the channel's
statistics. ``threads`` (a power of two up to MAX_THREADS) is the block size; by default
cuda_device.block_threads's.
"""

import math

from numba import float64

from . import activation, batch_norm
from .cuda_device import activate, block_sum, block_threads, cuda, device_function, kernel, launch

MAX_THREADS = 256
running_update, moments, slope = (device_function(f) for f in (
    batch_norm.running_update, batch_norm.moments, activation.slope))


@cuda.jit(device=True, inline="always")
def _channel_sums(x, c, shift, shared):
    """kernels/batch_norm.channel_sums over the block: this thread's cells, then reduced."""
    total, squares = 0.0, 0.0
    for n in range(x.shape[0]):
        for p in range(cuda.threadIdx.x, x.shape[2], cuda.blockDim.x):
            d = x[n, c, p] - shift
            total += d
            squares += d * d
    return block_sum(total, shared), block_sum(squares, shared)


@kernel(3, 1, 1, 1, 1, "bool", "bool", "scalar", "scalar", "int", 3, "bool", 3, 1, 1)
def batch_norm_forward(x, weight, bias, running_mean, running_var, training, track, momentum,
                       eps, act, residual, add, y, mean, invstd):
    """kernels/batch_norm.batch_norm_forward, same layout and arguments. Block c owns channel
    c: thread 0 writes mean[c], invstd[c] and the running buffers' [c], every thread a stride of
    y[:, c] once they are written."""
    shared = cuda.shared.array(MAX_THREADS, float64)
    n_, _, p_ = x.shape
    count = n_ * p_
    c = cuda.blockIdx.x
    t = cuda.threadIdx.x
    if training:
        shift = float64(x[0, c, 0])
        total, squares = _channel_sums(x, c, shift, shared)
        if t == 0:
            mu, var = moments(total, squares, shift, count)
            if track:
                running_update(running_mean, c, momentum, mu)
                running_update(running_var, c, momentum, var * count / max(count - 1, 1))
            mean[c], invstd[c] = mu, 1 / math.sqrt(var + eps)
    elif t == 0:
        mean[c], invstd[c] = running_mean[c], 1 / math.sqrt(running_var[c] + eps)
    cuda.syncthreads()
    m, scale, b = mean[c], invstd[c] * weight[c], bias[c]
    for n in range(n_):
        for p in range(t, p_, cuda.blockDim.x):
            v = (x[n, c, p] - m) * scale + b
            if add:
                v += residual[n, c, p]
            y[n, c, p] = activate(v, act, y.dtype)


@kernel(3, 3, 3, 1, 1, 1, "bool", "int", 3, 1, 1, 3, "bool")
def batch_norm_backward(gy, x, y, weight, mean, invstd, training, act, gx, gweight, gbias,
                        gresidual, keep):
    """kernels/batch_norm.batch_norm_backward, same layout and arguments. Block c owns channel
    c: thread 0 writes gweight[c] and gbias[c], every thread a stride of gx[:, c] and of
    gresidual[:, c]."""
    shared = cuda.shared.array(MAX_THREADS, float64)
    n_, _, p_ = x.shape
    count = n_ * p_
    c = cuda.blockIdx.x
    t = cuda.threadIdx.x
    m = mean[c]
    sum_gy, dot = 0.0, 0.0
    for n in range(n_):
        for p in range(t, p_, cuda.blockDim.x):
            g = gy[n, c, p] * slope(y[n, c, p], act, gy.dtype)
            if keep:
                gresidual[n, c, p] = g
            sum_gy += g
            dot += g * (x[n, c, p] - m)
    sum_gy, dot = block_sum(sum_gy, shared), block_sum(dot, shared)
    if t == 0:
        gbias[c], gweight[c] = sum_gy, dot * invstd[c]
    scale = weight[c] * invstd[c]
    if training:
        to = gx.dtype.type
        offset, tilt = to(sum_gy / count), to(dot * invstd[c] * invstd[c] / count)
        for n in range(n_):
            for p in range(t, p_, cuda.blockDim.x):
                g = gy[n, c, p] * slope(y[n, c, p], act, gy.dtype)
                gx[n, c, p] = (g - offset - (x[n, c, p] - m) * tilt) * scale
    else:
        for n in range(n_):
            for p in range(t, p_, cuda.blockDim.x):
                gx[n, c, p] = gy[n, c, p] * slope(y[n, c, p], act, gy.dtype) * scale


def launch_batch_norm_forward(x, *args, threads=None, stream=0):
    threads = threads or block_threads(x.shape[2], MAX_THREADS)
    launch(batch_norm_forward, x.shape[1], threads, stream, x, *args)


def launch_batch_norm_backward(gy, *args, threads=None, stream=0):
    threads = threads or block_threads(gy.shape[2], MAX_THREADS)
    launch(batch_norm_backward, gy.shape[1], threads, stream, gy, *args)
