"""algo="depthwise" (the CPU's channel-vectorised depthwise convolution, kernels/conv_depthwise.py)
against the float64 NumPy reference and PyTorch, over hypothesis-drawn depthwise layers: channel
counts on both sides of the vector width, any window, stride, dilation and padding, both
layouts and dtypes, serial and parallel; and where it may not run."""

import functools

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from numba import njit
from numba.core import types
from numba.extending import intrinsic
from test_conv import _threads, paddings

import fastconv
import oracle
from fastconv import geometry, ops, registry
from fastconv.implementations.depthwise import BAND_PIXELS as WHOLE_PLANES
from fastconv.implementations.depthwise import MIN_TASKS
from fastconv.kernels import LINE_BYTES, VECTOR_LANES, aligned_zeros, borrowed, conv_depthwise
from fastconv.kernels.conv_depthwise import PIXELS
from oracle import random

# a band of one row, of a few, and the library's (these planes whole)
BAND_PIXELS = [1, 24, WHOLE_PLANES]
SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def depthwise_cases(draw, dtypes=(np.float32, np.float64)):
    """A depthwise layer (groups == C) with its arrays' shapes, in NCHW or NHWC: C on both
    sides of the vector width (8 or 16 float32 lanes) and of two, or whole vectors of it (which
    NHWC reads in place: conv_depthwise.depthwise_nhwc_rows), mostly one output channel a
    group (MobileNet's), sometimes a multiplier of 2 or 3; a third of them MobileNet's 3x3
    window, the rest any window, stride and dilation."""
    c = draw(st.one_of(st.integers(1, 40), st.sampled_from([VECTOR_LANES, 3 * VECTOR_LANES])))
    m = draw(st.sampled_from([1, 1, 1, 2, 3]))
    layout = draw(st.sampled_from(["NCHW", "NHWC"]))
    n, h, w = draw(st.integers(1, 3)), draw(st.integers(1, 12)), draw(st.integers(1, 12))
    pair = st.one_of(st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3)))
    if draw(st.integers(0, 2)) == 0:  # MobileNet's 3x3 window (stride 1: its row tiles)
        r = s = 3
        stride, dilation = draw(st.sampled_from([1, 1, 2])), 1
    else:
        r, s = draw(st.integers(1, 5)), draw(st.integers(1, 5))
        stride = draw(pair)
        dilation = draw(st.one_of(st.integers(1, 2),
                                  st.tuples(st.integers(1, 2), st.integers(1, 2))))
    kwargs = dict(stride=stride, padding=draw(paddings()), dilation=dilation, groups=c,
                  data_format=layout)
    x_shape = (n, c, h, w) if layout == "NCHW" else (n, h, w, c)
    w_shape = (c * m, 1, r, s) if layout == "NCHW" else (r, s, 1, c * m)
    return layer_case(draw, x_shape, w_shape, kwargs, dtypes)


def layer_case(draw, x_shape, w_shape, kwargs, dtypes):
    """A drawn layer as the tests take it: its shapes, arguments and geometry (none where the
    window does not fit the input: hypothesis draws again), a dtype and a seed."""
    try:
        g = geometry.conv_geometry(x_shape, w_shape, **kwargs)
    except ValueError:
        assume(False)  # the window does not fit this input
    return dict(x_shape=x_shape, w_shape=w_shape, kwargs=kwargs, geometry=g,
                dtype=draw(st.sampled_from(dtypes)), seed=draw(st.integers(0, 2**32 - 1)))


def arrays(case):
    """x, w, b and gy of a case, fresh standard-normal data."""
    rng = np.random.default_rng(case["seed"])
    g, dtype = case["geometry"], case["dtype"]
    return (random(rng, case["x_shape"], dtype), random(rng, case["w_shape"], dtype),
            random(rng, (g.K,), dtype), random(rng, g.y_shape, dtype))


