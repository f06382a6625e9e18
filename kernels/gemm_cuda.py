"""Batched matrix products on the GPU: a hand-written tiled GEMM with the convolution's epilogue
fused, and that epilogue alone for products computed elsewhere (cuBLAS).

Operands are 3-D (plane, rows, columns) arrays of any strides: a left operand with one plane
(the filters) is shared by every plane, and a transposed operand arrives as a transposed view,
so one kernel serves the forward (Y = W X), the backward input (dX = W^T dY) and the backward
weight (dW = dY X^T, per plane, summed by the caller).
"""

from numba import int32, uint32

from .cuda_device import MAX_GRID_Z, activate, cuda, flat_groups, int32s, kernel, launch, plane_grid

# A block of THREADS threads owns a TILE_M x TILE_N tile of one output plane and each thread an
# 8 x 8 register tile of it, the cells (ty + 16 i, tx + 16 j): a warp's shared-memory reads
# then broadcast (a) or hit 16 consecutive banks (b), and its stores run along a row. K
# advances TILE_K at a time through two shared-memory stages: while the block multiplies one
# slice, each thread's loads of the next are in flight and land in the other stage.
TILE_M = TILE_N = 128
TILE_K = 8
SIDE = 16  # threads along each side of the block's tile
THREADS = SIDE * SIDE
REGISTER_TILE = TILE_M // SIDE
# A stage's rows are padded by 4 so that lanes staging 8 k of 4 rows hit 32 distinct banks.
ROW = TILE_M + 4
STAGE = TILE_K * ROW
BOTH_STAGES = 2 * STAGE
LOADS = TILE_M * TILE_K // THREADS  # elements of each operand a thread stages a slice


