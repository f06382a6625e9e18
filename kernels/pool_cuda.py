"""Max and average pooling on the GPU, forward and backward, one thread per output element.

The CUDA twins of kernels/pool.py, with its signatures, its window functions (compiled from
its code) and PyTorch's semantics: max ignores padded cells, the first maximum in row-major
order wins a tie and a NaN wins over numbers; an average divides by the window clipped to the
padded input (``count_padding``) or by its real cells, or by ``override`` where it is not 0.
Window (oh, ow) starts at ``oh * sh - pt``, ``ow * sw - pl`` and a max pooling's takes every
dh-th row and dw-th column. The backward kernels gather: a thread owns one gx element and loops over
the windows that contain it (no atomics).

Launch: ``launch_*`` pick the grid from the shapes; ``block`` is (threads along the columns,
threads along the rows); planes n*C + c run on grid z, in a loop of stride gridDim.z.
"""

from . import pool
from .cuda_device import cuda, device_function, kernel, launch, plane_grid

span, divisor, argmax, adaptive_span = (device_function(f) for f in (
    pool.span, pool.divisor, pool.argmax, pool.adaptive_span))


@cuda.jit(device=True, inline="always")
def _windows(i, stride, before, extent, out_size):
    """The windows ``[lo, hi)`` along one axis whose span of ``extent`` cells contains input
    cell ``i`` (with a dilation, the cell may fall between a window's taps)."""
    first = max(0, i + before - extent + 1)
    return (first + stride - 1) // stride, min(out_size, (i + before) // stride + 1)


@kernel(4, 4, "index4", *["int"] * 8, "bool")
def max_pool2d_forward(x, y, indices, kh, kw, sh, sw, dh, dw, pt, pl, keep):
    """y[n, c, oh, ow] = max of x[n, c] over window (oh, ow), padded cells excluded, and with
    ``keep`` indices[n, c, oh, ow] = where it is, h * W + w within the plane.

    Layout: x (N, C, H, W), y and indices (N, C, OH, OW) (indices unused without ``keep``).
    Each thread owns y[n, c, oh, ow] and its index (threads over (ow, oh), planes n*C + c on
    grid z).
    """
    n_, c_, h_, w_ = x.shape
    oh_, ow_ = y.shape[2], y.shape[3]
    ow, oh = cuda.grid(2)
    if oh >= oh_ or ow >= ow_:
        return
    h0, h1, _ = span(oh, sh, pt, 0, kh, dh, h_, True)
    w0, w1, _ = span(ow, sw, pl, 0, kw, dw, w_, True)
    for nc in range(cuda.blockIdx.z, n_ * c_, cuda.gridDim.z):
        n, c = nc // c_, nc % c_
        bh, bw, best = argmax(x[n, c], h0, h1, w0, w1, dh, dw)
        y[n, c, oh, ow] = best
        if keep:
            indices[n, c, oh, ow] = bh * w_ + bw


@kernel(4, 4, 4, *["int"] * 8)
def max_pool2d_backward(gy, x, gx, kh, kw, sh, sw, dh, dw, pt, pl):
    """gx[n, c, ih, iw] = sum of gy[n, c, oh, ow] over the windows whose argmax is (ih, iw).

    Layout: gy (N, C, OH, OW), x and gx (N, C, H, W). Each thread owns gx[n, c, ih, iw]
    (threads over (iw, ih), planes on grid z): it recomputes the argmax of every window that
    contains its cell, with the forward's rule, and adds that window's gy where it won.
    """
    n_, c_, h_, w_ = x.shape
    oh_, ow_ = gy.shape[2], gy.shape[3]
    iw, ih = cuda.grid(2)
    if ih >= h_ or iw >= w_:
        return
    oh_lo, oh_hi = _windows(ih, sh, pt, (kh - 1) * dh + 1, oh_)
    ow_lo, ow_hi = _windows(iw, sw, pl, (kw - 1) * dw + 1, ow_)
    for nc in range(cuda.blockIdx.z, n_ * c_, cuda.gridDim.z):
        n, c = nc // c_, nc % c_
        acc = gx.dtype.type(0)
        for oh in range(oh_lo, oh_hi):
            h0, h1, _ = span(oh, sh, pt, 0, kh, dh, h_, True)
            for ow in range(ow_lo, ow_hi):
                w0, w1, _ = span(ow, sw, pl, 0, kw, dw, w_, True)
                bh, bw, _ = argmax(x[n, c], h0, h1, w0, w1, dh, dw)
                if bh == ih and bw == iw:
                    acc += gy[n, c, oh, ow]
        gx[n, c, ih, iw] = acc


