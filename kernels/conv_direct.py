"""Direct convolution, forward and backward, as loops over the window with no workspace.

Index names: n batch, c input channel (ci its global index), k output channel, (oh, ow) output
pixel, (r, s) kernel tap, (ih, iw) input pixel. A tap reads the input at
``ih = oh * sh - pt + r * dh`` and ``iw = ow * sw - pl + s * dw``; ``valid_range`` clips an
output row to the columns whose tap lands inside the input, so inner loops carry no branch.

What makes the inner loops vectorise (several times faster where they do):
indices LLVM can prove non-negative (a clamped base plus a counter from 0), so Numba's
negative-index wraparound folds away; a separate stride-1 loop, as a runtime stride in the
index blocks vectorisation even when it is 1; element indexing rather than slices, as a view
inside a parallel loop costs an atomic reference count. Accumulators keep the arrays' dtype.
"""

import numpy as np
from numba import carray, njit, prange

from . import CPU_KERNEL, VECTOR_LANES, stack_array, valid_range
from .activation import activate

# Output channels per task in the NCHW forward: the task's planes stay in L1/L2 while every tap
# adds into them, and one input row load feeds this many of them.
CHANNEL_BLOCK = 8
# The tiled stride-1 forward's register tile: CHANNELS output channels x ROWS output rows x
# VECTOR columns (one vector of float32: 16 with AVX-512, 8 with AVX2), 12 vectors in all.
VECTOR = VECTOR_LANES
UVECTOR = np.uint64(VECTOR)  # an unsigned loop counter: see the kernel
CHANNELS, ROWS = 6, 2
TILE_ROWS = CHANNELS * ROWS  # a literal for stack_array


@njit(inline="always", cache=True)
def _channel_block(task, groups, blocks, kg):
    """Task -> (image n, group g, output channels k0:k1) of the NCHW forward kernels."""
    n, g, blk = task // (groups * blocks), task // blocks % groups, task % blocks
    k0 = g * kg + blk * CHANNEL_BLOCK
    return n, g, k0, min(k0 + CHANNEL_BLOCK, (g + 1) * kg)


@njit(**CPU_KERNEL)
def conv2d_forward_nchw(x, w, b, y, sh, sw, pt, pl, dh, dw, groups, act):
    """y = act(b + conv(x, w)).

    Layout: x (N, C, H, W), w OIHW (K, C/groups, R, S), b (K,), y (N, K, OH, OW), C-contiguous.
    Loop order: (n, group, block of CHANNEL_BLOCK output channels) in parallel, then c, r, s,
    k in the block, oh, and ow innermost (contiguous for stride 1). Each task owns the planes
    y[n, k0:k1]: it starts them at the bias, adds every tap, then applies the activation while
    they are still in cache.
    """
    n_, c_, h_, w_ = x.shape
    k_, cg, r_, s_ = w.shape
    oh_, ow_ = y.shape[2], y.shape[3]
    kg = k_ // groups
    blocks = (kg + CHANNEL_BLOCK - 1) // CHANNEL_BLOCK
    for task in prange(n_ * groups * blocks):
        n, g, k0, k1 = _channel_block(task, groups, blocks, kg)
        for k in range(k0, k1):
            for oh in range(oh_):
                for ow in range(ow_):
                    y[n, k, oh, ow] = b[k]
        for c in range(cg):
            ci = g * cg + c
            for r in range(r_):
                oh0, rows, ih0 = valid_range(r * dh - pt, sh, h_, oh_)
                for s in range(s_):
                    ow0, cols, iw0 = valid_range(s * dw - pl, sw, w_, ow_)
                    for k in range(k0, k1):
                        wv = w[k, c, r, s]
                        for i in range(rows):
                            ih = ih0 + i * sh
                            if sw == 1:
                                for j in range(cols):
                                    y[n, k, oh0 + i, ow0 + j] += wv * x[n, ci, ih, iw0 + j]
                            else:
                                for j in range(cols):
                                    y[n, k, oh0 + i, ow0 + j] += wv * x[n, ci, ih, iw0 + j * sw]
        for k in range(k0, k1):
            for oh in range(oh_):
                for ow in range(ow_):
                    y[n, k, oh, ow] = activate(y[n, k, oh, ow], act, y.dtype)


