"""im2col and col2im: lay convolution windows out as matrix columns so BLAS does the GEMM.

The columns of a batch are channel-major, cols (C * R * S, N, OH, OW) (the GPU's twin,
kernels/im2col_cuda.py, lays them out image-major, and says why), seen by the GEMM as
(C * R * S, N * OH * OW): row (c, r, s), column (n, oh, ow) holds
x[n, c, oh * sh - pt + r * dh, ow * sw - pl + s * dw], zero in the padding. The row order matches
an OIHW filter reshaped to (K, C * R * S), so a convolution is one GEMM per group.
Index names and the clipped-range idiom follow conv_direct.
"""

from numba import njit, prange

from . import CPU_KERNEL
from .activation import activate
from .conv_direct import _valid_range


@njit(**CPU_KERNEL)
def im2col(x, cols, r_, s_, sh, sw, pt, pl, dh, dw):
    """Fill cols (C*R*S, N, OH, OW) from x (N, C, H, W), NCHW-indexed (NHWC as a view).

    Loop order: (n, c) in parallel, then r, s, oh, ow innermost (contiguous writes; contiguous
    reads for stride 1). Each task owns cols[(c, r, s), n] for all taps and writes each cell
    once: the input where the tap lands inside it, zero in the padding.
    """
    n_, c_, h_, w_ = x.shape
    oh_, ow_ = cols.shape[2], cols.shape[3]
    for task in prange(n_ * c_):
        n, c = task // c_, task % c_
        for r in range(r_):
            oh0, rows, ih0 = _valid_range(r * dh - pt, sh, h_, oh_)
            for s in range(s_):
                row = (c * r_ + r) * s_ + s
                ow0, count, iw0 = _valid_range(s * dw - pl, sw, w_, ow_)
                for oh in range(oh_):
                    i = oh - oh0
                    if i < 0 or i >= rows:
                        for ow in range(ow_):
                            cols[row, n, oh, ow] = 0
                        continue
                    ih = ih0 + i * sh
                    # ow0 passes the row's end when the tap is in the padding of every output
                    # (writing up to it once zeroed the next image's columns)
                    for ow in range(min(ow0, ow_)):
                        cols[row, n, oh, ow] = 0
                    if sw == 1:
                        for j in range(count):
                            cols[row, n, oh, ow0 + j] = x[n, c, ih, iw0 + j]
                    else:
                        for j in range(count):
                            cols[row, n, oh, ow0 + j] = x[n, c, ih, iw0 + j * sw]
                    for ow in range(ow0 + count, ow_):
                        cols[row, n, oh, ow] = 0


@njit(**CPU_KERNEL)
def col2im(cols, gx, r_, s_, sh, sw, pt, pl, dh, dw):
    """gx (N, C, H, W) = the sum of every column entry back at the input pixel it came from.

    Layout: cols (C*R*S, N, OH, OW); gx NCHW-indexed (NHWC as a view).
    Loop order: (n, c) in parallel, then r, s, oh, ow innermost. Each task owns the plane
    gx[n, c], zeroes it and adds its channel's R*S rows into it, so no two tasks write one pixel.
    """
    n_, c_, h_, w_ = gx.shape
    oh_, ow_ = cols.shape[2], cols.shape[3]
    for task in prange(n_ * c_):
        n, c = task // c_, task % c_
        for ih in range(h_):
            for iw in range(w_):
                gx[n, c, ih, iw] = 0
        for r in range(r_):
            oh0, rows, ih0 = _valid_range(r * dh - pt, sh, h_, oh_)
            for s in range(s_):
                row = (c * r_ + r) * s_ + s
                ow0, count, iw0 = _valid_range(s * dw - pl, sw, w_, ow_)
                for i in range(rows):
                    ih = ih0 + i * sh
                    if sw == 1:
                        for j in range(count):
                            gx[n, c, ih, iw0 + j] += cols[row, n, oh0 + i, ow0 + j]
                    else:
                        for j in range(count):
                            gx[n, c, ih, iw0 + j * sw] += cols[row, n, oh0 + i, ow0 + j]


@njit(**CPU_KERNEL)
def bias_activation(src, out, b, act):
    """out = act(src + b): the epilogue of a GEMM, run on a chunk while it is in cache.

    Layout: src and out (K, n, P) views of the same shape (out may be src), b (K,).
    Loop order: (k, n) in parallel, then the P pixels. Each task owns the row out[k, n].
    """
    k_, n_, p_ = out.shape
    for task in prange(k_ * n_):
        k, n = task // n_, task % n_
        for p in range(p_):
            out[k, n, p] = activate(src[k, n, p] + b[k], act, out.dtype)
