"""kernels/vector_moves.py's whole-vector moves against NumPy's indexing: every row count a tile can
have, evenly spaced and offset-array steps, float32 and float64, into poisoned destinations
(a cell a move must not touch keeps its poison)."""

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st
from numba import njit

from fastconv.kernels import VECTOR_LANES
from fastconv.kernels.vector_moves import move_rows, move_run, transpose_block

V = VECTOR_LANES
POISON = -7.5e30
SOME = min(10, V)  # a row count between 7 and the vector's width (AVX2's 8 lanes: 8)
MORE = V + 6  # more rows than lanes, the last block partial (AVX2's 14-pixel row tile)
TWICE = 2 * V
WIDE = 2 * V  # a two-vector tile's width (a literal must be a name, not an expression)


@njit(cache=False)
def _transpose(src, start, step, dst, to, to_step, rows, stored):
    # ``rows`` must reach the intrinsic as a literal: one compiled copy per count
    if rows == 1:
        transpose_block(src, start, step, dst, to, to_step, 1, stored)
    elif rows == 7:
        transpose_block(src, start, step, dst, to, to_step, 7, stored)
    elif rows == SOME:
        transpose_block(src, start, step, dst, to, to_step, SOME, stored)
    elif rows == MORE:
        transpose_block(src, start, step, dst, to, to_step, MORE, stored)
    elif rows == TWICE:
        transpose_block(src, start, step, dst, to, to_step, TWICE, stored)
    else:
        transpose_block(src, start, step, dst, to, to_step, V, stored)


@njit(cache=False)
def _move(src, start, step, dst, to, to_step, rows, wide):
    if wide:
        if rows == 7:
            move_rows(src, start, step, dst, to, to_step, 7, WIDE)
        else:
            move_rows(src, start, step, dst, to, to_step, 16, WIDE)
    elif rows == 7:
        move_rows(src, start, step, dst, to, to_step, 7, V)
    else:
        move_rows(src, start, step, dst, to, to_step, 16, V)


def _cells(start, step, count, width):
    """The flat cells row i < count, element j < width, covers: start + step * i + j, or
    start + step[i] + j for an array of offsets."""
    offsets = step if isinstance(step, np.ndarray) else step * np.arange(count)
    return (start + offsets[:count, None] + np.arange(width)[None, :]).astype(np.int64)


@settings(max_examples=30, deadline=None)
@given(rows=st.sampled_from([1, 7, SOME, V, MORE, TWICE]), stored=st.integers(1, V),
       dtype=st.sampled_from([np.float32, np.float64]), spaced=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_transpose_block_is_a_transposition(rows, stored, dtype, spaced, seed):
    """dst[to + j * to_step + i] == src[start + i * step + j] for i < rows (up to two
    vectors' worth, a block at a time), j < stored (V or fewer: a partial block); every other
    cell of dst unchanged; src unchanged."""
    rng = np.random.default_rng(seed)
    start, to = int(rng.integers(0, 5)), int(rng.integers(0, 5))
    step = (np.sort(rng.choice(np.arange(V, 4 * V), rows, replace=False)).astype(np.uint64)
            if spaced else np.uint64(V + rng.integers(0, 4)))
    to_step = np.uint64(rows + rng.integers(0, 4))
    src = rng.standard_normal(start + 4 * V * V + 8 * V).astype(dtype)
    dst = np.full(to + int(to_step) * V + V, POISON, dtype)
    before = src.copy()
    _transpose(src, np.uint64(start), step, dst, np.uint64(to), to_step, rows, stored)
    expected = np.full_like(dst, POISON)
    block = src[_cells(start, step.astype(np.int64) if spaced else int(step), rows, V)]
    expected[_cells(to, int(to_step), stored, rows)] = block.T[:stored]
    np.testing.assert_array_equal(dst, expected)
    np.testing.assert_array_equal(src, before)


@settings(max_examples=30, deadline=None)
@given(rows=st.sampled_from([7, 16]), wide=st.booleans(),
       dtype=st.sampled_from([np.float32, np.float64]), repeat=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_move_rows_copies_whole_rows(rows, wide, dtype, repeat, seed):
    """dst[to + i * to_step + v] == src[start + i * step + v] for i < rows, v < width (one
    or two vectors); a step of 0 repeats the source row; other cells keep their poison."""
    rng = np.random.default_rng(seed)
    width = 2 * V if wide else V
    start, to = int(rng.integers(0, 5)), int(rng.integers(0, 5))
    step = 0 if repeat else width + int(rng.integers(0, 4))
    to_step = width + int(rng.integers(0, 9))
    src = rng.standard_normal(start + step * rows + width).astype(dtype)
    dst = np.full(to + to_step * rows + width, POISON, dtype)
    _move(src, np.uint64(start), np.uint64(step), dst, np.uint64(to), np.uint64(to_step), rows,
          wide)
    expected = np.full_like(dst, POISON)
    expected[_cells(to, to_step, rows, width)] = src[_cells(start, step, rows, width)]
    np.testing.assert_array_equal(dst, expected)


@njit(cache=False)
def _run(src, start, dst, to, count):
    move_run(src, start, dst, to, count)


@settings(max_examples=40, deadline=None)
@given(count=st.integers(0, V), dtype=st.sampled_from([np.float32, np.float64]),
       start=st.integers(0, 2 * V), to=st.integers(0, 2 * V), seed=st.integers(0, 2**32 - 1))
@example(count=V, dtype=np.float32, start=3, to=5, seed=0)  # a whole vector: no mask
@example(count=V - 1, dtype=np.float64, start=1, to=0, seed=1)
def test_move_run_copies_count_elements(count, dtype, start, to, seed):
    """dst[to + v] == src[start + v] for v < count (0 to a whole vector); every other cell of
    dst keeps its poison, src is unchanged. The source ends where the run does: the masked
    lanes past it are never read (a read past an array's end would be one only a mask hides)."""
    rng = np.random.default_rng(seed)
    src = rng.standard_normal(start + count).astype(dtype)
    dst = np.full(to + V + V, POISON, dtype)
    before = src.copy()
    _run(src, np.uint64(start), dst, np.uint64(to), count)
    expected = np.full_like(dst, POISON)
    expected[to:to + count] = src[start:start + count]
    np.testing.assert_array_equal(dst, expected)
    np.testing.assert_array_equal(src, before)