@njit(**CPU_KERNEL)
def conv2d_forward_nchw_unit_stride(x, w, b, y, pt, pl, dh, dw, groups, act):
    """y = act(b + conv(x, w)) for stride 1, on flat rows: the row-wise kernel's inner loop
    is one output row (28 pixels in LeNet's C1), too short for LLVM's vector loop, so here it
    runs over the whole plane at once.

    Layout: x (N, C, H, W), w OIHW (K, C/groups, R, S), b (K,), y (N, K, OH, OW), C-contiguous.
    Each task, (n, group, block of CHANNEL_BLOCK output channels) in parallel, copies its
    group's input planes, zero-padded to the rows and columns the windows reach (pitch WP),
    into private scratch. An output pixel (oh, ow) then sits at q = oh * WP + ow and a tap
    (c, r, s) reads q + (c * HP + r * dh) * WP + s * dw, so each (c, r, s, k) is one flat loop
    over q; the WP - OW columns past each row are computed and dropped. Loop order: c, r, s,
    k, q innermost; the epilogue copies the valid columns through bias and activation into
    the task's own planes y[n, k0:k1].
    """
    n_, c_, h_, w_ = x.shape
    k_, cg, r_, s_ = w.shape
    oh_, ow_ = y.shape[2], y.shape[3]
    hp, wp = oh_ + (r_ - 1) * dh, ow_ + (s_ - 1) * dw
    span = (oh_ - 1) * wp + ow_
    row0, rows, ih0 = valid_range(-pt, 1, h_, hp)
    col0, cols, iw0 = valid_range(-pl, 1, w_, wp)
    kg = k_ // groups
    blocks = (kg + CHANNEL_BLOCK - 1) // CHANNEL_BLOCK
    for task in prange(n_ * groups * blocks):
        n, g, k0, k1 = _channel_block(task, groups, blocks, kg)
        planes = np.zeros((cg * hp, wp), x.dtype)
        for c in range(cg):
            for i in range(rows):
                for j in range(cols):
                    planes[c * hp + row0 + i, col0 + j] = x[n, g * cg + c, ih0 + i, iw0 + j]
        flat = planes.reshape(cg * hp * wp)
        acc = np.empty((CHANNEL_BLOCK, span), y.dtype)
        for k in range(k0, k1):
            for q in range(span):
                acc[k - k0, q] = b[k]
        for c in range(cg):
            for r in range(r_):
                for s in range(s_):
                    base = max(0, (c * hp + r * dh) * wp + s * dw)
                    for k in range(k0, k1):
                        wv = w[k, c, r, s]
                        for q in range(span):
                            acc[k - k0, q] += wv * flat[base + q]
        for k in range(k0, k1):
            for oh in range(oh_):
                for ow in range(ow_):
                    y[n, k, oh, ow] = activate(acc[k - k0, oh * wp + ow], act, y.dtype)


