"""Layout moves around the CPU's convolution kernels: padded images, channels in blocks, and
filters in blocks.

Both are memory-bound copies of a whole batch, written once per call; done by NumPy in the
calling thread they had come to cost as much as the multiply-adds of the kernels they feed
(ResNet-8's 16-channel 3x3 layers, batch 64: padding 0.2-0.5 ms, the gradient's channel blocks
0.5-1.4 ms, against a 0.7-1 ms kernel on two threads). Here every image is a parallel task.
"""

import numpy as np
from numba import njit, prange

from . import CPU_KERNEL, VECTOR_LANES
from .vector_moves import interleave_run, move_run, transpose_block

VECTOR = VECTOR_LANES
HALF = VECTOR // 2  # a block of half a vector's channels (conv_blocked.NARROW's tiles)


@njit(**CPU_KERNEL)
def embed(x, images, origin, channel_step, row_step, col_step):
    """images[n] = 0, then images[n, origin + c * channel_step + i * row_step + j * col_step]
    = x[n, c, i, j]: each image copied into a larger zeroed one (padding: the steps are the
    larger image's own; steps times a stride would spread x out, zeros between its pixels).

    Layout: x (N, C, H, W) NCHW-indexed, any strides (NHWC as a view); images (N, X), each
    image flat, in whichever layout the steps describe; the steps never map two cells of x to
    one cell of images. Loop order: images n in parallel, then c, i, j (j innermost), or i, j,
    c where a pixel's channels are adjacent on both sides (NHWC) or only in x (NHWC into NCHW).
    Each task owns images[n]: it zeroes the whole row, then writes x's cells into it while it
    is in cache. Runs contiguous on both sides move a vector at a time, the last one under a
    mask (vector_moves.move_run): a row (col_step 1 from NCHW: padding an NCHW image), or a
    pixel's channels (channel_step 1 from NHWC), a row's pixels' channels in one run where the
    pixels are adjacent on both sides too (padding an NHWC image). NHWC into NCHW goes by
    VECTOR x VECTOR (pixels, channels) blocks transposed in registers, a row's last block
    overlapping the one before it (the channels past the last whole VECTOR, and rows narrower
    than a vector, element by element). As loops, a row shorter than a vector (7 or 14 wide)
    stayed scalar, 0.235 ms of ResNeXt's 14x14 layer's 1.41 ms forward; and NHWC into NCHW, a
    strided pass over the image a channel, took 3.0 ms of ResNet-18's 8 x 64 x 56 x 56
    stride-2 layer's 12.9 ms forward on one Zen 4 thread (0.4 ms so).
    """
    n_, c_, h_, w_ = x.shape
    size = x.itemsize
    image_, channel_, row_, column_ = (x.strides[0] // size, x.strides[1] // size,
                                       x.strides[2] // size, x.strides[3] // size)
    runs = col_step == 1 and column_ == 1
    pixels = channel_step == 1 and channel_ == 1
    run = w_ * c_ if pixels and col_step == c_ and column_ == c_ else c_  # a row, or a pixel
    # whole channel blocks only: a block's loads read VECTOR channels of each pixel
    blocks = c_ // VECTOR * VECTOR if col_step == 1 and channel_ == 1 and w_ >= VECTOR else 0
    for n in prange(n_):
        image = images[n]
        image[:] = 0
        if runs:
            for c in range(c_):
                for i in range(h_):
                    _move(x, n * image_ + c * channel_ + i * row_, image,
                          origin + c * channel_step + i * row_step, w_)
        elif pixels:
            for i in range(h_):
                for j in range(0, w_, run // c_):
                    _move(x, n * image_ + i * row_ + j * column_, image,
                          origin + i * row_step + j * col_step, run)
        else:
            for i in range(h_ if blocks else 0):
                for j0 in range(0, w_, VECTOR):
                    j = min(j0, w_ - VECTOR)
                    for c in range(0, blocks, VECTOR):
                        transpose_block(x, np.uint64(n * image_ + i * row_ + j * column_ + c),
                                        np.uint64(column_), image,
                                        np.uint64(origin + c * channel_step + i * row_step + j),
                                        np.uint64(channel_step), VECTOR, VECTOR)
            for c in range(blocks, c_):
                for i in range(h_):
                    row = origin + c * channel_step + i * row_step
                    source = x[n, c, i]
                    for j in range(w_):
                        image[row + j * col_step] = source[j]


@njit(**CPU_KERNEL)
def embed_channel_blocks(x, images, origin, block_step, row_step, col_step):
    """images[n] = 0, then images[n, origin + (c // VECTOR) * block_step + i * row_step + j *
    col_step + c % VECTOR] = x[n, i, j, c]: NHWC images padded into images of channels in
    blocks of VECTOR, (N, C / VECTOR, rows, columns, VECTOR), each pixel's block one vector,
    zero past C (an NHWC layer's operand of the blocked kernels: implementations/conv2d.py).

    Layout: x (N, H, W, C) NHWC-indexed, its channels contiguous, its pixels any (positive)
    strides (every second pixel of a 1x1 strided layer's input); images (N, X). Loop order:
    images n in parallel, then x's memory order, rows i, columns j, the blocks: each pixel's
    block one vector move, under a mask for a last, partial one (vector_moves.move_run). Each
    task owns images[n]: it zeroes the whole row, then writes x's cells into it while it is
    in cache.
    """
    n_, h_, w_, c_ = x.shape
    size = x.itemsize
    image_, row_, column_ = x.strides[0] // size, x.strides[1] // size, x.strides[2] // size
    for n in prange(n_):
        image = images[n]
        image[:] = 0
        for i in range(h_):
            for j in range(w_):
                first = n * image_ + i * row_ + j * column_
                at = origin + i * row_step + j * col_step
                for b in range(-(-c_ // VECTOR)):
                    move_run(x, np.uint64(first + b * VECTOR), image,
                             np.uint64(at + b * block_step), min(VECTOR, c_ - b * VECTOR))


@njit(inline="always", cache=True)
def _move(source, first, target, at, count):
    """target[at + v] = source[first + v] for v < count, a vector at a time."""
    for v in range(0, count, VECTOR):
        move_run(source, np.uint64(first + v), target, np.uint64(at + v), min(VECTOR, count - v))


@njit(inline="always", cache=True)
def _phase_row(starts, i, sigma, h_, w_):
    """(where channel 0's cells of x's row i in phase (i mod SH, sigma) begin, the phase's
    plane size, its row width): merge_phases' layout."""
    sh, sw = starts.shape
    rho = i % sh
    width = (w_ - sigma + sw - 1) // sw
    plane = (h_ - rho + sh - 1) // sh * width
    return starts[rho, sigma] + i // sh * width, plane, width


@njit(**CPU_KERNEL)
def merge_phases(phases, starts, x):
    """x[n, c, i * SH + rho, j * SW + sigma] = phase (rho, sigma)'s cell (n, c, i, j): a strided
    NCHW layer's input gradient, computed phase by phase into planes of their own, put
    together (an NHWC layer's phases go into its gradient where they lie: a pixel's channels
    are a vector there; fastconv/implementations/conv2d.py).

    Layout: phases (N, Y), each image flat: phase (rho, sigma) from starts[rho, sigma] (SH x
    SW int64), NCHW, C planes of ceil((H - rho) / SH) x ceil((W - sigma) / SW); x (N, C, H, W)
    C-contiguous. Loop order: images n in parallel, then x's memory order: channels, rows,
    each phase's columns of a row, read contiguously (stride 2 on an even width: the two
    phases' rows interleaved a vector at a time). Each task owns x[n].
    """
    n_, c_, h_, w_ = x.shape
    sw = starts.shape[1]
    pairs = sw == 2 and w_ % 2 == 0
    for n in prange(n_):
        source = phases[n]
        for c in range(c_):
            for i in range(h_):
                at = ((n * c_ + c) * h_ + i) * w_
                if pairs:
                    even, plane, width = _phase_row(starts, i, 0, h_, w_)
                    odd = _phase_row(starts, i, 1, h_, w_)[0]
                    for j in range(0, width, VECTOR):
                        interleave_run(source, np.uint64(even + c * plane + j),
                                       np.uint64(odd + c * plane + j), x,
                                       np.uint64(at + 2 * j), min(VECTOR, width - j))
                    continue
                for sigma in range(sw):
                    first, plane, width = _phase_row(starts, i, sigma, h_, w_)
                    for j in range(width):
                        x[n, c, i, j * sw + sigma] = source[first + c * plane + j]


# channel_blocks' pixels a task where a pixel's channels are adjacent: the lines they lie on
# stay in L1 while every block takes its channels from them.
RUN_PIXELS = 64


@njit(inline="always", cache=True)
def _pixel_runs_into_blocks(a, blocks, kg):
    """channel_blocks where a's channels lie side by side (NHWC): tasks of RUN_PIXELS pixels of
    an image, per task each (group, block) in turn, a pixel's run of its channels moved a
    vector at a time (vector_moves.move_run) into its row of the block, a block past a group's
    last channel zeroed first. Each task owns its pixels' rows of every block. Tasks of a
    (group, block) each, over all of an image's pixels, read its lines once a block (from L3
    once an image passed L2) and moved a channel at a time: on two Zen 4 threads ResNeXt's 8 x
    14 x 14 x 512 output gradient in groups of 16 ran 0.13-0.14 ms, now 0.06-0.07 (one thread
    0.25 -> 0.10-0.12), MobileNetV2's 8 x 112 x 112 x 32 0.45 -> 0.20-0.22 (0.91 -> 0.42-0.46).
    ResNeXt's 8 x 56 x 56 x 128 in groups of 4, whose blocks of 8 lanes are twice its bytes,
    stays at 1.9-2.0 ms (4.4-4.9), as fast as memory takes it."""
    groups, count, n_, p_, lanes = blocks.shape
    image, pixel = np.uint64(a.strides[0] // a.itemsize), np.uint64(a.strides[2] // a.itemsize)
    parts = (p_ + RUN_PIXELS - 1) // RUN_PIXELS
    for task in prange(n_ * parts):
        n, p0 = task // parts, task % parts * RUN_PIXELS
        p1 = min(p_, p0 + RUN_PIXELS)
        for g in range(groups):
            for b in range(count):
                k0 = g * kg + b * lanes
                used = min(lanes, kg - b * lanes)
                if used < lanes:
                    blocks[g, b, n, p0:p1] = 0
                first = np.uint64(n) * image + np.uint64(k0)
                row = np.uint64(((g * count + b) * n_ + n) * p_ * lanes)
                for p in range(np.uint64(p0), np.uint64(p1)):
                    for v in range(0, used, VECTOR):
                        move_run(a, first + p * pixel + np.uint64(v), blocks,
                                 row + p * np.uint64(lanes) + np.uint64(v),
                                 min(VECTOR, used - v))


@njit(**CPU_KERNEL)
def channel_blocks(a, blocks):
    """blocks[g, b, n, p, v] = a[n, g * KG + b * L + v, p] for b * L + v < KG, else 0: each
    group's KG = K / G channels in blocks of L, the channel innermost (kernels/conv_blocked.py's
    operand layout), KG = K / G.

    Layout: a (N, K, P) any strides (an NCHW array's planes, or an NHWC array's transposed
    view); blocks (G, B, N, P, L). Loop order: (n, g, b) in parallel, then the channels v,
    the pixels p innermost: contiguous reads of a plane, stores a block's width apart (1.8-2.3x
    faster than the other order, whose L read streams and per-cell branch LLVM left scalar).
    Each task owns blocks[g, b, n]. Where a's channels lie side by side (NHWC):
    :func:`_pixel_runs_into_blocks`.
    """
    groups, count, n_, p_, lanes = blocks.shape
    kg = a.shape[1] // groups
    if a.strides[1] == a.itemsize:
        _pixel_runs_into_blocks(a, blocks, kg)
        return
    for task in prange(groups * count * n_):
        n, g, b = task // (groups * count), task // count % groups, task % count
        k0 = g * kg + b * lanes
        used = min(lanes, kg - b * lanes)
        out = blocks[g, b, n]
        for v in range(lanes):
            if v < used:
                for p in range(p_):
                    out[p, v] = a[n, k0 + v, p]
            else:
                out[:, v] = 0


@njit(inline="always", cache=True)
def _spread(a, start, stop):
    """The sum of a[i] - a[i] over [start, stop): 0 where every value is finite, NaN where one
    is not (inf - inf, NaN - NaN). Read by the task that moves them, just before or after it
    does, the values come from cache: np.isfinite(w).all() took 0.16 ms on ResNet-18's
    512-channel filters, 4% of the layer on two threads; this, no time measurable."""
    spread = a.dtype.type(0)
    for i in range(np.uint64(start), np.uint64(stop)):  # unsigned: no wraparound, no gathers
        spread += a[i] - a[i]
    return spread


@njit(**CPU_KERNEL)
def dense_channel_blocks(a, blocks):
    """channel_blocks for images whose planes are C-contiguous, and filter_blocks for filters
    whose output channels' taps lie side by side (one image of O channels of T taps):
    blocks[g, b, n, t, v] = a[n, g * O + b * L + v, t] for b * L + v < O, else 0.

    Layout: a (N, G * O, T) C-contiguous (an NCHW array's planes, or a layer's OIHW filters,
    T = I * R * S); blocks (G, B, N, T, L). Loop order: (g, b, n) in parallel; per task,
    VECTOR x VECTOR blocks of (channels, taps) transposed in registers, HALF x VECTOR ones
    where L is HALF (the element-by-element walks read or write a channel apart per element:
    0.55 ms of ResNet-18's 4.5 ms 512-channel forward on two threads, filter_blocks; 0.16 ms
    of RegNetX's 1.2 ms grouped weight gradient, channel_blocks; 2.7 ms of ResNeXt's 7.7 ms
    8-channel-group weight gradient on one Zen 4 thread, before the HALF blocks), the taps
    past the last whole VECTOR, a block's channels past O and widths neither a multiple of
    VECTOR nor HALF element by element. Each task owns blocks[g, b, n]. Returns whether every
    value of a is finite (the sum of each task's :func:`_spread` is 0).
    """
    groups, count, n_, t_, lanes = blocks.shape
    o_ = a.shape[1] // groups
    source, target = a.reshape(a.size), blocks.reshape(blocks.size)
    whole = t_ // VECTOR * VECTOR
    step = HALF if lanes == HALF else VECTOR  # the channels a transpose moves
    spread = a.dtype.type(0)
    for task in prange(groups * count * n_):
        g, b, n = task // (count * n_), task // n_ % count, task % n_
        base = task * t_ * lanes
        rows = (n * groups * o_ + g * o_ + b * lanes) * t_  # the block's channels
        spread += _spread(source, rows, rows + min(lanes, o_ - b * lanes) * t_)
        for v0 in range(0, lanes, VECTOR):
            first = rows + v0 * t_
            full = lanes % step == 0 and b * lanes + v0 + step <= o_
            if full:
                for t0 in range(0, whole, VECTOR):
                    if step == HALF:
                        transpose_block(source, np.uint64(first + t0), np.uint64(t_), target,
                                        np.uint64(base + t0 * lanes), np.uint64(lanes), HALF,
                                        VECTOR)
                    else:
                        transpose_block(source, np.uint64(first + t0), np.uint64(t_), target,
                                        np.uint64(base + t0 * lanes + v0), np.uint64(lanes),
                                        VECTOR, VECTOR)
            for t in range(whole if full else 0, t_):
                for v in range(v0, min(v0 + VECTOR, lanes)):
                    inside = b * lanes + v < o_
                    target[base + t * lanes + v] = source[rows + v * t_ + t] if inside else 0
    return spread == 0


@njit(**CPU_KERNEL)
def filter_blocks(w, blocks):
    """blocks[g, b, (i, r, s), v] = w[g, i, b * L + v, r, s] for b * L + v < O, else 0: each
    group's filters with their O output channels (w's axis 2) in blocks of L, the channel
    innermost, and the taps (input channel i, r, s) tap-major: kernels/conv_blocked.py's
    filter operand.

    Layout: w (G, I, O, R, S) any strides: a layer's filters seen with the two channel axes
    swapped, where dense_channel_blocks cannot take them (an NHWC layer's HWIO filters);
    blocks (G, B, I * R * S, L). Loop order: (g, b) in parallel, then i, r, s, the channels v
    innermost: where they lie side by side in w (HWIO: O's stride 1, the others not negative),
    a block's row of lanes is one or two vector runs (vector_moves.move_run), else element
    by element (ResNet-18's 512-channel HWIO filters so took 2.6 ms on one Zen 4 thread, 4.3
    ms on two, 7-10x the dense OIHW path). Each task owns blocks[g, b]. Returns what
    dense_channel_blocks returns.
    """
    groups, count, t_, lanes = blocks.shape
    _, i_, o_, r_, s_ = w.shape
    target = blocks.reshape(blocks.size)
    size = w.itemsize
    g_, in_, out_, row_, col_ = (w.strides[0] // size, w.strides[1] // size,
                                 w.strides[2] // size, w.strides[3] // size,
                                 w.strides[4] // size)
    runs = out_ == 1 and min(g_, in_, row_, col_) >= 0
    spread = w.dtype.type(0)
    for task in prange(groups * count):
        g, b = task // count, task % count
        used = min(lanes, o_ - b * lanes)
        for i in range(i_):
            for r in range(r_):
                for s in range(s_):
                    t = (i * r_ + r) * s_ + s
                    if runs:
                        first = g * g_ + i * in_ + b * lanes + r * row_ + s * col_
                        at = (task * t_ + t) * lanes
                        for v in range(0, used, VECTOR):
                            move_run(w, np.uint64(first + v), target, np.uint64(at + v),
                                     min(VECTOR, used - v))
                        for v in range(used, lanes):
                            target[at + v] = 0
                        continue
                    for v in range(lanes):
                        o = b * lanes + v
                        blocks[g, b, t, v] = w[g, i, o, r, s] if o < o_ else 0
        spread += _spread(target, task * t_ * lanes, (task + 1) * t_ * lanes)
    return spread == 0


@njit(**CPU_KERNEL)
def phase_filter_blocks(w, groups, starts, steps, phases):
    """phases[starts[t] + (((g * B + b) * KG + k) * steps[t]) + v] = w[g * KG + k, b * L + v, t]
    for b * L + v < C, else 0: a strided layer's filters for its input gradient, blocked once
    and straight into each phase's operand (implementations/conv2d.py's
    _input_gradient_filters): each output channel's filter an image of C input channels, in
    blocks of L, the channel innermost, its tap t sent to its phase's tap order (starts[t]:
    where t's phase begins, plus t's place in it times L; steps[t]: the phase's taps times L).

    Layout: w (K, C, T) C-contiguous (a layer's OIHW filters, T = R * S), K = G * KG; starts
    and steps (T,) uint64; phases (Y, L) C-contiguous, the phases' (G, B, KG * taps, L)
    operands one after another. Loop order: (g, b) in parallel, then k; per k, VECTOR x VECTOR
    blocks of (channels, taps) transposed in registers and each tap's row of lanes stored at its
    phase's place (transpose_block's array of row offsets), the taps past the last whole VECTOR
    too (the loads reading on into the next channel's taps, stored no further than T), a
    block's channels past C, and the last channels of w (whose loads would read past it)
    element by element. Blocked whole, then each phase's taps moved out a row at a time,
    DCGAN's 512-to-256-channel 4x4 layer's 8 MB of filters crossed memory twice: 2.8 of its
    7.6 ms on two Zen 4 threads, 0.9 ms so; a 3x3 window's 9 taps element by element, 0.72 ms
    of ResNeXt layer4's 2.4 ms input gradient (1.2 MB of filters). Each task owns its (g, b)
    rows of every phase. Returns what dense_channel_blocks returns.
    """
    k_, c_, t_ = w.shape
    lanes = phases.shape[1]
    count, kg = -(-c_ // lanes), k_ // groups
    source, target = w.reshape(w.size), phases.reshape(phases.size)
    whole = t_ // VECTOR * VECTOR
    spread = w.dtype.type(0)
    for task in prange(groups * count):
        g, b = task // count, task % count
        offsets = np.empty(t_, np.uint64)
        for k in range(kg):
            for t in range(t_):
                offsets[t] = starts[t] + np.uint64(task * kg + k) * steps[t]
            rows = ((g * kg + k) * c_ + b * lanes) * t_  # the block's channels' taps
            spread += _spread(source, rows, rows + min(lanes, c_ - b * lanes) * t_)
            for v0 in range(0, lanes, VECTOR):
                first = rows + v0 * t_
                full = v0 + VECTOR <= lanes and b * lanes + v0 + VECTOR <= c_
                # the taps past the last whole VECTOR (all of a 3x3 window's) by one more
                # transpose, where its loads (a VECTOR of taps from each channel's) stay in w
                tail = full and whole < t_ and first + (VECTOR - 1) * t_ + whole + VECTOR <= w.size
                done = t_ if tail else whole if full else 0
                for t0 in range(0, done, VECTOR):
                    transpose_block(source, np.uint64(first + t0), np.uint64(t_), target,
                                    np.uint64(v0), offsets[t0:t0 + VECTOR], VECTOR,
                                    min(VECTOR, t_ - t0))
                for t in range(done, t_):
                    for v in range(v0, min(v0 + VECTOR, lanes)):
                        inside = b * lanes + v < c_
                        target[offsets[t] + v] = source[rows + v * t_ + t] if inside else 0
    return spread == 0


@njit(**CPU_KERNEL)
def phase_filter_blocks_hwio(w, groups, starts, steps, phases):
    """phase_filter_blocks for HWIO filters read in place (an NHWC layer's): w (T, C, K)
    C-contiguous, T = R * S; phases as phase_filter_blocks'. Their copy into OIHW first, an
    array transposed about its 9-tap innermost axis, took 11.7 ms of ResNet-18's 8 x 512 x 7 x 7
    NHWC layer4 input gradient on two Zen 4 threads (0.4 ms NCHW's filters took whole).

    Loop order: (g, b) in parallel, then taps t; per tap, VECTOR x VECTOR blocks of (channels,
    filters) transposed in registers, each filter's row of lanes stored at its place in t's
    phase (evenly spaced: starts[t] + k * steps[t]); a block's channels past C, and the last
    filters of w (whose loads would read past it), element by element. Each task owns its
    (g, b) rows of every phase. Returns what phase_filter_blocks returns.
    """
    t_, c_, k_ = w.shape
    lanes = phases.shape[1]
    count, kg = -(-c_ // lanes), k_ // groups
    source, target = w.reshape(w.size), phases.reshape(phases.size)
    spread = w.dtype.type(0)
    for task in prange(groups * count):
        g, b = task // count, task % count
        used = min(lanes, c_ - b * lanes)
        for t in range(t_):
            step = steps[t]
            rows = starts[t] + np.uint64(task * kg) * step  # (g, b)'s first filter at tap t
            for v in range(used):
                at = (t * c_ + b * lanes + v) * k_ + g * kg
                spread += _spread(source, at, at + kg)
            for v0 in range(0, lanes, VECTOR):
                for k0 in range(0, kg, VECTOR):
                    first = (t * c_ + b * lanes + v0) * k_ + g * kg + k0
                    stored = min(VECTOR, kg - k0)
                    if v0 + VECTOR <= used and first + (VECTOR - 1) * k_ + VECTOR <= w.size:
                        transpose_block(source, np.uint64(first), np.uint64(k_), target,
                                        rows + np.uint64(k0) * step + np.uint64(v0), step,
                                        VECTOR, stored)
                        continue
                    for k in range(k0, k0 + stored):
                        at = rows + np.uint64(k) * step
                        for v in range(v0, min(v0 + VECTOR, lanes)):
                            inside = v < used
                            target[at + v] = source[first + (v - v0) * k_ + k - k0] if inside else 0
    return spread == 0


@njit(**CPU_KERNEL)
def taps_outermost(w, out):
    """out[t, c, k] = w[k, c, t]: OIHW filters (a weight gradient) as HWIO, w (K, C, T) and out
    (T, C, K) C-contiguous. NumPy's copy of the transposed view runs along a 9-tap axis: 4.9 ms
    for ResNet-18's 512 x 512 x 3 x 3 filters, a third of its NHWC layer4 weight gradient.

    Loop order: channels c in parallel; per c, blocks of VECTOR filters x VECTOR taps
    transposed in registers, each tap's row of filters stored whole; the taps past the last
    whole VECTOR by the same transpose where its loads (a VECTOR from each filter's taps) stay
    in w, and the filters past the last whole VECTOR, element by element. Each task owns
    out[:, c].
    """
    k_, c_, t_ = w.shape
    source, target = w.reshape(w.size), out.reshape(out.size)
    for c in prange(c_):
        k0 = 0
        while k0 + VECTOR <= k_:
            for t0 in range(0, t_, VECTOR):
                first = (k0 * c_ + c) * t_ + t0
                if first + (VECTOR - 1) * c_ * t_ + VECTOR <= w.size:
                    transpose_block(source, np.uint64(first), np.uint64(c_ * t_), target,
                                    np.uint64((t0 * c_ + c) * k_ + k0), np.uint64(c_ * k_),
                                    VECTOR, min(VECTOR, t_ - t0))
                else:
                    for t in range(t0, min(t_, t0 + VECTOR)):
                        for k in range(k0, k0 + VECTOR):
                            out[t, c, k] = w[k, c, t]
            k0 += VECTOR
        for t in range(t_):
            for k in range(k0, k_):
                out[t, c, k] = w[k, c, t]


@njit(**CPU_KERNEL)
def block_filters(blocks, kg, taps, out, hwio):
    """The filters of a weight gradient's blocks, filter_blocks undone: output channel k = g *
    KG + b * L + v takes the sum over the parts p of blocks[p, g, b, (i, tap), v] (float64
    sums, added in the parts' order) at input channel i and tap tap < ``taps``, in out's
    dtype, for b * L + v < KG (the lanes past a group's channels are dropped).

    Layout: blocks (P, G, B, I * taps, L) C-contiguous, the parts a kernel's tasks summed
    apart (one for the blocked kernels' sums); out flat and C-contiguous: OIHW filters ((k, i,
    tap)), or HWIO ((tap, i, k)) where ``hwio``. Loop order: (g, b) in parallel; the parts
    added into a copy of the first, a vector at a time; HWIO: the rows (i, tap), then the lanes
    v, a run of out (packed conversions and stores); OIHW: rows in tiles of VECTOR, then the
    lanes v, then the tile's rows, a run of channel k's filter (the tile's lines stay in L1
    across the lanes; the lanes innermost, stores L filters apart, ran 1.7-1.8x slower). Each
    task owns its block's channels' filters. Its NumPy form (a moved axis reshaped, sliced,
    cast, and for HWIO transposed) ran in one thread: 3.7-4.2 ms for ResNet-18's 512 x 512 x 3
    x 3 filters, here 0.5-0.7 (cold sums from the kernel: 0.8-1.6); 0.27 ms of ResNeXt's 8 x 7
    x 7 x 1024 groups-32 NHWC weight gradient's 1.8, here 0.05 (two Zen 4 threads).
    """
    parts, groups, count, t_, lanes = blocks.shape
    k_, i_ = groups * kg, t_ // taps
    for task in prange(groups * count):
        g, b = task // count, task % count
        used, k0 = min(lanes, kg - b * lanes), g * kg + b * lanes
        source = blocks[0, g, b]
        if parts > 1:
            source = source.copy()
            for p in range(1, parts):
                source += blocks[p, g, b]
        if hwio:
            for t in range(t_):
                at = np.uint64((t % taps * i_ + t // taps) * k_ + k0)
                for v in range(np.uint64(used)):
                    out[at + v] = source[t, v]
        else:
            for t0 in range(0, t_, VECTOR):
                for v in range(used):
                    at = np.uint64((k0 + v) * t_)
                    for t in range(np.uint64(t0), np.uint64(min(t_, t0 + VECTOR))):
                        out[at + t] = source[t, v]
