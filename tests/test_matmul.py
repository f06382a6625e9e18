"""Matrix products on fastconv's threads (kernels/gemm.py through driver.matmul and
driver.matmul_sum; gemm_thin for few rows, gemm_short for a few dozen) and ops.matmul, against
float64 NumPy and PyTorch: hypothesis-drawn sizes (empty and single rows, columns and
reductions among them), each operand row-major, column-major or with no unit stride, a shared
(2-D) left or right operand, accumulation, both dtypes, the parallel kernels and their serial
twins; every BLAS staying on one thread."""

import subprocess
import sys

import numba
import numpy as np
import pytest
import threadpoolctl
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import ops, runtime
from fastconv.implementations import driver
from fastconv.kernels import gemm
from oracle import random, tolerance

FLOATS = [np.float32, np.float64]
LAYOUTS = ["row", "column", "strided"]


def _operand(rng, shape, layout, dtype):
    """A random (Z, rows, columns) stack whose planes are stored ``layout``: row-major,
    column-major (a transposed view), or every other column of a wider array (no unit
    stride)."""
    z, rows, columns = shape
    if layout == "column":
        return random(rng, (z, columns, rows), dtype).transpose(0, 2, 1)
    if layout == "strided":
        return random(rng, (z, rows, 2 * columns), dtype)[:, :, ::2]
    return random(rng, shape, dtype)


def _parallel(monkeypatch, parallel):
    monkeypatch.setattr(driver, "SERIAL_WORK", 0 if parallel else 1 << 62)


def _error(got, want):
    return np.abs(got - want).max(initial=0.0) / max(np.abs(want).max(initial=0.0), 1.0)


def _poisoned(shape, layout, dtype):
    out = np.full(shape if layout != "column" else shape[:1] + shape[:0:-1], np.nan, dtype)
    return out.transpose(0, 2, 1) if layout == "column" else out


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(z=st.integers(1, 4), m=st.integers(1, 80), k=st.integers(0, 70), n=st.integers(1, 300),
       layouts=st.tuples(*[st.sampled_from(LAYOUTS)] * 2 + [st.sampled_from(["row", "column"])]),
       shared=st.sampled_from([None, "a", "b"]), add=st.booleans(),
       dtype=st.sampled_from(FLOATS), parallel=st.booleans(), seed=st.integers(0, 2**32 - 1))
@example(z=1, m=1, k=1, n=1, layouts=("row", "row", "row"), shared=None, add=False,
         dtype=np.float32, parallel=True, seed=0)
@example(z=2, m=33, k=0, n=17, layouts=("column", "strided", "column"), shared="a", add=False,
         dtype=np.float64, parallel=True, seed=0)
@example(z=1, m=70, k=9, n=40, layouts=("row", "row", "row"), shared="a", add=True,
         dtype=np.float32, parallel=True, seed=0)
def test_matmul_matches_float64_numpy(z, m, k, n, layouts, shared, add, dtype, parallel, seed,
                                      monkeypatch):
    _parallel(monkeypatch, parallel)
    rng = np.random.default_rng(seed)
    a = _operand(rng, (z, m, k), layouts[0], dtype)
    b = _operand(rng, (z, k, n), layouts[1], dtype)
    a, b = (a[0] if shared == "a" else a), (b[0] if shared == "b" else b)
    out = _poisoned((z, m, n), layouts[2], dtype)
    if add:
        out[...] = random(rng, out.shape, dtype)
    before, start = (a.copy(), b.copy()), out.astype(np.float64)
    want = np.matmul(a.astype(np.float64), b.astype(np.float64)) + (start if add else 0)
    driver.matmul(a, b, out, add)
    assert _error(out, want) < tolerance(dtype) * max(k, 1) ** 0.5
    np.testing.assert_array_equal(a, before[0])
    np.testing.assert_array_equal(b, before[1])


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(z=st.integers(1, 3), m=st.integers(1, driver.THIN_ROWS), k=st.integers(1, 40),
       extra=st.integers(0, gemm.THIN_COLUMNS + 100), a_layout=st.sampled_from(LAYOUTS),
       b_planes=st.sampled_from(["contiguous", "interleaved", "shared"]), add=st.booleans(),
       dtype=st.sampled_from(FLOATS), parallel=st.booleans(), seed=st.integers(0, 2**32 - 1))
