"""algo="winograd": the forward (bias and activation fused) and the input gradient of 3x3,
stride-1, dilation-1 convolutions against the float64 reference and PyTorch, over
hypothesis-drawn sizes (smaller than a tile, odd), paddings (asymmetric ones too), groups,
layouts, dtypes and the two CPU paths; its float32 error on the suite's layers; and where it
applies: refused elsewhere with the layer named, never picked by the fitted rule, timed by
autotuning only where it applies."""

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_conv import _threads

import fastconv
import oracle
from fastconv import bench, dispatch, geometry, ops, registry
from fastconv.implementations import conv2d, driver, winograd
from fastconv.kernels import winograd as wkernels
from oracle import random, rel_error

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
# The documented float32 bound (norm-relative against float64) on the suite's 3x3 layers.
FLOAT32_BOUND = 1e-4


@st.composite
def winograd_cases(draw):
    """A 3x3 stride-1 layer: N 1-3, C and K 1-20 (groups 1-2 dividing both), H and W 1-13,
    padding 0-2 as an int, a pair or per side."""
    groups = draw(st.integers(1, 2))
    small = st.integers(0, 2)
    padding = draw(st.one_of(small, st.tuples(small, small),
                             st.tuples(st.tuples(small, small), st.tuples(small, small))))
    layout = draw(st.sampled_from(["NCHW", "NHWC"]))
    n, h, w = draw(st.integers(1, 3)), draw(st.integers(1, 13)), draw(st.integers(1, 13))
    c, k = groups * draw(st.integers(1, 20 // groups)), groups * draw(st.integers(1, 20 // groups))
    x_shape = (n, c, h, w) if layout == "NCHW" else (n, h, w, c)
    w_shape = (k, c // groups, 3, 3) if layout == "NCHW" else (3, 3, c // groups, k)
    kwargs = dict(padding=padding, groups=groups, data_format=layout)
    try:
        g = geometry.conv_geometry(x_shape, w_shape, 1, padding, 1, groups, layout)
    except ValueError:
        assume(False)  # the window does not fit this input
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    arrays = dict(x=random(rng, x_shape, dtype), w=random(rng, w_shape, dtype),
                  b=random(rng, (k,), dtype), gy=random(rng, g.y_shape, dtype))
    return g, kwargs, arrays


# Both variants, F(2x2, 3x3) and F(4x4, 3x3), whichever algo="winograd" runs.
TILE_SIDES = st.sampled_from(winograd.TILES)


@SETTINGS
@given(case=winograd_cases(), activation=st.sampled_from([None, "relu", "tanh", "sigmoid"]),
       with_bias=st.booleans(), parallel=st.booleans(), tile=TILE_SIDES)
def test_forward_matches_reference_and_torch(case, activation, with_bias, parallel, tile,
                                             monkeypatch):
    _threads(monkeypatch, parallel)
    monkeypatch.setattr(winograd, "TILE", tile)
    g, kwargs, a = case
    b = a["b"] if with_bias else None
    before = {name: v.copy() for name, v in a.items()}
    y = ops.conv2d(a["x"], a["w"], b, activation=activation, algo="winograd", **kwargs)
    assert y.dtype == a["x"].dtype and y.shape == g.y_shape
    oracle.check({"y": y}, oracle.conv2d(a["x"], a["w"], b, activation=activation, **kwargs))
    for name, v in a.items():
        np.testing.assert_array_equal(v, before[name], err_msg=f"{name} was changed")


@SETTINGS
@given(case=winograd_cases(), parallel=st.booleans(), tile=TILE_SIDES)
def test_backward_input_matches_reference_and_torch(case, parallel, tile, monkeypatch):
    _threads(monkeypatch, parallel)
    monkeypatch.setattr(winograd, "TILE", tile)
    g, kwargs, a = case
    before = {name: v.copy() for name, v in a.items()}
    gx = ops.conv2d_backward_input(a["gy"], a["w"], a["x"].shape, algo="winograd", **kwargs)
    assert gx.dtype == a["x"].dtype and gx.shape == g.x_shape
    oracle.check({"gx": gx}, oracle.conv2d(a["x"], a["w"], gy=a["gy"], **kwargs))
    for name, v in a.items():
        np.testing.assert_array_equal(v, before[name], err_msg=f"{name} was changed")


@pytest.mark.parametrize("tile", winograd.TILES)
@pytest.mark.parametrize("padding", [3, ((4, 0), (0, 3))], ids=["pad3", "pad4_0_0_3"])
def test_padding_beyond_the_window(padding, tile, monkeypatch):
    """Padding above 2: outputs that see only padding (bias alone), and an input gradient
    whose transposed convolution crops (its padding 2 - pad is negative)."""
    monkeypatch.setattr(winograd, "TILE", tile)
    rng = np.random.default_rng(7)
    x, w, b = random(rng, (2, 3, 5, 4)), random(rng, (4, 3, 3, 3)), random(rng, (4,))
    y = ops.conv2d(x, w, b, padding=padding, algo="winograd")
    gy = random(rng, y.shape)
    gx = ops.conv2d_backward_input(gy, w, x.shape, padding=padding, algo="winograd")
    oracle.check({"y": y}, oracle.conv2d(x, w, b, padding=padding))
    oracle.check({"gx": gx}, oracle.conv2d(x, w, gy=gy, padding=padding))


@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
@pytest.mark.parametrize("tile", winograd.TILES)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_rows_of_several_lane_blocks(layout, tile, parallel, monkeypatch):
    """Rows wider than the drawn cases': two whole blocks of LANES tiles and a partial one,
    the row's last tile cropped to one column (NCHW's lanes are a tile row's tiles), channels
    past a whole block (NHWC's lanes), in chunks of tile rows that end inside an image, from a
    batch that is not contiguous (flipped)."""
    _threads(monkeypatch, parallel)
    monkeypatch.setattr(winograd, "TILE", tile)
    lanes = wkernels.LANES
    h, w_ = 9, (2 * lanes + 3) * tile + 1
    # chunks of two tile rows: with 3 (F(4x4)) or 5 (F(2x2)) an image, some span two images
    monkeypatch.setattr(winograd, "WORKSPACE_BYTES", 0)
    monkeypatch.setattr(winograd, "CHUNK_TILES", -(-w_ // tile) + 1)
    c, k = lanes + 3, lanes + 5
    rng = np.random.default_rng(11)
    x_shape, w_shape = ((2, c, h, w_), (k, c, 3, 3)) if layout == "NCHW" else (
        (2, h, w_, c), (3, 3, c, k))
    x, w, b = random(rng, x_shape, np.float32)[::-1], random(rng, w_shape, np.float32), \
        random(rng, (k,), np.float32)
    kwargs = dict(padding=1, data_format=layout)
    y = ops.conv2d(x, w, b, activation="relu", algo="winograd", **kwargs)
    oracle.check({"y": y}, oracle.conv2d(x, w, b, activation="relu", **kwargs))
    gy = random(rng, y.shape, np.float32)
    gx = ops.conv2d_backward_input(gy, w, x.shape, algo="winograd", **kwargs)
    oracle.check({"gx": gx}, oracle.conv2d(x, w, gy=gy, **kwargs))


@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
@pytest.mark.parametrize("tile", winograd.TILES)
@pytest.mark.parametrize("crop", [0, 1])
@pytest.mark.parametrize("tw", [2, wkernels.LANES // 2 - 1, wkernels.LANES // 2],
                         ids=["2 tiles", "2 rows and spare lanes", "2 rows fill the lanes"])
def test_short_nchw_rows_share_a_lane_block(tw, crop, tile, parallel, monkeypatch):
    """NCHW tile rows of a few tiles (ResNet's 14 x 14 and 7 x 7 images) go several to a block
    of LANES lanes, one row's tiles after another's (kernels.packed_rows): the transforms'
    tasks are a channel's groups of rows, in chunks of tile rows that end inside an image, so
    that a group's rows span two images and the last group is short; the last tile cropped to
    TILE - 1 columns (``crop``). Forward with bias and activation and input gradient against
    the float64 reference and PyTorch."""
    _threads(monkeypatch, parallel)
    monkeypatch.setattr(winograd, "TILE", tile)
    monkeypatch.setattr(winograd, "WORKSPACE_BYTES", 0)
    size = tw * tile - crop
    packed = wkernels.packed_rows(tw)
    assert packed == wkernels.LANES // tw >= 2
    monkeypatch.setattr(winograd, "CHUNK_TILES", (packed + 1) * tw)  # a group and a bit
    tasks, real = [], driver.cpu_call
    monkeypatch.setattr(driver, "cpu_call", lambda kernel, work, *args: (
        tasks.append(args[2].shape[0]) if kernel in wkernels.INPUT_TRANSFORM["NCHW"].values()
        else None, real(kernel, work, *args))[1])
    rng = np.random.default_rng(size + tile)
    n, c, k = 3, 5, 7
    x, w, b = (random(rng, (n, c, size, size), np.float32), random(rng, (k, c, 3, 3), np.float32),
               random(rng, (k,), np.float32))
    y = ops.conv2d(x, w, b, activation="relu", padding=1, algo="winograd")
    oracle.check({"y": y}, oracle.conv2d(x, w, b, activation="relu", padding=1))
    rows = n * tw
    chunk = -(-((packed + 1) * tw) // tw)  # tile rows a chunk
    assert tasks == [c * -(-min(chunk, rows - r0) // packed) for r0 in range(0, rows, chunk)]
    gy = random(rng, y.shape, np.float32)
    gx = ops.conv2d_backward_input(gy, w, x.shape, padding=1, algo="winograd")
    oracle.check({"gx": gx}, oracle.conv2d(x, w, gy=gy, padding=1))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("tile", winograd.TILES)
def test_transforms_that_overflow_fall_back(tile, layout, monkeypatch):
    """Inputs near float32's largest, small filters: outputs well inside float32's range whose
    input tiles' transforms overflow (F(4x4)'s weights sum to ~100 over a tile): the call is
    computed by the blocked kernels, its result finite and the reference's."""
    monkeypatch.setattr(winograd, "TILE", tile)
    rng = np.random.default_rng(5)
    x_shape, w_shape = ((2, 3, 11, 13), (4, 3, 3, 3)) if layout == "NCHW" else (
        (2, 11, 13, 3), (3, 3, 3, 4))
    x = (rng.uniform(-1, 1, x_shape) * 3e38).astype(np.float32)
    w = (rng.uniform(-1, 1, w_shape) * 1e-3).astype(np.float32)
    kwargs = dict(padding=1, data_format=layout)
    y = ops.conv2d(x, w, algo="winograd", **kwargs)
    gy = (rng.uniform(-1, 1, y.shape) * 3e38).astype(np.float32)
    gx = ops.conv2d_backward_input(gy, w, x.shape, algo="winograd", **kwargs)
    assert np.isfinite(y).all() and np.isfinite(gx).all()
    oracle.check({"y": y}, oracle.conv2d(x, w, **kwargs))
    oracle.check({"gx": gx}, oracle.conv2d(x, w, gy=gy, **kwargs))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_transforms_of_a_56_pixel_layer_run_on_the_threads(layout, cpu_calls):
    """ResNet-18's layer1 (64 channels, 56 x 56): each chunk's input and output transforms
    are work enough for fastconv's threads (driver.SERIAL_WORK) as they stream memory;
    counted as 4 and 2 multiply-adds a value they ran in the calling thread, and the layer's
    forward took 9.7 ms on two Xeon threads, 9.3 on one (5.0 so: cpu-winograd.md)."""
    rng = np.random.default_rng(3)
    x_shape, w_shape = ((5, 64, 56, 56), (64, 64, 3, 3)) if layout == "NCHW" else (
        (5, 56, 56, 64), (3, 3, 64, 64))
    ops.conv2d(random(rng, x_shape, np.float32), random(rng, w_shape, np.float32), padding=1,
               data_format=layout, algo="winograd")
    transforms = [work for kernel, work in cpu_calls
                  if kernel.py_func.__name__.startswith(("input_transform", "output_transform"))]
    assert len(transforms) >= 4 and min(transforms) >= driver.SERIAL_WORK


@pytest.mark.parametrize("tile", winograd.TILES)
@pytest.mark.parametrize("layer", ["resnet18/layer3.conv", "resnet50/layer4.conv2",
                                   "vgg16/features.24"])
def test_float32_error_on_suite_layers_within_the_bound(layer, tile, monkeypatch):
    """The suite's 3x3 stride-1 layers at batch 1 (VGG's at 14 x 14): float32 winograd
    within FLOAT32_BOUND of float64, forward and input gradient (measured ~3e-7 for
    F(2x2, 3x3), ~3e-6 for F(4x4, 3x3): benchmarks/results/cpu-winograd.md)."""
    monkeypatch.setattr(winograd, "TILE", tile)
    case = next(c for c in bench.cases("all", batch=1) if c.name == layer)
    rng = np.random.default_rng(0)
    x, w = random(rng, case.x, np.float32), random(rng, case.w, np.float32)
    y = ops.conv2d(x, w, padding=case.padding, algo="winograd")
    gy = random(rng, y.shape, np.float32)
    gx = ops.conv2d_backward_input(gy, w, x.shape, padding=case.padding, algo="winograd")
    x64, w64, gy64 = (a.astype(np.float64) for a in (x, w, gy))
    assert rel_error(y, ops.conv2d(x64, w64, padding=case.padding)) < FLOAT32_BOUND
    assert rel_error(gx, ops.conv2d_backward_input(gy64, w64, x.shape, padding=case.padding)) \
        < FLOAT32_BOUND


# --- where it applies ---------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["conv2d", "conv2d_backward_input"])
@pytest.mark.parametrize("w_shape, kwargs, named", [
    ((2, 3, 5, 5), {}, r"5x5 window with stride \(1, 1\) and dilation \(1, 1\)"),
    ((2, 3, 3, 3), dict(stride=2), r"3x3 window with stride \(2, 2\) and dilation \(1, 1\)"),
    ((2, 3, 3, 3), dict(dilation=(1, 2)), r"3x3 window with stride \(1, 1\) and dilation "
                                          r"\(1, 2\)"),
    ((2, 3, 3, 1), {}, r"3x1 window with stride \(1, 1\)"),
])
def test_refused_elsewhere_naming_the_layer(op, w_shape, kwargs, named):
    x, w = np.ones((1, 3, 9, 9)), np.ones(w_shape)
    gy = np.ones(geometry.conv_geometry(x.shape, w.shape, kwargs.get("stride", 1), 0,
                                        kwargs.get("dilation", 1), 1, "NCHW").y_shape)
    call = (lambda: ops.conv2d(x, w, algo="winograd", **kwargs)) if op == "conv2d" else (
        lambda: ops.conv2d_backward_input(gy, w, x.shape, algo="winograd", **kwargs))
    with pytest.raises(ValueError, match="algo='winograd' computes 3x3 convolutions of stride "
                                         "1 and dilation 1, not a " + named):
        call()


def test_no_weight_gradient():
    x, w = np.ones((1, 2, 5, 5)), np.ones((3, 2, 3, 3))
    with pytest.raises(ValueError, match="algo='winograd' has no conv2d_backward_weight on cpu "
                                         r"\(it computes conv2d, conv2d_backward_input\)"):
        ops.conv2d_backward_weight(np.ones((1, 3, 3, 3)), x, w.shape, algo="winograd")


def test_registered_for_some_layers_only():
    assert "winograd" in fastconv.algorithms("cpu")
    assert "winograd" not in registry.general("cpu")
    g3 = geometry.conv_geometry((1, 4, 8, 8), (4, 4, 3, 3), 1, 1, 1, 1, "NCHW")
    g5 = geometry.conv_geometry((1, 4, 8, 8), (4, 4, 5, 5), 1, 1, 1, 1, "NCHW")
    assert registry.refusal("conv2d", "cpu", "winograd", g3) is None
    assert registry.refusal("conv2d", "cpu", "winograd", g5) is not None


@pytest.mark.parametrize("layer, threads, batch, picked", [
    ("vgg16/features.10", 1, 8, (True, True)), ("resnet18/layer1.conv", 1, 8, (True, True)),
    ("vgg16/features.12", 2, 8, (True, True)), ("resnet18/layer1.conv", 1, 1, (True, True)),
    ("resnet18/layer3.conv", 1, 8, (True, True)), ("resnet18/layer4.conv", 1, 8, (True, False)),
    ("resnet18/layer3.conv", 2, 1, (False, False))])
def test_the_fitted_rule_picks_it_where_the_xeon_ran_it_fastest(layer, threads, batch, picked,
                                                                monkeypatch):
    """algo="auto" follows cpu_rule.py, fitted with winograd's timings (the layers it serves
    in trees of their own, fit.FORCED's plain_3x3): on the Xeon's AVX-512 tree it takes (forward,
    input gradient) of VGG-16's and ResNet's 56 x 56 layers (2.0x and 1.4x blocked's speed there
    on one thread; ResNet's at batch 1 too) and of the 14 x 14 ones (1.3-1.6x since the
    small-plane transforms: cpu-winograd-small-planes.md section 7), the 7 x 7 ones' forward
    (the fit's rows within 1.00-1.03x of blocked's), not their input gradient, nor a 14 x 14
    layer at batch 1 (its filter transform paid for by one image); the same layer dilated is
    not plain_3x3, and goes elsewhere."""
    monkeypatch.setitem(conv2d.FEATURES, "lanes", lambda g: 16)
    monkeypatch.setitem(conv2d.FEATURES, "intel", lambda g: 1)
    monkeypatch.setitem(conv2d.FEATURES, "threads", lambda g: threads)
    case = next(c for c in bench.cases("all") if c.name == layer)
    case = dataclasses.replace(case, x=(batch, *case.x[1:]))
    g = case.geometry()
    for op, expected in zip(("conv2d", "conv2d_backward_input"), picked, strict=True):
        assert (registry.choose(op, "cpu", g) == "winograd") == expected, op
        dilated = geometry.conv_geometry(case.x, case.w, 1, 2, 2, 1, "NCHW")
        assert registry.choose(op, "cpu", dilated) != "winograd"


@pytest.mark.parametrize("stride, timed_winograd", [(1, True), (2, False)])
def test_autotuning_times_it_only_where_it_applies(stride, timed_winograd, tmp_path,
                                                   monkeypatch):
    monkeypatch.setenv("FASTCONV_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(dispatch, "_autotune", True)
    timed = []

    def fake(fn, run, *args, **kwargs):
        timed.append(next(a for algos in registry._implementations.values()
                          for a, f in algos.items() if f is fn))
        return 1.0
    monkeypatch.setattr(dispatch, "_time", fake)
    x, w = np.ones((1, 4, 8, 8)), np.ones((4, 4, 3, 3))
    ops.conv2d(x, w, stride=stride, padding=1)
    assert ("winograd" in timed) == timed_winograd
    assert "reference" not in timed


def test_explicit_algo_runs_winograd(monkeypatch):
    ran = []
    for op in ("conv2d", "conv2d_backward_input"):
        fn = registry._implementations[(op, "cpu")]["winograd"]
        monkeypatch.setitem(registry._implementations[(op, "cpu")], "winograd",
                            lambda *a, _op=op, _fn=fn: ran.append(_op) or _fn(*a))
    x, w = np.ones((1, 4, 8, 8)), np.ones((4, 4, 3, 3))
    y = ops.conv2d(x, w, padding=1, algo="winograd")
    ops.conv2d_backward_input(y, w, x.shape, padding=1, algo="winograd")
    assert ran == ["conv2d", "conv2d_backward_input"]


def test_tile_is_a_variant():
    assert winograd.TILE in winograd.TILES