@njit(**CPU_KERNEL)
def conv2d_forward_nchw_tiled(x, w, b, y, hp, wp, dh, dw, groups, act):
    """y = act(b + conv(x, w)) for stride 1, over register tiles of CHANNELS output channels x
    ROWS output rows x VECTOR output columns, summed over every tap before they are stored:
    for layers with few output channels a group, where the channel-blocked kernel
    (conv_blocked.py) would leave most of its vector lanes empty (LeNet's C1, the transposed
    convolution of C3's input gradient, 6 channels each).

    Layout: x (N, X) each image's C planes, zero-padded to hp x wp so that every window lies
    inside, flat, with at least VECTOR elements of slack after them; w OIHW (K, C/groups, R, S);
    b (K,); y (N, K, OH, OW), C-contiguous.
    Loop order: (n, group, block of CHANNELS output channels, block of ROWS output rows) in
    parallel; per tile of VECTOR columns: c, r, s, then the columns (one vector), the channels
    and the rows (unrolled: the tile), each tap one filter value broadcast per channel and one
    vector load per row. A tile past the last column, row or channel repeats the last one and
    stores nothing there (the last column tile starts at OW - VECTOR, overlapping its
    neighbour, where OW allows). Each task owns y[n] at its channels x its rows.
    """
    n_, k_, oh_, ow_ = y.shape
    cg, r_, s_ = w.shape[1], w.shape[2], w.shape[3]
    kg = k_ // groups
    blocks, bands = (kg + CHANNELS - 1) // CHANNELS, (oh_ + ROWS - 1) // ROWS
    tiles = (ow_ + VECTOR - 1) // VECTOR
    for task in prange(n_ * groups * blocks * bands):
        n, rest = task // (groups * blocks * bands), task % (groups * blocks * bands)
        g, blk, band = rest // (blocks * bands), rest // bands % blocks, rest % bands
        k0, oh0 = g * kg + blk * CHANNELS, max(0, min(band * ROWS, oh_ - ROWS))
        xn = x[n]
        acc = carray(stack_array(TILE_ROWS, VECTOR, y.dtype), (CHANNELS, ROWS, VECTOR))
        weights = carray(stack_array(CHANNELS, 1, y.dtype), CHANNELS)
        rows = carray(stack_array(ROWS, 1, np.uint64), ROWS)
        for tile in range(tiles):
            ow0 = max(0, min(tile * VECTOR, ow_ - VECTOR))
            for k in range(CHANNELS):
                for i in range(ROWS):
                    for j in range(VECTOR):
                        acc[k, i, j] = 0
            for c in range(cg):
                plane = (g * cg + c) * hp * wp
                for r in range(r_):
                    for s in range(s_):
                        for k in range(CHANNELS):
                            weights[k] = w[min(k0 + k, g * kg + kg - 1), c, r, s]
                        for i in range(ROWS):
                            rows[i] = np.uint64(plane + (min(oh0 + i, oh_ - 1) + r * dh) * wp
                                                + ow0 + s * dw)
                        # the vector axis outermost: LLVM then vectorises it and unrolls the
                        # channels and rows inside (innermost, it would unroll the vector axis
                        # and gather); unsigned offsets drop Numba's negative-index wraparound
                        for j in range(UVECTOR):
                            for k in range(CHANNELS):
                                for i in range(ROWS):
                                    acc[k, i, j] += weights[k] * xn[rows[i] + j]
            # the columns' bound hoisted out of the store loop (it is VECTOR unless OW is
            # narrower), so that the store is a vector one: per element, its test and scalar
            # stores cost as much as the taps on a one-channel stem (ResNet-CIFAR's conv1)
            width = min(VECTOR, ow_ - ow0)
            for k in range(min(CHANNELS, kg - blk * CHANNELS)):
                bias = b[k0 + k]
                for i in range(min(ROWS, oh_ - oh0)):
                    for j in range(width):
                        y[n, k0 + k, oh0 + i, ow0 + j] = acc[k, i, j] + bias
        # the activation in a pass of its own over the task's rows, still in cache: inside the
        # tile's epilogue its branches and calls keep LLVM from unrolling it, and the tile
        # then leaves the registers (a ReLU made the kernel 6x slower)
        if act != 0:
            for k in range(k0, min(k0 + CHANNELS, g * kg + kg)):
                for oh in range(oh0, min(oh0 + ROWS, oh_)):
                    for ow in range(ow_):
                        y[n, k, oh, ow] = activate(y[n, k, oh, ow], act, y.dtype)


@njit(**CPU_KERNEL)
def conv2d_forward_nhwc(x, w, b, y, sh, sw, pt, pl, dh, dw, groups, act):
    """y = act(b + conv(x, w)).

    Layout: x (N, H, W, C), w HWIO (R, S, C/groups, K), b (K,), y (N, OH, OW, K), C-contiguous.
    Loop order: (n, oh) in parallel, then ow, r, s, group, c, and the group's output channels
    innermost (contiguous in w and y, so it vectorises over k). Each task owns the row
    y[n, oh]: it starts each pixel at the bias, adds every tap and applies the activation.
    """
    n_, h_, w_, c_ = x.shape
    r_, s_, cg, k_ = w.shape
    oh_, ow_ = y.shape[1], y.shape[2]
    kg = k_ // groups
    for task in prange(n_ * oh_):
        n, oh = task // oh_, task % oh_
        for ow in range(ow_):
            for k in range(k_):
                y[n, oh, ow, k] = b[k]
            for r in range(r_):
                ih = oh * sh - pt + r * dh
                if ih < 0 or ih >= h_:
                    continue
                for s in range(s_):
                    iw = ow * sw - pl + s * dw
                    if iw < 0 or iw >= w_:
                        continue
                    for g in range(groups):
                        for c in range(cg):
                            xv = x[n, ih, iw, g * cg + c]
                            for k in range(g * kg, (g + 1) * kg):
                                y[n, oh, ow, k] += xv * w[r, s, c, k]
            for k in range(k_):
                y[n, oh, ow, k] = activate(y[n, oh, ow, k], act, y.dtype)


