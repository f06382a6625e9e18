"""Max and average pooling on the GPU, forward and backward, one thread per output element.

The CUDA twins of kernels/pool.py, with its signatures, window arithmetic and PyTorch's
semantics: max ignores padded cells, the first maximum in row-major order wins a tie and a
NaN wins over numbers; an average divides by the window clipped to the padded input
(``count_padding``) or by its real cells. Window (oh, ow) starts at ``oh * sh - pt``,
``ow * sw - pl``. The backward kernels gather: a thread owns one gx element and loops over
the windows that contain it (no atomics).

Launch: ``launch_*`` pick the grid from the shapes; ``block`` is (threads along the columns,
threads along the rows); planes n*C + c run on grid z, in a loop of stride gridDim.z.
"""

import math

from .cuda_device import cuda, launch, plane_grid


@cuda.jit(device=True, inline="always")
def _span(o, stride, before, after, k, size):
    """Window ``o`` along one axis: its real cells ``[lo, hi)`` and its length in the padded
    input (which stops at ``size + after``; a ceil_mode overhang is never counted)."""
    start = o * stride - before
    end = min(start + k, size + after)
    return max(start, 0), min(end, size), end - start


@cuda.jit(device=True, inline="always")
def _windows(i, stride, before, k, out_size):
    """The windows ``[lo, hi)`` along one axis that contain input cell ``i``."""
    first = max(0, i + before - k + 1)
    return (first + stride - 1) // stride, min(out_size, (i + before) // stride + 1)


@cuda.jit(device=True, inline="always")
def _divisor(h0, h1, w0, w1, padded_h, padded_w, count_padding):
    """Cells an average divides by: the window in the padded input, or its real cells."""
    if count_padding:
        return padded_h * padded_w
    return (h1 - h0) * (w1 - w0)


@cuda.jit(device=True, inline="always")
def _argmax(x, n, c, h0, h1, w0, w1):
    """PyTorch's max over ``x[n, c, h0:h1, w0:w1]``: row-major scan, ``v > best or isnan(v)``.
    Returns the winner's row, column and value."""
    best = x.dtype.type(-math.inf)
    bh, bw = h0, w0
    for h in range(h0, h1):
        for w in range(w0, w1):
            v = x[n, c, h, w]
            if v > best or v != v:
                best, bh, bw = v, h, w
    return bh, bw, best


@cuda.jit(cache=True)
def max_pool2d_forward(x, y, kh, kw, sh, sw, pt, pl):
    """y[n, c, oh, ow] = max of x[n, c] over window (oh, ow), padded cells excluded.

    Layout: x (N, C, H, W), y (N, C, OH, OW). Each thread owns y[n, c, oh, ow] (threads over
    (ow, oh), planes n*C + c on grid z).
    """
    n_, c_, h_, w_ = x.shape
    oh_, ow_ = y.shape[2], y.shape[3]
    ow, oh = cuda.grid(2)
    if oh >= oh_ or ow >= ow_:
        return
    h0, h1, _ = _span(oh, sh, pt, 0, kh, h_)
    w0, w1, _ = _span(ow, sw, pl, 0, kw, w_)
    for nc in range(cuda.blockIdx.z, n_ * c_, cuda.gridDim.z):
        n, c = nc // c_, nc % c_
        y[n, c, oh, ow] = _argmax(x, n, c, h0, h1, w0, w1)[2]


@cuda.jit(cache=True)
def max_pool2d_backward(gy, x, gx, kh, kw, sh, sw, pt, pl):
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
    oh_lo, oh_hi = _windows(ih, sh, pt, kh, oh_)
    ow_lo, ow_hi = _windows(iw, sw, pl, kw, ow_)
    for nc in range(cuda.blockIdx.z, n_ * c_, cuda.gridDim.z):
        n, c = nc // c_, nc % c_
        acc = gx.dtype.type(0)
        for oh in range(oh_lo, oh_hi):
            h0, h1, _ = _span(oh, sh, pt, 0, kh, h_)
            for ow in range(ow_lo, ow_hi):
                w0, w1, _ = _span(ow, sw, pl, 0, kw, w_)
                bh, bw, _ = _argmax(x, n, c, h0, h1, w0, w1)
                if bh == ih and bw == iw:
                    acc += gy[n, c, oh, ow]
        gx[n, c, ih, iw] = acc


