"""Depthwise convolution (one input channel a group, each feeding ``m`` output channels, MobileNet's
3x3 layers with m = 1) with the vector lanes over channels, as oneDNN's depthwise kernels: the
grouped kernels vectorise over a group's output channels (one here) or along a plane's row
(short, and strided at stride 2), neither of which fits such a layer.

An NHWC operand whose channels are whole vectors is read where it lies by
:func:`depthwise_nhwc_rows` (the forward, and the input gradient: a stride-1 layer's as one part, a
strided one's phases as the parts of one call): each task an output row, its tiles' input
vectors a pixel's channels apart, the next row's lines prefetched; a column stride of 2's input
gradient by :func:`depthwise_nhwc_stride2_input_rows`, a row of gx at a time; its weight
gradient by :func:`depthwise_nhwc_weight_rows`. Otherwise the forward and the input gradient
are one kernel, :func:`depthwise_planes`: each task moves its share of the caller's array
(NCHW or NHWC) into a local buffer in the blocked layout (a pixel one vector of VECTOR
channels: NCHW16c on AVX-512, NCHW8c on AVX2), zero-padded, runs register tiles over it and
moves the result out into the caller's layout while both are in L1/L2: the data crosses
memory once each way.
(Three passes, a pack into a blocked copy, the tiles, an unpack, each through memory, ran
MobileNetV2's small-plane layers at ~0.5x PyTorch's speed:
benchmarks/results/cpu-depthwise-planes.md.) The weight gradient,
:func:`depthwise_planes_weight`, moves the input and the output gradient in the same way and
reduces each tap's products over the task's outputs.

Every depthwise product is one register tile: PIXELS output pixels x one vector of channels,
accumulated over the window's taps, each tap a vector of filter values meeting PIXELS input
vectors in packed FMAs; on this project's AVX-512 machine the tap loop compiles to one filter
load and PIXELS ``vfmadd231ps (mem), zmm, zmm`` (tests/test_kernel_ir.py asserts the packed
FMAs on the machine it runs on). Channels move between layouts by VECTOR x VECTOR transposes
in registers (kernels/vector_moves.py). Offsets are unsigned, so Numba's negative-index
wraparound folds away.
"""

import numpy as np
from numba import carray, literal_unroll, njit, prange

from . import (
    CPU_KERNEL,
    LINE_BYTES,
    VECTOR_LANES,
    aligned_zeros,
    borrowed,
    prefetch,
    stack_array,
    tile_starts,
    valid_range,
)
from .activation import activate_run
from .tile_fmas import lane_fmas
from .vector_moves import move_run, transpose_block

# The register tile: PIXELS output pixels along a row x one vector of VECTOR channels (16
# float32 lanes on AVX-512, 8 on AVX2); float64 takes two registers a vector.
VECTOR = VECTOR_LANES
UVECTOR = np.uint64(VECTOR)  # an unsigned lane counter: see the module's docstring
PIXELS = 8
HALF_PIXELS = PIXELS // 2  # depthwise_nhwc_rows' tiles of a row's last few columns
NARROW_WIDTHS = tuple(range(1, PIXELS))  # depthwise_nhwc_rows' tiles of narrow rows
# The weight gradient's register tile: TAPS taps x one vector (a 3x3 window in one pass).
TAPS = 9
# Output pixels, at most, whose weight gradient products the in-place NHWC kernel sums in
# float32 (whole rows, at least one), before adding them to its float64 sums.
SUMMED_PIXELS = 256
# The window whose tap count the forward's tiles are compiled for (a 3x3 one, MobileNet's).
WINDOW_TAPS = 9
WINDOW_ROWS = 3


@njit(inline="always", cache=True)
def _whole_block(lanes):
    """The first of VECTOR consecutive source channels that ``lanes`` (VECTOR,) take (then they
    move by whole vectors), else -1."""
    c0 = lanes[0]
    if c0 >= 0 and lanes[VECTOR - 1] == c0 + VECTOR - 1:
        return c0
    return -1


# A pixel with no place in a buffer (its row or column is -1, or its row lies outside the
# band): moved to the buffer's last vector, the trash, where a whole block moves.
OUTSIDE = np.uint64(2**64 - 1)


@njit(inline="always", cache=True)
def _places(rows, cols, h_, w_, i0, reach, width):
    """(p0, places): where each pixel p = h * w_ + w of the source rows h whose buffer row
    ``rows[h, 1] - i0`` lies in [0, reach) goes in a band's buffer from i0, ``places[p - p0]``
    = (rows[h, 0] + (rows[h, 1] - i0) * width + cols[w]) * VECTOR, in elements from its
    sub-plane's start, or OUTSIDE where its row or column is -1. Those rows are consecutive
    (a source row's row in its phase plane grows with it), and a task computes their places
    once for all its images: per pixel and image, as they were, they took more instructions
    than the transposes that move the pixels."""
    h0, h1 = h_, 0
    for h in range(h_):
        if rows[h, 1] >= i0 and rows[h, 1] < i0 + reach:
            h0, h1 = min(h0, h), h + 1
    h1 = max(h0, h1)
    places = np.empty((h1 - h0) * w_, np.uint64)
    for h in range(h0, h1):
        inside = rows[h, 0] >= 0 and rows[h, 1] >= i0 and rows[h, 1] < i0 + reach
        row = rows[h, 0] + (rows[h, 1] - i0) * width
        for w in range(w_):
            at = OUTSIDE
            if inside and cols[w] >= 0:
                at = np.uint64((row + cols[w]) * VECTOR)
            places[(h - h0) * w_ + w] = at
    return h0 * w_, places


@njit(inline="always", cache=True)
def _move_in(buf, base, xn, x_channel, x_pixel, lanes, p0, places, spots):
    """buf[base + places[p - p0] + v] = xn[lanes[v] * x_channel + p * x_pixel] for the source
    pixels p from p0 (:func:`_places`); a pixel placed OUTSIDE goes to the buffer's last
    vector, lanes of channel -1 stay as they are (zero).

    From NCHW whole blocks move as VECTOR x VECTOR transposes of VECTOR consecutive flat pixels
    (rows of a plane narrower than a vector included), each pixel's vector stored at its place
    (``spots``, a stack array of VECTOR offsets); from NHWC a vector a pixel."""
    trash = np.uint64(buf.shape[0] - VECTOR)
    c0, count = _whole_block(lanes), places.shape[0]
    if c0 >= 0 and x_pixel == 1 and count >= VECTOR:  # NCHW: transposes
        for k0 in range(0, count, VECTOR):
            k = min(k0, count - VECTOR)  # the last run overlaps the one before it
            for j in range(VECTOR):
                at = places[k + j]
                spots[j] = trash if at == OUTSIDE else base + at
            transpose_block(xn, np.uint64(c0 * x_channel + p0 + k), np.uint64(x_channel), buf,
                            np.uint64(0), spots, VECTOR, VECTOR)
        return
    for k in range(count):
        if places[k] == OUTSIDE:
            continue
        at, p = base + places[k], p0 + k
        if c0 >= 0 and x_channel == 1:  # NHWC: a vector a pixel
            move_run(xn, np.uint64(c0 + p * x_pixel), buf, at, VECTOR)
        else:
            for v in range(VECTOR):
                c = lanes[v]
                if c >= 0:
                    buf[at + v] = xn[c * x_channel + p * x_pixel]


