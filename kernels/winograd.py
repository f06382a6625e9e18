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

The transforms are sums and differences with small integer weights, written out (no
multiplication by a matrix's zeros, which would make 0 x inf = NaN of an input's infinity in
positions it does not reach, and cost time). A block of LANES tiles (NCHW: consecutive tiles
of a tile row) or LANES channels (NHWC) is transformed at once, the lane innermost, so each
step is one SIMD operation. The default variant is F(2x2, 3x3) (ALPHA 4); ``*_f4`` are
F(4x4, 3x3) (ALPHA 6), compiled from the same code with the other transforms (variants.py).

Layouts: x and y NCHW-indexed (NHWC as a transposed view); v (POSITIONS, C, T) and m
(POSITIONS, K, T), position (a, b) at a * ALPHA + b, T the tiles of a chunk of tile rows,
tile (jr, tw) of the chunk's tile row jr at jr * TW + tw (NHWC passes transposed views of
(POSITIONS, T, C) arrays, so the lanes stay contiguous there too).
"""

import numpy as np
from numba import carray, njit, prange

from . import CPU_KERNEL, VECTOR_LANES, stack_array
from .activation import activate
from .variants import variant

TILE = 2  # outputs a tile side
ALPHA = TILE + 2  # inputs a tile side
POSITIONS = ALPHA * ALPHA
LANES = VECTOR_LANES  # tiles (NCHW) or channels (NHWC) transformed together


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


INPUT_1D, OUTPUT_1D = _input_f2, _output_f2  # the variant's transforms (replaced in *_f4)


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


@njit(**CPU_KERNEL)
def filter_transform(taps, gm, u):
    """u[:, f] = G g G^T of every filter g, in float64, rounded once to u's dtype.

    Layout: taps (F, 9) filter f's taps (r, s) at r * 3 + s (any strides: a view); gm
    (ALPHA, 3) float64; u (POSITIONS, F).
    Loop order: blocks of LANES filters in parallel, the filter innermost (contiguous stores
    into u's rows). Each task owns u's columns of its filters.
    """
    f_ = taps.shape[0]
    for blk in prange((f_ + LANES - 1) // LANES):
        g = carray(stack_array(9, LANES, np.float64), 9 * LANES)
        t = carray(stack_array(POSITIONS, LANES, np.float64), POSITIONS * LANES)  # ALPHA x 3 used
        for lane in range(LANES):
            f = min(blk * LANES + lane, f_ - 1)
            for q in range(9):
                g[q * LANES + lane] = taps[f, q]
        for a in range(ALPHA):  # t = G g
            for s in range(3):
                for lane in range(LANES):
                    t[(a * 3 + s) * LANES + lane] = (gm[a, 0] * g[s * LANES + lane]
                                                     + gm[a, 1] * g[(3 + s) * LANES + lane]
                                                     + gm[a, 2] * g[(6 + s) * LANES + lane])
        for a in range(ALPHA):  # u = t G^T
            for b in range(ALPHA):
                for lane in range(LANES):
                    f = blk * LANES + lane
                    if f < f_:
                        u[a * ALPHA + b, f] = (t[a * 3 * LANES + lane] * gm[b, 0]
                                               + t[(a * 3 + 1) * LANES + lane] * gm[b, 1]
                                               + t[(a * 3 + 2) * LANES + lane] * gm[b, 2])


@njit(**CPU_KERNEL)
def input_transform(x, v, row0, th_, tw_, pt, pl, channels_last):
    """v[:, c, tile] = B^T d B of every input tile d of the chunk's tile rows, each channel.

    Layout: x (N, C, H, W) NCHW-indexed; v (POSITIONS, C, rows * tw_) for the chunk's rows of
    tiles, global tile rows row0 ... (row j is image j // th_, tile row j % th_).
    Loop order (not ``channels_last``, NCHW): (tile row, channel) in parallel, then blocks of
    LANES tiles along the row, the lane innermost; (``channels_last``, NHWC): (tile row,
    tile) in parallel, then blocks of LANES channels. Each task owns v at its tiles x its
    channels and writes every position of them once.
    """
    n_c, h_, w_ = x.shape[1], x.shape[2], x.shape[3]
    rows = v.shape[2] // tw_
    outer = n_c if not channels_last else tw_  # tasks a tile row
    inner = (tw_ + LANES - 1) // LANES if not channels_last else (n_c + LANES - 1) // LANES
    for task in prange(rows * outer):
        jr, o = task // outer, task % outer
        n, th = (row0 + jr) // th_, (row0 + jr) % th_
        d = carray(stack_array(POSITIONS, LANES, v.dtype), POSITIONS * LANES)
        t = carray(stack_array(POSITIONS, LANES, v.dtype), POSITIONS * LANES)
        zero = v.dtype.type(0)
        for blk in range(inner):
            first = blk * LANES
            used = min(LANES, (n_c if channels_last else tw_) - first)  # lanes past: zeros
            for a in range(ALPHA):
                ih = th * TILE - pt + a
                row_in = 0 <= ih < h_
                for b in range(ALPHA):
                    base = (a * ALPHA + b) * LANES
                    for lane in range(LANES):  # this lane's channel or tile
                        c, tw = (first + lane, o) if channels_last else (o, first + lane)
                        iw = tw * TILE - pl + b
                        inside = row_in and lane < used and 0 <= iw < w_
                        d[base + lane] = x[n, c, ih, iw] if inside else zero
            _transform_in(d, t)
            for p in range(POSITIONS):
                if channels_last:
                    for lane in range(used):
                        v[p, first + lane, jr * tw_ + o] = d[p * LANES + lane]
                else:
                    for lane in range(used):
                        v[p, o, jr * tw_ + first + lane] = d[p * LANES + lane]


@njit(**CPU_KERNEL)
def output_transform(m, y, b, act, row0, th_, tw_, channels_last):
    """y = act(b + A^T m A) of every tile of the chunk's tile rows, cropped to y's size.

    Layout: m (POSITIONS, K, rows * tw_) as v of :func:`input_transform`; y (N, K, OH, OW)
    NCHW-indexed; b (K,).
    Loop order: (tile row, channel) in parallel, then blocks of LANES tiles (NCHW); (tile row,
    tile) in parallel, then blocks of LANES channels (NHWC), the lane innermost. Each task
    owns y at its tiles' pixels x its channels.
    """
    k_, oh_, ow_ = y.shape[1], y.shape[2], y.shape[3]
    rows = m.shape[2] // tw_
    outer = k_ if not channels_last else tw_
    inner = (tw_ + LANES - 1) // LANES if not channels_last else (k_ + LANES - 1) // LANES
    for task in prange(rows * outer):
        jr, o = task // outer, task % outer
        n, th = (row0 + jr) // th_, (row0 + jr) % th_
        s = carray(stack_array(POSITIONS, LANES, m.dtype), POSITIONS * LANES)
        t = carray(stack_array(POSITIONS, LANES, m.dtype), POSITIONS * LANES)
        zero = m.dtype.type(0)
        for blk in range(inner):
            first = blk * LANES
            used = min(LANES, (k_ if channels_last else tw_) - first)  # lanes past: zeros
            for p in range(POSITIONS):
                for lane in range(LANES):
                    if lane < used:
                        if channels_last:
                            s[p * LANES + lane] = m[p, first + lane, jr * tw_ + o]
                        else:
                            s[p * LANES + lane] = m[p, o, jr * tw_ + first + lane]
                    else:
                        s[p * LANES + lane] = zero
            _transform_out(s, t)
            for i in range(TILE):
                oh = th * TILE + i
                if oh >= oh_:
                    break
                for j in range(TILE):
                    for lane in range(used):
                        k, tw = (first + lane, o) if channels_last else (o, first + lane)
                        ow = tw * TILE + j
                        if ow < ow_:
                            y[n, k, oh, ow] = activate(s[(i * TILE + j) * LANES + lane] + b[k],
                                                       act, y.dtype)


# The kernels by tile side: F(2x2, 3x3) above, F(4x4, 3x3) compiled from the same code.
_F4 = dict(TILE=4, ALPHA=6, POSITIONS=36, INPUT_1D=_input_f4, OUTPUT_1D=_output_f4)
FILTER_TRANSFORM = {2: filter_transform, 4: variant(filter_transform, "f4", **_F4)}
_transform_in_f4 = variant(_transform_in, "f4", **_F4)
_transform_out_f4 = variant(_transform_out, "f4", **_F4)
INPUT_TRANSFORM = {2: input_transform,
                   4: variant(input_transform, "f4", **_F4, _transform_in=_transform_in_f4)}
OUTPUT_TRANSFORM = {2: output_transform,
                    4: variant(output_transform, "f4", **_F4, _transform_out=_transform_out_f4)}
