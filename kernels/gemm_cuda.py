"""Batched matrix products on the GPU: a hand-written tiled GEMM with the convolution's epilogue
fused, and that epilogue alone for products computed elsewhere (cuBLAS).

Operands are 3-D (plane, rows, columns) arrays of any strides: a left operand with one plane
(the filters) is shared by every plane, and a transposed operand arrives as a transposed view,
so one kernel serves the forward (Y = W X), the backward input (dX = W^T dY) and the backward
weight (dW = dY X^T, per plane, summed by the caller).
"""

from .cuda_device import MAX_GRID_Z, activate, cuda, kernel, launch, plane_grid

# A block of THREADS threads owns a TILE_M x TILE_N tile of one output plane; each thread a
# (TILE_M / 16) x (TILE_N / 16) register tile of it, the cells (ty + 16 i, tx + 16 j): a warp's
# stores then run along a row and its shared-memory reads broadcast or hit distinct banks.
# K advances TILE_K at a time through shared memory.
TILE_M, TILE_N, TILE_K = 64, 64, 16
THREADS = (16, 16)
_RM, _RN = TILE_M // THREADS[1], TILE_N // THREADS[0]
_PER_THREAD_A = TILE_M * TILE_K // (THREADS[0] * THREADS[1])
_PER_THREAD_B = TILE_K * TILE_N // (THREADS[0] * THREADS[1])


@kernel(3, 3, 3, 1, "int")
def gemm(a, b, c, bias, act):
    """c[z] = act(bias[:, None] + a[z] @ b[z]) for every plane z (a[0] for all when a has one).

    Layout: a (Z or 1, M, K), b (Z, K, N), c (Z, M, N), bias (M,), any strides. Grid: x over
    column tiles, y over row tiles, z over planes (a loop of stride gridDim.z). Per TILE_K
    slice of K the block's threads copy a's TILE_M x TILE_K and b's TILE_K x TILE_N tiles to
    shared memory (consecutive threads take consecutive columns, zeros past the edges), then
    each thread adds TILE_K rank-1 updates to its register tile; it owns and writes only its
    register tile's cells of c.
    """
    a_tile = cuda.shared.array((TILE_K, TILE_M), c.dtype)  # transposed: a column per k
    b_tile = cuda.shared.array((TILE_K, TILE_N), c.dtype)
    acc = cuda.local.array((_RM, _RN), c.dtype)
    a_reg = cuda.local.array(_RM, c.dtype)
    b_reg = cuda.local.array(_RN, c.dtype)
    a_planes, m_, k_ = a.shape
    z_, n_ = b.shape[0], b.shape[2]
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    thread = ty * THREADS[0] + tx
    m0, n0 = cuda.blockIdx.y * TILE_M, cuda.blockIdx.x * TILE_N
    zero = c.dtype.type(0)
    for z in range(cuda.blockIdx.z, z_, cuda.gridDim.z):
        za = z if a_planes > 1 else 0
        for i in range(_RM):
            for j in range(_RN):
                acc[i, j] = zero
        for k0 in range(0, k_, TILE_K):
            for e in range(_PER_THREAD_A):
                flat = thread + e * THREADS[0] * THREADS[1]
                row, kk = flat // TILE_K, flat % TILE_K
                inside = m0 + row < m_ and k0 + kk < k_
                a_tile[kk, row] = a[za, m0 + row, k0 + kk] if inside else zero
            for e in range(_PER_THREAD_B):
                flat = thread + e * THREADS[0] * THREADS[1]
                kk, col = flat // TILE_N, flat % TILE_N
                inside = k0 + kk < k_ and n0 + col < n_
                b_tile[kk, col] = b[z, k0 + kk, n0 + col] if inside else zero
            cuda.syncthreads()  # tiles staged
            for kk in range(TILE_K):
                for i in range(_RM):
                    a_reg[i] = a_tile[kk, ty + i * THREADS[1]]
                for j in range(_RN):
                    b_reg[j] = b_tile[kk, tx + j * THREADS[0]]
                for i in range(_RM):
                    for j in range(_RN):
                        acc[i, j] += a_reg[i] * b_reg[j]
            cuda.syncthreads()  # tiles consumed: the next slice may overwrite them
        for i in range(_RM):
            m = m0 + ty + i * THREADS[1]
            if m < m_:
                for j in range(_RN):
                    n = n0 + tx + j * THREADS[0]
                    if n < n_:
                        c[z, m, n] = activate(bias[m] + acc[i, j], act, c.dtype)


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
    z_, m_, n_ = c.shape
    grid = (-(-n_ // TILE_N), -(-m_ // TILE_M), min(z_, MAX_GRID_Z))
    launch(gemm, grid, THREADS, stream, a, b, c, bias, act)


def launch_bias_activation(c, bias, act, block=(32, 8), stream=0):
    z_, m_, n_ = c.shape
    launch(bias_activation, plane_grid(m_, n_, z_, block), block, stream, c, bias, act)
