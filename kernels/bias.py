"""The bias gradient of a convolution (gy summed over batch and pixels, per output channel),
and, for a convolution with a fused activation, the activation's gradient in the same pass."""

from numba import njit, prange

from . import CPU_KERNEL
from .activation import NONE, slope


@njit(**CPU_KERNEL)
def conv2d_backward_bias(gy, y, act, gz, gb):
    """gz = gy * a'(y), a the activation of code ``act`` and y its output (the slope is read
    from y, all a fused kernel keeps), and gb[k] = sum over n, p of gz[n, k, p]. Without an
    activation (act 0) gz is gy itself and is not written (y and gz may be gy).

    Layout: gy, y and gz (N, K, P) with P = OH*OW (NCHW reshaped, or NHWC as a transposed
    view), gb (K,). Loop order: k (parallel), n, p. Each thread owns whole channels of gz and
    gb, and sums in a private float64 accumulator: a sum over every pixel of the batch loses up
    to ~1e-6 of relative precision in float32 (and far more where the terms cancel), for no
    speed gained in a loop bound by memory.
    """
    n_, k_, p_ = gy.shape
    for k in prange(k_):
        acc = 0.0
        if act == NONE:
            for n in range(n_):
                for p in range(p_):
                    acc += gy[n, k, p]
        else:
            for n in range(n_):
                for p in range(p_):
                    g = gy[n, k, p] * slope(y[n, k, p], act, gy.dtype)
                    gz[n, k, p] = g
                    acc += g
        gb[k] = acc