def _tasks(monkeypatch, several, band_pixels):
    """How a kernel's tasks split the work: whether a task takes several images (at the
    suite's sizes only layers of many channel blocks do, a 7x7 plane's of 960 channels:
    depthwise._images; here, with no minimum count of tasks, every task takes the whole batch
    of these small planes), and its band's output pixels (BAND_PIXELS, which at 4096 keeps
    these planes whole: 1 makes a band of one row, whose window reads the rows of the next
    bands). Set on every example: hypothesis runs them all in one test's monkeypatch."""
    from fastconv.implementations import depthwise
    monkeypatch.setattr(depthwise, "MIN_TASKS", 1 if several else MIN_TASKS)
    monkeypatch.setattr(depthwise, "BAND_PIXELS", band_pixels)
    # the per-layer buffer geometry is cached by shape alone: a fresh cache per example
    monkeypatch.setattr(depthwise, "_buffer",
                        functools.lru_cache(maxsize=16)(depthwise._buffer.__wrapped__))


@SETTINGS
@given(case=depthwise_cases(), activation=st.sampled_from([None, "relu", "tanh", "sigmoid"]),
       with_bias=st.booleans(), parallel=st.booleans(), several=st.booleans(),
       band_pixels=st.sampled_from(BAND_PIXELS))
def test_forward_matches_reference_and_torch(case, activation, with_bias, parallel, several,
                                             band_pixels, monkeypatch):
    _threads(monkeypatch, parallel)
    _tasks(monkeypatch, several, band_pixels)
    x, w, b, _ = arrays(case)
    b = b if with_bias else None
    before = [a.copy() for a in (x, w) + ((b,) if with_bias else ())]
    y = ops.conv2d(x, w, b, activation=activation, algo="depthwise", **case["kwargs"])
    assert y.dtype == x.dtype and y.shape == case["geometry"].y_shape
    oracle.check({"y": y}, oracle.conv2d(x, w, b, activation=activation, **case["kwargs"]))
    for old, new in zip(before, (x, w) + ((b,) if with_bias else ()), strict=True):
        np.testing.assert_array_equal(old, new)


@SETTINGS
@given(case=depthwise_cases(), parallel=st.booleans(), several=st.booleans(),
       band_pixels=st.sampled_from(BAND_PIXELS))
def test_backward_matches_reference_and_torch_autograd(case, parallel, several, band_pixels,
                                                       monkeypatch):
    _threads(monkeypatch, parallel)
    _tasks(monkeypatch, several, band_pixels)
    x, w, _, gy = arrays(case)
    kwargs = case["kwargs"]
    before = [a.copy() for a in (x, w, gy)]
    gx = ops.conv2d_backward_input(gy, w, x.shape, algo="depthwise", **kwargs)
    gw = ops.conv2d_backward_weight(gy, x, w.shape, algo="depthwise", **kwargs)
    assert gx.dtype == gw.dtype == x.dtype
    assert gx.shape == x.shape and gw.shape == w.shape
    oracle.check({"gx": gx, "gw": gw}, oracle.conv2d(x, w, gy=gy, **kwargs))
    for old, new in zip(before, (x, w, gy), strict=True):
        np.testing.assert_array_equal(old, new)


@pytest.mark.parametrize("parallel", [False, True], ids=["one thread", "thread pool"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layer", [dict(stride=1, padding=1), dict(stride=2, padding=1),
                                   dict(stride=1, padding=2, dilation=2),
                                   dict(stride=(1, 3), padding=(0, 1))])
