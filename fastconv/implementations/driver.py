"""What the implementations of every op family share, written once for both devices: output
allocation, the bias a kernel adds when there is none, how a CPU kernel is called and where
its scratch comes from, the CUDA runtime, and the NumPy window views of the references.

Helpers that allocate take the array module ``xp`` (NumPy on the CPU; CuPy on the GPU, or NumPy
in Numba's CUDA simulator). The CUDA runtime and the CUDA kernel modules load on the first call
that runs on the GPU (:func:`lazy`), so importing fastconv needs neither CuPy nor numba-cuda.
"""

import functools
import importlib
import math
import threading

import numba
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .. import runtime
from ..geometry import nchw_view
from ..kernels import LINE_BYTES, gemm
from ..kernels.variants import serial_twin


class lazy:  # noqa: N801  (used as a module is)
    """Module ``name``, imported on its first attribute access. Not a placeholder in
    sys.modules (importlib's LazyLoader): tools that scan sys.modules, such as inspect, would
    touch it and import CuPy on a machine without it."""

    def __init__(self, name: str):
        self._name, self._module = name, None

    def __getattr__(self, attribute):
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attribute)


gpu = lazy("fastconv.cuda")  # the CUDA runtime: array module, streams, the current GPU


def empty(xp, shape, dtype):
    """Every array a kernel writes comes from here (tests poison it to catch unwritten cells).
    A NumPy one starts on a cache line (:func:`aligned_empty`)."""
    return aligned_empty(shape, dtype) if xp is np else xp.empty(shape, dtype)


def aligned_empty(shape, dtype):
    """np.empty(shape, dtype), starting on a cache line where it takes ALIGNED_BYTES or more
    (from posix_memalign: runtime.aligned_bytes). NumPy's large arrays start 16 bytes past a
    page (glibc's mmap header), so each 64-byte vector of an NHWC pixel's channels straddles
    two lines: MobileNetV2's 8 x 144 x 56 x 56 depthwise layer took 3.8 ms forward and 4.7 ms
    for its weight gradient so, 3.3 and 3.5 from aligned arrays (one Zen 4 thread)."""
    dtype = np.dtype(dtype)
    nbytes = (shape if isinstance(shape, (int, np.integer)) else math.prod(shape)) * dtype.itemsize
    if nbytes < ALIGNED_BYTES:
        return np.empty(shape, dtype)
    raw = runtime.aligned_bytes(nbytes, LINE_BYTES)
    if raw is None:
        raw = np.empty(nbytes + LINE_BYTES, np.uint8)
        skip = -raw.ctypes.data % LINE_BYTES
        raw = raw[skip:skip + nbytes]
    return raw.view(dtype).reshape(shape)


def output(xp, shape, dtype, layout):
    """A new array in ``layout`` and its NCHW-indexed view for a kernel to write."""
    out = empty(xp, shape, dtype)
    return out, nchw_view(out, layout)


def bias(xp, b, k, dtype):
    """``b``, or the K zeros a kernel adds when there is no bias."""
    return constant(xp, k, dtype, 0.0) if b is None else b


def constant(xp, k, dtype, value):
    """K copies of ``value``, kept per size, dtype, value and device rather than allocated and
    filled on every call: the stand-ins for an absent bias or scale, which kernels only read."""
    return _constant(xp, k, np.dtype(dtype).str, value,
                     None if xp is np else gpu.device_id())


@functools.lru_cache(maxsize=64)
def _constant(xp, k, dtype, value, device_id):
    return xp.full(k, value, dtype)


def image_major(a, layout):
    """(n, channels, P) view of a 4-D array in ``layout``, P = H*W: each image's channels as
    flat planes (NCHW's by reshaping, NHWC's as a transposed view)."""
    n, rows, columns, last = a.shape  # sizes, not -1: a batch may be empty
    if layout == "NCHW":
        return a.reshape(n, rows, columns * last)
    return a.reshape(n, rows * columns, last).transpose(0, 2, 1)


# --- the CPU: serial twins and scratch ----------------------------------------------------------

