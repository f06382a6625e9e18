"""conv2d, its two backward passes and its bias gradient: every implementation on every device.

Algorithms: "reference" (NumPy, the float64 oracle and the benchmarks' baseline; never chosen by
algo="auto"), "direct" (loops over the window, no workspace) and "im2col" (the windows laid out
as matrix columns, then a GEMM), on the CPU and on the GPU; on a real GPU also "cublas" (the
GPU's im2col with cuBLAS's GEMM). Each implementation takes the resolved geometry ``g``
(:class:`fastconv.geometry.ConvGeometry`) and contiguous arrays, and returns a new array. Kernels
index NCHW; an NHWC array is handed over as a transposed view, except to the NHWC kernels.
"""

import functools
import math

import numba
import numpy as np

from .. import runtime
from ..geometry import conv_geometry, nchw_view, oihw_view
from ..kernels import (
    VECTOR_LANES,
    conv_blocked,
    conv_direct,
    cuda_simulated,
    im2col,
    tile_starts,
)
from ..kernels import bias as bias_kernels
from ..kernels import layout as layout_kernels
from ..kernels.activation import CODES
from ..registry import heuristic, refusal, register
from . import depthwise, driver, grouped
from .cpu_rule import RULE as CPU_RULE
from .driver import image_major, lazy

bias_cuda = lazy("fastconv.kernels.bias_cuda")
conv_direct_cuda = lazy("fastconv.kernels.conv_direct_cuda")
gemm_cuda = lazy("fastconv.kernels.gemm_cuda")
im2col_cuda = lazy("fastconv.kernels.im2col_cuda")
gpu = driver.gpu


# --- reference ------------------------------------------------------------------------------------

def _activate(y, activation):
    if activation == "relu":
        return np.maximum(y, 0)
    if activation == "tanh":
        return np.tanh(y)
    if activation == "sigmoid":
        return 0.5 * (1 + np.tanh(0.5 * y))
    return y


@register("conv2d", "cpu", "reference")
def conv2d_reference(g, x, w, b, activation):
    """Pad, take a strided window view, contract with einsum."""
    x, w = nchw_view(x, g.layout), oihw_view(w, g.layout)
    win = driver.windows(driver.pad(x, g.padding), (g.R, g.S), g.stride, g.dilation,
                         (g.OH, g.OW))
    y = np.empty((g.N, g.K, g.OH, g.OW), np.result_type(x, w))
    for cs, ks in g.channel_slices():
        y[:, ks] = np.einsum("nchwrs,kcrs->nkhw", win[:, cs], w[ks], optimize=True)
    if b is not None:
        y += b[:, None, None]
    return driver.from_nchw(_activate(y, activation), g.layout)


@register("conv2d_backward_input", "cpu", "reference")
def conv2d_backward_input_reference(g, gy, w):
    """A transposed convolution: each kernel tap adds its contribution to a strided slice."""
    gy, w = nchw_view(gy, g.layout), oihw_view(w, g.layout)
    top, bottom, left, right = g.padding
    gxp = np.zeros((g.N, g.C, g.H + top + bottom, g.W + left + right), gy.dtype)
    (sh, sw), (dh, dw) = g.stride, g.dilation
    for cs, ks in g.channel_slices():
        for r in range(g.R):
            for s in range(g.S):
                rows = slice(r * dh, r * dh + (g.OH - 1) * sh + 1, sh)
                cols = slice(s * dw, s * dw + (g.OW - 1) * sw + 1, sw)
                gxp[:, cs, rows, cols] += np.einsum("nkhw,kc->nchw", gy[:, ks], w[ks, :, r, s])
    return driver.crop(gxp, g)


