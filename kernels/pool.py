"""Max and average pooling, forward and backward, with the window arithmetic written once: its
functions here (span, divisor, wins) are compiled for the GPU too, by kernels/pool_cuda.py."""

import math

import numpy as np
from numba import njit, prange

from . import CPU_KERNEL

# Plane modes, chosen once per call by _mode. The 2x2 stride-2 window without clipping (LeNet,
# VGG) is run with those sizes as constants, so LLVM unrolls the window loops; everything else
# takes the general path with run-time sizes and clipped windows.
_GENERAL, _UNCLIPPED_2X2 = 0, 1
INT32_MAX = 2**31 - 1


@njit(inline="always", cache=True)
def _mode(h_, w_, oh_, ow_, kh, kw, sh, sw, dh, dw, pt, pl):
    """_UNCLIPPED_2X2 when every window is a whole 2x2, stride-2 block of real cells."""
    square2 = kh == 2 and kw == 2 and sh == 2 and sw == 2 and dh == 1 and dw == 1
    inside = pt == 0 and pl == 0 and 2 * oh_ <= h_ and 2 * ow_ <= w_
    return _UNCLIPPED_2X2 if square2 and inside else _GENERAL


@njit(inline="always", cache=True)
def span(o, stride, before, after, k, dilation, size, clip):
    """Window ``o`` along one axis: its real cells ``range(lo, hi, dilation)`` and its length
    in the padded input.

    The window starts at ``o * stride - before`` and takes every ``dilation``-th cell, ``k``
    of them; ``lo`` is its first tap inside the input. Its padded length stops at
    ``size + after`` (a ceil_mode window may overhang further; that part is never counted;
    averages, the only users of the length, have no dilation). Without ``clip`` the caller
    guarantees the window lies inside the input, and the bounds keep a constant length.
    """
    start = o * stride - before
    end = start + (k - 1) * dilation + 1
    if not clip:
        return start, end, k
    lo = start if start >= 0 else start + (-start + dilation - 1) // dilation * dilation
    return lo, min(end, size), min(end, size + after) - start


@njit(inline="always", cache=True)
def divisor(h0, h1, w0, w1, padded_h, padded_w, count_padding, override):
    """What an average divides by: ``override`` where it is not 0 (PyTorch's divisor_override),
    else the window's cells in the padded input, or its real cells."""
    if override != 0:
        return override
    if count_padding:
        return padded_h * padded_w
    return (h1 - h0) * (w1 - w0)


@njit(inline="always", cache=True)
def wins(v, best):
    """PyTorch's max rule, for a row-major scan: ``v > best or isnan(v)``. So the first maximum
    wins a tie and a NaN wins over numbers (the last NaN, as in PyTorch)."""
    return (v > best) | (v != v)


@njit(inline="always", cache=True)
def argmax(plane, h0, h1, w0, w1, dh, dw):
    """PyTorch's max over ``plane[h0:h1:dh, w0:w1:dw]``, scanned row-major by ``wins``.

    Returns the winner's row, column and value; where only the value is used (the forward),
    LLVM drops the index updates.
    """
    best = plane.dtype.type(-math.inf)
    bh, bw = h0, w0
    for h in range(h0, h1, dh):
        for w in range(w0, w1, dw):
            v = plane[h, w]
            take = wins(v, best)
            best = v if take else best
            bh = h if take else bh
            bw = w if take else bw
    return bh, bw, best


@njit(inline="always", cache=True)
def _max_plane(xp, yp, ip, row, kh, kw, sh, sw, dh, dw, pt, pl, clip, keep):
    """Forward of one plane: yp[oh, ow] = the max of window (oh, ow) of xp and, if ``keep``,
    ip[oh, ow] = its flat index h * W + w in the plane (PyTorch's indices).

    A row's indices are gathered in ``row`` (int32 where the plane allows) and stored after:
    writing int64 indices in the search loop kept LLVM from vectorising it (2.5x slower).
    """
    h_, w_ = xp.shape
    oh_, ow_ = yp.shape
    for oh in range(oh_):
        h0, h1, _ = span(oh, sh, pt, 0, kh, dh, h_, clip)
        for ow in range(ow_):
            w0, w1, _ = span(ow, sw, pl, 0, kw, dw, w_, clip)
            bh, bw, best = argmax(xp, h0, h1, w0, w1, dh, dw)
            yp[oh, ow] = best
            if keep:
                row[ow] = bh * w_ + bw
        if keep:
            for ow in range(ow_):
                ip[oh, ow] = row[ow]


