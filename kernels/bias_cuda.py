"""The bias gradient of a convolution on the GPU: the CUDA twin of kernels/bias.py."""

from .cuda_device import cuda, flat_grid, kernel, launch


@kernel(4, 1)
def conv2d_backward_bias(gy, gb):
    """gb[k] = sum over n, oh, ow of gy[n, k, oh, ow].

    Layout: gy NCHW-indexed (N, K, OH, OW), gb (K,). Each thread owns one gb[k] (1-D grid over
    k) and sums in a float64 accumulator, as kernels/bias.py does and for its reason.
    """
    n_, k_, oh_, ow_ = gy.shape
    k = cuda.grid(1)
    if k >= k_:
        return
    acc = 0.0
    for n in range(n_):
        for oh in range(oh_):
            for ow in range(ow_):
                acc += gy[n, k, oh, ow]
    gb[k] = acc


def launch_conv2d_backward_bias(gy, gb, block=(8, 8), stream=0):
    grid, threads = flat_grid(gb.shape[0], block)
    launch(conv2d_backward_bias, grid, threads, stream, gy, gb)