@cuda.jit(cache=True)
def avg_pool2d_forward(x, y, kh, kw, sh, sw, pt, pb, pl, pr, count_padding):
    """y[n, c, oh, ow] = sum of the real cells of window (oh, ow) / the window's divisor.

    Layout: x (N, C, H, W), y (N, C, OH, OW). Each thread owns y[n, c, oh, ow] (threads over
    (ow, oh), planes on grid z) and sums in an accumulator of x's dtype.
    """
    n_, c_, h_, w_ = x.shape
    oh_, ow_ = y.shape[2], y.shape[3]
    ow, oh = cuda.grid(2)
    if oh >= oh_ or ow >= ow_:
        return
    h0, h1, ph = _span(oh, sh, pt, pb, kh, h_)
    w0, w1, pw = _span(ow, sw, pl, pr, kw, w_)
    divisor = y.dtype.type(_divisor(h0, h1, w0, w1, ph, pw, count_padding))
    for nc in range(cuda.blockIdx.z, n_ * c_, cuda.gridDim.z):
        n, c = nc // c_, nc % c_
        acc = x.dtype.type(0)
        for h in range(h0, h1):
            for w in range(w0, w1):
                acc += x[n, c, h, w]
        y[n, c, oh, ow] = acc / divisor


@cuda.jit(cache=True)
def avg_pool2d_backward(gy, gx, kh, kw, sh, sw, pt, pb, pl, pr, count_padding):
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
            h0, h1, ph = _span(oh, sh, pt, pb, kh, h_)
            for ow in range(ow_lo, ow_hi):
                w0, w1, pw = _span(ow, sw, pl, pr, kw, w_)
                divisor = gx.dtype.type(_divisor(h0, h1, w0, w1, ph, pw, count_padding))
                acc += gy[n, c, oh, ow] / divisor
        gx[n, c, ih, iw] = acc


def launch_max_pool2d_forward(x, y, kh, kw, sh, sw, pt, pl, block=(8, 8), stream=0):
    n_, c_, oh_, ow_ = y.shape
    launch(max_pool2d_forward, plane_grid(oh_, ow_, n_ * c_, block), block, stream,
           x, y, kh, kw, sh, sw, pt, pl)


def launch_max_pool2d_backward(gy, x, gx, kh, kw, sh, sw, pt, pl, block=(8, 8), stream=0):
    n_, c_, h_, w_ = gx.shape
    launch(max_pool2d_backward, plane_grid(h_, w_, n_ * c_, block), block, stream,
           gy, x, gx, kh, kw, sh, sw, pt, pl)


def launch_avg_pool2d_forward(x, y, kh, kw, sh, sw, pt, pb, pl, pr, count_padding,
                              block=(8, 8), stream=0):
    n_, c_, oh_, ow_ = y.shape
    launch(avg_pool2d_forward, plane_grid(oh_, ow_, n_ * c_, block), block, stream,
           x, y, kh, kw, sh, sw, pt, pb, pl, pr, count_padding)


def launch_avg_pool2d_backward(gy, gx, kh, kw, sh, sw, pt, pb, pl, pr, count_padding,
                               block=(8, 8), stream=0):
    n_, c_, h_, w_ = gx.shape
    launch(avg_pool2d_backward, plane_grid(h_, w_, n_ * c_, block), block, stream,
           gy, gx, kh, kw, sh, sw, pt, pb, pl, pr, count_padding)
