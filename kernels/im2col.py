"""im2col and col2im: lay convolution windows out as matrix columns so BLAS does the GEMM.

The columns of a batch are channel-major, cols (C * R * S, N, OH, OW) (the GPU's twin,
kernels/im2col_cuda.py, lays them out image-major, and says why), seen by the GEMM as
(C * R * S, N * OH * OW): row (c, r, s), column (n, oh, ow) holds
x[n, c, oh * sh - pt + r * dh, ow * sw - pl + s * dw], zero in the padding. The row order matches
an OIHW filter reshaped to (K, C * R * S), so a convolution is one GEMM per group.
conv2d_tiles and conv2d_backward_input_tiles make the same columns a block of output rows at a
time and call BLAS on each block themselves (kernels/gemm.py's gemm_plane), for images whose
columns would not stay in cache.
Index names and the clipped-range idiom follow conv_direct.
"""

from numba import njit, prange

from . import CPU_KERNEL, valid_range
from .activation import activate
from .gemm import gemm_plane


@njit(**CPU_KERNEL)
def im2col(x, cols, r_, s_, sh, sw, pt, pl, dh, dw):
    """Fill cols (C*R*S, N, OH, OW) from x (N, C, H, W), NCHW-indexed (NHWC as a view).

    Loop order: (n, c) in parallel, then r, s, oh, ow innermost (contiguous writes; contiguous
    reads for stride 1). Each task owns cols[(c, r, s), n] for all taps and writes each cell
    once: the input where the tap lands inside it, zero in the padding.
    """
    n_, c_ = x.shape[0], x.shape[1]
    for task in prange(n_ * c_):
        n, c = task // c_, task % c_
        _channel_columns(x, n, c, cols, n, 0, cols.shape[2], r_, s_, sh, sw, pt, pl, dh, dw)


@njit(inline="always", cache=True)
def _channel_columns(x, n, c, cols, slot, oh_lo, oh_, r_, s_, sh, sw, pt, pl, dh, dw):
    """cols[(c, r, s), slot, i, ow] = the tap (r, s) of output pixel (oh_lo + i, ow) of image n
    on channel c, for the rows i of cols, out of oh_ output rows in all."""
    h_, w_ = x.shape[2], x.shape[3]
    rows_here, ow_ = cols.shape[2], cols.shape[3]
    for r in range(r_):
        oh0, rows, ih0 = valid_range(r * dh - pt, sh, h_, oh_)
        for s in range(s_):
            row = (c * r_ + r) * s_ + s
            ow0, count, iw0 = valid_range(s * dw - pl, sw, w_, ow_)
            for k in range(rows_here):
                i = oh_lo + k - oh0
                if i < 0 or i >= rows:
                    for ow in range(ow_):
                        cols[row, slot, k, ow] = 0
                    continue
                ih = ih0 + i * sh
                # ow0 passes the row's end when the tap is in the padding of every output
                # (writing up to it once zeroed the next image's columns)
                for ow in range(min(ow0, ow_)):
                    cols[row, slot, k, ow] = 0
                if sw == 1:
                    for j in range(count):
                        cols[row, slot, k, ow0 + j] = x[n, c, ih, iw0 + j]
                else:
                    for j in range(count):
                        cols[row, slot, k, ow0 + j] = x[n, c, ih, iw0 + j * sw]
                for ow in range(ow0 + count, ow_):
                    cols[row, slot, k, ow] = 0


