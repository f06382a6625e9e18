"""Depthwise convolution (one input channel a group, each feeding ``m`` output channels, MobileNet's
3x3 layers with m = 1) with the vector lanes over channels, as oneDNN's depthwise kernels: the
grouped kernels vectorise over a group's output channels (one here) or along a plane's row
(short, and strided at stride 2), neither of which fits such a layer.

The layout: each image's channels in blocks of VECTOR lanes, each block a padded plane of
pixels, a pixel one vector of VECTOR channels (NCHW16c on AVX-512, NCHW8c on AVX2): (N, B, L),
L = planes x HP x WP x VECTOR, flat. :func:`pack` builds it from the caller's array (NCHW or
NHWC), zero-padded so that every tap of every window lies inside; :func:`unpack` writes a
blocked result back into an NCHW array (an NHWC one the kernels write directly).

Every depthwise product here is one register tile: PIXELS output pixels along a row x one vector
of channels, accumulated over the window's taps, each tap a vector of filter values (for the
channel block) meeting PIXELS input vectors in packed FMAs. On this project's AVX-512 machine
the tap loop of :func:`depthwise_tiles` compiles to one filter load and PIXELS ``vfmadd231ps
(mem), zmm, zmm`` (tests/test_kernel_ir.py asserts the packed FMAs on the machine it runs on).

Addressing is affine, so one kernel serves the forward and the input gradient: an output
(i, j) of a class reads the source at ``i * src_row + j * src_col + taps[t]`` and is stored
at ``base + i * out_row + j * out_col + block * out_block`` (lanes contiguous: a blocked or an
NHWC output). The forward is one class; the input gradient at stride s is s_h x s_w classes,
the input pixels of one phase (ih % s_h, iw % s_w), each a stride-1 correlation of the padded
output gradient with the taps that reach that phase: a gather, no zeros spread between the
gradient's pixels, no scatter. Offsets are unsigned, so Numba's negative-index wraparound
folds away.
"""

import numpy as np
from llvmlite import ir
from numba import carray, njit, prange, types
from numba.extending import intrinsic

from . import CPU_KERNEL, VECTOR_LANES, stack_array
from .activation import activate

# The register tile: PIXELS output pixels along a row x one vector of VECTOR channels (16
# float32 lanes on AVX-512, 8 on AVX2); float64 takes two registers a vector.
VECTOR = VECTOR_LANES
UVECTOR = np.uint64(VECTOR)  # an unsigned lane counter: see the module's docstring
PIXELS = 8
# The weight gradient's register tile: TAPS taps x one vector (a 3x3 window in one pass).
TAPS = 9


@intrinsic
def transpose_block(typingctx, src, src_start, src_step, dst, dst_start, dst_step):
    """dst[dst_start + j * dst_step + i] = src[src_start + i * src_step + j] for i, j below
    VECTOR: a VECTOR x VECTOR block transposed in registers (VECTOR loads, VECTOR log2(VECTOR)
    two-source shuffles, VECTOR stores), for 1-D arrays of one dtype and unsigned offsets. LLVM
    does not find this itself: written as loops, a transposition compiles to a scalar load and
    store per element (or gathers), 4-8x slower here."""
    n = VECTOR

    def codegen(context, builder, signature, args):
        source = context.make_array(signature.args[0])(context, builder, args[0]).data
        target = context.make_array(signature.args[3])(context, builder, args[3]).data
        element = context.get_value_type(signature.args[0].dtype)
        vector, width = ir.VectorType(element, n), context.get_abi_sizeof(element)
        index = ir.IntType(64)

        def address(data, start, step, i):
            at = builder.add(start, builder.mul(step, ir.Constant(index, i)))
            return builder.bitcast(builder.gep(data, [at]), vector.as_pointer())
        rows = [builder.load(address(source, args[1], args[2], i), align=width)
                for i in range(n)]
        # the step of distance d swaps the off-diagonal d x d blocks of every 2d x 2d block
        d = n // 2
        while d:
            low = ir.Constant(ir.VectorType(ir.IntType(32), n),
                              [j + n - d if j & d else j for j in range(n)])
            high = ir.Constant(ir.VectorType(ir.IntType(32), n),
                               [j + n if j & d else j + d for j in range(n)])
            for i in range(n):
                if not i & d:
                    a, b = rows[i], rows[i + d]
                    rows[i] = builder.shuffle_vector(a, b, low)
                    rows[i + d] = builder.shuffle_vector(a, b, high)
            d //= 2
        for j in range(n):
            builder.store(rows[j], address(target, args[4], args[5], j), align=width)
        return context.get_dummy_value()
    return types.void(src, src_start, src_step, dst, dst_start, dst_step), codegen


