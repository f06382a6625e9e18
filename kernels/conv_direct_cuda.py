"""Direct convolution on the GPU, forward and backward, one thread per output element.

The CUDA twins of kernels/conv_direct.py, with its index names: n batch, c input channel (ci
its global index), k output channel, (oh, ow) output pixel, (r, s) kernel tap, (ih, iw) input
pixel. A tap reads the input at ``ih = oh * sh - pt + r * dh`` and ``iw = ow * sw - pl + s * dw``;
bottom and right padding are implicit in the output size. Every thread owns the one element it
writes and sums into a private accumulator of the arrays' dtype, so the backward kernels gather
(no atomics, no races).

Index arithmetic is 32-bit by construction. Every operand arrives as its memory, a flat
contiguous array (``flat``), beside its strides in elements, so any view (NHWC as a transposed
NCHW view) costs the same; offsets are uint32, hence no 64-bit products and no negative-index
test per access. Divisions are unsigned 32-bit and once per thread or plane: a thread first
finds the range of its taps that fall inside the input (``_inside``), so its inner loops test
no padding and only add strides to offsets. The launchers keep each operand under MAX_SPAN
elements by launching groups of images (``flat_groups``). Innermost loops count down in a
``while``: a ``range`` loop clamps its count on every trip, and LLVM then unrolls it less.

Launch: ``launch_*`` pick the grid from the shapes; ``block`` is (threads along the columns,
threads along the rows). Planes (n, k) or (n, ci) run on grid z, in a loop of stride gridDim.z
when there are more than MAX_GRID_Z of them. Every kernel takes ``sizes`` = (N, C, H, W, K,
C/groups, K/groups, R, S, OH, OW) of its launch and ``window`` = (sh, sw, pt, pl, dh, dw).
"""

from numba import int32, uint32

from .cuda_device import activate, cuda, flat_grid, flat_groups, int32s, kernel, launch, plane_grid

# The input tile the tiled forward stages in shared memory, in input cells (rows, columns). A
# shared array's shape must be a compile-time constant; 40 x 40 holds the patch of a 16 x 16
# output tile at stride 2 with a 7-tap window, or 8 x 8 outputs at any stride <= 4 with a
# 5-tap window (6.4 KB in float32, 12.8 KB in float64). Launches whose patch does not fit
# take the untiled kernel.
TILE = (40, 40)
# Output channels per thread in the tiled forward, and the most taps (R*S) it stages per filter.
K_TILE, MAX_TAPS = 4, 64
# A shared array's size must be a global constant, not an expression.
TILE_CELLS, TAP_CELLS = TILE[0] * TILE[1], MAX_TAPS * K_TILE

_OPERAND = ("flat", "int32x4")  # an operand's memory and its strides (see ``flat``)
_GEOMETRY = ("int32x11", "int32x6")  # sizes and window