@example(z=1, m=3, k=7, extra=1, a_layout="row", b_planes="contiguous", add=False,
         dtype=np.float32, parallel=True, seed=0)
def test_thin_products_stream_past_blas(z, m, k, extra, a_layout, b_planes, add, dtype, parallel,
                                        seed, monkeypatch, cpu_calls):
    """Products of at most THIN_ROWS rows and THIN_COLUMNS columns or more take gemm_thin: odd
    and even rows, reductions a multiple of its 4 rows of b or not (a single one among them), a
    short last block of columns, b's planes contiguous, interleaved (an NCHW batch's channel
    planes: unit-stride rows in no contiguous plane) or one shared plane."""
    _parallel(monkeypatch, parallel)
    rng = np.random.default_rng(seed)
    n = gemm.THIN_COLUMNS + extra
    a = _operand(rng, (z, m, k), a_layout, dtype)
    b = {"contiguous": lambda: random(rng, (z, k, n), dtype),
         "interleaved": lambda: random(rng, (k, z, n), dtype).transpose(1, 0, 2),
         "shared": lambda: random(rng, (k, n), dtype)}[b_planes]()
    out = random(rng, (z, m, n), dtype) if add else np.full((z, m, n), np.nan, dtype)
    before, start = (a.copy(), b.copy()), out.astype(np.float64)
    want = np.matmul(a.astype(np.float64), b.astype(np.float64)) + (start if add else 0)
    ran = len(cpu_calls)
    driver.matmul(a, b, out, add)
    assert [kernel.py_func.__name__ for kernel, _ in cpu_calls[ran:]] == ["gemm_thin"]
    assert _error(out, want) < tolerance(dtype) * max(k, 1) ** 0.5
    np.testing.assert_array_equal(a, before[0])
    np.testing.assert_array_equal(b, before[1])


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(z=st.integers(1, 3), m=st.integers(driver.THIN_ROWS + 1, 3 * driver.SHORT_PLANE_ROWS),
       k=st.one_of(st.integers(1, 90), st.sampled_from([driver.SHORT_REDUCTION,
                                                          driver.SHORT_REDUCTION + 1])),
       extra=st.integers(0, 450), a_layout=st.sampled_from(LAYOUTS),
       b_planes=st.sampled_from(["contiguous", "interleaved", "shared"]),
       parallel=st.booleans(), seed=st.integers(0, 2**32 - 1))
@example(z=2, m=driver.THIN_ROWS + 1, k=1, extra=1, a_layout="column", b_planes="interleaved",
         parallel=True, seed=0)
@example(z=1, m=driver.SHORT_PLANE_ROWS, k=driver.SHORT_REDUCTION + 1, extra=64,
         a_layout="column", b_planes="contiguous", parallel=True, seed=1)
def test_short_products_take_register_tiles(z, m, k, extra, a_layout, b_planes, parallel, seed,
                                            monkeypatch, cpu_calls):
    """On AVX-512 (driver.SHORT_TILES) float32 products of THIN_ROWS + 1 to SHORT_PLANE_ROWS
    rows (more where a has up to SHORT_FILTER_VALUES values), SHORT_PLANE_COLUMNS columns or
    more and reductions of up to SHORT_REDUCTION take gemm_short (gemm_short_unfetched below
    FETCH_PLANE_COLUMNS), others gemm_tall where it serves them (_register_tiles) or BLAS, and
    all of them on AVX2 BLAS: its last block of rows and
    tile of columns overlapping the ones before or not, a's planes in any layout,
    b's contiguous, interleaved (an NCHW batch's channel planes) or one shared plane; the same
    products accumulating, or in float64, take BLAS."""
    _parallel(monkeypatch, parallel)
    rng = np.random.default_rng(seed)
    n = driver.SHORT_PLANE_COLUMNS + extra
    _takes_register_tiles(_operand(rng, (z, m, k), a_layout, np.float32),
                          _right_operand(rng, z, k, n, b_planes), rng, cpu_calls)


