"""Direct convolution on the GPU, forward and backward, one thread per output element.

The CUDA twins of kernels/conv_direct.py, with its signatures and index names: n batch,
c input channel (ci its global index), k output channel, (oh, ow) output pixel, (r, s) kernel
tap, (ih, iw) input pixel. A tap reads the input at ``ih = oh * sh - pt + r * dh`` and
``iw = ow * sw - pl + s * dw``; bottom and right padding are implicit in the output size.
Every thread owns the one element it writes and sums into a private accumulator of the
arrays' dtype, so the backward kernels gather (no atomics, no races).

Launch: ``launch_*`` pick the grid from the shapes; ``block`` is (threads along the columns,
threads along the rows). Planes (n, k) or (n, ci) run on grid z, in a loop of stride gridDim.z
when there are more than MAX_GRID_Z of them.
"""

from .cuda_device import activate, cuda, flat_grid, kernel, launch, output_reading, plane_grid

# The input tile the tiled forward stages in shared memory, in input cells (rows, columns). A
# shared array's shape must be a compile-time constant; 40 x 40 holds the patch of a 16 x 16
# output tile at stride 2 with a 7-tap window, or 8 x 8 outputs at any stride <= 4 with a
# 5-tap window (6.4 KB in float32, 12.8 KB in float64). Launches whose patch does not fit
# take the untiled kernel.
TILE = (40, 40)
# Output channels per thread in the tiled forward, and the most taps (R*S) it stages per filter.
K_TILE, MAX_TAPS = 4, 64


@kernel(4, 4, 1, 4, *["int"] * 8)
def conv2d_forward_nchw(x, w, b, y, sh, sw, pt, pl, dh, dw, groups, act):
    """y = act(b + conv(x, w)), reading the input from global memory.

    Layout: x (N, C, H, W), w OIHW (K, C/groups, R, S), b (K,), y (N, K, OH, OW).
    Each thread owns the pixel y[n, k, oh, ow] (threads over (ow, oh), planes n*K + k on
    grid z): it starts at b[k], adds every tap of its group's input channels (c, r, s),
    skipping taps in the padding, and applies the activation.
    """
    n_, c_, h_, w_ = x.shape
    k_, cg, r_, s_ = w.shape
    oh_, ow_ = y.shape[2], y.shape[3]
    kg = k_ // groups
    ow, oh = cuda.grid(2)
    if oh >= oh_ or ow >= ow_:
        return
    for nk in range(cuda.blockIdx.z, n_ * k_, cuda.gridDim.z):
        n, k = nk // k_, nk % k_
        g = k // kg
        acc = b[k]
        for c in range(cg):
            ci = g * cg + c
            for r in range(r_):
                ih = oh * sh - pt + r * dh
                if ih < 0 or ih >= h_:
                    continue
                for s in range(s_):
                    iw = ow * sw - pl + s * dw
                    if 0 <= iw < w_:
                        acc += x[n, ci, ih, iw] * w[k, c, r, s]
        y[n, k, oh, ow] = activate(acc, act, y.dtype)


