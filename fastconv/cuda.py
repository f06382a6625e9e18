"""The CUDA backend: fastconv's Numba CUDA kernels registered with the dispatcher.

The twin of :mod:`fastconv.cpu`, imported by :mod:`fastconv.device` on the first call that runs
on the GPU. Arrays are CuPy arrays; under Numba's CUDA simulator they are NumPy arrays and the
same kernels run in the simulator. Every kernel is launched on CuPy's current stream, so work
queued by CuPy, PyTorch (through an external stream) and fastconv stays in order. Kernels index
NCHW; an NHWC array is handed over as a transposed view, except to the NHWC direct forward.

Algorithms of the conv ops: "direct" (one thread per output, the forward tiled in shared
memory), "im2col" (im2col and col2im kernels around fastconv's own tiled GEMM), "cublas" (the
same around cuBLAS through CuPy; absent in the simulator).
"""

import contextlib
import functools

import numpy as np

from . import device
from .dispatch import heuristic, register
from .geometry import nchw_view, oihw_view
from .kernels import cuda_conv, cuda_gemm, cuda_im2col, cuda_optim, cuda_pool
from .kernels.activation import CODES
from .kernels.cuda_device import cuda

if device.simulated():
    xp = np
else:
    import cupy as xp

# Bytes of im2col columns per batch chunk: bounds the workspace of a large batch.
WORKSPACE_BYTES = 256 << 20


def check_available() -> None:
    if not device.simulated() and not cuda.is_available():
        raise RuntimeError("device='cuda' but no CUDA GPU is visible (numba.cuda.is_available() "
                           "is False: check the driver and CUDA_VISIBLE_DEVICES)")


def select(index: int) -> None:
    """Make GPU ``index`` current for CuPy and Numba (nothing to do when it already is)."""
    current = 0 if device.simulated() else xp.cuda.Device().id
    if index == current:
        return
    count = 1 if device.simulated() else xp.cuda.runtime.getDeviceCount()
    if index >= count:
        raise ValueError(f"device='cuda:{index}' but there are {count} GPU(s)")
    xp.cuda.Device(index).use()
    cuda.select_device(index)


def info() -> dict:
    """The GPU and the versions the backend runs with, for ``fastconv info`` and benchmarks."""
    import numba_cuda

    if device.simulated():
        return {"gpu": "Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1)",
                "numba-cuda": numba_cuda.__version__}
    runtime = xp.cuda.runtime

    def version(v):
        return f"{v // 1000}.{v % 1000 // 10}"
    return {"gpu": gpu_name(), "driver": version(runtime.driverGetVersion()),
            "cuda": version(runtime.runtimeGetVersion()), "numba-cuda": numba_cuda.__version__,
            "cupy": xp.__version__}


def gpu_name() -> str:
    """The GPU's name, which keys autotuning on the GPU."""
    if device.simulated():
        return "CUDA simulator"
    return xp.cuda.runtime.getDeviceProperties(xp.cuda.Device().id)["name"].decode()


def from_any(array):
    """A device array of ``array``: zero-copy for a GPU array (DLPack first: unlike
    __cuda_array_interface__ it costs no host synchronisation), a copy for a host array."""
    if device.simulated():
        return np.asarray(array)
    if isinstance(array, xp.ndarray):
        return array
    if device.where(array) == "cuda" and hasattr(array, "__dlpack__"):
        return xp.from_dlpack(array)
    return xp.asarray(array)


def to_host(array):
    return np.asarray(array) if device.simulated() else xp.asnumpy(array)


@functools.cache
def _external_stream(pointer):
    return cuda.default_stream() if pointer == 0 else cuda.external_stream(pointer)


def _stream():
    """Numba's handle on CuPy's current stream (made once per stream)."""
    return 0 if device.simulated() else _external_stream(xp.cuda.get_current_stream().ptr)


