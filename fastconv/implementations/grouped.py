"""The grouped convolution of a few channels a group on the CPU (conv2d's algo "grouped",
registered in conv2d.py): NHWC layers of 2, 4 or 8 input and as many output channels a group
(ResNeXt's 32 groups of 4), whole groups to a vector, on kernels/conv_grouped.py's rotated
accumulators, x and y read and written where they lie.

The forward lays its filters out rotated (:func:`rotated_filters`); the input gradient of a
stride-1 layer is the same correlation of the output gradient with each group's filters
transposed and flipped (:func:`_transposed_groups`), its padding the window's reach less the
forward's.
"""

import numpy as np

from ..geometry import oihw_view
from ..kernels import conv_grouped as kernels
from ..kernels.activation import CODES
from . import driver

VECTOR = kernels.VECTOR


def _rotations(g):
    """The channels a group where both sides have as many, else 0."""
    return g.C // g.groups if g.C // g.groups == g.K // g.groups else 0


def applies(g):
    """None for an NHWC layer of 2, 4 or 8 input and as many output channels a group, its
    channels whole vectors; else why algo="grouped" cannot serve it."""
    d = _rotations(g)
    if g.layout == "NHWC" and d in kernels.ROTATIONS and VECTOR % d == 0 and g.C % VECTOR == 0:
        return None
    return (f"algo='grouped' computes NHWC layers of {', '.join(map(str, kernels.ROTATIONS))} "
            f"input and as many output channels a group on whole vectors of {VECTOR} channels, "
            f"not this one's groups={g.groups} of x {g.x_shape}, w {g.w_shape} ({g.layout})")


def applies_backward_input(g):
    """:func:`applies`, at stride 1 (the input gradient as a correlation of the output
    gradient)."""
    why = applies(g)
    if why is None and g.stride != (1, 1):
        return (f"algo='grouped' computes the input gradient of stride-1 layers, not of this "
                f"one's stride {g.stride}: x {g.x_shape}, w {g.w_shape}")
    return why


def rotated_filters(w, d, dtype):
    """(d * R * S * K / VECTOR, VECTOR): OIHW filters ``w`` (K, d, R, S) of groups of d laid out
    for kernels.grouped_nhwc_rows, rotation r's tap (i, j)'s block b at row (r * R * S + i * S
    + j) * K / VECTOR + b, its lane v w[b * VECTOR + v - v % d + (v % d + r) % d, v % d, i,
    j]."""
    k_, _, r_, s_ = w.shape
    lanes = np.arange(VECTOR)
    base, channel = lanes - lanes % d, lanes % d
    blocks = np.arange(k_ // VECTOR)[:, None] * VECTOR
    out = np.empty((d, r_ * s_, k_ // VECTOR, VECTOR), dtype)
    for r in range(d):
        taps = w[blocks + base + (channel + r) % d, channel]  # (blocks, VECTOR, R, S)
        out[r] = taps.reshape(k_ // VECTOR, VECTOR, r_ * s_).transpose(2, 0, 1)
    return out.reshape(-1, VECTOR)


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
