"""Winograd's minimal filtering F(m x m, 3 x 3) (Lavin and Gray, CVPR 2016): the filter, input
and output transforms of a 3x3, stride-1, dilation-1 convolution; the products between them
(a GEMM per position, through BLAS) are fastconv/implementations/winograd.py's.

A tile of ALPHA x ALPHA input pixels (ALPHA = TILE + 2) gives TILE x TILE outputs. Its input
transform is V = B^T d B, its output transform y = A^T m A, each ALPHA^2 = POSITIONS values
per tile and channel; between them, for each position, m = U V summed over the input channels
(a GEMM). Tile (th, tw) of an image reads input rows th * TILE - pt + i and columns
tw * TILE - pl + j (zero outside the input, so pt and pl may be negative: a crop) and writes
outputs th * TILE + i, tw * TILE + j below the output's size (a partial edge tile is computed
whole and cropped).

The transforms are sums and differences with small integer weights (G's, the filters', with
fractions), written out (no multiplication by a matrix's zeros, which would make 0 x inf =
NaN of an input's infinity in positions it does not reach, and cost time). A block of LANES
tiles (NCHW: consecutive tiles of a tile row), LANES channels (NHWC) or LANES filters is
transformed at once, the lane innermost, so each step is one SIMD operation. The default
variant is F(2x2, 3x3) (ALPHA 4); ``*_f4`` are F(4x4, 3x3) (ALPHA 6), compiled from the same
code with the other transforms (variants.py).

Layouts: x and y NCHW-indexed (NHWC as a transposed view); v and m of a chunk of tile rows,
tile (jr, tw) of the chunk's tile row jr at jr * TW + tw, position (a, b) at a * ALPHA + b:
(POSITIONS, C, T) and (POSITIONS, K, T) for NCHW, (POSITIONS, T, C) and (POSITIONS, T, K) for
NHWC, so the lanes are contiguous in both.
"""

import numpy as np
from numba import carray, njit, prange

from . import CPU_KERNEL, VECTOR_LANES, stack_array
from .activation import activate, activate_run
from .variants import variant
from .vector_moves import move_run, transpose_block

TILE = 2  # outputs a tile side
ALPHA = TILE + 2  # inputs a tile side
POSITIONS = ALPHA * ALPHA
LANES = VECTOR_LANES  # tiles (NCHW) or channels (NHWC) transformed together
PITCH = LANES * ALPHA  # a row of the NCHW input buffer: the columns a block's tiles read, and more


@njit(inline="always", cache=True)
def _input_f2(s, i, step, o, j, out_step):
    """o[j + q * out_step] = (B^T d)_q of d_p = s[i + p * step], F(2x2, 3x3)'s
    B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]."""
    d0, d1, d2, d3 = s[i], s[i + step], s[i + 2 * step], s[i + 3 * step]
    o[j] = d0 - d2
    o[j + out_step] = d1 + d2
    o[j + 2 * out_step] = d2 - d1
    o[j + 3 * out_step] = d1 - d3


@njit(inline="always", cache=True)
def _filter_f2(s, i, step, o, j, out_step):
    """o[j + q * out_step] = (G g)_q of g_p = s[i + p * step] (float64), F(2x2, 3x3)'s
    G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]."""
    g0, g1, g2 = s[i], s[i + step], s[i + 2 * step]
    o[j] = g0
    o[j + out_step] = 0.5 * (g0 + g1 + g2)
    o[j + 2 * out_step] = 0.5 * (g0 - g1 + g2)
    o[j + 3 * out_step] = g2


@njit(inline="always", cache=True)
def _output_f2(s, i, step, o, j, out_step):
    """o[j + q * out_step] = (A^T m)_q, F(2x2, 3x3)'s A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]."""
    m0, m1, m2, m3 = s[i], s[i + step], s[i + 2 * step], s[i + 3 * step]
    o[j] = m0 + m1 + m2
    o[j + out_step] = m1 - m2 - m3


