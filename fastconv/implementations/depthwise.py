"""The depthwise convolution on the CPU (conv2d's algo "depthwise", registered in conv2d.py): the
three conv ops of a layer with one input channel a group (groups == C, K = m * C output
channels, m the channel multiplier), on kernels/conv_depthwise.py's register tiles with the
vector lanes over channels.

Each op packs its operands once into the kernels' blocked layout (channels in blocks of VECTOR
lanes, each block a zero-padded plane of channel vectors), runs one kernel, and writes the
result back in the caller's layout: an NHWC result straight from the kernel, an NCHW one
through :func:`~fastconv.kernels.conv_depthwise.unpack`. A multiplier m > 1 costs nothing in
the kernels: the forward and the weight gradient pack input channel k // m into lane k, the
input gradient packs the m output channels of input channel c as m planes of its block.
"""

import numpy as np

from ..geometry import nchw_view, oihw_view
from ..kernels import conv_depthwise as kernels
from ..kernels.activation import CODES
from . import driver

VECTOR = kernels.VECTOR
# Output pixels a parallel task computes at least (rows of them): enough tiles that a task's
# start-up (its filters, bias and offsets) is paid once per several hundred FMAs.
TASK_PIXELS = 64


def applies(g):
    """None for a depthwise layer (one input channel a group: groups == C, any multiplier
    K / C); else why algo="depthwise" cannot serve it (fastconv.registry's ``applies`` rule)."""
    if g.groups == g.C:
        return None
    return (f"algo='depthwise' computes depthwise convolutions (groups == C, one input channel "
            f"a group), not this layer's groups={g.groups} over C={g.C} channels: x "
            f"{g.x_shape}, w {g.w_shape} ({g.layout})")


def _work(g, cells):
    """What a depthwise kernel costs in driver.cpu_call's units: its multiply-adds, few (the
    window's) a cell, and the ``cells`` it streams, each counted as a moved cell. Counted in
    multiply-adds alone, MobileNetV2's 7x7 and 14x14 layers (0.4-0.6 M cells) ran on one thread
    at half the speed of two."""
    return g.flops // 2 + cells * driver.MOVED_CELL