@njit(**CPU_KERNEL)
def conv2d_backward_input(gy, w, gx, sh, sw, pt, pl, dh, dw, groups):
    """gx = dL/dx of the convolution, a transposed convolution of gy with w.

    Layout: gy (N, K, OH, OW) and gx (N, C, H, W), NCHW-indexed (NHWC arrives as transposed
    views); w OIHW-indexed (K, C/groups, R, S).
    Loop order: (n, ci) in parallel, then the group's k, r, s, oh, ow innermost. Each task owns
    the plane gx[n, ci]: it zeroes it and adds every tap's contribution, so its scatter stays
    inside memory no other task writes.
    """
    n_, c_, h_, w_ = gx.shape
    k_, cg, r_, s_ = w.shape
    oh_, ow_ = gy.shape[2], gy.shape[3]
    kg = k_ // groups
    for task in prange(n_ * c_):
        n, ci = task // c_, task % c_
        c, g = ci % cg, ci // cg
        for ih in range(h_):
            for iw in range(w_):
                gx[n, ci, ih, iw] = 0
        for k in range(g * kg, (g + 1) * kg):
            for r in range(r_):
                oh0, rows, ih0 = valid_range(r * dh - pt, sh, h_, oh_)
                for s in range(s_):
                    ow0, cols, iw0 = valid_range(s * dw - pl, sw, w_, ow_)
                    wv = w[k, c, r, s]
                    for i in range(rows):
                        ih = ih0 + i * sh
                        if sw == 1:
                            for j in range(cols):
                                gx[n, ci, ih, iw0 + j] += wv * gy[n, k, oh0 + i, ow0 + j]
                        else:
                            for j in range(cols):
                                gx[n, ci, ih, iw0 + j * sw] += wv * gy[n, k, oh0 + i, ow0 + j]


@njit(**CPU_KERNEL)
def conv2d_backward_weight(gy, x, gw, sh, sw, pt, pl, dh, dw, groups):
    """gw = dL/dw of the convolution: gy correlated with x over batch and pixels.

    Layout: gy (N, K, OH, OW) and x (N, C, H, W), NCHW-indexed (NHWC arrives as transposed
    views); gw OIHW-indexed (K, C/groups, R, S).
    Loop order: (k, c) in parallel, then r, s, n, oh, ow innermost (a dot product over an output
    row). Each task owns the filter gw[k, c] and sums each tap over the whole batch in a private
    float64 accumulator, on purpose: as precise as the bias gradient's sum, and faster here than
    a float32 one (LLVM vectorises these short row reductions better in doubles: float32 made
    the kernel 1.5x slower on LeNet's C1, benchmarks/results/refactor.md).
    """
    n_, c_, h_, w_ = x.shape
    k_, cg, r_, s_ = gw.shape
    oh_, ow_ = gy.shape[2], gy.shape[3]
    kg = k_ // groups
    for task in prange(k_ * cg):
        k, c = task // cg, task % cg
        ci = k // kg * cg + c
        for r in range(r_):
            oh0, rows, ih0 = valid_range(r * dh - pt, sh, h_, oh_)
            for s in range(s_):
                ow0, cols, iw0 = valid_range(s * dw - pl, sw, w_, ow_)
                acc = 0.0
                for n in range(n_):
                    for i in range(rows):
                        ih = ih0 + i * sh
                        if sw == 1:
                            for j in range(cols):
                                acc += gy[n, k, oh0 + i, ow0 + j] * x[n, ci, ih, iw0 + j]
                        else:
                            for j in range(cols):
                                acc += gy[n, k, oh0 + i, ow0 + j] * x[n, ci, ih, iw0 + j * sw]
                gw[k, c, r, s] = acc