@njit(**CPU_KERNEL)
def pack(x, h_, w_, x_channel, x_row, x_col, channels, out, top, left):
    """out[n, b, top + h, left + w, v] = x[n, channels[b, v] * x_channel + h * x_row + w *
    x_col] for h < h_, w < w_; zero where ``channels[b, v]`` is -1 and in the margins.

    Layout: x (N, X) each image flat, its channel, row and column steps given (NCHW or NHWC);
    channels (B, VECTOR) int64, the source channel of each lane of each block; out
    (N, B, HP, WP, VECTOR). A block of VECTOR consecutive channels moves by whole vectors:
    from NHWC a copy a pixel, from NCHW VECTOR x VECTOR transposes (:func:`transpose_block`)
    along each row. Each task, (n, b) in parallel, owns out[n, b].
    """
    n_, b_, hp, wp = out.shape[0], out.shape[1], out.shape[2], out.shape[3]
    for task in prange(n_ * b_):
        n, b = task // b_, task % b_
        xn, plane = x[n], out[n, b].reshape(hp * wp * VECTOR)
        for i in range(hp):
            inside = top <= i < top + h_
            for j in range(wp):
                if not (inside and left <= j < left + w_):
                    at = np.uint64((i * wp + j) * VECTOR)
                    for v in range(UVECTOR):
                        plane[at + v] = 0
        c0 = channels[b, 0]
        whole = c0 >= 0 and channels[b, VECTOR - 1] == c0 + VECTOR - 1
        for h in range(h_):
            row = np.uint64(((top + h) * wp + left) * VECTOR)
            if whole and x_col == 1:  # NCHW
                w0 = 0
                while w0 + VECTOR <= w_:
                    transpose_block(xn, np.uint64(c0 * x_channel + h * x_row + w0),
                                    np.uint64(x_channel), plane, row + np.uint64(w0 * VECTOR),
                                    UVECTOR)
                    w0 += VECTOR
                for w in range(w0, w_):
                    at = row + np.uint64(w * VECTOR)
                    for v in range(VECTOR):
                        plane[at + v] = xn[(c0 + v) * x_channel + h * x_row + w]
            elif whole and x_channel == 1:  # NHWC
                for w in range(w_):
                    at, first = row + np.uint64(w * VECTOR), np.uint64(c0 + h * x_row + w * x_col)
                    for v in range(UVECTOR):
                        plane[at + v] = xn[first + v]
            else:
                for w in range(w_):
                    at = row + np.uint64(w * VECTOR)
                    for v in range(VECTOR):
                        c = channels[b, v]
                        plane[at + v] = xn[max(c, 0) * x_channel + h * x_row + w * x_col] if (
                            c >= 0) else 0


@njit(**CPU_KERNEL)
def unpack(src, out, k_):
    """out[n, k * P + p] = src[n, k // VECTOR, p * VECTOR + k % VECTOR] for k < k_: a blocked
    result into an NCHW array. Layout: src (N, B, P * VECTOR); out (N, K * P) each image flat.
    Whole blocks move by VECTOR x VECTOR transposes (:func:`transpose_block`). Each task,
    (n, b) in parallel, owns out[n] at channels b * VECTOR to (b + 1) * VECTOR."""
    n_, b_ = src.shape[0], src.shape[1]
    p_ = src.shape[2] // VECTOR
    for task in prange(n_ * b_):
        n, b = task // b_, task % b_
        sb, yn = src[n, b], out[n]
        k0 = b * VECTOR
        p0 = 0
        if k0 + VECTOR <= k_:
            while p0 + VECTOR <= p_:
                transpose_block(sb, np.uint64(p0 * VECTOR), UVECTOR, yn,
                                np.uint64(k0 * p_ + p0), np.uint64(p_))
                p0 += VECTOR
        for v in range(min(VECTOR, k_ - k0)):
            for p in range(p0, p_):
                yn[(k0 + v) * p_ + p] = sb[p * VECTOR + v]


