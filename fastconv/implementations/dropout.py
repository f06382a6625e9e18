"""dropout forward and backward: every implementation on every device, on flat views of the
contiguous arrays the ops layer has checked. "reference" is NumPy, drawing the same masks from
the same (seed, index) hash (kernels/dropout.py) in vectorised uint64 arithmetic."""

import numpy as np

from ..kernels import dropout
from ..registry import register
from . import driver
from .driver import lazy

dropout_cuda = lazy("fastconv.kernels.dropout_cuda")
gpu = driver.gpu


@register("dropout", "cpu", "reference")
def dropout_reference(x, seed, threshold, scale):
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps, as the kernels' does
        z = np.uint64(seed) + np.arange(1, x.size + 1, dtype=np.uint64) * dropout.GOLDEN
        z = (z ^ (z >> dropout.S30)) * dropout.MIX1
        z = (z ^ (z >> dropout.S27)) * dropout.MIX2
    mask = ((z ^ (z >> dropout.S31)) >> dropout.S32) >= np.uint64(threshold)
    mask = mask.reshape(x.shape)
    return x * np.where(mask, scale, scale * 0), mask


def _forward(xp, call, x, seed, threshold, scale):
    y, mask = driver.empty(xp, x.shape, x.dtype), driver.empty(xp, x.shape, np.bool_)
    call(x.reshape(-1), seed, threshold, scale, y.reshape(-1), mask.reshape(-1))
    return y, mask


def _backward(xp, call, gy, mask, scale):
    gx = driver.empty(xp, gy.shape, gy.dtype)
    call(gy.reshape(-1), mask.reshape(-1), scale, gx.reshape(-1))
    return gx


@register("dropout", "cpu", "numba")
def dropout_cpu(x, *args):
    return _forward(np, lambda *a: driver.cpu_move(dropout.dropout_forward, x.size, *a), x,
                    *args)


@register("dropout", "cuda", "numba", launches=("dropout_cuda.dropout_forward",))
def dropout_gpu(x, *args):
    return _forward(gpu.xp, lambda *a: dropout_cuda.launch_dropout_forward(
        *a, stream=gpu.stream()), x, *args)


@register("dropout_backward", "cpu", "numba")
def dropout_backward_cpu(gy, *args):
    return _backward(np, lambda *a: driver.cpu_move(dropout.dropout_backward, gy.size, *a), gy,
                     *args)


@register("dropout_backward", "cuda", "numba", launches=("dropout_cuda.dropout_backward",))
def dropout_backward_gpu(gy, *args):
    return _backward(gpu.xp, lambda *a: dropout_cuda.launch_dropout_backward(
        *a, stream=gpu.stream()), gy, *args)