def _blocks(channels):
    return -(-channels // VECTOR)


def _lanes(blocks, source, count):
    """(blocks, VECTOR) int64: lane k (of all blocks' lanes in a row) takes channel
    ``source(k)`` for k < ``count``, nothing (-1: a zero) past it."""
    lane = np.arange(blocks * VECTOR)
    return np.where(lane < count, source(lane), -1).reshape(blocks, VECTOR).astype(np.int64)


def _pack(a, layout, channels, shape, top, left, slot):
    """``a`` (an input-shaped array in ``layout``) in the kernels' blocked layout: (N, B, L),
    lane v of block b channel ``channels[b, v]``, each plane ``shape`` (HP, WP) with ``a``'s
    pixels from (top, left)."""
    n, c, h, w = nchw_view(a, layout).shape
    steps = (h * w, w, 1) if layout == "NCHW" else (1, w * c, c)
    blocks = channels.shape[0]
    packed = driver.workspace((n, blocks) + tuple(shape) + (VECTOR,), a.dtype, slot=slot)
    driver.cpu_move(kernels.pack, packed.size, a.reshape(n, -1), h, w, *steps, channels, packed,
                    top, left)
    return packed.reshape(n, blocks, -1)


def _input_plane(g):
    """(HP, WP): the padded input plane every window of the forward lies inside."""
    (sh, sw), (dh, dw) = g.stride, g.dilation
    top, _, left, _ = g.padding
    return (max(top + g.H, (g.OH - 1) * sh + (g.R - 1) * dh + 1),
            max(left + g.W, (g.OW - 1) * sw + (g.S - 1) * dw + 1))


def _packed_input(g, x):
    """x blocked over the output channels (lane k holds input channel k // m), padded."""
    m, blocks = g.K // g.C, _blocks(g.K)
    hp, wp = _input_plane(g)
    images = _pack(x, g.layout, _lanes(blocks, lambda k: k // m, g.K), (hp, wp), g.padding[0],
                   g.padding[2], slot=0)
    (dh, dw) = g.dilation
    r, s = np.arange(g.R)[:, None], np.arange(g.S)[None, :]
    taps = ((r * dh * wp + s * dw) * VECTOR).reshape(-1).astype(np.uint64)
    return images, taps, g.stride[0] * wp * VECTOR, g.stride[1] * VECTOR


def _filter_blocks(columns, blocks):
    """(B, T, VECTOR) of (channels, T) filter columns: each block's taps, a vector a tap, zero
    past the last channel."""
    padded = np.zeros((blocks * VECTOR, columns.shape[1]), columns.dtype)
    padded[:columns.shape[0]] = columns
    return np.ascontiguousarray(padded.reshape(blocks, VECTOR, -1).transpose(0, 2, 1))


def _band(cols):
    """Output rows a parallel task computes."""
    return max(1, TASK_PIXELS // max(cols, 1))


def _output(g, shape_nchw, channels, dtype, slot):
    """Where the tiles kernel writes a result of ``channels`` channels and (rows, cols)
    ``shape_nchw``: (the result, the kernel's flat target, pixel step, block step, lanes
    stored); an NHWC result is the target itself, an NCHW one is blocked scratch that
    :func:`_finish` unpacks."""
    n, (rows, cols) = g.N, shape_nchw
    if g.layout == "NHWC":
        result = driver.empty(np, (n, rows, cols, channels), dtype)
        return result, result.reshape(n, -1), channels, VECTOR, channels
    blocks = _blocks(channels)
    scratch = driver.workspace((n, blocks, rows * cols * VECTOR), dtype, slot=slot)
    return scratch, scratch.reshape(n, -1), VECTOR, rows * cols * VECTOR, blocks * VECTOR


def _finish(g, result, channels, rows, cols):
    """The result in the caller's layout: an NHWC one as it is, a blocked one unpacked into a
    new NCHW array."""
    if g.layout == "NHWC":
        return result
    out = driver.empty(np, (g.N, channels, rows, cols), result.dtype)
    driver.cpu_move(kernels.unpack, out.size, result, out.reshape(g.N, -1), channels)
    return out


def forward(g, x, w, b, activation):
    """y = activation(b + conv(x, w)): one class of outputs, the whole output plane."""
    images, taps, src_row, src_col = _packed_input(g, x)
    blocks = images.shape[1]
    filters = _filter_blocks(oihw_view(w, g.layout).reshape(g.K, -1), blocks)[None]
    result, target, pixel, block, stored = _output(g, (g.OH, g.OW), g.K, x.dtype, slot=1)
    driver.cpu_call(kernels.depthwise_tiles, _work(g, target.size), images, filters, taps[None],
                    np.array([taps.size]), np.array([[g.OH, g.OW, 0]]),
                    driver.bias(np, b, g.K, x.dtype), target, _band(g.OW), src_row, src_col,
                    g.OW * pixel, pixel, block, stored, CODES[activation])
    return _finish(g, result, g.K, g.OH, g.OW)


def _phases(size, out_size, k, stride, dilation, pad):
    """The input gradient's classes along one axis: per phase p (input indices p, p + stride,
    ...), (how many, [(tap, shift)]) where tap r reaches input p + i * stride from output
    i + shift; and (margin, extent): the output gradient's rows read, from -margin, extent of
    them."""
    phases, lo, hi = [], 0, out_size
    for p in range(stride):
        count = len(range(p, size, stride))
        reach = [(r, (p + pad - r * dilation) // stride) for r in range(k)
                 if (p + pad - r * dilation) % stride == 0]
        for _, shift in reach if count else ():
            lo, hi = min(lo, shift), max(hi, shift + count)
        phases.append((count, reach if count else []))  # a phase of no pixels reads nothing
    return phases, -lo, hi - lo


def backward_input(g, gy, w):
    """gx = dL/dx: per phase class (ih % sh, iw % sw) of input pixels, a stride-1 correlation of
    the zero-padded gy with the taps reaching that phase (a gather)."""
    m, blocks = g.K // g.C, _blocks(g.C)
    (sh, sw), (dh, dw) = g.stride, g.dilation
    rows, top, hpg = _phases(g.H, g.OH, g.R, sh, dh, g.padding[0])
    cols, left, wpg = _phases(g.W, g.OW, g.S, sw, dw, g.padding[2])
    # block b * m + j: lane v holds output channel c * m + j of input channel c = b * VECTOR + v
    b, j, v = np.meshgrid(np.arange(blocks), np.arange(m), np.arange(VECTOR), indexing="ij")
    c = b * VECTOR + v
    lanes = np.where(c < g.C, c * m + j, -1).reshape(blocks * m, VECTOR).astype(np.int64)
    grads = _pack(gy, g.layout, lanes, (hpg, wpg), top, left, slot=0).reshape(g.N, blocks, -1)
    wc = oihw_view(w, g.layout).reshape(g.C, m, g.R, g.S)
    classes = [(ph, pw, [(j, r, dr, s, ds) for j in range(m) for r, dr in rtaps
                         for s, ds in ctaps], (nr, nc))
               for ph, (nr, rtaps) in enumerate(rows) for pw, (nc, ctaps) in enumerate(cols)]
    most = max(1, max(len(c[2]) for c in classes))
    filters = np.zeros((len(classes), blocks, most, VECTOR), gy.dtype)
    taps = np.zeros((len(classes), most), np.uint64)
    counts = np.zeros(len(classes), np.int64)
    grids = np.zeros((len(classes), 3), np.int64)
    result, target, pixel, block, stored = _output(g, (g.H, g.W), g.C, gy.dtype, slot=1)
    for q, (ph, pw, reach, (nr, nc)) in enumerate(classes):
        counts[q] = len(reach)
        grids[q] = nr, nc, (ph * g.W + pw) * pixel
        for t, (j, r, dr, s, ds) in enumerate(reach):
            taps[q, t] = ((j * hpg + top + dr) * wpg + left + ds) * VECTOR
            filters[q, :, t] = _filter_blocks(wc[:, j, r, s][:, None], blocks)[:, 0]
    driver.cpu_call(kernels.depthwise_tiles, _work(g, target.size), grads, filters, taps, counts,
                    grids, driver.bias(np, None, 1, gy.dtype), target, _band(-(-g.W // sw)),
                    wpg * VECTOR, VECTOR, sh * g.W * pixel, sw * pixel, block, stored, 0)
    return _finish(g, result, g.C, g.H, g.W)


def backward_weight(g, gy, x):
    """gw = dL/dw: per channel block and image, each tap's products summed over the output
    pixels (float64 across rows), then the images summed in a fixed order."""
    images, taps, src_row, src_col = _packed_input(g, x)
    blocks = images.shape[1]
    if g.layout == "NHWC" and g.K % VECTOR == 0:  # whole blocks: gy as it is
        grad, pixel, block = gy.reshape(g.N, -1), g.K, VECTOR
    else:
        grad = _pack(gy, g.layout, _lanes(blocks, lambda k: k, g.K), (g.OH, g.OW), 0, 0,
                     slot=1).reshape(g.N, -1)
        pixel, block = VECTOR, g.OH * g.OW * VECTOR
    partial = driver.empty(np, (blocks, g.N, taps.size, VECTOR), np.float64)
    driver.cpu_call(kernels.depthwise_backward_weight, _work(g, grad.size), images, grad, taps,
                    partial, g.OH, g.OW, src_row, src_col, pixel, block)
    sums = partial.sum(axis=1).transpose(0, 2, 1).reshape(blocks * VECTOR, -1)[:g.K]
    gw = driver.empty(np, g.w_shape, gy.dtype)
    oihw_view(gw, g.layout)[...] = sums.reshape(g.K, 1, g.R, g.S)
    return gw
