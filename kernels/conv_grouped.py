"""Grouped convolution of a few channels a group (ResNeXt's 32 groups of 4: 2 to 8 input and as
many output channels a group, whole groups to a vector), NHWC, read and written where it lies,
by rotated accumulators.

A vector of a pixel's channels holds VECTOR / d groups of d channels, and output channel k sums
the d input channels of its group: a small dense product inside each group of d lanes, across
them. Rotating the input vector inside its groups for each of the d channel offsets would cost
d - 1 shuffles a tap and pixel, on the port AVX-512's second FMA shares. Instead a pixel keeps
d accumulators: lane v of accumulator r (input channel v % d of its group) gathers x[v] times
w[k, v % d] for the output channel k = v - v % d + (v % d + r) % d, a lane-wise multiply-add
with a filter vector rotated once when the filters are laid out (implementations/grouped.py),
and at the tile's end accumulator r is rotated back by r inside its groups and the d are
summed (tile_fmas.rotations_summed): d - 1 shuffles a pixel, none a tap. Blocked's
channel-block tiles, which give each group its own vector, ran ResNeXt-50's NHWC layer1.conv2
at 0.47-0.58x PyTorch on a Xeon, and its filters padded to 16-channel groups (4x the
multiply-adds) at 0.65x on one thread (benchmarks/results/cpu-grouped-nhwc.md).

The weight gradient turns the other operand instead: an output pixel's gradient vector,
turned d - 1 times inside its groups, meets each of its taps' input vectors lane-wise, d x S
accumulators a window row summed over the image in registers (grouped_nhwc_weight_rows), the
sums landing in the rotated filters' layout.

Offsets are unsigned (a window's first tap above or left of the image wraps, and the taps
inside add back to a cell inside), so Numba's negative-index wraparound folds away.
"""

import numpy as np
from numba import carray, njit, prange

from . import CPU_KERNEL, VECTOR_LANES, ZERO, borrowed, stack_array, valid_range
from .activation import activate_run
from .tile_fmas import rotated_fmas, rotated_products, rotations_summed
from .vector_moves import move_rows

