"""The depthwise convolution on the CPU (conv2d's algo "depthwise", registered in conv2d.py): the
three conv ops of a layer with one input channel a group (groups == C, K = m * C output
channels, m the channel multiplier), on kernels/conv_depthwise.py's register tiles with the
vector lanes over channels.

The forward and the input gradient are one correlation (:func:`_correlate`, one kernel call
that moves its operand in and its result out per task): the forward's lane k reads input
channel k // m; the input gradient places the output gradient ``stride`` apart and correlates
it at stride 1 with the flipped filters, summing an input channel's m output channels as m
sub-planes. The weight gradient packs the input once into the blocked layout and reduces each
tap's products over the output pixels.
"""

import numpy as np

from ..geometry import nchw_view, oihw_view
from ..kernels import conv_depthwise as kernels
from ..kernels.activation import CODES
from . import driver

VECTOR = kernels.VECTOR
# Output pixels (a band of rows) a task of kernels.depthwise_planes computes at least: its two
# buffers (~0.5 MB for a 112-wide plane) stay in L2, and the halo rows it moves twice are few.
# Of 256 to 65536, 4096 ran within 6% of each MobileNetV2 layer's best on one and two threads
# here (1024: up to 1.5x slower on the 56x56 and 112x112 planes; benchmarks/results/
# cpu-depthwise-planes.md).
BAND_PIXELS = 4096


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


def _axis(size, before, up, out_size, k, stride, dilation):
    """One axis of kernels.depthwise_planes' buffer, whose outputs read the source placed from
    ``before`` with its pixels ``up`` apart, at ``stride`` and ``dilation``: (phase plane
    width, each source index's phase or -1 where it lies outside, its index in its phase
    plane, each tap's (phase, shift), the halo a band reads past its own rows)."""
    extent = max(before + (size - 1) * up + 1, (out_size - 1) * stride + (k - 1) * dilation + 1)
    at = before + np.arange(size) * up
    inside = at >= 0
    taps = [(r * dilation % stride, r * dilation // stride) for r in range(k)]
    return (-(-extent // stride), np.where(inside, at % stride, -1),
            np.where(inside, at // stride, -1), taps, (k - 1) * dilation // stride)


def _correlate(g, a, sources, weights, b, before, up, stride, out_shape, activation):
    """activation(b + the correlation of ``a``'s channels with ``weights``), in the caller's
    layout: lane k of block k // VECTOR sums over its sub-planes j the source channel
    ``sources[block, j, lane]`` placed from ``before`` (rows, columns) with its pixels ``up``
    apart, correlated with ``weights[k, j]`` (R x S) at ``stride`` and the layer's dilation;
    ``out_shape`` the result's (channels, rows, columns)."""
    n, _, h, w = nchw_view(a, g.layout).shape
    blocks, subs = sources.shape[0], sources.shape[1]
    (k, oh, ow), (r_, s_), (dh, dw) = out_shape, weights.shape[2:], g.dilation
    width, col_phase, col_index, col_taps, _ = _axis(w, before[1], up[1], ow, s_, stride[1], dw)
    _, row_phase, row_index, row_taps, halo = _axis(h, before[0], up[0], oh, r_, stride[0], dh)
    band = min(oh, max(1, -(-BAND_PIXELS // width)))
    pixels, phases = (band + halo) * width, stride[0] * stride[1]
    rows = np.stack([np.where(row_phase >= 0, row_phase * stride[1] * pixels, -1), row_index],
                    axis=1).astype(np.int64)
    cols = np.where(col_phase >= 0, col_phase * pixels + col_index, -1).astype(np.int64)
    taps = np.array([((j * phases + pr * stride[1] + pc) * pixels + sr * width + sc) * VECTOR
                     for j in range(subs) for pr, sr in row_taps for pc, sc in col_taps],
                    np.uint64)
    filters = np.ascontiguousarray(
        weights.reshape(blocks, VECTOR, -1).transpose(0, 2, 1)).astype(a.dtype)
    out, steps = ((driver.empty(np, (n, k, oh, ow), a.dtype), (oh * ow, 1)) if g.layout == "NCHW"
                  else (driver.empty(np, (n, oh, ow, k), a.dtype), (1, k)))
    driver.cpu_call(kernels.depthwise_planes, _work(g, out.size), a.reshape(n, -1), h, w,
                    *((h * w, 1) if g.layout == "NCHW" else (1, a.shape[-1])), sources, rows,
                    cols, np.array([pixels, width, phases], np.int64), band, taps, filters,
                    driver.bias(np, b, k, a.dtype), out.reshape(n, -1), oh, ow, *steps,
                    CODES[activation])
    return out


def _lane_weights(filters, blocks):
    """(blocks * VECTOR, J, R, S) of (channels, J, R, S): zero past the last channel."""
    padded = np.zeros((blocks * VECTOR,) + filters.shape[1:], filters.dtype)
    padded[:filters.shape[0]] = filters
    return padded


def forward(g, x, w, b, activation):
    """y = activation(b + conv(x, w)): output channel k reads input channel k // m."""
    m, blocks = g.K // g.C, _blocks(g.K)
    sources = _lanes(blocks, lambda k: k // m, g.K)[:, None]
    weights = _lane_weights(oihw_view(w, g.layout).reshape(g.K, 1, g.R, g.S), blocks)
    return _correlate(g, x, sources, weights, b, (g.padding[0], g.padding[2]), (1, 1), g.stride,
                      (g.K, g.OH, g.OW), activation)


def backward_input(g, gy, w):
    """gx = dL/dx: the output gradient placed ``stride`` apart and correlated at stride 1 with
    the flipped filters, input channel c summing its m output channels c * m + j."""
    m, blocks = g.K // g.C, _blocks(g.C)
    (dh, dw) = g.dilation
    sources = np.stack([_lanes(blocks, lambda c, j=j: c * m + j, g.C) for j in range(m)], 1)
    flipped = oihw_view(w, g.layout).reshape(g.C, m, g.R, g.S)[:, :, ::-1, ::-1]
    return _correlate(g, gy, sources, _lane_weights(flipped, blocks), None,
                      ((g.R - 1) * dh - g.padding[0], (g.S - 1) * dw - g.padding[2]), g.stride,
                      (1, 1), (g.C, g.H, g.W), None)


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
