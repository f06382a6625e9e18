"""The layout moves of kernels/layout.py, parallel and serial, against NumPy: embed (padding,
and the transposed convolution's spread-out gradient, in both layouts), embed_channel_blocks
(NHWC padded into blocks of channels), merge_phases (a strided NCHW layer's input gradient
put together from its phases), channel_blocks and filter_blocks (channels in
blocks of a register tile's width, groups, zero lanes) and phase_filter_blocks and
phase_filter_blocks_hwio (a strided layer's filters, OIHW or HWIO, into its input-gradient
phases), taps_outermost (OIHW filters to HWIO) and block_filters (a weight gradient's blocks
as OIHW or HWIO filters), on poisoned outputs and inputs of any
strides, which they leave unchanged."""

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fastconv.implementations import driver
from fastconv.kernels import layout
from fastconv.kernels.variants import serial_twin
from oracle import random

FLOATS = [np.float32, np.float64]


def _kernel(kernel, parallel):
    return kernel if parallel else serial_twin(kernel)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3), c=st.one_of(st.integers(1, 5), st.integers(16, 40)),
       h=st.integers(1, 7), w=st.one_of(st.integers(1, 7), st.integers(8, 40)),
       top=st.integers(0, 3), left=st.integers(0, 3),
       stride=st.tuples(st.integers(1, 3), st.sampled_from([1, 1, 2, 3])),
       extra=st.tuples(st.integers(0, 3), st.integers(0, 3)), layout_=st.sampled_from(
           ["NCHW", "NHWC"]), strided=st.sampled_from(["no", "columns", "channels", "pixels"]),
       dtype=st.sampled_from(FLOATS), parallel=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_embed_places_each_image_in_zeros(n, c, h, w, top, left, stride, extra, layout_, strided,
                                          dtype, parallel, seed):
    """Rows wider and narrower than a vector, whole and partial vectors (an NCHW row moved under
    a mask), from a contiguous x, every second column of one, every second channel (rows
    still contiguous, the planes not), or an NHWC array's view (a pixel's channels contiguous,
    and a row of them where the target's pixels are adjacent too: NHWC, column stride 1; into
    NCHW, whole and partial blocks of channels, rows of whole and partial blocks of pixels)."""
    rng = np.random.default_rng(seed)
    x = {"no": lambda: random(rng, (n, c, h, w), dtype),
         "columns": lambda: random(rng, (n, c, h, 2 * w), dtype)[..., ::2],
         "channels": lambda: random(rng, (n, 2 * c, h, w), dtype)[:, ::2],
         "pixels": lambda: random(rng, (n, h, w, c), dtype).transpose(0, 3, 1, 2)}[strided]()
    before = x.copy()
    rows = top + (h - 1) * stride[0] + 1 + extra[0]
    columns = left + (w - 1) * stride[1] + 1 + extra[1]
    slack = int(rng.integers(0, 4))
    images = np.full((n, c * rows * columns + slack), np.nan, dtype)
    channel, row, column = driver.steps(layout_, c, rows, columns)
    _kernel(layout.embed, parallel)(x, images, top * row + left * column, channel,
                                    stride[0] * row, stride[1] * column)
    want = np.zeros((n, c, rows, columns), dtype)
    want[:, :, top:top + (h - 1) * stride[0] + 1:stride[0],
         left:left + (w - 1) * stride[1] + 1:stride[1]] = x
    flat = want if layout_ == "NCHW" else want.transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(images[:, :c * rows * columns], flat.reshape(n, -1))
    np.testing.assert_array_equal(images[:, c * rows * columns:], 0)
    np.testing.assert_array_equal(x, before)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 3), c=st.one_of(st.integers(1, 5), st.integers(14, 40)),
       h=st.integers(1, 6), w=st.integers(1, 9), top=st.integers(0, 2), left=st.integers(0, 2),
       extra=st.tuples(st.integers(0, 2), st.integers(0, 2)), strided=st.booleans(),
       dtype=st.sampled_from(FLOATS), parallel=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_embed_channel_blocks_pads_nhwc_images_into_blocks(n, c, h, w, top, left, extra, strided,
                                                           dtype, parallel, seed):
    """Whole and partial blocks of channels (fewer than a vector, a vector and a part, more),
    every lane past the channels zero; from a contiguous x or every second pixel of one."""
    rng = np.random.default_rng(seed)
    x = (random(rng, (n, 2 * h, 2 * w, c), dtype)[:, ::2, ::2] if strided
         else random(rng, (n, h, w, c), dtype))
    before = x.copy()
    blocks, vector = -(-c // layout.VECTOR), layout.VECTOR
    rows, columns = top + h + extra[0], left + w + extra[1]
    images = np.full((n, blocks * rows * columns * vector), np.nan, dtype)
    _kernel(layout.embed_channel_blocks, parallel)(x, images, (top * columns + left) * vector,
                                                   rows * columns * vector, columns * vector,
                                                   vector)
    want = np.zeros((n, rows, columns, blocks * vector), dtype)
    want[:, top:top + h, left:left + w, :c] = x
    want = want.reshape(n, rows, columns, blocks, vector).transpose(0, 3, 1, 2, 4)
    np.testing.assert_array_equal(images, want.reshape(n, -1))
    np.testing.assert_array_equal(x, before)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3), groups=st.integers(1, 3), kg=st.integers(1, 40),
       p=st.one_of(st.integers(1, 30), st.integers(60, 2 * layout.RUN_PIXELS + 5)),
       lanes=st.sampled_from([8, 16, 32]), strided=st.booleans(), dtype=st.sampled_from(FLOATS),
       parallel=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_channel_blocks_against_numpy(n, groups, kg, p, lanes, strided, dtype, parallel, seed):
    """Against NumPy: NHWC's pixels (``strided``) in runs of RUN_PIXELS, one or several and a
    short last one; C-contiguous planes go by dense_channel_blocks' transposes too (lanes of
    half a vector, one or two, as conv_blocked.lanes gives; half a vector's lanes for more
    channels than a vector, which it never gives, element by element): the same blocks."""
    rng = np.random.default_rng(seed)
    k = groups * kg
    a = random(rng, (n, p, k), dtype).transpose(0, 2, 1) if strided else random(rng, (n, k, p),
                                                                               dtype)
    before = a.copy()
    count = -(-kg // lanes)
    blocks = np.full((groups, count, n, p, lanes), np.nan, dtype)
    _kernel(layout.channel_blocks, parallel)(a, blocks)
    padded = np.zeros((n, groups, count * lanes, p), dtype)
    padded[:, :, :kg] = a.reshape(n, groups, kg, p)
    want = padded.reshape(n, groups, count, lanes, p).transpose(1, 2, 0, 4, 3)
    np.testing.assert_array_equal(blocks, want)
    if not strided:
        blocks[...] = np.nan
        assert _kernel(layout.dense_channel_blocks, parallel)(a, blocks)  # all finite
        np.testing.assert_array_equal(blocks, want)
    np.testing.assert_array_equal(a, before)


@settings(max_examples=60, deadline=None)
@given(groups=st.integers(1, 3), i=st.integers(1, 5), o=st.integers(1, 40), r=st.integers(0, 3),
       s=st.integers(1, 3), lanes=st.sampled_from([8, 16, 32]),
       source=st.sampled_from(["OIHW", "HWIO", "phase"]), dtype=st.sampled_from(FLOATS),
       parallel=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_filter_blocks_against_numpy(groups, i, o, r, s, lanes, source, dtype, parallel, seed):
    """A phase may have no taps on an axis (r == 0); the filters come as a view with the
    channel axes swapped (the forward's, of OIHW filters or of an NHWC layer's HWIO ones,
    whose output channels are runs) or as they are (a phase's)."""
    rng = np.random.default_rng(seed)
    if source == "phase":
        w = random(rng, (groups, i, o, r, s), dtype)
    elif source == "OIHW":
        w = random(rng, (groups, o, i, r, s), dtype).transpose(0, 2, 1, 3, 4)
    else:
        w = random(rng, (r, s, i, groups * o), dtype).transpose(3, 2, 0, 1).reshape(
            groups, o, i, r, s).transpose(0, 2, 1, 3, 4)
    before = w.copy()
    count = -(-o // lanes)
    blocks = np.full((groups, count, i * r * s, lanes), np.nan, dtype)
    assert _kernel(layout.filter_blocks, parallel)(w, blocks)  # every value finite
    padded = np.zeros((groups, i, count * lanes, r, s), dtype)
    padded[:, :, :o] = w
    want = padded.reshape(groups, i, count, lanes, r, s).transpose(0, 2, 1, 4, 5, 3)
    np.testing.assert_array_equal(blocks, want.reshape(groups, count, i * r * s, lanes))
    np.testing.assert_array_equal(w, before)


@settings(max_examples=60, deadline=None)
@given(parts=st.integers(1, 3), groups=st.integers(1, 3), i=st.integers(1, 5),
       o=st.integers(1, 40), taps=st.integers(1, 9), lanes=st.sampled_from([8, 16, 32]),
       hwio=st.booleans(), dtype=st.sampled_from(FLOATS), parallel=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_block_filters_undo_filter_blocks(parts, groups, i, o, taps, lanes, hwio, dtype,
                                          parallel, seed):
    """A weight gradient's float64 blocks (lanes past a group's o channels hold values the
    filters must not take), their parts summed in order, land on OIHW or HWIO filters in the
    output's dtype, every cell written (out starts poisoned); rows past a tile of VECTOR,
    partial channel blocks; the blocks left as they were."""
    rng = np.random.default_rng(seed)
    count = -(-o // lanes)
    blocks = random(rng, (parts, groups, count, i * taps, lanes), np.float64)
    before = blocks.copy()
    out = np.full(groups * o * i * taps, np.nan, dtype)
    _kernel(layout.block_filters, parallel)(blocks, o, taps, out, hwio)
    summed = blocks[0].copy()
    for part in blocks[1:]:
        summed += part
    oihw = (summed.transpose(0, 1, 3, 2).reshape(groups, count * lanes, i, taps)[:, :o]
            .reshape(groups * o, i, taps).astype(dtype))
    want = oihw.transpose(2, 1, 0) if hwio else oihw
    np.testing.assert_array_equal(out.reshape(want.shape), want)
    np.testing.assert_array_equal(blocks, before)


@settings(max_examples=60, deadline=None)
@given(groups=st.integers(1, 3), i=st.integers(1, 9), o=st.integers(1, 40), r=st.integers(1, 3),
       s=st.integers(1, 3), dtype=st.sampled_from(FLOATS), parallel=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_dense_channel_blocks_match_filter_blocks(groups, i, o, r, s, dtype, parallel, seed):
    """The transposing path (contiguous OIHW filters) writes what filter_blocks writes from
    the same filters seen with the channel axes swapped: whole VECTOR x VECTOR blocks, tap
    tails and partial channel blocks (o up to 40 over blocks of the tile's width), every lane
    of a block past the group's channels zero."""
    from fastconv.kernels import conv_blocked
    rng = np.random.default_rng(seed)
    w = random(rng, (groups * o, i, r, s), dtype)
    before = w.copy()
    lanes = conv_blocked.lanes(o)
    shape = (groups, -(-o // lanes), i * r * s, lanes)
    dense, blocks = np.full(shape, np.nan, dtype), np.full(shape, np.nan, dtype)
    assert _kernel(layout.dense_channel_blocks, parallel)(w.reshape(1, groups * o, -1),
                                                          dense[:, :, None])
    layout.filter_blocks(w.reshape(groups, o, i, r, s).transpose(0, 2, 1, 3, 4), blocks)
    np.testing.assert_array_equal(dense, blocks)
    np.testing.assert_array_equal(w, before)


@settings(max_examples=60, deadline=None)
@given(groups=st.integers(1, 3), kg=st.integers(1, 4),
       c=st.one_of(st.integers(1, 17), st.integers(30, 70)), r=st.integers(1, 6),
       s=st.integers(1, 6), stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       lanes=st.sampled_from([8, 16, 32]), hwio=st.booleans(), dtype=st.sampled_from(FLOATS),
       parallel=st.booleans(), seed=st.integers(0, 2**32 - 1))
@example(groups=2, kg=3, c=45, r=5, s=4, stride=(2, 1), lanes=32, hwio=False, dtype=np.float32,
         parallel=True, seed=1)  # a second whole vector of lanes, a partial one, a tap tail
@example(groups=2, kg=19, c=40, r=3, s=3, stride=(2, 2), lanes=16, hwio=True, dtype=np.float32,
         parallel=True, seed=1)  # whole blocks of filters, a partial one, the last filters
def test_phase_filter_blocks_send_each_tap_to_its_phase(groups, kg, c, r, s, stride, lanes, hwio,
                                                        dtype, parallel, seed):
    """Each phase (the taps r, s with r mod SH, s mod SW its own) gets (G, B, KG * taps, L):
    its taps in order, the C input channels in blocks of L, zero past C; taps more and fewer
    than a vector, whole and partial channel blocks and blocks of filters, lanes narrower
    than, as wide as and twice a vector, phases no tap lands on (a stride past the window);
    from OIHW filters and from HWIO ones (phase_filter_blocks_hwio)."""
    rng = np.random.default_rng(seed)
    w = random(rng, (groups * kg, c, r, s), dtype)
    before = w.copy()
    count = -(-c // lanes)
    phases = [(np.arange(rho, r, stride[0]), np.arange(sigma, s, stride[1]))
              for rho in range(stride[0]) for sigma in range(stride[1])]
    starts, steps = np.empty((r, s), np.uint64), np.empty((r, s), np.uint64)
    first = []
    for rows, cols in phases:
        first.append(sum(groups * count * kg * p.size * q.size for p, q in phases[:len(first)]))
        place = np.arange(rows.size * cols.size).reshape(rows.size, cols.size)
        starts[np.ix_(rows, cols)] = (first[-1] + place) * lanes
        steps[np.ix_(rows, cols)] = rows.size * cols.size * lanes
    out = np.full((groups * count * kg * r * s, lanes), np.nan, dtype)
    flat = w.reshape(groups * kg, c, -1)
    kernel, filters = ((layout.phase_filter_blocks_hwio, np.ascontiguousarray(flat.T)) if hwio
                       else (layout.phase_filter_blocks, flat))
    finite = _kernel(kernel, parallel)(filters, groups, starts.reshape(-1), steps.reshape(-1), out)
    assert finite is True
    padded = np.zeros((groups, kg, count * lanes, r, s), dtype)
    padded[:, :, :c] = w.reshape(groups, kg, c, r, s)
    for (rows, cols), start in zip(phases, first, strict=True):
        taps = padded[:, :, :, rows][:, :, :, :, cols].reshape(groups, kg, count, lanes, -1)
        want = taps.transpose(0, 2, 1, 4, 3).reshape(groups, count, -1, lanes)
        got = out[start:start + want.size // lanes].reshape(want.shape)
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(w, before)


@settings(max_examples=40, deadline=None)
@given(k=st.one_of(st.integers(1, 20), st.integers(30, 70)), c=st.integers(1, 12),
       taps=st.one_of(st.integers(1, 10), st.integers(15, 50)), dtype=st.sampled_from(FLOATS),
       parallel=st.booleans(), seed=st.integers(0, 2**32 - 1))
@example(k=33, c=3, taps=9, dtype=np.float32, parallel=True, seed=1)  # 3x3, a filter tail
def test_taps_outermost_moves_oihw_filters_to_hwio(k, c, taps, dtype, parallel, seed):
    """out[t, c, k] = w[k, c, t]: whole and partial blocks of filters, taps fewer and more than
    a vector (7x7's 49), the transposes' last loads kept inside w."""
    w = random(np.random.default_rng(seed), (k, c, taps), dtype)
    before = w.copy()
    out = np.full((taps, c, k), np.nan, dtype)
    _kernel(layout.taps_outermost, parallel)(w, out)
    np.testing.assert_array_equal(out, w.transpose(2, 1, 0))
    np.testing.assert_array_equal(w, before)


@settings(max_examples=40, deadline=None)
@given(groups=st.integers(1, 3), i=st.integers(1, 9), o=st.integers(1, 40), taps=st.integers(1, 9),
       value=st.sampled_from([np.nan, np.inf, -np.inf]),
       builder=st.sampled_from(["dense", "swapped", "phases", "hwio phases"]),
       dtype=st.sampled_from(FLOATS),
       parallel=st.booleans(), data=st.data())
def test_filter_blocks_report_a_non_finite_filter_value(groups, i, o, taps, value, builder, dtype,
                                                        parallel, data):
    """The three builders say so where one filter value (anywhere: any group, channel, tap) is
    NaN or infinite (and, the tests above, not where none is): the forward's row tiles skip the
    padding's window rows only where every one is finite, and the input gradient's phases
    take non-finite filters to the exact kernel (implementations/conv2d.py)."""
    from fastconv.kernels import conv_blocked
    w = random(np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))),
               (groups * o, i * taps), dtype)
    w.reshape(-1)[data.draw(st.integers(0, w.size - 1))] = value
    lanes = conv_blocked.lanes(o)
    blocks = np.full((groups, -(-o // lanes), i * taps, lanes), np.nan, dtype)
    if builder == "dense":
        finite = _kernel(layout.dense_channel_blocks, parallel)(w[None], blocks[:, :, None])
    elif builder == "swapped":
        swapped = w.reshape(groups, o, i, taps, 1).transpose(0, 2, 1, 3, 4)
        finite = _kernel(layout.filter_blocks, parallel)(swapped, blocks)
    else:  # o filters of i channels a group, one phase of every tap
        lanes = conv_blocked.lanes(i)
        phases = np.full((groups * -(-i // lanes) * o * taps, lanes), np.nan, dtype)
        starts = np.arange(taps, dtype=np.uint64) * np.uint64(lanes)
        flat = w.reshape(groups * o, i, taps)
        kernel, filters = ((layout.phase_filter_blocks_hwio, np.ascontiguousarray(flat.T))
                           if builder == "hwio phases" else (layout.phase_filter_blocks, flat))
        finite = _kernel(kernel, parallel)(filters, groups, starts,
                                           np.full(taps, taps * lanes, np.uint64), phases)
    assert finite is False


def test_moves_run_on_every_thread_from_a_fraction_of_serial_work():
    """A copy counts its cells as MOVED_CELL multiply-adds each: the 1M-cell padding of a
    64x16x28x28 batch goes to the thread pool, which a cell count alone would not send."""
    cells = 64 * 16 * 30 * 30
    assert cells < driver.SERIAL_WORK <= cells * driver.MOVED_CELL


def test_streaming_kernels_count_their_cells_as_moves(cpu_calls):
    """The kernels that stream memory (batch norm, pooling, the bias gradient, dropout) count
    their cells as moves too: on ResNet-8's 64x16x28x28 activations each now runs on the thread
    pool (0.55-0.65x the time on one thread, measured on this project's 2-vCPU Zen 5)."""
    from fastconv import ops
    rng = np.random.default_rng(0)
    x, gy = random(rng, (64, 16, 28, 28), np.float32), random(rng, (64, 16, 28, 28), np.float32)
    gamma, beta = random(rng, (16,), np.float32), random(rng, (16,), np.float32)
    y, mean, invstd = ops.batch_norm2d(x, gamma, beta, training=True, activation="relu")
    ops.batch_norm2d_backward(gy, x, gamma, mean, invstd, y=y, activation="relu")
    pooled, indices = ops.max_pool2d(x, 2, return_indices=True)
    ops.max_pool2d_backward(pooled, x, 2, indices=indices)
    ops.avg_pool2d_backward(ops.avg_pool2d(x, 2), x.shape, 2)
    w = random(rng, (16, 16, 3, 3), np.float32)  # the bias gradient, through a fused ReLU
    ops.conv2d_backward(gy, x, w, needs=(False, False, True), padding=1, activation="relu", y=y)
    ops.dropout_backward(gy, ops.dropout(x, 0.5, seed=0)[1], 0.5)
    assert len(cpu_calls) >= 9
    assert all(work >= driver.SERIAL_WORK for _, work in cpu_calls), [
        (kernel.py_func.__name__, work) for kernel, work in cpu_calls]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 5), h=st.integers(1, 9),
       w=st.one_of(st.integers(1, 20), st.integers(30, 70)),
       stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       dtype=st.sampled_from(FLOATS), parallel=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_merge_phases_puts_a_strided_layers_phases_together(n, c, h, w, stride, dtype, parallel,
                                                           seed):
    """Each phase's NCHW planes, one after another in each image, land on their strided
    sub-grid of x, every cell written (x starts poisoned); odd and even widths (the paired
    path of stride 2 takes even ones, by vectors: phase rows of whole vectors and of partial
    ones)."""
    rng = np.random.default_rng(seed)
    want = random(rng, (n, c, h, w), dtype)
    sh, sw = stride
    planes = [[np.ascontiguousarray(want[:, :, rho::sh, sigma::sw]).reshape(n, -1)
               for sigma in range(sw)] for rho in range(sh)]
    sizes = np.array([[p.shape[1] for p in row] for row in planes], np.int64)
    starts = (np.cumsum(sizes) - sizes.reshape(-1)).reshape(sizes.shape)
    phases = np.concatenate([p for row in planes for p in row], axis=1)
    before = phases.copy()
    x = np.full((n, c, h, w), np.nan, dtype)
    _kernel(layout.merge_phases, parallel)(phases, starts, x)
    np.testing.assert_array_equal(x, want)
    np.testing.assert_array_equal(phases, before)