# Below this much work (multiply-adds, or cells moved) a CPU kernel runs in the calling thread
# (kernels/variants.py): waking the thread pool costs more than the work. The break-even measured
# on a 2-vCPU guest lies between 2M and 16M (benchmarks/results/cpu.md, "single-thread path").
SERIAL_WORK = 1 << 22
# A kernel that only moves memory says so by counting each cell it writes as this many
# multiply-adds: copying a cell costs ~0.34 ns in one thread here, a vectorised kernel's
# multiply-add ~0.016 ns, so a 1M-cell copy (0.3 ms alone) already gains from a second thread
# (kernels/layout.py's embed: 0.31 -> 0.16 ms on two).
MOVED_CELL = 16
# Arrays of this size or more start on a cache line (aligned_empty): finding the line costs
# ~2 us a call (the array's address through ctypes), more than a smaller array's vectors lose.
ALIGNED_BYTES = 4096
# Largest workspace kept for reuse between calls; a bigger one is freed after its call.
KEPT_WORKSPACE_BYTES = 256 << 20

_serial_twins = {}
_scratch = threading.local()  # per thread: .buffers, one per workspace slot


def cpu_call(kernel, work, *args):
    """``kernel(*args)``, in the calling thread when ``work`` is below SERIAL_WORK or fastconv
    runs on one thread (Numba's workqueue layer still hands a parallel loop to a worker)."""
    if work >= SERIAL_WORK and numba.get_num_threads() > 1:
        return kernel(*args)
    twin = _serial_twins.get(kernel)
    if twin is None:
        twin = _serial_twins[kernel] = serial_twin(kernel)
    return twin(*args)


def cpu_move(kernel, cells, *args):
    """:func:`cpu_call` for a kernel that streams memory (a layout move, a normalisation, a
    pooling): its work is the ``cells`` it moves, each counted as MOVED_CELL multiply-adds.
    Counted as one each, a batch norm or a max pool of ResNet-8's 0.4-0.8 M cells ran on one
    thread at 0.55-0.65x the speed of two."""
    return cpu_call(kernel, cells * MOVED_CELL, *args)


def workspace(shape, dtype, slot=0):
    """CPU scratch (slot 0: im2col's columns, slot 1: a GEMM output, slot 2: Winograd's
    transformed filters), kept per thread and reused across calls: a fresh multi-megabyte array
    pays its page faults on every call."""
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    buffers = list(getattr(_scratch, "buffers", None) or [np.empty(0, np.uint8)] * 3)
    if buffers[slot].nbytes < nbytes:
        buffers[slot] = aligned_empty(nbytes, np.uint8)
        if nbytes <= KEPT_WORKSPACE_BYTES:
            _scratch.buffers = buffers
    return buffers[slot][:nbytes].view(dtype).reshape(shape)


