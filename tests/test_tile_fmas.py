"""kernels/tile_fmas.py's multiply-adds against a float64 NumPy reference, on this machine's vector
width: every tile shape a kernel uses (1-16 pixels, half a vector, one or two), float32 and
float64, runs of taps that are empty, one tap or many, bases and offsets anywhere in the input.
On AVX-512 machines the blocked kernels take broadcast_fmas for half-vector tiles only
(kernels/conv_blocked.py), so this is where AVX-512 runs its whole vectors at all;
tests/test_avx2_host.py runs the kernels with it."""

import functools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

from fastconv.kernels import VECTOR_LANES
from fastconv.kernels.tile_fmas import broadcast_fmas, lane_fmas
from oracle import random, rel_error, tolerance

V = VECTOR_LANES


@functools.cache
def _broadcast(pixels, width, ahead):
    """broadcast_fmas on a tile of ``pixels`` x ``width``, asking for ``ahead`` more columns'
    lines: the constants reach the intrinsic as the closure's, literals to Numba, so one
    compiled function per shape."""
    @njit(cache=False)
    def call(acc, a, bases, offsets, rows, start, stop):
        broadcast_fmas(acc, a, bases, offsets, rows, start, stop, pixels, width, ahead)
    return call


@functools.cache
def _lanes(pixels):
    @njit(cache=False)
    def call(acc, src, start, step, filters, t, first, last):
        lane_fmas(acc, src, start, step, filters, t, first, last, pixels)
    return call


def _pixels(width):
    return st.sampled_from((1, 4, 7, 10) if width == 2 * V else (1, 4, 7, 8, 16))


@settings(max_examples=60, deadline=None)
@given(data=st.data(), width=st.sampled_from((V // 2, V, 2 * V)),
       dtype=st.sampled_from((np.float32, np.float64)), taps=st.integers(0, 12),
       size=st.integers(1, 300), ahead=st.sampled_from((0, V, 3 * V)))
def test_broadcast_fmas_matches_the_reference(data, width, dtype, taps, size, ahead):
    """Whatever lines it asks for (past rows' end too: a prefetch never faults)."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    pixels = data.draw(_pixels(width))
    start = data.draw(st.integers(0, taps))
    stop = data.draw(st.integers(start, taps))
    # every read lands in a: base + offset < size
    bases = rng.integers(0, size, pixels).astype(np.uint64)
    offsets = np.array([rng.integers(0, size - int(bases.max()))
                        for _ in range(taps)], np.uint64).reshape(taps)
    a, rows = random(rng, (size,), dtype), random(rng, (taps, width), dtype)
    acc = random(rng, (pixels, width), dtype)
    inputs = [x.copy() for x in (a, bases, offsets, rows)]
    expected = acc.astype(np.float64)
    for t in range(start, stop):
        expected += np.outer(a[(bases + offsets[t]).astype(np.int64)].astype(np.float64),
                             rows[t].astype(np.float64))
    _broadcast(pixels, width, ahead)(acc, a, bases, offsets, rows, np.uint64(start),
                              np.uint64(stop))
    assert rel_error(acc, expected) < tolerance(dtype)
    for x, before in zip((a, bases, offsets, rows), inputs, strict=True):
        np.testing.assert_array_equal(x, before)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), pixels=st.sampled_from((1, 2, 4, 7, 8)),
       dtype=st.sampled_from((np.float32, np.float64)), taps=st.integers(1, 9),
       first=st.booleans(), last=st.booleans())
def test_lane_fmas_matches_the_reference(data, pixels, dtype, taps, first, last):
    """Every pixel's multiply-add, the first and the last only where their flags are true: a
    pixel left out never reads its source, whose NaN would reach its accumulator."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    step = data.draw(st.sampled_from((V, 2 * V, 3 * V + 5)))  # a buffer's, NHWC images'
    reach = (pixels - 1) * step + V
    size = reach + data.draw(st.integers(0, 5)) * V
    start = data.draw(st.integers(0, size - reach))
    t = data.draw(st.integers(0, taps - 1))
    src, filters = random(rng, (size,), dtype), random(rng, (taps, V), dtype)
    acc = random(rng, (pixels, V), dtype)
    read = np.stack([src[start + j * step:start + j * step + V] for j in range(pixels)])
    taken = np.ones(pixels, bool)
    taken[0] &= first
    taken[-1] &= last
    for j in np.flatnonzero(~taken):
        src[start + j * step:start + j * step + V] = np.nan
    expected = acc.astype(np.float64) + (read.astype(np.float64)
                                         * filters[t].astype(np.float64) * taken[:, None])
    _lanes(pixels)(acc, src, np.uint64(start), np.uint64(step), filters, t, first, last)
    assert rel_error(acc, expected) < tolerance(dtype)
