"""The bias gradient of a convolution: gy summed over batch and pixels, per output channel."""

from numba import njit, prange

from . import CPU_KERNEL


@njit(**CPU_KERNEL)
def conv2d_backward_bias(gy, gb):
    """gb[k] = sum over n, oh, ow of gy[n, k, oh, ow].

    Layout: gy NCHW-indexed (an NHWC array arrives as a transposed view), gb (K,).
    Loop order: k (parallel), n, oh, ow. Each thread owns whole gb[k] entries and sums in a
    private float64 accumulator: a sum over every pixel of the batch loses up to ~1e-6 of
    relative precision in float32 (and far more where the terms cancel), for no speed gained
    in a loop bound by memory.
    """
    n_, k_, oh_, ow_ = gy.shape
    for k in prange(k_):
        acc = 0.0
        for n in range(n_):
            for oh in range(oh_):
                for ow in range(ow_):
                    acc += gy[n, k, oh, ow]
        gb[k] = acc