# Products whose planes have this many rows or fewer (and THIN_COLUMNS or more columns) skip
# BLAS (kernels/gemm.py's gemm_thin): on one and two Zen 4 threads 1.2-5.1x faster at 1-8 rows
# but for one 0.94x, 0.8-1.4x at 12-16, 0.7-0.9x at 32 (benchmarks/results/cpu-thin-products.md).
THIN_ROWS = 8
# float32 products whose planes have more rows, up to SHORT_PLANE_ROWS, and SHORT_PLANE_COLUMNS
# columns or more run in kernels/gemm.py's gemm_short, c computed afresh (no accumulation). On
# the NCHW 1x1 and 3x3 layers of ResNet-50 and MobileNetV2, one and two Xeon threads, it ran
# 1.0-1.6x BLAS's speed at 16-64 rows and 784 columns or more, 1.0x at 196 columns, 0.7-1.1x at
# 96-256 rows (a block of rows rereads its tile of b from L2 past 64), 0.7x at 49 columns (its
# last tile recomputes 47): benchmarks/results/cpu-pointwise-nchw-xeon.md.
SHORT_PLANE_ROWS, SHORT_PLANE_COLUMNS = 64, 192
# Planes of more rows take it too where its left operand (a 1x1 layer's filters) has up to
# SHORT_FILTER_VALUES values, 24 KB of float32 (half an L1), read from L1 by every block of
# rows: at 96-384 rows and 16-64 columns of filters 1.0-1.7x BLAS's speed on one and two Xeon
# threads (0.8-1.0x at 196 columns), where 384 x 32 (48 KB) ran at 0.55x on one
# (benchmarks/results/cpu-pointwise-nchw-xeon.md section 6).
SHORT_FILTER_VALUES = 6144
# Planes of fewer columns take gemm_short_unfetched: MobileNetV2's 1x1 layers of 14 x 14
# planes (196 columns) ran 3-10% slower on one and two Xeon threads with gemm_short's requests
# for the next tile's lines, those of 28 x 28 and more 7-25% faster
# (benchmarks/results/cpu-pointwise-nchw-xeon.md section 6).
FETCH_PLANE_COLUMNS = 512
# Reductions longer than this take BLAS: each block of rows rereads the tile's k rows of b and
# all of a, past L2 from a few thousand (an NHWC weight gradient's reduction over the batch's
# pixels: ResNet-50's 64 -> 256 layer1.conv3, 64 x 25088 @ 25088 x 256, ran 3.6-4.0x slower than
# BLAS on one and two Xeon threads; 64 x k @ k x 256 alone 1.9-4.0x from k = 2048). The longest
# measured faster: MobileNetV2's features.8.expand weight gradient, 64 x 1568 @ 1568 x 384,
# 0.78-0.94x BLAS's time (benchmarks/results/cpu-winograd-small-planes.md section 7).
SHORT_REDUCTION = 1568
# On AVX2 OpenBLAS keeps them all: gemm_short's 6 x 16 tile (12 ymm accumulators) ran at
# 0.41-1.02x OpenBLAS's Haswell kernels on 16-64 rows of a Zen 3 (one thread; 0.51-1.14x on
# two), 0.53-1.22x at 96-384 rows, slowest where a tile's rows of b outgrow its 32 KiB L1
# (576-value reductions: im2col's 3x3 layers of 64 channels, 0.61x) or lie 64 KiB apart (16 x
# 144 @ 144 x 16384, 0.41x) (benchmarks/results/cpu-suite-2026-12-07-zen3.md
# section 2).
SHORT_TILES = gemm.VECTOR_LANES == 16
# float32 products of more rows, a's planes contiguous, whose right operand's planes (one
# shared, or contiguous) have up to TALL_FILTER_VALUES values (256 KB) in columns a multiple of
# gemm.TALL_COLUMNS run in kernels/gemm.py's gemm_tall (on AVX-512, as gemm_short): an NHWC 1x1
# layer's pixels times its filters, and Winograd's products a tile position. On one and two
# Xeon threads, 25088 x 64 @ 64 x 64 (ResNet-50's layer1.0.conv1) ran at 1.35x BLAS's speed,
# 64 x 128 to 256 x 64 filters 1.3-1.4x, 512 x 128 to 256 x 256 ones (64 K values) 0.9-1.2x,
# 256 x 1024 ones 0.8-0.9x; 160 columns (three tiles for two and a half) 0.9-1.0x
# (benchmarks/results/cpu-tall-products.md).
TALL_FILTER_VALUES = 1 << 16