@njit(inline="always", cache=True)
def _max_planes(x, y, indices, nc, row, kh, kw, sh, sw, dh, dw, pt, pl, keep):
    """Forward of plane nc = n*C + c, in the plane mode _mode picks."""
    n_, c_, h_, w_ = x.shape
    oh_, ow_ = y.shape[2], y.shape[3]
    n, c = nc // c_, nc % c_
    xp, yp = x[n, c], y[n, c]
    ip = indices[n, c] if keep else indices[0, 0]
    if _mode(h_, w_, oh_, ow_, kh, kw, sh, sw, dh, dw, pt, pl) == _UNCLIPPED_2X2:
        _max_plane(xp, yp, ip, row, 2, 2, 2, 2, 1, 1, 0, 0, False, keep)
    else:
        _max_plane(xp, yp, ip, row, kh, kw, sh, sw, dh, dw, pt, pl, True, keep)


@njit(inline="always", cache=True)
def _max_plane_backward(gyp, xp, gxp, kh, kw, sh, sw, dh, dw, pt, pl, clip):
    """Backward of one plane: zero gxp, then add each gyp[oh, ow] at its window's argmax.

    Per output row, the argmaxes are found first (into ``rows``/``cols``) and scattered after,
    which keeps the data-dependent stores out of the search loop.
    """
    h_, w_ = xp.shape
    oh_, ow_ = gyp.shape
    rows, cols = np.empty(ow_, np.int64), np.empty(ow_, np.int64)
    gxp[:] = 0
    for oh in range(oh_):
        h0, h1, _ = span(oh, sh, pt, 0, kh, dh, h_, clip)
        for ow in range(ow_):
            w0, w1, _ = span(ow, sw, pl, 0, kw, dw, w_, clip)
            rows[ow], cols[ow], _ = argmax(xp, h0, h1, w0, w1, dh, dw)
        for ow in range(ow_):
            gxp[rows[ow], cols[ow]] += gyp[oh, ow]


@njit(inline="always", cache=True)
def _avg_plane(xp, yp, kh, kw, sh, sw, pt, pb, pl, pr, count_padding, override, clip):
    """Forward of one plane: yp[oh, ow] = the sum of window (oh, ow)'s real cells / divisor."""
    h_, w_ = xp.shape
    oh_, ow_ = yp.shape
    for oh in range(oh_):
        h0, h1, ph = span(oh, sh, pt, pb, kh, 1, h_, clip)
        for ow in range(ow_):
            w0, w1, pw = span(ow, sw, pl, pr, kw, 1, w_, clip)
            acc = xp.dtype.type(0)
            for h in range(h0, h1):
                for w in range(w0, w1):
                    acc += xp[h, w]
            yp[oh, ow] = acc / xp.dtype.type(divisor(h0, h1, w0, w1, ph, pw, count_padding,
                                                     override))


@njit(inline="always", cache=True)
def _avg_plane_backward(gyp, gxp, kh, kw, sh, sw, pt, pb, pl, pr, count_padding, override,
                        clip):
    """Backward of one plane: zero gxp, then add gyp[oh, ow] / divisor to each real cell."""
    h_, w_ = gxp.shape
    oh_, ow_ = gyp.shape
    gxp[:] = 0
    for oh in range(oh_):
        h0, h1, ph = span(oh, sh, pt, pb, kh, 1, h_, clip)
        for ow in range(ow_):
            w0, w1, pw = span(ow, sw, pl, pr, kw, 1, w_, clip)
            share = gyp[oh, ow] / gxp.dtype.type(divisor(h0, h1, w0, w1, ph, pw, count_padding,
                                                         override))
            for h in range(h0, h1):
                for w in range(w0, w1):
                    gxp[h, w] += share


