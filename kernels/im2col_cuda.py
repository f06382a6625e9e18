"""im2col and col2im on the GPU: the input's windows as GEMM columns, and their gradient back.

The CUDA twins of kernels/im2col.py's unfolding, with its tap arithmetic: tap (r, s) of output
pixel (oh, ow) reads ``x[n, c, oh * sh - pt + r * dh, ow * sw - pl + s * dw]``. The columns are
image-major, (N, C*R*S, OH, OW), rows in OIHW order (c, r, s), where the CPU's are channel-major
(C*R*S, N, OH, OW): each image's columns are a contiguous (C*R*S, OH*OW) matrix for a batched
GEMM launch that writes an NCHW output in place, where BLAS on the CPU runs one flat GEMM over
the columns of all the images.
"""

from .cuda_device import cuda, kernel, launch, output_reading, plane_grid


@kernel(4, 4, *["int"] * 8)
def im2col(x, cols, r_, s_, sh, sw, pt, pl, dh, dw):
    """cols[n, (c * R + r) * S + s, oh, ow] = x at tap (r, s) of (oh, ow), 0 in the padding.

    Layout: x (N, C, H, W), cols (N, C*R*S, OH, OW). Each thread owns one cell of cols
    (threads over (ow, oh), planes n*C*R*S + row on grid z); consecutive threads read
    consecutive input columns at stride 1 and write consecutive columns.
    """
    n_, c_, h_, w_ = x.shape
    rows, oh_, ow_ = cols.shape[1], cols.shape[2], cols.shape[3]
    ow, oh = cuda.grid(2)
    if oh >= oh_ or ow >= ow_:
        return
    for plane in range(cuda.blockIdx.z, n_ * rows, cuda.gridDim.z):
        n, row = plane // rows, plane % rows
        c, r, s = row // (r_ * s_), row // s_ % r_, row % s_
        ih, iw = oh * sh - pt + r * dh, ow * sw - pl + s * dw
        inside = 0 <= ih < h_ and 0 <= iw < w_
        cols[n, row, oh, ow] = x[n, c, ih, iw] if inside else x.dtype.type(0)


@kernel(4, 4, *["int"] * 8)
def col2im(cols, x, r_, s_, sh, sw, pt, pl, dh, dw):
    """x[n, c, ih, iw] = the sum of the columns' cells that im2col copied from it (a gather).

    Layout: cols (N, C*R*S, OH, OW), x (N, C, H, W). Each thread owns x[n, c, ih, iw]
    (threads over (iw, ih), planes n*C + c on grid z) and adds cols[n, (c, r, s), oh, ow] for
    the taps with ih + pt - r * dh = oh * sh, 0 <= oh < OH (and the same for columns).
    """
    n_, c_, h_, w_ = x.shape
    oh_, ow_ = cols.shape[2], cols.shape[3]
    iw, ih = cuda.grid(2)
    if ih >= h_ or iw >= w_:
        return
    for plane in range(cuda.blockIdx.z, n_ * c_, cuda.gridDim.z):
        n, c = plane // c_, plane % c_
        acc = x.dtype.type(0)
        for r in range(r_):
            oh = output_reading(ih, pt, r * dh, sh, oh_)
            if oh < 0:
                continue
            for s in range(s_):
                ow = output_reading(iw, pl, s * dw, sw, ow_)
                if ow >= 0:
                    acc += cols[n, (c * r_ + r) * s_ + s, oh, ow]
        x[n, c, ih, iw] = acc


def launch_im2col(x, cols, r_, s_, sh, sw, pt, pl, dh, dw, block=(32, 4), stream=0):
    n_, rows, oh_, ow_ = cols.shape
    launch(im2col, plane_grid(oh_, ow_, n_ * rows, block), block, stream,
           x, cols, r_, s_, sh, sw, pt, pl, dh, dw)


def launch_col2im(cols, x, r_, s_, sh, sw, pt, pl, dh, dw, block=(32, 4), stream=0):
    n_, c_, h_, w_ = x.shape
    launch(col2im, plane_grid(h_, w_, n_ * c_, block), block, stream,
           cols, x, r_, s_, sh, sw, pt, pl, dh, dw)