@register("conv2d_backward_weight", "cpu", "reference")
def conv2d_backward_weight_reference(g, gy, x):
    gy, x = nchw_view(gy, g.layout), nchw_view(x, g.layout)
    win = driver.windows(driver.pad(x, g.padding), (g.R, g.S), g.stride, g.dilation,
                         (g.OH, g.OW))
    gw = np.empty((g.K, g.C // g.groups, g.R, g.S), gy.dtype)
    for cs, ks in g.channel_slices():
        gw[ks] = np.tensordot(gy[:, ks], win[:, cs], axes=([0, 2, 3], [0, 2, 3]))
    return gw if g.layout == "NCHW" else np.ascontiguousarray(gw.transpose(2, 3, 1, 0))


@register("conv2d_backward_bias", "cpu", "reference")
def conv2d_backward_bias_reference(gy, y, activation, layout):
    if activation is not None:
        gy = gy * driver.SLOPES[activation](y)
    return gy, gy.sum(axis=(0, 2, 3) if layout == "NCHW" else (0, 1, 2))


# --- what the direct and blocked kernels share -----------------------------------------------

# Images of channels in blocks of VECTOR, (N, C / VECTOR, rows, columns, VECTOR): the blocked
# kernels' operand for an NHWC array (_image_layout).
CHANNEL_BLOCKS = f"NCHW{VECTOR_LANES}c"


def _image_layout(layout, channels, stride=1):
    """The layout the blocked kernels read an array of ``layout`` and ``channels`` in, at
    column ``stride``: NCHW, so that their row tiles (a column step of 1 or 2) serve NHWC too,
    but for NHWC of a vector's channels or more CHANNEL_BLOCKS (a column step of a block, or
    two), whose copy moves each pixel's block whole: the one transposing NHWC into NCHW took
    twice a padding copy's time (element by element for rows narrower than a vector), and the
    tiles ran as fast or faster on the blocks (ResNet-50's 8 x 128 x 56 x 56 stride-2 NHWC
    layer's forward 13.2-14.2 -> 10.8-11.7 ms on two Zen 4 threads, 25.6-26.7 -> 20.2-20.4 on
    one, PyTorch's channels-last 8.7-9.5 and 17.1-17.4; ResNeXt's grouped 14 x 14 layer
    3.2-4.0 -> 1.9-2.6, PyTorch 1.9-2.1). Fewer channels in blocks, mostly zeros, ran a stem
    1.4-2x slower; they stay NHWC where the row tiles are compiled for their column step
    (conv_blocked.ROW_STEPS: an RGB stem's 3 or 6), so that the padding copy moves whole
    rows: MobileNetV2's 8 x 224 x 224 x 3 stem spent 0.34 ms of its 1.45 ms forward
    transposing into NCHW, 0.10 padding NHWC (forward 1.48-1.65 -> 1.28-1.31 ms, weight
    gradient 1.76-1.91 -> 1.61-1.67, two Zen 4 threads)."""
    if layout != "NHWC":
        return "NCHW"
    if channels >= VECTOR_LANES:
        return CHANNEL_BLOCKS
    return "NHWC" if channels * stride in conv_blocked.ROW_STEPS else "NCHW"


def _image_size(layout, channels, rows, columns):
    """The cells of an image of ``channels`` x ``rows`` x ``columns`` in ``layout``."""
    if layout == CHANNEL_BLOCKS:
        channels = -(-channels // VECTOR_LANES) * VECTOR_LANES
    return channels * rows * columns


def _steps(layout, channels, rows, columns):
    """(channel step, or CHANNEL_BLOCKS' step from a block to the next; row step; column step)
    of an image of ``channels`` x ``rows`` x ``columns`` laid out flat in ``layout``."""
    if layout == CHANNEL_BLOCKS:
        return rows * columns * VECTOR_LANES, columns * VECTOR_LANES, VECTOR_LANES
    return driver.steps(layout, channels, rows, columns)


def _channel_steps(layout, channels, rows, columns):
    """((channels,) int64: each channel's first cell, the row step, the column step) of an
    image of ``channels`` x ``rows`` x ``columns`` in ``layout``."""
    step, row, column = _steps(layout, channels, rows, columns)
    c = np.arange(channels)
    if layout == CHANNEL_BLOCKS:
        return c // VECTOR_LANES * step + c % VECTOR_LANES, row, column
    return c * step, row, column


def _embedded(x, layout, images, rows, columns, top, left, stride=(1, 1)):
    """``images`` (N, X) zeroed, each holding x's image (an NCHW-indexed view) flat in
    ``layout`` as an image of ``rows`` x ``columns``, x's pixel (i, j) at (top + i * SH,
    left + j * SW): with a ``stride``, zeros between x's pixels."""
    channel, row, column = _steps(layout, x.shape[1], rows, columns)
    kernel = layout_kernels.embed
    if layout == CHANNEL_BLOCKS:  # x an NHWC array's view
        kernel, x = layout_kernels.embed_channel_blocks, x.transpose(0, 2, 3, 1)
    driver.cpu_move(kernel, images.size, x, images, top * row + left * column, channel,
                    row * stride[0], column * stride[1])
    return images


def _padded(g, x, slack=0, layout=None):
    """x, or a zero-padded copy of it, each image flat in ``layout`` (default x's own): (N, X)
    and the padded (rows, columns), sized so that every window lies inside; ``slack`` more
    elements after each image (then always a copy) for a kernel whose vector loads may reach
    past its last row."""
    top, _, left, _ = g.padding
    (sh, sw), (dh, dw) = g.stride, g.dilation
    hp = max(top + g.H, (g.OH - 1) * sh + (g.R - 1) * dh + 1)
    wp = max(left + g.W, (g.OW - 1) * sw + (g.S - 1) * dw + 1)
    layout = layout or g.layout
    if (hp, wp) == (g.H, g.W) and not slack and layout == g.layout:
        return x.reshape(g.N, -1), hp, wp
    images = driver.workspace((g.N, _image_size(layout, g.C, hp, wp) + slack), x.dtype)
    return _embedded(nchw_view(x, g.layout), layout, images, hp, wp, top, left), hp, wp


def _transposed(g, gy, w, forward, exact):
    """The input gradient of a stride-1 layer as ``forward`` (a conv2d implementation) computes
    it: a convolution of gy padded to the whole window (cropped where the layer's padding
    passes the window's reach), with the filters flipped and their two channel axes swapped.
    (Strided layers go phase by phase: conv2d_backward_input_blocked_cpu.)

    The padding's zeros meet every filter value; 0 x a non-finite value is NaN where PyTorch,
    which never multiplies them, has a number or an infinity. So filters holding one go to
    ``exact`` (a backward-input implementation) instead: the check reads only the filters."""
    if not np.isfinite(w).all():
        return exact(g, gy, w)
    dh, dw = g.dilation
    reach_h, reach_w = (g.R - 1) * dh, (g.S - 1) * dw
    shape = (g.N, g.K, g.H + reach_h, g.W + reach_w)
    # gy's pixel (oh, ow) lands at (oh + reach_h - top, ow + reach_w - left)
    rows, top = _landing(g.OH, reach_h - g.padding[0], shape[2])
    cols, left = _landing(g.OW, reach_w - g.padding[2], shape[3])
    images = driver.workspace((g.N, g.K * shape[2] * shape[3]), gy.dtype, slot=1)
    _embedded(nchw_view(gy, g.layout)[:, :, rows, cols], g.layout, images, shape[2], shape[3],
              top, left)
    padded = images.reshape(shape if g.layout == "NCHW" else shape[:1] + shape[2:] + shape[1:2])
    cg, kg = g.C // g.groups, g.K // g.groups
    flipped = oihw_view(w, g.layout).reshape(g.groups, kg, cg, g.R, g.S).swapaxes(1, 2)
    flipped = np.ascontiguousarray(flipped.reshape(g.C, kg, g.R, g.S)[:, :, ::-1, ::-1])
    if g.layout == "NHWC":
        flipped = flipped.transpose(2, 3, 1, 0)
    gt = conv_geometry(padded.shape, flipped.shape, 1, 0, g.dilation, g.groups, g.layout)
    return forward(gt, padded, flipped, None, None)


def _landing(size, shift, room):
    """(the slice of gy's indices i that land in [0, room) at i + shift, where the first of
    them lands); an empty slice if none does."""
    lo, hi = max(0, -shift), min(size, room - shift)
    if hi <= lo:
        return slice(0, 0), 0
    return slice(lo, hi), lo + shift


def _tiled(g, channels):
    """Whether the direct kernels' register tiles serve a stride-1 NCHW layer with
    ``channels`` output channels a group (the depthwise one keeps its plane kernels)."""
    return g.layout == "NCHW" and g.stride == (1, 1) and channels > 1


# --- direct -----------------------------------------------------------------------------------

@register("conv2d", "cpu", "direct")
def conv2d_direct_cpu(g, x, w, b, activation):
    y = driver.empty(np, g.y_shape, x.dtype)
    bias, act, work = driver.bias(np, b, g.K, x.dtype), CODES[activation], g.flops // 2
    if g.layout == "NHWC":
        driver.cpu_call(conv_direct.conv2d_forward_nhwc, work, x, w, bias, y, *g.taps, g.groups,
                        act)
    elif _tiled(g, g.K // g.groups):
        images, hp, wp = _padded(g, x, slack=conv_direct.VECTOR)
        driver.cpu_call(conv_direct.conv2d_forward_nchw_tiled, work, images, w, bias, y, hp, wp,
                        *g.dilation, g.groups, act)
    elif g.stride == (1, 1):
        driver.cpu_call(conv_direct.conv2d_forward_nchw_unit_stride, work, x, w, bias, y,
                        g.padding[0], g.padding[2], *g.dilation, g.groups, act)
    else:
        driver.cpu_call(conv_direct.conv2d_forward_nchw, work, x, w, bias, y, *g.taps, g.groups,
                        act)
    return y


@register("conv2d", "cuda", "direct", launches=(
    "conv_direct_cuda.conv2d_forward_nchw_tiled", "conv_direct_cuda.conv2d_forward_nchw",
    "conv_direct_cuda.conv2d_forward_nhwc"))
def conv2d_direct_cuda(g, x, w, b, activation):
    y = driver.empty(gpu.xp, g.y_shape, x.dtype)
    launch = (conv_direct_cuda.launch_conv2d_forward if g.layout == "NCHW"
              else conv_direct_cuda.launch_conv2d_forward_nhwc)
    launch(x, w, driver.bias(gpu.xp, b, g.K, x.dtype), y, *g.taps, g.groups, CODES[activation],
           stream=gpu.stream())
    return y


@register("conv2d_backward_input", "cpu", "direct")
def conv2d_backward_input_direct_cpu(g, gy, w):
    if _tiled(g, g.C // g.groups):
        return _transposed(g, gy, w, conv2d_direct_cpu, _backward_input_planes)
    return _backward_input_planes(g, gy, w)


def _backward_input_planes(g, gy, w):
    gx, gx_nchw = driver.output(np, g.x_shape, gy.dtype, g.layout)
    driver.cpu_call(conv_direct.conv2d_backward_input, g.flops // 2, nchw_view(gy, g.layout),
                    oihw_view(w, g.layout), gx_nchw, *g.taps, g.groups)
    return gx


@register("conv2d_backward_input", "cuda", "direct",
          launches=("conv_direct_cuda.conv2d_backward_input",))
def conv2d_backward_input_direct_cuda(g, gy, w):
    gx, gx_nchw = driver.output(gpu.xp, g.x_shape, gy.dtype, g.layout)
    conv_direct_cuda.launch_conv2d_backward_input(nchw_view(gy, g.layout), oihw_view(w, g.layout),
                                                  gx_nchw, *g.taps, g.groups, stream=gpu.stream())
    return gx


@register("conv2d_backward_weight", "cpu", "direct")
def conv2d_backward_weight_direct_cpu(g, gy, x):
    gw = driver.empty(np, g.w_shape, gy.dtype)
    driver.cpu_call(conv_direct.conv2d_backward_weight, g.flops // 2, nchw_view(gy, g.layout),
                    nchw_view(x, g.layout), oihw_view(gw, g.layout), *g.taps, g.groups)
    return gw


@register("conv2d_backward_weight", "cuda", "direct",
          launches=("conv_direct_cuda.conv2d_backward_weight",))
def conv2d_backward_weight_direct_cuda(g, gy, x):
    gw = driver.empty(gpu.xp, g.w_shape, gy.dtype)
    conv_direct_cuda.launch_conv2d_backward_weight(
        nchw_view(gy, g.layout), nchw_view(x, g.layout), oihw_view(gw, g.layout), *g.taps,
        g.groups, stream=gpu.stream())
    return gw


# --- channel-blocked direct (CPU) ----------------------------------------------------------------
#
# kernels/conv_blocked.py addresses an image as a flat vector: the caller gives it the offset of
# every tap from an output pixel's base, for the input's layout, and pads the input so that no
# tap leaves it (the padding is then real zeros, and the kernel's inner loop has no branch).

@functools.lru_cache(maxsize=256)
def _tap_offsets(g, hp, wp, layout=None):
    """(G, T) uint64: tap (c, r, s) of group g from a pixel's base, and the base's row and
    column steps, in a padded image of ``layout`` (default the layer's). Kept per layer, as
    _live_taps: its NumPy calls took 9 us of a small layer's 64 us forward."""
    channel, row, col = _channel_steps(layout or g.layout, g.C, hp, wp)
    c = channel.reshape(g.groups, -1, 1, 1)
    r = np.arange(g.R).reshape(1, 1, -1, 1) * g.dilation[0]
    s = np.arange(g.S).reshape(1, 1, 1, -1) * g.dilation[1]
    taps = (c + r * row + s * col).reshape(g.groups, -1).astype(np.uint64)
    return taps, g.stride[0] * row, g.stride[1] * col


@functools.lru_cache(maxsize=256)
def _pixel_bases(g, row_step, col_step):
    """(P,) uint64: each output pixel's base, row-major (kept per layer)."""
    oh, ow = np.arange(g.OH)[:, None], np.arange(g.OW)[None, :]
    return (oh * row_step + ow * col_step).reshape(-1).astype(np.uint64)


def _lane_blocks(a, groups):
    """(G, B, N, P, lanes) of a (N, K, P) array: each group's K/groups channels in blocks of the
    register tile's width (conv_blocked.lanes), zero past the group's last, the channel
    innermost. By VECTOR x VECTOR transposes where a's planes are C-contiguous (NCHW:
    kernels/layout.py's dense_channel_blocks), else a pixel's run of channels at a time
    (channel_blocks: an NHWC gy); an NHWC gy of one group whose channels fill one block
    exactly is that block as it lies: a view (MobileNetV2's 32-channel stem, whose 12.8 MB
    copy took 0.56-0.71 ms of its 2.4-2.7 ms weight gradient on two Zen 4 threads)."""
    n, k, p = a.shape
    lanes = conv_blocked.lanes(k // groups)
    if groups == 1 and k == lanes and a.transpose(0, 2, 1).flags.c_contiguous:
        return a.transpose(0, 2, 1).reshape(1, 1, n, p, k)
    blocks = driver.empty(np, (groups, -(-k // groups // lanes), n, p, lanes), a.dtype)
    dense = a.flags.c_contiguous
    driver.cpu_move(layout_kernels.dense_channel_blocks if dense else layout_kernels.channel_blocks,
                    blocks.size, a, blocks)
    return blocks


def _filter_blocks(w):
    """((G, B, I * R * S, lanes) of (G, I, O, R, S) filters: the O output channels in blocks of
    the register tile's width; whether every filter value is finite). By VECTOR x VECTOR
    transposes where each output channel's taps lie side by side (a layer's contiguous OIHW
    filters, as the forward sees them: dense_channel_blocks, the filters one image of O
    channels), else element by element (filter_blocks)."""
    groups, i, o, r, s = w.shape
    lanes = conv_blocked.lanes(o)
    blocks = driver.empty(np, (groups, -(-o // lanes), i * r * s, lanes), w.dtype)
    dense = w.transpose(0, 2, 1, 3, 4)
    if dense.flags.c_contiguous:
        finite = driver.cpu_move(layout_kernels.dense_channel_blocks, blocks.size,
                                 dense.reshape(1, groups * o, -1), blocks[:, :, None])
    else:
        finite = driver.cpu_move(layout_kernels.filter_blocks, blocks.size, w, blocks)
    return blocks, finite


def _grouped(g, w):
    """The filters as (G, K/G, C/G, R, S), a view where it can be."""
    return oihw_view(w, g.layout).reshape(g.groups, g.K // g.groups, -1, g.R, g.S)


def _strided_pointwise(g):
    """A 1x1 strided layer without padding reads every stride-th pixel only: the layer at
    stride 1 on those pixels (_pixels_read); else None."""
    if (g.R, g.S) != (1, 1) or g.stride == (1, 1) or any(g.padding):
        return None
    shape = (g.N, g.C, g.OH, g.OW) if g.layout == "NCHW" else (g.N, g.OH, g.OW, g.C)
    return conv_geometry(shape, g.w_shape, 1, 0, 1, g.groups, g.layout)


def _strided_pointwise_nhwc(g):
    """_strided_pointwise for an NHWC layer; None for an NCHW one, which keeps its own paths
    (its im2col's col2im of 1x1 columns runs along a plane's rows: 10.5 -> 14.2 ms into the
    pixels read, ResNet-50's 8 x 256 x 56 x 56 downsampling layer's input gradient)."""
    return _strided_pointwise(g) if g.layout == "NHWC" else None


def _pixels_read(g, a):
    """The view of an x-shaped array at the pixels a 1x1 unpadded layer reads."""
    rows = slice(0, g.OH * g.stride[0], g.stride[0])
    columns = slice(0, g.OW * g.stride[1], g.stride[1])
    return a[:, :, rows, columns] if g.layout == "NCHW" else a[:, rows, columns]


def _subsampled(g, x):
    """(g, x), or where a 1x1 strided layer's images are CHANNEL_BLOCKS, the layer at stride 1
    and x's view of the pixels it reads (_strided_pointwise), so that the images hold them
    alone (ResNet-50's 8 x 256 x 56 x 56 NHWC downsampling layer's forward 0.54-0.56x ->
    0.70-0.81x PyTorch on two Zen 4 threads, its weight gradient 18-31 -> 15-16 ms). NCHW
    reads such an x in place, unpadded: a copy of the pixels read, NumPy's, ran the weight
    gradient of ResNet-18's 64-channel one 2x slower."""
    at_one = _strided_pointwise(g)
    if at_one is None or _image_layout(g.layout, g.C) != CHANNEL_BLOCKS:
        return g, x
    return at_one, _pixels_read(g, x)


def _gathered(g, x):
    """(g, x), or for a 1x1 strided NHWC layer the layer at stride 1 and a copy of the pixels
    it reads (_strided_pointwise): im2col's columns are then that copy's own pixels, one
    product with no column copy (NHWC's im2col writes channel-major columns, a transpose).
    ResNet-50's 8 x 256 x 56 x 56 downsampling layer: forward 11.7 -> 10.5 ms, weight gradient
    12.5 -> 10.3 on two Zen 4 threads (PyTorch channels-last 8.8 and 9.0). The copy is the
    threads' (layout.embed), into an array on a cache line, not NumPy's in the calling
    thread: ResNet-18's 8 x 64 x 56 x 56 one's forward 0.80 -> 0.57 ms on two Xeon threads
    with x in cache (its product 0.39)."""
    at_one = _strided_pointwise_nhwc(g)
    if at_one is None:
        return g, x
    pixels = driver.empty(np, (g.N, at_one.H * at_one.W * g.C), x.dtype)
    _embedded(nchw_view(_pixels_read(g, x), "NHWC"), "NHWC", pixels, at_one.H, at_one.W, 0, 0)
    return at_one, pixels.reshape(at_one.x_shape)


def _into_pixels_read(backward_input):
    """A CPU input gradient that takes a 1x1 strided NHWC layer (_strided_pointwise) at stride
    1, into the pixels it reads of a zeroed gx: by phases a stride-2 layer wrote four planes
    (three of them zeros, no tap landing there) and merged them into gx, im2col scattered its
    columns. ResNet-50's 8 x 256 x 56 x 56 NHWC downsampling layer: im2col 22.1 -> 13.9 ms,
    blocked 20.2 -> 18.8 on two Zen 4 threads (PyTorch channels-last 9.8-10.6). gx zeroed and
    the pixels spread into it in one pass on the threads (layout.embed at the stride), not by
    NumPy in the calling thread: ResNet-18's 8 x 64 x 56 x 56 one's input gradient 0.99 ->
    0.66 ms on two Xeon threads."""
    @functools.wraps(backward_input)
    def run(g, gy, w):
        at_one = _strided_pointwise_nhwc(g)
        if at_one is None:
            return backward_input(g, gy, w)
        gx = driver.empty(np, g.x_shape, gy.dtype)
        _embedded(nchw_view(backward_input(at_one, gy, w), "NHWC"), "NHWC",
                  gx.reshape(g.N, -1), g.H, g.W, 0, 0, g.stride)
        return gx
    return run


@register("conv2d", "cpu", "blocked")
def conv2d_blocked_cpu(g, x, w, b, activation):
    """x padded into the blocked kernels' images (_image_layout); y written in the caller's
    layout."""
    g, x = _subsampled(g, x)
    y = driver.empty(np, g.y_shape, x.dtype)
    layout = _image_layout(g.layout, g.C, g.stride[1])
    images, hp, wp = _padded(g, x, layout=layout)
    taps, row_step, col_step = _tap_offsets(g, hp, wp, layout)
    filters, finite = _filter_blocks(_grouped(g, w).transpose(0, 2, 1, 3, 4))
    channel, row, column = driver.steps(g.layout, g.K, g.OH, g.OW)
    # skipping the padding would leave finite what PyTorch's 0 x inf makes NaN
    top, left = g.padding[0], g.padding[2]
    rows, cols = ((top, top + g.H), (left, left + g.W)) if finite else ((0, hp), (0, wp))
    reads = ((g.stride[0], tuple(r * g.dilation[0] for r in range(g.R)), rows),
             (g.stride[1], tuple(s * g.dilation[1] for s in range(g.S)), cols))
    _blocked(g.N, images, filters, taps, driver.bias(np, b, g.K, x.dtype), y.reshape(g.N, -1),
             (g.OH, g.OW), (row_step, col_step), reads, (0, channel, row, column),
             CODES[activation])
    return y


@functools.lru_cache(maxsize=256)
def _live_taps(rows, step, reach, data, columns):
    """(a channel's taps, (rows, 2)), unsigned: per output row i, the [lo, hi) of a channel's taps
    (window-row-major, ``columns`` a window row) that read data, not padding: window row r
    reads the padded input's row i * step + reach[r] (``reach`` a tuple, monotonic, so those
    rows are consecutive), its data rows [data[0], data[1]); [0, 0) where none does. Kept per
    layer: its dozen NumPy calls took 14 us, a quarter of a small layer's forward."""
    if not len(reach) * columns:  # a phase no tap lands on
        return np.uint64(0), np.zeros((rows, 2), np.uint64)
    inside = _inside(rows, step, reach, data)
    lo, hi = inside.argmax(1), inside.shape[1] - inside[:, ::-1].argmax(1)
    live = np.where(inside.any(1)[:, None], np.stack((lo, hi), 1), 0)
    return np.uint64(inside.shape[1] * columns), (live * columns).astype(np.uint64)


def _inside(count, step, reach, data):
    """(count, len(reach)) bool: whether output pixel i's window position r, at
    i * step + reach[r] along an axis, lies in its data [data[0], data[1])."""
    read = np.arange(count)[:, None] * step + np.asarray(reach, np.int64)[None, :]
    return (read >= data[0]) & (read < data[1])


@functools.lru_cache(maxsize=256)
def _column_tiles(width, pixels, step, reach, data):
    """(Q, 3) uint64: conv2d_forward_rows' tiles of an output row of ``width`` columns, each
    (its first column, the window columns [first, last) it runs), in the order they run;
    ``step``, ``reach`` and ``data`` as _live_taps' for the columns. Tiles of ``pixels`` side by
    side, the last moved back to end at the row's end; or, where that runs fewer taps, first
    the tiles of the columns whose windows reach into the padding, each without the window
    columns that read only padding for all of its own, then tiles over the columns whose
    windows read none, which overwrite the pixels an edge tile overlapped (ASPP's dilation-6
    layer: 13 window columns a row in 5 tiles, not 15)."""
    columns = len(reach)
    everything = [(s, 0, columns) for s in tile_starts(0, width, pixels)]
    inside = _inside(width, step, reach, data)
    full = np.flatnonzero(inside.all(1))
    if not columns or not len(full) or full[-1] + 1 - full[0] < pixels:
        return np.array(everything, np.uint64)
    a, b = full[0], full[-1] + 1  # the columns whose windows read no padding
    edges = [(s, range(s, min(s + pixels, a))) for s in range(0, a, pixels)]
    edges += [(e - pixels, range(max(e - pixels, b), e)) for e in range(width, b, -pixels)]
    tiles = []
    for start, own in edges:
        live = inside[own].any(0)
        first, last = live.argmax(), columns - live[::-1].argmax()
        tiles.append((start, first, last) if live.any() else (start, 0, 0))
    tiles += [(s, 0, columns) for s in tile_starts(a, b, pixels)]
    cost = sum(last - first for _, first, last in tiles)
    return np.array(tiles if cost < len(everything) * columns else everything, np.uint64)


def _blocked(n, images, filters, taps, bias, y, size, steps, reads, out, act):
    """The blocked forward kernel for its operands: row tiles where the image's column step is
    one of conv_blocked.ROW_STEPS and a tile fits the row (leaving out the taps that read only
    padding: ``reads`` is (rows, columns), each the (step, reach, data) of _live_taps), the
    generic tiles elsewhere. ``size`` the output's (rows, columns), ``steps`` the input's
    (row, column) steps per output pixel, ``out`` its (origin, channel, row, column) in y."""
    (groups, blocks, _, lanes), (oh, ow) = filters.shape, size
    work = n * oh * ow * bias.shape[0] * taps.shape[1]
    kg = bias.shape[0] // groups
    biases = np.zeros((groups, blocks * lanes), bias.dtype)
    biases[:, :kg] = bias.reshape(groups, kg)
    biases = biases.reshape(groups, blocks, lanes)
    pixels = (conv_blocked.row_pixels(ow, lanes, images.itemsize)
              if steps[1] in conv_blocked.ROW_STEPS else None)
    if pixels is not None:
        columns = len(reads[1][1])
        channel_taps, live = _live_taps(oh, *reads[0], columns)
        span = conv_blocked.span_taps(int(channel_taps), lanes, images.itemsize)
        driver.cpu_call(conv_blocked.forward_rows(lanes, pixels, steps[1]), work, images,
                        filters, taps, biases, kg, y, oh, ow, steps[0], channel_taps, live,
                        np.uint64(columns), _column_tiles(ow, pixels, *reads[1]),
                        np.uint64(span), *out, act)
    else:
        driver.cpu_call(conv_blocked.FORWARD[lanes], work, images, filters, taps, biases, kg,
                        y, oh, ow, *steps, *out, act)


# An NCHW input gradient of this many bytes or fewer takes its phases straight into gx: the
# lines its strided stores share stay in one core's L2 (1 MiB) from phase to phase, and merging
# planes cost more than it saved. The 3 x 17 x 31 x 29 layer (0.17 MiB): 0.385 -> 0.344 ms on
# two Zen 4 threads; 8 x 32 x 28 x 28 (0.77 MiB) 0.66 -> 0.63; at 1.5 MiB it depends on the
# channels (64: 1.03-1.10x faster, 256: 0.97-0.99x), at 3-6 MiB the planes win by 1.04-1.33x.
PHASES_IN_PLACE_BYTES = 1 << 20


@register("conv2d_backward_input", "cpu", "blocked")
@_into_pixels_read
def conv2d_backward_input_blocked_cpu(g, gy, w):
    """The input gradient phase by phase: gx's pixels (ih, iw) of one (ih mod sh, iw mod sw)
    receive gy through the taps (r, s) with (ih + top - r * dh) and (iw + left - s * dw)
    divisible by the strides, each phase a stride-1 convolution of gy (padded once for all)
    by the forward's kernels, channels trading places: a stride-1 layer's one phase written
    into gx, a large strided NCHW layer's phases into planes of their own, then merged into
    gx, any other strided layer's into gx where they lie (_input_gradient_plan). A stride-s
    layer costs its own multiply-adds (gy spread out by the stride, zeros between its pixels,
    would cost s^2 times them). Non-finite filters go to the exact kernel, as in
    _transposed."""
    phase_filters = _input_gradient_filters(g, w)
    if phase_filters is None:
        return _backward_input_planes(g, gy, w)
    large = math.prod(g.x_shape) * gy.itemsize > PHASES_IN_PLACE_BYTES
    (top, hp, left, wp), layout, steps, phases, planes = _input_gradient_plan(g, large)
    images = driver.workspace((g.N, _image_size(layout, g.K, hp, wp)), gy.dtype)
    _embedded(nchw_view(gy, g.layout), layout, images, hp, wp, top, left)
    gx = driver.empty(np, g.x_shape, gy.dtype)
    out = (gx.reshape(g.N, -1) if planes is None
           else driver.workspace((g.N, planes[1]), gy.dtype, slot=1))
    bias = driver.bias(np, None, g.C, gy.dtype)
    for (rho, sigma), taps, reads, size, origin in phases:
        _blocked(g.N, images, phase_filters[rho][sigma], taps, bias, out, size, steps, reads,
                 origin, 0)
    if planes is not None:
        driver.cpu_move(layout_kernels.merge_phases, gx.size, out, planes[0],
                        nchw_view(gx, g.layout))
    return gx


@functools.lru_cache(maxsize=256)
def _input_gradient_plan(g, large):
    """What conv2d_backward_input_blocked_cpu runs for a layer, gx ``large`` or not:
    (gy's padding (top, rows, left, columns), the layout of its padded images, their (row,
    column) steps, per phase with pixels its ((rho, sigma), taps (G, K/G * taps) uint64,
    _blocked's reads, (rows, columns), where in the output it writes), and where phases go to
    planes of their own, ((rows, columns) int64: their first cells in an image, the cells of
    all); else None). Kept per layer: the 3 x 17 x 31 x 29 layer's Python around its kernels
    took 134 us of its 0.42 ms on two Zen 4 threads, 48 us now (the op 0.24 ms).

    An NCHW layer's phases went to planes of their own, then into gx together: written into
    gx's strided sub-grids, a tile's pixels a stride apart were stored one by one, and every
    phase pulled all of gx's cache lines through the caches again (ResNeXt's strided grouped
    layer: its four phases 62 ms on one Zen 3 thread, 35 ms into planes); but not a small gx
    (PHASES_IN_PLACE_BYTES). An NHWC layer's phases go straight into gx: a pixel's channels are
    a vector store, and merging NCHW planes into NHWC pixels (a transpose) took half of
    ResNeXt's 8 x 56 x 56 x 256 stride-2 input gradient (5.96 of 12.6 ms, two Zen 4
    threads)."""
    rows = _phases(g.H, g.stride[0], g.dilation[0], g.padding[0], g.R)
    cols = _phases(g.W, g.stride[1], g.dilation[1], g.padding[2], g.S)
    (top, hp), (left, wp) = _phase_padding(rows, g.OH), _phase_padding(cols, g.OW)
    layout = _image_layout(g.layout, g.K)  # gy as the forward's x
    channel, row, column = _channel_steps(layout, g.K, hp, wp)
    k = channel.reshape(g.groups, -1, 1, 1)
    x_channel, x_row, x_column = driver.steps(g.layout, g.C, g.H, g.W)
    planes = None
    if large and len(rows) * len(cols) > 1 and x_channel != 1:
        sizes = np.array([[g.C * oh * ow for _, _, ow in cols] for _, _, oh in rows], np.int64)
        planes = (np.cumsum(sizes).reshape(sizes.shape) - sizes, int(sizes.sum()))
    phases = []
    for rho, (_, qr, oh) in enumerate(rows):
        for sigma, (_, qs, ow) in enumerate(cols):
            if oh == 0 or ow == 0:
                continue
            taps = (k + (np.array(qr).reshape(1, 1, -1, 1) + top) * row
                    + (np.array(qs).reshape(1, 1, 1, -1) + left) * column)
            reads = ((1, tuple(q + top for q in qr), (top, top + g.OH)),
                     (1, tuple(q + left for q in qs), (left, left + g.OW)))
            origin = ((planes[0][rho, sigma], oh * ow, ow, 1) if planes is not None
                      else (rho * x_row + sigma * x_column, x_channel, g.stride[0] * x_row,
                            g.stride[1] * x_column))
            phases.append(((rho, sigma), taps.reshape(g.groups, -1).astype(np.uint64), reads,
                           (oh, ow), origin))
    return (top, hp, left, wp), layout, (row, column), phases, planes


def _input_gradient_filters(g, w):
    """Per phase (as _phases gives them, rows by columns), its operand: (G, B, K/G * taps,
    lanes), each group's C/G input channels in blocks of the register tile's width (zero past
    the last), the taps landing on the phase in its order, blocked in one pass over the
    filters (kernels/layout.py's phase_filter_blocks) into one array, the phases one after
    another; None where a filter value is not finite."""
    starts, steps, places, size, lanes = _phase_places(g)
    phases = driver.empty(np, (size, lanes), w.dtype)
    if g.layout == "NHWC":  # HWIO, read in place
        kernel, filters = layout_kernels.phase_filter_blocks_hwio, w.reshape(-1, w.shape[2], g.K)
    else:
        kernel, filters = layout_kernels.phase_filter_blocks, w.reshape(g.K, w.shape[1], -1)
    finite = driver.cpu_move(kernel, phases.size, np.ascontiguousarray(filters), g.groups,
                             starts, steps, phases)
    if not finite:
        return None
    return [[phases[first:first + math.prod(shape[:3])].reshape(shape) for first, shape in row]
            for row in places]


@functools.lru_cache(maxsize=256)
def _phase_places(g):
    """Where phase_filter_blocks sends each tap of a strided layer's filters: (starts, steps:
    (R * S,) uint64 as it takes them; per phase, rows by columns, (its first row, its
    operand's shape); the rows of all; the lanes). Kept per layer: its NumPy calls took 0.1 ms,
    a sixth of a 3 x 17 x 31 x 29 layer's input gradient."""
    cg = g.C // g.groups
    lanes = conv_blocked.lanes(cg)
    head = g.groups * -(-cg // lanes) * (g.K // g.groups)  # a phase's rows per tap
    starts, steps = np.empty((g.R, g.S), np.uint64), np.empty((g.R, g.S), np.uint64)
    places, first = [], 0
    for rs, _, _ in _phases(g.H, g.stride[0], g.dilation[0], g.padding[0], g.R):
        places.append([])
        for ss, _, _ in _phases(g.W, g.stride[1], g.dilation[1], g.padding[2], g.S):
            window_rows, window_cols = np.arange(g.R)[rs], np.arange(g.S)[ss]
            taps = window_rows.size * window_cols.size
            place = np.arange(taps).reshape(window_rows.size, window_cols.size)
            starts[np.ix_(window_rows, window_cols)] = (first + place) * lanes
            steps[np.ix_(window_rows, window_cols)] = taps * lanes
            places[-1].append((first, (g.groups, -(-cg // lanes), g.K // g.groups * taps, lanes)))
            first += head * taps
    return starts.reshape(-1), steps.reshape(-1), places, first, lanes


def _phases(size, stride, dilation, pad, taps):
    """Per phase rho < stride of an input axis of ``size`` (its indices i * stride + rho):
    (the slice of taps r landing on it, each one's shift q: the phase's pixel i takes gy's
    pixel i + q, the phase's pixel count). The taps landing on a phase step evenly."""
    phases = []
    for rho in range(stride):
        landing = [r for r in range(taps) if (rho + pad - r * dilation) % stride == 0]
        step = landing[1] - landing[0] if len(landing) > 1 else 1
        phases.append((slice(landing[0], landing[-1] + 1, step) if landing else slice(0, 0),
                       [(rho + pad - r * dilation) // stride for r in landing],
                       max(0, -(-(size - rho) // stride))))
    return phases


def _phase_padding(phases, out_size):
    """(zeros before gy's first pixel, the padded length) so that every phase's every tap
    lands inside the padded axis."""
    shifts = [(q, count) for _, qs, count in phases for q in qs if count]
    before = max([0] + [-q for q, _ in shifts])
    return before, max([before + out_size] + [before + q + count for q, count in shifts])


@register("conv2d_backward_weight", "cpu", "blocked")
def conv2d_backward_weight_blocked_cpu(g, gy, x):
    side = _pointwise_lanes(g)
    if side is not None:
        return _pointwise_weight(g, gy, x, side)
    g, x = _subsampled(g, x)
    layout = _image_layout(g.layout, g.C, g.stride[1])  # as the forward's
    images, hp, wp = _padded(g, x, layout=layout)
    taps, row_step, col_step = _tap_offsets(g, hp, wp, layout)
    grad = _lane_blocks(image_major(gy, g.layout), g.groups)
    total = _weight_sums(g, images, grad, taps, _pixel_bases(g, row_step, col_step))
    gw = driver.empty(np, g.w_shape, gy.dtype)
    driver.cpu_move(layout_kernels.block_filters, gw.size, total[None], g.K // g.groups,
                    g.R * g.S, gw.reshape(-1), g.layout == "NHWC")
    return gw


def _weight_sums(g, images, grad, taps, bases):
    """conv_blocked.conv2d_backward_weight's float64 sums (G, B, T, lanes) of images (N, X)
    and grad (G, B, N, P, lanes), taps (G, T) and the output pixels' bases (P,) as it takes
    them."""
    p, image = g.OH * g.OW, images.shape[1]
    run = max(1, conv_blocked.RUN_PIXELS // max(p, 1))
    pixels = (np.arange(run, dtype=np.uint64)[:, None] * np.uint64(image) + bases).reshape(-1)
    image_bytes = (image + grad.shape[1] * p * grad.shape[4]) * grad.itemsize
    per_pass = run * max(1, conv_blocked.PASS_BYTES // (run * image_bytes))
    total = driver.empty(np, grad.shape[:2] + (taps.shape[1], grad.shape[4]), np.float64)
    lanes = grad.shape[4]
    kernel = conv_blocked.backward_weight(lanes, conv_blocked.weight_taps(taps.shape[1], lanes,
                                                                          grad.itemsize))
    driver.cpu_call(kernel, g.flops // 2, images, grad, taps, pixels, per_pass, total)
    return total


def _pointwise_lanes(g):
    """For a 1x1 unpadded NHWC layer of one group (at any stride): its side of fewer channels,
    "output" (gy's) or "input" (x's), where they are a register tile's width exactly
    (conv_blocked.lanes: 8, 16 or 32 on AVX-512), the blocked weight gradient's lanes, its
    other side's channels the taps (_pointwise_weight); else None. The fewer: MobileNetV2's 32
    -> 16 projection ran 1.2x faster on one Zen 4 thread as 32 taps of a 16-lane tile than as
    16 of a 32-lane one (alike on two); sides of one width would be one tile, one thread's."""
    if g.layout != "NHWC" or g.groups != 1 or g.C == g.K or not (
            g.pointwise or _strided_pointwise(g) is not None):
        return None
    channels, side = min((g.K, "output"), (g.C, "input"))
    return side if conv_blocked.lanes(channels) == channels else None


def _pointwise_weight(g, gy, x, side):
    """The weight gradient of a layer _pointwise_lanes serves: the ``side`` it names gives the
    tile's vectors, its pixels as the rows of its one block of lanes (_lane_blocks: a view),
    the other side's images the broadcast operand, a pixel's channels its taps. Other NHWC
    layers copy gy into channel blocks and x into images of them; im2col's pixel-long thin
    GEMMs ran BLAS far below its rate. Alternated on MobileNetV2's five such layers, against
    im2col, 0.54-0.88x -> 0.60-1.04x PyTorch's channels-last on two Zen 4 threads, 0.83-1.04x
    -> 1.00-1.29x on one (its 8 x 32 x 112 x 112 projection 1.02 -> 0.62 ms, PyTorch 0.63; its
    8 x 16 x 112 x 112 expansion 4.5 -> 4.1, PyTorch 2.4, the one left below 0.7x:
    benchmarks/results/cpu-nhwc-weight-gradients.md)."""
    g, x = _gathered(g, x)
    n, p = g.N, g.OH * g.OW
    rows, broadcast = (gy, x) if side == "output" else (x, gy)
    taps, lanes = broadcast.shape[3], rows.shape[3]
    rows = _lane_blocks(image_major(rows, "NHWC"), 1)
    images = np.ascontiguousarray(broadcast).reshape(n, p * taps)
    total = _weight_sums(g, images, rows, np.arange(taps, dtype=np.uint64)[None],
                         np.arange(p, dtype=np.uint64) * np.uint64(taps))
    # total[0, 0] is (C, K) from gy's lanes, (K, C) from x's: the HWIO filters, or the OIHW
    # filters of the layer with its two sides swapped, which lie as these HWIO ones do
    gw = driver.empty(np, g.w_shape, gy.dtype)
    driver.cpu_move(layout_kernels.block_filters, gw.size, total[None], lanes, 1,
                    gw.reshape(-1), lanes == g.K)
    return gw


# --- depthwise (CPU): lanes over channels, for layers with one input channel a group ------------
#
# implementations/depthwise.py packs the operands and runs kernels/conv_depthwise.py. It serves
# depthwise layers only (depthwise.applies): algo="auto" weighs it only there, and an explicit
# algo="depthwise" elsewhere is a ValueError naming the layer (fastconv.dispatch.select).

@register("conv2d", "cpu", "depthwise", applies=depthwise.applies)
def conv2d_depthwise_cpu(g, x, w, b, activation):
    return depthwise.forward(g, x, w, b, activation)


@register("conv2d_backward_input", "cpu", "depthwise", applies=depthwise.applies)
def conv2d_backward_input_depthwise_cpu(g, gy, w):
    if not np.isfinite(w).all():  # the padded gradient's zeros would meet it: see _transposed
        return _backward_input_planes(g, gy, w)
    return depthwise.backward_input(g, gy, w)


@register("conv2d_backward_weight", "cpu", "depthwise", applies=depthwise.applies)
def conv2d_backward_weight_depthwise_cpu(g, gy, x):
    return depthwise.backward_weight(g, gy, x)


# implementations/grouped.py runs kernels/conv_grouped.py's rotated accumulators on NHWC layers
# of 2, 4 or 8 channels a group (grouped.applies); its input gradient at stride 1 only, its
# weight gradient for windows 1 or 3 wide.

@register("conv2d", "cpu", "grouped", applies=grouped.applies)
def conv2d_grouped_cpu(g, x, w, b, activation):
    return grouped.forward(g, x, w, b, activation)


@register("conv2d_backward_input", "cpu", "grouped", applies=grouped.applies_backward_input)
def conv2d_backward_input_grouped_cpu(g, gy, w):
    return grouped.backward_input(g, gy, w)


@register("conv2d_backward_weight", "cpu", "grouped", applies=grouped.applies_backward_weight)
def conv2d_backward_weight_grouped_cpu(g, gy, x):
    return grouped.backward_weight(g, gy, x)


# --- im2col + GEMM ------------------------------------------------------------------------------
#
# A convolution is Y = W X per group: W the filters as a (K, C*R*S) matrix (rows of an OIHW
# filter), X the columns (one per output pixel, rows (c, r, s)), Y the output. The two devices
# lay the operands out differently, on purpose, and name the layouts for what they are:
# - channel-major on the CPU: (rows, n, P), P = OH*OW. BLAS then runs a batch as one flat GEMM
#   wherever images and pixels flatten into one axis (im2col's columns, any NHWC array), and one
#   GEMM per image otherwise (an NCHW array, so NCHW's forward writes a flat scratch Y that the
#   epilogue moves into y while adding bias and activation).
# - image-major on the GPU: (n, rows, P). A batch is one launch of batched GEMMs, with the bias
#   and activation fused, written straight into y (an NHWC output as a transposed view).
# Both read X straight from x where im2col would only copy (_input_columns).

def _channel_major(a, layout):
    """(channels, n, P) view of a 4-D array."""
    if layout == "NCHW":
        return a.reshape(a.shape[0], a.shape[1], -1).transpose(1, 0, 2)
    return a.reshape(a.shape[0], -1, a.shape[3]).transpose(2, 0, 1)


def _input_columns(g, a, major):
    """The columns of an input-shaped array as a view of it, in the ``major`` layout, where
    im2col would only copy: a pointwise convolution's channels, or each image as its one
    column when one window covers it (NCHW, or NHWC in pixel order: _pixel_ordered). None
    where im2col is needed."""
    if not _columns_are_input(g):
        return None
    if g.pointwise:
        return major(a, g.layout)
    return major(a.reshape(a.shape[0], -1, 1, 1), "NCHW")


def _columns_are_input(g):
    return g.pointwise or (g.whole_window and g.layout == "NCHW") or _pixel_ordered(g)


# An NCHW pointwise layer whose planes have this many pixels or fewer (ResNet's and
# MobileNetV2's 7 x 7, Inception's 8 x 8) runs as one product over the batch (_planes_gathered).
GATHERED_PLANE_PIXELS = 64


def _planes_gathered(g):
    """Whether an NCHW pointwise layer's products, a plane an image, have so few columns
    (GATHERED_PLANE_PIXELS) that its columns and its output gradient are copied into flat
    workspaces first (_flat_copy) for one product over the batch, its result moved back out:
    BLAS packed the whole filter matrix for each image's 49 columns. ResNet-50's 8 x 512 x 7 x
    7 layer4.conv3 (2048 filters) in one product 2.7 ms against 4.1 a plane an image on two
    Xeon threads, 5.4 against 8.1 on one; the forward with its copies 4.9 -> 3.6 and 9.1 ->
    6.5, the input gradient 4.8 -> 3.5 and 9.4 -> 6.2. At 196 columns (14 x 14 planes) the
    products ran 1.07-1.1x faster, and the forward with its copies 0.77-0.98x the speed of
    the layers' own paths on one thread, 0.49-0.94x on two (MobileNetV2's and ResNet-50's)."""
    return g.layout == "NCHW" and g.pointwise and g.OH * g.OW <= GATHERED_PLANE_PIXELS


def _flat_copy(view, slot=0):
    """A (rows, n, P) channel-major view of an NCHW array copied into a workspace whose rows are
    flat (_planes_moved)."""
    flat = driver.workspace(view.shape, view.dtype, slot)
    _planes_moved(view, flat.reshape(len(flat), -1))
    return flat


def _planes_moved(src, dst):
    """dst (A, B * P), its rows flat, = src (A, B, P), any strides: on the
    threads (layout.embed, a run of P a plane), row a a task. Gathers an NCHW array's
    channel-major view into flat rows, and moves flat rows back out into images."""
    _embedded(src[:, :, None], "NCHW", dst, 1, src.shape[2], 0, 0)


def _pixel_ordered(g):
    """Whether the columns are an NHWC x's images as they lie, their rows in (R, S, C) order: a
    whole-window layer's, one group (several would interleave along the rows). LeNet-5's C5 in
    NHWC: 2.0 ms through im2col's copy, 0.24 as one GEMM on x (two Zen 4 threads)."""
    return g.whole_window and g.layout == "NHWC" and g.groups == 1


def _hwio_matrix(g):
    """Whether an NHWC layer's HWIO filters, flat to (R*S*C/groups, K), are the transpose of
    its weight matrix: its columns' rows in HWIO's (R, S, C) order, a pointwise layer's or a
    pixel-ordered one's. The CPU then reads and writes the filters in place: with a transposing
    copy of its 2048 x 512 filters, im2col's forward of ResNet-50's 8 x 2048 x 7 x 7
    layer4.conv1 ran 8.7 ms on two Zen 4 threads, without 4.7."""
    return g.layout == "NHWC" and (g.pointwise or _pixel_ordered(g))


def _weight_matrix(xp, w, g, view=False):
    """(K, rows of the columns): the filters flat in the columns' row order; with ``view`` (the
    CPU's BLAS reads either unit stride) HWIO filters' transposed view where _hwio_matrix."""
    if _hwio_matrix(g):
        matrix = w.reshape(-1, g.K).T
        return matrix if view else xp.ascontiguousarray(matrix)
    return xp.ascontiguousarray(oihw_view(w, g.layout)).reshape(g.K, -1)


# The CPU: channel-major operands, products on fastconv's threads (driver.matmul).

# Bytes of im2col columns per batch chunk: a chunk's columns stay in a core's L2 between im2col,
# the GEMM and the epilogue.
CPU_WORKSPACE_BYTES = 2 << 20
# Images whose columns pass these many bytes take the forward and the input gradient in tiles
# of whole output rows (kernels/im2col.py's conv2d_tiles and conv2d_backward_input_tiles),
# TILE_BYTES of columns each, multiplied or scattered while in cache. The forward: only where
# the workspace is too large to keep (driver.KEPT_WORKSPACE_BYTES) and so page-faults on every
# call (the U-Net's last 3x3 layer, 300 MB of columns an image: 957 -> 565 ms on two Zen 3
# threads in 1 MiB tiles, 602 ms in 448 KiB ones); smaller products lose more than a copy
# costs (ResNet-18's layer1, 7 MB an image: 14.3 ms whole, 15.4-20 in tiles of 0.25-2 MiB;
# VGG-16's features.2: 351 whole, 387 in tiles). The input gradient: wherever an image's columns
# do not fit a chunk, as col2im of a whole image's columns reads them back from memory (on two
# threads VGG-16's features.2 402 -> 260 ms, the U-Net's 844 -> 623, ResNet-18's layer2 24 ->
# 19), with images enough for the threads, as its tasks are images (a block's windows reach
# into the next block's input rows).
TILED_FORWARD_BYTES = driver.KEPT_WORKSPACE_BYTES
TILED_BACKWARD_BYTES = CPU_WORKSPACE_BYTES
TILE_BYTES = 1 << 20


def _batch_chunks(g, itemsize, copies_operands=False):
    """The batch slices im2col's CPU paths take: chunks whose columns fit CPU_WORKSPACE_BYTES,
    or the whole batch as one where the columns are the images' own pixels, which need no
    workspace. An NHWC batch's images then flatten into one product's rows, its threads sharing
    all of them: MobileNetV2's 8 x 24 x 56 x 56 features.3.expand, a 25088 x 24 x 144 product,
    ran 2.0 ms in chunks of an image on two Zen 4 threads, 1.3 in one (its weight gradient ran
    one image a chunk, on one thread, for MobileNetV2's 8 x 32 x 112 x 112 projection). An NCHW
    batch's products are then one call over all its images' planes, where chunks of three
    images left one of two threads idle a third of the time (MobileNetV2's 192 -> 32
    projection on 8 x 28 x 28: 0.65 -> 0.44 ms on two Xeon threads, 0.91 -> 0.81 on one),
    unless the products copy the NCHW operands that do not flatten (``copies_operands``: the
    weight gradient), a copy the chunks keep to their size."""
    if _columns_are_input(g) and not (copies_operands and g.layout == "NCHW"):
        return [slice(0, g.N)]
    return g.batch_chunks(itemsize, CPU_WORKSPACE_BYTES)


def _tiles_workspace(g, wmat, dtype):
    """A tile of columns for each thread: whole output rows, as many as TILE_BYTES holds (one
    at least)."""
    row_bytes = wmat.shape[1] * g.OW * np.dtype(dtype).itemsize
    rows = max(1, min(g.OH, TILE_BYTES // row_bytes))
    return driver.workspace((numba.get_num_threads(), wmat.shape[1] * rows * g.OW), dtype)


def _in_tiles(g, itemsize, threshold):
    """Whether an ungrouped layer whose columns im2col copies has more than ``threshold`` bytes
    of them an image."""
    return (g.groups == 1 and g.image_columns * itemsize > threshold
            and not _columns_are_input(g))


# Fewer column rows than this take one GEMM per image in the backward weight (see below).
THIN_GEMM_ROWS = 64


def _flat(a):
    """(rows, n*P) view of a (rows, n, P) view, or None where that would need a copy."""
    rows, n, p = a.shape
    if n == 1 or p == 1 or a.strides[1] == p * a.strides[2]:
        return a.reshape(rows, n * p)
    return None


def _flat_or_copy(a):
    """(rows, n*P) of a (rows, n, P) view: a view where one exists, else of a contiguous copy."""
    flat = _flat(a)
    return _flat(np.ascontiguousarray(a)) if flat is None else flat


def _matmul(a, b, out):
    """out's rows of group i = a[i] @ b's rows of group i, for a (groups, M, K) stack and (rows,
    n, P) views b and out: one call over the groups' planes where both flatten (the threads
    share the groups), else a call a group over its images' planes."""
    groups = a.shape[0]
    flat_b, flat_out = _flat(b), _flat(out)
    if flat_b is not None and flat_out is not None:
        driver.matmul(a, _by_group(flat_b, groups), _by_group(flat_out, groups))
        return
    for a_group, b_group, out_group in zip(a, _by_group(b, groups), _by_group(out, groups),
                                           strict=True):
        driver.matmul(a_group, b_group.transpose(1, 0, 2), out_group.transpose(1, 0, 2))


def _by_group(a, groups):
    """(groups, rows/groups, ...) view of ``a``, its first axis split by group (a split axis is
    always a view, so the products write into ``a``): a grouped layer's products as one call
    over the groups' planes, which the threads share. A call a group (each too small to split)
    left ResNeXt-50's layer1.conv2 weight gradient on one thread, 256 calls a backward: 9-10.5
    ms on two Zen 4 threads, as on one; as one call a chunk, 4.5-5.5."""
    return a.reshape((groups, a.shape[0] // groups) + a.shape[1:])


def _matmul_over_pixels(a, b, out, add, groups):
    """out = (with ``add``: out +=) the sum over images of a[:, n] @ b[:, n].T for (rows, n, P)
    views a (gradient) and b (columns), group by group: out's rows of group i from a's and b's
    rows of group i. With one group and few column rows (LeNet's C1: 6 x 25 outputs, n*P = 50k
    long) the output is too small to share between threads, so the reduction is split instead:
    one GEMM per image, the images shared out (driver.matmul_sum). Otherwise one GEMM a group
    over the flattened (n, P) axis, the groups' planes in one call (_by_group); an operand that
    does not flatten (an NCHW gradient) is copied once."""
    if groups == 1 and b.shape[0] < THIN_GEMM_ROWS:
        driver.matmul_sum(a.transpose(1, 0, 2), b.transpose(1, 2, 0), out, add)
    else:
        driver.matmul(_by_group(_flat_or_copy(a), groups),
                      _by_group(_flat_or_copy(b), groups).transpose(0, 2, 1),
                      _by_group(out, groups), add)


def _columns_cpu(g, x):
    """X (C*R*S, n, P) of a batch chunk: a view of x where one exists, else im2col's."""
    view = _input_columns(g, x, _channel_major)
    if view is not None:
        return _flat_copy(view) if _planes_gathered(g) else view
    cols = driver.workspace((g.C * g.R * g.S, x.shape[0], g.OH, g.OW), x.dtype)
    driver.cpu_move(im2col.im2col, cols.size, nchw_view(x, g.layout), cols, g.R, g.S, *g.taps)
    return cols.reshape(cols.shape[0], x.shape[0], -1)


@register("conv2d", "cpu", "im2col")
def conv2d_im2col_cpu(g, x, w, b, activation):
    g, x = _gathered(g, x)
    y = driver.empty(np, g.y_shape, x.dtype)
    wmat, bias = _weight_matrix(np, w, g, view=True), driver.bias(np, b, g.K, x.dtype)
    if _in_tiles(g, x.itemsize, TILED_FORWARD_BYTES):
        driver.cpu_call(im2col.conv2d_tiles, g.flops // 2, nchw_view(x, g.layout), wmat,
                        _channel_major(y, g.layout).transpose(1, 0, 2), bias,
                        CODES[activation], _tiles_workspace(g, wmat, x.dtype), g.OW, g.R,
                        g.S, *g.taps)
        return y
    for batch in _batch_chunks(g, x.itemsize):
        cols, out = _columns_cpu(g, x[batch]), _channel_major(y[batch], g.layout)
        gemm_out = out if _flat(out) is not None or _flat(cols) is None else (
            driver.workspace(out.shape, x.dtype, slot=1))
        _matmul(_by_group(wmat, g.groups), cols, gemm_out)
        if gemm_out is not out or b is not None or activation is not None:
            driver.cpu_move(im2col.bias_activation, out.size, gemm_out, out, bias,
                            CODES[activation])
    return y


@register("conv2d_backward_input", "cpu", "im2col")
@_into_pixels_read
def conv2d_backward_input_im2col_cpu(g, gy, w):
    gx = driver.empty(np, g.x_shape, gy.dtype)
    wmat = _weight_matrix(np, w, g, view=True)
    if _in_tiles(g, gy.itemsize, TILED_BACKWARD_BYTES) and g.N >= numba.get_num_threads():
        driver.cpu_call(im2col.conv2d_backward_input_tiles, g.flops // 2,
                        _channel_major(gy, g.layout).transpose(1, 0, 2), wmat,
                        nchw_view(gx, g.layout), _tiles_workspace(g, wmat, gy.dtype), g.OW,
                        g.R, g.S, *g.taps)
        return gx
    gathered = _planes_gathered(g)
    for batch in _batch_chunks(g, gy.itemsize):
        grad = _channel_major(gy[batch], g.layout)
        grad = _flat_copy(grad, slot=1) if gathered else grad
        # the GEMM writes gx where it can
        gcols = None if gathered else _input_columns(g, gx[batch], _channel_major)
        scattered = gcols is None
        if scattered:
            gcols = driver.workspace((g.C * g.R * g.S,) + grad.shape[1:], gy.dtype)
        _matmul(_by_group(wmat, g.groups).transpose(0, 2, 1), grad, gcols)
        if gathered:  # each image's planes moved out whole, a run of P a plane
            _planes_moved(gcols.transpose(1, 0, 2), gx[batch].reshape(gcols.shape[1], -1))
        elif scattered:
            driver.cpu_move(im2col.col2im, gcols.size,
                            gcols.reshape(gcols.shape[:2] + (g.OH, g.OW)),
                            nchw_view(gx[batch], g.layout), g.R, g.S, *g.taps)
    return gx


@register("conv2d_backward_weight", "cpu", "im2col")
def conv2d_backward_weight_im2col_cpu(g, gy, x):
    g, x = _gathered(g, x)
    gw = driver.empty(np, g.w_shape, gy.dtype) if _hwio_matrix(g) else None
    gw_mat = (driver.empty(np, (g.K, (g.C // g.groups) * g.R * g.S), gy.dtype) if gw is None
              else _weight_matrix(np, gw, g, view=True))  # written in place
    for i, batch in enumerate(_batch_chunks(g, gy.itemsize, copies_operands=True)):
        cols, grad = _columns_cpu(g, x[batch]), _channel_major(gy[batch], g.layout)
        _matmul_over_pixels(grad, cols, gw_mat, i > 0, g.groups)
    return _filters_cpu(gw_mat, g) if gw is None else gw


# A pointwise layer's two gradients share gy's pass where memory bounds them: from this many
# output pixels in the batch (below, the products over a short M split worse than the separate
# ops': MobileNetV2's 8 x 28 x 28, 32 -> 192, ran 0.94-0.97 -> 1.00-1.01 ms paired, 1.72-1.75
# -> 1.87-1.92 on one thread) and up to this many channels in and out together (ResNet-50's
# 512 -> 128 on 8 x 28 x 28, compute-bound, ran 9.4 -> 10.1-10.3 ms paired; 64 -> 64 on 8 x 56 x
# 56 alike; two Zen 4 threads).
PAIRED_PIXELS = 8192
PAIRED_CHANNELS = 256


def _pointwise_pair(g):
    """Why conv2d_backward_im2col_cpu cannot serve the layer, or None."""
    if (g.layout == "NHWC" and g.groups == 1 and g.pointwise and g.C + g.K <= PAIRED_CHANNELS
            and g.N * g.OH * g.OW >= PAIRED_PIXELS):
        return None
    return (f"im2col computes both gradients in one pass only for a 1x1 unpadded stride-1 NHWC "
            f"layer of one group with {PAIRED_CHANNELS} channels in and out or fewer over "
            f"{PAIRED_PIXELS} output pixels or more, not x {g.x_shape} with w {g.w_shape}")


@register("conv2d_backward", "cpu", "im2col", applies=_pointwise_pair)
def conv2d_backward_im2col_cpu(g, gy, x, w):
    """(gx, gw) of a pointwise NHWC layer: gx = gy @ w.T and gw = x.T @ gy, HWIO, the pixels
    the GEMMs' long axis, gy's rows read once for both (driver.matmul_and_sum) where the two
    ops read gy twice: MobileNetV2's features.2.expand (8 x 112 x 112, 16 -> 96 channels, 38.5
    MB of gy) 7.5 -> 5.3 ms on two Zen 4 threads, 12.4 -> 10.2 on one."""
    gx = driver.empty(np, g.x_shape, gy.dtype)
    gw = driver.empty(np, g.w_shape, gy.dtype)
    driver.matmul_and_sum(gy.reshape(-1, g.K), w.reshape(g.C, g.K).T, gx.reshape(-1, g.C),
                          x.reshape(-1, g.C), gw.reshape(g.C, g.K))
    return gx, gw


def _filters(xp, gw_mat, g, hwio=False):
    """The (K, C/groups * R * S) weight gradient (``hwio``: (K, R * S * C), an NHWC layer's
    HWIO filters flat: im2col's where _hwio_matrix) as contiguous filters in the caller's
    layout (the blocked kernels' comes channel-innermost: a strided view would reach PyTorch,
    whose registered shapes promise contiguous strides, and NumPy users as a surprise)."""
    if hwio:
        return xp.ascontiguousarray(gw_mat.T).reshape(g.w_shape)
    gw = gw_mat.reshape(g.K, -1, g.R, g.S)
    return xp.ascontiguousarray(gw if g.layout == "NCHW" else gw.transpose(2, 3, 1, 0))


def _filters_cpu(gw_mat, g):
    """_filters on the CPU, an NHWC layer's HWIO filters moved by layout's taps_outermost
    (NumPy's copy of the transposed view runs along the taps)."""
    if g.layout == "NCHW":
        return _filters(np, gw_mat, g)
    gw = driver.empty(np, g.w_shape, gw_mat.dtype)
    driver.cpu_move(layout_kernels.taps_outermost, gw.size,
                    np.ascontiguousarray(gw_mat).reshape(g.K, -1, g.R * g.S),
                    gw.reshape(g.R * g.S, -1, g.K))
    return gw


# The GPU: image-major operands; fastconv's tiled GEMM ("im2col") or cuBLAS ("cublas").
# ``matmul(a, b, c, bias, act)`` computes c = act(bias + a @ b) for (planes, rows, columns)
# operands; a left operand with one plane is shared by every plane.

# Bytes of im2col columns per batch chunk: bounds the workspace of a large batch.
GPU_WORKSPACE_BYTES = 256 << 20
_IM2COL_KERNELS = ("im2col_cuda.im2col", "im2col_cuda.col2im")


def _gemm(a, b, c, bias, act):
    gemm_cuda.launch_gemm(a, b, c, driver.bias(gpu.xp, bias, c.shape[1], c.dtype), act,
                          stream=gpu.stream())


def _cublas(a, b, c, bias, act):
    gpu.xp.matmul(a, b, out=c)
    if bias is not None or act != CODES[None]:
        gemm_cuda.launch_bias_activation(c, driver.bias(gpu.xp, bias, c.shape[1], c.dtype), act,
                                         stream=gpu.stream())


def gemm(a, b, out=None):
    """``a @ b`` by fastconv's tiled GEMM kernel, for (Z, M, K) and (Z, K, N) GPU arrays of
    one dtype (any strides), into ``out`` (Z, M, N) when given."""
    if out is None:
        out = driver.empty(gpu.xp, (a.shape[0], a.shape[1], b.shape[2]), a.dtype)
    _gemm(a, b, out, None, CODES[None])
    return out


def _columns_cuda(g, x):
    """X (n, C*R*S, P) of a batch chunk: a view of x where one exists, else im2col's."""
    view = _input_columns(g, x, image_major)
    if view is not None:
        return view
    cols = driver.empty(gpu.xp, (x.shape[0], g.C * g.R * g.S, g.OH, g.OW), x.dtype)
    im2col_cuda.launch_im2col(nchw_view(x, g.layout), cols, g.R, g.S, *g.taps,
                              stream=gpu.stream())
    return cols.reshape(cols.shape[0], cols.shape[1], -1)


def _batched(*planes):
    """Per-image matrices (n, rows, P) as the GEMM takes them: as they are or, with one pixel
    per image (P = 1: LeNet's C5), the images folded into one matrix (1, rows, n), so one GEMM
    runs n columns instead of n GEMMs of one column, each filling 1/64 of a tile."""
    if planes[0].shape[2] == 1:
        return [a.transpose(2, 1, 0) for a in planes]
    return list(planes)


def _im2col_cuda(algo, matmul, gemm_kernels):
    """Register the GPU's im2col implementations of the three conv ops around ``matmul``."""
    launches = _IM2COL_KERNELS + gemm_kernels

    @register("conv2d", "cuda", algo, launches)
    def conv2d_im2col_cuda(g, x, w, b, activation):
        y = driver.empty(gpu.xp, g.y_shape, x.dtype)
        wmat, act = _weight_matrix(gpu.xp, w, g), CODES[activation]
        for batch in g.batch_chunks(x.itemsize, GPU_WORKSPACE_BYTES):
            cols, out = _batched(_columns_cuda(g, x[batch]), image_major(y[batch], g.layout))
            for rows, ks in g.group_slices():
                matmul(wmat[None, ks], cols[:, rows], out[:, ks],
                       None if b is None else b[ks], act)
        return y

    @register("conv2d_backward_input", "cuda", algo, launches)
    def conv2d_backward_input_im2col_cuda(g, gy, w):
        gx = driver.empty(gpu.xp, g.x_shape, gy.dtype)
        wmat = _weight_matrix(gpu.xp, w, g)
        for batch in g.batch_chunks(gy.itemsize, GPU_WORKSPACE_BYTES):
            grad = image_major(gy[batch], g.layout)
            gcols = _input_columns(g, gx[batch], image_major)  # the GEMM writes gx where it can
            scattered = gcols is None
            if scattered:
                gcols = driver.empty(gpu.xp, (grad.shape[0], g.C * g.R * g.S, g.OH * g.OW),
                                     gy.dtype)
            grad_m, gcols_m = _batched(grad, gcols)
            for rows, ks in g.group_slices():
                matmul(wmat[ks].T[None], grad_m[:, ks], gcols_m[:, rows], None, CODES[None])
            if scattered:
                im2col_cuda.launch_col2im(gcols.reshape(gcols.shape[:2] + (g.OH, g.OW)),
                                          nchw_view(gx[batch], g.layout), g.R, g.S, *g.taps,
                                          stream=gpu.stream())
        return gx

    @register("conv2d_backward_weight", "cuda", algo, launches)
    def conv2d_backward_weight_im2col_cuda(g, gy, x):
        gw_mat = driver.empty(gpu.xp, (g.K, (g.C // g.groups) * g.R * g.S), gy.dtype)
        for chunk, batch in enumerate(g.batch_chunks(gy.itemsize, GPU_WORKSPACE_BYTES)):
            cols, grad = _batched(_columns_cuda(g, x[batch]), image_major(gy[batch], g.layout))
            for rows, ks in g.group_slices():
                # One product per image, summed (the GEMMs run in parallel), or one of all
                # the chunk's images, which the first chunk writes straight into gw.
                whole = chunk == 0 and grad.shape[0] == 1
                products = (gw_mat[None, ks] if whole else
                            driver.empty(gpu.xp, (grad.shape[0],) + gw_mat[ks].shape, gy.dtype))
                matmul(grad[:, ks], cols[:, rows].transpose(0, 2, 1), products, None,
                       CODES[None])
                if chunk == 0 and not whole:
                    products.sum(axis=0, out=gw_mat[ks])
                elif chunk > 0:
                    gw_mat[ks] += products.sum(axis=0)
        return _filters(gpu.xp, gw_mat, g, _hwio_matrix(g))


_im2col_cuda("im2col", _gemm, ("gemm_cuda.gemm",))
if not cuda_simulated():  # cuBLAS needs a real GPU
    _im2col_cuda("cublas", _cublas, ("gemm_cuda.bias_activation",))


# --- the bias gradient --------------------------------------------------------------------------

# (gz, gb): the gradient before the fused activation (gy itself without one) and its channel
# sums, in one pass over gy.

@register("conv2d_backward_bias", "cpu", "numba")
def conv2d_backward_bias_cpu(gy, y, activation, layout):
    gz, gb = _bias_gradients(np, gy, activation, layout)
    gy3, y3, gz3 = (image_major(a, layout) for a in (gy, y, gz))
    driver.cpu_move(bias_kernels.conv2d_backward_bias, gy.size, gy3, y3, CODES[activation],
                    gz3, gb)
    return gz, gb


@register("conv2d_backward_bias", "cuda", "numba", launches=("bias_cuda.conv2d_backward_bias",))
def conv2d_backward_bias_cuda(gy, y, activation, layout):
    gz, gb = _bias_gradients(gpu.xp, gy, activation, layout)
    gy3, y3, gz3 = (image_major(a, layout) for a in (gy, y, gz))
    bias_cuda.launch_conv2d_backward_bias(gy3, y3, CODES[activation], gz3, gb,
                                          stream=gpu.stream())
    return gz, gb


def _bias_gradients(xp, gy, activation, layout):
    """The arrays the bias gradient kernels write: gz (gy itself, unwritten, without an
    activation) and gb."""
    gz = gy if activation is None else driver.empty(xp, gy.shape, gy.dtype)
    return gz, driver.empty(xp, gy.shape[1] if layout == "NCHW" else gy.shape[3], gy.dtype)


# --- a bias and an activation on a computed output (the transposed convolution's epilogue) ------

@register("bias_activation", "cpu", "numba")
def bias_activation_cpu(y, b, activation, layout):
    """y = activation(y + b), in place on the caller's own array."""
    planes = _channel_major(y, layout)
    driver.cpu_move(im2col.bias_activation, y.size, planes, planes,
                    driver.bias(np, b, planes.shape[0], y.dtype), CODES[activation])
    return y


@register("bias_activation", "cuda", "numba", launches=("gemm_cuda.bias_activation",))
def bias_activation_cuda(y, b, activation, layout):
    planes = image_major(y, layout)
    gemm_cuda.launch_bias_activation(planes, driver.bias(gpu.xp, b, planes.shape[1], y.dtype),
                                     CODES[activation], stream=gpu.stream())
    return y


# --- algo="auto" without autotuning: one rule per device ----------------------------------------

INTEL = int(runtime.intel_cpu())

# What a fitted rule may test of a call (benchmarks/fit_dispatch.py fits the CPU's): the layer,
# the threads the kernels run on (BLAS's GEMMs gain more from a second thread than the blocked
# kernels do), the register tiles' float32 lanes (AVX2's 8 or AVX-512's 16: a layer of 8
# channels a group fills AVX2's tiles and half of AVX-512's) and whether the CPU is Intel's
# (on the first Xeon measured the blocked kernels took up to 2.2x im2col's time on ResNet-50's
# 1x1 layers, which they run faster on the AMD machines: benchmarks/results/
# cpu-nhwc-depthwise-borrowed.md; which of the machines' differences decides is not measured).
FEATURES = {
    "taps": lambda g: (g.C // g.groups) * g.R * g.S,  # multiply-adds per output value
    "channels": lambda g: g.K // g.groups,  # output channels a group
    "in_channels": lambda g: g.C // g.groups,
    "window": lambda g: g.R * g.S,
    "pixels": lambda g: g.OH * g.OW,
    "outputs": lambda g: g.N * g.OH * g.OW,  # the batch's output pixels: a weight gradient's sum
    "stride": lambda g: g.stride[0] * g.stride[1],
    "groups": lambda g: g.groups,
    "threads": lambda g: numba.get_num_threads(),
    "lanes": lambda g: VECTOR_LANES,
    "intel": lambda g: INTEL,
    "plain_3x3": lambda g: int(g.plain_3x3),  # 1 where algo="winograd" serves the layer
}


def walk(tree, feature, serves=lambda algo: True):
    """The algo a fitted tree picks: a node is an algo's name, a list of them (the first that
    ``serves`` the layer: an algo for some layers only, then one for all) or {"feature",
    "threshold", "below", "at_least"}; ``feature(name)`` gives the layer's value of a
    feature."""
    while isinstance(tree, dict):
        tree = tree["at_least"] if feature(tree["feature"]) >= tree["threshold"] else (
            tree["below"])
    return tree if isinstance(tree, str) else next(a for a in tree if serves(a))


@heuristic("cpu")
def choose_cpu(op, g):
    """The rule fitted to the layer suite's measurements: a small decision tree per op over
    :data:`FEATURES` (cpu_rule.py says where it came from and what it costs against the
    fastest algorithm of each measured layer); before it, a structural choice: a depthwise
    layer with one output channel a group (groups == C == K: MobileNet's) takes "depthwise"
    for all three ops, which beat the tree's choice on every MobileNetV2 depthwise layer on one
    and two threads (1.09-5.6x; benchmarks/results/cpu-depthwise-planes.md); an NHWC layer of
    2, 4 or 8 channels a group takes "grouped" for each op it serves (the input gradient at
    stride 1, the weight gradient of windows 1 or 3 wide), 1.1-3.3x the speed of the rule's
    "blocked" on ResNeXt's layers and others on one and two Xeon threads
    (benchmarks/results/cpu-grouped-nhwc.md). After it, one for
    layout: the suite's layers are NCHW, and the direct kernels' register tiles serve NCHW
    only (_tiled), im2col's grouped GEMMs NCHW's contiguous planes, so an NHWC layer the rule
    sends to "direct", or a grouped one to "im2col", takes "blocked", which reads NHWC through
    its own images, as does the forward and input gradient of a wide one it sends to "im2col"
    (_columns_transposed). On the suite's layers the rule sends there in NHWC, direct ran 7-20x
    slower (LeNet-5's C1 forward 21.7 ms against 1.3, PyTorch 1.9; ResNeXt's 4-channel groups
    44 against 6.1), grouped im2col 3.4-4.5x (ResNeXt's weight gradient 46 against 13.8), two
    Zen 4 threads (benchmarks/results/cpu-nhwc.md). And a 1x1 unpadded NHWC layer of one
    group takes "im2col" for all three ops: one GEMM over x's pixels as they lie (a strided
    one's gathered), its filters read in place, where the rule sends many
    to "blocked": its weight gradient 1.1-2.3x faster on MobileNetV2's and ResNet-50's 1x1
    layers, 1.1-1.6x on ResNet's strided ones (one and two threads); forward and input
    gradient alike or faster on each of ResNet-50's and MobileNetV2's 1x1 layers timed, the
    input gradient of ResNet-50's layer4.conv1 1.9x. But for a weight gradient
    _pointwise_lanes serves: "blocked", reading both operands as they lie. An NCHW 1x1 layer
    of small planes (_planes_gathered) takes "im2col" for all three ops too: one product over
    the batch's gathered columns, which its rows predate. Against the rule's "blocked" on the
    suite's seven (ResNet-50's layer4.conv1 and conv3, MobileNetV2's 7 x 7 projections and
    expansions), one and two Xeon threads: forward 0.92-1.30x (1.08x geomean; ResNet-50's
    1.17-1.30x), backward 1.10-1.45x (benchmarks/results/cpu-pointwise-nchw-xeon.md)."""
    if g.groups == g.C == g.K:
        return "depthwise"
    if refusal(op, "cpu", "grouped", g) is None:
        return "grouped"
    if _planes_gathered(g):
        return "im2col"
    algo = walk(CPU_RULE[op], lambda name: FEATURES[name](g),
                lambda algo: refusal(op, "cpu", algo, g) is None)
    if g.layout != "NHWC":
        return algo
    if g.groups == 1 and (g.pointwise or _strided_pointwise(g) is not None):
        return "blocked" if op == "conv2d_backward_weight" and _pointwise_lanes(g) else "im2col"
    if algo == "direct" or algo == "im2col" and (g.groups > 1 or _columns_transposed(op, g)):
        return "blocked"
    return algo


# An NHWC layer of this many input channels or more takes "blocked" for its forward and input
# gradient where the rule says "im2col", unless its window covers the image (_columns_transposed).
NHWC_BLOCKED_MIN_CHANNELS = 64


def _columns_transposed(op, g):
    """Whether the rule's "im2col" would spend on an NHWC layer's channel-major columns what
    "blocked" saves: its forward or input gradient of NHWC_BLOCKED_MIN_CHANNELS input channels
    or more, its columns not x as it lies (_pixel_ordered). im2col gathers each tap's runs of C
    channels into rows of pixels, a transpose, where blocked moves whole vectors of them. On
    the suite's layers the rule sends there in NHWC (two Zen 3 threads, 2026-12-07): ResNet's
    64- to 512-channel strided 3x3 layers and Inception's 7 x 1 / 1 x 7 ones ran 1.0-1.9x
    faster through blocked, forward and input gradient, one thread and two (ResNet-18's
    layer2.0.conv1 forward 16.9 -> 13.7 ms, ResNet-50's layer4.0.conv2 input gradient 46.5 ->
    26.0); the 3-channel stems' input gradients 1.3-2.8x slower (VGG-16's, ENet's, ResNet-18's
    7 x 7), which stay im2col's, as do the weight gradients, 0.6-2.1x either way
    (benchmarks/results/other-layers.md, the Zen 3's section)."""
    return (op != "conv2d_backward_weight" and g.C >= NHWC_BLOCKED_MIN_CHANNELS
            and not _pixel_ordered(g))


# The GPU's rule is still set by hand (no GPU measurements yet): a GEMM pays for im2col's copies
# when each output reads at least GEMM_MIN_TAPS taps and each group has at least
# GEMM_MIN_CHANNELS output channels; below either, the GPU's GEMM runs far from its peak.
GEMM_MIN_TAPS = 64
GEMM_MIN_CHANNELS = 16


@heuristic("cuda")
def choose_cuda(op, g):
    """The direct kernels for a thin GEMM, a GEMM otherwise (cuBLAS's on a real GPU), for all
    three ops. Not yet measured on a GPU: autotuning (keyed by the GPU's name) chooses there."""
    if FEATURES["taps"](g) < GEMM_MIN_TAPS or FEATURES["channels"](g) < GEMM_MIN_CHANNELS:
        return "direct"
    return "im2col" if cuda_simulated() else "cublas"