def test_nhwc_rows_tile_every_row_width(layer, dtype, parallel, monkeypatch, cpu_calls):
    """An NHWC layer of whole vectors of channels is read in place: rows 1 to 34 wide cover
    every split of a row into tiles of PIXELS (the last moved back) and a tile of
    HALF_PIXELS, every width of a row narrower than a tile (one tile of its own width), and,
    where the padding passes the stride (the dilated layer's 2), the columns it reaches past
    the first as tiles of one pixel; against the float64 reference and PyTorch, forward with
    a bias and an activation, the input gradient (a column stride of 2 a row of gx at a time,
    where a row holds a tile: depthwise_nhwc_stride2_input_rows; another stride's phase by
    phase, each phase's rows as narrow as they come) and the weight gradient (in place on
    every row: depthwise_nhwc_weight_rows, its parts summed into the filters by
    block_filters)."""
    _threads(monkeypatch, parallel)
    rng = np.random.default_rng(7)
    c = 2 * VECTOR_LANES
    kwargs = {"dilation": 1, **layer, "groups": c, "data_format": "NHWC"}
    for width in range(1, 35):
        x, w = random(rng, (2, 5, width, c), dtype), random(rng, (3, 3, 1, c), dtype)
        try:
            g = geometry.conv_geometry(x.shape, w.shape, **kwargs)
        except ValueError:
            continue  # the window does not fit this row
        b, gy = random(rng, (c,), dtype), random(rng, g.y_shape, dtype)
        kw = dict(algo="depthwise", **kwargs)
        calls = {"y": (ops.conv2d, (x, w, b), dict(activation="tanh", **kw)),
                 "gx": (ops.conv2d_backward_input, (gy, w, x.shape), kw),
                 "gw": (ops.conv2d_backward_weight, (gy, x, w.shape), kw)}
        ran = []
        for name, (op, args, op_kwargs) in calls.items():
            before = len(cpu_calls)
            want = (oracle.conv2d(x, w, b, activation="tanh", **kwargs) if name == "y"
                    else oracle.conv2d(x, w, gy=gy, **kwargs))
            oracle.check({name: op(*args, **op_kwargs)}, want)
            ran.append({kernel.py_func.__name__ for kernel, _ in cpu_calls[before:]})
        strided = _column_stride(kwargs["stride"]) == 2 and width >= PIXELS
        assert ran == [{"depthwise_nhwc_rows"},
                       {"depthwise_nhwc_stride2_input_rows" if strided else "depthwise_nhwc_rows"},
                       {"depthwise_nhwc_weight_rows", "block_filters"}], (width, ran)


def _column_stride(stride):
    return stride[1] if isinstance(stride, tuple) else stride


