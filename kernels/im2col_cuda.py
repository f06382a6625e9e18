"""im2col and col2im on the GPU: the input's windows as GEMM columns, and their gradient back.

The CUDA twins of kernels/im2col.py's unfolding, with its tap arithmetic: tap (r, s) of output
pixel (oh, ow) reads ``x[n, c, oh * sh - pt + r * dh, ow * sw - pl + s * dw]``. The columns are
image-major, (N, C*R*S, OH, OW), rows in OIHW order (c, r, s), where the CPU's are channel-major
(C*R*S, N, OH, OW): each image's columns are a contiguous (C*R*S, OH*OW) matrix for a batched
GEMM launch that writes an NCHW output in place, where BLAS on the CPU runs one flat GEMM over
the columns of all the images.

Both kernels take their arrays through ``flat`` (memory plus strides in elements, any layout:
NHWC arrives as a transposed view) and index them with unsigned 32-bit offsets; the launchers
split the batch into groups of images those offsets reach.
"""

from numba import int32, uint32

from .cuda_device import cuda, flat_groups, int32s, kernel, launch, plane_grid


@kernel("flat", "int32x4", "flat", "int32x4", "int32x6", *["int32"] * 8)
def im2col(x, x_strides, cols, cols_strides, sizes, r_, s_, sh, sw, pt, pl, dh, dw):
    """cols[n, (c * R + r) * S + s, oh, ow] = x at tap (r, s) of (oh, ow), 0 in the padding.

    Layout: x (N, C, H, W), cols (N, C*R*S, OH, OW), both flat with their strides; sizes =
    (N, C*R*S, H, W, OH, OW). Each thread owns the cells (n, row, oh, ow) of every image n
    (threads over (ow, oh), rows on grid z in a loop of stride gridDim.z): a row's (c, r, s)
    and whether the tap falls in the padding do not depend on n, so the loop over images
    only steps two offsets. Consecutive threads write consecutive columns.
    """
    n_, rows, h_, w_, oh_, ow_ = sizes
    x_n, x_c, x_h, x_w = x_strides
    cols_n, cols_row, cols_h, cols_w = cols_strides
    ow = uint32(cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x)
    oh = uint32(cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y)
    if oh >= oh_ or ow >= ow_:
        return
    taps = uint32(r_ * s_)
    top, left = int32(oh * sh - pt), int32(ow * sw - pl)
    pixel = uint32(oh * cols_h + ow * cols_w)
    zero = cols.dtype.type(0)
    for row in range(int32(cuda.blockIdx.z), rows, int32(cuda.gridDim.z)):
        c = uint32(uint32(row) // taps)
        tap = uint32(row - c * taps)
        r = uint32(tap // uint32(s_))
        s = uint32(tap - r * s_)
        ih, iw = int32(top + r * dh), int32(left + s * dw)
        inside = 0 <= ih < h_ and 0 <= iw < w_
        at = uint32(row * cols_row + pixel)
        x_at = uint32(c * x_c + ih * x_h + iw * x_w) if inside else uint32(0)
        for _ in range(n_):
            cols[at] = x[x_at] if inside else zero
            at, x_at = uint32(at + cols_n), uint32(x_at + x_n)


@cuda.jit(device=True, inline="always")
def _first_reading(i, before, stride, dilation):
    """Along one axis, the output that tap 0 would read input cell ``i`` from, as
    (quotient, remainder) of ``i + before`` by ``stride`` (the output where the remainder is 0),
    and the tap step's own quotient and remainder: ``_next_reading`` walks the taps with them
    by addition alone."""
    t, stride = uint32(i + before), uint32(stride)
    return (int32(t // stride), uint32(t % stride), int32(uint32(dilation) // stride),
            uint32(uint32(dilation) % stride))


@cuda.jit(device=True, inline="always")
def _next_reading(o, rem, step_o, step_rem, stride):
    """(quotient, remainder) of the next tap's ``t - dilation`` from ``t``'s."""
    if rem < step_rem:
        return int32(o - step_o - 1), uint32(rem + stride - step_rem)
    return int32(o - step_o), uint32(rem - step_rem)


@kernel("flat", "int32x4", "flat", "int32x4", "int32x6", *["int32"] * 8)
def col2im(cols, cols_strides, x, x_strides, sizes, r_, s_, sh, sw, pt, pl, dh, dw):
    """x[n, c, ih, iw] = the sum of the columns' cells that im2col copied from it (a gather).

    Layout: cols (N, C*R*S, OH, OW), x (N, C, H, W), both flat with their strides; sizes =
    (N, C, H, W, OH, OW). Each thread owns x[n, c, ih, iw] (threads over (iw, ih), planes
    n*C + c on grid z in a loop of stride gridDim.z) and adds cols[n, (c, r, s), oh, ow] for
    the taps with ih + pt - r * dh = oh * sh, 0 <= oh < OH (and the same for columns). Taps
    run r, then s, from 0: oh and ow only fall as they go, so each loop stops at the first
    tap before output 0, and the division by the stride is done once per thread, then
    stepped (``_next_reading``).
    """
    n_, c_, h_, w_, oh_, ow_ = sizes
    cols_n, cols_row, cols_h, cols_w = cols_strides
    x_n, x_c, x_h, x_w = x_strides
    iw = uint32(cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x)
    ih = uint32(cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y)
    if ih >= h_ or iw >= w_:
        return
    oh0, h_rem0, h_step, h_step_rem = _first_reading(ih, pt, sh, dh)
    ow0, w_rem0, w_step, w_step_rem = _first_reading(iw, pl, sw, dw)
    channel_rows = uint32(r_ * s_ * cols_row)
    for plane in range(int32(cuda.blockIdx.z), int32(n_ * c_), int32(cuda.gridDim.z)):
        n = uint32(uint32(plane) // uint32(c_))
        c = uint32(plane - n * c_)
        acc = x.dtype.type(0)
        row_at = uint32(n * cols_n + c * channel_rows)
        oh, h_rem = oh0, h_rem0
        for _ in range(r_):
            if oh < 0:
                break
            if h_rem == 0 and oh < oh_:
                at = uint32(row_at + oh * cols_h)
                ow, w_rem = ow0, w_rem0
                for _ in range(s_):
                    if ow < 0:
                        break
                    if w_rem == 0 and ow < ow_:
                        acc += cols[uint32(at + ow * cols_w)]
                    ow, w_rem = _next_reading(ow, w_rem, w_step, w_step_rem, sw)
                    at = uint32(at + cols_row)
            oh, h_rem = _next_reading(oh, h_rem, h_step, h_step_rem, sh)
            row_at = uint32(row_at + s_ * cols_row)
        x[uint32(n * x_n + c * x_c + ih * x_h + iw * x_w)] = acc


def launch_im2col(x, cols, r_, s_, sh, sw, pt, pl, dh, dw, block=(32, 4), stream=0):
    n_, rows, oh_, ow_ = cols.shape
    for images, operands in flat_groups((x, cols), n_):
        sizes = int32s(images, rows, *x.shape[2:], oh_, ow_)
        launch(im2col, plane_grid(oh_, ow_, rows, block), block, stream, *operands, sizes,
               *int32s(r_, s_, sh, sw, pt, pl, dh, dw))


def launch_col2im(cols, x, r_, s_, sh, sw, pt, pl, dh, dw, block=(32, 4), stream=0):
    n_, c_, h_, w_ = x.shape
    for images, operands in flat_groups((cols, x), n_):
        sizes = int32s(images, c_, h_, w_, *cols.shape[2:])
        launch(col2im, plane_grid(h_, w_, images * c_, block), block, stream, *operands, sizes,
               *int32s(r_, s_, sh, sw, pt, pl, dh, dw))