@kernel(4, "index4", 4, *["int"] * 8)
def max_pool2d_backward_indices(gy, indices, gx, kh, kw, sh, sw, dh, dw, pt, pl):
    """gx[n, c, ih, iw] = the sum of gy[n, c, oh, ow] over the windows whose saved index is
    this cell (ih * W + iw): the CUDA twin of kernels/pool.py's scatter, as a gather.

    Layout: gy and indices (N, C, OH, OW), gx (N, C, H, W). Each thread owns gx[n, c, ih, iw]
    (threads over (iw, ih), planes on grid z) and reads the indices of the windows containing
    its cell, recomputing nothing.
    """
    n_, c_, h_, w_ = gx.shape
    oh_, ow_ = gy.shape[2], gy.shape[3]
    iw, ih = cuda.grid(2)
    if ih >= h_ or iw >= w_:
        return
    oh_lo, oh_hi = _windows(ih, sh, pt, (kh - 1) * dh + 1, oh_)
    ow_lo, ow_hi = _windows(iw, sw, pl, (kw - 1) * dw + 1, ow_)
    cell = ih * w_ + iw
    for nc in range(cuda.blockIdx.z, n_ * c_, cuda.gridDim.z):
        n, c = nc // c_, nc % c_
        acc = gx.dtype.type(0)
        for oh in range(oh_lo, oh_hi):
            for ow in range(ow_lo, ow_hi):
                if indices[n, c, oh, ow] == cell:
                    acc += gy[n, c, oh, ow]
        gx[n, c, ih, iw] = acc


@kernel(4, 4, *["int"] * 8, "bool", "int")
def avg_pool2d_forward(x, y, kh, kw, sh, sw, pt, pb, pl, pr, count_padding, override):
    """y[n, c, oh, ow] = sum of the real cells of window (oh, ow) / the window's divisor.

    Layout: x (N, C, H, W), y (N, C, OH, OW). Each thread owns y[n, c, oh, ow] (threads over
    (ow, oh), planes on grid z) and sums in an accumulator of x's dtype.
    """
    n_, c_, h_, w_ = x.shape
    oh_, ow_ = y.shape[2], y.shape[3]
    ow, oh = cuda.grid(2)
    if oh >= oh_ or ow >= ow_:
        return
    h0, h1, ph = span(oh, sh, pt, pb, kh, 1, h_, True)
    w0, w1, pw = span(ow, sw, pl, pr, kw, 1, w_, True)
    cells = y.dtype.type(divisor(h0, h1, w0, w1, ph, pw, count_padding, override))
    for nc in range(cuda.blockIdx.z, n_ * c_, cuda.gridDim.z):
        n, c = nc // c_, nc % c_
        acc = x.dtype.type(0)
        for h in range(h0, h1):
            for w in range(w0, w1):
                acc += x[n, c, h, w]
        y[n, c, oh, ow] = acc / cells


@kernel(4, 4, *["int"] * 8, "bool", "int")
def avg_pool2d_backward(gy, gx, kh, kw, sh, sw, pt, pb, pl, pr, count_padding, override):
    """gx[n, c, ih, iw] = sum of gy[n, c, oh, ow] / divisor over the windows containing it.

    Layout: gy (N, C, OH, OW), gx (N, C, H, W). Each thread owns gx[n, c, ih, iw] (threads
    over (iw, ih), planes on grid z) and loops over the windows that cover its cell.
    """
    n_, c_, oh_, ow_ = gy.shape
    h_, w_ = gx.shape[2], gx.shape[3]
    iw, ih = cuda.grid(2)
    if ih >= h_ or iw >= w_:
        return
    oh_lo, oh_hi = _windows(ih, sh, pt, kh, oh_)
    ow_lo, ow_hi = _windows(iw, sw, pl, kw, ow_)
    for nc in range(cuda.blockIdx.z, n_ * c_, cuda.gridDim.z):
        n, c = nc // c_, nc % c_
        acc = gx.dtype.type(0)
        for oh in range(oh_lo, oh_hi):
            h0, h1, ph = span(oh, sh, pt, pb, kh, 1, h_, True)
            for ow in range(ow_lo, ow_hi):
                w0, w1, pw = span(ow, sw, pl, pr, kw, 1, w_, True)
                cells = gx.dtype.type(divisor(h0, h1, w0, w1, ph, pw, count_padding, override))
                acc += gy[n, c, oh, ow] / cells
        gx[n, c, ih, iw] = acc


