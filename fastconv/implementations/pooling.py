"""max_pool2d, avg_pool2d and adaptive_avg_pool2d, forward and backward: every implementation
on every device.

Each takes the resolved geometry ``p`` (:class:`fastconv.geometry.PoolGeometry`, or
AdaptivePoolGeometry) and contiguous
arrays, and returns a new array. Kernels index NCHW; an NHWC array is handed over as a
transposed view. "reference" is NumPy (the float64 oracle and the benchmarks' baseline).
"""

import math

import numpy as np

from ..geometry import nchw_view
from ..kernels import pool
from ..registry import register
from . import driver
from .driver import lazy

pool_cuda = lazy("fastconv.kernels.pool_cuda")
gpu = driver.gpu


# --- reference ------------------------------------------------------------------------------------

def _extent(p):
    """Padding (top, bottom, left, right) that fits every window, ceil_mode's last one too."""
    top, bottom, left, right = p.padding
    bottom = max(bottom, (p.OH - 1) * p.stride[0] + p.extent[0] - p.H - top)
    right = max(right, (p.OW - 1) * p.stride[1] + p.extent[1] - p.W - left)
    return top, bottom, left, right


def _windows(x, p, value):
    return driver.windows(driver.pad(x, _extent(p), value), p.kernel, p.stride, p.dilation,
                          (p.OH, p.OW))


def _padded_zeros(p, dtype):
    top, bottom, left, right = _extent(p)
    return np.zeros((p.N, p.C, top + p.H + bottom, left + p.W + right), dtype)


def _divisors(p, dtype):
    """What each window divides by: divisor_override, or its cells clipped to the padded input,
    or to the input."""
    if p.divisor:
        return np.full((p.OH, p.OW), p.divisor, dtype)
    top, bottom, left, right = p.padding
    mask = driver.pad(np.zeros((1, 1, p.H, p.W), dtype), _extent(p))
    if p.count_padding:
        mask[:, :, : top + p.H + bottom, : left + p.W + right] = 1
    else:
        mask[:, :, top : top + p.H, left : left + p.W] = 1
    return driver.windows(mask, p.kernel, p.stride, (1, 1), (p.OH, p.OW)).sum(axis=(4, 5))


def _first_maxima(p, x):
    """(h, w) in the padded plane of each window's first maximum in row-major scan order."""
    win = _windows(x, p, -np.inf)
    first = win.reshape(win.shape[:4] + (-1,)).argmax(axis=-1)
    _, _, oh, ow = np.indices(first.shape, sparse=True)
    return (oh * p.stride[0] + first // p.kernel[1] * p.dilation[0],
            ow * p.stride[1] + first % p.kernel[1] * p.dilation[1])


@register("max_pool2d", "cpu", "reference")
def max_pool2d_reference(p, x, with_indices=False):
    x = nchw_view(x, p.layout)
    y = driver.from_nchw(_windows(x, p, -np.inf).max(axis=(4, 5)), p.layout)
    if not with_indices:
        return y
    rows, cols = _first_maxima(p, x)
    top, _, left, _ = p.padding
    return y, driver.from_nchw((rows - top) * p.W + (cols - left), p.layout)


@register("max_pool2d_backward", "cpu", "reference")
def max_pool2d_backward_reference(p, gy, x):
    """Each gradient goes to its window's first maximum in row-major scan order."""
    gy, x = nchw_view(gy, p.layout), nchw_view(x, p.layout)
    rows, cols = _first_maxima(p, x)
    n, c, _, _ = np.indices(gy.shape, sparse=True)
    gxp = _padded_zeros(p, gy.dtype)
    np.add.at(gxp, (n, c, rows, cols), gy)
    return driver.crop(gxp, p)


@register("max_pool2d_backward_indices", "cpu", "reference")
def max_pool2d_backward_indices_reference(p, gy, indices):
    """Each gradient added at its saved index."""
    gy, indices = nchw_view(gy, p.layout), nchw_view(indices, p.layout)
    gx = np.zeros((p.N, p.C, p.H * p.W), gy.dtype)
    n, c, _, _ = np.indices(gy.shape, sparse=True)
    np.add.at(gx, (n, c, indices), gy)
    return driver.from_nchw(gx.reshape(p.N, p.C, p.H, p.W), p.layout)


@register("avg_pool2d", "cpu", "reference")
def avg_pool2d_reference(p, x):
    x = nchw_view(x, p.layout)
    total = _windows(x, p, 0.0).sum(axis=(4, 5))
    return driver.from_nchw(total / _divisors(p, x.dtype), p.layout)


@register("avg_pool2d_backward", "cpu", "reference")
def avg_pool2d_backward_reference(p, gy):
    """Each window hands gy / divisor to every cell it covers; padded cells are cropped away."""
    gy = nchw_view(gy, p.layout)
    share = gy / _divisors(p, gy.dtype)
    gxp = _padded_zeros(p, gy.dtype)
    (kh, kw), (sh, sw) = p.kernel, p.stride
    for i in range(kh):
        for j in range(kw):
            gxp[:, :, i : i + (p.OH - 1) * sh + 1 : sh, j : j + (p.OW - 1) * sw + 1 : sw] += share
    return driver.crop(gxp, p)


def _adaptive_windows(p):
    """(rows, cols): the adaptive windows' [start, end) along each axis."""
    return [[pool.adaptive_span(o, size, out) for o in range(out)]
            for size, out in ((p.H, p.OH), (p.W, p.OW))]


