"""Channel-blocked direct convolution: a register tile of PIXELS output pixels x one or two
vectors of output channels, accumulated over every tap of the window before it is stored.

The design of oneDNN's and LIBXSMM's direct kernels (Georganas et al., SC'18; Zhang, Franchetti
and Low, ICML'18): the tile lives in a stack array indexed only by constants, so LLVM keeps it
in vector registers; per tap, a row of filter values (streamed from L1) meets PIXELS input
values, each broadcast from memory into a fused multiply-add per vector (on AVX2 said in
vectors, kernels/tile_fmas.py: as loops, LLVM left its short tiles scalar). On this project's
AVX-512 machine the tap loop of a one-vector tile compiles to one ``vmovups`` of a zmm
register and eight ``vfmadd231ps (mem){1to16}, zmm, zmm``, nothing else but the loop's own
counter (tests/test_kernel_ir.py asserts the packed FMAs on the machine it runs on). A stride-1
NCHW layer takes tiles along one output row instead (conv2d_forward_rows): side by side, its
pixels' input values need one address register between them, so the tile can be longer.

Index arithmetic is affine, so one kernel serves every layout: an image is a flat vector, an
output pixel p = (oh, ow) reads from ``base(p) = oh * row_step + ow * col_step`` and a tap
(c, r, s) of a group at ``base(p) + taps[g, t]``, t = (c * R + r) * S + s; the caller builds
``taps`` from its layout's strides, and pads the input so every tap lands inside it. Output
(k, oh, ow) sits at ``y_origin + k * y_channel + oh * y_row + ow * y_col`` (NCHW or NHWC, or
one phase of a strided layer's input gradient: implementations/conv2d.py). Offsets are
unsigned, so Numba's negative-index wraparound (a shift, a mask and an add per load) folds
away.
"""

import functools

import numpy as np
from numba import carray, njit, prange

from . import CPU_KERNEL, VECTOR_LANES, ZERO, stack_array
from .activation import activate_run
from .tile_fmas import broadcast_fmas
from .variants import variant
from .vector_moves import move_rows, transpose_block