def matmul(a, b, out, add=False):
    """out = a @ b (with ``add``: out += a @ b) on the CPU, for 2-D arrays or (Z, ...) stacks of
    planes (a 2-D ``a`` or ``b`` is shared by every plane; out is never broadcast), on fastconv's
    threads with BLAS single-threaded inside them, or none for THIN_ROWS rows or (SHORT_TILES)
    float32 planes of up to SHORT_PLANE_ROWS, or of a left operand of up to SHORT_FILTER_VALUES,
    reduced over up to SHORT_REDUCTION, or of a right operand of up to TALL_FILTER_VALUES
    (kernels/gemm.py).
    Any strides: a plane without a unit stride is copied once; an output plane without one is
    computed aside."""
    runtime.pin_blas()
    if out.ndim == 2:
        a, b, out = a[None], b[None], out[None]
    planes = out.shape[:1]
    a = np.broadcast_to(a, planes + a.shape[-2:]) if a.ndim == 2 else a
    b = np.broadcast_to(b, planes + b.shape[-2:]) if b.ndim == 2 else b
    if _unit_stride(out, 1) and not _unit_stride(out, 2):  # column-major: its transpose is not
        a, b, out = b.transpose(0, 2, 1), a.transpose(0, 2, 1), out.transpose(0, 2, 1)
    target = out if _unit_stride(out, 2) else empty(np, out.shape, out.dtype)
    if target is not out and add:
        target[...] = out
    z, m, n = out.shape
    k = a.shape[2]
    if m <= THIN_ROWS and n >= gemm.THIN_COLUMNS and _unit_stride(b, 2):
        cpu_call(gemm.gemm_thin, z * m * n * k, a, b, target, 1.0 if add else 0.0)
    elif (SHORT_TILES and THIN_ROWS < m and k <= SHORT_REDUCTION
          and (m <= SHORT_PLANE_ROWS or m * k <= SHORT_FILTER_VALUES)
          and n >= SHORT_PLANE_COLUMNS and not add
          and target.dtype == np.float32 and target.flags.c_contiguous and _unit_stride(b, 2)):
        kernel = gemm.gemm_short if n >= FETCH_PLANE_COLUMNS else gemm.gemm_short_unfetched
        cpu_call(kernel, z * m * n * k, np.ascontiguousarray(_planes(a).transpose(0, 2, 1)), b,
                 target)
    elif (SHORT_TILES and m >= gemm.TALL_ROWS and n % gemm.TALL_COLUMNS == 0
          and k * n <= TALL_FILTER_VALUES and not add and target.dtype == np.float32
          and target.flags.c_contiguous and _planes(a).flags.c_contiguous
          and (_planes(b).shape[0] == 1 or _planes(b).flags.c_contiguous)):
        cpu_call(gemm.gemm_tall, z * m * n * k, _planes(a),
                 np.ascontiguousarray(_planes(b)), target)
    else:
        row_blocks, column_blocks = _blocks(z, m, n, numba.get_num_threads())
        cpu_call(gemm.gemm, z * m * n * k, _blas_operand(a), _blas_operand(b), target,
                 row_blocks, column_blocks, 1.0 if add else 0.0)
    if target is not out:
        out[...] = target


# Fewest rows and columns of a block of one plane's product that one thread takes
BLOCK_ROWS, BLOCK_COLUMNS = 32, 4 * gemm.COLUMN_ALIGN