@njit(inline="always", cache=True)
def _move_out(out, yn, k0, used, y_channel, y_pixel, p0, places, spots):
    """yn[(k0 + v) * y_channel + p * y_pixel] = out[places[p - p0] + v] for v < ``used`` and
    the output pixels p from p0 (:func:`_places` of the output's rows and columns): to NCHW
    by VECTOR x VECTOR transposes of VECTOR consecutive flat pixels, to NHWC a vector a
    pixel."""
    count = places.shape[0]
    if used == VECTOR and y_pixel == 1 and count >= VECTOR:  # NCHW: transposes
        for k1 in range(0, count, VECTOR):
            k = min(k1, count - VECTOR)  # the last run overlaps the one before it
            for j in range(VECTOR):
                spots[j] = places[k + j]
            transpose_block(out, np.uint64(0), spots, yn, np.uint64(k0 * y_channel + p0 + k),
                            np.uint64(y_channel), VECTOR, VECTOR)
        return
    for k in range(count):
        q, p = places[k], p0 + k
        if used == VECTOR and y_channel == 1:  # NHWC: a vector a pixel
            move_run(out, q, yn, np.uint64(k0 + p * y_pixel), VECTOR)
        else:
            for v in range(used):
                yn[(k0 + v) * y_channel + p * y_pixel] = out[q + v]


@njit(cache=True, fastmath=CPU_KERNEL["fastmath"])
def _tiles(buf, out, ws, taps, bias, k0, used, count, taps_, rows_):
    """out[q, v] = bias[k0 + v] + sum over t of buf[q * VECTOR + taps[t] + v] * ws[t, v] for q
    below ``count`` rounded up to whole tiles (depthwise_planes' register tiles). ``taps_``, a
    compile-time constant, is the tap count when it is known (9: a 3x3 window, whose tap loop
    then unrolls: MobileNetV2's layers 1.11-1.26x faster than with the loop), else 0; ``rows_``
    is WINDOW_ROWS where each of a 3x3 window's rows has its three taps in consecutive vectors
    (stride 1 and dilation 1, and their input gradient), else 0. Then the row's three taps
    read its PIXELS + 2 buffer vectors from one pointer, and LLVM loads each once: 24 FMAs on
    10 loads where the taps one by one load 24: the loads bound those (MobileNetV2's 14x14
    layer's tiles ran at ~56 cycles for 72 FMAs), and the tiles ran 1.5x faster by rows. Each
    tap is :func:`~.tile_fmas.lane_fmas`, said in vectors (as loops, LLVM left the row tiles
    scalar on AVX2: kernels/tile_fmas.py). A function of its own: inlined into the task's loop
    nest, LLVM kept the tile in memory."""
    acc = carray(stack_array(PIXELS, VECTOR, out.dtype), (PIXELS, VECTOR))
    shift = carray(stack_array(1, VECTOR, out.dtype), VECTOR)
    for v in range(VECTOR):
        shift[v] = bias[k0 + v] if v < used else 0
    for q0 in range(0, count, PIXELS):
        for j in range(PIXELS):
            for v in range(VECTOR):
                acc[j, v] = shift[v]
        at = np.uint64(q0 * VECTOR)
        if rows_ == WINDOW_ROWS:
            for r in range(WINDOW_ROWS):
                off = at + taps[3 * r]
                for s in range(3):
                    lane_fmas(acc, buf, off + np.uint64(s * VECTOR), UVECTOR, ws, 3 * r + s,
                              True, True, PIXELS)
        else:
            for t in range(taps.shape[0] if taps_ == 0 else taps_):
                lane_fmas(acc, buf, at + taps[t], UVECTOR, ws, t, True, True, PIXELS)
        for j in range(PIXELS):
            for v in range(UVECTOR):
                out[at + np.uint64(j * VECTOR) + v] = acc[j, v]


