"""The depthwise convolution on the CPU (conv2d's algo "depthwise", registered in conv2d.py): the
three conv ops of a layer with one input channel a group (groups == C, K = m * C output
channels, m the channel multiplier), on kernels/conv_depthwise.py's register tiles with the
vector lanes over channels.

The forward and the input gradient are one correlation (:func:`_correlate`, one kernel call
that moves its operand in and its result out per task, or, for an NHWC operand of whole
vectors of channels, reads it in place with HWIO's filters as they lie: :func:`_rows`, where
:func:`_in_place`): the forward's lane k reads input
channel k // m; the input gradient places the output gradient ``stride`` apart and correlates
it at stride 1 with the flipped filters, summing an input channel's m output channels as m
sub-planes (a strided NHWC layer's in place: at a column stride of 2 a row of gx at a time,
:func:`_stride2_rows`; else a phase of its pixels at a time, :func:`_phase_correlations`).
The weight gradient moves the input and the output gradient into the same buffers and reduces
each tap's products over the output pixels (an NHWC layer of whole vectors reads both in
place).
"""

import functools

import numpy as np

from ..geometry import nchw_view, oihw_view
from ..kernels import conv_depthwise as kernels
from ..kernels import layout as layout_kernels
from ..kernels.activation import CODES
from . import driver

VECTOR = kernels.VECTOR
# Output pixels (a band of rows) a task of kernels.depthwise_planes computes at least: its two
# buffers (~0.5 MB for a 112-wide plane) stay in L2, and the halo rows it moves twice are few.
# Of 256 to 65536, 4096 ran within 6% of each MobileNetV2 layer's best on one and two threads
# here (1024: up to 1.5x slower on the 56x56 and 112x112 planes; benchmarks/results/
# cpu-depthwise-planes.md).
BAND_PIXELS = 4096
# Tasks a call keeps at least where a task takes several images (_images): 16 a thread here,
# two on the GPU machine's 16 cores.
MIN_TASKS = 32


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