@njit(inline="always", cache=True)
def _input_f4(s, i, step, o, j, out_step):
    """F(4x4, 3x3)'s B^T (points 0, 1, -1, 2, -2, inf): rows [4, 0, -5, 0, 1, 0],
    [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0],
    [0, 4, 0, -5, 0, 1]."""
    two, four, five = o.dtype.type(2), o.dtype.type(4), o.dtype.type(5)
    d0, d1, d2 = s[i], s[i + step], s[i + 2 * step]
    d3, d4, d5 = s[i + 3 * step], s[i + 4 * step], s[i + 5 * step]
    o[j] = four * d0 - five * d2 + d4
    o[j + out_step] = d3 + d4 - four * (d1 + d2)
    o[j + 2 * out_step] = four * (d1 - d2) + d4 - d3
    o[j + 3 * out_step] = two * (d3 - d1) + d4 - d2
    o[j + 4 * out_step] = two * (d1 - d3) + d4 - d2
    o[j + 5 * out_step] = four * d1 - five * d3 + d5


@njit(inline="always", cache=True)
def _filter_f4(s, i, step, o, j, out_step):
    """F(4x4, 3x3)'s G: rows [1/4, 0, 0], [-1/6, -1/6, -1/6], [-1/6, 1/6, -1/6],
    [1/24, 1/12, 1/6], [1/24, -1/12, 1/6], [0, 0, 1]."""
    g0, g1, g2 = s[i], s[i + step], s[i + 2 * step]
    sixth, twelfth, twenty_fourth = 1 / 6, 1 / 12, 1 / 24  # G's entries, rounded as in G
    o[j] = 0.25 * g0
    o[j + out_step] = -sixth * (g0 + g1 + g2)
    o[j + 2 * out_step] = -sixth * (g0 - g1 + g2)
    o[j + 3 * out_step] = twenty_fourth * g0 + twelfth * g1 + sixth * g2
    o[j + 4 * out_step] = twenty_fourth * g0 - twelfth * g1 + sixth * g2
    o[j + 5 * out_step] = g2


@njit(inline="always", cache=True)
def _output_f4(s, i, step, o, j, out_step):
    """F(4x4, 3x3)'s A^T: rows [1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
    [0, 1, -1, 8, -8, 1]."""
    two, four, eight = o.dtype.type(2), o.dtype.type(4), o.dtype.type(8)
    m0, m1, m2 = s[i], s[i + step], s[i + 2 * step]
    m3, m4, m5 = s[i + 3 * step], s[i + 4 * step], s[i + 5 * step]
    plus, minus = m1 + m2, m1 - m2
    plus34, minus34 = m3 + m4, m3 - m4
    o[j] = m0 + plus + plus34
    o[j + out_step] = minus + two * minus34
    o[j + 2 * out_step] = plus + four * plus34
    o[j + 3 * out_step] = minus + eight * minus34 + m5


# the variant's transforms (replaced in *_f4)
FILTER_1D, INPUT_1D, OUTPUT_1D = _filter_f2, _input_f2, _output_f2


@njit(inline="always", cache=True)
def _transform_in(d, t):
    """d (ALPHA, ALPHA, LANES) flat = B^T d B, t scratch: columns then rows, lanes innermost."""
    row, col = ALPHA * LANES, LANES
    for b in range(ALPHA):
        for lane in range(LANES):
            INPUT_1D(d, b * col + lane, row, t, b * col + lane, row)
    for a in range(ALPHA):
        for lane in range(LANES):
            INPUT_1D(t, a * row + lane, col, d, a * row + lane, col)


@njit(inline="always", cache=True)
def _transform_out(m, t):
    """m (ALPHA, ALPHA, LANES) flat -> its first TILE x TILE x LANES = A^T m A, t scratch."""
    row, col = ALPHA * LANES, LANES
    for b in range(ALPHA):
        for lane in range(LANES):
            OUTPUT_1D(m, b * col + lane, row, t, b * col + lane, row)
    for a in range(TILE):
        for lane in range(LANES):
            OUTPUT_1D(t, a * row + lane, col, m, a * TILE * LANES + lane, col)


@njit(inline="always", cache=True)
def _zeros_of(d):
    """The sum of d's POSITIONS x LANES values times 0: 0, or NaN where one is infinite or NaN
    (x * 0 folds to 0 only under fastmath's nnan and nsz, which the kernels leave off)."""
    zero, total = d.dtype.type(0), d.dtype.type(0)
    for e in range(POSITIONS * LANES):
        total += d[e] * zero
    return total