@njit(**CPU_KERNEL)
def depthwise_tiles(src, filters, taps, counts, grids, bias, out, band, src_row, src_col,
                    out_row, out_col, out_block, k_, act):
    """out = act(bias + sum over taps of src x filters), per class of outputs, over register
    tiles of PIXELS output pixels x VECTOR channels.

    Layout: src (N, B, L) blocked (module docstring); filters (Q, B, T, VECTOR) each class's
    taps' filter vectors per block; taps (Q, T) uint64 each tap's offset in a block; counts
    (Q,) the taps of each class; grids (Q, 3) each class's output rows, columns and base
    offset; bias (K,); out (N, Y) each image flat, output (i, j) of class q, block b, lane v at
    ``grids[q, 2] + i * out_row + j * out_col + b * out_block + v``; lanes past channel k_
    are not stored.
    Loop order: (n, block, class, band of ``band`` output rows) in parallel; per row, tiles of
    PIXELS consecutive outputs (the last repeats the row's last pixel and stores nothing
    there); per tile, taps t, the PIXELS pixels and the VECTOR lanes innermost (one vector).
    Each task owns its class's outputs in its rows, block and image.
    """
    n_, b_ = src.shape[0], src.shape[1]
    q_ = counts.shape[0]
    bands = (max(grids[:, 0].max(), 1) + band - 1) // band
    for task in prange(n_ * b_ * q_ * bands):
        n, rest = task // (b_ * q_ * bands), task % (b_ * q_ * bands)
        blk, q, chunk = rest // (q_ * bands), rest // bands % q_, rest % bands
        rows, cols, base = grids[q, 0], grids[q, 1], grids[q, 2]
        i0, i1 = chunk * band, min(rows, (chunk + 1) * band)
        if i0 >= i1 or cols == 0:
            continue
        xs, ws, ts, yn = src[n, blk], filters[q, blk], taps[q], out[n]
        k0, count = blk * VECTOR, counts[q]
        used = min(VECTOR, k_ - k0)
        acc = carray(stack_array(PIXELS, VECTOR, out.dtype), (PIXELS, VECTOR))
        bases = carray(stack_array(PIXELS, 1, np.uint64), PIXELS)
        shift = carray(stack_array(1, VECTOR, out.dtype), VECTOR)
        for v in range(VECTOR):
            shift[v] = bias[min(k0 + v, bias.shape[0] - 1)] if k0 + v < bias.shape[0] else 0
        start = base + blk * out_block
        for i in range(i0, i1):
            for j0 in range(0, cols, PIXELS):
                for j in range(PIXELS):
                    bases[j] = np.uint64(i * src_row + min(j0 + j, cols - 1) * src_col)
                    for v in range(VECTOR):
                        acc[j, v] = 0
                # the lanes outermost: LLVM then vectorises them and unrolls the pixels inside
                # (innermost, they are unrolled, and the taps' loop vectorised with gathers)
                for t in range(count):
                    off = ts[t]
                    for v in range(UVECTOR):
                        wv = ws[t, v]
                        for j in range(PIXELS):
                            acc[j, v] += xs[bases[j] + off + v] * wv
                for j in range(PIXELS):
                    if j0 + j < cols:
                        o = np.uint64(start + i * out_row + (j0 + j) * out_col)
                        if used == VECTOR:
                            for v in range(UVECTOR):
                                yn[o + v] = acc[j, v] + shift[v]
                        else:
                            for v in range(used):
                                yn[o + v] = acc[j, v] + shift[v]
        # the activation in a pass of its own over the task's outputs, still in cache (inside
        # the tile's epilogue it pushes the tile out of the registers: conv_blocked.py)
        if act != 0:
            for i in range(i0, i1):
                for j in range(cols):
                    o = start + i * out_row + j * out_col
                    for v in range(used):
                        yn[o + v] = activate(yn[o + v], act, out.dtype)


@njit(**CPU_KERNEL)
def depthwise_backward_weight(src, grad, taps, partial, rows, cols, src_row, src_col, g_pixel,
                              g_block):
    """partial[b, n, t, v] = the sum over output pixels (i, j) of image n of
    grad[n, b * g_block + (i * cols + j) * g_pixel + v] * src[n, b, i * src_row + j * src_col
    + taps[t] + v]: the weight gradient of block b, per image (the caller sums the images).

    Layout: src (N, B, L) the padded input, blocked as for the forward; grad (N, G) each
    image's output gradient flat (blocked, or NHWC with whole blocks); taps (T,) uint64 the
    forward's; partial (B, N, T, VECTOR) float64.
    Loop order: (block, image, TAPS taps) in parallel, then rows, pixels, the TAPS taps and the
    lanes innermost (the register tile: one gradient vector meets TAPS input vectors). Each
    task owns partial[b, n] at its taps, so the sum needs no atomics and is the same on any
    number of threads. A row's sum is kept in the arrays' dtype, the rows' in float64.
    """
    n_, b_ = src.shape[0], src.shape[1]
    t_ = taps.shape[0]
    chunks = (t_ + TAPS - 1) // TAPS
    for task in prange(b_ * n_ * chunks):
        blk, n, chunk = task // (n_ * chunks), task // chunks % n_, task % chunks
        t0 = chunk * TAPS
        acc = carray(stack_array(TAPS, VECTOR, grad.dtype), (TAPS, VECTOR))
        total = carray(stack_array(TAPS, VECTOR, np.float64), (TAPS, VECTOR))
        offsets = carray(stack_array(TAPS, 1, np.uint64), TAPS)
        for t in range(TAPS):
            offsets[t] = taps[min(t0 + t, t_ - 1)]
            for v in range(VECTOR):
                total[t, v] = 0
        xs, gs = src[n, blk], grad[n]
        g0 = blk * g_block
        for i in range(rows):
            for t in range(TAPS):
                for v in range(VECTOR):
                    acc[t, v] = 0
            for j in range(cols):
                at_g = np.uint64(g0 + (i * cols + j) * g_pixel)
                at_x = np.uint64(i * src_row + j * src_col)
                for v in range(UVECTOR):  # the lanes outermost, as in depthwise_tiles
                    gv = gs[at_g + v]
                    for t in range(TAPS):
                        acc[t, v] += gv * xs[at_x + offsets[t] + v]
            for t in range(TAPS):
                for v in range(VECTOR):
                    total[t, v] += acc[t, v]
        for t in range(TAPS):
            if t0 + t < t_:
                for v in range(VECTOR):
                    partial[blk, n, t0 + t, v] = total[t, v]
