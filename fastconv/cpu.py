"""The CPU backend: fastconv's Numba kernels registered with the dispatcher.

Each registration unpacks a resolved geometry into the kernel's integer arguments and allocates
the output. Kernels index arrays as NCHW; an NHWC array is handed over as a transposed view
(``_nchw``), so one kernel serves both layouts, except where a kernel is written for NHWC.
"""

import threading

import numba
import numpy as np

from .dispatch import heuristic, register
from .geometry import nchw_view, oihw_view
from .kernels import bias, conv_direct, im2col, optim, pool
from .kernels.activation import CODES
from .kernels.serial import serial_twin

# Bytes of im2col columns per batch chunk: a chunk's columns stay in a core's L2 between im2col,
# the GEMM and the epilogue.
WORKSPACE_BYTES = 2 << 20
# Below this much work (multiply-adds, or cells moved) a kernel runs in the calling thread
# (kernels/serial.py): waking the thread pool costs more than the work. Measured on the 2-vCPU
# guest of benchmarks/results/cpu.md (OpenMP and workqueue layers alike): serial wins below
# ~2M (a LeNet C1 forward at batch 16, 1.9M: 0.15 ms against 0.23-0.28), the two tie around
# 4-8M, parallel wins from ~16M (batch 256, 30M: 1.4-2.0 ms against 2.4-3.6).
SERIAL_WORK = 1 << 22
# Largest workspace kept for reuse between calls; a bigger one is freed after its call.
KEPT_WORKSPACE_BYTES = 256 << 20
# Fewer im2col rows (C/groups * R * S) than this make a thin GEMM (see _thin_gemm).
THIN_ROWS = 64

_scratch = threading.local()  # per thread: .buffers, one per workspace slot


def _empty(shape, dtype):
    """Every array a kernel writes comes from here (tests poison it to catch unwritten cells)."""
    return np.empty(shape, dtype)


_serial_twins = {}


def _call(kernel, work, *args):
    """``kernel(*args)``, in the calling thread when ``work`` is below SERIAL_WORK or fastconv
    runs on one thread (Numba's workqueue layer still hands a parallel loop to a worker)."""
    if work >= SERIAL_WORK and numba.get_num_threads() > 1:
        return kernel(*args)
    twin = _serial_twins.get(kernel)
    if twin is None:
        twin = _serial_twins[kernel] = serial_twin(kernel)
    return twin(*args)