@kernel(4, 4, 1, 4, *["int"] * 8)
def conv2d_forward_nchw_tiled(x, w, b, y, sh, sw, pt, pl, dh, dw, groups, act):
    """y = act(b + conv(x, w)), from an input patch and filters staged in shared memory.

    Layout: x (N, C, H, W), w OIHW (K, C/groups, R, S), b (K,), y (N, K, OH, OW).
    A block computes an output tile for K_TILE output channels of one group (planes
    (n, group, channel block) on grid z); each thread owns the pixel (oh, ow) of those
    channels, K_TILE accumulators in registers. Per input channel c of the group, the block
    copies the patch its tile reads (``(rows - 1) * sh + (R - 1) * dh + 1`` by the same in
    columns, clipped to the output, zeros in the padding) into ``TILE`` and the K_TILE filters'
    R x S taps into shared memory; then each thread reads each tap of the patch once and adds
    it, times each filter's weight, to its K_TILE sums. The launcher guarantees that the patch
    and the taps fit (``tile_fits``).
    """
    tile = cuda.shared.array(TILE, x.dtype)
    taps = cuda.shared.array((K_TILE, MAX_TAPS), x.dtype)
    acc = cuda.local.array(K_TILE, y.dtype)
    n_, c_, h_, w_ = x.shape
    k_, cg, r_, s_ = w.shape
    oh_, ow_ = y.shape[2], y.shape[3]
    kg = k_ // groups
    blocks = (kg + K_TILE - 1) // K_TILE  # channel blocks per group
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    oh0, ow0 = cuda.blockIdx.y * cuda.blockDim.y, cuda.blockIdx.x * cuda.blockDim.x
    oh, ow = oh0 + ty, ow0 + tx
    inside = oh < oh_ and ow < ow_
    # the patch of the tile's outputs that lie inside y, and where it starts in x
    ph = (min(cuda.blockDim.y, oh_ - oh0) - 1) * sh + (r_ - 1) * dh + 1
    pw = (min(cuda.blockDim.x, ow_ - ow0) - 1) * sw + (s_ - 1) * dw + 1
    ih0, iw0 = oh0 * sh - pt, ow0 * sw - pl
    thread, threads = ty * cuda.blockDim.x + tx, cuda.blockDim.x * cuda.blockDim.y
    zero = x.dtype.type(0)
    for plane in range(cuda.blockIdx.z, n_ * groups * blocks, cuda.gridDim.z):
        n, g, kb = plane // (groups * blocks), plane // blocks % groups, plane % blocks
        k0 = g * kg + kb * K_TILE
        kn = min(K_TILE, kg - kb * K_TILE)
        for j in range(K_TILE):
            acc[j] = b[k0 + j] if j < kn else zero
        for c in range(cg):
            ci = g * cg + c
            for i in range(thread, ph * pw, threads):
                ih, iw = ih0 + i // pw, iw0 + i % pw
                inside_x = 0 <= ih < h_ and 0 <= iw < w_
                tile[i // pw, i % pw] = x[n, ci, ih, iw] if inside_x else zero
            for i in range(thread, kn * r_ * s_, threads):
                j, rs = i // (r_ * s_), i % (r_ * s_)
                taps[j, rs] = w[k0 + j, c, rs // s_, rs % s_]
            cuda.syncthreads()  # patch and taps staged: every thread of the block may read them
            if inside:
                for r in range(r_):
                    for s in range(s_):
                        v = tile[ty * sh + r * dh, tx * sw + s * dw]
                        for j in range(K_TILE):
                            if j < kn:
                                acc[j] += v * taps[j, r * s_ + s]
            cuda.syncthreads()  # consumed: the next channel may overwrite them
        if inside:
            for j in range(kn):
                y[n, k0 + j, oh, ow] = activate(acc[j], act, y.dtype)


@kernel(4, 4, 1, 4, *["int"] * 8)
def conv2d_forward_nhwc(x, w, b, y, sh, sw, pt, pl, dh, dw, groups, act):
    """y = act(b + conv(x, w)) for channels-last arrays.

    Layout: x (N, H, W, C), w HWIO (R, S, C/groups, K), b (K,), y (N, OH, OW, K).
    Each thread owns y[n, oh, ow, k] (threads over (k, ow), planes n*OH + oh on grid z):
    consecutive threads take consecutive output channels, so their filter loads and output
    stores are coalesced and the input cell they share is one broadcast load.
    """
    n_, h_, w_, c_ = x.shape
    r_, s_, cg, k_ = w.shape
    oh_, ow_ = y.shape[1], y.shape[2]
    k, ow = cuda.grid(2)
    if k >= k_ or ow >= ow_:
        return
    c0 = k // (k_ // groups) * cg
    for plane in range(cuda.blockIdx.z, n_ * oh_, cuda.gridDim.z):
        n, oh = plane // oh_, plane % oh_
        acc = b[k]
        for r in range(r_):
            ih = oh * sh - pt + r * dh
            if ih < 0 or ih >= h_:
                continue
            for s in range(s_):
                iw = ow * sw - pl + s * dw
                if 0 <= iw < w_:
                    for c in range(cg):
                        acc += x[n, ih, iw, c0 + c] * w[r, s, c, k]
        y[n, oh, ow, k] = activate(acc, act, y.dtype)


@kernel(4, 4, 4, *["int"] * 7)
def conv2d_backward_input(gy, w, gx, sh, sw, pt, pl, dh, dw, groups):
    """gx = dL/dx of the convolution, as a gather.

    Layout: gy (N, K, OH, OW), w OIHW (K, C/groups, R, S), gx (N, C, H, W).
    Each thread owns gx[n, ci, ih, iw] (threads over (iw, ih), planes n*C + ci on grid z): it
    sums gy[n, k, oh, ow] * w[k, c, r, s] over the group's k and the taps (r, s) that read
    this pixel, i.e. those with ih + pt - r * dh = oh * sh for an output row 0 <= oh < OH (and
    the same for columns).
    """
    n_, c_, h_, w_ = gx.shape
    k_, cg, r_, s_ = w.shape
    oh_, ow_ = gy.shape[2], gy.shape[3]
    kg = k_ // groups
    iw, ih = cuda.grid(2)
    if ih >= h_ or iw >= w_:
        return
    for nc in range(cuda.blockIdx.z, n_ * c_, cuda.gridDim.z):
        n, ci = nc // c_, nc % c_
        c, g = ci % cg, ci // cg
        acc = gx.dtype.type(0)
        for k in range(g * kg, (g + 1) * kg):
            for r in range(r_):
                oh = output_reading(ih, pt, r * dh, sh, oh_)
                if oh < 0:
                    continue
                for s in range(s_):
                    ow = output_reading(iw, pl, s * dw, sw, ow_)
                    if ow >= 0:
                        acc += gy[n, k, oh, ow] * w[k, c, r, s]
        gx[n, ci, ih, iw] = acc


@kernel(4, 4, 4, *["int"] * 7)
def conv2d_backward_weight(gy, x, gw, sh, sw, pt, pl, dh, dw, groups):
    """gw = dL/dw of the convolution: gy correlated with x over batch and pixels.

    Layout: gy (N, K, OH, OW), x (N, C, H, W), gw OIHW (K, C/groups, R, S).
    Each thread owns one gw[k, c, r, s] (a 1-D grid over the flat OIHW index): it sums
    gy[n, k, oh, ow] * x[n, ci, ih, iw] over n, oh, ow, skipping taps in the padding, in the
    arrays' dtype, where the CPU twin sums in float64: most GPUs run float64 at a small fraction
    of their float32 rate, and this loop is all multiply-adds.
    """
    n_, c_, h_, w_ = x.shape
    k_, cg, r_, s_ = gw.shape
    oh_, ow_ = gy.shape[2], gy.shape[3]
    kg = k_ // groups
    i = cuda.grid(1)
    if i >= k_ * cg * r_ * s_:
        return
    k, c, r, s = i // (cg * r_ * s_), i // (r_ * s_) % cg, i // s_ % r_, i % s_
    ci = k // kg * cg + c
    acc = gw.dtype.type(0)
    for n in range(n_):
        for oh in range(oh_):
            ih = oh * sh - pt + r * dh
            if ih < 0 or ih >= h_:
                continue
            for ow in range(ow_):
                iw = ow * sw - pl + s * dw
                if 0 <= iw < w_:
                    acc += gy[n, k, oh, ow] * x[n, ci, ih, iw]
    gw[k, c, r, s] = acc


def tile_fits(oh_, ow_, r_, s_, sh, sw, dh, dw, block):
    """Whether a block's input patch fits TILE and a filter's taps MAX_TAPS (the tiled
    forward's precondition)."""
    bx, by = block
    ph = (min(by, oh_) - 1) * sh + (r_ - 1) * dh + 1
    pw = (min(bx, ow_) - 1) * sw + (s_ - 1) * dw + 1
    return ph <= TILE[0] and pw <= TILE[1] and r_ * s_ <= MAX_TAPS


def launch_conv2d_forward(x, w, b, y, sh, sw, pt, pl, dh, dw, groups, act, block=(8, 8),
                          tiled=True, stream=0):
    """The NCHW forward: the tiled kernel when asked and its patch fits, else the untiled."""
    n_, k_, oh_, ow_ = y.shape
    if tiled and tile_fits(oh_, ow_, w.shape[2], w.shape[3], sh, sw, dh, dw, block):
        kernel, planes = conv2d_forward_nchw_tiled, n_ * groups * -(-k_ // groups // K_TILE)
    else:
        kernel, planes = conv2d_forward_nchw, n_ * k_
    launch(kernel, plane_grid(oh_, ow_, planes, block), block, stream,
           x, w, b, y, sh, sw, pt, pl, dh, dw, groups, act)


def launch_conv2d_forward_nhwc(x, w, b, y, sh, sw, pt, pl, dh, dw, groups, act, block=(32, 4),
                               stream=0):
    n_, oh_, ow_, k_ = y.shape
    launch(conv2d_forward_nhwc, plane_grid(ow_, k_, n_ * oh_, block), block, stream,
           x, w, b, y, sh, sw, pt, pl, dh, dw, groups, act)


def launch_conv2d_backward_input(gy, w, gx, sh, sw, pt, pl, dh, dw, groups, block=(8, 8),
                                 stream=0):
    n_, c_, h_, w_ = gx.shape
    launch(conv2d_backward_input, plane_grid(h_, w_, n_ * c_, block), block, stream,
           gy, w, gx, sh, sw, pt, pl, dh, dw, groups)


def launch_conv2d_backward_weight(gy, x, gw, sh, sw, pt, pl, dh, dw, groups, block=(8, 8),
                                  stream=0):
    grid, threads = flat_grid(gw.size, block)
    launch(conv2d_backward_weight, grid, threads, stream, gy, x, gw, sh, sw, pt, pl, dh, dw, groups)