@register("adaptive_avg_pool2d", "cpu", "reference")
def adaptive_avg_pool2d_reference(p, x):
    x, (rows, cols) = nchw_view(x, p.layout), _adaptive_windows(p)
    y = np.stack([np.stack([x[:, :, h0:h1, w0:w1].mean(axis=(2, 3)) for w0, w1 in cols], -1)
                  for h0, h1 in rows], -2)
    return driver.from_nchw(y, p.layout)


@register("adaptive_avg_pool2d_backward", "cpu", "reference")
def adaptive_avg_pool2d_backward_reference(p, gy):
    gy, (rows, cols) = nchw_view(gy, p.layout), _adaptive_windows(p)
    gx = np.zeros((p.N, p.C, p.H, p.W), gy.dtype)
    for oh, (h0, h1) in enumerate(rows):
        for ow, (w0, w1) in enumerate(cols):
            gx[:, :, h0:h1, w0:w1] += (gy[:, :, oh, ow] / ((h1 - h0) * (w1 - w0)))[..., None,
                                                                                   None]
    return driver.from_nchw(gx, p.layout)


# --- the kernels -------------------------------------------------------------------------------
# Each op's CPU kernel pool.<name> and its CUDA twin (pool_cuda.<name>, launched by
# pool_cuda.launch_<name>) take the same arguments: the inputs' NCHW views, the output's, then
# the window. Max pooling passes the left and top padding only (the right and bottom are implicit
# in the output size), averages all four (they bound the divisor).

def _max_window(p):
    top, _, left, _ = p.padding
    return (*p.kernel, *p.stride, *p.dilation, top, left)


def _avg_window(p):
    return (*p.kernel, *p.stride, *p.padding, p.count_padding, p.divisor)


# Max pooling's forward also writes PyTorch's indices when asked (a second output), so it is
# registered by hand; without them its kernels take a one-cell stand-in they do not touch.

def _max_pool2d(xp, call, p, x, with_indices):
    y, y_nchw = driver.output(xp, p.y_shape, x.dtype, p.layout)
    indices, indices_nchw = driver.output(xp, p.y_shape if with_indices else (1, 1, 1, 1),
                                          np.int64, p.layout)
    call(nchw_view(x, p.layout), y_nchw, indices_nchw, *_max_window(p), with_indices)
    return (y, indices) if with_indices else y


@register("max_pool2d", "cpu", "numba")
def max_pool2d_cpu(p, x, with_indices=False):
    return _max_pool2d(np, lambda *args: driver.cpu_move(pool.max_pool2d_forward, x.size, *args),
                       p, x, with_indices)


@register("max_pool2d", "cuda", "numba", launches=("pool_cuda.max_pool2d_forward",))
def max_pool2d_cuda(p, x, with_indices=False):
    return _max_pool2d(gpu.xp, lambda *args: pool_cuda.launch_max_pool2d_forward(
        *args, stream=gpu.stream()), p, x, with_indices)


# The backward through saved indices: a scatter into flat planes on the CPU, a gather over each
# cell's windows on the GPU (no atomics), so the twins take different arguments.

@register("max_pool2d_backward_indices", "cpu", "numba")
def max_pool2d_backward_indices_cpu(p, gy, indices):
    gx = driver.empty(np, p.x_shape, gy.dtype)
    driver.cpu_move(pool.max_pool2d_backward_indices, gx.size, nchw_view(gy, p.layout),
                    nchw_view(indices, p.layout), driver.image_major(gx, p.layout))
    return gx


@register("max_pool2d_backward_indices", "cuda", "numba",
          launches=("pool_cuda.max_pool2d_backward_indices",))
def max_pool2d_backward_indices_cuda(p, gy, indices):
    gx, gx_nchw = driver.output(gpu.xp, p.x_shape, gy.dtype, p.layout)
    pool_cuda.launch_max_pool2d_backward_indices(nchw_view(gy, p.layout),
                                                 nchw_view(indices, p.layout), gx_nchw,
                                                 *_max_window(p), stream=gpu.stream())
    return gx


def _register(op, name, window, output_shape):
    """Register ``op`` on both devices: kernel ``name`` writes a new array of
    ``output_shape(p)`` from the call's input arrays."""
    def run(xp, call, p, *inputs):
        out, out_nchw = driver.output(xp, output_shape(p), inputs[0].dtype, p.layout)
        call(*(nchw_view(a, p.layout) for a in inputs), out_nchw, *window(p))
        return out

    @register(op, "cpu", "numba")
    def on_cpu(p, *inputs):
        kernel, cells = getattr(pool, name), math.prod(p.x_shape)
        return run(np, lambda *args: driver.cpu_move(kernel, cells, *args), p, *inputs)

    @register(op, "cuda", "numba", launches=(f"pool_cuda.{name}",))
    def on_cuda(p, *inputs):
        launch = getattr(pool_cuda, f"launch_{name}")
        return run(gpu.xp, lambda *args: launch(*args, stream=gpu.stream()), p, *inputs)


def _no_window(p):
    return ()


_register("max_pool2d_backward", "max_pool2d_backward", _max_window, lambda p: p.x_shape)
_register("avg_pool2d", "avg_pool2d_forward", _avg_window, lambda p: p.y_shape)
_register("avg_pool2d_backward", "avg_pool2d_backward", _avg_window, lambda p: p.x_shape)
_register("adaptive_avg_pool2d", "adaptive_avg_pool2d_forward", _no_window,
          lambda p: p.y_shape)
_register("adaptive_avg_pool2d_backward", "adaptive_avg_pool2d_backward", _no_window,
          lambda p: p.x_shape)