@njit(**CPU_KERNEL)
def conv2d_tiles(x, wmat, y, b, act, work, ow_, r_, s_, sh, sw, pt, pl, dh, dw):
    """y = act(wmat @ im2col(x) + b), the columns made and multiplied a tile at a time.

    Layout: x (N, C, H, W) NCHW-indexed (NHWC as a view), wmat (K, C*R*S), y (N, K, OH*OW)
    (NHWC's as a view: row- or column-major planes) of OW-wide output rows, b (K,); ``work``
    (T, C*R*S * rows * OW) holds T threads' tiles of columns, each ``rows`` output rows of one
    image.
    Loop order: the T threads in parallel, each taking every T-th (image, row block) task in
    turn: the tile's columns (channel, then taps, rows and columns as im2col), one BLAS call
    into y's columns of those rows, then the bias and activation on them. A tile sized to stay
    in the core's L2 is multiplied where it was written, where im2col's whole image of columns
    (300 MB for a U-Net's last 3x3 layer) goes to memory and back. Each thread owns its tile
    and the output columns of its tasks.
    """
    n_, c_ = x.shape[0], x.shape[1]
    threads, taps, oh_, rows = _tiling(work, wmat, y.shape[2], ow_)
    blocks = -(-oh_ // rows)
    for t in prange(threads):
        for task in range(t, n_ * blocks, threads):
            n, oh_lo = task // blocks, task % blocks * rows
            here = min(rows, oh_ - oh_lo)
            tile = work[t, :taps * here * ow_]
            for c in range(c_):
                _channel_columns(x, n, c, tile.reshape(taps, 1, here, ow_), 0, oh_lo, oh_, r_,
                                 s_, sh, sw, pt, pl, dh, dw)
            out = y[n][:, oh_lo * ow_:(oh_lo + here) * ow_]
            gemm_plane(wmat, tile.reshape(taps, here * ow_), out, 0.0)
            _bias_activation_plane(out, b, act)


@njit(inline="always", cache=True)
def _tiling(work, wmat, pixels, ow_):
    """The tiled kernels' shape: threads, column rows (C*R*S), output rows of the plane of
    ``pixels`` OW-wide, and the output rows a tile of ``work`` holds."""
    taps = wmat.shape[1]
    return work.shape[0], taps, pixels // ow_, work.shape[1] // (taps * ow_)


@njit(inline="always", cache=True)
def _bias_activation_plane(out, b, act):
    """out[k, p] = act(out[k, p] + b[k]) on a (K, P) plane, in its memory order: a row-major
    plane (NCHW) a channel at a time, a column-major one (NHWC) a pixel at a time."""
    k_, p_ = out.shape
    if out.strides[0] >= out.strides[1]:
        for k in range(k_):
            for p in range(p_):
                out[k, p] = activate(out[k, p] + b[k], act, out.dtype)
    else:
        for p in range(p_):
            for k in range(k_):
                out[k, p] = activate(out[k, p] + b[k], act, out.dtype)


@njit(**CPU_KERNEL)
def col2im(cols, gx, r_, s_, sh, sw, pt, pl, dh, dw):
    """gx (N, C, H, W) = the sum of every column entry back at the input pixel it came from.

    Layout: cols (C*R*S, N, OH, OW); gx NCHW-indexed (NHWC as a view).
    Loop order: (n, c) in parallel, then r, s, oh, ow innermost. Each task owns the plane
    gx[n, c], zeroes it and adds its channel's R*S rows into it, so no two tasks write one pixel.
    """
    n_, c_ = gx.shape[0], gx.shape[1]
    for task in prange(n_ * c_):
        n, c = task // c_, task % c_
        _zero_plane(gx, n, c)
        _add_channel_columns(cols, n, 0, cols.shape[2], gx, n, c, r_, s_, sh, sw, pt, pl, dh,
                             dw)


@njit(inline="always", cache=True)
def _zero_plane(gx, n, c):
    for ih in range(gx.shape[2]):
        for iw in range(gx.shape[3]):
            gx[n, c, ih, iw] = 0


@njit(inline="always", cache=True)
def _add_channel_columns(cols, slot, oh_lo, oh_, gx, n, c, r_, s_, sh, sw, pt, pl, dh, dw):
    """gx[n, c] += channel c's columns cols[(c, r, s), slot, i, ow] of output pixels
    (oh_lo + i, ow), for the rows i of cols, out of oh_ output rows in all."""
    h_, w_ = gx.shape[2], gx.shape[3]
    rows_here, ow_ = cols.shape[2], cols.shape[3]
    for r in range(r_):
        oh0, rows, ih0 = valid_range(r * dh - pt, sh, h_, oh_)
        # the tap's valid output rows that fall in this block of rows
        lo, hi = max(oh0, oh_lo), min(oh0 + rows, oh_lo + rows_here)
        for s in range(s_):
            row = (c * r_ + r) * s_ + s
            ow0, count, iw0 = valid_range(s * dw - pl, sw, w_, ow_)
            for oh in range(lo, hi):
                ih = ih0 + (oh - oh0) * sh
                k = oh - oh_lo
                if sw == 1:
                    for j in range(count):
                        gx[n, c, ih, iw0 + j] += cols[row, slot, k, ow0 + j]
                else:
                    for j in range(count):
                        gx[n, c, ih, iw0 + j * sw] += cols[row, slot, k, ow0 + j]


@njit(**CPU_KERNEL)
def conv2d_backward_input_tiles(gy, wmat, gx, work, ow_, r_, s_, sh, sw, pt, pl, dh, dw):
    """gx = col2im(wmat.T @ gy), the columns made and scattered a tile at a time.

    Layout: gy (N, K, OH*OW) (NHWC's as a view) of OW-wide output rows, wmat (K, C*R*S), gx
    (N, C, H, W) NCHW-indexed (NHWC as a view); ``work`` (T, C*R*S * rows * OW) as in
    conv2d_tiles. Loop order: the T threads in parallel, each taking every T-th image: gx[n]
    zeroed, then for each block of ``rows`` output rows, one BLAS call for its columns and
    col2im's scatter of them (channel, taps, rows, columns). A block's windows overlap the
    next one's input rows, so a thread owns whole images of gx (parallel over images only).
    """
    n_, c_ = gx.shape[0], gx.shape[1]
    threads, taps, oh_, rows = _tiling(work, wmat, gy.shape[2], ow_)
    for t in prange(threads):
        for n in range(t, n_, threads):
            for c in range(c_):
                _zero_plane(gx, n, c)
            for oh_lo in range(0, oh_, rows):
                here = min(rows, oh_ - oh_lo)
                tile = work[t, :taps * here * ow_]
                gemm_plane(wmat.T, gy[n][:, oh_lo * ow_:(oh_lo + here) * ow_],
                           tile.reshape(taps, here * ow_), 0.0)
                for c in range(c_):
                    _add_channel_columns(tile.reshape(taps, 1, here, ow_), 0, oh_lo, oh_, gx, n,
                                         c, r_, s_, sh, sw, pt, pl, dh, dw)


@njit(**CPU_KERNEL)
def bias_activation(src, out, b, act):
    """out = act(src + b): the epilogue of a GEMM, run on a chunk while it is in cache.

    Layout: src and out (K, n, P) views of the same shape (out may be src), b (K,).
    Loop order, in out's memory order: (k, n) in parallel, then the P pixels (NCHW); or (n, p)
    in parallel, then the K channels (NHWC: a pass a channel, a strided column, ran 3.5-5x
    slower on 8 x 32 x 32 x 256 and 8 x 64 x 64 x 128 outputs). Each task owns the row
    out[k, n] or the pixel out[:, n, p].
    """
    k_, n_, p_ = out.shape
    if out.strides[0] < out.strides[2]:
        for task in prange(n_ * p_):
            n, p = task // p_, task % p_
            for k in range(k_):
                out[k, n, p] = activate(src[k, n, p] + b[k], act, out.dtype)
        return
    for task in prange(k_ * n_):
        k, n = task // n_, task % n_
        for p in range(p_):
            out[k, n, p] = activate(src[k, n, p] + b[k], act, out.dtype)