@njit(**CPU_KERNEL)
def filter_transform(taps, u, checks):
    """u[:, f] = G g G^T of every filter g, in float64, rounded once to u's dtype; checks[blk]
    the sum of block blk's values of u times 0 (NaN where one is not finite, else 0).

    Layout: taps (F, 9) filter f's taps (r, s) at r * 3 + s (any strides: a view); u
    (POSITIONS, F); checks (blocks,) float64.
    Loop order: blocks of LANES filters in parallel, then a filter a lane: its taps loaded, G g
    (ALPHA x 3) and (G g) G^T (ALPHA x ALPHA) in float64 scalars, put in its lane; then
    POSITIONS runs of the block's filters stored. Each task owns u's columns of its filters
    and its cell of checks. LLVM vectorises the loop over the lanes, a filter an element of
    float64 vectors. Written as the other transforms (each step a loop over the lanes), it
    unrolled those loops and left them scalar (vmulsd, vaddsd): ResNet-18's 512 x 512 layer4
    filters took 11.1 ms on one Zen 3 thread, 7.9 so. With G a matrix in memory, LLVM turned
    the lanes' loops into gathers and scatters on the stack: 12.5 ms on one Xeon thread.
    """
    f_ = taps.shape[0]
    for blk in prange((f_ + LANES - 1) // LANES):
        g = carray(stack_array(1, 9, np.float64), 9)
        t = carray(stack_array(ALPHA, 3, np.float64), ALPHA * 3)
        r = carray(stack_array(ALPHA, ALPHA, np.float64), POSITIONS)
        o = carray(stack_array(POSITIONS, LANES, u.dtype), POSITIONS * LANES)
        for lane in range(LANES):  # lanes past the last filter repeat it
            f = min(blk * LANES + lane, f_ - 1)
            for q in range(9):
                g[q] = taps[f, q]
            for s in range(3):  # t = G g, a column at a time
                FILTER_1D(g, s, 3, t, s, 3)
            for a in range(ALPHA):  # r = t G^T, a row at a time
                FILTER_1D(t, a * 3, 1, r, a * ALPHA, 1)
            for p in range(POSITIONS):
                o[p * LANES + lane] = r[p]
        used = min(LANES, f_ - blk * LANES)
        for p in range(POSITIONS):
            move_run(o, p * LANES, u, p * f_ + blk * LANES, used)
        checks[blk] = _zeros_of(o)


@njit(**CPU_KERNEL)
def input_transform_channels(x, v, checks, row0, th_, tw_, pt, pl):
    """v[:, tile, c] = B^T d B of every input tile d of the chunk's tile rows, each channel,
    for NHWC: lanes over channels; checks[task] its values' sum times 0 (NaN where one is
    not finite: an input's NaN or infinity, or an overflow).

    Layout: x (N, C, H, W) NCHW-indexed (an NHWC array's transposed view); v (POSITIONS, rows *
    tw_, C) for the chunk's rows of tiles, global tile rows row0 ... (row j is image j // th_,
    tile row j % th_).
    Loop order: (tile row, tile) in parallel, then blocks of LANES channels, the lane
    innermost. Each task owns v at its tile x every channel, and checks[task].
    """
    n_c, h_, w_ = x.shape[1], x.shape[2], x.shape[3]
    for task in prange(v.shape[1]):
        jr, tw = task // tw_, task % tw_
        n, th = (row0 + jr) // th_, (row0 + jr) % th_
        d = carray(stack_array(POSITIONS, LANES, v.dtype), POSITIONS * LANES)
        t = carray(stack_array(POSITIONS, LANES, v.dtype), POSITIONS * LANES)
        zero = v.dtype.type(0)
        check = zero
        for first in range(0, n_c, LANES):
            used = min(LANES, n_c - first)  # lanes past: zeros
            for a in range(ALPHA):
                ih = th * TILE - pt + a
                row_in = 0 <= ih < h_
                for b in range(ALPHA):
                    iw = tw * TILE - pl + b
                    inside = row_in and 0 <= iw < w_
                    base = (a * ALPHA + b) * LANES
                    for lane in range(LANES):
                        d[base + lane] = x[n, first + lane, ih, iw] if (
                            inside and lane < used) else zero
            _transform_in(d, t)
            check += _zeros_of(d)
            for p in range(POSITIONS):
                for lane in range(used):
                    v[p, task, first + lane] = d[p * LANES + lane]
        checks[task] = check


@njit(**CPU_KERNEL)
def output_transform_channels(m, y, b, act, row0, th_, tw_):
    """y = act(b + A^T m A) of every tile of the chunk's tile rows, cropped to y's size, for
    NHWC: lanes over channels.

    Layout: m (POSITIONS, rows * tw_, K) as v of :func:`input_transform_channels`; y (N, K, OH,
    OW) NCHW-indexed (an NHWC array's transposed view); b (K,).
    Loop order: (tile row, tile) in parallel, then blocks of LANES channels, the lane
    innermost. Each task owns y at its tile's pixels x every channel.
    """
    k_, oh_, ow_ = y.shape[1], y.shape[2], y.shape[3]
    for task in prange(m.shape[1]):
        jr, tw = task // tw_, task % tw_
        n, th = (row0 + jr) // th_, (row0 + jr) % th_
        s = carray(stack_array(POSITIONS, LANES, m.dtype), POSITIONS * LANES)
        t = carray(stack_array(POSITIONS, LANES, m.dtype), POSITIONS * LANES)
        zero = m.dtype.type(0)
        for first in range(0, k_, LANES):
            used = min(LANES, k_ - first)  # lanes past: zeros
            for p in range(POSITIONS):
                for lane in range(LANES):
                    s[p * LANES + lane] = m[p, task, first + lane] if lane < used else zero
            _transform_out(s, t)
            for i in range(min(TILE, oh_ - th * TILE)):
                for j in range(min(TILE, ow_ - tw * TILE)):
                    for lane in range(used):
                        k = first + lane
                        y[n, k, th * TILE + i, tw * TILE + j] = activate(
                            s[(i * TILE + j) * LANES + lane] + b[k], act, y.dtype)


@njit(inline="always", cache=True)
def packed_rows(tw_):
    """Tile rows of tw_ tiles one block of LANES lanes of the NCHW kernels takes: as many as
    fit, row r's tile t in lane r * tw_ + t, two or more where tw_ <= LANES / 2; else one, in
    blocks of LANES tiles. A 14 x 14 image's tile row of F(4x4) is 4 tiles: alone, 12 of 16
    lanes were transformed for nothing, and its input transform took as long as a 56 x 56
    image's on a third of the tiles. Packed with a gap lane after each row (whose tile would
    have read the next row's first columns from a buffer of evenly spaced tiles), the suite's
    3x3 layers of 28 x 28 and smaller ran 1.03x faster on one Xeon thread, 1.05-1.07x the 14 x
    14 ones (benchmarks/results/cpu-winograd.md); but a 7 x 7 image's rows of two tiles then
    filled 4 of AVX2's 8 lanes, and its transforms took 2.8x a 56 x 56 image's time a tile on a
    Zen 3. Each lane now reads its tile at its own offset (:func:`input_transform_rows`)."""
    return max(1, LANES // tw_)


@njit(inline="always", cache=True)
def row_groups(rows_, tw_):
    """The NCHW kernels' groups of packed_rows(tw_) tile rows among ``rows_``: their tasks a
    channel, and the checks a channel the caller holds for them."""
    packed = packed_rows(tw_)
    return (rows_ + packed - 1) // packed


@njit(inline="always", cache=True)
def _row_place(jr, row0, th_):
    """(image, tile row of the image) of the chunk's tile row jr."""
    return (row0 + jr) // th_, (row0 + jr) % th_


@njit(**CPU_KERNEL)
def input_transform_rows(x, v, checks, row0, th_, tw_, pt, pl):
    """v[:, c, tile] = B^T d B of every input tile d of the chunk's tile rows, each channel,
    for NCHW: lanes over tile rows' tiles; checks[task] its values' sum times 0, as
    :func:`input_transform_channels`'.

    Layout: x (N, C, H, W) and v (POSITIONS, C, rows * tw_), both C-contiguous, for the
    chunk's rows of tiles, global tile rows row0 ... (row j is image j // th_, tile row
    j % th_); checks (C * groups,), groups of packed_rows(tw_) tile rows.
    Loop order: (channel, group of tile rows) in parallel, a channel's groups one after
    another (its plane read down, as the prefetchers follow: channel-innermost tasks jumped a
    plane each, 2.4 ms for ResNet-18's 8 x 64 x 56 x 56 layer on two Xeon threads, 1.0 so),
    then blocks of LANES lanes: a group of several short rows in one block, row r's tiles from
    lane r * tw_ (:func:`packed_rows`), or one row's tiles LANES at a time. A block's ALPHA
    input rows are moved by whole vectors into a buffer of PITCH columns a row (zeros past the
    image; a packed row's segment of tw_ * TILE + 2 columns after the row before's), each
    buffer row turned into its tiles' ALPHA columns a lane by one transpose in registers (lane
    l's column b is the buffer's element offsets[l] + b, row r's tile t at r * (tw_ * TILE +
    2) + t * TILE), the transform on whole lanes, and POSITIONS runs of the block's tiles
    stored (a group's tiles are as consecutive in v as in the lanes). Each task owns v at its
    tiles x its channel, and checks[task].
    An element at a time, the tiles' gather took 7.7 ms of that layer's 19 ms forward on one
    thread, its GEMMs 4.2.
    """
    n_c, h_, w_ = x.shape[1], x.shape[2], x.shape[3]
    tiles = v.shape[2]
    rows_ = tiles // tw_
    packed, groups_ = packed_rows(tw_), row_groups(rows_, tw_)
    # a row segment's columns: a packed row's whole, else a block's LANES tiles'
    width = tw_ * TILE + ALPHA - TILE if packed > 1 else LANES * TILE + ALPHA - TILE
    for task in prange(n_c * groups_):
        c, group = task // groups_, task % groups_  # a channel's groups in turn
        count = min(packed, rows_ - group * packed)
        rows = carray(stack_array(ALPHA, PITCH, v.dtype), ALPHA * PITCH)
        offsets = carray(stack_array(1, LANES, np.uint64), LANES)  # packed: lane l's tile
        for lane in range(LANES):  # lanes past the tiles read zeros or tiles: never stored
            offsets[lane] = lane // tw_ * width + lane % tw_ * TILE
        d = carray(stack_array(POSITIONS, LANES, v.dtype), POSITIONS * LANES)
        t = carray(stack_array(POSITIONS, LANES, v.dtype), POSITIONS * LANES)
        zero = v.dtype.type(0)
        check = zero
        for blk in range((tw_ + LANES - 1) // LANES if packed == 1 else 1):
            first = blk * LANES
            col0 = first * TILE - pl  # the image column of a segment's first
            lo = max(0, -col0)  # a segment's columns lo ... hi are the image's
            hi = max(lo, min(width, w_ - col0))
            for a in range(ALPHA):
                for k in range(PITCH):
                    rows[a * PITCH + k] = zero
                for r in range(count):
                    n, th = _row_place(group * packed + r, row0, th_)
                    ih = th * TILE - pt + a
                    segment = a * PITCH + r * width
                    if 0 <= ih < h_:
                        plane = (n * n_c + c) * h_ * w_
                        for k in range(lo, hi, LANES):
                            move_run(x, plane + ih * w_ + col0 + k, rows, segment + k,
                                     min(LANES, hi - k))
                # evenly spaced tiles by a constant step: offsets loaded cost 10-15% there
                if packed > 1:
                    transpose_block(rows, np.uint64(a * PITCH), offsets, d,
                                    np.uint64(a * ALPHA * LANES), np.uint64(LANES), LANES, ALPHA)
                else:
                    transpose_block(rows, np.uint64(a * PITCH), np.uint64(TILE), d,
                                    np.uint64(a * ALPHA * LANES), np.uint64(LANES), LANES, ALPHA)
            _transform_in(d, t)
            check += _zeros_of(d)  # the lanes past the tiles too: transforms of zeros or tiles
            # the group's tiles are consecutive in v as in the lanes: one run a position
            tile0, used = group * packed * tw_ + first, min(LANES, count * tw_ - first)
            for p in range(POSITIONS):
                move_run(d, p * LANES, v, (p * n_c + c) * tiles + tile0, used)
        checks[task] = check


@njit(**CPU_KERNEL)
def output_transform_rows(m, y, b, act, row0, th_, tw_):
    """y = act(b + A^T m A) of every tile of the chunk's tile rows, cropped to y's size, for
    NCHW: lanes over tile rows' tiles, as in :func:`input_transform_rows`.

    Layout: m (POSITIONS, K, rows * tw_) as v of :func:`input_transform_rows`; y (N, K, OH,
    OW), both C-contiguous; b (K,).
    Loop order: (channel, group of tile rows) in parallel, a channel's groups one after
    another, then blocks of LANES lanes (packed_rows): POSITIONS runs of each row's tiles
    loaded, the transform, bias and activation on whole lanes, then each of a row's TILE
    output rows stored by a transpose in registers (lane l's TILE values to columns l * TILE
    ...), a partial last tile's columns one at a time. Each task owns y at its tiles' pixels x
    its channel.
    """
    k_, oh_, ow_ = y.shape[1], y.shape[2], y.shape[3]
    tiles = m.shape[2]
    rows_ = tiles // tw_
    packed, groups_ = packed_rows(tw_), row_groups(rows_, tw_)
    for task in prange(k_ * groups_):
        k, group = task // groups_, task % groups_
        count = min(packed, rows_ - group * packed)
        s = carray(stack_array(POSITIONS, LANES, m.dtype), POSITIONS * LANES)
        t = carray(stack_array(POSITIONS, LANES, m.dtype), POSITIONS * LANES)
        for e in range(POSITIONS * LANES):  # lanes past the rows' tiles: never stored
            s[e] = m.dtype.type(0)
        for blk in range((tw_ + LANES - 1) // LANES if packed == 1 else 1):
            first = blk * LANES
            tile0, used = group * packed * tw_ + first, min(LANES, count * tw_ - first)
            for p in range(POSITIONS):  # as the input transform's stores
                move_run(m, (p * k_ + k) * tiles + tile0, s, p * LANES, used)
            _transform_out(s, t)
            for e in range(TILE * TILE * LANES):
                s[e] += b[k]
            activate_run(s, 0, TILE * TILE * LANES, 1, act)
            c0, across = first * TILE, min(LANES, tw_ - first)  # a row's tiles in the block
            whole = min(across, (ow_ - c0) // TILE)  # tiles all of whose columns are y's
            for r in range(count):
                n, th = _row_place(group * packed + r, row0, th_)
                lane0 = r * tw_
                plane = (n * k_ + k) * oh_ * ow_
                for i in range(min(TILE, oh_ - th * TILE)):
                    at = plane + (th * TILE + i) * ow_ + c0
                    transpose_block(s, np.uint64(i * TILE * LANES + lane0), np.uint64(LANES),
                                    y, np.uint64(at), np.uint64(TILE), TILE, whole)
                    for j in range(ow_ - c0 - whole * TILE if whole < across else 0):
                        y[n, k, th * TILE + i, c0 + whole * TILE + j] = s[
                            (i * TILE + j) * LANES + lane0 + whole]


# The kernels by tile side: F(2x2, 3x3) above, F(4x4, 3x3) compiled from the same code.
_F4 = dict(TILE=4, ALPHA=6, POSITIONS=36, FILTER_1D=_filter_f4, INPUT_1D=_input_f4,
           OUTPUT_1D=_output_f4)
_transform_in_f4 = variant(_transform_in, "f4", **_F4)
_transform_out_f4 = variant(_transform_out, "f4", **_F4)
_F4_CHECKED = dict(_F4, _zeros_of=variant(_zeros_of, "f4", **_F4))
FILTER_TRANSFORM = {2: filter_transform, 4: variant(filter_transform, "f4", **_F4_CHECKED)}
_F4_IN = dict(_F4_CHECKED, PITCH=LANES * _F4["ALPHA"], _transform_in=_transform_in_f4)
_F4_OUT = dict(_F4, _transform_out=_transform_out_f4)
# by layout: NCHW's lanes are a tile row's tiles, NHWC's channels
INPUT_TRANSFORM = {
    "NCHW": {2: input_transform_rows, 4: variant(input_transform_rows, "f4", **_F4_IN)},
    "NHWC": {2: input_transform_channels, 4: variant(input_transform_channels, "f4", **_F4_IN)}}
OUTPUT_TRANSFORM = {
    "NCHW": {2: output_transform_rows, 4: variant(output_transform_rows, "f4", **_F4_OUT)},
    "NHWC": {2: output_transform_channels,
             4: variant(output_transform_channels, "f4", **_F4_OUT)}}
