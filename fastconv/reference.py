"""Pure NumPy baselines of every op, registered as algo "reference".

They are the float64 oracle of the tests and the baseline of the benchmarks, so they favour the
plainest formulation over speed: pad, take a strided window view (sliding_window_view), contract
with einsum/tensordot. They work in NCHW; an NHWC call is transposed on the way in and out.
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .dispatch import register
from .geometry import nchw_view, oihw_view


def _from_nchw(a, layout):
    return a if layout == "NCHW" else np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def _pad(x, padding, value=0.0):
    top, bottom, left, right = padding
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=value)


def _windows(xp, kernel, stride, dilation, out_hw):
    """(N, C, OH, OW, R, S) view of the windows of a padded NCHW array."""
    (r, s), (sh, sw), (dh, dw), (oh, ow) = kernel, stride, dilation, out_hw
    view = sliding_window_view(xp, ((r - 1) * dh + 1, (s - 1) * dw + 1), axis=(2, 3))
    return view[:, :, : (oh - 1) * sh + 1 : sh, : (ow - 1) * sw + 1 : sw, ::dh, ::dw]


def _activate(y, activation):
    if activation == "relu":
        return np.maximum(y, 0)
    if activation == "tanh":
        return np.tanh(y)
    if activation == "sigmoid":
        return 0.5 * (1 + np.tanh(0.5 * y))
    return y


def _group_slices(g):
    cg, kg = g.C // g.groups, g.K // g.groups
    return [(slice(i * cg, (i + 1) * cg), slice(i * kg, (i + 1) * kg)) for i in range(g.groups)]


def _crop(gxp, g):
    """The input-sized part of a padded NCHW gradient, in the caller's layout."""
    top, _, left, _ = g.padding
    return _from_nchw(gxp[:, :, top : top + g.H, left : left + g.W], g.layout)


@register("conv2d", "cpu", "reference")
def conv2d(g, x, w, b, activation):
    x, w = nchw_view(x, g.layout), oihw_view(w, g.layout)
    win = _windows(_pad(x, g.padding), (g.R, g.S), g.stride, g.dilation, (g.OH, g.OW))
    y = np.empty((g.N, g.K, g.OH, g.OW), np.result_type(x, w))
    for cs, ks in _group_slices(g):
        y[:, ks] = np.einsum("nchwrs,kcrs->nkhw", win[:, cs], w[ks], optimize=True)
    if b is not None:
        y += b[:, None, None]
    return _from_nchw(_activate(y, activation), g.layout)


@register("conv2d_backward_input", "cpu", "reference")
def conv2d_backward_input(g, gy, w):
    """A transposed convolution: each kernel tap adds its contribution to a strided slice."""
    gy, w = nchw_view(gy, g.layout), oihw_view(w, g.layout)
    top, bottom, left, right = g.padding
    gxp = np.zeros((g.N, g.C, g.H + top + bottom, g.W + left + right), gy.dtype)
    (sh, sw), (dh, dw) = g.stride, g.dilation
    for cs, ks in _group_slices(g):
        for r in range(g.R):
            for s in range(g.S):
                rows = slice(r * dh, r * dh + (g.OH - 1) * sh + 1, sh)
                cols = slice(s * dw, s * dw + (g.OW - 1) * sw + 1, sw)
                gxp[:, cs, rows, cols] += np.einsum("nkhw,kc->nchw", gy[:, ks], w[ks, :, r, s])
    return _crop(gxp, g)


@register("conv2d_backward_weight", "cpu", "reference")
def conv2d_backward_weight(g, gy, x):
    gy, x = nchw_view(gy, g.layout), nchw_view(x, g.layout)
    win = _windows(_pad(x, g.padding), (g.R, g.S), g.stride, g.dilation, (g.OH, g.OW))
    gw = np.empty((g.K, g.C // g.groups, g.R, g.S), gy.dtype)
    for cs, ks in _group_slices(g):
        gw[ks] = np.tensordot(gy[:, ks], win[:, cs], axes=([0, 2, 3], [0, 2, 3]))
    return gw if g.layout == "NCHW" else np.ascontiguousarray(gw.transpose(2, 3, 1, 0))


@register("conv2d_backward_bias", "cpu", "reference")
def conv2d_backward_bias(gy, layout):
    return gy.sum(axis=(0, 2, 3) if layout == "NCHW" else (0, 1, 2))


def _pool_extent(p):
    """Padding (top, bottom, left, right) that fits every window, ceil_mode's last one too."""
    top, bottom, left, right = p.padding
    bottom = max(bottom, (p.OH - 1) * p.stride[0] + p.kernel[0] - p.H - top)
    right = max(right, (p.OW - 1) * p.stride[1] + p.kernel[1] - p.W - left)
    return top, bottom, left, right


def _pool_windows(x, p, value):
    return _windows(_pad(x, _pool_extent(p), value), p.kernel, p.stride, (1, 1), (p.OH, p.OW))


def _pool_zeros(p, dtype):
    top, bottom, left, right = _pool_extent(p)
    return np.zeros((p.N, p.C, top + p.H + bottom, left + p.W + right), dtype)


@register("max_pool2d", "cpu", "reference")
def max_pool2d(p, x):
    x = nchw_view(x, p.layout)
    return _from_nchw(_pool_windows(x, p, -np.inf).max(axis=(4, 5)), p.layout)


@register("max_pool2d_backward", "cpu", "reference")
def max_pool2d_backward(p, gy, x):
    """Each gradient goes to its window's first maximum in row-major scan order."""
    gy, x = nchw_view(gy, p.layout), nchw_view(x, p.layout)
    win = _pool_windows(x, p, -np.inf)
    first = win.reshape(win.shape[:4] + (-1,)).argmax(axis=-1)
    n, c, oh, ow = np.indices(first.shape, sparse=True)
    rows = oh * p.stride[0] + first // p.kernel[1]
    cols = ow * p.stride[1] + first % p.kernel[1]
    gxp = _pool_zeros(p, gy.dtype)
    np.add.at(gxp, (n, c, rows, cols), gy)
    return _crop(gxp, p)


def _avg_divisor(p, dtype):
    """Cells each window divides by: the window clipped to the padded input, or to the input."""
    top, bottom, left, right = p.padding
    mask = _pad(np.zeros((1, 1, p.H, p.W), dtype), _pool_extent(p))
    if p.count_padding:
        mask[:, :, : top + p.H + bottom, : left + p.W + right] = 1
    else:
        mask[:, :, top : top + p.H, left : left + p.W] = 1
    return _windows(mask, p.kernel, p.stride, (1, 1), (p.OH, p.OW)).sum(axis=(4, 5))


@register("avg_pool2d", "cpu", "reference")
def avg_pool2d(p, x):
    x = nchw_view(x, p.layout)
    total = _pool_windows(x, p, 0.0).sum(axis=(4, 5))
    return _from_nchw(total / _avg_divisor(p, x.dtype), p.layout)


@register("avg_pool2d_backward", "cpu", "reference")
def avg_pool2d_backward(p, gy):
    """Each window hands gy / divisor to every cell it covers; padded cells are cropped away."""
    gy = nchw_view(gy, p.layout)
    share = gy / _avg_divisor(p, gy.dtype)
    gxp = _pool_zeros(p, gy.dtype)
    (kh, kw), (sh, sw) = p.kernel, p.stride
    for i in range(kh):
        for j in range(kw):
            gxp[:, :, i : i + (p.OH - 1) * sh + 1 : sh, j : j + (p.OW - 1) * sw + 1 : sw] += share
    return _crop(gxp, p)