@kernel("flat", "int32x3", "flat", "int32x3", "flat", "int32x3", "int32x4", 1, "int")
def gemm(a, a_strides, b, b_strides, c, c_strides, sizes, bias, act):
    """c[z] = act(bias[:, None] + a[z] @ b[z]) for every plane z.

    Layout: each operand is the memory of a (planes, rows, columns) array as a flat
    contiguous array indexed through its strides in elements (a's plane stride is 0 when one
    a serves every plane, as the filters do); sizes = (planes, M, N, K); bias (M,). Offsets are
    32-bit (the launcher keeps every operand under 2**31 elements) and unsigned, so indexing
    costs no 64-bit arithmetic and no negative-index test. Grid: x over column tiles, y over
    row tiles, z over planes (a loop of stride gridDim.z).

    Staging: per slice a thread loads rows (of b: columns) r, r + 32, r + 64, r + 96 at one
    k, its lanes along the operand's unit-stride axis (32 rows at one k, or 8 k of 4 rows),
    zeros past M, N and K. Each thread then adds TILE_K rank-1 updates to its 8 x 8 register
    tile and writes only that tile's cells of c.
    """
    a_stage = cuda.shared.array(BOTH_STAGES, c.dtype)
    b_stage = cuda.shared.array(BOTH_STAGES, c.dtype)
    acc = cuda.local.array((REGISTER_TILE, REGISTER_TILE), c.dtype)
    a_next = cuda.local.array(LOADS, c.dtype)
    b_next = cuda.local.array(LOADS, c.dtype)
    a_reg = cuda.local.array(REGISTER_TILE, c.dtype)
    b_reg = cuda.local.array(REGISTER_TILE, c.dtype)
    planes, m_, n_, k_ = sizes
    a_plane, a_row_stride, a_k_stride = a_strides
    b_plane, b_k_stride, b_col_stride = b_strides
    c_plane, c_row_stride, c_col_stride = c_strides
    t = uint32(cuda.threadIdx.x)
    tx, ty = uint32(t % SIDE), uint32(t // SIDE)
    m0, n0 = int32(cuda.blockIdx.y * TILE_M), int32(cuda.blockIdx.x * TILE_N)
    if a_k_stride == 1:
        a_row, a_k = uint32(t // TILE_K), uint32(t % TILE_K)
    else:
        a_row, a_k = uint32(t % 32), uint32(t // 32)
    if b_k_stride == 1:
        b_col, b_k = uint32(t // TILE_K), uint32(t % TILE_K)
    else:
        b_col, b_k = uint32(t % 32), uint32(t // 32)
    a_step, b_step = uint32(32 * a_row_stride), uint32(32 * b_col_stride)
    a_store, b_store = uint32(a_k * ROW + a_row), uint32(b_k * ROW + b_col)
    a_rows_left, b_cols_left = int32(m_ - m0 - a_row), int32(n_ - n0 - b_col)
    zero = c.dtype.type(0)
    for z in range(int32(cuda.blockIdx.z), planes, int32(cuda.gridDim.z)):
        a_at = uint32(z * a_plane + (m0 + a_row) * a_row_stride + a_k * a_k_stride)
        b_at = uint32(z * b_plane + b_k * b_k_stride + (n0 + b_col) * b_col_stride)
        for i in range(REGISTER_TILE):
            for j in range(REGISTER_TILE):
                acc[i, j] = zero
        _fetch(a, a_at, a_step, a_rows_left, a_k < k_, a_next, zero)
        _fetch(b, b_at, b_step, b_cols_left, b_k < k_, b_next, zero)
        stage = uint32(0)
        for k0 in range(0, k_, TILE_K):
            for e in range(LOADS):
                a_stage[uint32(stage + a_store + uint32(32 * e))] = a_next[e]
                b_stage[uint32(stage + b_store + uint32(32 * e))] = b_next[e]
            cuda.syncthreads()  # staged; the other stage's readers have all moved on
            a_at = uint32(a_at + TILE_K * a_k_stride)
            b_at = uint32(b_at + TILE_K * b_k_stride)
            k1 = k0 + TILE_K
            _fetch(a, a_at, a_step, a_rows_left, k1 + a_k < k_, a_next, zero)
            _fetch(b, b_at, b_step, b_cols_left, k1 + b_k < k_, b_next, zero)
            a_read, b_read = uint32(stage + ty), uint32(stage + tx)
            # Two rank-1 updates a trip: LLVM does not unroll the whole slice, and this halves
            # the loop's own instructions.
            for _ in range(TILE_K // 2):
                _rank1_update(a_stage, b_stage, a_read, b_read, a_reg, b_reg, acc)
                _rank1_update(a_stage, b_stage, uint32(a_read + uint32(ROW)),
                              uint32(b_read + uint32(ROW)), a_reg, b_reg, acc)
                a_read, b_read = uint32(a_read + uint32(2 * ROW)), uint32(b_read + uint32(2 * ROW))
            stage = uint32(STAGE - stage)
        for i in range(REGISTER_TILE):
            m = uint32(m0 + ty + i * SIDE)
            if m < m_:
                for j in range(REGISTER_TILE):
                    n = uint32(n0 + tx + j * SIDE)
                    if n < n_:
                        c[uint32(z * c_plane + m * c_row_stride + n * c_col_stride)] = activate(
                            bias[m] + acc[i, j], act, c.dtype)
        cuda.syncthreads()  # the next plane's first slice overwrites the stages


@cuda.jit(device=True, inline="always")
def _fetch(x, at, step, left, k_inside, into, zero):
    """into[e] = x[at + e * step], the e-th of a thread's rows 32 apart, or zero where that
    row is ``left`` rows or more away or its k is past K."""
    for e in range(LOADS):
        into[e] = x[uint32(at + e * step)] if k_inside and 32 * e < left else zero


@cuda.jit(device=True, inline="always")
def _rank1_update(a_stage, b_stage, a_read, b_read, a_reg, b_reg, acc):
    """acc += outer(a_stage[a_read + 16 i], b_stage[b_read + 16 j]): one k of the slice."""
    for i in range(REGISTER_TILE):
        a_reg[i] = a_stage[a_read + uint32(i * SIDE)]
    for j in range(REGISTER_TILE):
        b_reg[j] = b_stage[b_read + uint32(j * SIDE)]
    for i in range(REGISTER_TILE):
        for j in range(REGISTER_TILE):
            acc[i, j] += a_reg[i] * b_reg[j]


@kernel(3, 1, "int")
def bias_activation(c, bias, act):
    """c[z, m, n] = act(bias[m] + c[z, m, n]), in place: the epilogue of a product computed
    outside fastconv. Layout: c (Z, M, N), bias (M,). Each thread owns one cell (threads
    over (n, m), planes z on grid z)."""
    z_, m_, n_ = c.shape
    n, m = cuda.grid(2)
    if m >= m_ or n >= n_:
        return
    for z in range(cuda.blockIdx.z, z_, cuda.gridDim.z):
        c[z, m, n] = activate(bias[m] + c[z, m, n], act, c.dtype)


def launch_gemm(a, b, c, bias, act, stream=0):
    """c = act(bias + a @ b) for (Z or 1, M, K), (Z, K, N) and (Z, M, N) arrays of any
    non-negative strides, a launch for each group of planes that 32-bit offsets reach."""
    z_, m_, n_ = c.shape
    for count, operands in flat_groups((a, b, c), z_):
        grid = (-(-n_ // TILE_N), -(-m_ // TILE_M), min(count, MAX_GRID_Z))
        launch(gemm, grid, THREADS, stream, *operands, int32s(count, m_, n_, a.shape[2]), bias,
               act)


def launch_bias_activation(c, bias, act, block=(32, 8), stream=0):
    z_, m_, n_ = c.shape
    launch(bias_activation, plane_grid(m_, n_, z_, block), block, stream, c, bias, act)