@kernel(4, 4)
def adaptive_avg_pool2d_forward(x, y):
    """kernels/pool.adaptive_avg_pool2d_forward, same layout. Each thread owns y[n, c, oh, ow]
    (threads over (ow, oh), planes on grid z)."""
    n_, c_, h_, w_ = x.shape
    oh_, ow_ = y.shape[2], y.shape[3]
    ow, oh = cuda.grid(2)
    if oh >= oh_ or ow >= ow_:
        return
    h0, h1 = adaptive_span(oh, h_, oh_)
    w0, w1 = adaptive_span(ow, w_, ow_)
    cells = y.dtype.type((h1 - h0) * (w1 - w0))
    for nc in range(cuda.blockIdx.z, n_ * c_, cuda.gridDim.z):
        n, c = nc // c_, nc % c_
        acc = x.dtype.type(0)
        for h in range(h0, h1):
            for w in range(w0, w1):
                acc += x[n, c, h, w]
        y[n, c, oh, ow] = acc / cells


@kernel(4, 4)
def adaptive_avg_pool2d_backward(gy, gx):
    """kernels/pool.adaptive_avg_pool2d_backward as a gather: each thread owns gx[n, c, ih, iw]
    (threads over (iw, ih), planes on grid z) and adds gy / cells over the windows containing
    its cell, along each axis outputs floor(i * out / size) up to ceil((i + 1) * out / size)."""
    n_, c_, oh_, ow_ = gy.shape
    h_, w_ = gx.shape[2], gx.shape[3]
    iw, ih = cuda.grid(2)
    if ih >= h_ or iw >= w_:
        return
    oh_lo, oh_hi = adaptive_span(ih, oh_, h_)
    ow_lo, ow_hi = adaptive_span(iw, ow_, w_)
    for nc in range(cuda.blockIdx.z, n_ * c_, cuda.gridDim.z):
        n, c = nc // c_, nc % c_
        acc = gx.dtype.type(0)
        for oh in range(oh_lo, oh_hi):
            h0, h1 = adaptive_span(oh, h_, oh_)
            for ow in range(ow_lo, ow_hi):
                w0, w1 = adaptive_span(ow, w_, ow_)
                acc += gy[n, c, oh, ow] / gx.dtype.type((h1 - h0) * (w1 - w0))
        gx[n, c, ih, iw] = acc


def launch_max_pool2d_forward(x, y, indices, kh, kw, sh, sw, dh, dw, pt, pl, keep,
                              block=(8, 8), stream=0):
    n_, c_, oh_, ow_ = y.shape
    launch(max_pool2d_forward, plane_grid(oh_, ow_, n_ * c_, block), block, stream,
           x, y, indices, kh, kw, sh, sw, dh, dw, pt, pl, keep)


def launch_max_pool2d_backward(gy, x, gx, kh, kw, sh, sw, dh, dw, pt, pl, block=(8, 8),
                               stream=0):
    n_, c_, h_, w_ = gx.shape
    launch(max_pool2d_backward, plane_grid(h_, w_, n_ * c_, block), block, stream,
           gy, x, gx, kh, kw, sh, sw, dh, dw, pt, pl)


def launch_max_pool2d_backward_indices(gy, indices, gx, kh, kw, sh, sw, dh, dw, pt, pl,
                                       block=(8, 8), stream=0):
    n_, c_, h_, w_ = gx.shape
    launch(max_pool2d_backward_indices, plane_grid(h_, w_, n_ * c_, block), block, stream,
           gy, indices, gx, kh, kw, sh, sw, dh, dw, pt, pl)


def launch_avg_pool2d_forward(x, y, kh, kw, sh, sw, pt, pb, pl, pr, count_padding, override,
                              block=(8, 8), stream=0):
    n_, c_, oh_, ow_ = y.shape
    launch(avg_pool2d_forward, plane_grid(oh_, ow_, n_ * c_, block), block, stream,
           x, y, kh, kw, sh, sw, pt, pb, pl, pr, count_padding, override)


def launch_adaptive_avg_pool2d_forward(x, y, block=(8, 8), stream=0):
    n_, c_, oh_, ow_ = y.shape
    launch(adaptive_avg_pool2d_forward, plane_grid(oh_, ow_, n_ * c_, block), block, stream, x,
           y)


def launch_adaptive_avg_pool2d_backward(gy, gx, block=(8, 8), stream=0):
    n_, c_, h_, w_ = gx.shape
    launch(adaptive_avg_pool2d_backward, plane_grid(h_, w_, n_ * c_, block), block, stream, gy,
           gx)


def launch_avg_pool2d_backward(gy, gx, kh, kw, sh, sw, pt, pb, pl, pr, count_padding, override,
                               block=(8, 8), stream=0):
    n_, c_, h_, w_ = gx.shape
    launch(avg_pool2d_backward, plane_grid(h_, w_, n_ * c_, block), block, stream,
           gy, gx, kh, kw, sh, sw, pt, pb, pl, pr, count_padding, override)
