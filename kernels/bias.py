"""The bias gradient of a convolution: gy summed over batch and pixels, per output channel."""

from numba import njit, prange


@njit(parallel=True, cache=True, fastmath=True)
def conv2d_backward_bias(gy, gb):
    """gb[k] = sum over n, oh, ow of gy[n, k, oh, ow].

    Layout: gy NCHW-indexed (an NHWC array arrives as a transposed view), gb (K,).
    Loop order: k (parallel), n, oh, ow. Each thread owns whole gb[k] entries and sums in a
    private accumulator of gy's dtype.
    """
    n_, k_, oh_, ow_ = gy.shape
    for k in prange(k_):
        acc = gy.dtype.type(0)
        for n in range(n_):
            for oh in range(oh_):
                for ow in range(ow_):
                    acc += gy[n, k, oh, ow]
        gb[k] = acc