def use_stream(pointer):
    """A context in which CuPy's current stream, and so fastconv's, is the CUDA stream at
    ``pointer`` (say, ``torch.cuda.current_stream().cuda_stream``)."""
    if device.simulated():
        return contextlib.nullcontext()
    external = getattr(xp.cuda.Stream, "from_external", None)  # CuPy 14; ExternalStream before
    return external(pointer) if external else xp.cuda.ExternalStream(pointer)


def _empty(shape, dtype):
    """Every array a kernel writes comes from here (tests poison it to catch unwritten cells)."""
    return xp.empty(shape, dtype)


def _bias(b, k, dtype):
    """b, or the K zeros the kernels add when there is no bias (kept: no allocation and fill
    per call; kernels only read a bias)."""
    if b is not None:
        return b
    return _zeros(k, dtype.str, 0 if device.simulated() else xp.cuda.Device().id)


@functools.lru_cache(maxsize=64)
def _zeros(k, dtype, gpu):
    return xp.zeros(k, dtype)


@register("conv2d", "cuda", "direct")
def conv2d_direct(g, x, w, b, activation):
    y = _empty(g.y_shape, x.dtype)
    launch = (cuda_conv.launch_conv2d_forward if g.layout == "NCHW"
              else cuda_conv.launch_conv2d_forward_nhwc)
    launch(x, w, _bias(b, g.K, x.dtype), y, *g.taps, g.groups, CODES[activation],
           stream=_stream())
    return y


@register("conv2d_backward_input", "cuda", "direct")
def conv2d_backward_input_direct(g, gy, w):
    gx = _empty(g.x_shape, gy.dtype)
    cuda_conv.launch_conv2d_backward_input(nchw_view(gy, g.layout), oihw_view(w, g.layout),
                                           nchw_view(gx, g.layout), *g.taps, g.groups,
                                           stream=_stream())
    return gx


@register("conv2d_backward_weight", "cuda", "direct")
def conv2d_backward_weight_direct(g, gy, x):
    gw = _empty(g.w_shape, gy.dtype)
    cuda_conv.launch_conv2d_backward_weight(nchw_view(gy, g.layout), nchw_view(x, g.layout),
                                            oihw_view(gw, g.layout), *g.taps, g.groups,
                                            stream=_stream())
    return gw


# im2col + GEMM. Operands are per-image (plane) matrices: X the columns (n, C*R*S, P), rows in
# OIHW order, Y the output (n, K, P), P = OH*OW, and W the filters (K, C*R*S) broadcast over the
# images, so a convolution is Y[n] = W X[n] per group: one batched GEMM launch, written straight
# into y (an NHWC output as a transposed view). A 1x1 stride-1 unpadded convolution, and an
# NCHW one whose window covers the whole input, read X from x without im2col.
# ``matmul(a, b, c, bias, act)`` is the GEMM of an algorithm.

def _gemm(a, b, c, bias, act):
    cuda_gemm.launch_gemm(a, b, c, _bias(bias, c.shape[1], c.dtype), act, stream=_stream())


def gemm(a, b, out=None):
    """``a @ b`` by fastconv's tiled GEMM kernel, for (Z, M, K) and (Z, K, N) device arrays of
    one dtype (any strides), into ``out`` (Z, M, N) when given."""
    if out is None:
        out = _empty((a.shape[0], a.shape[1], b.shape[2]), a.dtype)
    _gemm(a, b, out, None, CODES[None])
    return out


def _cublas(a, b, c, bias, act):
    xp.matmul(a, b, out=c)
    if bias is not None or act != CODES[None]:
        cuda_gemm.launch_bias_activation(c, _bias(bias, c.shape[1], c.dtype), act,
                                         stream=_stream())


def _planes(a, layout):
    """(n, channels, P) view of a 4-D array."""
    if layout == "NCHW":
        return a.reshape(a.shape[0], a.shape[1], -1)
    return a.reshape(a.shape[0], -1, a.shape[3]).transpose(0, 2, 1)