def _blocks(z, m, n, threads):
    """(row blocks, column blocks) each (M, N) plane of a product is split into, so that Z
    planes keep ``threads`` threads busy: the longer side first (each thread packs its own part
    of the operand it splits, reads all of the other), then the other where the longer has too
    few. An NCHW layer's columns are its pixels, an NHWC one's rows are: split along the
    filters, the 25088 x 64 x 256 product of ResNet-50's NHWC layer1.0.conv3 ran 6.4 ms on two
    Zen 4 threads, along the pixels 4.7. A convolution's GEMM on few pixels (ResNet's 7 x 7
    layers: 512 filters, 98 columns a batch chunk) ran on one thread before both were split."""
    wanted = -(-threads // z)
    if m > n:
        row_blocks = max(1, min(wanted, m // BLOCK_ROWS))
        return row_blocks, max(1, min(-(-wanted // row_blocks), n // BLOCK_COLUMNS))
    column_blocks = max(1, min(wanted, n // BLOCK_COLUMNS))
    return max(1, min(-(-wanted // column_blocks), m // BLOCK_ROWS)), column_blocks


def matmul_sum(a, b, out, add=False):
    """out = the sum over z of a[z] @ b[z] (with ``add``: out += it) for (Z, M, K) and (Z, K, N)
    stacks and a 2-D out: a product whose reduction is long and output small, split over the
    planes across fastconv's threads (kernels/gemm.py's gemm_sum), each part summing its planes
    into a partial product of its own."""
    runtime.pin_blas()
    work = a.size * out.shape[1]
    parts = min(numba.get_num_threads(), a.shape[0]) if work >= SERIAL_WORK else 1
    partial = empty(np, (parts,) + out.shape, out.dtype)
    cpu_call(gemm.gemm_sum, work, _blas_operand(a), _blas_operand(b), partial)
    total = partial.sum(0) if parts > 1 else partial[0]
    if add:
        out += total
    else:
        out[...] = total


# Rows of a tile of matmul_and_sum's shared operand (with its rows of the two outputs) held to
# this: 256-512 rows ran MobileNetV2's features.2.expand backward fastest, 2048 1.2x slower.
PAIR_TILE_BYTES = 192 << 10


def matmul_and_sum(a, b, c, d, out):
    """c = a @ b and out = d.T @ a for 2-D a (M, K), b (K, N), c (M, N), d (M, L) and out
    (L, K): two products over one long M, split over fastconv's threads in tiles of rows that
    both read while cached (kernels/gemm.py's gemm_and_sum), out summed from each part's."""
    runtime.pin_blas()
    work = a.size * (c.shape[1] + d.shape[1])
    parts = min(numba.get_num_threads(), a.shape[0]) if work >= SERIAL_WORK else 1
    partial = out[None] if parts == 1 else empty(np, (parts,) + out.shape, out.dtype)
    row_bytes = a.itemsize * (a.shape[1] + c.shape[1] + d.shape[1])
    tile = max(128, PAIR_TILE_BYTES // row_bytes // 16 * 16)
    cpu_call(gemm.gemm_and_sum, work, a, b, c, d, partial, tile)
    if parts > 1:
        np.sum(partial, axis=0, out=out)


def _planes(a):
    """A (Z, ...) stack's distinct planes: its first alone where all are it (a 2-D operand
    broadcast), else the stack."""
    return a[:1] if a.strides[0] == 0 else a


def _unit_stride(a, axis):
    return a.strides[axis] == a.itemsize or a.shape[axis] == 1


def _blas_operand(a):
    """A (Z, rows, columns) stack whose planes BLAS can read (one unit stride, the other at
    least a row or column long): ``a``, or else a contiguous copy."""
    _, rows, columns = a.shape
    row_major = _unit_stride(a, 2) and (rows == 1 or a.strides[1] >= columns * a.itemsize)
    column_major = _unit_stride(a, 1) and (columns == 1 or a.strides[2] >= rows * a.itemsize)
    return a if row_major or column_major else np.ascontiguousarray(a)


# --- the NumPy references: padded window views, activation slopes ------------------------------

# d activation / d pre-activation from the activation's output, as kernels/activation.slope
# takes it (a fused kernel keeps only the output): the references' twin of that
SLOPES = {None: lambda y: 1, "relu": lambda y: y > 0, "tanh": lambda y: (1 - y) * (1 + y),
          "sigmoid": lambda y: y * (1 - y)}


def steps(layout, channels, rows, columns):
    """(channel, row, column) steps of an image of ``channels`` x ``rows`` x ``columns`` laid
    out flat in ``layout``."""
    return (rows * columns, columns, 1) if layout == "NCHW" else (1, columns * channels, channels)


def from_nchw(a, layout):
    """An NCHW result in ``layout``, contiguous (a cropped view of a padded one is copied)."""
    return np.ascontiguousarray(a if layout == "NCHW" else a.transpose(0, 2, 3, 1))


def pad(x, padding, value=0.0):
    """An NCHW array padded by (top, bottom, left, right) with ``value``."""
    top, bottom, left, right = padding
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=value)


def windows(xp, kernel, stride, dilation, out_hw):
    """(N, C, OH, OW, R, S) view of the windows of a padded NCHW array."""
    (r, s), (sh, sw), (dh, dw), (oh, ow) = kernel, stride, dilation, out_hw
    view = sliding_window_view(xp, ((r - 1) * dh + 1, (s - 1) * dw + 1), axis=(2, 3))
    return view[:, :, : (oh - 1) * sh + 1 : sh, : (ow - 1) * sw + 1 : sw, ::dh, ::dw]


def crop(gxp, g):
    """The input-sized part of a padded NCHW gradient, in the caller's layout."""
    top, _, left, _ = g.padding
    return from_nchw(gxp[:, :, top : top + g.H, left : left + g.W], g.layout)