@njit(**CPU_KERNEL)
def depthwise_planes(x, h_, w_, x_channel, x_pixel, sources, rows, cols, plane, band, images,
                     taps, filters, bias, y, oh_, ow_, y_channel, y_pixel, out_rows, out_cols,
                     act):
    """y = act(bias + sum over taps of the source planes x filters), a band of output rows of
    one vector of channels per task: its source rows moved into a zeroed local buffer (the
    block's planes, lanes over channels), register tiles over it, the band moved out.

    Layout: x (N, X) each image flat, source pixel p = h * w_ + w of channel c at
    ``c * x_channel + p * x_pixel`` (NCHW or NHWC); sources (B, J, VECTOR) the source channel
    of each lane of each of a block's J sub-planes (-1: zeros); rows (h_, 2) a source row's
    phase offset in pixels and its row in its phase plane (-1: outside), cols (w_,) a source
    column's phase offset plus its column (-1: outside); plane (pixels of a phase plane
    holding a band, its width, phase planes a sub-plane); taps (T,) uint64 a tap's offset in
    the buffer from the output's own position, in elements; filters (B, T, VECTOR); bias (K,);
    y (N, Y) each image flat, output (i, j) of channel k at ``k * y_channel + (i * ow_ + j) *
    y_pixel``, K = y's channels; out_rows (oh_, 2) = (0, i) and out_cols (ow_,) = j place an
    output at its local output q below.
    The buffer: J sub-planes of phase planes of ``band`` + halo rows of ``plane[1]`` pixels,
    each pixel VECTOR lanes. Output (i, j) of a band starting at i0 is local q = (i - i0) *
    width + j, and reads q + taps[t]: a strided layer's phases (source rows and columns by
    their index modulo the stride, as the caller's ``rows`` and ``cols`` place them) make
    every layer's taps affine in q, so a tile is PIXELS consecutive q, and the columns past
    ow_ in each row are computed and never stored.
    Loop order: (run of ``images`` images, block, band) in parallel; per task the places of
    its band's source and output pixels (:func:`_places`), then per image the move in (VECTOR
    x VECTOR transposes from NCHW, a vector a pixel from NHWC), the tiles (taps t, lanes, the
    PIXELS pixels innermost: one filter vector meets PIXELS buffer vectors in packed FMAs), the
    activation, the move out. Each task owns y[n] of its images at its block's channels x its
    band's rows. Its buffers are allocated, cache-line aligned, and zeroed once: every image
    writes the same cells of them. (A task an image spent a third of a 7x7 layer's time in
    malloc, memset and reference counts: benchmarks/results/cpu-suite-row-epilogue.md.)
    """
    n_, b_, j_ = x.shape[0], sources.shape[0], sources.shape[1]
    k_, t_ = y.shape[1] // (oh_ * ow_), taps.shape[0]
    pixels, width, phases = plane[0], plane[1], plane[2]
    bands = (oh_ + band - 1) // band
    batches = (n_ + images - 1) // images
    reach = pixels // width  # buffer rows a phase plane holds: the band's and the halo's
    span = -(-band * width // PIXELS) * PIXELS  # a band's local outputs, whole tiles
    held = max(j_ * phases * pixels, span + int(taps.max()) // VECTOR + PIXELS) * VECTOR
    along_rows = t_ == WINDOW_TAPS  # and each window row's taps in consecutive vectors
    for t in range(t_):
        along_rows = along_rows and taps[t] == taps[t - t % 3] + np.uint64(t % 3 * VECTOR)
    for task in prange(batches * b_ * bands):
        batch, blk, chunk = task // (b_ * bands), task // bands % b_, task % bands
        i0 = chunk * band
        i1 = min(oh_, i0 + band)
        k0 = blk * VECTOR
        used = min(VECTOR, k_ - k0)
        buf = aligned_zeros(held + VECTOR, y.dtype)  # and a vector where outside pixels go
        out = aligned_zeros(span * VECTOR, y.dtype)
        spots = carray(stack_array(VECTOR, 1, np.uint64), VECTOR)
        ws, lanes = filters[blk], sources[blk]
        p0, places = _places(rows, cols, h_, w_, i0, reach, width)
        q0, out_places = _places(out_rows, out_cols, oh_, ow_, i0, band, width)
        for n in range(batch * images, min(n_, (batch + 1) * images)):
            xn, yn = x[n], y[n]
            for sub in range(j_):
                _move_in(buf, np.uint64(sub * phases * pixels * VECTOR), xn, x_channel, x_pixel,
                         lanes[sub], p0, places, spots)
            if along_rows:
                _tiles(buf, out, ws, taps, bias, k0, used, (i1 - i0) * width, WINDOW_TAPS,
                       WINDOW_ROWS)
            elif t_ == WINDOW_TAPS:
                _tiles(buf, out, ws, taps, bias, k0, used, (i1 - i0) * width, WINDOW_TAPS, 0)
            else:
                _tiles(buf, out, ws, taps, bias, k0, used, (i1 - i0) * width, 0, 0)
            # the activation in a pass of its own, in cache (in the tiles it pushes the tile
            # out of the registers: conv_blocked.py)
            activate_run(out, 0, (i1 - i0) * width * VECTOR, 1, act)
            _move_out(out, yn, k0, used, y_channel, y_pixel, q0, out_places, spots)


@njit(cache=True, fastmath=CPU_KERNEL["fastmath"])
def _weight_sums(buf, grad, taps, total, rows, cols, width):
    """total[t, v] += the sum over a band's local outputs q = r * width + j (r < ``rows``,
    j < ``cols``) of grad[q * VECTOR + v] * buf[q * VECTOR + taps[t] + v]: float32 within a
    row, float64 across rows. The columns past ``cols`` are left out, not multiplied by a zero
    gradient: a NaN or Inf they read would spread to every tap (PyTorch's does not). The
    register tile: TAPS taps x one vector, one gradient vector meeting TAPS buffer vectors per
    output (the lanes outermost, as in _tiles); windows of more taps take several passes."""
    t_ = taps.shape[0]
    tile = stack_array(TAPS, VECTOR, grad.dtype)
    acc, flat = carray(tile, (TAPS, VECTOR)), carray(tile, TAPS * VECTOR)
    # the rows' sums, one flat loop over the tile: as a loop over the taps of one over the
    # lanes, the lanes' loop unrolled and its conversions to float64 stayed scalar, a quarter
    # of this function's time on MobileNetV2's 14x14 layer
    wide = carray(stack_array(TAPS, VECTOR, np.float64), TAPS * VECTOR)
    offsets = carray(stack_array(TAPS, 1, np.uint64), TAPS)
    for t0 in range(0, t_, TAPS):
        for t in range(TAPS):
            offsets[t] = taps[min(t0 + t, t_ - 1)]
        for k in range(TAPS * VECTOR):
            wide[k] = 0
        for r in range(rows):
            for t in range(TAPS):
                for v in range(VECTOR):
                    acc[t, v] = 0
            for q in range(r * width, r * width + cols):
                at = np.uint64(q * VECTOR)
                for v in range(UVECTOR):
                    gv = grad[at + v]
                    for t in range(TAPS):
                        acc[t, v] += gv * buf[at + offsets[t] + v]
            for k in range(TAPS * VECTOR):
                wide[k] += flat[k]
        for t in range(min(TAPS, t_ - t0)):
            for v in range(VECTOR):
                total[t0 + t, v] += wide[t * VECTOR + v]


@njit(**CPU_KERNEL)
def depthwise_planes_weight(x, h_, w_, x_channel, x_pixel, sources, rows, cols, plane, band,
                            images, taps, gy, oh_, ow_, y_channel, y_pixel, lanes, out_rows,
                            out_cols, partial):
    """The weight gradient of depthwise_planes' forward: partial[batch * bands + chunk, b, t,
    v] = the sum over the images n of ``batch`` (``images`` of them) and the outputs (i, j) of
    band ``chunk`` of gy[k, i, j] x the source that tap t of output (i, j) of image n reads,
    k = b * VECTOR + v (the caller sums the bands and batches).

    Layout: x, h_ ... taps as depthwise_planes' (one sub-plane); gy (N, Y) each image flat,
    (k, i, j) at ``k * y_channel + (i * ow_ + j) * y_pixel``; lanes (B, VECTOR) the output
    channel of each lane (-1: none); out_rows (oh_, 2) = (0, i) and out_cols (ow_,) = j place
    the gradient at the buffer's local outputs q = (i - i0) * width + j;
    partial (ceil(N / images) x bands, B, T, VECTOR) float64.
    Loop order: (block, run of ``images`` images, band) in parallel; per task the places of
    its band's source and gradient pixels, then per image the source's and the gradient's
    rows moved into two buffers zeroed once (every image writes the same cells; as the
    forward moves its source), then :func:`_weight_sums`. Each task
    owns its partial[batch * bands + chunk, b], so the sum needs no atomics and is the same
    on any number of threads.
    """
    n_, b_ = x.shape[0], sources.shape[0]
    pixels, width, phases = plane[0], plane[1], plane[2]
    bands = (oh_ + band - 1) // band
    batches = (n_ + images - 1) // images
    reach = pixels // width
    held = max(phases * pixels, band * width + int(taps.max()) // VECTOR) * VECTOR
    for task in prange(b_ * batches * bands):
        blk, batch, chunk = task // (batches * bands), task // bands % batches, task % bands
        i0 = chunk * band
        i1 = min(oh_, i0 + band)
        buf = aligned_zeros(held + VECTOR, gy.dtype)
        grad = aligned_zeros((band * width + 1) * VECTOR, gy.dtype)  # its lanes past K stay zero
        spots = carray(stack_array(VECTOR, 1, np.uint64), VECTOR)
        total = partial[batch * bands + chunk, blk]
        total[:] = 0
        source, lane = sources[blk, 0], lanes[blk]
        p0, places = _places(rows, cols, h_, w_, i0, reach, width)
        q0, out_places = _places(out_rows, out_cols, oh_, ow_, i0, band, width)
        for n in range(batch * images, min(n_, (batch + 1) * images)):
            _move_in(buf, np.uint64(0), x[n], x_channel, x_pixel, source, p0, places, spots)
            _move_in(grad, np.uint64(0), gy[n], y_channel, y_pixel, lane, q0, out_places, spots)
            _weight_sums(buf, grad, taps, total, i1 - i0, ow_, width)


@njit(inline="always", cache=True)
def _inside(offset, step, size, count):
    """(lo, hi): the indices lo <= o < hi of o < count whose cell offset + o * step lies
    inside 0 <= cell < size (none: lo == hi): a window's taps inside the image, or the output
    columns whose taps all do."""
    lo, inside, _ = valid_range(offset, step, size, count)
    return lo, lo + inside


@njit(inline="always", cache=True)
def _edge_flags(starts, pixels, sw, left, dw, s_, w_):
    """(T, 2, s_) uint8: whether pixel 0 (flags[t, 0, s]) and pixel ``pixels`` - 1 (flags[t,
    1, s]) of the tile from each output column in ``starts`` read tap column s inside the
    image (depthwise_nhwc_rows' tiles, its columns at ``sw``, ``left`` and ``dw``)."""
    flags = np.empty((starts.shape[0], 2, s_), np.uint8)
    for t in range(starts.shape[0]):
        for e in range(2):
            j = starts[t] + e * (pixels - 1)
            for s in range(s_):
                column = j * sw - left + s * dw
                flags[t, e, s] = column >= 0 and column < w_
    return flags


@njit(cache=True, fastmath=CPU_KERNEL["fastmath"])
def _row_tiles(xn, at, step, row_step, column_step, filters, first_tap, blocks, r0, r1, s_,
               columns_, shared_, tiles, span, flags, bias, yn, out, out_step, channels, ahead,
               ahead_rows, ahead_step, edges_, pixels_):
    """yn[out + q * out_step + k] = bias[k] + the sum over window rows r0 <= r < r1 and
    columns s < s_ of xn[at + r * row_step + s * column_step + q * step + k] *
    filters[(r * s_ + s) * blocks + k // VECTOR, k % VECTOR] for the output pixels q of
    ``tiles`` (their first pixels: ``pixels_`` from each, a compile-time constant) and the
    channels k < ``channels``; where ``edges_`` (a compile-time constant: a row's first and
    last tiles), a tile's first pixel at tap column s only where flags[tile, 0, s] and its last
    only where flags[tile, 1, s] (:func:`_edge_flags`: a row's edge pixels' taps in the padding
    left out, by a branch a tap, which the tiles between them go without).
    depthwise_nhwc_rows' register tiles of ``pixels_`` pixels x one vector along a row, read
    from the image as it lies, a tile's blocks in turn (its pixels' channels adjacent:
    neighbouring lines). ``columns_``, a compile-time constant, is s_ where it is 3 (the tap
    loop then unrolls), else 0; ``shared_``, another, says that the tap columns' step is the
    pixels' (stride 1, no dilation along the row): tap s + 1's pixel j then lies at tap s's
    pixel j + 1 by one expression, and a window row's 3 taps over 8 pixels load 10 vectors
    (as two variables LLVM cannot know equal, every tap loaded its pixels again: 24 FMAs from
    memory, and MobileNetV2's stride-1 layers ran 1.01-1.19x slower). Before each tile, the
    cache lines of ``ahead_rows`` rows from ``ahead`` (``ahead_step`` apart) under its pixels
    are prefetched. A function of its own, called once a row for its tiles (its arguments,
    each array a dozen words, took as long to pass as a tile's FMAs; inlined into the task
    loop, MobileNetV2's 8 x 28 x 28 x 192 layers ran 1.07-1.18x slower)."""
    acc = carray(stack_array(pixels_, VECTOR, yn.dtype), (pixels_, VECTOR))
    line = LINE_BYTES // yn.itemsize
    for tile in range(span[0], span[1]):
        q0 = tiles[tile]
        for r in range(ahead_rows):
            first = ahead + np.uint64(r) * ahead_step + np.uint64(q0) * step
            for e in range(0, pixels_ * int(step), line):
                prefetch(xn, first + np.uint64(e))
        for k0 in range(0, channels, VECTOR):
            blk = k0 // VECTOR
            first = at + np.uint64(q0) * step + np.uint64(k0)
            for j in range(pixels_):
                for v in range(VECTOR):
                    acc[j, v] = bias[k0 + v]
            for r in range(r0, r1):
                row = first + np.uint64(r) * row_step
                for s in range(s_ if columns_ == 0 else columns_):
                    tap = first_tap + (r * s_ + s) * blocks + blk
                    column = row + np.uint64(s) * (step if shared_ else column_step)
                    if edges_:
                        lane_fmas(acc, xn, column, step, filters, tap, flags[tile, 0, s] != 0,
                                  flags[tile, 1, s] != 0, pixels_)
                    else:
                        lane_fmas(acc, xn, column, step, filters, tap, True, True, pixels_)
            place = out + np.uint64(q0) * out_step + np.uint64(k0)
            for j in range(pixels_):
                for v in range(UVECTOR):
                    yn[place + np.uint64(j) * out_step + v] = acc[j, v]


@njit(cache=True, inline="always")
def _row(xn, at, step, row_step, column_step, filters, first_tap, blocks, r0, r1, s_, tiles,
         span, flags, bias, yn, out, out_step, channels, ahead, ahead_rows, ahead_step, edges_,
         pixels_):
    """:func:`_row_tiles`, its tap columns a compile-time 3 where the window is 3 wide (an
    expression's value reaches Numba as a variable, not a constant: its loop then unrolled by
    two, its window row's loads not shared), their step the pixels' where it is. Inlined, as
    :func:`_row_out` is, into depthwise_nhwc_rows' task loop."""
    if s_ == 3 and column_step == step:
        _row_tiles(xn, at, step, row_step, column_step, filters, first_tap, blocks, r0, r1, s_,
                   3, True, tiles, span, flags, bias, yn, out, out_step, channels, ahead,
                   ahead_rows, ahead_step, edges_, pixels_)
    elif s_ == 3:
        _row_tiles(xn, at, step, row_step, column_step, filters, first_tap, blocks, r0, r1, s_,
                   3, False, tiles, span, flags, bias, yn, out, out_step, channels, ahead,
                   ahead_rows, ahead_step, edges_, pixels_)
    else:
        _row_tiles(xn, at, step, row_step, column_step, filters, first_tap, blocks, r0, r1, s_,
                   0, False, tiles, span, flags, bias, yn, out, out_step, channels, ahead,
                   ahead_rows, ahead_step, edges_, pixels_)


@njit(cache=True)
def _narrow_row(xn, at, step, row_step, column_step, filters, first_tap, blocks, r0, r1, s_,
                tiles, span, flags, bias, yn, out, out_step, channels, ahead, ahead_rows,
                ahead_step, width):
    """:func:`_row` over tiles of ``width`` < PIXELS outputs (a row's segment narrower than
    PIXELS), the width made a compile-time constant here: a function of its own, not inlined
    as the other row levels are (in the task's loop, Numba's unrolling of the widths left the
    loop serial; tests/test_kernel_ir.py checks)."""
    for pixels in literal_unroll(NARROW_WIDTHS):
        if width == pixels:
            _row(xn, at, step, row_step, column_step, filters, first_tap, blocks, r0, r1, s_,
                 tiles, span, flags, bias, yn, out, out_step, channels, ahead, ahead_rows,
                 ahead_step, True, pixels)


@njit(cache=True)
def _row_plan(ow_, w_, s_, sw, dw, left):
    """The tiles of depthwise_nhwc_rows' rows of ``ow_`` outputs over ``w_`` input columns (a
    window ``s_`` wide at stride ``sw`` and dilation ``dw``, the first output's first tap at
    column -``left``): tiles of PIXELS with edge flags, tiles of PIXELS between them, a tile
    of HALF_PIXELS, a tile of the segment's width, one-pixel tiles.

    The columns past a row's first and last whose taps reach into the padding (a padding or
    dilation past the stride) are tiles of one pixel; the others, a segment from column e_l,
    in tiles of PIXELS, the last moved back to end at the segment's end where more than
    HALF_PIXELS columns are left for it, else one of HALF_PIXELS ending there, or, a segment
    narrower than PIXELS, one tile of its width. The segment's first and last tiles take
    edge flags, those between read every tap. Returned as (segment width, the tiles' first
    columns kind by kind, each kind's count, the tiles' edge flags)."""
    e_l = max(0, -(-left // sw) - 1)
    e_r = max(0, ow_ - 2 - (w_ - 1 + left - (s_ - 1) * dw) // sw)
    if e_l + e_r >= ow_:
        e_l, e_r = ow_, 0
    width = ow_ - e_l - e_r
    wholes, rest = width // PIXELS, width % PIXELS
    closing = 1 if rest > HALF_PIXELS or rest == 0 and wholes > 1 else 0
    halves = 1 if wholes > 0 and 0 < rest <= HALF_PIXELS else 0
    ends = np.array([e_l + t * (width - PIXELS) for t in range(1 + closing if wholes > 0 else 0)],
                    np.int64)
    # (a range that runs backwards gives a comprehension a negative length in Numba)
    between = np.array([e_l + t * PIXELS for t in range(1, max(1, wholes - (rest == 0)))],
                       np.int64)
    half = np.array([e_l + width - HALF_PIXELS for _ in range(halves)], np.int64)
    narrow = np.array([e_l for _ in range(1 if wholes == 0 and width > 0 else 0)], np.int64)
    singles = np.array([j for j in range(ow_) if j < e_l or j >= ow_ - e_r], np.int64)
    kinds = (ends, between, half, narrow, singles)
    counts = np.array([kind.size for kind in kinds], np.int64)
    flags = np.concatenate((_edge_flags(ends, PIXELS, sw, left, dw, s_, w_),
                            _edge_flags(between, PIXELS, sw, left, dw, s_, w_),
                            _edge_flags(half, HALF_PIXELS, sw, left, dw, s_, w_),
                            _edge_flags(narrow, width, sw, left, dw, s_, w_),
                            _edge_flags(singles, 1, sw, left, dw, s_, w_)))
    return width, np.concatenate(kinds), counts, flags


@njit(cache=True, inline="always")
def _row_out(xn, at, step, row_step, column_step, filters, first_tap, blocks, r0, r1, s_, tiles,
             bounds, flags, width, bias, yn, out, out_step, channels, ahead, ahead_rows,
             ahead_step):
    """One output row of a part of depthwise_nhwc_rows: :func:`_row` over each kind of its
    tiles (:func:`_row_plan`), tiles[bounds[k]:bounds[k + 1]] the k-th kind's."""
    if bounds[1] > bounds[0]:
        _row(xn, at, step, row_step, column_step, filters, first_tap, blocks, r0, r1, s_, tiles,
             (bounds[0], bounds[1]), flags, bias, yn, out, out_step, channels, ahead,
             ahead_rows, ahead_step, True, PIXELS)
    if bounds[2] > bounds[1]:
        _row(xn, at, step, row_step, column_step, filters, first_tap, blocks, r0, r1, s_, tiles,
             (bounds[1], bounds[2]), flags, bias, yn, out, out_step, channels, ahead,
             ahead_rows, ahead_step, False, PIXELS)
    if bounds[3] > bounds[2]:
        _row(xn, at, step, row_step, column_step, filters, first_tap, blocks, r0, r1, s_, tiles,
             (bounds[2], bounds[3]), flags, bias, yn, out, out_step, channels, ahead,
             ahead_rows, ahead_step, True, HALF_PIXELS)
    if bounds[4] > bounds[3]:
        _narrow_row(xn, at, step, row_step, column_step, filters, first_tap, blocks, r0, r1, s_,
                    tiles, (bounds[3], bounds[4]), flags, bias, yn, out, out_step, channels,
                    ahead, ahead_rows, ahead_step, width)
    if bounds[5] > bounds[4]:
        _row(xn, at, step, row_step, column_step, filters, first_tap, blocks, r0, r1, s_, tiles,
             (bounds[4], bounds[5]), flags, bias, yn, out, out_step, channels, ahead,
             ahead_rows, ahead_step, True, 1)


# depthwise_nhwc_rows' parts: the columns of a part's row of its array ``parts``
ROWS, TOP, WINDOW_R, COLUMNS, WINDOW_S, LEFT, ORIGIN, FIRST_TAP = range(8)


def row_plans(parts, w_, sw, dw):
    """depthwise_nhwc_rows' tiles of ``parts`` (its (P, 8) array) over rows of ``w_`` input
    columns at column stride ``sw`` and dilation ``dw``: (tiles, bounds, flags, widths), every
    part's :func:`_row_plan` in one array each, so that a task takes no view of its own (a
    list of plans read in the tasks, each read's reference counts shared by the threads, ran
    8 x 56 x 56 x 144's phases 1.2x slower)."""
    plans = [_row_plan(part[COLUMNS], w_, part[WINDOW_S], sw, dw, part[LEFT]) for part in parts]
    widths = np.array([plan[0] for plan in plans], np.int64)
    tiles = np.concatenate([plan[1] for plan in plans])
    counts = np.array([plan[2] for plan in plans], np.int64).reshape(len(plans), 5)
    bounds = np.concatenate([np.zeros((len(plans), 1), np.int64), counts], axis=1).ravel()
    bounds = np.cumsum(bounds).reshape(len(plans), 6)
    flags = np.zeros((tiles.size, 2, max(part[WINDOW_S] for part in parts)), np.uint8)
    for p, plan in enumerate(plans):
        flags[bounds[p, 0]:bounds[p, 5], :, :plan[3].shape[2]] = plan[3]
    return tiles, bounds, flags, widths


@njit(**CPU_KERNEL)
def depthwise_nhwc_rows(x, h_, w_, filters, bias, y, parts, group, tiles, bounds, flags, widths,
                        y_row, y_col, stride, dilation, act):
    """y = act(bias + the depthwise correlation of x with the filters), NHWC in, NHWC out, read
    and written where they lie: no buffer, no moves, in parts, each a correlation of its own
    window into its own pixels of y (a strided layer's input gradient's phases: one part a
    phase; else one part). Part p's output (i, j), i < rows and j < columns of parts[p], is
    y[n] at origin + i * y_row + j * y_col = act(bias[k] + the sum over its taps (r, s), r <
    R_p and s < S_p, inside the image of x[n, i * sh - top + r * dh, j * sw - left + s * dw,
    k] * filters[first_tap + (r * S_p + s) * C / VECTOR + k // VECTOR, k % VECTOR]).

    Layout: x (N, h_ * w_ * C), NHWC images flat, C a multiple of VECTOR (a pixel's channels
    whole vectors); y (N, Y) each image flat; filters (taps * C / VECTOR, VECTOR), each part's
    HWIO (R_p * S_p, C) in rows of a vector from its first tap's row; bias (C,); parts (P, 8)
    int64, a part's (rows, top, R_p, columns, S_p, left, origin, first tap) (ROWS ... FIRST_TAP);
    ``group`` consecutive parts make a task's row (a strided input gradient's column phases:
    each task then writes a whole row of gx); the parts' tiles (:func:`row_plans`): tiles
    (T,) their first columns, bounds (P, 6) part p's tiles of kind k tiles[bounds[p,
    k]:bounds[p, k + 1]], flags (T, 2, S) their edge flags, widths (P,) each part's segment
    width; stride and dilation pairs.
    Loop order: (image, group of parts, output row) in parallel; per task and part the window
    rows inside the image, then :func:`_row_out` over its row: tiles of PIXELS from its first
    column, the last moved back to end at its last where more than HALF_PIXELS columns are
    left for it, else a tile of HALF_PIXELS ending there; a row narrower than PIXELS is one
    tile of its width (a compile-time constant each: one variant a width). A tile's first and
    last pixels leave out their taps in the padding by a branch, its others read every tap:
    the row's edges cost no tiles of their own (as one-pixel tiles of their inside taps, with
    two overlapping half tiles between them, MobileNetV2's 7 x 7 rows ran 2x slower). Where
    the padding or the dilation passes the stride, the outer columns whose taps reach into the
    padding, all but the innermost on each side, are tiles of one pixel, and the columns
    between them are tiled so (:func:`_row_plan`). The activation in a pass over the row while
    it is in cache. Each task owns its parts' rows i of y[n].
    The row levels take the task's arrays borrowed (kernels.borrowed: no reference counts) and
    all but the narrow rows' are inlined: each call of a level took a reference to each of its
    six arrays and let it go, 84 atomic adds on counts every thread shares a row, and an 8 x
    28 x 28 x 16 layer's rows took ~600 ns each (its forward 0.155 ms, PyTorch's 0.047, on
    one thread of an Intel Xeon with AVX-512; 0.058 now, 8 x 28 x 28 x 192 0.57 -> 0.49).
    While a row's tiles run, the lines of the rows the next output row reads first are
    prefetched: the tiles read a pixel's vector of channels from lines C elements apart, a
    pattern the hardware prefetchers did not follow (8 x 144 x 56 x 56: 5.7 -> 3.4 ms on one
    Zen 4 thread; 0.2 ms an image from cache). depthwise_planes, moving each pixel's vector
    into a blocked buffer, took 1.1-1.9x as long on MobileNetV2's 28x28 to 112x112 planes
    (benchmarks/results/cpu-nhwc.md)."""
    n_, c_, p_ = x.shape[0], bias.shape[0], parts.shape[0]
    b_ = c_ // VECTOR
    sh, sw = stride
    dh, dw = dilation
    groups = p_ // group
    rows = max([parts[p, ROWS] for p in range(p_)])
    step, out_step = np.uint64(sw * c_), np.uint64(y_col)
    row_step, column_step = np.uint64(dh * w_ * c_), np.uint64(dw * c_)
    for task in prange(n_ * groups * rows):
        n, g, i = task // (groups * rows), task // rows % groups, task % rows
        # each row's call levels take these without their reference counts (borrowed)
        xn, yn = borrowed(x[n]), borrowed(y[n])
        weights, shifts, starts, edges = (borrowed(filters), borrowed(bias), borrowed(tiles),
                                          borrowed(flags))
        for p in range(g * group, (g + 1) * group):
            if i >= parts[p, ROWS]:
                continue
            r_, s_, left = parts[p, WINDOW_R], parts[p, WINDOW_S], parts[p, LEFT]
            top_row = i * sh - parts[p, TOP]
            r0, r1 = _inside(top_row, dh, h_, r_)  # the window rows inside: r0 <= r < r1
            # the row's first output's first tap, from its first window row: negative above
            # the image or left of it, where the rows from r0 and the taps inside add to it
            at = np.uint64((top_row * w_ - left) * c_)
            out_row = parts[p, ORIGIN] + i * y_row
            # the rows the next output row reads first: fetched while this one's tiles run
            ahead_row = top_row + (r_ - 1) * dh + 1
            ahead_rows = max(0, min(sh, h_ - ahead_row)) if ahead_row >= 0 else 0
            _row_out(xn, at, step, row_step, column_step, weights, parts[p, FIRST_TAP], b_, r0,
                     r1, s_, starts, (bounds[p, 0], bounds[p, 1], bounds[p, 2], bounds[p, 3],
                                      bounds[p, 4], bounds[p, 5]), edges, widths[p], shifts, yn,
                     np.uint64(out_row), out_step, c_, np.uint64((ahead_row * w_ - left) * c_),
                     ahead_rows, np.uint64(w_ * c_))
            if act != 0:
                for j in range(parts[p, COLUMNS]):
                    activate_run(yn, out_row + j * y_col, c_, 1, act)


def stride2_columns(w_, ow_, s_, left):
    """depthwise_nhwc_stride2_input_rows' tiles of an input gradient row ``w_`` wide, gy's rows
    ``ow_`` wide, a window ``s_`` wide whose first tap lies ``left`` columns left of its output's
    column doubled: (tiles (T,) their first columns, PIXELS from each (the last moved back to
    end at the row's end), taps (T, s_, 4) per tile and tap column s (the phase p of the tile's
    columns x0 + p + 2u it reaches, u < HALF_PIXELS; the gy column j0 its pixel u = 0 reads;
    whether that one, and whether the last, reads inside gy's row)); None for a row narrower
    than PIXELS, or where a tap would reach past more than a sub-tile's first or last pixel (a
    padding far past the window)."""
    if w_ < PIXELS:
        return None
    starts = tile_starts(0, w_, PIXELS)
    taps = np.empty((len(starts), s_, 4), np.int64)
    for tile, x0 in enumerate(starts):
        for s in range(s_):
            phase = (s - x0 - left) % 2
            j0 = (x0 + phase + left - s) // 2
            outside = [not 0 <= j0 + u < ow_ for u in range(HALF_PIXELS)]
            if any(outside[1:-1]):
                return None
            taps[tile, s] = phase, j0, not outside[0], not outside[-1]
    return np.array(starts, np.int64), taps


@njit(cache=True, fastmath=CPU_KERNEL["fastmath"])
def _stride2_row(gyn, oh_, ow_, filters, gxn, y, w_, r_, sh, top, tiles, taps, c_):
    """Row y of depthwise_nhwc_stride2_input_rows' gx: its tiles, each two sub-tiles of
    HALF_PIXELS pixels (its even and its odd columns) x one vector, channel block by block."""
    s_, b_ = taps.shape[1], c_ // VECTOR
    even = carray(stack_array(HALF_PIXELS, VECTOR, gxn.dtype), (HALF_PIXELS, VECTOR))
    odd = carray(stack_array(HALF_PIXELS, VECTOR, gxn.dtype), (HALF_PIXELS, VECTOR))
    step = np.uint64(c_)
    # the window rows r whose gy row i = (y + top - r) / sh is whole and inside: r_lo <= r <
    # r_hi, sh apart (both bounds of r_lo leave the same remainder by sh)
    reach = y + top
    r_lo, r_hi = max(reach % sh, reach - sh * (oh_ - 1)), min(r_, reach + 1)
    # the last gy row the next gx row reads: the one it reads first that this row does not,
    # fetched a share a tile
    line = LINE_BYTES // gxn.itemsize
    t_ = tiles.shape[0]
    next_row = min(oh_ - 1, (reach + 1) // sh)
    lines = ow_ * c_ // line
    share = -(-lines // t_)
    for tile in range(t_):
        x0 = tiles[tile]
        for e in range(tile * share, min(lines, (tile + 1) * share)):
            prefetch(gyn, np.uint64(next_row * ow_ * c_ + e * line))
        for blk in range(b_):
            k0 = blk * VECTOR
            for u in range(HALF_PIXELS):
                for v in range(VECTOR):
                    even[u, v] = 0
                    odd[u, v] = 0
            for r in range(r_lo, r_hi, sh):
                g_row = (reach - r) // sh * ow_ * c_ + k0
                for s in range(s_):
                    tap = (r * s_ + s) * b_ + blk
                    # gy's pixel j0 may lie left of the row (-1): its place wraps, unread
                    start = np.uint64(g_row + taps[tile, s, 1] * c_)
                    first, last = taps[tile, s, 2] != 0, taps[tile, s, 3] != 0
                    if taps[tile, s, 0] == 0:  # a branch, so that each sub-tile's registers
                        lane_fmas(even, gyn, start, step, filters, tap, first, last,
                                  HALF_PIXELS)
                    else:
                        lane_fmas(odd, gyn, start, step, filters, tap, first, last,
                                  HALF_PIXELS)
            out = np.uint64((y * w_ + x0) * c_ + k0)
            for u in range(HALF_PIXELS):  # a loop a vector: one loop for both was scalar
                for v in range(UVECTOR):
                    gxn[out + np.uint64(2 * u) * step + v] = even[u, v]
                for v in range(UVECTOR):
                    gxn[out + np.uint64(2 * u + 1) * step + v] = odd[u, v]


@njit(**CPU_KERNEL)
def depthwise_nhwc_stride2_input_rows(gy, oh_, ow_, filters, gx, h_, w_, r_, sh, top, tiles,
                                      taps):
    """gx = the input gradient of a depthwise NHWC layer of column stride 2 (row stride sh,
    undilated), one output channel an input channel: gx[n, y, x, k] = the sum over the taps (r,
    s) and gy's pixels (i, j) inside gy with y = i * sh - top + r and x = 2 * j - left + s of
    gy[n, i, j, k] * filters[(r * S + s) * C / VECTOR + k // VECTOR, k % VECTOR], every cell
    written (a zero where no tap reaches).

    Layout: gy (N, oh_ * ow_ * C), gx (N, h_ * w_ * C), NHWC images flat, C a multiple of
    VECTOR; filters (R * S * C / VECTOR, VECTOR), HWIO's; tiles and taps from
    :func:`stride2_columns` (left is in them).
    Loop order: (image, gx row y) in parallel; per task its tiles of PIXELS columns, per tile
    and channel block two sub-tiles of HALF_PIXELS pixels x one vector (the tile's even
    columns and its odd ones), accumulated over the window rows whose gy row is inside and the
    S tap columns, each tap column meeting the sub-tile of its phase in HALF_PIXELS packed FMAs
    (a branch on the phase, so that every index into either sub-tile is a constant), then
    stored in column order: a tile's PIXELS pixels x C channels are one stretch of gx. Each
    task owns its row of gx. As :func:`depthwise_nhwc_rows`' parts, a phase each (a
    correlation writing every other column of a row, over tiles that overlap at its ends),
    MobileNetV2's stride-2 input gradients took 1.2-1.5x as long (8 x 192 x 28 x 28: 0.345 ->
    0.227 ms on two Zen 4 threads, PyTorch channels-last 0.204; 8 x 96 x 112 x 112: 6.4 ->
    5.0, PyTorch 13.3; benchmarks/results/cpu-nhwc-depthwise-stride2.md). While a row's tiles
    run, the lines of the gy row the next gx row reads first are prefetched, a share a tile
    (8 x 96 x 112 x 112 on one thread: 6.9 -> 6.3 ms); prefetching the next tile's lines of
    gx gained nothing. A row's call takes the arrays borrowed, as depthwise_nhwc_rows' levels
    do (8 x 28 x 28 x 16: 0.057 -> 0.047 ms on one thread)."""
    n_ = gy.shape[0]
    for task in prange(n_ * h_):
        n, y = task // h_, task % h_
        _stride2_row(borrowed(gy[n]), oh_, ow_, borrowed(filters), borrowed(gx[n]), y, w_, r_,
                     sh, top, borrowed(tiles), borrowed(taps), gx.shape[1] // (h_ * w_))


@njit(inline="always", cache=True)
def _weight_fmas(acc, xn, at, offsets, inside, row, gyn, g_at):
    """acc[t, v] += gyn[g_at + v] * (xn[at + offsets[row, t] + v], or 0 where not inside[row,
    t]): one output pixel of the weight gradient's register tile, TAPS taps x one vector. A tap
    in the padding reads a valid place and multiplies a zero by the gradient, as PyTorch's sum
    over a padded image does (an Inf or NaN gradient makes that tap NaN)."""
    zero = gyn.dtype.type(0)
    for v in range(UVECTOR):
        gv = gyn[g_at + v]
        for t in range(TAPS):
            xv = xn[at + offsets[row, t] + v]
            acc[t, v] += gv * (xv if inside[row, t] != 0 else zero)


@njit(inline="always", cache=True)
def _inside_weight_fmas(acc, xn, at, row_step, column_step, gyn, g_at):
    """:func:`_weight_fmas` for a pixel whose 3 x 3 window lies inside the image: each tap's
    place from the two steps, no table of offsets and no mask to load."""
    for v in range(UVECTOR):
        gv = gyn[g_at + v]
        for r in range(WINDOW_ROWS):
            for s in range(WINDOW_ROWS):
                xv = xn[at + np.uint64(r) * row_step + np.uint64(s) * column_step + v]
                acc[r * WINDOW_ROWS + s, v] += gv * xv


@njit(cache=True, fastmath=CPU_KERNEL["fastmath"])
def _rows_weight_sums(xn, gyn, i0, i1, t0, h_, w_, ow_, j_lo, j_hi, window, stride,
                      dilation, top, left, ahead, total):
    """total[b, t0 + t, v] += the sum over the output rows i0 <= i < i1 and their columns j of
    gy[i, j, b * VECTOR + v] * the input tap t0 + t reads, for every channel block b, float32
    across the rows: each row's inside columns j_lo <= j < j_hi (every tap's column in the
    image) with each tap's offset from the pixel at its first window row inside (where a 3 x 3
    window's rows all lie inside, from the row and column steps), then its edge columns, each
    tap placed on its own. The rows' places are worked out once for all the
    blocks, and the tile is flushed to float64 once a run: MobileNetV2's 8 x 960 x 7 x 7 layer
    took 0.73 ms with a call a row and block, 0.40-0.46 with a call a row, 0.17-0.19 so
    (two Zen 4 threads). While the blocks run, the cache lines of the
    output rows ``ahead`` (i1 <= i < ahead) and of their window's input rows are prefetched,
    a share a block: a block reads a pixel's vector of channels from lines C elements apart,
    which the hardware prefetchers did not follow (as in depthwise_nhwc_rows)."""
    b_, t_ = total.shape[0], total.shape[1]
    (r_, s_), (sh, sw), (dh, dw) = window, stride, dilation
    c_, rows, edge_columns = b_ * VECTOR, i1 - i0, ow_ - (j_hi - j_lo)
    tile = stack_array(TAPS, VECTOR, gyn.dtype)
    acc, flat = carray(tile, (TAPS, VECTOR)), carray(tile, TAPS * VECTOR)
    wide = carray(stack_array(TAPS, VECTOR, np.float64), TAPS * VECTOR)
    # per row: its first inside column's pixel at its first window row inside, and each tap's
    # offset from it; then per edge column each tap's own place (row * (edge_columns + 1) + 1
    # + e); a tap outside the image reads a valid place and is masked
    firsts = np.empty(rows, np.uint64)
    offsets = np.empty((rows * (edge_columns + 1), TAPS), np.uint64)
    inside = np.empty((rows * (edge_columns + 1), TAPS), np.uint64)
    # rows whose inside columns' 3 x 3 windows lie wholly in the image: their taps' places
    # from two steps, not the tables (whose loads and masks took MobileNetV2's 8 x 144 x 56 x
    # 56 weight gradient 5.3 ms on one Zen 4 thread, 3.3-3.6 without; 8 x 384 x 14 x 14 0.32
    # -> 0.27)
    whole = np.empty(rows, np.bool_)
    three = r_ == WINDOW_ROWS and s_ == WINDOW_ROWS and t0 == 0
    row_step, column_step = np.uint64(dh * w_ * c_), np.uint64(dw * c_)
    for row in range(rows):
        top_row = (i0 + row) * sh - top
        r0, r1 = _inside(top_row, dh, h_, r_)  # the window rows inside: r0 <= r < r1
        whole[row] = three and r0 == 0 and r1 == r_
        first_row = top_row + r0 * dh if r1 > r0 else 0
        firsts[row] = np.uint64(max(0, (first_row * w_ + j_lo * sw - left) * c_))
        for e in range(edge_columns + 1):
            place = row * (edge_columns + 1) + e
            j = e - 1 if e - 1 < j_lo else j_hi + e - 1 - j_lo
            for t in range(TAPS):
                r, s = (t0 + t) // s_, (t0 + t) % s_
                column = j * sw - left + s * dw
                ok = t0 + t < t_ and r >= r0 and r < r1 and (
                    e == 0 or column >= 0 and column < w_)
                inside[place, t] = ok
                offsets[place, t] = 0 if not ok else np.uint64(
                    ((r - r0) * dh * w_ + s * dw) * c_ if e == 0
                    else ((top_row + r * dh) * w_ + column) * c_)
    # the next rows' lines: gy's, then x's (their window rows inside the image), all
    # consecutive in NHWC; a block fetches its share
    line = LINE_BYTES // gyn.itemsize
    g_lines = (ahead - i1) * ow_ * c_ // line
    x_from = min(h_, max(0, i1 * sh - top))
    x_to = max(x_from, min(h_, (ahead - 1) * sh - top + (r_ - 1) * dh + 1))
    lines = g_lines + (x_to - x_from) * w_ * c_ // line
    share = -(-lines // b_)
    for blk in range(b_):
        k0 = blk * VECTOR
        for e in range(blk * share, min(lines, (blk + 1) * share)):
            if e < g_lines:
                prefetch(gyn, np.uint64(i1 * ow_ * c_ + e * line))
            else:
                prefetch(xn, np.uint64(x_from * w_ * c_ + (e - g_lines) * line))
        for t in range(TAPS):
            for v in range(VECTOR):
                acc[t, v] = 0
        for row in range(rows):
            g_row = (i0 + row) * ow_ * c_ + k0
            place = row * (edge_columns + 1)
            if whole[row]:
                for j in range(j_lo, j_hi):
                    _inside_weight_fmas(acc, xn,
                                        firsts[row] + np.uint64((j - j_lo) * sw * c_ + k0),
                                        row_step, column_step, gyn, np.uint64(g_row + j * c_))
            else:
                for j in range(j_lo, j_hi):
                    _weight_fmas(acc, xn, firsts[row] + np.uint64((j - j_lo) * sw * c_ + k0),
                                 offsets, inside, place, gyn, np.uint64(g_row + j * c_))
            for e in range(edge_columns):
                j = e if e < j_lo else j_hi + e - j_lo
                _weight_fmas(acc, xn, np.uint64(k0), offsets, inside, place + 1 + e, gyn,
                             np.uint64(g_row + j * c_))
        # through a float64 copy: every index into the tile a constant, so that it stays in
        # registers (an index bounded by the taps left put it in memory)
        for k in range(TAPS * VECTOR):
            wide[k] = flat[k]
        for t in range(min(TAPS, t_ - t0)):
            for v in range(VECTOR):
                total[blk, t0 + t, v] += wide[t * VECTOR + v]


@njit(**CPU_KERNEL)
def depthwise_nhwc_weight_rows(x, h_, w_, gy, oh_, ow_, window, stride, dilation, top, left,
                               band, images, partial):
    """The weight gradient of depthwise_nhwc_rows' forward, x and gy read where they lie:
    partial[batch * bands + chunk, b, t, v] = the sum over the images n of ``batch``
    (``images`` of them) and the output rows i of band ``chunk`` (``band`` rows) of
    gy[n, i, j, k] * x[n, i * sh - top + r * dh, j * sw - left + s * dw, k] for tap t = r * S
    + s, k = b * VECTOR + v, a padding pixel read as a zero (so that an Inf or NaN of gy there
    makes the tap's sum NaN, as PyTorch's does). The caller sums the bands and batches.

    Layout: x (N, h_ * w_ * C), gy (N, oh_ * ow_ * C), NHWC images flat, C a multiple of
    VECTOR; window (R, S), stride, dilation pairs; partial (ceil(N / images) x bands, B, R * S,
    VECTOR) float64.
    Loop order: (run of ``images`` images, band) in parallel; per task its images' output
    rows in runs of whole rows of SUMMED_PIXELS outputs at most, per run and pass of TAPS
    taps :func:`_rows_weight_sums` over the channel blocks (a run's input lines, 3 + 2 rows of
    C-channel pixels for MobileNet's 112-wide layers, stay in L2 across the blocks): float32
    within a run, float64 across runs. Each task owns its
    partial[batch * bands + chunk], so the sum needs no atomics and is the same on any number
    of threads. On this project's AVX-512 Zen 4 the tile compiles to 36 packed zmm FMAs, none
    scalar (tests/test_kernel_ir.py). depthwise_planes_weight, moving both operands into
    blocked buffers, took 1.3-2.9x as long on MobileNetV2's 112x112 and 56x56 layers, alike on
    its 7x7 one (benchmarks/results/cpu-nhwc.md)."""
    n_, t_ = x.shape[0], partial.shape[2]
    s_, sw, dw = window[1], stride[1], dilation[1]
    bands = (oh_ + band - 1) // band
    batches = (n_ + images - 1) // images
    j_lo, j_hi = _inside(-left, sw, w_ - (s_ - 1) * dw, ow_)  # columns whose taps lie inside
    summed = max(1, SUMMED_PIXELS // ow_)  # rows summed in float32
    for task in prange(batches * bands):
        batch, chunk = task // bands, task % bands
        total = partial[task]
        total[:] = 0
        i1 = min(oh_, (chunk + 1) * band)
        for n in range(batch * images, min(n_, (batch + 1) * images)):
            for i0 in range(chunk * band, i1, summed):
                for t0 in range(0, t_, TAPS):
                    end = min(i1, i0 + summed)
                    _rows_weight_sums(x[n], gy[n], i0, end, t0, h_, w_, ow_, j_lo, j_hi,
                                      window, stride, dilation, top, left,
                                      min(i1, end + summed) if t0 + TAPS >= t_ else end, total)