def _weight_matrix(w, g):
    return xp.ascontiguousarray(oihw_view(w, g.layout)).reshape(g.K, -1)


def _input_columns(g, a):
    """X (n, C*R*S, P) of an input-shaped array as a view of it, where im2col would only copy
    (cpu.py's rule): a pointwise convolution's channels, or each NCHW image as its one column
    when one window covers it. None where im2col is needed."""
    if g.pointwise:
        return _planes(a, g.layout)
    if g.whole_window and g.layout == "NCHW":
        return a.reshape(a.shape[0], -1, 1)
    return None


def _columns(g, x):
    """X (n, C*R*S, P) of a batch chunk: a view of x where one exists, else im2col's."""
    view = _input_columns(g, x)
    if view is not None:
        return view
    cols = _empty((x.shape[0], g.C * g.R * g.S, g.OH, g.OW), x.dtype)
    cuda_im2col.launch_im2col(nchw_view(x, g.layout), cols, g.R, g.S, *g.taps, stream=_stream())
    return cols.reshape(cols.shape[0], cols.shape[1], -1)


def _batched(*planes):
    """Per-image matrices (n, rows, P) as the GEMM takes them: as they are or, with one pixel
    per image (P = 1: LeNet's C5), the images folded into one matrix (1, rows, n), so one GEMM
    runs n columns instead of n GEMMs of one column, each filling 1/64 of a tile."""
    if planes[0].shape[2] == 1:
        return [a.transpose(2, 1, 0) for a in planes]
    return list(planes)


def _im2col_forward(matmul):
    def conv2d(g, x, w, b, activation):
        y = _empty(g.y_shape, x.dtype)
        wmat, act = _weight_matrix(w, g), CODES[activation]
        for batch in g.batch_chunks(x.itemsize, WORKSPACE_BYTES):
            cols, out = _batched(_columns(g, x[batch]), _planes(y[batch], g.layout))
            for rows, ks in g.group_slices():
                matmul(wmat[None, ks], cols[:, rows], out[:, ks],
                       None if b is None else b[ks], act)
        return y
    return conv2d


def _im2col_backward_input(matmul):
    def conv2d_backward_input(g, gy, w):
        gx = _empty(g.x_shape, gy.dtype)
        wmat = _weight_matrix(w, g)
        for batch in g.batch_chunks(gy.itemsize, WORKSPACE_BYTES):
            grad = _planes(gy[batch], g.layout)
            gcols = _input_columns(g, gx[batch])  # the GEMM writes gx itself where it can
            scattered = gcols is None
            if scattered:
                gcols = _empty((grad.shape[0], g.C * g.R * g.S, g.OH * g.OW), gy.dtype)
            grad_m, gcols_m = _batched(grad, gcols)
            for rows, ks in g.group_slices():
                matmul(wmat[ks].T[None], grad_m[:, ks], gcols_m[:, rows], None, CODES[None])
            if scattered:
                cuda_im2col.launch_col2im(gcols.reshape(gcols.shape[:2] + (g.OH, g.OW)),
                                          nchw_view(gx[batch], g.layout), g.R, g.S, *g.taps,
                                          stream=_stream())
        return gx
    return conv2d_backward_input


