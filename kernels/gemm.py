"""Matrix products on fastconv's own threads: each thread's block is one single-threaded call of
BLAS's Fortran ?gemm (NumPy's OpenBLAS, or SciPy's cython_blas, the one Numba's np.dot calls),
except for products of few rows and long rows, which stream past BLAS (:func:`gemm_thin`), and
float32 products of a few dozen rows or of a short right operand, which run in register tiles
of their own (:func:`gemm_short`, :func:`gemm_tall`).

Why not let BLAS thread itself: fastconv's parallel kernels run on Numba's OpenMP workers, which
spin briefly after each kernel so the next one starts at once (runtime.py), and a BLAS with
threads of its own spins its workers for far longer after each product. Two pools spinning on
the same cores take them from each other: on 2 cores a LeNet-5 training step ran 5x slower.
One pool, with BLAS inside it, is what PyTorch does with oneDNN and MKL.

Operands are (Z, M, K) @ (Z, K, N) -> (Z, M, N) stacks whose 2-D planes each have one unit
stride (row- or column-major, any leading dimension); the output's planes are row-major. BLAS
is column-major, so the row-major C = A B is computed as the column-major C^T = B^T A^T: a
row-major plane is, read column-major, its own transpose.
"""

import ctypes
import sys

import numpy as np
from llvmlite import binding
from numba import carray, njit, prange, types
from numba.extending import get_cython_function_address

from .. import runtime
from . import CPU_KERNEL, VECTOR_LANES, ZERO, stack_array
from .tile_fmas import broadcast_fmas
from .variants import variant
from .vector_moves import move_rows


def _fortran_gemms():
    """(sgemm's address, dgemm's, a name for them): NumPy's OpenBLAS where it exports the ILP64
    routines under scipy-openblas64's names (NumPy's wheels), else SciPy's
    (scipy.linalg.cython_blas, 32-bit INTEGERs). NumPy's wheels carry the newer OpenBLAS: SciPy's
    0.3.30 ran some single-threaded products 10-37% slower than NumPy's 0.3.31."""
    for lib in runtime.blas():
        if lib["internal_api"] == "openblas" and "numpy" in (lib["filepath"] or ""):
            library = ctypes.CDLL(lib["filepath"])
            if hasattr(library, "scipy_sgemm_64_") and hasattr(library, "scipy_dgemm_64_"):
                return (ctypes.cast(library.scipy_sgemm_64_, ctypes.c_void_p).value,
                        ctypes.cast(library.scipy_dgemm_64_, ctypes.c_void_p).value,
                        f"NumPy's OpenBLAS {lib['version']} (ILP64)")
    if sys.byteorder != "little":  # the INTEGERs below are 64-bit: their first half is not theirs
        raise ImportError("fastconv's CPU products need NumPy's ILP64 OpenBLAS on a big-endian CPU")
    return (get_cython_function_address("scipy.linalg.cython_blas", "sgemm"),
            get_cython_function_address("scipy.linalg.cython_blas", "dgemm"),
            "SciPy's BLAS (scipy.linalg.cython_blas, LP64)")


# The BLAS routines under names the compiled kernels refer to, so that Numba's on-disk cache
# (which cannot hold a raw address) resolves them anew in each process.
_SGEMM, _DGEMM, BLAS = _fortran_gemms()
binding.add_symbol("fastconv_sgemm", _SGEMM)
binding.add_symbol("fastconv_dgemm", _DGEMM)
# Fortran's ?gemm(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc): all by address
_FORTRAN_GEMM = types.void(*[types.voidptr] * 13)
_sgemm = types.ExternalFunction("fastconv_sgemm", _FORTRAN_GEMM)
_dgemm = types.ExternalFunction("fastconv_dgemm", _FORTRAN_GEMM)

# Column blocks start at multiples of this (a cache line of float32), so no two threads' blocks
# of C share a line.
COLUMN_ALIGN = 16
_NOTRANS, _TRANS = ord("N"), ord("T")


@njit(inline="always", cache=True)
def _as_column_major(plane):
    """(transpose flag, leading dimension) of a 2-D plane passed to BLAS as its transpose: a
    row-major plane is that transpose as it is ("N"), a column-major one needs "T"."""
    rows, columns = plane.shape
    row_stride = plane.strides[0] // plane.itemsize
    column_stride = plane.strides[1] // plane.itemsize
    if column_stride == 1 or columns == 1:
        return _NOTRANS, max(row_stride, columns, 1)
    return _TRANS, max(column_stride, rows, 1)