# The register tile: PIXELS output pixels by LANES output channels, one or two vectors of
# float32 (VECTOR lanes: 16 with AVX-512's 32 zmm registers, 8 with AVX2's 16 ymm). Two vectors
# a pixel share each broadcast input value between two FMAs (ResNet's 3x3 layers 1.5x faster
# than one); a layer with one vector's worth of channels (LeNet's C3) takes one. float64 takes
# twice the registers.
VECTOR = VECTOR_LANES
PIXELS = 8 if VECTOR == 16 else 4
# Tiles of half a vector for groups of few channels, on AVX-512 only: a Zen 4 (as Intel's parts
# with one 512-bit FMA port) issues two 256-bit FMAs a cycle but one 512-bit one, so an 8-lane
# tile keeps the FMA rate a 16-lane one loses half of on ResNeXt's 8-channel groups. AVX2's
# 128-bit FMAs issue no faster than its 256-bit ones; a 4-lane tile LLVM vectorised across
# its pixels instead (no broadcasts: 4-5x slower than 16 lanes on ResNeXt's 4-channel groups).
NARROW = (VECTOR // 2,) if VECTOR == 16 else ()
LANES = VECTOR  # the kernels below; their "_wide" variants (at the end) take 2 * VECTOR
# Tiles per parallel task: a task's output pixels (and the filter block it streams) stay in
# L1/L2, and a small batch still splits into enough tasks for every thread.
TASK_TILES = 8
# The weight gradient's passes over the batch: the images of a pass (their input and output
# gradient together) stay in L2 while every tile reads them; a run of images is summed in
# float32 (at least one image, ~RUN_PIXELS products where images are small) before float64.
PASS_BYTES = 512 << 10
RUN_PIXELS = 512
# conv2d_forward_rows' tile lengths, by vector registers a pixel takes (its lanes x bytes / a
# vector's; 0.5 is NARROW's half vector): the fastest of 4-16 on ResNet's 3x3 layers, LeNet's
# C3 and 16- to 128-channel layers 7-56 columns wide, on this project's Zen 5 (AVX-512), and
# compiled for Haswell there (NUMBA_CPU_NAME=haswell, AVX2's 16 registers). Longer tiles
# spill. Written as loops, AVX2's one-vector tiles of 8 pixels or fewer compiled to scalar FMAs
# (~20 GFLOP/s); said in vectors (kernels/tile_fmas.py), the 7- and 8-pixel ones ran 8-channel
# layers of 7 and 8 columns 1.25-1.75x faster than conv2d_forward's tiles there
# (benchmarks/results/cpu-avx2-simulated.md). Half a vector's tiles are said in vectors too
# (_accumulate: as loops, its 7- and 8-pixel ones kept scalar FMAs). Two vectors' 9: a
# 17-wide row takes two tiles of 9, not of 10 (94% of their pixels its own, not 85%):
# Inception's 17x17 1x7 and 7x1 layers 1.08-1.17x faster forward and input gradient on two
# Zen 4 threads (0.72-0.85x PyTorch -> 0.80-0.92x).
ROW_TILES = ({0.5: (16, 14, 10, 8, 7), 1: (16, 14, 10, 8, 7), 2: (10, 9, 8, 7)} if VECTOR == 16 else
             {1: (14, 12, 10, 8, 7), 2: (5, 4)})
ROW_PIXELS = ROW_TILES[1][0]  # conv2d_forward_rows' own; forward_rows compiles the others
# The column steps conv2d_forward_rows is compiled for: a stride-1 layer's and a stride-2 one's
# in NCHW, in a 3-channel NHWC image (an RGB stem's, read as it lies), and in images of
# channels in blocks of VECTOR (an NHWC layer's: implementations/conv2d.py). A compile-time
# step keeps a tile's broadcasts on one pointer (a runtime one would take a register per
# pixel, as conv2d_forward does).
ROW_STEPS = (1, 2, 3, 6, VECTOR, 2 * VECTOR)
COL_STEP = 1  # conv2d_forward_rows' own; forward_rows compiles the other
# conv2d_forward_rows' spans of taps: a band's tiles run a span of whole channels, about
# SPAN_BYTES of filters, before the next (their partial sums saved between spans), so that the
# span stays in L2 (1 MiB on this project's Zen 5) beside the band's input rows while every
# tile of the band streams it. ASPP's 512-channel 3x3 layer (590 KB of filters a block of 32
# output channels, ~300 KB of input rows a row of tiles) 23.5-26.9 -> 21.0-21.9 ms on two
# threads, 49 -> 44 ms on one; spans of 128 channels ran alike, of 64 ResNet-18's 7x7 layer
# 1.3x slower.
SPAN_BYTES = 288 << 10
# conv2d_forward_rows' output pixels a task (a band of whole rows, at least one). A task a row
# ran ResNeXt's grouped 14x14 layer and LeNet's C3 (10x10) 1.05-1.2x slower on one thread; 64
# to 256 pixels were alike on the 7x7 to 28x28 layers tried, two threads.
BAND_PIXELS = 256


def lanes(channels: int) -> int:
    """The tile's width in channels for a layer with ``channels`` output channels a group:
    the width of the kernels :data:`FORWARD` holds and :func:`backward_weight` compiles for
    it."""
    return next((w for w in (*NARROW, VECTOR) if channels <= w), 2 * VECTOR)


@njit(inline="always", cache=True)
def _accumulate(acc, a, bases, offsets, rows, pixels, width, period, lo, hi):
    """acc[j, v] += sum over t < len(offsets) with lo <= t % period < hi of
    a[bases[j] + offsets[t]] * rows[t, v]: the microkernel. On AVX-512 LLVM vectorises the
    loops below into it, but for half a vector (the 8 x 8 tile: 64 scalar FMAs a tap); on AVX2
    it left tiles of 4-8 pixels scalar. So there a run of taps is said in vectors
    (:func:`~.tile_fmas.broadcast_fmas`), which on AVX-512 compiled the 8 x 2-vector row tile
    with a register copy an accumulator a tap (LLVM's coalescing of the loop's exit values),
    where LLVM's own vectorisation has none. acc (PIXELS, width) and bases (PIXELS,) are stack
    arrays; rows (>= T, width) streams from L1. ``period`` is a channel's
    taps and [lo, hi) those of its window rows that read data, not padding (all of them:
    0, period); the three are unsigned, so that no index into offsets or rows may be negative
    (Numba's wraparound for one took a shift, two masks and two adds a tap). A window of no
    taps (a strided layer's input-gradient phase no tap lands on) has a period of 0."""
    for t0 in range(0, offsets.shape[0], max(period, np.uint64(1))):
        if VECTOR == 8 or width < VECTOR:
            broadcast_fmas(acc, a, bases, offsets, rows, np.uint64(t0) + lo, np.uint64(t0) + hi,
                           pixels, width, 0)
        else:
            for t in range(np.uint64(t0) + lo, np.uint64(t0) + hi):
                off = offsets[t]
                for v in range(width):
                    rv = rows[t, v]
                    for j in range(pixels):
                        acc[j, v] += a[bases[j] + off] * rv


@njit(inline="always", cache=True)
def _forward_task(task, groups, blocks, parts, kg, lanes):
    """A forward task's (image n, group g, channel block, part of the image's pixels, first
    output channel, channels used of the block's lanes), tasks ordered (n, g, block, part)."""
    n, rest = task // (groups * blocks * parts), task % (groups * blocks * parts)
    g, blk, part = rest // (blocks * parts), rest // parts % blocks, rest % parts
    return n, g, blk, part, g * kg + blk * lanes, min(lanes, kg - blk * lanes)


@njit(inline="always", cache=True)
def _zero(acc, pixels, width):
    for j in range(pixels):
        for v in range(width):
            acc[j, v] = 0


@njit(**CPU_KERNEL)
def conv2d_forward(x, w, taps, b, kg, y, oh_, ow_, row_step, col_step, y_origin, y_channel,
                   y_row, y_col, act):
    """y = act(b + conv(x, w)) over register tiles of PIXELS output pixels x LANES channels.

    Layout: x (N, X) each image flat and padded; w (G, B, T, LANES) group g's output channels
    in blocks of LANES, tap-major, zero past the group's last channel; taps (G, T) uint64;
    b (G, B, LANES) the bias in the filters' blocks; kg the output channels a group; y (N, Y)
    each image flat, (k, oh, ow) as the module says, OH x OW pixels.
    Loop order: (n, group, channel block, TASK_TILES tiles of PIXELS consecutive output
    pixels, row-major) in parallel; per tile, taps t, then the channels, then the PIXELS
    pixels innermost (unrolled: the register tile). A tile past the last pixel repeats it and
    stores nothing there. Each task owns y[n] at its channels x its pixels.
    """
    n_, groups, blocks, t_ = x.shape[0], w.shape[0], w.shape[1], np.uint64(taps.shape[1])
    p_ = oh_ * ow_
    tiles = (p_ + PIXELS - 1) // PIXELS
    chunks = (tiles + TASK_TILES - 1) // TASK_TILES
    for task in prange(n_ * groups * blocks * chunks):
        n, g, blk, chunk, k0, used = _forward_task(task, groups, blocks, chunks, kg, LANES)
        yn = y[n]
        tile_ = stack_array(PIXELS, LANES, y.dtype)
        acc, flat = carray(tile_, (PIXELS, LANES)), carray(tile_, PIXELS * LANES)
        bases = carray(stack_array(PIXELS, 1, np.uint64), PIXELS)
        outs = carray(stack_array(PIXELS, 1, np.uint64), PIXELS)
        for tile in range(chunk * TASK_TILES, min(tiles, (chunk + 1) * TASK_TILES)):
            p0 = tile * PIXELS
            for j in range(PIXELS):
                oh, ow = divmod(min(p0 + j, p_ - 1), ow_)
                bases[j] = np.uint64(oh * row_step + ow * col_step)
                outs[j] = np.uint64(y_origin + oh * y_row + ow * y_col)
            # the tile starts from the bias
            move_rows(b[g, blk], ZERO, ZERO, flat, ZERO, np.uint64(LANES), PIXELS, LANES)
            _accumulate(acc, x[n], bases, taps[g], w[g, blk], PIXELS, LANES, t_, ZERO, t_)
            for v in range(LANES):
                if v < used:
                    k = k0 + v
                    for j in range(PIXELS):
                        if p0 + j < p_:
                            yn[outs[j] + np.uint64(k * y_channel)] = acc[j, v]
        # the activation in a pass of its own over the task's outputs, still in cache: inside
        # the tile's epilogue its branches and calls push the tile out of the registers (a
        # ReLU there made the kernel 2.6x slower on LeNet's C3)
        if act != 0:
            _activate_pixels(yn, act, y_origin, k0, used, chunk * TASK_TILES * PIXELS,
                             min(p_, (chunk + 1) * TASK_TILES * PIXELS), ow_, y_channel, y_row,
                             y_col)


@njit(inline="always", cache=True)
def _activate_pixels(yn, act, y_origin, k0, used, p0, p1, ow_, y_channel, y_row, y_col):
    """yn = act(yn) at channels [k0, k0 + used) x the row-major output pixels [p0, p1): the
    pixels innermost where they lie side by side (NCHW), the channels where they do (y_channel
    1: NHWC; a channel at a time, a pass over the task's outputs a vector each, ran ResNet-50's
    NHWC 8 x 256 x 56 x 56 strided 1x1 layer with a ReLU 19 ms, 10 without, two Zen 4
    threads)."""
    p = p0
    while p < p1:  # the pixels' runs along an output row
        count = min(p1 - p, ow_ - p % ow_)
        run = y_origin + p // ow_ * y_row + p % ow_ * y_col
        if y_channel == 1:
            for j in range(count):
                activate_run(yn, run + j * y_col + k0, used, 1, act)
        else:
            for k in range(k0, k0 + used):
                activate_run(yn, run + k * y_channel, count, y_col, act)
        p += count


@njit(inline="always", cache=True)
def _store_row_tile(acc, flat, yn, first, k0, used, y_channel, y_col, pixels, lanes_):
    """yn[first + k * y_channel + j * y_col] = acc[j, k - k0] for the tile's ``used`` channels
    from k0: by whole vectors where the tile's pixels lie side by side in yn (y_col 1: NCHW),
    the tile transposed in registers, or its channels do (y_channel 1: NHWC) and it has all
    of them; element by element elsewhere (NHWC's last, partial block of channels). ``flat``
    is acc's memory as one vector."""
    if y_col == 1:
        for v0 in range(0, lanes_, VECTOR):
            if v0 < used:
                transpose_block(flat, np.uint64(v0), np.uint64(lanes_), yn,
                                first + np.uint64(k0 + v0) * y_channel, y_channel, pixels,
                                used - v0)
        return
    if used == lanes_ and y_channel == 1:
        move_rows(flat, ZERO, np.uint64(lanes_), yn, first + np.uint64(k0), y_col, pixels,
                  lanes_)
        return
    for v in range(lanes_):
        if v < used:
            k = k0 + v
            for j in range(pixels):
                yn[first + np.uint64(k) * y_channel + np.uint64(j) * y_col] = acc[j, v]


@njit(**CPU_KERNEL)
def conv2d_forward_rows(x, w, taps, b, kg, y, oh_, ow_, row_step, channel_taps, live, columns,
                        column_tiles, span_taps, y_origin, y_channel, y_row, y_col, act):
    """conv2d_forward for an image of column step COL_STEP (a stride-1 or stride-2 NCHW
    layer, or a phase of a strided one's input gradient), over register tiles of ROW_PIXELS
    consecutive pixels of one output row x LANES channels: the tile's input values lie
    COL_STEP apart, so every broadcast of a tap is addressed from one pointer and a constant,
    where conv2d_forward's PIXELS pixels (which may wrap to the next row) take a register
    each. That leaves the registers for a longer tile: ResNet-8's 16-channel 3x3 layer
    180-250 -> 310-340 GFLOP/s on this project's Zen 5, two threads (see ROW_TILES).

    A tile leaves out the taps that read only padding. A group's taps are ``channel_taps`` a
    channel, window-row-major, ``columns`` a window row; live (OH, 2) says which of a
    channel's taps [lo, hi) read data on each output row (ASPP's dilation-6 layer on 33x33
    images spent 12% of its multiply-adds on padding rows, ResNet's 7x7 layers 10%), and
    column_tiles (Q, 3) lists a row's tiles: (first output column, the window columns
    [first, last) its pixels read data with). A row that reads no padding runs all its taps
    in one loop (a loop a channel over 9 taps ran ResNet-18's 512-channel layer 5-9%
    slower); an edge tile runs a loop per window row and channel over its live columns
    (ASPP's layer: 13 window columns a row, not 15; its forward 26-29 -> 22-23 ms, two
    threads, input gradient 24-26 -> 22 ms).
    The caller orders the tiles so that the last to store a pixel ran all the taps it needs.

    Layout: as conv2d_forward's, with col_step COL_STEP; needs OW >= ROW_PIXELS. Loop order: (n,
    group, channel block, band of output rows of about BAND_PIXELS pixels) in parallel; per
    band, spans of ``span_taps`` taps (whole channels: see SPAN_BYTES), then rows, then
    column_tiles' tiles in their order, then as conv2d_forward. A tile starts from its
    channels' bias, or from its sums of the spans before, saved in the task's own buffer; it
    leaves the last span by whole vectors (:func:`_store_row_tile`): stored an element at a
    time, it took 2-3x the instructions of a stem's tap loop (MobileNetV2's 3-channel stem at
    0.55x PyTorch's speed, 1.1-1.4x so). Each task owns y[n] at its channels x its band.
    """
    n_, groups, blocks, t_ = x.shape[0], w.shape[0], w.shape[1], np.uint64(taps.shape[1])
    rows = max(1, min(oh_, BAND_PIXELS // ow_))
    bands = (oh_ + rows - 1) // rows
    spans = max(np.uint64(1), (t_ + span_taps - np.uint64(1)) // span_taps)
    tiles, tile_size = column_tiles.shape[0], ROW_PIXELS * LANES
    for task in prange(n_ * groups * blocks * bands):
        n, g, blk, band, k0, used = _forward_task(task, groups, blocks, bands, kg, LANES)
        xn, yn, bias = x[n], y[n], b[g, blk]
        tile_ = stack_array(ROW_PIXELS, LANES, y.dtype)
        acc, flat = carray(tile_, (ROW_PIXELS, LANES)), carray(tile_, tile_size)
        bases = carray(stack_array(ROW_PIXELS, 1, np.uint64), ROW_PIXELS)
        oh0, oh1 = band * rows, min(oh_, (band + 1) * rows)
        # the band's tiles between spans of taps, tile-major (no allocation where one span runs)
        saved = np.empty((oh1 - oh0) * tiles * tile_size, y.dtype) if spans > 1 else yn[:0]
        for span in range(spans):
            t0, t1 = span * span_taps, min(t_, (span + np.uint64(1)) * span_taps)
            offsets, filters, count = taps[g, t0:t1], w[g, blk, t0:t1], t1 - t0
            for oh in range(oh0, oh1):
                live_lo, live_hi = live[oh, 0], live[oh, 1]
                for tile in range(tiles):
                    ow0, first, last = column_tiles[tile]
                    # each period's taps [lo, hi) (a channel's, or all of them), the periods
                    # from each r in [r0, r1) a step apart: an edge tile's live window rows,
                    # its live columns [first, last) of each, or one pass from 0
                    r0, r1, step, period, lo, hi = (ZERO, np.uint64(1), np.uint64(1), count,
                                                    ZERO, count)
                    if last - first < columns:
                        r0, r1, step, period, lo, hi = (live_lo, live_hi, columns, channel_taps,
                                                        first, last)
                    elif live_hi - live_lo < channel_taps:
                        period, lo, hi = channel_taps, live_lo, live_hi
                    for j in range(ROW_PIXELS):
                        bases[j] = np.uint64(oh * row_step + (np.int64(ow0) + j) * COL_STEP)
                    at = np.uint64(((oh - oh0) * tiles + tile) * tile_size)
                    if span == 0:  # the tile starts from the bias
                        move_rows(bias, ZERO, ZERO, flat, ZERO, np.uint64(LANES), ROW_PIXELS,
                                  LANES)
                    else:
                        move_rows(saved, at, np.uint64(LANES), flat, ZERO, np.uint64(LANES),
                                  ROW_PIXELS, LANES)
                    r = r0
                    while r < r1:  # (a range of a run-time step divides to count its trips)
                        _accumulate(acc, xn, bases, offsets[r:], filters[r:], ROW_PIXELS, LANES,
                                    period, lo, hi)
                        r += step
                    if span == spans - 1:
                        _store_row_tile(acc, flat, yn,
                                        np.uint64(y_origin + oh * y_row + np.int64(ow0) * y_col),
                                        k0, used, np.uint64(y_channel), np.uint64(y_col),
                                        ROW_PIXELS, LANES)
                    else:
                        move_rows(flat, ZERO, np.uint64(LANES), saved, at, np.uint64(LANES),
                                  ROW_PIXELS, LANES)
        if act != 0:  # in a pass of its own, as in conv2d_forward
            _activate_pixels(yn, act, y_origin, k0, used, oh0 * ow_, oh1 * ow_, ow_, y_channel,
                             y_row, y_col)


@njit(cache=True, fastmath=CPU_KERNEL["fastmath"])
def _weight_tile(flat, rows, taps, pixels, total, t0, n0, n1, run, size, pixels_, lanes_):
    """conv2d_backward_weight's task: its tile of total (taps t0 to t0 + pixels_ of one channel
    block, zeroed in the first pass) += the products of images n0 to n1, a run of ``run`` images
    at a time; pixels_ and lanes_ are compile-time constants (the tile's shape). A function of
    its own, not inlined: inlined into the serial twin's loop nest, the two-vector tile ran
    2.8-3.3x slower than in the parallel kernel's outlined loop body
    (benchmarks/results/cpu-weight-tiles.md)."""
    t_, p_ = taps.shape[0], pixels.shape[0] // run
    acc = carray(stack_array(pixels_, lanes_, rows.dtype), (pixels_, lanes_))
    bases = carray(stack_array(pixels_, 1, np.uint64), pixels_)
    if n0 == 0:
        total[t0:t0 + pixels_] = 0
    for m in range(n0, n1, run):
        count = min(run, n1 - m) * p_
        for j in range(pixels_):
            bases[j] = taps[min(t0 + j, t_ - 1)] + np.uint64(m * size)
        _zero(acc, pixels_, lanes_)
        _accumulate(acc, flat, bases, pixels[:count], rows[m * p_:], pixels_, lanes_,
                    np.uint64(count), ZERO, np.uint64(count))
        for j in range(pixels_):
            if t0 + j < t_:
                for v in range(lanes_):
                    total[t0 + j, v] += acc[j, v]


@njit(**CPU_KERNEL)
def conv2d_backward_weight(x, gy, taps, pixels, images_per_pass, total):
    """total = dL/dw in float64: gy correlated with x over batch and pixels, over register tiles
    of PIXELS taps x LANES output channels (the forward's microkernel, taps and pixels trading
    places).

    Layout: x (N, X) each image flat and padded as for the forward, C-contiguous; gy
    (G, B, N, P, LANES) the output gradient's channels in the forward's blocks, pixel-major,
    zero past a group's last channel, C-contiguous; taps (G, T) uint64 as the forward's; pixels
    (RUN * P,) uint64 the base of each output pixel of RUN consecutive images, from the first
    one's start (image m's pixel p at m * X + base(p)); total (G, B, T, LANES) float64 in the
    forward's filter blocks (lanes past a group's channels are written too: the caller drops
    them). A 1x1 NHWC layer may pass its two operands the other way round, x's pixels as the
    rows of lanes and gy's images as the taps' source (implementations/conv2d.py's
    _pointwise_weight): the sums are then the swapped layer's.
    Loop order: passes of images_per_pass images, each small enough to stay in L2 while every
    tile reads it (when each task streamed the whole batch from L3, ResNet-8's 7x7 layers ran
    at a quarter of the forward's rate); per pass, (group, channel block, tile of PIXELS taps)
    in parallel (:func:`_weight_tile`), then runs of RUN images, their pixels, the channels
    and the PIXELS taps innermost (unrolled). Each task owns its tile of total, zeroed in the
    first pass; a run's float32 sum (at most max(P, ~RUN_PIXELS) products) is added into it,
    so a long batch x pixel sum keeps the precision of the bias gradient's.
    """
    n_, size = x.shape
    groups, blocks, t_ = total.shape[0], total.shape[1], total.shape[2]
    p_ = gy.shape[3]
    run = pixels.shape[0] // p_
    flat = x.reshape(n_ * size)
    rows = gy.reshape((groups, blocks, n_ * p_, LANES))
    tiles = (t_ + PIXELS - 1) // PIXELS
    for n0 in range(0, n_, images_per_pass):
        n1 = min(n_, n0 + images_per_pass)
        for task in prange(groups * blocks * tiles):
            g, blk, tile = task // (blocks * tiles), task // tiles % blocks, task % tiles
            _weight_tile(flat, rows[g, blk], taps[g], pixels, total[g, blk], tile * PIXELS, n0,
                         n1, run, size, PIXELS, LANES)


# The weight gradient's tiles: taps a tile, by vector registers a tap takes (its lanes x
# bytes / a vector's), as ROW_TILES. One vector: 16 taps ran RegNetX's grouped layer and
# LeNet's C3 (144 and 150 taps) 1.1x faster than 8, ResNeXt's 36 taps 1.03x slower (48 taps
# computed, not 40): weight_taps weighs both. Two: 10 x 2 zmm accumulators ran 1.25x faster
# than 8 (geomean of ResNet-8's and ResNet-18's 32- to 512-channel layers, two threads, this
# project's Zen 5: benchmarks/results/cpu-weight-tiles.md), 12 spill. AVX2's 16 ymm hold no
# more than PIXELS. Half a vector: 16 taps; 8, written as loops, LLVM vectorised across the
# taps instead (no broadcasts; ResNeXt's 4-channel groups 2.8x slower than at 16). Said in
# vectors, as half-vector tiles now are (_accumulate), 8 compiles to packed FMAs too; its
# speed against 16 is not measured again.
WEIGHT_TILES = {0.5: (16,), 1: (16, 8), 2: (10,)} if VECTOR == 16 else {}
# A tile's loads a pixel besides its taps' broadcasts: the pixel's offset, the output
# gradient's vector, a base spilled to the stack (seen in its machine code).
TILE_LOADS = 3

# The forward kernels by tile width (lanes(channels) says which a layer takes).
FORWARD = {VECTOR: conv2d_forward,
           2 * VECTOR: variant(conv2d_forward, "wide", LANES=2 * VECTOR),
           **{w: variant(conv2d_forward, f"narrow{w}", LANES=w) for w in NARROW}}


@functools.cache
def backward_weight(lanes_: int, taps: int):
    """conv2d_backward_weight compiled for tiles of ``taps`` x ``lanes_`` (weight_taps says
    which a layer takes)."""
    return variant(conv2d_backward_weight, f"{taps}x{lanes_}", PIXELS=taps, LANES=lanes_)


def weight_taps(count: int, lanes_: int, itemsize: int) -> int:
    """The weight gradient's tile (one of WEIGHT_TILES' lengths, else PIXELS) for ``count``
    taps a group and a tile ``lanes_`` wide of ``itemsize``-byte numbers: the fewest loads over
    the pixels, tiles x (taps + TILE_LOADS), the longest among equals."""
    lengths = WEIGHT_TILES.get(lanes_ * itemsize / (4 * VECTOR), (PIXELS,))
    return min(lengths, key=lambda p: (-(-count // p) * (p + TILE_LOADS), -p))


@functools.cache
def forward_rows(lanes_: int, pixels: int, col_step: int):
    """conv2d_forward_rows compiled for tiles of ``pixels`` x ``lanes_`` (row_pixels says which
    a layer takes) over input columns ``col_step`` apart (one of ROW_STEPS)."""
    return variant(conv2d_forward_rows, f"{pixels}x{lanes_}" + f"s{col_step}" * (col_step > 1),
                   ROW_PIXELS=pixels, LANES=lanes_, COL_STEP=col_step)


def span_taps(channel_taps: int, lanes_: int, itemsize: int) -> int:
    """conv2d_forward_rows' taps a span (whole channels of ``channel_taps``, at least one) for
    a tile ``lanes_`` wide of ``itemsize``-byte numbers."""
    channels = SPAN_BYTES // max(1, channel_taps * lanes_ * itemsize)
    return max(1, channels) * channel_taps or 1


def row_pixels(width: int, lanes_: int, itemsize: int):
    """The row tile (one of ROW_TILES' lengths) for an output row of ``width`` pixels and a
    tile ``lanes_`` wide of ``itemsize``-byte numbers: the one that recomputes the fewest
    pixels at the row's end (the longest among equals); None where none fits the row, or the
    tile would take more registers than ROW_TILES has lists for."""
    fitting = [p for p in ROW_TILES.get(lanes_ * itemsize / (4 * VECTOR), ()) if p <= width]
    return min(fitting, key=lambda p: (-(-width // p) * p - width, -p), default=None)