def _right_operand(rng, z, k, n, planes):
    """A random float32 b of Z (K, N) planes: contiguous, interleaved (an NCHW batch's channel
    planes: unit-stride rows in no contiguous plane), one shared (K, N) plane, or one
    transposed plane (an NHWC layer's filters for its input gradient)."""
    return {"contiguous": lambda: random(rng, (z, k, n), np.float32),
            "interleaved": lambda: random(rng, (k, z, n), np.float32).transpose(1, 0, 2),
            "shared": lambda: random(rng, (k, n), np.float32),
            "transposed": lambda: random(rng, (n, k), np.float32).T}[planes]()


def _takes_register_tiles(a, b, rng, cpu_calls):
    """driver.matmul(a, b) computed afresh in float32 takes _register_tiles' kernel, and
    accumulating, or in float64, BLAS; each result against float64, a and b unchanged."""
    (z, m, k), n = a.shape, b.shape[-1]
    want = np.matmul(a.astype(np.float64), b.astype(np.float64))
    before = a.copy(), b.copy()
    for add, dtype, kernel in ((False, np.float32, _register_tiles(m, k, n, a, b)),
                               (True, np.float32, "gemm"), (False, np.float64, "gemm")):
        start = random(rng, (z, m, n), dtype) if add else np.full((z, m, n), np.nan, dtype)
        out = start.copy()
        ran = len(cpu_calls)
        driver.matmul(a.astype(dtype, copy=False), b.astype(dtype, copy=False), out, add)
        assert [k_.py_func.__name__ for k_, _ in cpu_calls[ran:]] == [kernel]
        expected = want + (start if add else 0)
        assert _error(out, expected) < tolerance(np.float32) * max(k, 1) ** 0.5, kernel
    np.testing.assert_array_equal(a, before[0])
    np.testing.assert_array_equal(b, before[1])


def _register_tiles(m, k, n, a, b):
    """The kernel driver.matmul picks for a float32 product of more than THIN_ROWS rows into a
    fresh row-major out: its rule restated, for a (Z, M, K) and b (Z, K, N) or a shared (K, N)."""
    if not driver.SHORT_TILES:
        return "gemm"
    if (k <= driver.SHORT_REDUCTION and n >= driver.SHORT_PLANE_COLUMNS
            and (m <= driver.SHORT_PLANE_ROWS or m * k <= driver.SHORT_FILTER_VALUES)
            and b.strides[-1] == b.itemsize):
        return "gemm_short" if n >= driver.FETCH_PLANE_COLUMNS else "gemm_short_unfetched"
    one_plane = b.ndim == 2 or b.shape[0] == 1
    if (m >= gemm.TALL_ROWS and n % gemm.TALL_COLUMNS == 0 and k * n <= driver.TALL_FILTER_VALUES
            and a.flags.c_contiguous and (one_plane or b.flags.c_contiguous)):
        return "gemm_tall"
    return "gemm"


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(z=st.integers(1, 3), m=st.integers(driver.THIN_ROWS + 1, 400), k=st.integers(1, 300),
       tiles=st.integers(1, 5), extra=st.sampled_from([0, 0, 1, gemm.VECTOR_LANES]),
       a_layout=st.sampled_from(LAYOUTS),
       b_planes=st.sampled_from(["contiguous", "interleaved", "shared", "transposed"]),
       parallel=st.booleans(), seed=st.integers(0, 2**32 - 1))
@example(z=1, m=25, k=64, tiles=1, extra=0, a_layout="row", b_planes="transposed",
         parallel=True, seed=0)
@example(z=2, m=100, k=driver.TALL_FILTER_VALUES // (2 * gemm.TALL_COLUMNS), tiles=2,
         extra=0, a_layout="row", b_planes="contiguous", parallel=True, seed=1)