@njit(**CPU_KERNEL)
def max_pool2d_forward(x, y, indices, kh, kw, sh, sw, dh, dw, pt, pl, keep):
    """y[n, c, oh, ow] = max of x[n, c] over window (oh, ow) (kh x kw cells, every dh-th row and
    dw-th column from (oh * sh - pt, ow * sw - pl)), padded cells excluded, and with
    ``keep`` indices[n, c, oh, ow] = where it is, h * W + w within the plane (int64).

    Layout: x (N, C, H, W), y and indices (N, C, OH, OW), NCHW-indexed (an NHWC array arrives
    as a transposed view); without ``keep`` indices may be any 4-D int64 array (unused). Loop
    order: plane n*C + c (parallel), oh, ow, window rows, window columns. Each thread owns whole
    output planes y[n, c] and indices[n, c], and a row of index scratch per plane.
    """
    n_, c_, h_, w_ = x.shape
    ow_ = y.shape[3]
    if not keep:
        no_row = np.empty(0, np.int32)
        for nc in prange(n_ * c_):
            _max_planes(x, y, indices, nc, no_row, kh, kw, sh, sw, dh, dw, pt, pl, False)
    elif h_ * w_ <= INT32_MAX:
        for nc in prange(n_ * c_):
            _max_planes(x, y, indices, nc, np.empty(ow_, np.int32), kh, kw, sh, sw, dh, dw, pt,
                        pl, True)
    else:
        for nc in prange(n_ * c_):
            _max_planes(x, y, indices, nc, np.empty(ow_, np.int64), kh, kw, sh, sw, dh, dw, pt,
                        pl, True)