VECTOR = VECTOR_LANES
# Channels a group the kernel serves (each divides VECTOR: whole groups to a vector), and the
# pixels of a tile along a row for each: d accumulators a pixel, up to 24 of AVX-512's 32
# registers (12 of AVX2's 16), the rest for the d filter vectors and the input vector.
ROTATIONS = (2, 4, 8)
_ACCUMULATORS = 24 if VECTOR == 16 else 12
PIXELS_2, PIXELS_4, PIXELS_8 = (max(1, _ACCUMULATORS // d) for d in ROTATIONS)
TILE_2, TILE_4, TILE_8 = 2 * PIXELS_2, 4 * PIXELS_4, 8 * PIXELS_8
# Window widths the weight gradient serves: its d x S accumulators of a window row, held in
# registers, need S as a compile-time constant (a variant each).
WEIGHT_WIDTHS = (1, 3)


@njit(cache=True, fastmath=CPU_KERNEL["fastmath"])
def _tile(xn, at, step, row_step, column_step, filters, b, blocks, taps, r0, r1, s0, s1, s_,
          bias, yn, place, pixels_, rotations_, accumulators_):
    """yn[place + j * C + k] for the tile's ``pixels_`` output pixels j (a compile-time
    constant, as are ``rotations_``, the channels a group, and ``accumulators_``, their
    product) and the channels k of block b (VECTOR of them from b * VECTOR), C = blocks *
    VECTOR: bias[k] plus the sum over window rows r0 <= r < r1 and columns s0 <= s < s1 (the
    taps inside the image for every pixel of the tile) of the pixel's input vector at xn[at + r
    * row_step + s * column_step + j * step + b * VECTOR] times the rotated filters (rotation
    0's at row (r * s_ + s) * blocks + b, each further rotation's ``taps * blocks`` rows on).
    A function of its own, called by the row: inlined there, ResNeXt-50's NHWC layer2.conv2
    ran no faster on two Xeon threads than on one (2.9-3.1 ms; 1.7-1.9 as it is)."""
    k0 = b * VECTOR
    tile_ = stack_array(accumulators_, VECTOR, yn.dtype)
    acc, flat = carray(tile_, (accumulators_, VECTOR)), carray(tile_, accumulators_ * VECTOR)
    # bias in and sums out by whole vectors: moved lane by lane, the 12 x 2 tile's took 240
    # scalar moves and 279 to and from the stack
    move_rows(bias, np.uint64(k0), ZERO, flat, ZERO, np.uint64(VECTOR), pixels_, VECTOR)
    for j in range(pixels_, accumulators_):
        for v in range(VECTOR):
            acc[j, v] = 0
    for r in range(r0, r1):
        row = at + np.uint64(r) * row_step + np.uint64(k0)
        for s in range(s0, s1):
            rotated_fmas(acc, xn, row + np.uint64(s) * column_step, step, filters,
                         np.uint64((r * s_ + s) * blocks + b), np.uint64(taps * blocks),
                         pixels_, rotations_)
    rotations_summed(acc, pixels_, rotations_)
    move_rows(flat, ZERO, np.uint64(VECTOR), yn, place + np.uint64(k0),
              np.uint64(blocks * VECTOR), pixels_, VECTOR)


@njit(cache=True, inline="always")
def _row(xn, at, step, row_step, column_step, filters, blocks, taps, r0, r1, s_, sw, dw, left,
         w_, inner, bias, yn, row_place, ow_, pixels_, rotations_, accumulators_):
    """One output row, a block of VECTOR channels at a time, so that its filters (d x the
    window's vectors) stay in L1 over the row: with the blocks in turn inside each tile, a
    tile read all the layer's rotated filters (73 KB for ResNeXt-50's 256-channel layer2,
    past L1), and that layer ran 4.7 ms on one Xeon thread, 3.2-3.4 so. Tiles of ``pixels_``
    over the columns ``inner`` whose taps all lie inside the image's row (the last moved back
    to end at its end), single pixels, with the taps each reaches inside, for the columns
    outside it (a row's padded edges, or a row narrower than a tile)."""
    c_ = np.uint64(blocks * VECTOR)
    j_lo, j_hi = inner
    if j_hi - j_lo < pixels_:
        j_lo = j_hi = ow_
    for b in range(blocks):
        for j0 in range(j_lo, j_hi, pixels_):
            j0 = min(j0, j_hi - pixels_)
            _tile(xn, at + np.uint64(j0) * step, step, row_step, column_step, filters, b, blocks,
                  taps, r0, r1, 0, s_, s_, bias, yn, row_place + np.uint64(j0) * c_, pixels_,
                  rotations_, accumulators_)
        for edge in range(ow_ - (j_hi - j_lo)):
            j = edge if edge < j_lo else edge + j_hi - j_lo
            s0, inside, _ = valid_range(j * sw - left, dw, w_, s_)
            _tile(xn, at + np.uint64(j) * step, step, row_step, column_step, filters, b, blocks,
                  taps, r0, r1, s0, s0 + inside, s_, bias, yn, row_place + np.uint64(j) * c_, 1,
                  rotations_, rotations_)


@njit(**CPU_KERNEL)
def grouped_nhwc_rows(x, h_, w_, filters, bias, y, oh_, ow_, r_, s_, top, left, stride,
                      dilation, rotations, act):
    """y = act(bias + the grouped correlation of x with the filters), NHWC in and out, groups
    of ``rotations`` (2, 4 or 8: ROTATIONS) input and as many output channels: y[n, i, j, k] =
    act(bias[k] + the sum over the taps (r, s) inside the image and the input channels c of
    k's group of x[n, i * sh - top + r * dh, j * sw - left + s * dw, c] * w[k, c, r, s]).

    Layout: x (N, h_ * w_ * C) and y (N, oh_ * ow_ * C), NHWC images flat, C a multiple of
    VECTOR; filters (rotations * R * S * C / VECTOR, VECTOR), rotated (module docstring): row
    (d' * R * S + r * S + s) * C / VECTOR + b, lane v holds w[b * VECTOR + v - v % d + (v % d +
    d') % d, v % d, r, s] for rotation d' < d = rotations; bias (C,); stride and dilation
    pairs.
    Loop order: (image, output row) in parallel; per row, the window rows inside the image,
    then the blocks of VECTOR channels in turn, each over tiles of a few pixels along the row
    (PIXELS_2 ... PIXELS_8 for the channels a group) over the columns whose taps all lie
    inside and single pixels at the padded edges, each tile accumulated over its taps in
    registers, rotated home, summed and stored; the row's activation in a pass after. Each
    task owns its row of y[n]."""
    n_, c_ = x.shape[0], bias.shape[0]
    blocks = c_ // VECTOR
    sh, sw = stride
    dh, dw = dilation
    taps = r_ * s_
    step, row_step, column_step = np.uint64(sw * c_), np.uint64(dh * w_ * c_), np.uint64(dw * c_)
    # the columns all of whose taps lie inside a row: j * sw - left + (s_ - 1) * dw < w_
    j_lo, inner, _ = valid_range(-left, sw, w_ - (s_ - 1) * dw, ow_)
    span = (j_lo, j_lo + inner)
    for task in prange(n_ * oh_):
        n, i = task // oh_, task % oh_
        xn, yn, weights, shifts = borrowed(x[n]), borrowed(y[n]), borrowed(filters), borrowed(bias)
        top_row = i * sh - top
        r0, inside, _ = valid_range(top_row, dh, h_, r_)
        at = np.uint64((top_row * w_ - left) * c_)  # wraps where negative: see the docstring
        place = np.uint64(i * ow_ * c_)
        if rotations == 2:
            _row(xn, at, step, row_step, column_step, weights, blocks, taps, r0, r0 + inside,
                 s_, sw, dw, left, w_, span, shifts, yn, place, ow_, PIXELS_2, 2, TILE_2)
        elif rotations == 4:
            _row(xn, at, step, row_step, column_step, weights, blocks, taps, r0, r0 + inside,
                 s_, sw, dw, left, w_, span, shifts, yn, place, ow_, PIXELS_4, 4, TILE_4)
        else:
            _row(xn, at, step, row_step, column_step, weights, blocks, taps, r0, r0 + inside,
                 s_, sw, dw, left, w_, span, shifts, yn, place, ow_, PIXELS_8, 8, TILE_8)
        if act != 0:
            activate_run(yn, i * ow_ * c_, ow_ * c_, 1, act)


@njit(cache=True, inline="always")
def _masked_products(acc, xn, gyn, row, i, j, c_, k0, step, w_, ow_, sw, dw, left, taps_,
                     rotations_, first_, turns_):
    """tile_fmas.rotated_products for output column j of a window row, over its taps inside
    the image's row only (a row's padded edges)."""
    column, inside = j * sw - left, 0
    for s in range(taps_):
        if 0 <= column + s * dw < w_:
            inside |= 1 << s
    rotated_products(acc, xn, np.uint64((row * w_ + column) * c_) + k0, step, gyn,
                     np.uint64((i * ow_ + j) * c_) + k0, np.uint64(inside), taps_, rotations_,
                     first_, turns_, True)


@njit(cache=True, fastmath=CPU_KERNEL["fastmath"])
def _window_row_sums(xn, gyn, out, b, c_, h_, w_, oh_, ow_, r, sh, sw, dh, dw, top, left,
                     window, taps_, rotations_, first_, turns_, accumulators_):
    """out[d' * window + r * taps_ + s, v] for window row r, its ``taps_`` columns s and the
    rotations ``first_`` <= d' < ``first_`` + ``turns_`` of ``rotations_`` (compile-time
    constants, as is ``accumulators_``, turns_ x taps_): the sum over the image's outputs (i,
    j) whose tap (r, s) lies inside of the input vector there times the output gradient's
    vector at (i, j) turned by d' (block b's channels), accumulated in registers over the
    whole image."""
    acc = carray(stack_array(accumulators_, VECTOR, out.dtype), (accumulators_, VECTOR))
    for q in range(accumulators_):
        for v in range(VECTOR):
            acc[q, v] = 0
    k0, step = np.uint64(b * VECTOR), np.uint64(dw * c_)
    # the columns all of whose taps lie inside a row go without a mask (a branch a tap)
    j_lo, inner, _ = valid_range(-left, sw, w_ - (taps_ - 1) * dw, ow_)
    for i in range(oh_):
        row = i * sh - top + r * dh
        if row < 0 or row >= h_:
            continue
        for j in range(min(j_lo, ow_)):
            _masked_products(acc, xn, gyn, row, i, j, c_, k0, step, w_, ow_, sw, dw, left,
                             taps_, rotations_, first_, turns_)
        for j in range(j_lo, j_lo + inner):
            rotated_products(acc, xn, np.uint64((row * w_ + j * sw - left) * c_) + k0, step,
                             gyn, np.uint64((i * ow_ + j) * c_) + k0, ZERO, taps_, rotations_,
                             first_, turns_, False)
        for j in range(max(j_lo, j_lo + inner), ow_):
            _masked_products(acc, xn, gyn, row, i, j, c_, k0, step, w_, ow_, sw, dw, left,
                             taps_, rotations_, first_, turns_)
    for turn in range(turns_):
        for s in range(taps_):
            for v in range(VECTOR):
                out[(first_ + turn) * window + r * taps_ + s, v] = acc[turn * taps_ + s, v]


@njit(**CPU_KERNEL)
def grouped_nhwc_weight_rows(x, h_, w_, gy, oh_, ow_, r_, s_, top, left, stride, dilation,
                             rotations, out):
    """The grouped layer's weight gradient, rotated as grouped_nhwc_rows' filters, image by
    image: out[n * B + b, d' * R * S + r * S + s, v] = the sum over image n's outputs (i, j)
    whose tap (r, s) lies inside of x[n, i * sh - top + r * dh, j * sw - left + s * dw, b *
    VECTOR + v] * gy[n, i, j, b * VECTOR + v - v % d + (v % d + d') % d], which is w's gradient
    at [b * VECTOR + v - v % d + (v % d + d') % d, v % d, r, s] summed over the images.

    Layout: x (N, h_ * w_ * C) and gy (N, oh_ * ow_ * C), NHWC images flat, C = B * VECTOR;
    out (N * B, d * R * S, VECTOR); S (s_) one of WEIGHT_WIDTHS, d = ``rotations``.
    Loop order: (image, block of VECTOR channels) in parallel; per task the window rows in
    turn, each a pass over the image's outputs with its d x S accumulators in registers (8
    channels a group at S = 3: two passes of 4 turns, 12 accumulators each, where one pass's
    24 and their 8 turns would pass AVX-512's 32 registers), a
    pixel's gradient vector loaded once a pass and turned, each of its S input vectors meeting
    the turns (tile_fmas.rotated_products). Each task owns its out[n * B + b]."""
    n_, c_ = x.shape[0], gy.shape[1] // (oh_ * ow_)
    blocks, window = c_ // VECTOR, r_ * s_
    sh, sw = stride
    dh, dw = dilation
    for task in prange(n_ * blocks):
        n, b = task // blocks, task % blocks
        xn, gyn, sums = borrowed(x[n]), borrowed(gy[n]), borrowed(out[task])
        for r in range(r_):
            if s_ == 3 and rotations == 2:
                _window_row_sums(xn, gyn, sums, b, c_, h_, w_, oh_, ow_, r, sh, sw, dh, dw, top,
                                 left, window, 3, 2, 0, 2, 6)
            elif s_ == 3 and rotations == 4:
                _window_row_sums(xn, gyn, sums, b, c_, h_, w_, oh_, ow_, r, sh, sw, dh, dw, top,
                                 left, window, 3, 4, 0, 4, 12)
            elif s_ == 3:
                _window_row_sums(xn, gyn, sums, b, c_, h_, w_, oh_, ow_, r, sh, sw, dh, dw, top,
                                 left, window, 3, 8, 0, 4, 12)
                _window_row_sums(xn, gyn, sums, b, c_, h_, w_, oh_, ow_, r, sh, sw, dh, dw, top,
                                 left, window, 3, 8, 4, 4, 12)
            elif rotations == 2:
                _window_row_sums(xn, gyn, sums, b, c_, h_, w_, oh_, ow_, r, sh, sw, dh, dw, top,
                                 left, window, 1, 2, 0, 2, 2)
            elif rotations == 4:
                _window_row_sums(xn, gyn, sums, b, c_, h_, w_, oh_, ow_, r, sh, sw, dh, dw, top,
                                 left, window, 1, 4, 0, 4, 4)
            else:
                _window_row_sums(xn, gyn, sums, b, c_, h_, w_, oh_, ow_, r, sh, sw, dh, dw, top,
                                 left, window, 1, 8, 0, 8, 8)