@cuda.jit(device=True, inline="always")
def _inside(start, step, size, count):
    """(first, end): the indices i of 0 <= i < count, a range, whose cell ``start + i * step``
    (step > 0) lies in 0 <= cell < size; first <= end, and cell ``start + first * step`` is
    never negative. The dividends are positive: unsigned 32-bit divisions."""
    first = int32(0) if start >= 0 else int32((uint32(-start) + uint32(step - 1)) // uint32(step))
    past = int32(0) if start >= size else int32(
        (uint32(size - start) + uint32(step - 1)) // uint32(step))
    return first, int32(max(first, min(past, count)))


@cuda.jit(device=True, inline="always")
def _window_sum(x, w, acc, x_at, w_at, rows, x_row, w_row, cols, x_col, w_col, channels,
                x_channel, w_channel):
    """acc plus the products of x and w over rows x cols taps x channels, from offsets x_at
    and w_at, each operand stepping by its own stride along each of the three, channels
    innermost."""
    for _ in range(rows):
        x_col_at, w_col_at = x_at, w_at
        for _ in range(cols):
            x_c, w_c, c = x_col_at, w_col_at, channels
            while c > 0:
                acc += x[x_c] * w[w_c]
                x_c, w_c, c = uint32(x_c + x_channel), uint32(w_c + w_channel), int32(c - 1)
            x_col_at, w_col_at = uint32(x_col_at + x_col), uint32(w_col_at + w_col)
        x_at, w_at = uint32(x_at + x_row), uint32(w_at + w_row)
    return acc


@cuda.jit(device=True, inline="always")
def _step_back(q, rem, dq, drem, stride):
    """(quotient, remainder) by ``stride`` of t - d, from t's (q, rem) and d's (dq, drem), all
    floored (0 <= remainders < stride): the backward input's next tap without a division."""
    rem = int32(rem - drem)
    if rem < 0:
        return int32(q - dq - 1), int32(rem + stride)
    return int32(q - dq), rem


@kernel(*_OPERAND, *_OPERAND, 1, *_OPERAND, *_GEOMETRY, "int")
def conv2d_forward_nchw(x, x_strides, w, w_strides, b, y, y_strides, sizes, window, act):
    """y = act(b + conv(x, w)), reading the input from global memory.

    Layout: x (N, C, H, W), w OIHW (K, C/groups, R, S), b (K,), y (N, K, OH, OW).
    Each thread owns the pixel y[n, k, oh, ow] (threads over (ow, oh), planes n*K + k on
    grid z): it starts at b[k] and adds the taps of its group's input channels that lie inside
    x, in the order (r, s, c): the channels innermost, the longest loop where a window has a
    few taps a side. Which taps lie inside depends on (oh, ow) only: it finds them once,
    before the plane loop.
    """
    n_, _, h_, w_, k_, cg, kg, r_, s_, oh_, ow_ = sizes
    sh, sw, pt, pl, dh, dw = window
    xs0, xs1, xs2, xs3 = x_strides
    ws0, ws1, ws2, ws3 = w_strides
    ys0, ys1, ys2, ys3 = y_strides
    ow = int32(cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x)
    oh = int32(cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y)
    if oh >= oh_ or ow >= ow_:
        return
    ih0, iw0 = int32(oh * sh - pt), int32(ow * sw - pl)
    r0, r1 = _inside(ih0, dh, h_, r_)
    s0, s1 = _inside(iw0, dw, w_, s_)
    x_tap = uint32((ih0 + r0 * dh) * xs2 + (iw0 + s0 * dw) * xs3)  # the first tap inside x
    w_tap = uint32(r0 * ws2 + s0 * ws3)
    x_row, x_col = uint32(dh * xs2), uint32(dw * xs3)
    y_pixel = uint32(oh * ys2 + ow * ys3)
    for nk in range(int32(cuda.blockIdx.z), int32(n_ * k_), int32(cuda.gridDim.z)):
        n, k = uint32(uint32(nk) // uint32(k_)), uint32(uint32(nk) % uint32(k_))
        ci0 = uint32(uint32(k) // uint32(kg) * cg)
        x_r, w_r = uint32(n * xs0 + ci0 * xs1 + x_tap), uint32(k * ws0 + w_tap)
        acc = _window_sum(x, w, b[k], x_r, w_r, r1 - r0, x_row, ws2, s1 - s0, x_col, ws3, cg,
                          xs1, ws1)
        y[uint32(n * ys0 + k * ys1 + y_pixel)] = activate(acc, act, y.dtype)


@kernel(*_OPERAND, *_OPERAND, 1, *_OPERAND, *_GEOMETRY, "int")
def conv2d_forward_nchw_tiled(x, x_strides, w, w_strides, b, y, y_strides, sizes, window, act):
    """y = act(b + conv(x, w)), from an input patch and filters staged in shared memory.

    Layout: x (N, C, H, W), w OIHW (K, C/groups, R, S), b (K,), y (N, K, OH, OW).
    A block computes an output tile for K_TILE output channels of one group (planes
    (n, group, channel block) on grid z); each thread owns the pixel (oh, ow) of those
    channels, K_TILE accumulators in registers. Per input channel c of the group, the block
    copies the patch its tile reads (``(rows - 1) * sh + (R - 1) * dh + 1`` by the same in
    columns, clipped to the output, zeros in the padding) into ``TILE``, a thread per cell
    of a block-sized stride, and the K_TILE filters' R x S taps into shared memory, tap-major
    with zeros for channels past the group (so a tap's K_TILE weights are one vector load and
    the sums need no test). Then each thread reads each tap of the patch once, in the order
    (r, s), and adds it times each filter's weight to its K_TILE sums. The launcher
    guarantees that the patch and the taps fit (``tile_fits``).
    """
    tile = cuda.shared.array(TILE_CELLS, x.dtype)
    taps = cuda.shared.array(TAP_CELLS, x.dtype)
    acc = cuda.local.array(K_TILE, y.dtype)
    n_, _, h_, w_, k_, cg, kg, r_, s_, oh_, ow_ = sizes
    sh, sw, pt, pl, dh, dw = window
    xs0, xs1, xs2, xs3 = x_strides
    ws0, ws1, ws2, ws3 = w_strides
    ys0, ys1, ys2, ys3 = y_strides
    blocks = uint32((kg + K_TILE - 1) // K_TILE)  # channel blocks per group
    groups = uint32(uint32(k_) // uint32(kg))
    tx, ty = int32(cuda.threadIdx.x), int32(cuda.threadIdx.y)
    bx, by = int32(cuda.blockDim.x), int32(cuda.blockDim.y)
    oh0, ow0 = int32(cuda.blockIdx.y * by), int32(cuda.blockIdx.x * bx)
    oh, ow = int32(oh0 + ty), int32(ow0 + tx)
    inside = oh < oh_ and ow < ow_
    # the patch of the tile's outputs that lie inside y, and where it starts in x
    ph = int32((min(by, oh_ - oh0) - 1) * sh + (r_ - 1) * dh + 1)
    pw = int32((min(bx, ow_ - ow0) - 1) * sw + (s_ - 1) * dw + 1)
    ih0, iw0 = int32(oh0 * sh - pt), int32(ow0 * sw - pl)
    thread, threads = int32(ty * bx + tx), int32(bx * by)
    window_at = uint32(ty * sh * TILE[1] + tx * sw)  # the thread's first tap in the patch
    tile_row = uint32(dh * TILE[1])
    y_pixel = uint32(oh * ys2 + ow * ys3)
    zero = x.dtype.type(0)
    for plane in range(int32(cuda.blockIdx.z), int32(n_ * groups * blocks),
                       int32(cuda.gridDim.z)):
        n = uint32(uint32(plane) // (groups * blocks))
        g, kb = uint32(uint32(plane) // blocks % groups), uint32(uint32(plane) % blocks)
        k0 = uint32(g * kg + kb * K_TILE)
        kn = int32(min(K_TILE, kg - kb * K_TILE))
        for j in range(K_TILE):
            acc[j] = b[uint32(k0 + j)] if j < kn else zero
        x_c, w_c = uint32(n * xs0 + g * cg * xs1), uint32(k0 * ws0)
        for _ in range(cg):
            for row in range(ty, ph, by):
                ih = int32(ih0 + row)
                row_inside = 0 <= ih < h_
                x_row = uint32(x_c + ih * xs2) if row_inside else uint32(0)
                for col in range(tx, pw, bx):
                    iw = int32(iw0 + col)
                    tile[uint32(row * TILE[1] + col)] = (
                        x[uint32(x_row + iw * xs3)] if row_inside and 0 <= iw < w_ else zero)
            for rs in range(thread, int32(r_ * s_), threads):
                r, s = uint32(uint32(rs) // uint32(s_)), uint32(uint32(rs) % uint32(s_))
                w_tap = uint32(w_c + r * ws2 + s * ws3)
                for j in range(K_TILE):
                    taps[uint32(rs * K_TILE + j)] = (w[uint32(w_tap + j * ws0)] if j < kn
                                                     else zero)
            cuda.syncthreads()  # patch and taps staged: every thread of the block may read them
            if inside:
                at_r, tap = window_at, uint32(0)
                for _ in range(r_):
                    at, s = at_r, s_
                    while s > 0:
                        v = tile[at]
                        # tap + j unwrapped (64-bit, known non-negative): LLVM sees the K_TILE
                        # loads as adjacent and merges them into one vector load
                        for j in range(K_TILE):
                            acc[j] += v * taps[tap + j]
                        at, tap, s = uint32(at + dw), uint32(tap + K_TILE), int32(s - 1)
                    at_r = uint32(at_r + tile_row)
            cuda.syncthreads()  # consumed: the next channel may overwrite them
            x_c, w_c = uint32(x_c + xs1), uint32(w_c + ws1)
        if inside:
            y_at = uint32(n * ys0 + k0 * ys1 + y_pixel)
            for j in range(kn):
                y[uint32(y_at + j * ys1)] = activate(acc[j], act, y.dtype)


@kernel(*_OPERAND, *_OPERAND, 1, *_OPERAND, *_GEOMETRY, "int")
def conv2d_forward_nhwc(x, x_strides, w, w_strides, b, y, y_strides, sizes, window, act):
    """y = act(b + conv(x, w)) for channels-last arrays.

    Layout: x (N, H, W, C), w HWIO (R, S, C/groups, K), b (K,), y (N, OH, OW, K).
    Each thread owns y[n, oh, ow, k] (threads over (k, ow), planes n*OH + oh on grid z):
    consecutive threads take consecutive output channels, so their filter loads and output
    stores are coalesced and the input cell they share is one broadcast load. It adds, in the
    order (r, s, c), the taps inside x: the columns found once per thread, the rows per plane.
    """
    n_, _, h_, w_, k_, cg, kg, r_, s_, oh_, ow_ = sizes
    sh, sw, pt, pl, dh, dw = window
    xs0, xs1, xs2, xs3 = x_strides
    ws0, ws1, ws2, ws3 = w_strides
    ys0, ys1, ys2, ys3 = y_strides
    k = int32(cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x)
    ow = int32(cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y)
    if k >= k_ or ow >= ow_:
        return
    iw0 = int32(ow * sw - pl)
    s0, s1 = _inside(iw0, dw, w_, s_)
    c0 = uint32(uint32(k) // uint32(kg) * cg)
    x_pixel = uint32((iw0 + s0 * dw) * xs2 + c0 * xs3)  # the first column inside x
    w_tap = uint32(s0 * ws1 + k * ws3)
    x_row, x_col = uint32(dh * xs1), uint32(dw * xs2)
    y_k = uint32(ow * ys2 + k * ys3)
    for plane in range(int32(cuda.blockIdx.z), int32(n_ * oh_), int32(cuda.gridDim.z)):
        n, oh = uint32(uint32(plane) // uint32(oh_)), int32(uint32(plane) % uint32(oh_))
        ih0 = int32(oh * sh - pt)
        r0, r1 = _inside(ih0, dh, h_, r_)
        x_r = uint32(n * xs0 + (ih0 + r0 * dh) * xs1 + x_pixel)
        w_r = uint32(r0 * ws0 + w_tap)
        acc = _window_sum(x, w, b[k], x_r, w_r, r1 - r0, x_row, ws0, s1 - s0, x_col, ws1, cg,
                          xs3, ws2)
        y[uint32(n * ys0 + oh * ys1 + y_k)] = activate(acc, act, y.dtype)


@kernel(*_OPERAND, *_OPERAND, *_OPERAND, *_GEOMETRY)
def conv2d_backward_input(gy, gy_strides, w, w_strides, gx, gx_strides, sizes, window):
    """gx = dL/dx of the convolution, as a gather.

    Layout: gy (N, K, OH, OW), w OIHW (K, C/groups, R, S), gx (N, C, H, W).
    Each thread owns gx[n, ci, ih, iw] (threads over (iw, ih), planes n*C + ci on grid z): it
    sums gy[n, k, oh, ow] * w[k, c, r, s] over the taps (r, s) that read this pixel, i.e.
    those with ih + pt - r * dh = oh * sh for an output row 0 <= oh < OH (and the same for
    columns), and for each over the group's k, innermost. It steps the quotient and remainder
    of ih + pt - r * dh by sh from tap to tap, so it divides only before the plane loop.
    """
    n_, c_, h_, w_, _, cg, kg, r_, s_, oh_, ow_ = sizes
    sh, sw, pt, pl, dh, dw = window
    gys0, gys1, gys2, gys3 = gy_strides
    ws0, ws1, ws2, ws3 = w_strides
    gxs0, gxs1, gxs2, gxs3 = gx_strides
    iw = int32(cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x)
    ih = int32(cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y)
    if ih >= h_ or iw >= w_:
        return
    # (quotient, remainder) by the stride of the first tap's ih + pt, and of a tap's step
    oh_first, h_rem = int32(uint32(ih + pt) // uint32(sh)), int32(uint32(ih + pt) % uint32(sh))
    ow_first, w_rem = int32(uint32(iw + pl) // uint32(sw)), int32(uint32(iw + pl) % uint32(sw))
    dh_q, dh_rem = int32(uint32(dh) // uint32(sh)), int32(uint32(dh) % uint32(sh))
    dw_q, dw_rem = int32(uint32(dw) // uint32(sw)), int32(uint32(dw) % uint32(sw))
    gx_pixel = uint32(ih * gxs2 + iw * gxs3)
    zero = gx.dtype.type(0)
    for nc in range(int32(cuda.blockIdx.z), int32(n_ * c_), int32(cuda.gridDim.z)):
        n, ci = uint32(uint32(nc) // uint32(c_)), uint32(uint32(nc) % uint32(c_))
        c, g = uint32(ci % uint32(cg)), uint32(ci // uint32(cg))
        gy_n, w_c = uint32(n * gys0 + g * kg * gys1), uint32(g * kg * ws0 + c * ws1)
        acc = zero
        oh, rem_h = oh_first, h_rem
        for r in range(r_):
            if rem_h == 0 and 0 <= oh < oh_:
                ow, rem_w = ow_first, w_rem
                for s in range(s_):
                    if rem_w == 0 and 0 <= ow < ow_:
                        gy_k = uint32(gy_n + oh * gys2 + ow * gys3)
                        w_k = uint32(w_c + r * ws2 + s * ws3)
                        k = kg
                        while k > 0:
                            acc += gy[gy_k] * w[w_k]
                            gy_k, w_k, k = uint32(gy_k + gys1), uint32(w_k + ws0), int32(k - 1)
                    ow, rem_w = _step_back(ow, rem_w, dw_q, dw_rem, sw)
            oh, rem_h = _step_back(oh, rem_h, dh_q, dh_rem, sh)
        gx[uint32(n * gxs0 + ci * gxs1 + gx_pixel)] = acc


@kernel(*_OPERAND, *_OPERAND, *_OPERAND, *_GEOMETRY, "bool")
def conv2d_backward_weight(gy, gy_strides, x, x_strides, gw, gw_strides, sizes, window,
                           accumulate):
    """gw = dL/dw of the convolution (gw += when ``accumulate``: a later group of images):
    gy correlated with x over batch and pixels.

    Layout: gy (N, K, OH, OW), x (N, C, H, W), gw OIHW (K, C/groups, R, S).
    Each thread owns one gw[k, c, r, s] (a 1-D grid over the flat OIHW index): it sums
    gy[n, k, oh, ow] * x[n, ci, ih, iw] over n, oh, ow, in that order, where (ih, iw) lies
    inside x (the range of those (oh, ow) found once), in the arrays' dtype, where the CPU twin
    sums in float64: most GPUs run float64 at a small fraction of their float32 rate, and this
    loop is all multiply-adds.
    """
    n_, _, h_, w_, k_, cg, kg, r_, s_, oh_, ow_ = sizes
    sh, sw, pt, pl, dh, dw = window
    gys0, gys1, gys2, gys3 = gy_strides
    xs0, xs1, xs2, xs3 = x_strides
    gws0, gws1, gws2, gws3 = gw_strides
    i = uint32(cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x)
    if i >= k_ * cg * r_ * s_:
        return
    s, rest = uint32(i % uint32(s_)), uint32(i // uint32(s_))
    r, rest = uint32(rest % uint32(r_)), uint32(rest // uint32(r_))
    c, k = uint32(rest % uint32(cg)), uint32(rest // uint32(cg))
    ci = uint32(k // uint32(kg) * cg + c)
    ih0, iw0 = int32(r * dh - pt), int32(s * dw - pl)
    oh0, oh1 = _inside(ih0, sh, h_, oh_)
    ow0, ow1 = _inside(iw0, sw, w_, ow_)
    x_at = uint32(ci * xs1 + (ih0 + oh0 * sh) * xs2 + (iw0 + ow0 * sw) * xs3)
    gy_at = uint32(k * gys1 + oh0 * gys2 + ow0 * gys3)
    x_row, x_col = uint32(sh * xs2), uint32(sw * xs3)
    gw_at = uint32(k * gws0 + c * gws1 + r * gws2 + s * gws3)
    acc = gw[gw_at] if accumulate else gw.dtype.type(0)
    for n in range(n_):
        x_r, gy_r = uint32(x_at + n * xs0), uint32(gy_at + n * gys0)
        for _ in range(oh0, oh1):
            x_c, gy_c, ow = x_r, gy_r, int32(ow1 - ow0)
            while ow > 0:
                acc += gy[gy_c] * x[x_c]
                x_c, gy_c, ow = uint32(x_c + x_col), uint32(gy_c + gys3), int32(ow - 1)
            x_r, gy_r = uint32(x_r + x_row), uint32(gy_r + gys2)
    gw[gw_at] = acc


def tile_fits(oh_, ow_, r_, s_, sh, sw, dh, dw, block):
    """Whether a block's input patch fits TILE and a filter's taps MAX_TAPS (the tiled
    forward's precondition)."""
    bx, by = block
    ph = (min(by, oh_) - 1) * sh + (r_ - 1) * dh + 1
    pw = (min(bx, ow_) - 1) * sw + (s_ - 1) * dw + 1
    return ph <= TILE[0] and pw <= TILE[1] and r_ * s_ <= MAX_TAPS


def _geometry(n, c, h, w, k, groups, r, s, oh, ow, sh, sw, pt, pl, dh, dw):
    """A launch's ``sizes`` and ``window`` (see the module docstring)."""
    return (int32s(n, c, h, w, k, c // groups, k // groups, r, s, oh, ow),
            int32s(sh, sw, pt, pl, dh, dw))


def launch_conv2d_forward(x, w, b, y, sh, sw, pt, pl, dh, dw, groups, act, block=(8, 8),
                          tiled=True, stream=0):
    """The NCHW forward: the tiled kernel when asked and its patch fits, else the untiled."""
    _, c_, h_, w_ = x.shape
    k_, _, r_, s_ = w.shape
    oh_, ow_ = y.shape[2:]
    if tiled and tile_fits(oh_, ow_, r_, s_, sh, sw, dh, dw, block):
        kernel, planes = conv2d_forward_nchw_tiled, groups * -(-k_ // groups // K_TILE)
    else:
        kernel, planes = conv2d_forward_nchw, k_
    for images, (x_flat, x_strides, y_flat, y_strides, w_flat, w_strides) in flat_groups(
            (x, y, w[None]), x.shape[0]):
        launch(kernel, plane_grid(oh_, ow_, images * planes, block), block, stream,
               x_flat, x_strides, w_flat, w_strides[1:], b, y_flat, y_strides,
               *_geometry(images, c_, h_, w_, k_, groups, r_, s_, oh_, ow_,
                          sh, sw, pt, pl, dh, dw), act)


def launch_conv2d_forward_nhwc(x, w, b, y, sh, sw, pt, pl, dh, dw, groups, act, block=(32, 4),
                               stream=0):
    _, h_, w_, c_ = x.shape
    r_, s_, _, k_ = w.shape
    oh_, ow_ = y.shape[1:3]
    for images, (x_flat, x_strides, y_flat, y_strides, w_flat, w_strides) in flat_groups(
            (x, y, w[None]), x.shape[0]):
        launch(conv2d_forward_nhwc, plane_grid(ow_, k_, images * oh_, block), block, stream,
               x_flat, x_strides, w_flat, w_strides[1:], b, y_flat, y_strides,
               *_geometry(images, c_, h_, w_, k_, groups, r_, s_, oh_, ow_,
                          sh, sw, pt, pl, dh, dw), act)


def launch_conv2d_backward_input(gy, w, gx, sh, sw, pt, pl, dh, dw, groups, block=(8, 8),
                                 stream=0):
    _, c_, h_, w_ = gx.shape
    k_, _, r_, s_ = w.shape
    oh_, ow_ = gy.shape[2:]
    for images, (gy_flat, gy_strides, gx_flat, gx_strides, w_flat, w_strides) in flat_groups(
            (gy, gx, w[None]), gy.shape[0]):
        launch(conv2d_backward_input, plane_grid(h_, w_, images * c_, block), block, stream,
               gy_flat, gy_strides, w_flat, w_strides[1:], gx_flat, gx_strides,
               *_geometry(images, c_, h_, w_, k_, groups, r_, s_, oh_, ow_,
                          sh, sw, pt, pl, dh, dw))


def launch_conv2d_backward_weight(gy, x, gw, sh, sw, pt, pl, dh, dw, groups, block=(8, 8),
                                  stream=0):
    """gw in one launch per group of images, each after the first adding to it."""
    _, c_, h_, w_ = x.shape
    k_, _, r_, s_ = gw.shape
    oh_, ow_ = gy.shape[2:]
    grid, threads = flat_grid(gw.size, block)
    for z, (images, (gy_flat, gy_strides, x_flat, x_strides, gw_flat, gw_strides)) in enumerate(
            flat_groups((gy, x, gw[None]), gy.shape[0])):
        launch(conv2d_backward_weight, grid, threads, stream, gy_flat, gy_strides, x_flat,
               x_strides, gw_flat, gw_strides[1:],
               *_geometry(images, c_, h_, w_, k_, groups, r_, s_, oh_, ow_,
                          sh, sw, pt, pl, dh, dw), z > 0)