@njit(**CPU_KERNEL)
def max_pool2d_backward(gy, x, gx, kh, kw, sh, sw, dh, dw, pt, pl):
    """gx[n, c] = sum over windows of gy[n, c, oh, ow] placed at the window's argmax in x.

    Layout: gy (N, C, OH, OW), x and gx (N, C, H, W), NCHW-indexed. Loop order: plane n*C + c
    (parallel); zero the plane; per output row oh, recompute each window's argmax from x with
    the forward's rule, then scatter that row's gy. Each thread owns whole gradient planes
    gx[n, c] and its own row of argmax scratch, so its scatter-add is race-free.
    """
    n_, c_, h_, w_ = x.shape
    oh_, ow_ = gy.shape[2], gy.shape[3]
    mode = _mode(h_, w_, oh_, ow_, kh, kw, sh, sw, dh, dw, pt, pl)
    for nc in prange(n_ * c_):
        gyp, xp, gxp = gy[nc // c_, nc % c_], x[nc // c_, nc % c_], gx[nc // c_, nc % c_]
        if mode == _UNCLIPPED_2X2:
            _max_plane_backward(gyp, xp, gxp, 2, 2, 2, 2, 1, 1, 0, 0, False)
        else:
            _max_plane_backward(gyp, xp, gxp, kh, kw, sh, sw, dh, dw, pt, pl, True)


@njit(**CPU_KERNEL)
def max_pool2d_backward_indices(gy, indices, gx):
    """gx[n, c] = each gy[n, c, oh, ow] added at its forward's index: a scatter through the
    saved indices, nothing recomputed.

    Layout: gy and indices (N, C, OH, OW), NCHW-indexed; gx (N, C, H*W), each plane flat, so
    an index (h * W + w, validated 0 <= i < H*W by the ops layer) addresses it without a
    division (which made this 4x slower). Loop order: plane n*C + c (parallel); zero the plane;
    oh, ow. Each thread owns whole gradient planes gx[n, c], so its scatter is race-free. The
    CUDA twin gathers instead, and so takes gx as (N, C, H, W) and the window.
    """
    n_, c_, oh_, ow_ = gy.shape
    p_ = gx.shape[2]
    for nc in prange(n_ * c_):
        n, c = nc // c_, nc % c_
        for i in range(p_):
            gx[n, c, i] = 0
        for oh in range(oh_):
            for ow in range(ow_):
                gx[n, c, indices[n, c, oh, ow]] += gy[n, c, oh, ow]


@njit(**CPU_KERNEL)
def avg_pool2d_forward(x, y, kh, kw, sh, sw, pt, pb, pl, pr, count_padding, override):
    """y[n, c, oh, ow] = sum of the real cells of window (oh, ow) / the window's divisor
    (``override`` where it is not 0).

    Layout: x (N, C, H, W) and y (N, C, OH, OW), NCHW-indexed. Loop order: plane n*C + c
    (parallel), oh, ow, window rows, window columns. Each thread owns whole output planes
    y[n, c] and sums in an accumulator of x's dtype.
    """
    n_, c_, h_, w_ = x.shape
    oh_, ow_ = y.shape[2], y.shape[3]
    mode = _mode(h_, w_, oh_, ow_, kh, kw, sh, sw, 1, 1, pt, pl)
    for nc in prange(n_ * c_):
        xp, yp = x[nc // c_, nc % c_], y[nc // c_, nc % c_]
        if mode == _UNCLIPPED_2X2:
            _avg_plane(xp, yp, 2, 2, 2, 2, 0, 0, 0, 0, count_padding, override, False)
        else:
            _avg_plane(xp, yp, kh, kw, sh, sw, pt, pb, pl, pr, count_padding, override, True)


@njit(**CPU_KERNEL)
def avg_pool2d_backward(gy, gx, kh, kw, sh, sw, pt, pb, pl, pr, count_padding, override):
    """gx[n, c] = sum over windows of gy[n, c, oh, ow] / divisor (``override`` where it is not
    0), added to each real cell.

    Layout: gy (N, C, OH, OW) and gx (N, C, H, W), NCHW-indexed. Loop order: plane n*C + c
    (parallel); zero the plane; oh, ow, window rows, window columns. Each thread owns whole
    gradient planes gx[n, c], so its scatter-add is race-free.
    """
    n_, c_, oh_, ow_ = gy.shape
    h_, w_ = gx.shape[2], gx.shape[3]
    mode = _mode(h_, w_, oh_, ow_, kh, kw, sh, sw, 1, 1, pt, pl)
    for nc in prange(n_ * c_):
        gyp, gxp = gy[nc // c_, nc % c_], gx[nc // c_, nc % c_]
        if mode == _UNCLIPPED_2X2:
            _avg_plane_backward(gyp, gxp, 2, 2, 2, 2, 0, 0, 0, 0, count_padding, override,
                                False)
        else:
            _avg_plane_backward(gyp, gxp, kh, kw, sh, sw, pt, pb, pl, pr, count_padding,
                                override, True)


@njit(inline="always", cache=True)
def adaptive_span(o, size, out_size):
    """PyTorch's adaptive window ``o`` along one axis: [floor(o * size / out_size),
    ceil((o + 1) * size / out_size))."""
    return (o * size) // out_size, -(-((o + 1) * size) // out_size)


@njit(**CPU_KERNEL)
def adaptive_avg_pool2d_forward(x, y):
    """y[n, c, oh, ow] = the mean of x[n, c] over adaptive window (oh, ow) (:func:`adaptive_span`
    along each axis): windows of near-equal size tiling the plane, overlapping by at most a
    cell where the sizes do not divide; an output of 1x1 is the global average.

    Layout: x (N, C, H, W) and y (N, C, OH, OW), NCHW-indexed. Loop order: plane n*C + c
    (parallel), oh, ow, window rows, window columns. Each thread owns whole output planes
    y[n, c] and sums in an accumulator of x's dtype.
    """
    n_, c_, h_, w_ = x.shape
    oh_, ow_ = y.shape[2], y.shape[3]
    for nc in prange(n_ * c_):
        xp, yp = x[nc // c_, nc % c_], y[nc // c_, nc % c_]
        for oh in range(oh_):
            h0, h1 = adaptive_span(oh, h_, oh_)
            for ow in range(ow_):
                w0, w1 = adaptive_span(ow, w_, ow_)
                acc = xp.dtype.type(0)
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        acc += xp[h, w]
                yp[oh, ow] = acc / xp.dtype.type((h1 - h0) * (w1 - w0))


@njit(**CPU_KERNEL)
def adaptive_avg_pool2d_backward(gy, gx):
    """gx[n, c] = sum over adaptive windows of gy[n, c, oh, ow] / the window's cells, added to
    each of its cells.

    Layout: gy (N, C, OH, OW) and gx (N, C, H, W), NCHW-indexed. Loop order: plane n*C + c
    (parallel); zero the plane; oh, ow, window rows, window columns. Each thread owns whole
    gradient planes gx[n, c], so its scatter-add is race-free.
    """
    n_, c_, oh_, ow_ = gy.shape
    h_, w_ = gx.shape[2], gx.shape[3]
    for nc in prange(n_ * c_):
        gyp, gxp = gy[nc // c_, nc % c_], gx[nc // c_, nc % c_]
        gxp[:] = 0
        for oh in range(oh_):
            h0, h1 = adaptive_span(oh, h_, oh_)
            for ow in range(ow_):
                w0, w1 = adaptive_span(ow, w_, ow_)
                share = gyp[oh, ow] / gxp.dtype.type((h1 - h0) * (w1 - w0))
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        gxp[h, w] += share
