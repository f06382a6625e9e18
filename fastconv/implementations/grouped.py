"""The grouped convolution of a few channels a group on the CPU (conv2d's algo "grouped",
registered in conv2d.py): NHWC layers of 2, 4 or 8 input and as many output channels a group
(ResNeXt's 32 groups of 4), whole groups to a vector, on kernels/conv_grouped.py's rotated
accumulators, x and y read and written where they lie.

The forward lays its filters out rotated (:func:`rotated_filters`); the input gradient of a
stride-1 layer is the same correlation of the output gradient with each group's filters
transposed and flipped (:func:`_transposed_groups`), its padding the window's reach less the
forward's; the weight gradient of a window 1 or 3 wide sums each image's products in that
rotated layout, the images added in float64 and put back in the filters' places.
"""

import numpy as np

from ..geometry import oihw_view
from ..kernels import conv_grouped as kernels
from ..kernels.activation import CODES
from . import driver

VECTOR = kernels.VECTOR
# The channels a group "grouped" takes: the kernel's widths that leave two groups or more to a
# vector. A group as wide as the vector (AVX2's 8 lanes) is a dense product a vector, the case
# blocked's channel-block tiles run whole: on a Zen 3, ResNeXt-50's NHWC layer2.conv2 (32
# groups of 8) ran its forward 4.2-6.3x and its input gradient 2.7x faster there
# (benchmarks/results/other-layers.md, the Zen 3's section).
SERVED = tuple(d for d in kernels.ROTATIONS if VECTOR % d == 0 and d < VECTOR)


def _rotations(g):
    """The channels a group where both sides have as many, else 0."""
    return g.C // g.groups if g.C // g.groups == g.K // g.groups else 0


def applies(g):
    """None for an NHWC layer of d input and as many output channels a group, d one of
    :data:`SERVED`, its channels whole vectors; else why algo="grouped" cannot serve it."""
    d = _rotations(g)
    if g.layout == "NHWC" and d in SERVED and g.C % VECTOR == 0:
        return None
    return (f"algo='grouped' computes NHWC layers of {', '.join(map(str, SERVED))} "
            f"input and as many output channels a group on whole vectors of {VECTOR} channels, "
            f"not this one's groups={g.groups} of x {g.x_shape}, w {g.w_shape} ({g.layout})")


def applies_backward_weight(g):
    """:func:`applies`, for windows WEIGHT_WIDTHS wide (the weight gradient's accumulators a
    window row a compile-time count)."""
    why = applies(g)
    if why is None and g.S not in kernels.WEIGHT_WIDTHS:
        return (f"algo='grouped' computes the weight gradient of windows "
                f"{' or '.join(map(str, kernels.WEIGHT_WIDTHS))} wide, not this one's {g.S}: x "
                f"{g.x_shape}, w {g.w_shape}")
    return why


def applies_backward_input(g):
    """:func:`applies`, at stride 1 (the input gradient as a correlation of the output
    gradient)."""
    why = applies(g)
    if why is None and g.stride != (1, 1):
        return (f"algo='grouped' computes the input gradient of stride-1 layers, not of this "
                f"one's stride {g.stride}: x {g.x_shape}, w {g.w_shape}")
    return why


def _rotation_places(k_, d):
    """(k, c): the filter w[k[r, b, v], c[v]] that rotation r's block b holds in lane v, k (d,
    K / VECTOR, VECTOR) and c (VECTOR,): output channel v - v % d + (v % d + r) % d of block b,
    input channel v % d of its group."""
    lanes = np.arange(VECTOR)
    base, channel = lanes - lanes % d, lanes % d
    blocks = np.arange(k_ // VECTOR)[:, None] * VECTOR
    return np.stack([blocks + base + (channel + r) % d for r in range(d)]), channel


def rotated_filters(w, d, dtype):
    """(d * R * S * K / VECTOR, VECTOR): OIHW filters ``w`` (K, d, R, S) of groups of d laid out
    for kernels.grouped_nhwc_rows, rotation r's tap (i, j)'s block b at row (r * R * S + i * S
    + j) * K / VECTOR + b (:func:`_rotation_places`)."""
    k_, _, r_, s_ = w.shape
    k, channel = _rotation_places(k_, d)
    taps = w[k, channel].reshape(d, k_ // VECTOR, VECTOR, r_ * s_)
    return np.ascontiguousarray(taps.transpose(0, 3, 1, 2), dtype).reshape(-1, VECTOR)


def _transposed_groups(w, d):
    """The OIHW filters (C, d, R, S) whose correlation at stride 1 is the input gradient of
    ``w``'s: each group's (d x d) channel matrix transposed, its window flipped."""
    k_, _, r_, s_ = w.shape
    grouped = w.reshape(k_ // d, d, d, r_, s_).transpose(0, 2, 1, 3, 4)
    return grouped[:, :, :, ::-1, ::-1].reshape(k_, d, r_, s_)


def _correlate(a, h_, w_, filters, bias, out, oh_, ow_, g, top, left, d, activation):
    """kernels.grouped_nhwc_rows of NHWC ``a`` (N, h_, w_, C) into ``out`` (N, oh_, ow_, C)."""
    driver.cpu_call(kernels.grouped_nhwc_rows, g.flops // 2, a.reshape(len(a), -1), h_, w_,
                    filters, bias, out.reshape(len(out), -1), oh_, ow_, g.R, g.S, top, left,
                    g.stride, g.dilation, d, CODES[activation])
    return out


def forward(g, x, w, b, activation):
    d = _rotations(g)
    filters = rotated_filters(oihw_view(w, g.layout), d, x.dtype)
    y = driver.empty(np, g.y_shape, x.dtype)
    top, _, left, _ = g.padding
    return _correlate(x, g.H, g.W, filters, driver.bias(np, b, g.K, x.dtype), y, g.OH, g.OW, g,
                      top, left, d, activation)


def backward_input(g, gy, w):
    d = _rotations(g)
    filters = rotated_filters(_transposed_groups(oihw_view(w, g.layout), d), d, gy.dtype)
    gx = driver.empty(np, g.x_shape, gy.dtype)
    top, _, left, _ = g.padding
    reach_rows, reach_columns = (g.R - 1) * g.dilation[0], (g.S - 1) * g.dilation[1]
    return _correlate(gy, g.OH, g.OW, filters, driver.bias(np, None, g.C, gy.dtype), gx, g.H,
                      g.W, g, reach_rows - top, reach_columns - left, d, None)


def backward_weight(g, gy, x):
    """Each image's and block's rotated sums (kernels.grouped_nhwc_weight_rows), added over the
    images in float64 and put back in the filters' places (:func:`_rotation_places`)."""
    d, blocks = _rotations(g), g.C // VECTOR
    sums = driver.empty(np, (g.N * blocks, d * g.R * g.S, VECTOR), gy.dtype)
    top, _, left, _ = g.padding
    driver.cpu_call(kernels.grouped_nhwc_weight_rows, g.flops // 2, x.reshape(g.N, -1), g.H,
                    g.W, gy.reshape(g.N, -1), g.OH, g.OW, g.R, g.S, top, left, g.stride,
                    g.dilation, d, sums)
    total = sums.reshape(g.N, blocks, d, g.R * g.S, VECTOR).sum(axis=0, dtype=np.float64)
    gw = driver.empty(np, (g.K, d, g.R * g.S), gy.dtype)  # every cell one rotation's
    k, channel = _rotation_places(g.K, d)
    gw[k, channel] = total.transpose(1, 0, 3, 2)
    return np.ascontiguousarray(gw.reshape(g.K, d, g.R, g.S).transpose(2, 3, 1, 0))