@functools.lru_cache(maxsize=256)
def _lanes(count, m=1, sub=None):
    """(blocks, J, VECTOR) int64, the blocks over ``count`` lanes: lane k of its one sub-plane
    takes channel k // m (``sub`` None), or lane k of sub-plane j < ``sub`` channel k * m + j
    (an input channel's m output channels); nothing (-1: a zero) past ``count``. Kept per
    layer: the kernels only read it."""
    lane = np.arange(_blocks(count) * VECTOR)
    sources = [lane // m] if sub is None else [lane * m + j for j in range(sub)]
    return np.stack([np.where(lane < count, c, -1).reshape(-1, VECTOR) for c in sources],
                    axis=1).astype(np.int64)


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


def _images(n, tasks, pixels):
    """Images a task of a depthwise kernel takes (its band has ``pixels`` outputs, an image
    ``tasks`` tasks: blocks x bands): enough for BAND_PIXELS outputs (a 7x7 plane's task an
    image spent a third of its time allocating and zeroing its buffers), while a call keeps
    MIN_TASKS tasks. Not by the thread count: the weight gradient's sums, grouped by task, are
    then the same on any number of threads."""
    runs = max(-(-n // max(1, BAND_PIXELS // pixels)), min(n, -(-MIN_TASKS // tasks)))
    return -(-n // runs)


def _steps(a, layout):
    """(channel step, pixel step) of each image of a 4-D array in ``layout``, flat."""
    channel, _, column = driver.steps(layout, *nchw_view(a, layout).shape[1:])
    return channel, column


@functools.lru_cache(maxsize=256)
def _buffer(hw, before, up, stride, dilation, out_hw, window, subs):
    """Where kernels.depthwise_planes puts a source of ``hw`` pixels placed from ``before``
    (rows, columns) with its pixels ``up`` apart, read at ``stride`` and ``dilation`` by a
    ``window`` (R, S) over ``subs`` sub-planes into ``out_hw`` outputs: (band, rows, cols,
    plane, taps), the kernel's arguments of those names. Kept per layer (~20 us of NumPy a
    call): the kernels only read them."""
    (h, w), (oh, ow), (r_, s_), (dh, dw) = hw, out_hw, window, dilation
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
    return band, rows, cols, np.array([pixels, width, phases], np.int64), taps


@functools.lru_cache(maxsize=256)
def _output_places(oh, ow):
    """kernels.depthwise_planes_weight's (out_rows, out_cols): output (i, j) at the buffer's
    local output (i - i0) * width + j, no phases. Kept per layer: the kernel only reads them."""
    return np.stack([np.zeros(oh, np.int64), np.arange(oh)], axis=1), np.arange(ow)


def _in_place(g, w):
    """Whether kernels.depthwise_nhwc_rows serves the layer's correlations, reading and
    writing its arrays as they lie: NHWC, one output channel an input channel, the channels
    whole vectors, finite filters (:func:`_finite`). depthwise_planes, moving the rows into a
    blocked buffer and its result out, ran MobileNetV2's 8 x 960 x 7 x 7 layer 1.6-1.8x
    slower than its tiles of whole 7-pixel rows (benchmarks/results/cpu-nhwc-depthwise-rows.md),
    a dilated 8 x 960 x 33 x 33 one 1.5-2x slower."""
    return _whole_vectors_nhwc(g) and _finite(w)


@functools.lru_cache(maxsize=256)
def _parts(parts, w, sw, dw):
    """kernels.depthwise_nhwc_rows' ``parts`` (a tuple of its rows) as its array and their
    tiles (kernels.row_plans). Kept per layer: the kernel only reads them."""
    parts = np.array(parts, np.int64)
    return (parts,) + kernels.row_plans(parts, w, sw, dw)


def _rows(g, a, taps, b, before, stride, out_hw, activation):
    """activation(b + the correlation of the NHWC ``a`` with ``taps`` (R * S, C): HWIO's),
    read and written where they lie by kernels.depthwise_nhwc_rows, from ``before`` (rows,
    columns), at ``stride`` and the layer's dilation, into ``out_hw`` (rows, columns): one
    part."""
    n, h, w, c = a.shape
    oh, ow = out_hw
    out = driver.empty(np, (n, oh, ow, c), a.dtype)
    plan = _parts(((oh, before[0], g.R, ow, g.S, before[1], 0, 0),), w, stride[1],
                  g.dilation[1])
    driver.cpu_call(kernels.depthwise_nhwc_rows, _work(g, out.size), a.reshape(n, -1), h, w,
                    taps.reshape(-1, VECTOR), driver.bias(np, b, c, a.dtype), out.reshape(n, -1),
                    plan[0], 1, *plan[1:], ow * c, c, tuple(stride), g.dilation,
                    CODES[activation])
    return out


def _whole_vectors_nhwc(g):
    """Whether the layer is NHWC with one output channel an input channel and its channels
    whole vectors: its operands' pixels then hold whole vectors of lanes, read in place."""
    return g.layout == "NHWC" and g.K == g.C and g.C % VECTOR == 0


def _finite(weights):
    """Whether the filters may be read in place: a non-finite filter value meets the padding's
    zeros in PyTorch (a NaN), which the in-place kernels never read, so such filters go
    through depthwise_planes' zeroed buffers."""
    return np.isfinite(weights).all()


def _correlate(g, a, sources, weights, b, before, up, stride, out_shape, activation):
    """activation(b + the correlation of ``a``'s channels with ``weights``), in the caller's
    layout: lane k of block k // VECTOR sums over its sub-planes j the source channel
    ``sources[block, j, lane]`` placed from ``before`` (rows, columns) with its pixels ``up``
    apart, correlated with ``weights[k, j]`` (R x S) at ``stride`` and the layer's dilation;
    ``out_shape`` the result's (channels, rows, columns)."""
    n, _, h, w = nchw_view(a, g.layout).shape
    blocks, subs = sources.shape[0], sources.shape[1]
    k, oh, ow = out_shape
    band, rows, cols, plane, taps = _buffer((h, w), before, up, tuple(stride), g.dilation,
                                            (oh, ow), weights.shape[2:], subs)
    filters = np.ascontiguousarray(
        weights.reshape(blocks, VECTOR, -1).transpose(0, 2, 1)).astype(a.dtype)
    out = driver.empty(np, (n, k, oh, ow) if g.layout == "NCHW" else (n, oh, ow, k), a.dtype)
    driver.cpu_call(kernels.depthwise_planes, _work(g, out.size), a.reshape(n, -1), h, w,
                    *_steps(a, g.layout), sources, rows, cols, plane, band,
                    _images(n, blocks * -(-oh // band), band * ow), taps, filters,
                    driver.bias(np, b, k, a.dtype), out.reshape(n, -1), oh, ow,
                    *_steps(out, g.layout), *_output_places(oh, ow), CODES[activation])
    return out


def _lane_weights(filters, blocks):
    """(blocks * VECTOR, J, R, S) of (channels, J, R, S): zero past the last channel."""
    padded = np.zeros((blocks * VECTOR,) + filters.shape[1:], filters.dtype)
    padded[:filters.shape[0]] = filters
    return padded


def forward(g, x, w, b, activation):
    """y = activation(b + conv(x, w)): output channel k reads input channel k // m."""
    before = (g.padding[0], g.padding[2])
    if _in_place(g, w):  # HWIO's filters as they lie
        return _rows(g, x, w.reshape(g.R * g.S, g.C), b, before, g.stride, (g.OH, g.OW),
                     activation)
    m, blocks = g.K // g.C, _blocks(g.K)
    sources = _lanes(g.K, m)
    weights = _lane_weights(oihw_view(w, g.layout).reshape(g.K, 1, g.R, g.S), blocks)
    return _correlate(g, x, sources, weights, b, before, (1, 1), g.stride, (g.K, g.OH, g.OW),
                      activation)


def backward_input(g, gy, w):
    """gx = dL/dx: the output gradient placed ``stride`` apart and correlated at stride 1 with
    the flipped filters, input channel c summing its m output channels c * m + j; or, for a
    strided NHWC layer read in place, a row of gx at a time at a column stride of 2 where its
    rows hold a tile (:func:`_stride2_rows`), else its phases the parts of one call
    (:func:`_phase_correlations`)."""
    in_place = _in_place(g, w)
    plan = _stride2_plan(g) if in_place and g.stride[1] == 2 and g.dilation == (1, 1) else None
    if plan is not None:
        return _stride2_rows(g, gy, w, plan)
    if in_place and g.stride != (1, 1) and g.dilation == (1, 1):
        return _phase_correlations(g, gy, w)
    (dh, dw) = g.dilation
    before = ((g.R - 1) * dh - g.padding[0], (g.S - 1) * dw - g.padding[2])
    if in_place and g.stride == (1, 1):
        flipped = np.ascontiguousarray(w[::-1, ::-1])  # HWIO
        return _rows(g, gy, flipped.reshape(g.R * g.S, g.C), None, before, (1, 1), (g.H, g.W),
                     None)
    m, blocks = g.K // g.C, _blocks(g.C)
    sources = _lanes(g.C, m, sub=m)
    flipped = oihw_view(w, g.layout).reshape(g.C, m, g.R, g.S)[:, :, ::-1, ::-1]
    return _correlate(g, gy, sources, _lane_weights(flipped, blocks), None, before, g.stride,
                      (1, 1), (g.C, g.H, g.W), None)


@functools.lru_cache(maxsize=256)
def _stride2_plan(g):
    """kernels.stride2_columns' tiles of the layer's input gradient rows. Kept per layer: the
    kernel only reads them."""
    return kernels.stride2_columns(g.W, g.OW, g.S, g.padding[2])


def _stride2_rows(g, gy, w, plan):
    """The input gradient of an NHWC layer of column stride 2, read and written in place by
    kernels.depthwise_nhwc_stride2_input_rows over its ``plan`` (:func:`_stride2_plan`'s
    tiles and taps): a task a row of gx, its tiles' columns in order."""
    gx = driver.empty(np, g.x_shape, gy.dtype)
    tiles, taps = plan
    driver.cpu_call(kernels.depthwise_nhwc_stride2_input_rows, _work(g, gy.size + gx.size),
                    gy.reshape(g.N, -1), g.OH, g.OW, w.reshape(-1, VECTOR), gx.reshape(g.N, -1),
                    g.H, g.W, g.R, g.stride[0], g.padding[0], tiles, taps)
    return gx


def _phase_taps(size, phase, stride, k, before):
    """One axis of a strided layer's input gradient phase: the input pixels phase + stride * a
    (a < count) each sum the output gradient at a - before' + k' times flipped tap taps[k']
    (k' < len(taps)): (count, taps, before'). Undilated."""
    first = (phase + before) % stride  # the first tap whose outputs reach this phase
    taps = list(range(first, k, stride))[::-1]
    return len(range(phase, size, stride)), taps, len(taps) - 1 - (phase + before - first) // stride


@functools.lru_cache(maxsize=256)
def _phases(g):
    """A strided layer's input gradient as kernels.depthwise_nhwc_rows' parts, one a phase
    that some tap reaches, row phase by column phase: (the parts and their tiles
    (:func:`_parts`; None where there are none), the flat HWIO taps of their windows' flipped
    taps in the parts' order, the parts a task's row takes (a row phase's column phases where
    every phase is a part, else one), the phases no tap reaches as (row phase, column
    phase)). Kept per layer: four phases' filters gathered tap by tap and their plans took
    ~40 us a call on MobileNetV2's 14 x 14 layer, whose kernels take ~200."""
    parts, taps, untouched = [], [], []
    blocks = g.C // VECTOR
    for row_phase in range(g.stride[0]):
        rows, row_taps, top = _phase_taps(g.H, row_phase, g.stride[0], g.R, g.padding[0])
        for column_phase in range(g.stride[1]):
            columns, column_taps, left = _phase_taps(g.W, column_phase, g.stride[1], g.S,
                                                     g.padding[2])
            if not row_taps or not column_taps:
                untouched.append((row_phase, column_phase))
            elif rows and columns:
                parts.append((rows, top, len(row_taps), columns, len(column_taps), left,
                              (row_phase * g.W + column_phase) * g.C, len(taps) * blocks))
                taps += [r * g.S + s for r in row_taps for s in column_taps]
    group = g.stride[1] if len(parts) == g.stride[0] * g.stride[1] else 1
    return _parts(tuple(parts), g.OW, 1, 1) if parts else None, np.array(taps, np.int64), \
        group, untouched


def _phase_correlations(g, gy, w):
    """A strided NHWC layer's input gradient read and written in place by one call of
    kernels.depthwise_nhwc_rows: each of its stride phases of input pixels (those of one row
    and column remainder) is a part, a stride-1 correlation of gy as it lies with the phase's
    taps flipped, written into gx at that phase's pixels, a task a row of gx (its column
    phases); a phase no tap reaches is zero. Placing gy stride apart in depthwise_planes'
    zeroed buffers ran MobileNetV2's 8 x 144 x 56 x 56 stride-2 layer's input gradient in
    1.6-2.3 ms, so 0.78-1.36 (PyTorch channels-last 0.46-1.04; two Zen 4 threads,
    benchmarks/results/cpu-nhwc.md); a call a phase, features.14.dw's in 0.211-0.215 ms, one
    call 0.153-0.212 (two Zen 4 threads, benchmarks/results/cpu-nhwc-depthwise-rows.md)."""
    gx = driver.empty(np, g.x_shape, gy.dtype)
    plan, taps, group, untouched = _phases(g)
    for row_phase, column_phase in untouched:
        gx[:, row_phase::g.stride[0], column_phase::g.stride[1]] = 0
    if plan is not None:
        driver.cpu_call(kernels.depthwise_nhwc_rows, _work(g, gy.size + gx.size),
                        gy.reshape(g.N, -1), g.OH, g.OW,
                        w.reshape(g.R * g.S, g.C)[taps].reshape(-1, VECTOR),
                        driver.bias(np, None, g.C, gy.dtype), gx.reshape(g.N, -1), plan[0],
                        group, *plan[1:], g.stride[0] * g.W * g.C, g.stride[1] * g.C, (1, 1),
                        (1, 1), 0)
    return gx


def backward_weight(g, gy, x):
    """gw = dL/dw: per channel block, image and band, each tap's products summed over the
    band's output pixels (float64 across rows), then the bands summed in a fixed order."""
    m, blocks = g.K // g.C, _blocks(g.K)
    if _whole_vectors_nhwc(g):  # read in place
        band = min(g.OH, -(-BAND_PIXELS // g.OW))
        bands = -(-g.OH // band)
        images = _images(g.N, bands, band * g.OW)
        partial = driver.empty(np, (-(-g.N // images) * bands, blocks, g.R * g.S, VECTOR),
                               np.float64)
        driver.cpu_call(kernels.depthwise_nhwc_weight_rows, _work(g, x.size + gy.size),
                        x.reshape(g.N, -1), g.H, g.W, gy.reshape(g.N, -1), g.OH, g.OW,
                        (g.R, g.S), g.stride, g.dilation, g.padding[0], g.padding[2], band,
                        images, partial)
        return _weight_gradient(g, partial, blocks, gy.dtype)
    band, rows, cols, plane, taps = _buffer((g.H, g.W), (g.padding[0], g.padding[2]), (1, 1),
                                            g.stride, g.dilation, (g.OH, g.OW), (g.R, g.S), 1)
    bands = -(-g.OH // band)
    images = _images(g.N, blocks * bands, band * g.OW)
    partial = driver.empty(np, (-(-g.N // images) * bands, blocks, taps.size, VECTOR), np.float64)
    driver.cpu_call(kernels.depthwise_planes_weight, _work(g, x.size + gy.size),
                    x.reshape(g.N, -1), g.H, g.W, *_steps(x, g.layout), _lanes(g.K, m), rows, cols,
                    plane, band, images, taps, gy.reshape(g.N, -1), g.OH, g.OW,
                    *_steps(gy, g.layout),
                    _lanes(g.K)[:, 0], *_output_places(g.OH, g.OW), partial)
    return _weight_gradient(g, partial, blocks, gy.dtype)


def _weight_gradient(g, partial, blocks, dtype):
    """gw from the weight gradient kernels' partial sums (parts, blocks, taps, VECTOR), the
    parts summed in a fixed order (layout.block_filters, the K channels one group of one input
    channel: HWIO's (tap, 1, k) or OIHW's (k, 1, tap)). NumPy's sum over the parts, transpose
    and copy took 17-21 us of features.14.dw's 0.13-0.17 ms weight gradient (8 x 14 x 14 x
    576, stride 2; two Zen 4 threads)."""
    gw = driver.empty(np, g.w_shape, dtype)
    driver.cpu_move(layout_kernels.block_filters, partial.size,
                    partial.reshape(partial.shape[0], 1, blocks, -1, VECTOR), g.K, g.R * g.S,
                    gw.reshape(-1), g.layout == "NHWC")
    return gw