@example(z=1, m=100, k=driver.TALL_FILTER_VALUES // (2 * gemm.TALL_COLUMNS) + 1, tiles=2,
         extra=0, a_layout="row", b_planes="shared", parallel=False, seed=2)
def test_tall_products_take_register_tiles(z, m, k, tiles, extra, a_layout, b_planes, parallel,
                                           seed, monkeypatch, cpu_calls):
    """On AVX-512 float32 products whose b has up to TALL_FILTER_VALUES values in a multiple of
    TALL_COLUMNS columns, more than THIN_ROWS rows (an NHWC 1x1 layer's pixels) and contiguous
    planes of a take gemm_tall where gemm_short does not (_register_tiles): b's planes
    contiguous, one shared plane or one transposed plane (an NHWC layer's filters for the
    input gradient, copied), or interleaved (BLAS unless one plane); just past the bound, a
    column off a tile or a vector off it BLAS; the same products accumulating, or in float64,
    BLAS."""
    _parallel(monkeypatch, parallel)
    rng = np.random.default_rng(seed)
    n = tiles * gemm.TALL_COLUMNS + extra
    _takes_register_tiles(_operand(rng, (z, m, k), a_layout, np.float32),
                          _right_operand(rng, z, k, n, b_planes), rng, cpu_calls)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(z=st.integers(1, 3), m=st.integers(gemm.TALL_ROWS, 2 * gemm.TALL_ROWS * gemm.TASK_BLOCKS
                                          + gemm.TALL_ROWS + 1),
       k=st.integers(0, 40), n=st.integers(gemm.TALL_COLUMNS, 3 * gemm.TALL_COLUMNS + 1),
       shared=st.sampled_from([None, "a", "b"]), parallel=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
@example(z=1, m=gemm.TALL_ROWS, k=1, n=gemm.TALL_COLUMNS, shared=None, parallel=True, seed=0)
@example(z=2, m=gemm.TALL_ROWS * gemm.TASK_BLOCKS * 2 + 1, k=3, n=gemm.TALL_COLUMNS + 1,
         shared="b", parallel=True, seed=0)
def test_gemm_tall_covers_every_cell_once_or_alike(z, m, k, n, shared, parallel, seed,
                                                   monkeypatch):
    """gemm_tall on its own, down to one register tile (M = TALL_ROWS, N = TALL_COLUMNS), a
    row and a column past whole blocks and tiles (the last of a task's blocks and of the
    tiles overlapping the one before), tasks of more than TASK_BLOCKS blocks, either operand
    shared by the planes, and an empty reduction: every cell of the poisoned c written with
    its own sum."""
    _parallel(monkeypatch, parallel)
    rng = np.random.default_rng(seed)
    a = random(rng, (1 if shared == "a" else z, m, k), np.float32)
    b = random(rng, (1 if shared == "b" else z, k, n), np.float32)
    want = np.matmul(a.astype(np.float64), b.astype(np.float64))
    c = np.full((z, m, n), np.nan, np.float32)
    driver.cpu_call(gemm.gemm_tall, z * m * n * k, a, b, c)
    assert _error(c, want) < tolerance(np.float32) * max(k, 1) ** 0.5


# The most columns past gemm_short's last whole tile that its tiles a vector wide take
NARROW_TAIL = gemm.TAIL_VECTORS * gemm.VECTOR_LANES


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(z=st.integers(1, 3), m=st.integers(gemm.SHORT_ROWS, 3 * gemm.SHORT_ROWS + 1),
       k=st.integers(0, 40), n=st.integers(gemm.SHORT_COLUMNS, 5 * gemm.SHORT_COLUMNS),
       shared=st.booleans(), parallel=st.booleans(), seed=st.integers(0, 2**32 - 1))
@example(z=1, m=gemm.SHORT_ROWS, k=1, n=gemm.SHORT_COLUMNS, shared=True, parallel=True, seed=0)
@example(z=2, m=gemm.SHORT_ROWS + 1, k=3, n=gemm.SHORT_COLUMNS + 1, shared=False, parallel=True,
         seed=0)
@example(z=1, m=gemm.SHORT_ROWS, k=5, n=4 * gemm.SHORT_COLUMNS + NARROW_TAIL, shared=True,
         parallel=True, seed=0)
@example(z=1, m=gemm.SHORT_ROWS, k=5, n=3 * gemm.SHORT_COLUMNS + NARROW_TAIL + 1, shared=True,
         parallel=False, seed=0)
def test_gemm_short_covers_every_cell_once_or_alike(z, m, k, n, shared, parallel, seed,
                                                    monkeypatch):
    """gemm_short and gemm_short_unfetched on their own, down to one register tile (M =
    SHORT_ROWS, N = SHORT_COLUMNS) and one tile and a column past it, where the tile a vector
    wide that ends the plane overlaps the whole one before, TAIL_VECTORS vectors past the last
    whole tile (narrow tiles, the second chunk's) and one column more (a last whole tile
    overlapping), and an empty reduction: every cell of the poisoned c written with its own
    sum (the lines asked for past b's end never read)."""
    _parallel(monkeypatch, parallel)
    rng = np.random.default_rng(seed)
    at = random(rng, (1 if shared else z, k, m), np.float32)
    b = random(rng, (z, k, n), np.float32)
    want = np.matmul(at.transpose(0, 2, 1).astype(np.float64), b.astype(np.float64))
    for kernel in (gemm.gemm_short, gemm.gemm_short_unfetched):
        c = np.full((z, m, n), np.nan, np.float32)
        driver.cpu_call(kernel, z * m * n * k, at, b, c)
        assert _error(c, want) < tolerance(np.float32) * max(k, 1) ** 0.5


@pytest.mark.parametrize("z, m, n, threads, blocks", [
    (1, 512, 98, 2, (2, 1)),     # ResNet's 7 x 7 layers: more filters than pixels, so rows
    (1, 64, 3136, 2, (1, 2)),    # an NCHW layer's pixels are its columns: rows stay whole
    (1, 25088, 256, 2, (2, 1)),  # an NHWC layer's are its rows: columns stay whole
    (1, 512, 98, 8, (8, 1)),
    (1, 40, 98, 2, (1, 1)),      # too few of either to share
    (1, 200, 256, 8, (2, 4)),    # the longer side as far as it goes, then the other for the rest
    (1, 256, 200, 8, (8, 1)),
    (1, 256, 130, 16, (8, 2)),
    (4, 512, 98, 2, (1, 1)),     # planes enough
    (3, 300, 512, 8, (1, 3)),
])
def test_planes_are_split_along_their_longer_side_first(z, m, n, threads, blocks):
    assert driver._blocks(z, m, n, threads) == blocks


@settings(max_examples=30, deadline=None)
@given(z=st.integers(1, 3), m=st.integers(1, 70), n=st.integers(1, 130),
       row_blocks=st.integers(1, 5), column_blocks=st.integers(1, 4),
       seed=st.integers(0, 2**32 - 1))
def test_gemm_blocks_cover_each_plane_once(z, m, n, row_blocks, column_blocks, seed):
    """Every (row block, column block) split, blocks empty where they outnumber the rows or
    aligned columns among them, writes each output once: beta = 1 over a random start would
    show a block written twice or missed."""
    rng = np.random.default_rng(seed)
    a, b = random(rng, (z, m, 5), np.float64), random(rng, (z, 5, n), np.float64)
    out = random(rng, (z, m, n), np.float64)
    want = np.matmul(a, b) + out
    gemm.gemm(a, b, out, row_blocks, column_blocks, 1.0)
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(z=st.integers(1, 9), m=st.integers(1, 12), k=st.integers(1, 200), n=st.integers(1, 30),
       layouts=st.tuples(*[st.sampled_from(LAYOUTS)] * 2), add=st.booleans(),
       dtype=st.sampled_from(FLOATS), parallel=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_matmul_sum_matches_float64_numpy(z, m, k, n, layouts, add, dtype, parallel, seed,
                                          monkeypatch):
    _parallel(monkeypatch, parallel)
    rng = np.random.default_rng(seed)
    a, b = _operand(rng, (z, m, k), layouts[0], dtype), _operand(rng, (z, k, n), layouts[1], dtype)
    out = random(rng, (m, n), dtype) if add else np.full((m, n), np.nan, dtype)
    want = np.einsum("zmk,zkn->mn", a.astype(np.float64), b.astype(np.float64))
    want += out if add else 0
    driver.matmul_sum(a, b, out, add)
    assert _error(out, want) < tolerance(dtype) * (z * k) ** 0.5


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("transposed", [False, True])
def test_ops_matmul_matches_torch(dtype, transposed):
    rng = np.random.default_rng(7)
    a = random(rng, (64, 400), dtype)
    b = random(rng, (120, 400), dtype).T if transposed else random(rng, (400, 120), dtype)
    got = ops.matmul(a, b)
    assert got.dtype == dtype and got.shape == (64, 120) and got.flags.c_contiguous
    want = torch.from_numpy(a.astype(np.float64)) @ torch.from_numpy(b.astype(np.float64))
    assert _error(got, want.numpy()) < tolerance(dtype) * 20


@pytest.mark.parametrize("a_shape, b_shape, match", [
    ((3, 4), (5, 6), r"a \(M, K\) and b \(K, N\), got shapes a \(3, 4\) and b \(5, 6\)"),
    ((3, 4, 1), (4, 2), r"got shapes a \(3, 4, 1\)"),
    ((4,), (4, 2), r"got shapes a \(4,\)"),
])
def test_ops_matmul_refuses_mismatched_shapes(a_shape, b_shape, match):
    with pytest.raises(ValueError, match=match):
        ops.matmul(np.ones(a_shape, np.float32), np.ones(b_shape, np.float32))


def test_ops_matmul_refuses_mixed_and_integer_dtypes():
    with pytest.raises(TypeError, match="share one dtype"):
        ops.matmul(np.ones((2, 3), np.float32), np.ones((3, 2), np.float64))
    with pytest.raises(TypeError, match="a must be float32 or float64, got int64"):
        ops.matmul(np.ones((2, 3), np.int64), np.ones((3, 2), np.int64))


def test_every_blas_runs_on_one_thread_beside_fastconvs():
    """set_num_threads(n) leaves every BLAS library on one thread (fastconv's products split
    over its own threads; a threading BLAS would spin a second pool beside them), and a product
    re-pins them where the caller raised them."""
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 threads: this machine gives Numba one")
    libraries = runtime._blas_libraries()
    before = fastconv.get_num_threads()
    try:
        fastconv.set_num_threads(2)
        assert fastconv.get_num_threads() == 2
        assert libraries and all(lib.num_threads == 1 for lib in libraries)
        with threadpoolctl.threadpool_limits(2, user_api="blas"):
            ops.matmul(np.ones((2, 3), np.float32), np.ones((3, 2), np.float32))
            assert all(lib.num_threads == 1 for lib in libraries)
    finally:
        fastconv.set_num_threads(before)


def test_products_fall_back_to_scipys_blas():
    """Where NumPy's BLAS is not the ILP64 OpenBLAS of its wheels, the products call SciPy's
    (32-bit INTEGERs, the same 64-bit words read by their low halves): the same results."""
    code = """
import threadpoolctl
threadpoolctl.threadpool_info = lambda: []
import numpy as np
from fastconv import ops
from fastconv.kernels import gemm
rng = np.random.default_rng(0)
a, b = rng.standard_normal((70, 300)), rng.standard_normal((300, 50))
error = np.abs(ops.matmul(a, b) - a @ b).max() / np.abs(a @ b).max()
print(gemm.BLAS.startswith("SciPy"), error < 1e-12)
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert run.stdout.split() == ["True", "True"], run.stderr