@SETTINGS
@given(n=st.integers(1, 3), h=st.integers(1, 9), width=st.integers(PIXELS, 40),
       blocks=st.integers(1, 3), window=st.tuples(st.integers(1, 5), st.integers(1, 5)),
       row_stride=st.integers(1, 3), padding=paddings(),
       dtype=st.sampled_from([np.float32, np.float64]), parallel=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_nhwc_column_stride_2_input_gradient_a_row_at_a_time(n, h, width, blocks, window,
                                                             row_stride, padding, dtype,
                                                             parallel, seed, monkeypatch,
                                                             cpu_calls):
    """An NHWC layer of whole vectors of channels at column stride 2 (any row stride, window
    and padding, undilated): its input gradient a row of gx at a time, each tile's even and
    odd columns two sub-tiles (depthwise_nhwc_stride2_input_rows), where every tap reaches no
    more than a sub-tile's first or last pixel outside gy's row (conv_depthwise.
    stride2_columns; else phase by phase), against the float64 reference and PyTorch: rows of
    whole tiles and rows whose last tile is moved back by an odd count, gx's rows and columns
    that no tap reaches (zeros), both dtypes, serial and parallel; gy and w unchanged."""
    _threads(monkeypatch, parallel)
    rng = np.random.default_rng(seed)
    c = blocks * VECTOR_LANES
    kwargs = dict(stride=(row_stride, 2), padding=padding, dilation=1, groups=c,
                  data_format="NHWC")
    x_shape, w = (n, h, width, c), random(rng, window + (1, c), dtype)
    try:
        g = geometry.conv_geometry(x_shape, w.shape, **kwargs)
    except ValueError:
        assume(False)  # the window does not fit this input
    gy = random(rng, g.y_shape, dtype)
    before, ran = [a.copy() for a in (gy, w)], len(cpu_calls)
    gx = ops.conv2d_backward_input(gy, w, x_shape, algo="depthwise", **kwargs)
    x = random(rng, x_shape, dtype)  # the reference's gradient does not depend on x
    oracle.check({"gx": gx}, oracle.conv2d(x, w, gy=gy, **kwargs))
    kernels = {kernel.py_func.__name__ for kernel, _ in cpu_calls[ran:]}
    rows = conv_depthwise.stride2_columns(g.W, g.OW, g.S, g.padding[2]) is not None
    # where no tap reaches gx (a one-row image under a one-row window at row stride 2, its tap
    # on the phase past the image), gx is zeros, as the reference's: written so by the rows'
    # kernel, which writes every cell, while the phases run no kernel
    assert kernels == ({"depthwise_nhwc_stride2_input_rows"} if rows else
                       {"depthwise_nhwc_rows"} if gx.any() else set()), kernels
    for old, new in zip(before, (gy, w), strict=True):
        np.testing.assert_array_equal(old, new)


@pytest.mark.parametrize("window, padding", [(3, 1), (5, 2), (2, 0), (1, 0), (3, 0)])
def test_stride2_rows_serve_the_usual_paddings_at_every_width(window, padding):
    """The tiles of depthwise_nhwc_stride2_input_rows cover every row of a tile or more of a
    stride-2 layer whose padding is at most half its window's (MobileNet's 3x3 and 5x5 with
    "same" padding, and "valid"): none falls back to the phases."""
    for width in range(PIXELS, 60):
        out = (width + 2 * padding - window) // 2 + 1
        assert conv_depthwise.stride2_columns(width, out, window, padding) is not None, width


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("stride", [1, 2])
def test_float32_mobilenet_like_layer_within_1e5_of_float64(layout, stride):
    """A MobileNetV2-shaped layer (3x3, pad 1, more channels than two vectors, a plane wider
    than the register tile): float32 sums over many pixels in the weight gradient."""
    rng = np.random.default_rng(0)
    x, w = random(rng, (4, 48, 30, 30), np.float32), random(rng, (48, 1, 3, 3), np.float32)
    if layout == "NHWC":
        x, w = x.transpose(0, 2, 3, 1).copy(), w.transpose(2, 3, 1, 0).copy()
    kwargs = dict(stride=stride, padding=1, groups=48, data_format=layout)
    y = ops.conv2d(x, w, activation="relu", algo="depthwise", **kwargs)
    gy = random(rng, y.shape, np.float32)
    gx = ops.conv2d_backward_input(gy, w, x.shape, algo="depthwise", **kwargs)
    gw = ops.conv2d_backward_weight(gy, x, w.shape, algo="depthwise", **kwargs)
    oracle.check({"y": y}, oracle.conv2d(x, w, activation="relu", **kwargs))
    oracle.check({"gx": gx, "gw": gw}, oracle.conv2d(x, w, gy=gy, **kwargs))


@pytest.mark.parametrize("op", ["conv2d", "conv2d_backward_input", "conv2d_backward_weight"])
def test_small_plane_layers_run_on_the_thread_pool(op, cpu_calls):
    """MobileNetV2's last depthwise layer (8x960x7x7) does few multiply-adds a cell but moves
    1.5 MB in and out of each of its kernels: counted in multiply-adds alone it ran on one
    thread at half the speed of two. Every kernel of each op counts as work for the pool, but
    block_filters summing the weight gradient's parts (8640 cells here), which waking the pool
    would cost more than it saves."""
    from fastconv.implementations import driver
    rng = np.random.default_rng(0)
    x, w, gy = (random(rng, s, np.float32) for s in ((8, 960, 7, 7), (960, 1, 3, 3),
                                                     (8, 960, 7, 7)))
    kw = dict(padding=1, groups=960, algo="depthwise")
    {"conv2d": lambda: ops.conv2d(x, w, **kw),
     "conv2d_backward_input": lambda: ops.conv2d_backward_input(gy, w, x.shape, **kw),
     "conv2d_backward_weight": lambda: ops.conv2d_backward_weight(gy, x, w.shape, **kw)}[op]()
    layer = [(k, work) for k, work in cpu_calls if k.py_func.__name__ != "block_filters"]
    assert layer and all(work >= driver.SERIAL_WORK for _, work in layer), [
        (k.py_func.__name__, work) for k, work in cpu_calls]


@pytest.mark.parametrize("op", registry.CONV_OPS)
def test_explicit_depthwise_on_another_layer_names_it(op):
    x, w = np.ones((1, 4, 5, 5)), np.ones((4, 2, 3, 3))  # two input channels a group
    gy = ops.conv2d(x, w, groups=2)
    call = {"conv2d": lambda: ops.conv2d(x, w, groups=2, algo="depthwise"),
            "conv2d_backward_input": lambda: ops.conv2d_backward_input(
                gy, w, x.shape, groups=2, algo="depthwise"),
            "conv2d_backward_weight": lambda: ops.conv2d_backward_weight(
                gy, x, w.shape, groups=2, algo="depthwise")}[op]
    with pytest.raises(ValueError, match=r"depthwise.*groups=2 over C=4.*\(1, 4, 5, 5\)"):
        call()


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 4), st.integers(1, 8), st.integers(1, 8), st.integers(1, 5))
def test_auto_never_weighs_depthwise_on_another_layer(groups, cg, kg, r):
    """Neither the rule nor autotuning's candidates: only where it applies."""
    g = geometry.conv_geometry((1, cg * groups, 6, 6), (kg * groups, cg, r, r), 1, "same", 1,
                               groups, "NCHW")
    for op in registry.CONV_OPS:
        applies = registry.refusal(op, "cpu", "depthwise", g) is None
        assert applies == (cg == 1)
        if not applies:
            assert registry.choose(op, "cpu", g) != "depthwise"