def _im2col_backward_weight(matmul):
    def conv2d_backward_weight(g, gy, x):
        gw_mat = xp.zeros((g.K, (g.C // g.groups) * g.R * g.S), gy.dtype)
        for batch in g.batch_chunks(gy.itemsize, WORKSPACE_BYTES):
            cols, grad = _batched(_columns(g, x[batch]), _planes(gy[batch], g.layout))
            for rows, ks in g.group_slices():
                # one product per image (or one of all), summed: the GEMMs run in parallel
                per_image = _empty((grad.shape[0],) + gw_mat[ks].shape, gy.dtype)
                matmul(grad[:, ks], cols[:, rows].transpose(0, 2, 1), per_image, None,
                       CODES[None])
                gw_mat[ks] += per_image.sum(axis=0)
        gw = gw_mat.reshape(g.K, -1, g.R, g.S)
        return gw if g.layout == "NCHW" else xp.ascontiguousarray(gw.transpose(2, 3, 1, 0))
    return conv2d_backward_weight


def _register_im2col(algo, matmul):
    register("conv2d", "cuda", algo)(_im2col_forward(matmul))
    register("conv2d_backward_input", "cuda", algo)(_im2col_backward_input(matmul))
    register("conv2d_backward_weight", "cuda", algo)(_im2col_backward_weight(matmul))


_register_im2col("im2col", _gemm)
if not device.simulated():  # cuBLAS needs a real GPU
    _register_im2col("cublas", _cublas)


def _large_gemm(g):
    """Enough taps per output and output channels per group for a GEMM to pay for im2col."""
    return (g.C // g.groups) * g.R * g.S >= 64 and g.K // g.groups >= 16


@heuristic("conv2d", "cuda")
@heuristic("conv2d_backward_input", "cuda")
@heuristic("conv2d_backward_weight", "cuda")
def choose_algo(g):
    """A GEMM (cuBLAS where present) for large products, the direct kernels otherwise. Not yet
    measured on a GPU: autotuning (keyed by the GPU's name) is the way to choose there."""
    if not _large_gemm(g):
        return "direct"
    return "im2col" if device.simulated() else "cublas"


@register("conv2d_backward_bias", "cuda", "numba")
def conv2d_backward_bias(gy, layout):
    gb = _empty(gy.shape[1] if layout == "NCHW" else gy.shape[3], gy.dtype)
    cuda_conv.launch_conv2d_backward_bias(nchw_view(gy, layout), gb, stream=_stream())
    return gb


def _output(shape, dtype, layout):
    out = _empty(shape, dtype)
    return out, nchw_view(out, layout)


@register("max_pool2d", "cuda", "numba")
def max_pool2d(p, x):
    y, y_nchw = _output(p.y_shape, x.dtype, p.layout)
    top, _, left, _ = p.padding
    cuda_pool.launch_max_pool2d_forward(nchw_view(x, p.layout), y_nchw, *p.kernel, *p.stride, top,
                                        left, stream=_stream())
    return y


@register("max_pool2d_backward", "cuda", "numba")
def max_pool2d_backward(p, gy, x):
    gx, gx_nchw = _output(p.x_shape, gy.dtype, p.layout)
    top, _, left, _ = p.padding
    cuda_pool.launch_max_pool2d_backward(nchw_view(gy, p.layout), nchw_view(x, p.layout), gx_nchw,
                                         *p.kernel, *p.stride, top, left, stream=_stream())
    return gx


@register("avg_pool2d", "cuda", "numba")
def avg_pool2d(p, x):
    y, y_nchw = _output(p.y_shape, x.dtype, p.layout)
    cuda_pool.launch_avg_pool2d_forward(nchw_view(x, p.layout), y_nchw, *p.kernel, *p.stride,
                                        *p.padding, p.count_padding, stream=_stream())
    return y


@register("avg_pool2d_backward", "cuda", "numba")
def avg_pool2d_backward(p, gy):
    gx, gx_nchw = _output(p.x_shape, gy.dtype, p.layout)
    cuda_pool.launch_avg_pool2d_backward(nchw_view(gy, p.layout), gx_nchw, *p.kernel, *p.stride,
                                         *p.padding, p.count_padding, stream=_stream())
    return gx


@register("adam_step", "cuda", "numba")
def adam_step(param, grad, m, v, scalars):
    flat = [a.reshape(-1) for a in (param, grad, m, v)]  # views: ops checked param, m, v
    cuda_optim.launch_adam_step(*flat, *scalars, stream=_stream())
