"""conv2d forward and backward for every algorithm against the float64 NumPy reference, PyTorch
and finite differences, over hypothesis-drawn shapes, strides, paddings, dilations, groups,
layouts, dtypes and activations."""

import gc
import weakref

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import oracle
from fastconv import geometry, ops, registry, runtime
from fastconv.implementations import conv2d as conv2d_implementations
from fastconv.implementations import driver
from fastconv.kernels import LINE_BYTES, conv_blocked
from oracle import random, rel_error

# The algorithms that serve every layer: the ones for some layers only (winograd, depthwise)
# have tests of their own, over the layers they serve.
ALGOS = registry.general("cpu")
FAST = [a for a in ALGOS if a != "reference"]
VECTOR = conv_blocked.VECTOR  # the register tiles' float32 lanes: 16 on AVX-512, 8 on AVX2
SETTINGS = settings(max_examples=30, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def paddings():
    small = st.integers(0, 2)
    return st.one_of(small, st.tuples(small, small),
                     st.tuples(st.tuples(small, small), st.tuples(small, small)),
                     st.sampled_from(["same", "valid", "SAME", "Valid"]))


@st.composite
def conv_cases(draw, layouts=("NCHW", "NHWC"), dtypes=(np.float32, np.float64), max_groups=3):
    groups = draw(st.integers(1, max_groups))
    case = dict(
        # input channels a group: a few, or a vector's and more (an NHWC layer's channel-block
        # images, whole and partial blocks)
        N=draw(st.integers(1, 3)), C=groups * draw(st.one_of(st.integers(1, 3),
                                                             st.integers(15, 18))),
        # output channels a group: a few, or around the blocked kernels' register tile widths
        # (16 and 32 channels on AVX-512, 8 and 16 on AVX2), partial blocks included
        K=groups * draw(st.one_of(st.integers(1, 4), st.integers(7, 36))),
        R=draw(st.integers(1, 4)), S=draw(st.integers(1, 4)),
        H=draw(st.integers(1, 11)), W=draw(st.integers(1, 11)),
        kwargs=dict(stride=draw(st.one_of(st.integers(1, 3), st.tuples(st.integers(1, 3),
                                                                       st.integers(1, 3)))),
                    padding=draw(paddings()),
                    dilation=draw(st.one_of(st.integers(1, 2), st.tuples(st.integers(1, 2),
                                                                         st.integers(1, 2)))),
                    groups=groups, data_format=draw(st.sampled_from(layouts))),
        dtype=draw(st.sampled_from(dtypes)), seed=draw(st.integers(0, 2**32 - 1)))
    try:
        case["geometry"] = geometry.conv_geometry(*_shapes(case), **case["kwargs"])
    except ValueError:
        assume(False)  # the window does not fit this input
    return case


def _shapes(case):
    """x and w shapes of a case in its layout."""
    n, c, h, w, k, r, s = (case[a] for a in "NCHWKRS")
    groups = case["kwargs"]["groups"]
    if case["kwargs"]["data_format"] == "NCHW":
        return (n, c, h, w), (k, c // groups, r, s)
    return (n, h, w, c), (r, s, c // groups, k)


def _arrays(case):
    rng = np.random.default_rng(case["seed"])
    x_shape, w_shape = _shapes(case)
    g = case["geometry"]
    return (random(rng, x_shape, case["dtype"]), random(rng, w_shape, case["dtype"]),
            random(rng, (g.K,), case["dtype"]), random(rng, g.y_shape, case["dtype"]))


def _float64(*arrays):
    return [a.astype(np.float64) for a in arrays]


def _threads(monkeypatch, parallel):
    """Run the next calls on the parallel kernels or on their serial twins (kernels/variants.py):
    the tiny shapes here would otherwise always take the serial ones."""
    monkeypatch.setattr(driver, "SERIAL_WORK", 0 if parallel else 1 << 62)


@SETTINGS
@given(case=conv_cases(), algo=st.sampled_from(ALGOS),
       activation=st.sampled_from([None, "relu", "tanh", "sigmoid"]),
       with_bias=st.booleans(), parallel=st.booleans())
def test_forward_matches_reference_and_torch(case, algo, activation, with_bias, parallel,
                                             monkeypatch):
    _threads(monkeypatch, parallel)
    x, w, b, _ = _arrays(case)
    b = b if with_bias else None
    y = ops.conv2d(x, w, b, activation=activation, algo=algo, **case["kwargs"])
    assert y.dtype == x.dtype and y.shape == case["geometry"].y_shape
    oracle.check({"y": y}, oracle.conv2d(x, w, b, activation=activation, **case["kwargs"]))


@SETTINGS
@given(case=conv_cases(max_groups=1),
       activation=st.sampled_from([None, "relu", "tanh", "sigmoid"]), with_bias=st.booleans(),
       parallel=st.booleans(), tile_rows=st.integers(1, 4))
def test_im2col_in_tiles_matches_reference_and_torch(case, activation, with_bias, parallel,
                                                     tile_rows, monkeypatch):
    """The im2col forward and input gradient in tiles of output rows (kernels/im2col.py's
    conv2d_tiles and conv2d_backward_input_tiles), which in the forward only images of over
    256 MB of columns take (the input gradient: over 2 MB, images enough for the threads): the
    thresholds made 0 here, tiles of 1-4 rows (a shorter last one where they do not divide the
    output), on either thread path."""
    g = case["geometry"]
    monkeypatch.setattr(conv2d_implementations, "TILED_FORWARD_BYTES", 0)
    monkeypatch.setattr(conv2d_implementations, "TILED_BACKWARD_BYTES", 0)
    assume(conv2d_implementations._in_tiles(g, case["dtype"]().itemsize, 0))
    row_bytes = g.C * g.R * g.S * g.OW * case["dtype"]().itemsize
    monkeypatch.setattr(conv2d_implementations, "TILE_BYTES", tile_rows * row_bytes)
    _threads(monkeypatch, parallel)
    x, w, b, gy = _arrays(case)
    b = b if with_bias else None
    before = x.copy(), w.copy(), gy.copy()
    y = ops.conv2d(x, w, b, activation=activation, algo="im2col", **case["kwargs"])
    gx = ops.conv2d_backward_input(gy, w, x.shape, algo="im2col", **case["kwargs"])
    assert y.dtype == gx.dtype == x.dtype and y.shape == g.y_shape and gx.shape == x.shape
    oracle.check({"y": y}, oracle.conv2d(x, w, b, activation=activation, **case["kwargs"]))
    oracle.check({"gx": gx}, oracle.conv2d(x, w, gy=gy, **case["kwargs"]))
    for array, copy in zip((x, w, gy), before, strict=True):
        np.testing.assert_array_equal(array, copy)


@SETTINGS
@given(case=conv_cases(), algo=st.sampled_from(ALGOS), parallel=st.booleans(),
       phases_in_place=st.booleans())
def test_backward_matches_reference_and_torch_autograd(case, algo, parallel, phases_in_place,
                                                       monkeypatch):
    """Both gradients and the bias's; a strided NCHW layer's blocked input gradient takes its
    phases into gx where they lie or into planes merged afterwards, as its size would choose."""
    _threads(monkeypatch, parallel)
    monkeypatch.setattr(conv2d_implementations, "PHASES_IN_PLACE_BYTES",
                        1 << 62 if phases_in_place else 0)
    x, w, _, gy = _arrays(case)
    kwargs = case["kwargs"]
    gx = ops.conv2d_backward_input(gy, w, x.shape, algo=algo, **kwargs)
    gw = ops.conv2d_backward_weight(gy, x, w.shape, algo=algo, **kwargs)
    gb = ops.conv2d_backward_bias(gy, data_format=kwargs["data_format"])
    assert gx.dtype == gw.dtype == gb.dtype == x.dtype
    oracle.check({"gx": gx, "gw": gw, "gb": gb}, oracle.conv2d(x, w, gy=gy, **kwargs))


@SETTINGS
@given(case=conv_cases(), algo=st.sampled_from(ALGOS), parallel=st.booleans(),
       activation=st.sampled_from(["relu", "tanh", "sigmoid"]))
def test_backward_through_the_fused_activation_matches_torch(case, algo, parallel, activation,
                                                              monkeypatch):
    """ops.conv2d_backward(activation=, y=) takes gy as the gradient of the activation's output
    and its slope from y, in the bias gradient's kernel."""
    _threads(monkeypatch, parallel)
    x, w, b, gy = _arrays(case)
    kwargs = case["kwargs"]
    y = ops.conv2d(x, w, b, activation=activation, algo=algo, **kwargs)
    inputs = [a.copy() for a in (gy, x, w, y)]
    gx, gw, gb = ops.conv2d_backward(gy, x, w, activation=activation, y=y, algo=algo, **kwargs)
    for before, after in zip(inputs, (gy, x, w, y), strict=True):
        np.testing.assert_array_equal(before, after)
    expected = oracle.conv2d(x, w, b, gy=gy, activation=activation, through_activation=True,
                             **kwargs)
    # y's rounding reaches the gradients through the slope, which cancels near a saturated tanh
    # or sigmoid (a 1x1x1x1 float32 tanh at y = -0.999864: gx and gb 1.9e-4 off the float64
    # reference; CI, 2026-12-05), so each is held to its dtype's tolerance plus what that
    # rounding moves it by (oracle.slope_rounding); a wrong slope moves it further and fails
    rounding = oracle.slope_rounding(x, w, gy, y, expected["reference"]["y"], activation,
                                     **kwargs)
    for name, got in (("gx", gx), ("gw", gw)):
        for source, want in expected.items():
            error = np.linalg.norm(got - want[name])
            bound = oracle.tolerance(got.dtype) * np.linalg.norm(want[name]) + rounding[name]
            assert error <= bound, f"{name} against {source}: {error:.2e} > {bound:.2e}"
    # gb's own sum cancels too: its rounding scales with the sum of its terms' magnitudes, not
    # the magnitude of their sum (a float32 sigmoid, 45 cells: gb 5.7e-3 off by 9e-8, 1.6e-5
    # of it; CI, 2026-12-02)
    magnitude = oracle.slope_magnitudes(gy, oracle.SLOPES[activation](expected["reference"]["y"]),
                                        kwargs["data_format"])
    for source, want in expected.items():
        error = np.linalg.norm(gb - want["gb"])
        assert error <= oracle.tolerance(gb.dtype) * magnitude + rounding["gb"], source


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("algo", ALGOS)
def test_results_are_contiguous_in_the_callers_layout(algo, layout):
    """y, gx and gw come C-contiguous in the caller's layout from every algorithm (the blocked
    weight gradient's came as a channel-innermost view, which PyTorch's registered shapes do
    not allow: tests/test_torch_ops.py's opcheck)."""
    rng = np.random.default_rng(0)
    x, w = random(rng, (2, 4, 9, 10), np.float32), random(rng, (6, 4, 3, 3), np.float32)
    if layout == "NHWC":
        x, w = x.transpose(0, 2, 3, 1).copy(), w.transpose(2, 3, 1, 0).copy()
    kw = dict(stride=2, padding=1, data_format=layout, algo=algo)
    y = ops.conv2d(x, w, **kw)
    gx = ops.conv2d_backward_input(y, w, x.shape, **kw)
    gw = ops.conv2d_backward_weight(y, x, w.shape, **kw)
    assert all(a.flags["C_CONTIGUOUS"] for a in (y, gx, gw)), [a.strides for a in (y, gx, gw)]


def test_backward_through_an_activation_needs_its_output():
    x, w, gy = np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2)), np.ones((1, 1, 2, 2))
    with pytest.raises(ValueError, match="activation='relu' needs y, the forward's output"):
        ops.conv2d_backward(gy, x, w, activation="relu")
    with pytest.raises(ValueError, match=r"y has shape \(1, 1, 3, 3\) but gy \(1, 1, 2, 2\)"):
        ops.conv2d_backward(gy, x, w, activation="relu", y=x)


@settings(max_examples=15, deadline=None)
@given(case=conv_cases(dtypes=(np.float64,)), algo=st.sampled_from(ALGOS))
def test_backward_matches_finite_differences(case, algo):
    """<gx, dx> and <gw, dw> equal the central difference of L = <gy, conv(x, w)>."""
    x, w, _, gy = _arrays(case)
    kwargs = case["kwargs"]
    rng = np.random.default_rng(case["seed"] + 1)
    dx, dw = random(rng, x.shape), random(rng, w.shape)

    def loss(x_, w_):
        return np.vdot(gy, ops.conv2d(x_, w_, algo="reference", **kwargs))

    eps = 1e-6
    fd_x = (loss(x + eps * dx, w) - loss(x - eps * dx, w)) / (2 * eps)
    fd_w = (loss(x, w + eps * dw) - loss(x, w - eps * dw)) / (2 * eps)
    gx = ops.conv2d_backward_input(gy, w, x.shape, algo=algo, **kwargs)
    gw = ops.conv2d_backward_weight(gy, x, w.shape, algo=algo, **kwargs)
    assert np.vdot(gx, dx) == pytest.approx(fd_x, rel=1e-6, abs=1e-6)
    assert np.vdot(gw, dw) == pytest.approx(fd_w, rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("algo", FAST)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("shape", [
    dict(x=(4, 1, 32, 32), w=(6, 1, 5, 5), stride=1, padding=0, groups=1),  # LeNet C1
    dict(x=(2, 16, 9, 9), w=(32, 16, 3, 3), stride=2, padding=1, groups=1),
    dict(x=(2, 32, 6, 6), w=(16, 32, 1, 1), stride=1, padding=0, groups=1),  # pointwise GEMM
    dict(x=(2, 8, 7, 7), w=(8, 1, 3, 3), stride=1, padding="same", groups=8),  # depthwise
    dict(x=(3, 16, 5, 5), w=(120, 16, 5, 5), stride=1, padding=0, groups=1),  # LeNet C5
    dict(x=(3, 6, 4, 3), w=(9, 2, 4, 3), stride=2, padding=0, groups=3),  # grouped, whole
], ids=["lenet_c1", "3x3_stride2", "1x1", "depthwise", "lenet_c5", "whole_input_grouped"])
def test_float32_layers_within_1e5_of_float64(shape, layout, algo):
    """Named layer shapes at sizes where float32 accumulation error would show."""
    rng = np.random.default_rng(0)
    x, w = random(rng, shape["x"], np.float32), random(rng, shape["w"], np.float32)
    if layout == "NHWC":
        x, w = x.transpose(0, 2, 3, 1).copy(), w.transpose(2, 3, 1, 0).copy()
    kwargs = dict(stride=shape["stride"], padding=shape["padding"], groups=shape["groups"],
                  data_format=layout)
    y = ops.conv2d(x, w, activation="relu", algo=algo, **kwargs)
    gy = random(rng, y.shape, np.float32)
    gx = ops.conv2d_backward_input(gy, w, x.shape, algo=algo, **kwargs)
    gw = ops.conv2d_backward_weight(gy, x, w.shape, algo=algo, **kwargs)
    oracle.check({"y": y}, oracle.conv2d(x, w, activation="relu", **kwargs))
    oracle.check({"gx": gx, "gw": gw}, oracle.conv2d(x, w, gy=gy, **kwargs))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_whole_input_window_reads_strided_inputs(layout, cpu_calls):
    """One window per image makes the columns a view of x (no im2col; NHWC's rows in (R, S, C)
    order, the filters' flattened to match) and lets the backward GEMM write gx directly; a
    strided x must still be read right, and stay as it was."""
    rng = np.random.default_rng(5)
    big = random(rng, (4, 10, 5, 5), np.float32)
    x = big[:, ::2] if layout == "NCHW" else big[:, ::2].transpose(0, 2, 3, 1)
    w = random(rng, (7, 5, 5, 5), np.float32)
    w = w if layout == "NCHW" else w.transpose(2, 3, 1, 0)
    before = big.copy()
    kwargs = dict(data_format=layout)
    y = ops.conv2d(x, w, algo="im2col", **kwargs)
    gy = random(rng, y.shape, np.float32)
    gw = ops.conv2d_backward_weight(gy, x, w.shape, algo="im2col", **kwargs)
    gx = ops.conv2d_backward_input(gy, w, x.shape, algo="im2col", **kwargs)
    oracle.check({"y": y, "gx": gx, "gw": gw}, oracle.conv2d(x, w, gy=gy, **kwargs))
    np.testing.assert_array_equal(big, before)
    assert gw.flags.c_contiguous
    assert not [kernel for kernel, _ in cpu_calls if kernel.__module__.endswith("im2col")]


@pytest.mark.parametrize("algo", FAST)
@pytest.mark.parametrize("padding, window", [((0, 2), (1, 3)), ((2, 0), (3, 1)), (3, (3, 3))])
def test_taps_entirely_in_the_padding(algo, padding, window):
    """A tap that falls in the padding for every output (here the first tap of a 3-wide,
    dilation-2 window over a 1-pixel input padded by 2): im2col once zeroed cells past such a
    tap's row, corrupting the next image's columns (found by hypothesis)."""
    rng = np.random.default_rng(3)
    x, w = random(rng, (2, 1, 1, 1)), random(rng, (2, 1, *window))
    kwargs = dict(padding=padding, dilation=2)
    y = ops.conv2d(x, w, algo="reference", **kwargs)
    gy = random(rng, y.shape)
    assert rel_error(ops.conv2d(x, w, algo=algo, **kwargs), y) < 1e-12
    for op, args in (("conv2d_backward_input", (gy, w, x.shape)),
                     ("conv2d_backward_weight", (gy, x, w.shape))):
        want = getattr(ops, op)(*args, algo="reference", **kwargs)
        assert rel_error(getattr(ops, op)(*args, algo=algo, **kwargs), want) < 1e-12, op


@pytest.mark.parametrize("parallel", [False, True], ids=["one thread", "thread pool"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [5, 20, 40])  # a vector of channels or less, two, more than two
@pytest.mark.parametrize("stride", [2, (1, 2)])
def test_blocked_row_tiles_over_every_second_column(stride, k, dtype, parallel, monkeypatch,
                                                    cpu_calls):
    """A layer of column stride 2 (NCHW) takes conv2d_forward_rows' tiles, their input values
    two columns apart: rows of 7, 10, 13 and 16 outputs (every tile length, and a last tile
    moved back over the previous), against the float64 reference and PyTorch."""
    _threads(monkeypatch, parallel)
    rng = np.random.default_rng(k)
    for width in (13, 19, 25, 31):
        x, w, b = (random(rng, s, dtype) for s in ((2, 3, 5, width), (k, 3, 3, 3), (k,)))
        kwargs = dict(stride=stride, padding=1)
        y = ops.conv2d(x, w, b, activation="relu", algo="blocked", **kwargs)
        oracle.check({"y": y}, oracle.conv2d(x, w, b, activation="relu", **kwargs))
    tiled = [conv_blocked.row_pixels(ow, conv_blocked.lanes(k), np.dtype(dtype).itemsize)
             for ow in (7, 10, 13, 16)]  # None where a tile would not fit the registers
    assert dtype == np.float64 or any(p is not None for p in tiled)
    ran = [kernel.py_func.__name__ for kernel, _ in cpu_calls]
    assert len([name for name in ran if name.startswith("conv2d_forward_rows")
                and name.endswith("s2")]) == len(tiled) - tiled.count(None), ran


@pytest.mark.parametrize("parallel", [False, True], ids=["one thread", "thread pool"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("stride, step", [(2, "s6"), ((2, 1), "s3")])
def test_rgb_stem_row_tiles_read_nhwc_as_it_lies(stride, step, dtype, parallel, monkeypatch,
                                                 cpu_calls):
    """A 3-channel NHWC layer's images stay NHWC (padded, not transposed into NCHW): its row
    tiles' input values lie 3 x the column stride apart. Rows of 7, 10, 13 and 16 outputs at
    each column stride, forward and weight gradient, against the float64 reference and
    PyTorch."""
    _threads(monkeypatch, parallel)
    rng = np.random.default_rng(3)
    sw = stride if isinstance(stride, int) else stride[1]
    for ow in (7, 10, 13, 16):
        x = random(rng, (2, 9, (ow - 1) * sw + 1, 3), dtype)
        w, b = random(rng, (3, 3, 3, 32), dtype), random(rng, (32,), dtype)
        gy_shape = geometry.conv_geometry(x.shape, w.shape, stride, 1, 1, 1, "NHWC").y_shape
        gy = random(rng, gy_shape, dtype)
        kwargs = dict(stride=stride, padding=1, data_format="NHWC")
        y = ops.conv2d(x, w, b, activation="relu", algo="blocked", **kwargs)
        oracle.check({"y": y}, oracle.conv2d(x, w, b, activation="relu", **kwargs))
        gw = ops.conv2d_backward_weight(gy, x, w.shape, algo="blocked", **kwargs)
        oracle.check({"gw": gw}, oracle.conv2d(x, w, gy=gy, **kwargs))
    ran = [kernel.py_func.__name__ for kernel, _ in cpu_calls]
    tiled = [name for name in ran if name.startswith("conv2d_forward_rows")]
    assert dtype == np.float64 or tiled, ran
    assert all(name.endswith(step) for name in tiled), ran


@pytest.mark.parametrize("parallel", [False, True], ids=["one thread", "thread pool"])
@pytest.mark.parametrize("stride", [1, 2])
def test_rgb_output_input_gradient_reads_gy_as_it_lies(stride, parallel, monkeypatch,
                                                       cpu_calls):
    """A layer with 3 output channels (EDSR's tail) reads its 3-channel NHWC gy in place as
    the input gradient's images, its row tiles' values 3 apart (a strided layer's phases
    are stride-1 correlations); rows of 7 to 16 columns, against the float64 reference and
    PyTorch."""
    _threads(monkeypatch, parallel)
    rng = np.random.default_rng(5)
    for width in (7, 10, 13, 16):
        x = random(rng, (2, 9, width, 24), np.float32)
        w = random(rng, (3, 3, 24, 3), np.float32)
        kwargs = dict(stride=stride, padding=1, data_format="NHWC")
        gy = random(rng, geometry.conv_geometry(x.shape, w.shape, stride, 1, 1, 1,
                                                "NHWC").y_shape, np.float32)
        gx = ops.conv2d_backward_input(gy, w, x.shape, algo="blocked", **kwargs)
        oracle.check({"gx": gx}, oracle.conv2d(x, w, gy=gy, **kwargs))
    tiled = [kernel.py_func.__name__ for kernel, _ in cpu_calls
             if kernel.py_func.__name__.startswith("conv2d_forward_rows")]
    assert tiled and all(name.endswith("s3") for name in tiled), tiled


@pytest.mark.parametrize("parallel", [False, True], ids=["one thread", "thread pool"])
@pytest.mark.parametrize("c, groups, k, stride, dilation, dtype", [
    (16, 1, 40, 2, 1, np.float32),  # one whole block of channels, a two-vector tile
    (24, 1, 5, (1, 2), 2, np.float32),  # a partial block, a narrow tile
    (40, 2, 20, 1, 1, np.float32),  # groups whose channels straddle the blocks
    (32, 8, 16, 1, 1, np.float32),  # groups of 4 channels inside a block
    (32, 1, 20, (3, 2), 1, np.float64)])
def test_nhwc_layer_runs_on_channel_block_images(c, groups, k, stride, dilation, dtype, parallel,
                                                 monkeypatch, cpu_calls):
    """An NHWC layer of a vector's channels or more is padded into channel-block images
    (embed_channel_blocks) and takes conv2d_forward_rows' tiles a block (stride 1) or two
    apart, rows of 7 to 16 outputs; its input gradient reads gy so, its weight gradient x:
    each against the float64 reference and PyTorch; a strided layer's input gradient writes
    its phases into gx where they lie."""
    _threads(monkeypatch, parallel)
    rng = np.random.default_rng(c + k)
    for width in (15, 31):
        x, w, b = (random(rng, s, dtype)
                   for s in ((2, 5, width, c), (3, 3, c // groups, k), (k,)))
        kwargs = dict(stride=stride, padding=1, dilation=dilation, groups=groups,
                      data_format="NHWC")
        y = ops.conv2d(x, w, b, activation="relu", algo="blocked", **kwargs)
        oracle.check({"y": y}, oracle.conv2d(x, w, b, activation="relu", **kwargs))
    steps = 2 if (stride if isinstance(stride, int) else stride[1]) == 2 else 1
    ran = [kernel.py_func.__name__ for kernel, _ in cpu_calls]
    assert ran.count("embed_channel_blocks") == 2, ran
    rows = [name for name in ran if name.startswith("conv2d_forward_rows")]
    assert dtype == np.float64 or (
        len(rows) == 2 and all(name.endswith(f"s{steps * conv_blocked.VECTOR}")
                               for name in rows)), ran
    gy = random(rng, y.shape, dtype)
    gx = ops.conv2d_backward_input(gy, w, x.shape, algo="blocked", **kwargs)
    # a strided layer's phases written into gx's pixels where they lie, not merged afterwards
    assert "merge_phases" not in [kernel.py_func.__name__ for kernel, _ in cpu_calls]
    gw = ops.conv2d_backward_weight(gy, x, w.shape, algo="blocked", **kwargs)
    oracle.check({"gx": gx, "gw": gw}, oracle.conv2d(x, w, gy=gy, **kwargs))


@pytest.mark.parametrize("parallel", [False, True], ids=["one thread", "thread pool"])
@pytest.mark.parametrize("in_place", [True, False], ids=["in place", "into planes"])
@pytest.mark.parametrize("stride, dilation, groups, window", [
    (2, 1, 1, (5, 3)), ((2, 3), 2, 3, (3, 3)), ((3, 1), 1, 1, (2, 4))])
def test_strided_nchw_input_gradient_in_place_or_into_planes(stride, dilation, groups, window,
                                                             in_place, parallel, monkeypatch,
                                                             cpu_calls):
    """A strided NCHW layer's blocked input gradient writes its phases into gx where they lie
    (gx of PHASES_IN_PLACE_BYTES or fewer) or into planes of their own, then merged: both
    against the float64 reference and PyTorch, gy and w unchanged, at sizes either side of
    the threshold."""
    _threads(monkeypatch, parallel)
    rng = np.random.default_rng(11)
    x_shape, w_shape = (3, 2 * groups, 31, 29), (5 * groups, 2, *window)
    kwargs = dict(stride=stride, padding=(2, 1), dilation=dilation, groups=groups)
    gx_bytes = np.prod(x_shape) * 4  # the threshold at gx's size, or a byte below it
    monkeypatch.setattr(conv2d_implementations, "PHASES_IN_PLACE_BYTES",
                        gx_bytes if in_place else gx_bytes - 1)
    x, w = random(rng, x_shape, np.float32), random(rng, w_shape, np.float32)
    gy = random(rng, geometry.conv_geometry(x_shape, w_shape, **kwargs, data_format="NCHW")
                .y_shape, np.float32)
    before = gy.copy(), w.copy()
    gx = ops.conv2d_backward_input(gy, w, x.shape, algo="blocked", **kwargs)
    oracle.check({"gx": gx}, oracle.conv2d(x, w, gy=gy, **kwargs))
    np.testing.assert_array_equal(gy, before[0])
    np.testing.assert_array_equal(w, before[1])
    ran = [kernel.py_func.__name__ for kernel, _ in cpu_calls]
    assert ("merge_phases" in ran) != in_place, ran


@pytest.mark.parametrize("parallel", [False, True], ids=["one thread", "thread pool"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("stride", [2, (2, 3)])
def test_a_1x1_strided_layer_runs_on_the_pixels_it_reads(stride, layout, parallel, monkeypatch,
                                                         cpu_calls):
    """NHWC: its channel-block images hold only every stride-th pixel (the images of a
    stride-1 layer, their tiles a block apart), its input gradient is the stride-1 layer's at
    those pixels, zeros between and past them (no phases to merge), and im2col's forward and
    weight gradient take a copy of those pixels as their columns (no im2col copy); NCHW reads
    x in place. NHWC's copy and its spread into gx are fastconv's threads' (layout.embed), not
    NumPy's in the calling thread. Forward (with a bias and an activation through im2col),
    input and weight gradient against the float64 reference and PyTorch."""
    _threads(monkeypatch, parallel)
    rng = np.random.default_rng(7)
    x_shape, w_shape = ((2, 9, 32, 24), (1, 1, 12, 40)) if layout == "NHWC" else (
        (2, 24, 9, 32), (40, 12, 1, 1))
    x, w = random(rng, x_shape, np.float32), random(rng, w_shape, np.float32)
    kwargs = dict(stride=stride, groups=2, data_format=layout)
    y = ops.conv2d(x, w, algo="blocked", **kwargs)
    gy = random(rng, y.shape, np.float32)
    gw = ops.conv2d_backward_weight(gy, x, w.shape, algo="blocked", **kwargs)
    gx = ops.conv2d_backward_input(gy, w, x.shape, algo="blocked", **kwargs)
    oracle.check({"y": y}, oracle.conv2d(x, w, **kwargs))
    oracle.check({"gx": gx, "gw": gw}, oracle.conv2d(x, w, gy=gy, **kwargs))
    ran = [kernel.py_func.__name__ for kernel, _ in cpu_calls]
    forward = [name for name in ran if name.startswith("conv2d_forward")]
    assert forward and (layout == "NCHW") != forward[0].endswith(
        f"s{conv_blocked.VECTOR}"), ran
    assert "merge_phases" not in ran, ran  # no phases but one, or a small gx's in place
    del cpu_calls[:]  # im2col's input gradient: NHWC's a GEMM into the pixels read, no col2im
    gx = ops.conv2d_backward_input(gy, w, x.shape, algo="im2col", **kwargs)
    oracle.check({"gx": gx}, oracle.conv2d(x, w, gy=gy, **kwargs))
    ran = [kernel.py_func.__name__ for kernel, _ in cpu_calls]
    assert ("col2im" in ran) == (layout == "NCHW"), ran
    assert ran.count("embed") == (layout == "NHWC"), ran
    del cpu_calls[:]
    b = random(rng, w_shape[0] if layout == "NCHW" else w_shape[3], np.float32)
    y = ops.conv2d(x, w, b, activation="relu", algo="im2col", **kwargs)
    gw = ops.conv2d_backward_weight(gy, x, w.shape, algo="im2col", **kwargs)
    oracle.check({"y": y}, oracle.conv2d(x, w, b, activation="relu", **kwargs))
    oracle.check({"gw": gw}, oracle.conv2d(x, w, gy=gy, **kwargs))
    ran = [kernel.py_func.__name__ for kernel, _ in cpu_calls]
    assert ran.count("im2col") == (2 if layout == "NCHW" else 0), ran
    assert ran.count("embed") == (2 if layout == "NHWC" else 0), ran


@pytest.mark.parametrize("parallel", [False, True], ids=["one thread", "thread pool"])
@pytest.mark.parametrize("c, k, dtype", [(3, 2 * VECTOR, np.float32), (20, VECTOR, np.float64),
                                         (5, 8, np.float32)])
def test_blocked_weight_gradient_reads_an_nhwc_gradient_of_one_block(c, k, dtype, parallel,
                                                                      monkeypatch, cpu_calls):
    """An NHWC layer of one group whose output channels fill one register tile exactly (a
    stem's 32): the blocked weight gradient reads gy as its one block of lanes, no copy;
    against the float64 reference and PyTorch."""
    _threads(monkeypatch, parallel)
    rng = np.random.default_rng(c + k)
    x, w = random(rng, (2, 11, 9, c), dtype), random(rng, (3, 3, c, k), dtype)
    kwargs = dict(stride=2, padding=1, data_format="NHWC")
    gy = random(rng, ops.conv2d(x, w, **kwargs).shape, dtype)
    del cpu_calls[:]
    gw = ops.conv2d_backward_weight(gy, x, w.shape, algo="blocked", **kwargs)
    oracle.check({"gw": gw}, oracle.conv2d(x, w, gy=gy, **kwargs))
    ran = [kernel.py_func.__name__ for kernel, _ in cpu_calls]
    assert any(name.startswith("conv2d_backward_weight") for name in ran), ran
    assert not {"channel_blocks", "dense_channel_blocks"} & set(ran), ran


@pytest.mark.parametrize("parallel", [False, True], ids=["one thread", "thread pool"])
@pytest.mark.parametrize("c, k, stride, dtype, lanes", [
    (VECTOR, 40, 1, np.float32, VECTOR),  # x's channels the tile's lanes, gy's its taps
    (40, VECTOR, 2, np.float32, VECTOR),  # gy's, x's pixels read gathered
    (2 * VECTOR, 48, (1, 2), np.float64, 2 * VECTOR),  # a two-vector tile of float64
    (8, 20, 1, np.float32, 8)])  # half a vector on AVX-512, one on AVX2
def test_blocked_weight_gradient_reads_a_1x1_nhwc_layer_as_it_lies(c, k, stride, dtype, lanes,
                                                                    parallel, monkeypatch,
                                                                    cpu_calls):
    """A 1x1 unpadded NHWC layer of one group whose fewer channels are a tile's width: the
    blocked weight gradient takes those as its lanes and the other side's as its taps, copying
    neither operand into channel blocks; against the float64 reference and PyTorch."""
    _threads(monkeypatch, parallel)
    rng = np.random.default_rng(c * k)
    x, w = random(rng, (3, 9, 11, c), dtype), random(rng, (1, 1, c, k), dtype)
    kwargs = dict(stride=stride, data_format="NHWC")
    gy = random(rng, ops.conv2d(x, w, **kwargs).shape, dtype)
    del cpu_calls[:]
    gw = ops.conv2d_backward_weight(gy, x, w.shape, algo="blocked", **kwargs)
    oracle.check({"gw": gw}, oracle.conv2d(x, w, gy=gy, **kwargs))
    ran = [kernel.py_func.__name__ for kernel, _ in cpu_calls]
    weight = [name for name in ran if name.startswith("conv2d_backward_weight")]
    assert len(weight) == 1 and weight[0].endswith(f"x{lanes}"), ran
    assert not {"channel_blocks", "embed_channel_blocks", "dense_channel_blocks"} & set(ran), ran


@SETTINGS
@given(dilation=st.integers(1, 6), beyond=st.integers(-2, 3), stride=st.sampled_from([1, 2]),
       height=st.integers(1, 9), width=st.integers(13, 24), k=st.sampled_from([5, 20, 40]),
       dtype=st.sampled_from([np.float32, np.float64]), parallel=st.booleans(),
       span_bytes=st.sampled_from([1, 2000, conv_blocked.SPAN_BYTES]),
       seed=st.integers(0, 2**32 - 1))
def test_blocked_row_tiles_skip_the_window_rows_in_the_padding(
        dilation, beyond, stride, height, width, k, dtype, parallel, span_bytes, seed,
        monkeypatch):
    """The row tiles leave out a window row that reads only padding (conv2d_forward_rows'
    ``live``): dilated 3x3 windows with paddings short of their reach, at it and past it (whole
    output rows in the padding: the bias alone), as the forward and as the input gradient's
    phases, against the float64 reference and PyTorch; the band's tiles over all the taps at
    once or a span of one or more channels at a time (SPAN_BYTES). A non-finite filter value
    turns the skipping off, so that the padding's zeros make NaN with it as PyTorch's do."""
    _threads(monkeypatch, parallel)
    monkeypatch.setattr(conv_blocked, "SPAN_BYTES", span_bytes)
    rng = np.random.default_rng(seed)
    padding = max(1, 2 * dilation + beyond)
    x, w, b = (random(rng, s, dtype) for s in ((2, 3, height, width), (k, 3, 3, 3), (k,)))
    kwargs = dict(stride=stride, padding=padding, dilation=dilation)
    calls = _forward_rows_calls(monkeypatch)
    y = ops.conv2d(x, w, b, activation="tanh", algo="blocked", **kwargs)
    # float64 tiles of two vectors have no row tile (ROW_TILES): the generic tiles skip nothing
    assert calls or dtype == np.float64
    for period, live in _lives(calls):
        assert period == 9 and (live[0] != [0, period]).any()  # the top window row is padding
    gy = random(rng, y.shape, dtype)
    gx = ops.conv2d_backward_input(gy, w, x.shape, algo="blocked", **kwargs)
    oracle.check({"y": y, "gx": gx}, oracle.conv2d(x, w, b, gy=gy, activation="tanh", **kwargs))
    w[rng.integers(k), 1, 0, 0] = np.inf
    calls.clear()
    y = ops.conv2d(x, w, b, algo="blocked", **kwargs)
    oracle.check_nonfinite({"y": y}, oracle.conv2d(x, w, b, **kwargs))
    assert all((live == [0, period]).all() for period, live in _lives(calls))


def _forward_rows_calls(monkeypatch):
    """The arguments of each conv2d_forward_rows call from now on (a list that fills)."""
    calls, real = [], driver.cpu_call

    def spy(kernel, work, *args):
        if kernel.py_func.__name__.startswith("conv2d_forward_rows"):
            calls.append(args)
        return real(kernel, work, *args)
    monkeypatch.setattr(driver, "cpu_call", spy)
    return calls


def _lives(calls):
    """Each call's (channel_taps, live)."""
    return [args[9:11] for args in calls]


@pytest.mark.parametrize("span_bytes", [1, conv_blocked.SPAN_BYTES],
                         ids=["spans of a channel", "one span"])
@pytest.mark.parametrize("parallel", [False, True], ids=["one thread", "thread pool"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [5, 20, 40])
@pytest.mark.parametrize("dilation, width", [(6, 33), (12, 33), (10, 40)])
def test_blocked_row_tiles_skip_the_window_columns_in_the_padding(dilation, width, k, dtype,
                                                                  parallel, span_bytes,
                                                                  monkeypatch):
    """ASPP's dilated 3x3 windows (padding = dilation) on rows where edge tiles pay: the tiles
    of a row's first and last columns leave out the window columns in the padding and run
    before the tiles that overwrite the pixels they overlapped (conv2d_forward_rows'
    ``column_tiles``), as the forward and as the input gradient, against the float64 reference
    and PyTorch; with a non-finite filter value every tile runs all its columns. Edge tiles
    run where they cost fewer taps than plain ones: on AVX-512 in each case with a row tile,
    on AVX2 (longer tiles of one vector, shorter of two) in some. Over the taps at once, or a
    channel at a time (the tiles' sums saved between spans)."""
    _threads(monkeypatch, parallel)
    monkeypatch.setattr(conv_blocked, "SPAN_BYTES", span_bytes)
    rng = np.random.default_rng(dilation * width + k)
    x, w, b = (random(rng, s, dtype) for s in ((2, 3, 9, width), (k, 3, 3, 3), (k,)))
    kwargs = dict(padding=dilation, dilation=dilation)
    calls = _forward_rows_calls(monkeypatch)
    y = ops.conv2d(x, w, b, activation="relu", algo="blocked", **kwargs)
    tiles = [args[12] for args in calls]  # column_tiles
    pixels = conv_blocked.row_pixels(width, conv_blocked.lanes(k), np.dtype(dtype).itemsize)
    assert len(tiles) == (pixels is not None)
    if pixels is not None:
        # the first and last `dilation` columns read padding with one window column each
        middle, tiles_over = width - 2 * dilation, lambda n: -(-n // pixels)
        edges = 2 * tiles_over(dilation) * 2 + tiles_over(middle) * 3
        pays = middle >= pixels and edges < tiles_over(width) * 3
        assert (tiles[0][:, 2] - tiles[0][:, 1] < 3).any() == pays, tiles[0]
    gy = random(rng, y.shape, dtype)
    gx = ops.conv2d_backward_input(gy, w, x.shape, algo="blocked", **kwargs)
    oracle.check({"y": y, "gx": gx}, oracle.conv2d(x, w, b, gy=gy, activation="relu", **kwargs))
    w[rng.integers(k), 1, 1, 0] = np.inf
    calls.clear()
    y = ops.conv2d(x, w, b, algo="blocked", **kwargs)
    oracle.check_nonfinite({"y": y}, oracle.conv2d(x, w, b, **kwargs))
    assert all((args[12][:, 1:] == [0, 3]).all() for args in calls)


@settings(max_examples=300, deadline=None)
@given(size=st.integers(1, 64), before=st.integers(0, 30), after=st.integers(0, 30),
       step=st.integers(1, 2), columns=st.integers(1, 5), dilation=st.integers(1, 12),
       pixels=st.sampled_from(sorted({p for ps in conv_blocked.ROW_TILES.values() for p in ps})))
def test_column_tiles_leave_every_pixel_to_a_tile_that_ran_its_data(size, before, after, step,
                                                                    columns, dilation, pixels):
    """_column_tiles over random rows: every tile inside the row, every output column covered,
    and the last tile to store a column ran every window column that reads data for it (it may
    run more: padding reads zeros); never more taps than plain tiles side by side."""
    from fastconv.implementations.conv2d import _column_tiles
    reach = tuple(s * dilation for s in range(columns))
    width = (before + size + after - reach[-1] - 1) // step + 1
    assume(width >= pixels)
    tiles = _column_tiles(width, pixels, step, reach, (before, before + size))
    assert tiles.dtype == np.uint64 and ((tiles[:, 0] + pixels) <= width).all()
    last = {}
    for start, first, end in tiles.tolist():
        last.update({ow: (first, end) for ow in range(start, start + pixels)})
    assert sorted(last) == list(range(width))
    for ow, (first, end) in last.items():
        reads = [s for s, r in enumerate(reach) if before <= ow * step + r < before + size]
        assert all(first <= s < end for s in reads), (ow, reads, tiles)
    plain = -(-width // pixels) * columns
    assert (tiles[:, 2] - tiles[:, 1]).sum() <= plain


def test_column_tiles_of_aspp_run_13_window_columns_a_row_not_15():
    """ASPP's 3x3 at dilation 6 on 33 columns, tiles of 7: the first tile (columns 0-6) without
    window column 0 and the last (26-32) without column 2, then three tiles of all three over
    columns 6-26, which rewrite columns 6 and 26."""
    from fastconv.implementations.conv2d import _column_tiles
    assert _column_tiles(33, 7, 1, (0, 6, 12), (6, 39)).tolist() == [
        [0, 1, 3], [26, 0, 2], [6, 0, 3], [13, 0, 3], [20, 0, 3]]
    assert _column_tiles(33, 7, 1, (0, 6, 12), (0, 45)).tolist() == [  # nothing to leave out
        [0, 0, 3], [7, 0, 3], [14, 0, 3], [21, 0, 3], [26, 0, 3]]


@pytest.mark.parametrize("serial_below", [2**62, 0], ids=["one thread", "thread pool"])
def test_float32_bias_gradient_is_the_rounded_exact_sum(serial_below, monkeypatch):
    """The bias gradient sums every pixel of the batch: accumulated in float32 it lost ~1e-6
    of relative precision on 32k terms (and failed a hypothesis case whose terms cancelled);
    accumulated in float64 it is the exact sum rounded once."""
    monkeypatch.setattr(driver, "SERIAL_WORK", serial_below)
    gy = (np.random.default_rng(4).standard_normal((8, 3, 64, 64)) + 1000).astype(np.float32)
    want = gy.astype(np.float64).sum(axis=(0, 2, 3))
    gb = ops.conv2d_backward_bias(gy)
    assert gb.dtype == np.float32
    assert np.abs(gb - want).max() <= np.abs(want).max() * 2.0**-24 * 1.01


def test_tf_same_pads_the_odd_pixel_after():
    """7x7 stride 2 on 224 pads (2, 3) as TensorFlow does; checked against explicit padding."""
    rng = np.random.default_rng(1)
    x, w = random(rng, (1, 2, 224, 224)), random(rng, (3, 2, 7, 7))
    same = ops.conv2d(x, w, stride=2, padding="same")
    explicit = ops.conv2d(x, w, stride=2, padding=((2, 3), (2, 3)))
    assert same.shape == (1, 3, 112, 112)
    np.testing.assert_array_equal(same, explicit)


def test_activation_is_applied_in_the_kernel_epilogue():
    """Fused output equals activation(conv + b) for each activation and each algorithm."""
    rng = np.random.default_rng(2)
    x, w, b = random(rng, (2, 4, 8, 8)), random(rng, (6, 4, 3, 3)), random(rng, (6,))
    plain = ops.conv2d(x, w, b, algo="reference")
    expected = {"relu": np.maximum(plain, 0), "tanh": np.tanh(plain),
                "sigmoid": 1 / (1 + np.exp(-plain))}
    for algo in FAST:
        for name, want in expected.items():
            np.testing.assert_allclose(ops.conv2d(x, w, b, activation=name, algo=algo), want,
                                       rtol=1e-12, atol=1e-12)


def test_sigmoid_saturates_without_overflow():
    x = np.full((1, 1, 3, 3), 1.0, np.float32)
    w = np.full((2, 1, 1, 1), 1.0, np.float32) * np.array([1e4, -1e4], np.float32)[:, None,
                                                                                     None, None]
    with np.errstate(all="raise"):
        for algo in FAST:
            y = ops.conv2d(x, w, activation="sigmoid", algo=algo)
            np.testing.assert_array_equal(y[0, 0], 1)
            np.testing.assert_array_equal(y[0, 1], 0)


def test_workspace_is_reused_and_a_huge_one_is_not_kept(monkeypatch):
    """im2col's scratch survives between calls of one thread, up to KEPT_WORKSPACE_BYTES."""
    monkeypatch.undo()  # the real workspace, not the poisoned one of conftest
    monkeypatch.setattr(driver, "_scratch", type(driver._scratch)())
    first = driver.workspace((4, 5), np.float32)
    again = driver.workspace((2, 3), np.float64, slot=0)
    assert np.shares_memory(first, again)
    monkeypatch.setattr(driver, "KEPT_WORKSPACE_BYTES", 1000)
    huge = driver.workspace((1000,), np.float64)
    assert not np.shares_memory(huge, driver.workspace((4, 5), np.float32))
    assert driver._scratch.buffers[0].nbytes < 1000


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.uint8])
@pytest.mark.parametrize("shape", [(8, 14, 14, 48), (3, 1000), (4096,), 5000, np.int64(4096),
                                   (0, 5000), (2, 3), 7, ()])
def test_kernel_outputs_and_scratch_start_on_a_cache_line(shape, dtype, monkeypatch):
    """Every CPU array a kernel writes (driver.empty) and im2col's scratch (driver.workspace)
    of ALIGNED_BYTES or more starts on a cache line, NumPy's 16 bytes past one: an NHWC
    pixel's vectors of channels then read and write whole lines. Any shape np.empty takes, its
    cells writable and C-contiguous; a smaller one is np.empty's own."""
    monkeypatch.undo()  # the real allocations, not the poisoned ones of conftest
    monkeypatch.setattr(driver, "_scratch", type(driver._scratch)())
    want = np.empty(shape, dtype)
    for a in (driver.empty(np, shape, dtype), driver.workspace(np.shape(want), dtype)):
        assert (a.shape, a.dtype) == (want.shape, want.dtype)
        assert a.flags.c_contiguous and a.flags.writeable
        if want.nbytes >= driver.ALIGNED_BYTES:
            assert a.ctypes.data % LINE_BYTES == 0, (shape, dtype)
        a[...] = 1  # every cell its own
        assert a.sum() == a.size


def test_kernel_outputs_are_freed_with_their_last_view(monkeypatch):
    """An output of ALIGNED_BYTES or more comes from posix_memalign (runtime.aligned_bytes,
    where fastconv tunes malloc) and goes back to it when the last array viewing it goes, not
    before: a view of a slice keeps it."""
    monkeypatch.undo()
    if not runtime.MALLOC_TUNED:
        pytest.skip("malloc left as it was (FASTCONV_MALLOC=0 or not glibc): np.empty's arrays")
    out = driver.empty(np, (8, 14, 14, 48), np.float32)
    block = out
    while not isinstance(block, runtime._AlignedBlock):
        block = block.base
    freed = weakref.ref(block)
    del block
    view = out[2:5, ::2]
    view[...] = 3.0
    del out
    gc.collect()
    assert freed() is not None and view.sum() == 3.0 * view.size
    del view
    gc.collect()
    assert freed() is None


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("window", [1, 3])
@pytest.mark.parametrize("parallel, chunked", [(False, False), (True, False), (True, True)])
def test_grouped_im2col_takes_each_product_over_the_groups_planes(layout, n, window, parallel,
                                                                  chunked, monkeypatch):
    """A grouped layer's im2col products are one driver.matmul call over the groups' planes
    where its operands flatten (the weight gradient's always: it copies those that do not), one
    a group over the images' planes where they do not; with ``chunked`` an image a batch chunk,
    the weight gradient summed over them. Forward and both gradients against the float64
    reference and PyTorch, its arrays left as they were."""
    _threads(monkeypatch, parallel)
    if chunked:
        monkeypatch.setattr(conv2d_implementations, "CPU_WORKSPACE_BYTES", 1)
    groups, c, k = 4, 8, 12
    planes, real = [], driver.matmul
    monkeypatch.setattr(driver, "matmul", lambda a, b, out, add=False: (
        planes.append(out.shape[0] if out.ndim == 3 else 1), real(a, b, out, add)))
    rng = np.random.default_rng(5)
    nchw = layout == "NCHW"
    x = random(rng, (n, c, 9, 7) if nchw else (n, 9, 7, c))
    w = random(rng, (k, c // groups, window, window) if nchw else (window, window, c // groups, k))
    kwargs = dict(padding=window // 2, groups=groups, data_format=layout, algo="im2col")
    gy = random(rng, ops.conv2d(x, w, **kwargs).shape)
    copies = [a.copy() for a in (x, w, gy)]
    planes.clear()
    gw = ops.conv2d_backward_weight(gy, x, w.shape, **kwargs)
    g = geometry.conv_geometry(x.shape, w.shape, 1, window // 2, 1, groups, layout)
    chunks = conv2d_implementations._batch_chunks(g, x.itemsize, copies_operands=True)
    assert planes == [groups] * len(chunks)
    kwargs.pop("algo")
    y = ops.conv2d(x, w, algo="im2col", **kwargs)
    gx = ops.conv2d_backward_input(gy, w, x.shape, algo="im2col", **kwargs)
    oracle.check({"y": y}, oracle.conv2d(x, w, **kwargs))
    oracle.check({"gx": gx, "gw": gw}, oracle.conv2d(x, w, gy=gy, **kwargs))
    for array, copy in zip((x, w, gy), copies, strict=True):
        np.testing.assert_array_equal(array, copy)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("parallel", [False, True])
def test_im2col_takes_a_pointwise_batch_whole_where_its_columns_are_the_images(
        layout, parallel, monkeypatch):
    """A 1x1 layer's columns are x itself (gx itself for the input gradient), which needs no
    workspace: with room for no image's columns, its forward and input gradient are still one
    product over the whole batch's planes (NCHW) or rows (NHWC); the NCHW weight gradient,
    whose products copy the operands that do not flatten, keeps to an image a chunk. Values
    against the float64 reference and PyTorch, the arrays left as they were."""
    _threads(monkeypatch, parallel)
    monkeypatch.setattr(conv2d_implementations, "CPU_WORKSPACE_BYTES", 1)
    calls, real, real_sum = [], driver.matmul, driver.matmul_sum
    monkeypatch.setattr(driver, "matmul", lambda a, b, out, add=False: (
        calls.append(out.shape), real(a, b, out, add)))
    monkeypatch.setattr(driver, "matmul_sum", lambda a, b, out, add=False: (
        calls.append(a.shape[:1]), real_sum(a, b, out, add)))
    rng = np.random.default_rng(7)
    n, c, k = 3, 5, 11
    nchw = layout == "NCHW"
    x = random(rng, (n, c, 9, 8) if nchw else (n, 9, 8, c))  # planes past gathering's
    w = random(rng, (k, c, 1, 1) if nchw else (1, 1, c, k))
    kwargs = dict(data_format=layout, algo="im2col")
    copies = [a.copy() for a in (x, w)]
    y = ops.conv2d(x, w, **kwargs)
    gy = random(rng, y.shape)
    forward, calls[:] = calls[:], []
    gx = ops.conv2d_backward_input(gy, w, x.shape, **kwargs)
    backward_input, calls[:] = calls[:], []
    gw = ops.conv2d_backward_weight(gy, x, w.shape, **kwargs)
    assert forward == [(n, k, 72) if nchw else (1, k, n * 72)]
    assert backward_input == [(n, c, 72) if nchw else (1, c, n * 72)]
    assert calls == ([(1,)] * n if nchw else [(n,)])  # sums over the planes of each chunk
    kwargs.pop("algo")
    oracle.check({"y": y}, oracle.conv2d(x, w, **kwargs))
    oracle.check({"gx": gx, "gw": gw}, oracle.conv2d(x, w, gy=gy, **kwargs))
    for array, copy in zip((x, w), copies, strict=True):
        np.testing.assert_array_equal(array, copy)


@pytest.mark.parametrize("parallel", [False, True], ids=["one thread", "thread pool"])
@pytest.mark.parametrize("groups, size", [(1, (7, 7)), (2, (8, 8)), (1, (1, 5))])
def test_nchw_pointwise_layer_of_small_planes_runs_as_one_product(groups, size, parallel,
                                                                   monkeypatch, cpu_calls):
    """An NCHW 1x1 layer of GATHERED_PLANE_PIXELS or fewer pixels a plane (ResNet-50's 7 x 7
    layer4): its columns, and its output gradient, copied flat on the threads (layout.embed),
    one product over the whole batch's columns, not one an image, the input gradient's moved
    back out into gx by embed; the rule takes im2col for all three ops. Forward (bias and
    activation in the move out), input and weight gradient against the float64 reference and
    PyTorch, the arrays left as they were."""
    _threads(monkeypatch, parallel)
    calls, real = [], driver.matmul
    monkeypatch.setattr(driver, "matmul", lambda a, b, out, add=False: (
        calls.append(out.shape), real(a, b, out, add)))
    rng = np.random.default_rng(groups)
    n, c, k, p = 3, 6, 10, size[0] * size[1]
    x, w = random(rng, (n, c) + size), random(rng, (k, c // groups, 1, 1))
    b, gy = random(rng, (k,)), random(rng, (n, k) + size)
    copies = [a.copy() for a in (x, w, b, gy)]
    g = geometry.conv_geometry(x.shape, w.shape, 1, 0, 1, groups, "NCHW")
    assert [conv2d_implementations.choose_cpu(op, g) for op in (
        "conv2d", "conv2d_backward_input", "conv2d_backward_weight")] == ["im2col"] * 3
    kwargs = dict(groups=groups, algo="im2col")
    y = ops.conv2d(x, w, b, activation="relu", **kwargs)
    assert calls == [(groups, k // groups, n * p)]
    del calls[:]
    gx = ops.conv2d_backward_input(gy, w, x.shape, **kwargs)
    assert calls == [(groups, c // groups, n * p)]
    gw = ops.conv2d_backward_weight(gy, x, w.shape, **kwargs)
    ran = [kernel.py_func.__name__ for kernel, _ in cpu_calls]
    assert ran.count("embed") == 4, ran  # x's columns, gy, gx, x's columns again
    kwargs.pop("algo")
    oracle.check({"y": y}, oracle.conv2d(x, w, b, activation="relu", **kwargs))
    oracle.check({"gx": gx, "gw": gw}, oracle.conv2d(x, w, gy=gy, **kwargs))
    for array, copy in zip((x, w, b, gy), copies, strict=True):
        np.testing.assert_array_equal(array, copy)


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 2), size=st.sampled_from([(64, 64), (65, 70), (50, 100)]),
       c=st.integers(1, 20), k=st.integers(1, driver.THIN_ROWS), window=st.sampled_from([1, 3]),
       bias=st.booleans(), activation=st.sampled_from([None, "relu", "sigmoid"]),
       dtype=st.sampled_from([np.float32, np.float64]), parallel=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_few_filter_nchw_layers_stream_past_blas(n, size, c, k, window, bias, activation, dtype,
                                                  parallel, seed, monkeypatch, cpu_calls):
    """An NCHW layer into at most THIN_ROWS filters (U-Net's 2-class head, 64 -> 2) takes
    im2col's products on gemm_thin, 4096 output pixels or more an image (65 x 70: a short last
    block), 1x1 (x's own planes) and 3x3 (im2col's columns): against the float64 reference and
    PyTorch, its arrays left as they were."""
    _threads(monkeypatch, parallel)
    rng = np.random.default_rng(seed)
    x, w = random(rng, (n, c) + size, dtype), random(rng, (k, c, window, window), dtype)
    b = random(rng, (k,), dtype) if bias else None
    copies = [a.copy() for a in (x, w, b) if a is not None]
    ran = len(cpu_calls)
    y = ops.conv2d(x, w, b, padding=window // 2, activation=activation, algo="im2col")
    assert "gemm_thin" in [kernel.py_func.__name__ for kernel, _ in cpu_calls[ran:]]
    oracle.check({"y": y}, oracle.conv2d(x, w, b, activation=activation, padding=window // 2))
    for array, copy in zip((a for a in (x, w, b) if a is not None), copies, strict=True):
        np.testing.assert_array_equal(array, copy)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 3), h=st.integers(1, 24), w_=st.integers(1, 24), c=st.integers(1, 40),
       k=st.integers(1, 40), dtype=st.sampled_from([np.float32, np.float64]),
       parallel=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_pointwise_nhwc_backward_reads_gy_once_for_both_gradients(n, h, w_, c, k, dtype,
                                                                   parallel, seed, monkeypatch,
                                                                   cpu_calls):
    """A 1x1 NHWC layer's gx and gw from one pass over gy (gemm_and_sum: a part of the pixels a
    thread, in tiles of 128 rows here, the last one short), against the float64 reference and
    PyTorch; its arrays left as they were."""
    _threads(monkeypatch, parallel)
    monkeypatch.setattr(conv2d_implementations, "PAIRED_PIXELS", 0)
    monkeypatch.setattr(driver, "PAIR_TILE_BYTES", 0)
    rng = np.random.default_rng(seed)
    x, w, gy = (random(rng, shape, dtype) for shape in ((n, h, w_, c), (1, 1, c, k),
                                                        (n, h, w_, k)))
    copies = [a.copy() for a in (x, w, gy)]
    before = len(cpu_calls)
    gx, gw, gb = ops.conv2d_backward(gy, x, w, (True, True, False), data_format="NHWC")
    assert [kernel.py_func.__name__ for kernel, _ in cpu_calls[before:]] == ["gemm_and_sum"]
    oracle.check({"gx": gx, "gw": gw}, oracle.conv2d(x, w, gy=gy, data_format="NHWC"))
    assert gb is None and gx.flags.c_contiguous and gw.flags.c_contiguous
    for array, copy in zip((x, w, gy), copies, strict=True):
        np.testing.assert_array_equal(array, copy)


@pytest.mark.parametrize("layer, why", [
    (dict(x=(2, 64, 64, 16), w=(1, 1, 16, 96)), None),
    (dict(x=(2, 64, 64, 16), w=(1, 1, 16, 96), algo="blocked"), "an algo of its own"),
    (dict(x=(2, 16, 64, 64), w=(96, 16, 1, 1), data_format="NCHW"), "NCHW"),
    (dict(x=(2, 64, 64, 128), w=(1, 1, 128, 256)), "compute-bound"),
    (dict(x=(2, 32, 32, 16), w=(1, 1, 16, 96)), "too few pixels"),
    (dict(x=(2, 64, 64, 16), w=(3, 3, 16, 96), padding=1), "not 1x1"),
], ids=["paired", "blocked", "nchw", "wide", "small", "3x3"])
def test_only_memory_bound_pointwise_nhwc_layers_pair_their_gradients(layer, why, cpu_calls):
    """The paired backward serves algo "auto" (or "im2col") on a 1x1 NHWC layer of at most
    PAIRED_CHANNELS channels in and out over PAIRED_PIXELS output pixels or more; every other
    layer takes the two ops, and its refusal names the shapes."""
    layer = dict(layer)
    rng = np.random.default_rng(2)
    x, w = random(rng, layer.pop("x")), random(rng, layer.pop("w"))
    kwargs = dict(dict(data_format="NHWC"), **layer)
    gy = random(rng, ops.conv2d(x, w, **kwargs).shape)
    ran = len(cpu_calls)
    gx, gw, _ = ops.conv2d_backward(gy, x, w, (True, True, False), **kwargs)
    paired = "gemm_and_sum" in [kernel.py_func.__name__ for kernel, _ in cpu_calls[ran:]]
    assert paired == (why is None), why
    kwargs.pop("algo", None)
    np.testing.assert_allclose(gx, ops.conv2d_backward_input(gy, w, x.shape, **kwargs),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gw, ops.conv2d_backward_weight(gy, x, w.shape, **kwargs),
                               rtol=1e-4, atol=1e-3)
    g = geometry.conv_geometry(x.shape, w.shape, 1, kwargs.get("padding", 0), 1, 1,
                               kwargs["data_format"])
    refused = registry.refusal("conv2d_backward", "cpu", "im2col", g)
    if why not in (None, "an algo of its own"):
        assert str(x.shape) in refused and str(w.shape) in refused


@pytest.mark.parametrize("needs", [(True, True, True), (False, True, False), (True, False, True)],
                         ids=["all", "weight", "input_bias"])
def test_conv2d_backward_computes_only_the_gradients_asked_for(needs):
    rng = np.random.default_rng(5)
    x, w = random(rng, (2, 4, 6, 5)), random(rng, (6, 2, 3, 3))
    kwargs = dict(stride=2, padding="same", groups=2)
    gy = random(rng, ops.conv2d(x, w, **kwargs).shape)
    want = (ops.conv2d_backward_input(gy, w, x.shape, **kwargs),
            ops.conv2d_backward_weight(gy, x, w.shape, **kwargs), ops.conv2d_backward_bias(gy))
    for got, expected, needed in zip(ops.conv2d_backward(gy, x, w, needs, **kwargs), want, needs,
                                     strict=True):
        if needed:
            np.testing.assert_array_equal(got, expected)
        else:
            assert got is None