def test_depthwise_is_not_a_general_algorithm():
    """Tests and benchmarks that run every algorithm on any layer leave it out."""
    assert "depthwise" in fastconv.algorithms("cpu")
    assert "depthwise" not in registry.general("cpu")


@pytest.mark.parametrize("op", registry.CONV_OPS)
@pytest.mark.parametrize("channels, size, stride", [(144, 56, 1), (576, 14, 2), (960, 7, 1)])
def test_auto_picks_depthwise_for_mobilenet_layers(op, channels, size, stride):
    """The rule's structural choice (conv2d.choose_cpu, measured in
    benchmarks/results/cpu-depthwise-planes.md), for all three ops."""
    g = geometry.conv_geometry((8, channels, size, size), (channels, 1, 3, 3), stride, 1, 1,
                               channels, "NCHW")
    assert registry.choose(op, "cpu", g) == "depthwise"


@intrinsic
def _meminfo_address(typingctx, a):
    """The address of the reference-counted record an array's memory hangs from (0: none)."""
    def codegen(context, builder, signature, args):
        made = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.ptrtoint(made.meminfo, context.get_value_type(types.intp))
    return types.intp(a), codegen


@njit(cache=False)
def _borrowed_facts(a):
    view = borrowed(a)
    view[1, 0] = -view[0, 0]  # written where a lies
    return (_meminfo_address(a), _meminfo_address(view), view.ctypes.data, view.shape,
            view.strides, view.sum())


def test_a_borrowed_view_is_the_array_without_its_reference():
    """kernels.borrowed: the same array (its data, shape and strides; written through to the
    caller's), its meminfo null, so that the functions compiled apart it is passed to take no
    reference to it (depthwise_nhwc_rows' row levels: an atomic add a call and array)."""
    a = np.arange(1.0, 7.0).reshape(3, 2)[:, ::-1]
    owned, borrowed_, address, shape, strides, total = _borrowed_facts(a)
    assert owned != 0 and borrowed_ == 0
    assert (address, shape, strides) == (a.ctypes.data, a.shape, a.strides)
    assert a.tolist() == [[2.0, 1.0], [-2.0, 3.0], [6.0, 5.0]] and total == a.sum()


@njit(cache=False)
def _aligned_addresses(size, dtype):
    a, b = aligned_zeros(size, dtype), aligned_zeros(size + 1, dtype)
    return a.ctypes.data, b.ctypes.data, a.size, b.size, a.sum() + b.sum()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [1, 15, 16, 1000])
def test_kernel_buffers_start_on_a_cache_line(dtype, size):
    """The depthwise kernels' local buffers (kernels.aligned_zeros): a 64-byte vector at any
    whole-vector offset reads one cache line (np.zeros in a kernel aligns to 32 bytes)."""
    first, second, n, m, total = _aligned_addresses(size, dtype)
    assert first % LINE_BYTES == 0 and second % LINE_BYTES == 0
    assert (n, m, total) == (size, size + 1, 0)
