"""Max and average pooling on the GPU, forward and backward, one thread per output element.

The CUDA twins of kernels/pool.py, with its signatures, its window functions (compiled from
its code) and PyTorch's semantics: max ignores padded cells, the first maximum in row-major
order wins a tie and a NaN wins over numbers; an average divides by the window clipped to the
padded input (``count_padding``) or by its real cells, or by ``override`` where it is not 0.
Window (oh, ow) starts at ``oh * sh - pt``, ``ow * sw - pl`` and a max pooling's takes every
dh-th row and dw-th column. The backward kernels gather: a thread owns one gx element and loops over
the windows that contain it (no atomics).

Every array (the int64 indices too) reaches a kernel through ``flat``: its memory plus its
strides in elements, any layout (NHWC arrives as a transposed view), indexed with unsigned
32-bit offsets; sizes = (N, C, H, W, OH, OW) and the window are int32. A window's bounds are
found once per thread, outside the loop over planes, and its cells walked by stepping offsets.

Launch: ``launch_*`` pick the grid from the shapes; ``block`` is (threads along the columns,
threads along the rows); planes n*C + c run on grid z, in a loop of stride gridDim.z, and
the batch goes in groups of images that 32-bit offsets reach.
"""

import math

from numba import int32, uint32

from . import pool
from .cuda_device import cuda, device_function, flat_groups, int32s, kernel, launch, plane_grid

span, divisor, adaptive_span, wins = (device_function(f) for f in (
    pool.span, pool.divisor, pool.adaptive_span, pool.wins))

ARRAY = ("flat", "int32x4")  # an array's memory and its strides
INDICES = ("index1", "int32x4")
SIZES = "int32x6"


@cuda.jit(device=True, inline="always")
def _bounds(o, stride, before, after, k, dilation, size):
    """pool.span's clipped window ``o`` along one axis, as int32 (lo, hi, padded length)."""
    lo, hi, padded = span(o, stride, before, after, k, dilation, size, True)
    return int32(lo), int32(hi), int32(padded)