def _workspace(shape, dtype, slot=0):
    """Scratch for im2col (slot 0: columns, slot 1: a GEMM output), kept per thread and reused
    across calls: a fresh multi-megabyte array pays its page faults on every call (1.8 ms per
    ResNet 3x3 image)."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    buffers = list(getattr(_scratch, "buffers", None) or [np.empty(0, np.uint8)] * 2)
    if buffers[slot].nbytes < nbytes:
        buffers[slot] = np.empty(nbytes, np.uint8)
        if nbytes <= KEPT_WORKSPACE_BYTES:
            _scratch.buffers = buffers
    return buffers[slot][:nbytes].view(dtype).reshape(shape)


def _output(shape, dtype, layout):
    """A new array in ``layout`` and its NCHW-indexed view for the kernel to write."""
    out = _empty(shape, dtype)
    return out, nchw_view(out, layout)


def _bias(b, g, dtype):
    return np.zeros(g.K, dtype) if b is None else b


@register("conv2d", "cpu", "direct")
def conv2d_direct(g, x, w, b, activation):
    y = _empty(g.y_shape, x.dtype)
    bias, code = _bias(b, g, x.dtype), CODES[activation]
    if g.layout == "NHWC":
        _call(conv_direct.conv2d_forward_nhwc, g.flops // 2, x, w, bias, y, *g.taps, g.groups, code)
    elif g.stride == (1, 1):
        _call(conv_direct.conv2d_forward_nchw_unit_stride, g.flops // 2, x, w, bias, y,
              g.padding[0], g.padding[2], *g.dilation, g.groups, code)
    else:
        _call(conv_direct.conv2d_forward_nchw, g.flops // 2, x, w, bias, y, *g.taps, g.groups, code)
    return y


@register("conv2d_backward_input", "cpu", "direct")
def conv2d_backward_input_direct(g, gy, w):
    gx, gx_nchw = _output(g.x_shape, gy.dtype, g.layout)
    _call(conv_direct.conv2d_backward_input, g.flops // 2, nchw_view(gy, g.layout),
          oihw_view(w, g.layout), gx_nchw, *g.taps, g.groups)
    return gx


@register("conv2d_backward_weight", "cpu", "direct")
def conv2d_backward_weight_direct(g, gy, x):
    gw = _empty(g.w_shape, gy.dtype)
    _call(conv_direct.conv2d_backward_weight, g.flops // 2, nchw_view(gy, g.layout),
          nchw_view(x, g.layout), oihw_view(gw, g.layout), *g.taps, g.groups)
    return gw


# im2col + GEMM. Operands are (channels, images, pixels) views: X the columns (C*R*S, n, P),
# rows in OIHW order, Y the output (K, n, P), P = OH*OW, and W the filter as (K, C*R*S), so a
# convolution is Y = W X per group. BLAS runs that as one GEMM when the images and pixels of
# both X and Y flatten into one axis (im2col's columns, any NHWC array), and one GEMM per image
# otherwise (an NCHW array). NCHW's forward therefore writes a flat scratch Y, which the
# epilogue moves into y while adding bias and activation. A 1x1 stride-1 unpadded convolution
# reads X straight from x, without im2col.


def _weight_matrix(w, g):
    return np.ascontiguousarray(oihw_view(w, g.layout)).reshape(g.K, -1)


def _channels_first(a, layout):
    """(channels, n, P) view of a 4-D array."""
    if layout == "NCHW":
        return a.reshape(a.shape[0], a.shape[1], -1).transpose(1, 0, 2)
    return a.reshape(a.shape[0], -1, a.shape[3]).transpose(2, 0, 1)


def _flat(a):
    """(rows, n*P) view of a (rows, n, P) view, or None where that would need a copy."""
    rows, n, p = a.shape
    if n == 1 or p == 1 or a.strides[1] == p * a.strides[2]:
        return a.reshape(rows, n * p)
    return None


def _matmul(a, b, out):
    """out = a @ b for (rows, n, P) views b and out: one GEMM if both flatten, else one per
    image. BLAS writes only row-major outputs, so a column-major one is computed transposed."""
    flat_b, flat_out = _flat(b), _flat(out)
    if flat_b is None or flat_out is None:
        np.matmul(a, b.transpose(1, 0, 2), out=out.transpose(1, 0, 2))
    elif flat_out.strides[1] == flat_out.itemsize:
        np.matmul(a, flat_b, out=flat_out)
    else:
        np.matmul(flat_b.T, a.T, out=flat_out.T)


def _matmul_over_pixels(a, b):
    """The sum over images of a[:, n] @ b[:, n].T for (rows, n, P) views a (gradient) and b
    (columns). OpenBLAS splits a GEMM's threads over its output, never over the long reduction:
    with few column rows (LeNet's C1: 6 x 25 outputs, n*P = 50k long) one GEMM per image and
    their sum runs 3-5x faster than one flat GEMM. Otherwise one GEMM over the flattened (n, P)
    axis, computed as its transpose: OpenBLAS runs it 1.2-2x faster with the longer output axis
    first. An operand that does not flatten (an NCHW gradient) is copied once."""
    if b.shape[0] < THIN_ROWS:
        return np.matmul(a.transpose(1, 0, 2), b.transpose(1, 2, 0)).sum(0)
    return (_flat_or_copy(b) @ _flat_or_copy(a).T).T


def _flat_or_copy(a):
    """(rows, n*P) of a (rows, n, P) view: a view where one exists, else of a contiguous copy."""
    flat = _flat(a)
    return _flat(np.ascontiguousarray(a)) if flat is None else flat


def _input_columns(g, a):
    """The columns (C*R*S, n, P) of an input-shaped array as a view of it, where im2col would
    only copy: a pointwise convolution's channels, or each NCHW image as its one column when
    one window covers it. None where im2col is needed."""
    if g.pointwise:
        return _channels_first(a, g.layout)
    if g.whole_window and g.layout == "NCHW":
        return a.reshape(a.shape[0], -1).T[:, :, None]
    return None


def _columns(g, x):
    """X (C*R*S, n, P) for a batch chunk: a view of x where one exists, else im2col's."""
    view = _input_columns(g, x)
    if view is not None:
        return view
    cols = _workspace((g.C * g.R * g.S, x.shape[0], g.OH, g.OW), x.dtype)
    _call(im2col.im2col, cols.size, nchw_view(x, g.layout), cols, g.R, g.S, *g.taps)
    return cols.reshape(cols.shape[0], x.shape[0], -1)


@register("conv2d", "cpu", "im2col")
def conv2d_im2col(g, x, w, b, activation):
    y = _empty(g.y_shape, x.dtype)
    wmat = _weight_matrix(w, g)
    for batch in g.batch_chunks(x.itemsize, WORKSPACE_BYTES):
        cols, out = _columns(g, x[batch]), _channels_first(y[batch], g.layout)
        gemm_out = out if _flat(out) is not None or _flat(cols) is None else (
            _workspace(out.shape, x.dtype, slot=1))
        for rows, ks in g.group_slices():
            _matmul(wmat[ks], cols[rows], gemm_out[ks])
        if gemm_out is not out or b is not None or activation is not None:
            _call(im2col.bias_activation, out.size, gemm_out, out, _bias(b, g, x.dtype),
                  CODES[activation])
    return y


@register("conv2d_backward_input", "cpu", "im2col")
def conv2d_backward_input_im2col(g, gy, w):
    gx = _empty(g.x_shape, gy.dtype)
    wmat = _weight_matrix(w, g)
    for batch in g.batch_chunks(gy.itemsize, WORKSPACE_BYTES):
        grad = _channels_first(gy[batch], g.layout)
        gcols = _input_columns(g, gx[batch])  # the GEMM writes gx itself where it can
        scattered = gcols is None
        if scattered:
            gcols = _workspace((g.C * g.R * g.S,) + grad.shape[1:], gy.dtype)
        for rows, ks in g.group_slices():
            _matmul(wmat[ks].T, grad[ks], gcols[rows])
        if scattered:
            _call(im2col.col2im, gcols.size, gcols.reshape(gcols.shape[:2] + (g.OH, g.OW)),
                          nchw_view(gx[batch], g.layout), g.R, g.S, *g.taps)
    return gx


@register("conv2d_backward_weight", "cpu", "im2col")
def conv2d_backward_weight_im2col(g, gy, x):
    gw_mat = np.zeros((g.K, (g.C // g.groups) * g.R * g.S), gy.dtype)
    for batch in g.batch_chunks(gy.itemsize, WORKSPACE_BYTES):
        cols, grad = _columns(g, x[batch]), _channels_first(gy[batch], g.layout)
        for rows, ks in g.group_slices():
            gw_mat[ks] += _matmul_over_pixels(grad[ks], cols[rows])
    gw = gw_mat.reshape(g.K, -1, g.R, g.S)
    return gw if g.layout == "NCHW" else np.ascontiguousarray(gw.transpose(2, 3, 1, 0))


def _thin_gemm(g):
    """Few taps per output or few output channels per group: BLAS runs such a GEMM far from its
    peak while im2col still copies R*S times the input."""
    return (g.C // g.groups) * g.R * g.S < THIN_ROWS or g.K // g.groups < 16


@heuristic("conv2d", "cpu")
def choose_forward_algo(g):
    """direct for thin GEMMs (LeNet's C1, depthwise), im2col + BLAS otherwise."""
    return "direct" if _thin_gemm(g) else "im2col"


@heuristic("conv2d_backward_input", "cpu")
@heuristic("conv2d_backward_weight", "cpu")
def choose_backward_algo(g):
    """direct only for thin grouped GEMMs (depthwise); the backward GEMMs of an ungrouped
    convolution are wide (N*OH*OW long) even where the forward's is thin, so im2col wins them
    (LeNet C1: 3.9 ms against direct's 14.7 ms, one thread)."""
    return "direct" if g.groups > 1 and _thin_gemm(g) else "im2col"


@register("conv2d_backward_bias", "cpu", "numba")
def conv2d_backward_bias(gy, layout):
    gb = _empty(gy.shape[1] if layout == "NCHW" else gy.shape[3], gy.dtype)
    _call(bias.conv2d_backward_bias, gy.size, nchw_view(gy, layout), gb)
    return gb


@register("max_pool2d", "cpu", "numba")
def max_pool2d(p, x):
    y, y_nchw = _output(p.y_shape, x.dtype, p.layout)
    top, _, left, _ = p.padding
    _call(pool.max_pool2d_forward, x.size, nchw_view(x, p.layout), y_nchw, *p.kernel, *p.stride,
          top, left)
    return y


@register("max_pool2d_backward", "cpu", "numba")
def max_pool2d_backward(p, gy, x):
    gx, gx_nchw = _output(p.x_shape, gy.dtype, p.layout)
    top, _, left, _ = p.padding
    _call(pool.max_pool2d_backward, x.size, nchw_view(gy, p.layout), nchw_view(x, p.layout),
          gx_nchw, *p.kernel, *p.stride, top, left)
    return gx


@register("avg_pool2d", "cpu", "numba")
def avg_pool2d(p, x):
    y, y_nchw = _output(p.y_shape, x.dtype, p.layout)
    _call(pool.avg_pool2d_forward, x.size, nchw_view(x, p.layout), y_nchw, *p.kernel, *p.stride,
          *p.padding, p.count_padding)
    return y


@register("avg_pool2d_backward", "cpu", "numba")
def avg_pool2d_backward(p, gy):
    gx, gx_nchw = _output(p.x_shape, gy.dtype, p.layout)
    _call(pool.avg_pool2d_backward, gx.size, nchw_view(gy, p.layout), gx_nchw, *p.kernel, *p.stride,
          *p.padding, p.count_padding)
    return gx


@register("adam_step", "cpu", "numba")
def adam_step(param, grad, m, v, scalars):
    flat = [a.reshape(-1) for a in (param, grad, m, v)]  # views: ops checked param, m, v
    _call(optim.adam_step, param.size, *flat, *scalars)