@njit(inline="always", cache=True)
def gemm_plane(a, b, c, beta):
    """c = a @ b + beta * c for 2-D planes, c row- or column-major (as c.T = b.T @ a.T): one
    single-threaded BLAS call."""
    if c.shape[1] > 1 and c.strides[1] != c.itemsize:
        _gemm_row_major(b.T, a.T, c.T, beta)
    else:
        _gemm_row_major(a, b, c, beta)


@njit(inline="always", cache=True)
def _gemm_row_major(a, b, c, beta):
    """gemm_plane for a row-major c."""
    m, k = a.shape
    n = c.shape[1]
    if m == 0 or n == 0:
        return
    trans_b, ld_b = _as_column_major(b)
    trans_a, ld_a = _as_column_major(a)
    # Fortran INTEGERs, passed by address: 64-bit, which a 32-bit-INTEGER BLAS reads as their
    # first (low, on a little-endian CPU) halves, so the same code serves both
    ints = np.empty(6, np.int64)
    ints[0], ints[1], ints[2], ints[3], ints[4] = n, m, k, ld_b, ld_a
    ints[5] = max(c.strides[0] // c.itemsize, n, 1)
    flags = np.empty(2, np.uint8)
    flags[0], flags[1] = trans_b, trans_a
    scalars = np.empty(2, c.dtype)
    scalars[0], scalars[1] = 1, beta
    if c.itemsize == 4:  # float32 (the ops pass float32 or float64 only)
        _sgemm(flags[0:].ctypes, flags[1:].ctypes, ints[0:].ctypes, ints[1:].ctypes,
               ints[2:].ctypes, scalars[0:].ctypes, b.ctypes, ints[3:].ctypes, a.ctypes,
               ints[4:].ctypes, scalars[1:].ctypes, c.ctypes, ints[5:].ctypes)
    else:
        _dgemm(flags[0:].ctypes, flags[1:].ctypes, ints[0:].ctypes, ints[1:].ctypes,
               ints[2:].ctypes, scalars[0:].ctypes, b.ctypes, ints[3:].ctypes, a.ctypes,
               ints[4:].ctypes, scalars[1:].ctypes, c.ctypes, ints[5:].ctypes)


@njit(inline="always", cache=True)
def _block(j, blocks, n, align):
    """[lo, hi) of block j of ``blocks`` over n rows or columns, starts at multiples of
    ``align``."""
    lo = n * j // blocks // align * align
    hi = n if j == blocks - 1 else n * (j + 1) // blocks // align * align
    return lo, hi


@njit(**CPU_KERNEL)
def gemm(a, b, c, row_blocks, column_blocks, beta):
    """c[z] = a[z] @ b[z] + beta * c[z] for every z, a (Z, M, K) (a single plane broadcast:
    z-stride 0), b (Z, K, N), c (Z, M, N) with row-major planes.

    Loop order: (plane z, row block i, column block j) triples (parallel), each one BLAS call
    over c[z][rows i, columns j]. Each thread owns its blocks of c; column blocks start at
    COLUMN_ALIGN-column boundaries.
    """
    m, n = c.shape[1], c.shape[2]
    blocks = row_blocks * column_blocks
    for part in prange(c.shape[0] * blocks):
        z, i, j = part // blocks, part % blocks // column_blocks, part % column_blocks
        r0, r1 = _block(i, row_blocks, m, 1)
        c0, c1 = _block(j, column_blocks, n, COLUMN_ALIGN)
        gemm_plane(a[z][r0:r1], b[z][:, c0:c1], c[z][r0:r1, c0:c1], beta)


@njit(**CPU_KERNEL)
def gemm_sum(a, b, partial):
    """partial[p] = sum over z in part p of a[z] @ b[z]: a product whose reduction (over planes z)
    is long and whose output is small, split over the reduction. The caller sums the partials.

    Layout as :func:`gemm`; partial is (parts, M, N), row-major planes. Loop order: parts p
    (parallel), each its contiguous range of planes, one BLAS call a plane accumulating into
    partial[p]. Each thread owns its partial[p].
    """
    parts, planes = partial.shape[0], a.shape[0]
    for p in prange(parts):
        z0, z1 = planes * p // parts, planes * (p + 1) // parts
        if z0 == z1:
            partial[p] = 0
        for z in range(z0, z1):
            gemm_plane(a[z], b[z], partial[p], 0.0 if z == z0 else 1.0)


@njit(**CPU_KERNEL)
def gemm_and_sum(a, b, c, d, partial, tile):
    """c = a @ b, and partial[p] = the sum over part p's rows i of d[i].T @ a[i]: two products
    that read a's rows (a pointwise layer's backward: gy, read once for its input gradient gy @
    w.T and its weight gradient x.T @ gy), each tile of ``tile`` rows used by both while it is
    in the cache. The caller sums the partials.

    Layout: a (M, K), c (M, N), d (M, L) row-major, b (K, N) any unit stride, partial (parts, L,
    K) row-major planes. Loop order: parts p (parallel), each its contiguous range of rows, in
    tiles: one BLAS call for the tile's rows of c, one adding the tile's product into
    partial[p]. Each thread owns its rows of c and its partial[p].
    """
    rows, parts = a.shape[0], partial.shape[0]
    for p in prange(parts):
        r0, r1 = _block(p, parts, rows, 1)
        if r0 == r1:
            partial[p] = 0
        for t0 in range(r0, r1, tile):
            t1 = min(t0 + tile, r1)
            gemm_plane(a[t0:t1], b, c[t0:t1], 0.0)
            gemm_plane(d[t0:t1].T, a[t0:t1], partial[p], 0.0 if t0 == r0 else 1.0)


# Columns of a block of gemm_thin's output: its rows of c stay in cache while b's rows stream by.
# 4096 ran U-Net's 2 x 64 head 1.3x faster than 1024 on one Zen 4 thread (fewer, longer runs of
# b's 64 rows for the prefetcher); a multiple of COLUMN_ALIGN.
THIN_COLUMNS = 4096


@njit(**CPU_KERNEL)
def gemm_thin(a, b, c, beta):
    """c[z] = a[z] @ b[z] + beta * c[z] for c's planes of few rows and many columns (a 1x1
    NCHW convolution into a few filters: U-Net's 2-class head is 2 x 64 @ 64 x 65536 a plane).
    OpenBLAS ran such products (to it, c's transpose: many rows, 1-8 columns) 1.2-5x slower
    than this kernel on a Zen 4 thread, x read at a quarter of the rate a stream reaches
    (cpu-thin-products.md).

    Layout as :func:`gemm`, b's planes row-major (unit column stride), a's planes any strides.
    C-contiguous b and c compile to unit-stride rows (rows indexed as x[z, row, j0:j1]); an 'A'
    layout b ran 1.8x slower, its stride unknown to LLVM. Loop order: (plane z, block of
    THIN_COLUMNS columns) pairs (parallel); in each, c's rows two at a time, b's rows four at a
    time, the two rows' block of c accumulated in place (in cache), so that b's block is read
    from memory once a pair of rows. Each thread owns its column blocks of c.
    """
    m, n = c.shape[1], c.shape[2]
    blocks = -(-n // THIN_COLUMNS)
    for part in prange(c.shape[0] * blocks):
        z, j0 = part // blocks, part % blocks * THIN_COLUMNS
        j1 = min(j0 + THIN_COLUMNS, n)
        for i in range(0, m, 2):
            _thin_rows(a, b, c, z, i, i + 1 < m, j0, j1, beta)


@njit(inline="always", cache=True)
def _thin_rows(a, b, c, z, i, pair, j0, j1, beta):
    """Rows i and (with ``pair``) i + 1 of gemm_thin's block c[z][:, j0:j1]."""
    k = a.shape[2]
    first, second = c[z, i, j0:j1], c[z, i + 1 if pair else i, j0:j1]
    for j in range(j1 - j0):  # beta 0 must not read c: it may hold anything, NaN included
        first[j] = 0 if beta == 0 else beta * first[j]
        if pair:
            second[j] = 0 if beta == 0 else beta * second[j]
    for q in range(0, k - k % 4, 4):
        b0, b1, b2, b3 = b[z, q, j0:j1], b[z, q + 1, j0:j1], b[z, q + 2, j0:j1], b[z, q + 3, j0:j1]
        a0, a1, a2, a3 = a[z, i, q], a[z, i, q + 1], a[z, i, q + 2], a[z, i, q + 3]
        if pair:
            h = i + 1
            e0, e1, e2, e3 = a[z, h, q], a[z, h, q + 1], a[z, h, q + 2], a[z, h, q + 3]
            for j in range(j1 - j0):
                v0, v1, v2, v3 = b0[j], b1[j], b2[j], b3[j]
                first[j] += a0 * v0 + a1 * v1 + a2 * v2 + a3 * v3
                second[j] += e0 * v0 + e1 * v1 + e2 * v2 + e3 * v3
        else:
            for j in range(j1 - j0):
                first[j] += a0 * b0[j] + a1 * b1[j] + a2 * b2[j] + a3 * b3[j]
    for q in range(k - k % 4, k):
        a0, e0, bq = a[z, i, q], a[z, i + 1 if pair else i, q], b[z, q, j0:j1]
        for j in range(j1 - j0):
            first[j] += a0 * bq[j]
            if pair:
                second[j] += e0 * bq[j]


# gemm_short's register tile: SHORT_ROWS rows of c x SHORT_COLUMNS columns (SHORT_COLUMNS /
# VECTOR_LANES vectors), its 24 accumulators of AVX-512's 32 registers, 12 of AVX2's 16.
SHORT_ROWS, SHORT_COLUMNS = (8, 48) if VECTOR_LANES == 16 else (6, 16)
# The columns past a tile whose lines each reduction step asks for (broadcast_fmas' ahead): the
# next tile's, in L2 by the time the tile after reads them (gemm_short_unfetched: none).
FETCHED_COLUMNS = SHORT_COLUMNS
# A plane's last TAIL_VECTORS vectors of columns or fewer past its last whole tile run in tiles
# one vector wide (_short_tiles_narrow) rather than in a whole tile ending at N, which
# recomputed up to SHORT_COLUMNS - 1 columns its neighbour had: 44 of 240 at 14 x 14 planes.
TAIL_VECTORS = 1


@njit(cache=True, fastmath=CPU_KERNEL["fastmath"])
def _short_tiles(weights, steps, bz, cz, m, k, first, last, end, zeros):
    """Tiles ``first`` to ``last`` of SHORT_COLUMNS columns of cz (M rows a row of end
    columns, flat), each a full reduction a block of SHORT_ROWS rows
    (gemm_short's loop body). A tile or block past ``end`` or M starts early enough to end there:
    it recomputes columns or rows its neighbour computed and stores the same sums."""
    n = np.uint64(cz.shape[0] // m)
    tile_ = stack_array(SHORT_ROWS, SHORT_COLUMNS, cz.dtype)
    acc = carray(tile_, (SHORT_ROWS, SHORT_COLUMNS))
    flat = carray(tile_, SHORT_ROWS * SHORT_COLUMNS)
    rows = carray(stack_array(SHORT_ROWS, 1, np.uint64), SHORT_ROWS)
    for tile in range(first, last):
        j0 = min(tile * SHORT_COLUMNS, end - SHORT_COLUMNS)
        columns = bz[:, j0:]
        for i0 in range(0, m, SHORT_ROWS):
            i0 = min(i0, m - SHORT_ROWS)
            for i in range(SHORT_ROWS):
                rows[i] = np.uint64(i0 + i)
            move_rows(zeros, ZERO, ZERO, flat, ZERO, np.uint64(SHORT_COLUMNS), SHORT_ROWS,
                      SHORT_COLUMNS)
            broadcast_fmas(acc, weights, rows, steps, columns, ZERO, np.uint64(k), SHORT_ROWS,
                           SHORT_COLUMNS, FETCHED_COLUMNS)
            move_rows(flat, ZERO, np.uint64(SHORT_COLUMNS), cz, np.uint64(i0) * n + np.uint64(j0),
                      n, SHORT_ROWS, SHORT_COLUMNS)


_short_tiles_narrow = variant(_short_tiles, "narrow", SHORT_COLUMNS=VECTOR_LANES,
                              FETCHED_COLUMNS=0)


@njit(**CPU_KERNEL)
def gemm_short(at, b, c):
    """c[z] = at[z].T @ b[z] for float32 planes of c of a few dozen rows and many columns,
    M >= SHORT_ROWS and N >= SHORT_COLUMNS: a 1x1 NCHW convolution (MobileNetV2's 96 -> 24
    projection, 24 x 96 @ 96 x 3136 an image) or its input gradient. BLAS sees c's transpose,
    3136 x 24, and packs the whole of its long operand, x, for the 2 * 24 multiply-adds an
    element it packs; here x's rows are read where they lie, from L1 after a tile's first
    block of rows (1.0-1.6x BLAS's speed at 16-64 rows on a Xeon: driver.SHORT_PLANE_ROWS).
    Each reduction step asks for the next tile's lines of its row of b into L2
    (FETCHED_COLUMNS): the rows lie a plane apart, more streams than the hardware's
    prefetchers follow, and a tile's first block of rows waited on memory (MobileNetV2's
    features.1.project, 16 x 32 @ 32 x 12544 x 8, 1.08 -> 0.85 ms on one Xeon thread; its
    features.3.project 1.51 -> 1.20).

    Layout: at (Za, K, M) C-contiguous, the left operand transposed (its values a tap of
    broadcast_fmas: a row of M weights a reduction step), Za 1 (shared) or Z; b (Z, K, N) with
    unit column stride; c (Z, M, N) C-contiguous. Loop order: (plane z, chunk of column tiles)
    in parallel; per tile of SHORT_COLUMNS columns, blocks of SHORT_ROWS rows, then the
    reduction (broadcast_fmas: per step one load of b's tile row a vector, a broadcast of
    at's value a row of c), the tile in vector registers, stored by whole vectors
    (_short_tiles). Up to TAIL_VECTORS vectors of columns past the last whole tile run in
    tiles a vector wide, with the last chunk; more in a last whole tile. Each task owns its
    chunk's columns of c[z]; a chunk holds two tiles at least.
    """
    k, m, n = at.shape[1], c.shape[1], c.shape[2]
    tail = n % SHORT_COLUMNS
    narrow = 0 < tail <= TAIL_VECTORS * VECTOR_LANES
    wide = n - tail if narrow else n
    tiles = -(-wide // SHORT_COLUMNS)
    chunks = max(1, tiles // 2)
    # each block starts from a row of zeros moved by whole vectors: set in a loop, the tile was
    # stored an element at a time and each of the reduction's first loads of it waited on 16
    # stores (that, with the reduction in loops: ResNet-50's 64 -> 64 layer at 89 GFLOP/s on a
    # Xeon thread; as here, 149)
    zeros = np.zeros(SHORT_COLUMNS, c.dtype)
    steps = np.arange(k).astype(np.uint64) * np.uint64(m)
    for part in prange(c.shape[0] * chunks):
        z, chunk = part // chunks, part % chunks
        weights, bz, cz = at[z % at.shape[0]].reshape(k * m), b[z], c[z].reshape(m * n)
        _short_tiles(weights, steps, bz, cz, m, k, tiles * chunk // chunks,
                     tiles * (chunk + 1) // chunks, wide, zeros)
        if narrow and chunk == chunks - 1:
            _short_tiles_narrow(weights, steps, bz, cz, m, k, wide // VECTOR_LANES,
                                -(-n // VECTOR_LANES), n, zeros)


# gemm_short asking for no lines ahead, for planes of few columns (driver.FETCH_PLANE_COLUMNS),
# a few tiles a row of b, where the requests cost more than they saved.
gemm_short_unfetched = variant(
    gemm_short, "unfetched",
    _short_tiles=variant(_short_tiles, "unfetched", FETCHED_COLUMNS=0))


# gemm_tall's register tile: TALL_ROWS rows of c x TALL_COLUMNS columns, 24 of AVX-512's 32
# registers (4 vectors a row), 12 of AVX2's 16 (2 a row). Of the tiles of 24 accumulators,
# 6 x 64 ran ResNet-50's NHWC 64 -> 64 product (25088 x 64 @ 64 x 64) at 300 GFLOP/s on two
# Xeon threads, 8 x 48 at 100 and 12 x 32 at 160 (BLAS 200).
TALL_ROWS, TALL_COLUMNS = (6, 64) if VECTOR_LANES == 16 else (6, 16)
# Blocks of rows a parallel task takes at least, one after another reading b from L1 or L2:
# at 4, the 6272 x 512 @ 512 x 128 and 6272 x 256 @ 256 x 256 products ran 0.7-0.8x as fast on
# two Xeon threads; at 16 as at 8.
TASK_BLOCKS = 8


@njit(cache=True, fastmath=CPU_KERNEL["fastmath"])
def _tall_blocks(az, bz, cz, steps, k, n, first, last, zeros):
    """Rows ``first`` to ``last`` (TALL_ROWS or more) of cz, a plane of N columns (flat), each
    block of TALL_ROWS rows a full reduction a tile of TALL_COLUMNS columns, across all of
    them (gemm_tall's loop body). A block or tile past ``last`` or N starts early enough to
    end there: it recomputes rows or columns its neighbour computed, in this task, and stores
    the same sums."""
    tile_ = stack_array(TALL_ROWS, TALL_COLUMNS, cz.dtype)
    acc = carray(tile_, (TALL_ROWS, TALL_COLUMNS))
    flat = carray(tile_, TALL_ROWS * TALL_COLUMNS)
    rows = carray(stack_array(TALL_ROWS, 1, np.uint64), TALL_ROWS)
    for i0 in range(first, last, TALL_ROWS):
        i0 = min(i0, last - TALL_ROWS)
        for i in range(TALL_ROWS):
            rows[i] = np.uint64(i0 + i) * np.uint64(k)
        for j0 in range(0, n, TALL_COLUMNS):
            j0 = min(j0, n - TALL_COLUMNS)
            move_rows(zeros, ZERO, ZERO, flat, ZERO, np.uint64(TALL_COLUMNS), TALL_ROWS,
                      TALL_COLUMNS)
            broadcast_fmas(acc, az, rows, steps, bz[:, j0:], ZERO, np.uint64(k), TALL_ROWS,
                           TALL_COLUMNS, 0)
            move_rows(flat, ZERO, np.uint64(TALL_COLUMNS), cz,
                      np.uint64(i0) * np.uint64(n) + np.uint64(j0), np.uint64(n), TALL_ROWS,
                      TALL_COLUMNS)


@njit(**CPU_KERNEL)
def gemm_tall(a, b, c):
    """c[z] = a[z] @ b[z] for float32 planes of many rows and a short b: an NHWC 1x1
    convolution (ResNet-50's 64 -> 64 layer, 25088 x 64 @ 64 x 64 a batch of 8) or its input
    gradient, the pixels its rows, and Winograd's products of a tile position. BLAS packs the
    whole of a, x, for the 2 * 64 multiply-adds an element it packs; here a's rows are read
    where they lie, into L1 once for all of c's columns, and b's rows stream from L1 or L2
    (1.3-1.4x BLAS's speed on ResNet-50's NHWC 1x1 layers: driver.TALL_FILTER_VALUES).

    Layout: a (Za, M, K), b (Zb, K, N) and c (Z, M, N) C-contiguous, Za and Zb 1 (shared) or
    Z, M >= TALL_ROWS and N >= TALL_COLUMNS. Loop order: (plane z, task of consecutive rows) in
    parallel; per block of TALL_ROWS rows, the tiles of TALL_COLUMNS columns, then the
    reduction (broadcast_fmas: per step one load of b's tile row a vector, a broadcast of a's
    value a row of c), the tile in vector registers, stored by whole vectors (_tall_blocks).
    Each task owns its rows of c[z], TASK_BLOCKS blocks or more (all M where fewer).
    """
    m, k, n = c.shape[1], a.shape[2], c.shape[2]
    tasks = max(1, m // (TALL_ROWS * TASK_BLOCKS))
    zeros = np.zeros(TALL_COLUMNS, c.dtype)
    steps = np.arange(k).astype(np.uint64)
    for part in prange(c.shape[0] * tasks):
        z, task = part // tasks, part % tasks
        _tall_blocks(a[z % a.shape[0]].reshape(m * k), b[z % b.shape[0]], c[z].reshape(m * n),
                     steps, k, n, m * task // tasks, m * (task + 1) // tasks, zeros)