@cuda.jit(device=True, inline="always")
def _windows(i, stride, before, extent, out_size):
    """The windows ``[lo, hi)`` along one axis whose span of ``extent`` cells contains input
    cell ``i`` (with a dilation, the cell may fall between a window's taps). Both divisions
    are of non-negative values, so unsigned and 32-bit."""
    t = int32(i + before)
    first = uint32(max(0, t - extent + 1))
    stride = uint32(stride)
    return (int32(uint32(first + stride - 1) // stride),
            int32(min(out_size, int32(uint32(t) // stride + 1))))


@cuda.jit(device=True, inline="always")
def _image_channel(plane, c_):
    """(n, c) of plane n*C + c: one 32-bit division a plane, outside every cell loop."""
    n = uint32(uint32(plane) // uint32(c_))
    return n, uint32(plane - n * c_)


@cuda.jit(device=True, inline="always")
def _argmax(x, at, h_step, w_step, h0, h1, w0, w1, dh, dw):
    """pool.argmax over flat memory: the cells (h0 + i dh, w0 + j dw) before (h1, w1), the first
    at offset ``at``, the next row ``h_step`` on and the next column ``w_step``. The same
    row-major scan by pool.wins; while loops, since a range of run-time step divides for its
    trip count."""
    best = x.dtype.type(-math.inf)
    bh, bw = h0, w0
    h = h0
    while h < h1:
        cell, w = at, w0
        while w < w1:
            v = x[cell]
            take = wins(v, best)
            best = v if take else best
            bh = h if take else bh
            bw = w if take else bw
            cell, w = uint32(cell + w_step), int32(w + dw)
        at, h = uint32(at + h_step), int32(h + dh)
    return bh, bw, best


@kernel(*ARRAY, *ARRAY, *INDICES, SIZES, *["int32"] * 8, "bool")
def max_pool2d_forward(x, x_strides, y, y_strides, indices, i_strides, sizes, kh, kw, sh, sw,
                       dh, dw, pt, pl, keep):
    """y[n, c, oh, ow] = max of x[n, c] over window (oh, ow), padded cells excluded, and with
    ``keep`` indices[n, c, oh, ow] = where it is, h * W + w within the plane.

    Layout: x (N, C, H, W), y and indices (N, C, OH, OW) (indices unused without ``keep``).
    Each thread owns y[n, c, oh, ow] and its index (threads over (ow, oh), planes n*C + c on
    grid z) and scans its window row by row.
    """
    n_, c_, h_, w_, oh_, ow_ = sizes
    x_n, x_c, x_h, x_w = x_strides
    y_n, y_c, y_h, y_w = y_strides
    i_n, i_c, i_h, i_w = i_strides
    ow, oh = cuda.grid(2)
    ow, oh = uint32(ow), uint32(oh)
    if oh >= oh_ or ow >= ow_:
        return
    h0, h1, _ = _bounds(oh, sh, pt, 0, kh, dh, h_)
    w0, w1, _ = _bounds(ow, sw, pl, 0, kw, dw, w_)
    corner = uint32(h0 * x_h + w0 * x_w)
    h_step, w_step = uint32(dh * x_h), uint32(dw * x_w)
    for plane in range(int32(cuda.blockIdx.z), int32(n_ * c_), int32(cuda.gridDim.z)):
        n, c = _image_channel(plane, c_)
        bh, bw, best = _argmax(x, uint32(n * x_n + c * x_c + corner), h_step, w_step,
                               h0, h1, w0, w1, dh, dw)
        y[uint32(n * y_n + c * y_c + oh * y_h + ow * y_w)] = best
        if keep:
            indices[uint32(n * i_n + c * i_c + oh * i_h + ow * i_w)] = bh * w_ + bw


@kernel(*ARRAY, *ARRAY, *ARRAY, SIZES, *["int32"] * 8)
def max_pool2d_backward(gy, gy_strides, x, x_strides, gx, gx_strides, sizes, kh, kw, sh, sw,
                        dh, dw, pt, pl):
    """gx[n, c, ih, iw] = sum of gy[n, c, oh, ow] over the windows whose argmax is (ih, iw).

    Layout: gy (N, C, OH, OW), x and gx (N, C, H, W). Each thread owns gx[n, c, ih, iw]
    (threads over (iw, ih), planes on grid z): it recomputes the argmax of every window that
    contains its cell, with the forward's rule, and adds that window's gy where it won.
    """
    n_, c_, h_, w_, oh_, ow_ = sizes
    gy_n, gy_c, gy_h, gy_w = gy_strides
    x_n, x_c, x_h, x_w = x_strides
    gx_n, gx_c, gx_h, gx_w = gx_strides
    iw, ih = cuda.grid(2)
    iw, ih = uint32(iw), uint32(ih)
    if ih >= h_ or iw >= w_:
        return
    oh_lo, oh_hi = _windows(ih, sh, pt, (kh - 1) * dh + 1, oh_)
    ow_lo, ow_hi = _windows(iw, sw, pl, (kw - 1) * dw + 1, ow_)
    h_step, w_step = uint32(dh * x_h), uint32(dw * x_w)
    for plane in range(int32(cuda.blockIdx.z), int32(n_ * c_), int32(cuda.gridDim.z)):
        n, c = _image_channel(plane, c_)
        x_at, gy_at = uint32(n * x_n + c * x_c), uint32(n * gy_n + c * gy_c)
        acc = gx.dtype.type(0)
        for oh in range(oh_lo, oh_hi):
            h0, h1, _ = _bounds(oh, sh, pt, 0, kh, dh, h_)
            for ow in range(ow_lo, ow_hi):
                w0, w1, _ = _bounds(ow, sw, pl, 0, kw, dw, w_)
                bh, bw, _ = _argmax(x, uint32(x_at + h0 * x_h + w0 * x_w), h_step, w_step,
                                    h0, h1, w0, w1, dh, dw)
                if bh == ih and bw == iw:
                    acc += gy[uint32(gy_at + oh * gy_h + ow * gy_w)]
        gx[uint32(n * gx_n + c * gx_c + ih * gx_h + iw * gx_w)] = acc


@kernel(*ARRAY, *INDICES, *ARRAY, SIZES, *["int32"] * 8)
def max_pool2d_backward_indices(gy, gy_strides, indices, i_strides, gx, gx_strides, sizes,
                                kh, kw, sh, sw, dh, dw, pt, pl):
    """gx[n, c, ih, iw] = the sum of gy[n, c, oh, ow] over the windows whose saved index is
    this cell (ih * W + iw): the CUDA twin of kernels/pool.py's scatter, as a gather.

    Layout: gy and indices (N, C, OH, OW), gx (N, C, H, W). Each thread owns gx[n, c, ih, iw]
    (threads over (iw, ih), planes on grid z) and reads the indices of the windows containing
    its cell, recomputing nothing.
    """
    n_, c_, h_, w_, oh_, ow_ = sizes
    gy_n, gy_c, gy_h, gy_w = gy_strides
    i_n, i_c, i_h, i_w = i_strides
    gx_n, gx_c, gx_h, gx_w = gx_strides
    iw, ih = cuda.grid(2)
    iw, ih = uint32(iw), uint32(ih)
    if ih >= h_ or iw >= w_:
        return
    oh_lo, oh_hi = _windows(ih, sh, pt, (kh - 1) * dh + 1, oh_)
    ow_lo, ow_hi = _windows(iw, sw, pl, (kw - 1) * dw + 1, ow_)
    cell = int32(ih * w_ + iw)
    for plane in range(int32(cuda.blockIdx.z), int32(n_ * c_), int32(cuda.gridDim.z)):
        n, c = _image_channel(plane, c_)
        i_at, gy_at = uint32(n * i_n + c * i_c), uint32(n * gy_n + c * gy_c)
        acc = gx.dtype.type(0)
        for oh in range(oh_lo, oh_hi):
            i_row, gy_row = uint32(i_at + oh * i_h), uint32(gy_at + oh * gy_h)
            for ow in range(ow_lo, ow_hi):
                if indices[uint32(i_row + ow * i_w)] == cell:
                    acc += gy[uint32(gy_row + ow * gy_w)]
        gx[uint32(n * gx_n + c * gx_c + ih * gx_h + iw * gx_w)] = acc


@cuda.jit(device=True, inline="always")
def _window_sum(x, at, x_h, x_w, h0, h1, w0, w1):
    """The sum of the cells [h0, h1) x [w0, w1) of the plane at offset ``at``, in x's dtype."""
    acc = x.dtype.type(0)
    row = uint32(at + h0 * x_h + w0 * x_w)
    for _ in range(h0, h1):
        cell = row
        for _ in range(w0, w1):
            acc += x[cell]
            cell = uint32(cell + x_w)
        row = uint32(row + x_h)
    return acc


@kernel(*ARRAY, *ARRAY, SIZES, *["int32"] * 8, "bool", "int32")
def avg_pool2d_forward(x, x_strides, y, y_strides, sizes, kh, kw, sh, sw, pt, pb, pl, pr,
                       count_padding, override):
    """y[n, c, oh, ow] = sum of the real cells of window (oh, ow) / the window's divisor.

    Layout: x (N, C, H, W), y (N, C, OH, OW). Each thread owns y[n, c, oh, ow] (threads over
    (ow, oh), planes on grid z) and sums in an accumulator of x's dtype, row by row.
    """
    n_, c_, h_, w_, oh_, ow_ = sizes
    x_n, x_c, x_h, x_w = x_strides
    y_n, y_c, y_h, y_w = y_strides
    ow, oh = cuda.grid(2)
    ow, oh = uint32(ow), uint32(oh)
    if oh >= oh_ or ow >= ow_:
        return
    h0, h1, ph = _bounds(oh, sh, pt, pb, kh, 1, h_)
    w0, w1, pw = _bounds(ow, sw, pl, pr, kw, 1, w_)
    cells = y.dtype.type(divisor(h0, h1, w0, w1, ph, pw, count_padding, override))
    for plane in range(int32(cuda.blockIdx.z), int32(n_ * c_), int32(cuda.gridDim.z)):
        n, c = _image_channel(plane, c_)
        acc = _window_sum(x, uint32(n * x_n + c * x_c), x_h, x_w, h0, h1, w0, w1)
        y[uint32(n * y_n + c * y_c + oh * y_h + ow * y_w)] = acc / cells


@kernel(*ARRAY, *ARRAY, SIZES, *["int32"] * 8, "bool", "int32")
def avg_pool2d_backward(gy, gy_strides, gx, gx_strides, sizes, kh, kw, sh, sw, pt, pb, pl, pr,
                        count_padding, override):
    """gx[n, c, ih, iw] = sum of gy[n, c, oh, ow] / divisor over the windows containing it.

    Layout: gy (N, C, OH, OW), gx (N, C, H, W). Each thread owns gx[n, c, ih, iw] (threads
    over (iw, ih), planes on grid z) and loops over the windows that cover its cell.
    """
    n_, c_, h_, w_, oh_, ow_ = sizes
    gy_n, gy_c, gy_h, gy_w = gy_strides
    gx_n, gx_c, gx_h, gx_w = gx_strides
    iw, ih = cuda.grid(2)
    iw, ih = uint32(iw), uint32(ih)
    if ih >= h_ or iw >= w_:
        return
    oh_lo, oh_hi = _windows(ih, sh, pt, kh, oh_)
    ow_lo, ow_hi = _windows(iw, sw, pl, kw, ow_)
    for plane in range(int32(cuda.blockIdx.z), int32(n_ * c_), int32(cuda.gridDim.z)):
        n, c = _image_channel(plane, c_)
        gy_at = uint32(n * gy_n + c * gy_c)
        acc = gx.dtype.type(0)
        for oh in range(oh_lo, oh_hi):
            h0, h1, ph = _bounds(oh, sh, pt, pb, kh, 1, h_)
            gy_row = uint32(gy_at + oh * gy_h)
            for ow in range(ow_lo, ow_hi):
                w0, w1, pw = _bounds(ow, sw, pl, pr, kw, 1, w_)
                cells = gx.dtype.type(divisor(h0, h1, w0, w1, ph, pw, count_padding, override))
                acc += gy[uint32(gy_row + ow * gy_w)] / cells
        gx[uint32(n * gx_n + c * gx_c + ih * gx_h + iw * gx_w)] = acc


@kernel(*ARRAY, *ARRAY, SIZES)
def adaptive_avg_pool2d_forward(x, x_strides, y, y_strides, sizes):
    """kernels/pool.adaptive_avg_pool2d_forward, same layout. Each thread owns y[n, c, oh, ow]
    (threads over (ow, oh), planes on grid z)."""
    n_, c_, h_, w_, oh_, ow_ = sizes
    x_n, x_c, x_h, x_w = x_strides
    y_n, y_c, y_h, y_w = y_strides
    ow, oh = cuda.grid(2)
    ow, oh = uint32(ow), uint32(oh)
    if oh >= oh_ or ow >= ow_:
        return
    h0, h1 = adaptive_span(int32(oh), h_, oh_)
    w0, w1 = adaptive_span(int32(ow), w_, ow_)
    h0, h1, w0, w1 = int32(h0), int32(h1), int32(w0), int32(w1)
    cells = y.dtype.type((h1 - h0) * (w1 - w0))
    for plane in range(int32(cuda.blockIdx.z), int32(n_ * c_), int32(cuda.gridDim.z)):
        n, c = _image_channel(plane, c_)
        acc = _window_sum(x, uint32(n * x_n + c * x_c), x_h, x_w, h0, h1, w0, w1)
        y[uint32(n * y_n + c * y_c + oh * y_h + ow * y_w)] = acc / cells


@kernel(*ARRAY, *ARRAY, SIZES)
def adaptive_avg_pool2d_backward(gy, gy_strides, gx, gx_strides, sizes):
    """kernels/pool.adaptive_avg_pool2d_backward as a gather: each thread owns gx[n, c, ih, iw]
    (threads over (iw, ih), planes on grid z) and adds gy / cells over the windows containing
    its cell, along each axis outputs floor(i * out / size) up to ceil((i + 1) * out / size)."""
    n_, c_, h_, w_, oh_, ow_ = sizes
    gy_n, gy_c, gy_h, gy_w = gy_strides
    gx_n, gx_c, gx_h, gx_w = gx_strides
    iw, ih = cuda.grid(2)
    iw, ih = uint32(iw), uint32(ih)
    if ih >= h_ or iw >= w_:
        return
    oh_lo, oh_hi = adaptive_span(int32(ih), oh_, h_)
    ow_lo, ow_hi = adaptive_span(int32(iw), ow_, w_)
    oh_lo, oh_hi, ow_lo, ow_hi = int32(oh_lo), int32(oh_hi), int32(ow_lo), int32(ow_hi)
    for plane in range(int32(cuda.blockIdx.z), int32(n_ * c_), int32(cuda.gridDim.z)):
        n, c = _image_channel(plane, c_)
        gy_at = uint32(n * gy_n + c * gy_c)
        acc = gx.dtype.type(0)
        for oh in range(oh_lo, oh_hi):
            h0, h1 = adaptive_span(oh, h_, oh_)
            gy_row = uint32(gy_at + oh * gy_h)
            for ow in range(ow_lo, ow_hi):
                w0, w1 = adaptive_span(ow, w_, ow_)
                acc += gy[uint32(gy_row + ow * gy_w)] / gx.dtype.type((h1 - h0) * (w1 - w0))
        gx[uint32(n * gx_n + c * gx_c + ih * gx_h + iw * gx_w)] = acc


def _launch(kernel, arrays, x, y, owned, window, block, stream):
    """Launch ``kernel`` on ``arrays`` (each flat with its strides; one of a single image, an
    unused stand-in, serves every group) for input x and output y of a pooling, its threads
    over the (rows, columns) ``owned`` of each plane, a launch per group of images that
    32-bit offsets reach; ``window`` follows the sizes, ints as int32."""
    n_, c_ = x.shape[:2]
    scalars = tuple(w if isinstance(w, bool) else int32(w) for w in window)
    for images, operands in flat_groups(arrays, n_):
        launch(kernel, plane_grid(*owned, images * c_, block), block, stream, *operands,
               int32s(images, c_, *x.shape[2:], *y.shape[2:]), *scalars)


def launch_max_pool2d_forward(x, y, indices, kh, kw, sh, sw, dh, dw, pt, pl, keep,
                              block=(8, 8), stream=0):
    _launch(max_pool2d_forward, (x, y, indices), x, y, y.shape[2:], (
        kh, kw, sh, sw, dh, dw, pt, pl, bool(keep)), block, stream)


def launch_max_pool2d_backward(gy, x, gx, kh, kw, sh, sw, dh, dw, pt, pl, block=(8, 8),
                               stream=0):
    _launch(max_pool2d_backward, (gy, x, gx), gx, gy, gx.shape[2:], (
        kh, kw, sh, sw, dh, dw, pt, pl), block, stream)


def launch_max_pool2d_backward_indices(gy, indices, gx, kh, kw, sh, sw, dh, dw, pt, pl,
                                       block=(8, 8), stream=0):
    _launch(max_pool2d_backward_indices, (gy, indices, gx), gx, gy, gx.shape[2:], (
        kh, kw, sh, sw, dh, dw, pt, pl), block, stream)


def launch_avg_pool2d_forward(x, y, kh, kw, sh, sw, pt, pb, pl, pr, count_padding, override,
                              block=(8, 8), stream=0):
    _launch(avg_pool2d_forward, (x, y), x, y, y.shape[2:], (
        kh, kw, sh, sw, pt, pb, pl, pr, bool(count_padding), override), block, stream)


def launch_adaptive_avg_pool2d_forward(x, y, block=(8, 8), stream=0):
    _launch(adaptive_avg_pool2d_forward, (x, y), x, y, y.shape[2:], (), block, stream)


def launch_adaptive_avg_pool2d_backward(gy, gx, block=(8, 8), stream=0):
    _launch(adaptive_avg_pool2d_backward, (gy, gx), gx, gy, gx.shape[2:], (), block, stream)


def launch_avg_pool2d_backward(gy, gx, kh, kw, sh, sw, pt, pb, pl, pr, count_padding, override,
                               block=(8, 8), stream=0):
    _launch(avg_pool2d_backward, (gy, gx), gx, gy, gx.shape[2:], (
        kh, kw, sh, sw, pt, pb, pl, pr, bool(count_padding), override), block, stream)
