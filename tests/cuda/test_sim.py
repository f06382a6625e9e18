"""Every CUDA kernel in Numba's CUDA simulator, on tiny shapes, against fastconv's float64 NumPy
reference. The simulator must be switched on before numba is first imported, so this module runs
in its own process (tests/test_cuda_suite.py starts it with NUMBA_ENABLE_CUDASIM=1); a launch
costs about a second, so the cases are few and small, and each covers several features."""

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    pytest.skip("runs in its own simulator process, see tests/test_cuda_suite.py",
                allow_module_level=True)
pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")

import oracle  # noqa: E402
from fastconv import geometry, ops  # noqa: E402
from fastconv.dispatch import implementations  # noqa: E402
from fastconv.implementations.driver import image_major  # noqa: E402
from fastconv.kernels import (  # noqa: E402
    batch_norm_cuda,
    bias_cuda,
    conv_direct_cuda,
    gemm_cuda,
    im2col_cuda,
    pool_cuda,
)
from fastconv.kernels.activation import CODES  # noqa: E402
from oracle import random, rel_error, tie_free, tolerance  # noqa: E402

BLOCK = (4, 4)  # small blocks: the simulator's cost grows with threads per block

# (x shape, w shape, stride, padding, dilation, groups, activation, dtype). Together: stride 2,
# symmetric and asymmetric padding, dilation 2, groups 2, every activation, both dtypes, and
# outputs that cover several blocks with partial edge tiles.
CONV_CASES = [
    ((1, 2, 5, 6), (2, 2, 3, 3), 1, 1, 1, 1, "relu", np.float32),
    ((2, 2, 7, 7), (2, 2, 2, 3), 2, ((0, 1), (1, 0)), 1, 1, "tanh", np.float64),
    ((1, 2, 7, 6), (4, 1, 3, 2), (1, 2), ((1, 0), (0, 1)), 2, 2, "sigmoid", np.float32),
    ((1, 2, 6, 5), (2, 1, 2, 2), 2, 1, (2, 1), 2, None, np.float64),
]

# (x shape, kernel, stride, padding, ceil_mode, count_include_pad, dtype)
# (x shape, kernel, stride, padding, ceil_mode, count_include_pad, dilation (max),
#  divisor_override (avg), dtype)
POOL_CASES = [
    ((1, 2, 7, 6), 3, 2, 1, True, True, 1, None, np.float32),
    ((2, 1, 5, 5), 2, 2, 0, False, True, 1, None, np.float64),
    ((1, 2, 6, 7), (2, 3), (1, 2), 1, False, False, 1, 3, np.float64),
    ((1, 2, 9, 8), (2, 3), (2, 1), ((0, 1), (2, 1)), False, True, (2, 1), None, np.float32),
]
MAX_CASES = [POOL_CASES[i] for i in (0, 1, 3)]


def _ids(cases):
    return [f"x{c[0]}-" + "-".join(str(a) for a in c[1:-1]) + f"-{np.dtype(c[-1])}"
            for c in cases]


def _poisoned(shape, dtype):
    """Every cell a kernel must write starts as NaN."""
    return np.full(shape, np.nan, dtype)


def _taps(g):
    return (*g.stride, g.padding[0], g.padding[2], *g.dilation, g.groups)


@pytest.mark.parametrize("block", [BLOCK, (8, 8)], ids=["block4x4", "block8x8"])
@pytest.mark.parametrize("case", CONV_CASES, ids=_ids(CONV_CASES))
def test_conv2d(case, block):
    x_shape, w_shape, stride, padding, dilation, groups, activation, dtype = case
    g = geometry.conv_geometry(x_shape, w_shape, stride, padding, dilation, groups, "NCHW")
    rng = np.random.default_rng(0)
    x, w, b = (random(rng, s, dtype) for s in (x_shape, w_shape, (g.K,)))
    gy = random(rng, g.y_shape, dtype)
    expected = oracle.conv2d(x, w, b, gy, activation, stride=stride, padding=padding,
                             dilation=dilation, groups=groups)

    assert conv_direct_cuda.tile_fits(g.OH, g.OW, g.R, g.S, *g.stride, *g.dilation, block)
    for tiled in (True, False):
        y = _poisoned(g.y_shape, dtype)
        conv_direct_cuda.launch_conv2d_forward(x, w, b, y, *_taps(g), CODES[activation],
                                               block=block, tiled=tiled)
        oracle.check({"y": y}, expected)
    gx = _poisoned(g.x_shape, dtype)
    conv_direct_cuda.launch_conv2d_backward_input(gy, w, gx, *_taps(g), block=block)
    gw = _poisoned(g.w_shape, dtype)
    conv_direct_cuda.launch_conv2d_backward_weight(gy, x, gw, *_taps(g), block=block)
    oracle.check({"gx": gx, "gw": gw}, expected)



def test_direct_conv_on_channels_last_views_in_groups_of_images(monkeypatch):
    """The direct kernels on NHWC memory seen through NCHW views (as the backward passes give
    them) and on NHWC arrays, a tap's step past the stride (dilation 3, stride 2), in groups
    of images whose operands each span under MAX_SPAN elements (on a GPU 2**31: the kernels'
    offsets are 32-bit), the weight gradient summed across the groups; one image that large
    is refused."""
    from fastconv.kernels import cuda_device

    rng = np.random.default_rng(9)
    dtype, activation, padding = np.float64, "tanh", ((2, 1), (1, 2))
    x_shape, w_shape = (3, 2, 7, 8), (4, 1, 2, 2)
    g = geometry.conv_geometry(x_shape, w_shape, 2, padding, 3, 2, "NCHW")
    x_nhwc = random(rng, (3, 7, 8, 2), dtype)
    w_hwio = random(rng, (2, 2, 1, 4), dtype)
    b = random(rng, 4, dtype)
    gy_nhwc = random(rng, (3, g.OH, g.OW, 4), dtype)
    expected = oracle.conv2d(x_nhwc, w_hwio, b, gy_nhwc, activation, stride=2, padding=padding,
                             dilation=3, groups=2, data_format="NHWC")
    x, w, gy = x_nhwc.transpose(0, 3, 1, 2), w_hwio.transpose(3, 2, 0, 1), gy_nhwc.transpose(
        0, 3, 1, 2)
    images, launch = [], conv_direct_cuda.launch
    monkeypatch.setattr(conv_direct_cuda, "launch", lambda kernel, *args: images.append(
        next(a[0] for a in args if isinstance(a, tuple) and len(a) == 11))
        or launch(kernel, *args))
    monkeypatch.setattr(cuda_device, "MAX_SPAN", 2 * 2 * 7 * 8 + 1)  # two images of x
    for tiled in (True, False):
        y = _poisoned((3, g.OH, g.OW, 4), dtype)
        conv_direct_cuda.launch_conv2d_forward(x, w, b, y.transpose(0, 3, 1, 2), *_taps(g),
                                               CODES[activation], block=BLOCK, tiled=tiled)
        oracle.check({"y": y}, expected)
    y = _poisoned((3, g.OH, g.OW, 4), dtype)
    conv_direct_cuda.launch_conv2d_forward_nhwc(x_nhwc, w_hwio, b, y, *_taps(g),
                                                CODES[activation], block=BLOCK)
    gx, gw = _poisoned(x_nhwc.shape, dtype), _poisoned(w_hwio.shape, dtype)
    conv_direct_cuda.launch_conv2d_backward_input(gy, w, gx.transpose(0, 3, 1, 2), *_taps(g),
                                                  block=BLOCK)
    conv_direct_cuda.launch_conv2d_backward_weight(gy, x, gw.transpose(3, 2, 0, 1), *_taps(g),
                                                   block=BLOCK)
    oracle.check({"y": y, "gx": gx, "gw": gw}, expected)
    assert images == [2, 1] * 5
    monkeypatch.setattr(cuda_device, "MAX_SPAN", 2 * 7 * 8)
    with pytest.raises(ValueError, match="one plane spans 112 elements or more"):
        conv_direct_cuda.launch_conv2d_backward_input(gy, w, gx.transpose(0, 3, 1, 2),
                                                      *_taps(g))

@pytest.mark.parametrize("dtype, activation, layout", [
    (np.float32, None, "NCHW"), (np.float64, "tanh", "NHWC"), (np.float32, "relu", "NCHW"),
    (np.float64, "sigmoid", "NCHW")])
def test_conv2d_backward_bias(dtype, activation, layout):
    """The bias gradient, and through a fused activation the gradient before it, with 4
    threads striding over 12 cells of a plane (a NHWC operand as a transposed view)."""
    rng = np.random.default_rng(1)
    x, w, b, gy = (random(rng, s, dtype) for s in ((2, 1, 3, 4), (5, 1, 1, 1), (5,), (2, 5, 3, 4)))
    x, gy = (oracle.from_nchw(a, layout) for a in (x, gy))
    w = w if layout == "NCHW" else w.transpose(2, 3, 1, 0)
    y = ops.conv2d(x, w, b, activation=activation, data_format=layout, device="cpu")
    gz, gb = _poisoned(gy.shape, dtype), _poisoned(5, dtype)
    gy3, y3, gz3 = (image_major(a, layout) for a in (gy, y, gz))
    bias_cuda.launch_conv2d_backward_bias(gy3, y3, CODES[activation], gz3, gb, threads=4)
    want = oracle.conv2d(x, w, b, gy=gy, activation=activation, through_activation=True,
                         data_format=layout)
    oracle.check({"gb": gb}, want)
    if activation is not None:
        # gx of a 1x1 convolution with one input channel is gz weighted by w
        gx = (gz * (w.reshape(1, 5, 1, 1) if layout == "NCHW" else w.reshape(1, 1, 1, 5)))
        oracle.check({"gx": gx.sum(axis=1 if layout == "NCHW" else 3, keepdims=True)}, want)


# (x NCHW shape, layout, (R, S, sh, sw, pt, pl, dh, dw), (OH, OW), dtype): each a dilation above
# and below its stride, padding on one side and the other, NHWC as a transposed view.
IM2COL_CASES = [
    ((2, 3, 9, 6), "NCHW", (3, 3, 2, 1, 1, 2, 3, 2), (4, 4), np.float32),
    ((1, 2, 5, 6), "NHWC", (3, 3, 1, 3, 2, 0, 2, 2), (5, 2), np.float64),
]


def _im2col_reference(x, gcols, window, out_size):
    """im2col's columns of x and col2im's gradient of gcols, in float64, by the tap rule."""
    r_, s_, sh, sw, pt, pl, dh, dw = window
    n_, c_, h_, w_ = x.shape
    cols, gx = np.zeros((n_, c_ * r_ * s_, *out_size)), np.zeros(x.shape)
    for c, r, s, oh, ow in np.ndindex(c_, r_, s_, *out_size):
        ih, iw, row = oh * sh - pt + r * dh, ow * sw - pl + s * dw, (c * r_ + r) * s_ + s
        if 0 <= ih < h_ and 0 <= iw < w_:
            cols[:, row, oh, ow] = x[:, c, ih, iw]
            gx[:, c, ih, iw] += gcols[:, row, oh, ow]
    return cols, gx


@pytest.mark.parametrize("case", IM2COL_CASES, ids=[c[1] for c in IM2COL_CASES])
def test_im2col_and_col2im(case):
    x_shape, layout, window, out_size, dtype = case
    rng = np.random.default_rng(20)
    def nchw(a):  # an array in ``layout`` as the launchers take it: NHWC as a transposed view
        return a if layout == "NCHW" else a.transpose(0, 3, 1, 2)
    x = nchw(_layout(random(rng, x_shape, dtype), layout))
    cols_shape = (x_shape[0], x_shape[1] * window[0] * window[1], *out_size)
    gcols = random(rng, cols_shape, dtype)
    want_cols, want_gx = _im2col_reference(x, gcols, window, out_size)
    cols, gx = _poisoned(cols_shape, dtype), nchw(_layout(_poisoned(x_shape, dtype), layout))
    im2col_cuda.launch_im2col(x, cols, *window, block=BLOCK)
    im2col_cuda.launch_col2im(gcols, gx, *window, block=BLOCK)
    np.testing.assert_array_equal(cols, want_cols.astype(dtype))
    assert rel_error(gx, want_gx) < tolerance(dtype)  # a poisoned cell left would be NaN


def test_im2col_and_col2im_launch_images_in_groups_whose_offsets_fit(monkeypatch):
    """Operands spanning MAX_SPAN elements or more go in groups of images; one image that
    large is refused."""
    from fastconv.kernels import cuda_device

    rng = np.random.default_rng(21)
    window, out_size = (2, 2, 1, 1, 0, 0, 1, 1), (3, 3)
    x, gcols = random(rng, (5, 2, 4, 4), np.float64), random(rng, (5, 8, 3, 3), np.float64)
    want_cols, want_gx = _im2col_reference(x, gcols, window, out_size)
    cols, gx = _poisoned(gcols.shape, np.float64), _poisoned(x.shape, np.float64)
    images, launch = [], im2col_cuda.launch
    monkeypatch.setattr(cuda_device, "MAX_SPAN", 2 * 72 + 1)  # two images of columns
    monkeypatch.setattr(im2col_cuda, "launch", lambda *args: images.append(args[8][0])
                        or launch(*args))
    im2col_cuda.launch_im2col(x, cols, *window, block=BLOCK)
    im2col_cuda.launch_col2im(gcols, gx, *window, block=BLOCK)
    assert images == [2, 2, 1] * 2
    np.testing.assert_array_equal(cols, want_cols)
    assert rel_error(gx, want_gx) < tolerance(np.float64)
    monkeypatch.setattr(cuda_device, "MAX_SPAN", 72)
    with pytest.raises(ValueError, match="one plane spans 72 elements or more"):
        im2col_cuda.launch_im2col(x, cols, *window, block=BLOCK)


def _pool_case(kind, case, seed, ties=False):
    """The geometry, x and gy of a case's ``kind`` pooling, the op's arguments and the oracle's
    expectations."""
    x_shape, kernel, stride, padding, ceil_mode, count_pad, dilation, divisor, dtype = case
    window = dict(kernel_size=kernel, stride=stride, padding=padding, ceil_mode=ceil_mode)
    window.update(dict(dilation=dilation) if kind == "max" else
                  dict(count_include_pad=count_pad, divisor_override=divisor))
    p = geometry.pool_geometry(x_shape, kernel, stride, padding, ceil_mode, count_pad, "NCHW",
                               window.get("dilation", 1), window.get("divisor_override"))
    rng = np.random.default_rng(seed)
    if ties:  # few distinct values: the first maximum in row-major order must win
        x = rng.integers(0, 3, x_shape).astype(dtype)
    else:
        x = tie_free(rng, x_shape, dtype)
    gy = random(rng, p.y_shape, dtype)
    return p, x, gy, window, oracle.pool2d(kind, x, gy, **window)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("case", MAX_CASES, ids=_ids(MAX_CASES))
def test_max_pool2d(case, ties):
    p, x, gy, _, expected = _pool_case("max", case, seed=2, ties=ties)
    pt, _, pl, _ = p.padding
    y = _poisoned(p.y_shape, x.dtype)
    pool_cuda.launch_max_pool2d_forward(x, y, _UNUSED, *p.kernel, *p.stride, *p.dilation, pt, pl,
                                        False, block=BLOCK)
    gx = _poisoned(p.x_shape, x.dtype)
    pool_cuda.launch_max_pool2d_backward(gy, x, gx, *p.kernel, *p.stride, *p.dilation, pt, pl,
                                         block=BLOCK)
    oracle.check({"y": y, "gx": gx}, expected)


_UNUSED = np.zeros((1, 1, 1, 1), np.int64)  # the indices a forward without them is handed


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("case", MAX_CASES, ids=_ids(MAX_CASES))
def test_max_pool2d_indices_and_the_backward_through_them(case, ties):
    """The forward's indices are the CPU's (PyTorch's, tested there), and the gather through
    them gives the gradient."""
    p, x, gy, window, expected = _pool_case("max", case, seed=12, ties=ties)
    pt, _, pl, _ = p.padding
    y, indices = _poisoned(p.y_shape, x.dtype), np.full(p.y_shape, -1, np.int64)
    pool_cuda.launch_max_pool2d_forward(x, y, indices, *p.kernel, *p.stride, *p.dilation, pt, pl,
                                        True, block=BLOCK)
    gx = _poisoned(p.x_shape, x.dtype)
    pool_cuda.launch_max_pool2d_backward_indices(gy, indices, gx, *p.kernel, *p.stride,
                                                 *p.dilation, pt, pl, block=BLOCK)
    oracle.check({"y": y, "gx": gx}, expected)
    _, on_cpu = ops.max_pool2d(x, **window, return_indices=True)
    np.testing.assert_array_equal(indices, on_cpu)


def test_pooling_launches_images_in_groups_whose_offsets_fit(monkeypatch):
    """NHWC views (flat memory and strides) in groups of images whose offsets fit, the unused
    indices stand-in serving every group; one image spanning MAX_SPAN elements is refused."""
    from fastconv.kernels import cuda_device

    rng = np.random.default_rng(22)
    x = tie_free(rng, (3, 4, 4, 2), np.float32).transpose(0, 3, 1, 2)
    gy = random(rng, (3, 2, 2, 2), np.float32)
    expected = oracle.pool2d("max", x, gy, kernel_size=2)
    images, launch = [], pool_cuda.launch
    monkeypatch.setattr(cuda_device, "MAX_SPAN", 2 * 32 + 1)  # two images of x
    monkeypatch.setattr(pool_cuda, "launch", lambda *args: images.append(
        next(a[0] for a in args if isinstance(a, tuple) and len(a) == 6)) or launch(*args))
    y, indices = _poisoned((3, 2, 2, 2), np.float32), np.full((3, 2, 2, 2), -1, np.int64)
    pool_cuda.launch_max_pool2d_forward(x, y, indices, 2, 2, 2, 2, 1, 1, 0, 0, True,
                                        block=BLOCK)
    unused_y = _poisoned((3, 2, 2, 2), np.float32)
    pool_cuda.launch_max_pool2d_forward(x, unused_y, _UNUSED, 2, 2, 2, 2, 1, 1, 0, 0, False,
                                        block=BLOCK)
    gx = _poisoned((3, 4, 4, 2), np.float32).transpose(0, 3, 1, 2)
    pool_cuda.launch_max_pool2d_backward_indices(gy, indices, gx, 2, 2, 2, 2, 1, 1, 0, 0,
                                                 block=(2, 2))
    assert images == [2, 1, 2, 1, 2, 1]
    oracle.check({"y": y, "gx": gx}, expected)
    np.testing.assert_array_equal(unused_y, y)
    np.testing.assert_array_equal(indices, ops.max_pool2d(x, 2, return_indices=True)[1])
    monkeypatch.setattr(cuda_device, "MAX_SPAN", 32)
    with pytest.raises(ValueError, match="one plane spans 32 elements or more"):
        pool_cuda.launch_max_pool2d_forward(x, y, indices, 2, 2, 2, 2, 1, 1, 0, 0, True)


def test_max_pool2d_nan_wins():
    """A NaN wins its window, as in PyTorch (and fastconv's reference)."""
    p, x, _, _, _ = _pool_case("max", POOL_CASES[1], seed=3)
    x[0, 0, 1, 1] = np.nan
    y = _poisoned(p.y_shape, x.dtype)
    pool_cuda.launch_max_pool2d_forward(x, y, _UNUSED, *p.kernel, *p.stride, 1, 1, 0, 0, False,
                                        block=BLOCK)
    for want in oracle.pool2d("max", x, kernel_size=2, stride=2).values():
        assert np.isnan(y[0, 0, 0, 0]) and np.isnan(want["y"][0, 0, 0, 0])
        np.testing.assert_array_equal(np.isnan(y), np.isnan(want["y"]))
        np.testing.assert_allclose(y[~np.isnan(y)], want["y"][~np.isnan(want["y"])])


@pytest.mark.parametrize("case", [POOL_CASES[0], POOL_CASES[2]],
                         ids=_ids([POOL_CASES[0], POOL_CASES[2]]))
def test_avg_pool2d(case):
    p, x, gy, _, expected = _pool_case("avg", case, seed=4)
    args = (*p.kernel, *p.stride, *p.padding, p.count_padding, p.divisor)
    y = _poisoned(p.y_shape, x.dtype)
    pool_cuda.launch_avg_pool2d_forward(x, y, *args, block=BLOCK)
    gx = _poisoned(p.x_shape, x.dtype)
    pool_cuda.launch_avg_pool2d_backward(gy, gx, *args, block=BLOCK)
    oracle.check({"y": y, "gx": gx}, expected)


# (x shape, training, with weight and bias, with running buffers, activation, dtype)
BATCH_NORM_CASES = [
    ((2, 3, 3, 5), True, True, True, "relu", np.float32),
    ((3, 2, 2, 3), True, False, False, None, np.float64),
    ((2, 2, 3, 3), False, True, True, "tanh", np.float32),
]


@pytest.mark.parametrize("threads", [4, 8])
@pytest.mark.parametrize("case", BATCH_NORM_CASES, ids=_ids(BATCH_NORM_CASES))
def test_batch_norm(case, threads):
    """Blocks of 4 and 8 threads over rows of 15, 6 and 9 cells: strided rows with a ragged
    end, and the shared-memory reduction over more than one step; activations fused."""
    shape, training, affine, buffers, activation, dtype = case
    rng = np.random.default_rng(13)
    c = shape[1]
    x, gy = random(rng, shape, dtype), random(rng, shape, dtype)
    weight, bias = (random(rng, c, dtype), random(rng, c, dtype)) if affine else (None, None)
    running = [random(rng, c, dtype), (rng.random(c) + 0.5).astype(dtype)] if buffers else [
        None, None]
    expected = oracle.batch_norm2d(x, weight, bias, *running, training=training, momentum=0.3,
                                   activation=activation, gy=gy)
    ones, zeros = np.ones(c, dtype), np.zeros(c, dtype)
    planes = (x.reshape(shape[0], c, -1), gy.reshape(shape[0], c, -1))
    y, mean, invstd = _poisoned(shape, dtype), _poisoned(c, dtype), _poisoned(c, dtype)
    stand_in = running if buffers else [mean, mean]
    batch_norm_cuda.launch_batch_norm_forward(
        planes[0], ones if weight is None else weight, zeros if bias is None else bias,
        *stand_in, training, training and buffers, dtype(0.3), dtype(1e-5), CODES[activation],
        planes[0], False, y.reshape(planes[0].shape), mean, invstd, threads=threads)
    gx, gw, gb = _poisoned(shape, dtype), _poisoned(c, dtype), _poisoned(c, dtype)
    batch_norm_cuda.launch_batch_norm_backward(
        planes[1], planes[0], y.reshape(planes[0].shape), ones if weight is None else weight,
        mean, invstd, training, CODES[activation], gx.reshape(planes[0].shape), gw, gb,
        planes[0], False, threads=threads)
    got = {"y": y, "gx": gx, "gweight": gw, "gbias": gb}
    if buffers:
        got.update(running_mean=running[0], running_var=running[1])
    oracle.check(got, expected)


@pytest.mark.parametrize("layout, activation, dtype", [("NCHW", "relu", np.float32),
                                                       ("NHWC", None, np.float64)])
def test_batch_norm_with_a_residual_on_cuda_matches_the_cpu(layout, activation, dtype):
    """a(bn(x) + residual) and its gradients, the residual's among them, on both devices."""
    rng = np.random.default_rng(14)
    shape = (2, 3, 3, 5) if layout == "NCHW" else (2, 3, 5, 3)
    x, residual, gy = (random(rng, shape, dtype) for _ in range(3))
    weight, bias = random(rng, 3, dtype), random(rng, 3, dtype)
    runs = {}
    for device in ("cpu", "cuda"):
        y, mean, invstd = ops.batch_norm2d(x, weight, bias, training=True, activation=activation,
                                           data_format=layout, device=device, residual=residual)
        runs[device] = (y, *ops.batch_norm2d_backward(
            gy, x, weight, mean, invstd, True, y, activation, data_format=layout,
            device=device, residual=True))
    for got, want in zip(runs["cuda"], runs["cpu"], strict=True):
        assert rel_error(got, want) < tolerance(dtype)


@pytest.mark.parametrize("shape, output_size, dtype", [
    ((1, 2, 7, 5), (3, 2), np.float32),  # overlapping windows
    ((2, 1, 3, 2), (5, 4), np.float64),  # more outputs than cells: windows repeat
    ((1, 2, 6, 6), 1, np.float32),  # global average
])
def test_adaptive_avg_pool2d(shape, output_size, dtype):
    rng = np.random.default_rng(16)
    x = random(rng, shape, dtype)
    p = geometry.adaptive_pool_geometry(shape, output_size, "NCHW")
    gy = random(rng, p.y_shape, dtype)
    y, gx = _poisoned(p.y_shape, dtype), _poisoned(shape, dtype)
    pool_cuda.launch_adaptive_avg_pool2d_forward(x, y, block=BLOCK)
    pool_cuda.launch_adaptive_avg_pool2d_backward(gy, gx, block=BLOCK)
    oracle.check({"y": y, "gx": gx}, oracle.adaptive_avg_pool2d(x, output_size, gy))


# --- the CUDA kernels through fastconv.ops, device="cuda" -------------------------------------

def test_an_empty_batch_launches_nothing_on_cuda(monkeypatch):
    """N = 0 through every op family: shaped empty results and zero gradients, and no launch
    (a grid of no blocks is an error on a GPU)."""
    from fastconv.kernels import cuda_device

    def no_launch(kernel, *args):
        raise AssertionError(f"{kernel} launched for an empty batch")
    x, w = np.empty((0, 2, 5, 5), np.float32), np.ones((3, 2, 3, 3), np.float32)
    from fastconv.kernels import dropout_cuda
    for module in (batch_norm_cuda, bias_cuda, conv_direct_cuda, dropout_cuda, gemm_cuda,
                   pool_cuda):
        monkeypatch.setattr(module, "launch", no_launch, raising=False)
    monkeypatch.setattr(cuda_device, "launch", no_launch)
    for algo in ("direct", "im2col"):
        y = ops.conv2d(x, w, algo=algo, device="cuda")
        gx, gw, _ = ops.conv2d_backward(y, x, w, (True, True, False), algo=algo, device="cuda")
        assert y.shape == (0, 3, 3, 3) and gx.shape == x.shape and not gw.any()
    assert ops.max_pool2d(x, 2, device="cuda").shape == (0, 2, 2, 2)
    assert ops.adaptive_avg_pool2d(x, 1, device="cuda").shape == (0, 2, 1, 1)
    y, mean, _ = ops.batch_norm2d(x, training=True, device="cuda")
    assert y.shape == x.shape and np.isnan(mean).all()
    assert ops.dropout(x, 0.5, device="cuda")[0].shape == x.shape


# (x NCHW shape, w OIHW shape, geometry, layout, activation, dtype). Together: both layouts,
# groups, strides, dilation, asymmetric and "same"/"valid" padding, pointwise convolutions
# and whole-input windows (which skip im2col), every activation, both dtypes.
OPS_CASES = [
    ((2, 4, 7, 6), (6, 2, 3, 3), dict(stride=(2, 1), padding=((1, 0), (0, 1)), dilation=(1, 2),
                                      groups=2), "NCHW", "tanh", np.float32),
    ((1, 3, 6, 6), (4, 3, 3, 3), dict(padding="same"), "NHWC", "relu", np.float64),
    ((2, 3, 5, 4), (5, 3, 1, 1), dict(), "NCHW", None, np.float64),
    ((2, 3, 5, 4), (5, 3, 1, 1), dict(), "NHWC", "relu", np.float32),  # HWIO, the matrix's T
    ((1, 2, 6, 5), (2, 2, 2, 2), dict(stride=2, padding="valid"), "NHWC", "sigmoid", np.float32),
    ((2, 4, 3, 2), (4, 2, 3, 2), dict(groups=2), "NCHW", "relu", np.float32),  # whole input
    ((3, 4, 3, 2), (5, 4, 3, 2), dict(), "NHWC", None, np.float32),  # x's pixels its columns
]


def _layout(a, layout, filters=False):
    """An NCHW array (OIHW filters) in ``layout``, contiguous."""
    if layout == "NCHW":
        return a
    return np.ascontiguousarray(a.transpose((2, 3, 1, 0) if filters else (0, 2, 3, 1)))


def test_cuda_algorithms_in_the_simulator():
    assert ops.algorithms("cuda") == ("direct", "im2col")  # no cuBLAS without a GPU


@pytest.mark.parametrize("algo", ["direct", "im2col", "auto"])
@pytest.mark.parametrize("case", OPS_CASES, ids=[f"{c[3]}-{np.dtype(c[5])}-{c[1]}"
                                                 for c in OPS_CASES])
def test_conv_ops_on_cuda(case, algo):
    x_shape, w_shape, kwargs, layout, activation, dtype = case
    rng = np.random.default_rng(5)
    x = _layout(random(rng, x_shape, dtype), layout)
    w = _layout(random(rng, w_shape, dtype), layout, filters=True)
    b = random(rng, w_shape[0], dtype)
    kw = dict(kwargs, data_format=layout)
    y = ops.conv2d(x, w, b, activation=activation, algo=algo, device="cuda", **kw)
    gy = random(rng, y.shape, dtype)
    gx, gw, gb = ops.conv2d_backward(gy, x, w, algo=algo, device="cuda", **kw)
    oracle.check({"y": y, "gx": gx, "gw": gw, "gb": gb},
                 oracle.conv2d(x, w, b, gy, activation, **kw))


# (x NCHW shape, kernel, stride, padding, ceil_mode, count_include_pad, layout, dtype)
POOL_OPS_CASES = [
    ((1, 2, 7, 6), 3, 2, 1, True, False, "NHWC", np.float32),
    ((2, 1, 5, 6), (2, 3), (1, 2), "same", False, True, "NCHW", np.float64),
]


@pytest.mark.parametrize("layout, dtype", [("NCHW", np.float32), ("NHWC", np.float64)])
def test_conv_transpose2d_on_cuda(layout, dtype):
    """The transposed convolution on the CUDA kernels (conv2d's backward input, then the bias
    and activation kernel), an output_padding past the input's reach, against the CPU."""
    rng = np.random.default_rng(18)
    x = _layout(random(rng, (1, 2, 3, 3), dtype), layout)
    w = random(rng, (2, 2, 2, 2), dtype)
    w = w if layout == "NCHW" else np.ascontiguousarray(w.transpose(2, 3, 1, 0))
    b = random(rng, 2, dtype)
    kwargs = dict(stride=2, padding=0, output_padding=1, data_format=layout)
    runs = {}
    for device in ("cpu", "cuda"):
        y = ops.conv_transpose2d(x, w, b, activation="sigmoid", device=device, **kwargs)
        gy = random(np.random.default_rng(19), y.shape, dtype)
        runs[device] = (y, *ops.conv_transpose2d_backward(gy, x, w, device=device, **kwargs))
    assert runs["cpu"][0].shape[2 if layout == "NCHW" else 1] == 7  # (3 - 1) * 2 + 2 + 1
    for got, want in zip(runs["cuda"], runs["cpu"], strict=True):
        assert rel_error(got, want) < tolerance(dtype)


@pytest.mark.parametrize("case", POOL_OPS_CASES, ids=[c[6] for c in POOL_OPS_CASES])
def test_pool_ops_on_cuda(case):
    x_shape, kernel, stride, padding, ceil_mode, count_pad, layout, dtype = case
    rng = np.random.default_rng(6)
    x = _layout(tie_free(rng, x_shape, dtype), layout)
    window = dict(kernel_size=kernel, stride=stride, padding=padding, ceil_mode=ceil_mode,
                  data_format=layout)
    for kind in ("max", "avg"):
        op, extra = f"{kind}_pool2d", dict(count_include_pad=count_pad) if kind == "avg" else {}
        assert set(implementations(op, "cuda")) == {"numba"}
        y = getattr(ops, op)(x, **window, **extra, device="cuda")
        gy = random(rng, y.shape, dtype)
        if kind == "max":
            gx = ops.max_pool2d_backward(gy, x, **window, device="cuda")
        else:
            gx = ops.avg_pool2d_backward(gy, x.shape, **window, **extra, device="cuda")
        oracle.check({"y": y, "gx": gx}, oracle.pool2d(kind, x, gy, **window, **extra))


def test_batch_norm_ops_on_cuda():
    """NHWC through the ops (transposed views), training then evaluation, against the CPU."""
    rng = np.random.default_rng(14)
    x, gy = random(rng, (2, 3, 2, 2), np.float32), random(rng, (2, 3, 2, 2), np.float32)
    weight, bias = random(rng, 2, np.float32), random(rng, 2, np.float32)
    runs = {}
    for device in ("cpu", "cuda"):
        running = [np.zeros(2, np.float32), np.ones(2, np.float32)]
        y, mean, invstd = ops.batch_norm2d(x, weight, bias, *running, True,
                                           data_format="NHWC", device=device)
        grads = ops.batch_norm2d_backward(gy, x, weight, mean, invstd, data_format="NHWC",
                                          device=device)
        evaluated = ops.batch_norm2d(x, weight, bias, *running, data_format="NHWC",
                                     device=device)[0]
        runs[device] = (y, *grads, *running, evaluated)
    for got, want in zip(runs["cuda"], runs["cpu"], strict=True):
        assert rel_error(got, want) < tolerance(np.float32)


# The simulator runs the hash on NumPy uint64 scalars, which warn where they wrap (by design).
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dropout_draws_the_cpu_masks_on_cuda(dtype):
    """The same (seed, index) hash: the GPU's mask, output and gradient are the CPU's, bit for
    bit, over a full and a partial block of 256."""
    rng = np.random.default_rng(15)
    x, gy = random(rng, (3, 100), dtype), random(rng, (3, 100), dtype)
    runs = {}
    for device in ("cpu", "cuda"):
        y, mask = ops.dropout(x, 0.3, seed=2**62 + 5, device=device)
        runs[device] = y, mask, ops.dropout_backward(gy, mask, 0.3, device=device)
    for got, want in zip(runs["cuda"], runs["cpu"], strict=True):
        np.testing.assert_array_equal(got, want)
    assert 0 < runs["cpu"][1].mean() < 1


@pytest.mark.parametrize("algo", ["direct", "im2col"])
@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_nonfinite_values_propagate_on_cuda(algo, activation):
    """NaN and Inf reach every output whose window or sum holds them, as on the CPU
    (tests/test_nonfinite.py, which also says why a direct backward weight may keep finite
    what PyTorch makes NaN: it skips padded cells)."""
    rng = np.random.default_rng(10)
    x, w = random(rng, (1, 2, 5, 5), np.float32), random(rng, (3, 2, 3, 3), np.float32)
    b = random(rng, 3, np.float32)
    x[0, 0, 1, 1], x[0, 1, 3, 2] = np.nan, np.inf
    y = ops.conv2d(x, w, b, padding=1, activation=activation, algo=algo, device="cuda")
    gy = random(rng, y.shape, np.float32)
    gy[0, 1, 2, 2] = -np.inf
    gx, gw, gb = ops.conv2d_backward(gy, x, w, padding=1, algo=algo, device="cuda")
    expected = oracle.conv2d(x, w, b, gy, activation, padding=1)
    assert np.isnan(y).any() and not np.isfinite(gx).all()  # the cases do poison
    oracle.check_nonfinite({"y": y, "gx": gx, "gb": gb}, expected)
    oracle.check_nonfinite({"gw": gw}, expected, exact=algo != "direct")


@st.composite
def _small_poisoned_convs(draw):
    """A small convolution (the simulator runs a thread at a time) and which of its arrays a
    few NaN/+inf/-inf cells poison."""
    groups = draw(st.integers(1, 2))
    c, k = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    r, s = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kwargs = dict(stride=draw(st.integers(1, 2)), padding=draw(st.integers(0, 1)),
                  dilation=draw(st.integers(1, 2)), groups=groups,
                  data_format=draw(st.sampled_from(["NCHW", "NHWC"])))
    h, w = draw(st.integers(r * 2, 6)), draw(st.integers(s * 2, 6))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = _layout(random(rng, (1, c, h, w), dtype), kwargs["data_format"])
    wt = _layout(random(rng, (k, c // groups, r, s), dtype), kwargs["data_format"], filters=True)
    arrays = dict(x=x, w=wt, b=random(rng, k, dtype))
    poisoned = draw(st.sampled_from(["x", "w", "b", "gy"]))
    return arrays, poisoned, kwargs, rng


@settings(max_examples=25, deadline=None)
@given(case=_small_poisoned_convs(), algo=st.sampled_from(["direct", "im2col"]),
       activation=st.sampled_from([None, "relu", "tanh", "sigmoid"]), data=st.data())
def test_nonfinite_rule_on_cuda(case, algo, activation, data):
    """tests/test_nonfinite.py's rule, on the CUDA kernels: exact but where a direct kernel
    skips padded cells (a poisoned weight forward, a poisoned gradient's weight gradient)."""
    arrays, poisoned, kwargs, rng = case
    values = [np.nan, np.inf, -np.inf]

    def poison(a):
        a = a.copy()
        a.reshape(-1)[data.draw(st.integers(0, a.size - 1))] = data.draw(st.sampled_from(values))
        return a
    if poisoned != "gy":
        arrays[poisoned] = poison(arrays[poisoned])
    y = ops.conv2d(**arrays, activation=activation, algo=algo, device="cuda", **kwargs)
    gy = random(rng, y.shape, y.dtype)
    if poisoned == "gy":
        gy = poison(gy)
    gx, gw, gb = ops.conv2d_backward(gy, arrays["x"], arrays["w"], algo=algo, device="cuda",
                                     **kwargs)
    expected = oracle.conv2d(**arrays, gy=gy, activation=activation, **kwargs)
    skips = algo == "direct" and kwargs["padding"] > 0
    oracle.check_nonfinite({"y": y}, expected, exact=not (skips and poisoned == "w"))
    oracle.check_nonfinite({"gw": gw}, expected, exact=not (skips and poisoned == "gy"))
    oracle.check_nonfinite({"gx": gx, "gb": gb}, expected)


def test_nonfinite_values_propagate_through_pooling_on_cuda():
    rng = np.random.default_rng(11)
    x = tie_free(rng, (1, 2, 6, 6), np.float32)
    x[0, 0, 1, 1], x[0, 1, 4, 4] = np.nan, np.inf
    gy = random(rng, (1, 2, 3, 3), np.float32)
    gy[0, 1, 0, 2] = -np.inf
    for kind in ("max", "avg"):
        y = getattr(ops, f"{kind}_pool2d")(x, 2, device="cuda")
        gx = (ops.max_pool2d_backward(gy, x, 2, device="cuda") if kind == "max"
              else ops.avg_pool2d_backward(gy, x.shape, 2, device="cuda"))
        oracle.check_nonfinite({"y": y, "gx": gx}, oracle.pool2d(kind, x, gy, kernel_size=2))


@pytest.mark.parametrize("a_layout, b_layout", [("rows", "transposed"), ("transposed", "rows"),
                                                 ("shared", "rows")])
def test_gemm_over_several_tiles_in_every_layout(a_layout, b_layout):
    """The tiled GEMM on more than one tile in M and N, K not a multiple of its slice, each
    operand with K or its other axis contiguous (the kernel stages the two differently) and a
    left operand shared by every plane, as the three passes of a convolution call it."""
    rng = np.random.default_rng(7)
    z, m, k, n = 2, gemm_cuda.TILE_M + 3, 20, gemm_cuda.TILE_N + 5
    a = {"rows": lambda: random(rng, (z, m, k), np.float32),
         "transposed": lambda: random(rng, (z, k, m), np.float32).transpose(0, 2, 1),
         "shared": lambda: random(rng, (1, m, k), np.float32)}[a_layout]()
    b = (random(rng, (z, k, n), np.float32) if b_layout == "rows"
         else random(rng, (z, n, k), np.float32).transpose(0, 2, 1))
    bias = random(rng, m, np.float32)
    c = _poisoned((z, m, n), np.float32)
    gemm_cuda.launch_gemm(a, b, c, bias, CODES["relu"])
    want = np.maximum(np.matmul(a.astype(np.float64), b) + bias[:, None], 0)
    assert rel_error(c, want) < tolerance(np.float32)  # a poisoned cell left would be NaN


def test_gemm_launches_planes_in_groups_whose_offsets_fit(monkeypatch):
    """Operands spanning MAX_SPAN elements or more go in groups of planes (on a GPU: 2**31,
    the kernels' offsets being 32-bit); one plane that large is refused."""
    from fastconv.kernels import cuda_device

    rng = np.random.default_rng(8)
    a, b = random(rng, (1, 5, 4), np.float64), random(rng, (5, 4, 6), np.float64)
    c = _poisoned((5, 5, 6), np.float64)
    launches, launch = [], gemm_cuda.launch
    monkeypatch.setattr(cuda_device, "MAX_SPAN", 2 * 30 + 1)  # two planes of c
    monkeypatch.setattr(gemm_cuda, "launch", lambda *args: launches.append(args[-3][0])
                        or launch(*args))
    gemm_cuda.launch_gemm(a, b, c, np.zeros(5), CODES[None])
    assert launches == [2, 2, 1]
    assert rel_error(c, a @ b) < tolerance(np.float64)
    monkeypatch.setattr(cuda_device, "MAX_SPAN", 29)
    with pytest.raises(ValueError, match="one plane spans 29 elements or more"):
        gemm_cuda.launch_gemm(a, b, c, np.zeros(5), CODES[None])


# --- training on device="cuda" ------------------------------------------------------------------

def _adam_steps_agree(rng, shapes, dtype, listed=True):
    """Two steps of ops.adam_step on tensors of ``shapes`` (given as lists, or the one tensor
    as arrays) on the CUDA kernel and on the CPU's: every param, m and v agrees, and every
    param moved."""
    params = [random(rng, shape, dtype) for shape in shapes]
    runs = {d: [[p.copy() for p in params], [np.zeros_like(p) for p in params],
                [np.zeros_like(p) for p in params]] for d in ("cpu", "cuda")}

    def given(arrays):
        return arrays if listed else arrays[0]
    for step in (1, 2):
        grads = [random(rng, p.shape, dtype) for p in params]
        for d, (ps, ms, vs) in runs.items():
            ops.adam_step(given(ps), given(grads), given(ms), given(vs), step, lr=1e-2,
                          weight_decay=0.1, device=d)
    for got, want in zip(runs["cuda"], runs["cpu"], strict=True):  # params, ms, vs
        for g, w in zip(got, want, strict=True):
            assert rel_error(g, w) < tolerance(dtype)
    assert not any(np.array_equal(p, q) for p, q in zip(runs["cuda"][0], params, strict=True))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_step_on_cuda_matches_the_cpu_kernel(dtype, monkeypatch):
    """One array of 300 elements (one chunk, over which the threads' strides end partway);
    then a list of five tensors in chunks of at most 64 elements, some partial, three tensors
    a launch: two launches a step."""
    from fastconv.kernels import optim, optim_cuda

    rng = np.random.default_rng(2)
    launches, real = [], optim_cuda.launch
    monkeypatch.setattr(optim_cuda, "launch", lambda *args: launches.append(real(*args)))
    _adam_steps_agree(rng, [(3, 100)], dtype, listed=False)
    assert len(launches) == 2
    monkeypatch.setattr(optim, "CHUNK", 64)
    monkeypatch.setattr(optim_cuda, "THREADS", 16)  # a full chunk: 4 elements a thread
    monkeypatch.setattr(optim_cuda, "MAX_TENSORS", 3)
    _adam_steps_agree(rng, [(3, 50), (7,), (2, 2, 40), (1,), (65,)], dtype)
    assert len(launches) == 2 + 2 * 2


@pytest.mark.parametrize("hyper", [dict(momentum=0.9, nesterov=True, weight_decay=0.1),
                                   dict(momentum=0.0, weight_decay=0.1)],
                         ids=["nesterov", "no-momentum"])
def test_sgd_step_on_cuda_matches_the_cpu_kernel(hyper, monkeypatch):
    """Two steps of ops.sgd_step (the buffers' first, then one after it) on five tensors in
    chunks of at most 32 elements, some partial, three tensors a launch: two launches a step;
    every param and buffer agrees with the CPU kernel's."""
    from fastconv.kernels import optim, optim_cuda

    launches, real = [], optim_cuda.launch
    monkeypatch.setattr(optim_cuda, "launch", lambda *args: launches.append(real(*args)))
    monkeypatch.setattr(optim, "CHUNK", 32)
    monkeypatch.setattr(optim_cuda, "THREADS", 8)  # a full chunk: 4 elements a thread
    monkeypatch.setattr(optim_cuda, "MAX_TENSORS", 3)
    rng = np.random.default_rng(3)
    params = [random(rng, shape, np.float32) for shape in [(2, 20), (7,), (33,), (1,), (9,)]]
    momentum = hyper["momentum"] != 0
    runs = {d: ([p.copy() for p in params], [np.zeros_like(p) for p in params] if momentum
                else None) for d in ("cpu", "cuda")}
    for first in (True, False):
        grads = [random(rng, p.shape, np.float32) for p in params]
        for d, (ps, bs) in runs.items():
            ops.sgd_step(ps, grads, bs, lr=0.1, **hyper, first_step=first, device=d)
    assert len(launches) == 2 * 2
    for got, want in zip(runs["cuda"], runs["cpu"], strict=True):  # params, buffers
        for g, w in zip(got or [], want or [], strict=True):
            assert rel_error(g, w) < tolerance(np.float32)
    assert not any(np.array_equal(p, q) for p, q in zip(runs["cuda"][0], params, strict=True))


def test_lenet5_training_step_on_cuda_matches_the_cpu():
    """One Adam step of LeNet-5 on one image, on the CUDA kernels and on the CPU's, from the
    same weights: the loss, every gradient and every updated parameter agree. One image: two took
    the simulator four minutes on a 2-core Zen 3 (its GEMM's 256 threads a block each walk an
    8 x 8 register tile in Python)."""
    from fastconv import models, nn, optim, tensor
    from fastconv.nn import functional as F

    rng = np.random.default_rng(8)
    x, labels = random(rng, (1, 1, 32, 32), np.float32), np.array([3])
    runs = {}
    for where in ("cpu", "cuda"):
        nn.manual_seed(0)
        model = models.LeNet5().to(where)
        optimizer = optim.Adam(model.parameters(), lr=1e-3)
        loss = F.cross_entropy(model(tensor(x, device=where)), labels)
        optimizer.zero_grad()
        loss.backward()
        grads = {n: p.grad.numpy() for n, p in model.named_parameters()}
        optimizer.step()
        assert {p.device for p in model.parameters()} == {where} and loss.device == where
        runs[where] = loss.item(), grads, model.state_dict()
    (loss_cpu, grads_cpu, after_cpu), (loss_gpu, grads_gpu, after_gpu) = runs.values()
    assert abs(loss_gpu - loss_cpu) <= 1e-5 * abs(loss_cpu)
    for name in grads_cpu:
        assert rel_error(grads_gpu[name], grads_cpu[name]) < 1e-4, name
        assert rel_error(after_gpu[name], after_cpu[name]) < 1e-6, name


def test_resnet_training_steps_on_cuda_match_pytorch():
    """ResNet-8 of width 4 on 8x8 images, batch 2: an SGD step on the CUDA kernels (batch
    norm, residual sums, global pooling) from PyTorch's weights agrees with PyTorch's, loss,
    parameters and buffers. One step: each takes the simulator ~90 s (tests/test_resnet.py
    takes three on the CPU kernels)."""
    import torch

    from fastconv import models, optim, tensor
    from fastconv.nn import functional as F
    from torch_resnet import TorchResNet

    torch.manual_seed(0)
    theirs = TorchResNet(8, width=4)
    ours = models.ResNet(8, width=4)
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    ours.to("cuda")
    ours_opt = optim.SGD(ours.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    theirs_opt = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    rng = np.random.default_rng(17)
    x, labels = random(rng, (2, 1, 8, 8), np.float32), rng.integers(0, 10, 2)
    loss = F.cross_entropy(ours(tensor(x, device="cuda")), labels)
    torch_loss = torch.nn.functional.cross_entropy(theirs(torch.from_numpy(x)),
                                                   torch.from_numpy(labels))
    assert abs(loss.item() - torch_loss.item()) <= 1e-5 * abs(torch_loss.item())
    loss.backward(), torch_loss.backward()
    ours_opt.step(), theirs_opt.step()
    assert {p.device for p in ours.parameters()} == {"cuda"}
    state = theirs.state_dict()
    for name, value in ours.state_dict().items():
        assert rel_error(value, state[name].numpy()) < 1e-4, name


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(5, 7), (300, 3)], ids=["one-row-a-thread", "rows-loop"])
def test_softmax_cross_entropy_on_cuda_matches_the_cpu_kernel(shape, dtype, monkeypatch):
    """One launch of one block: its threads' rows (300 > 256: some loop), their gradients
    and the block's float64 sum of the losses agree with the CPU kernel's; a -inf logit off
    the label is a class of probability 0 on both."""
    from fastconv.kernels import loss_cuda

    rng = np.random.default_rng(5)
    logits = random(rng, shape, dtype) * 4
    target = rng.integers(0, shape[1], shape[0])
    logits[1, (target[1] + 1) % shape[1]] = -np.inf
    launches, real = [], loss_cuda.launch
    monkeypatch.setattr(loss_cuda, "launch", lambda *a: launches.append(a[1:3]) or real(*a))
    loss, grad = ops.softmax_cross_entropy(logits, target, device="cuda")
    want_loss, want_grad = ops.softmax_cross_entropy(logits, target, device="cpu")
    assert launches == [(1, loss_cuda.THREADS)]
    assert loss.shape == () and loss.dtype == dtype and grad.dtype == dtype
    assert rel_error(loss, want_loss) < tolerance(dtype)
    assert rel_error(grad, want_grad) < tolerance(dtype)
    assert grad[1, (target[1] + 1) % shape[1]] == 0


# --- the GPU benchmark's code paths (the simulator's times mean nothing) ----------------------

def test_bench_runs_every_cuda_implementation():
    from fastconv import bench, machine

    case = bench.Case("tiny", "conv2d", (1, 2, 6, 6), (3, 2, 3, 3), padding=1)
    pool = bench.Case("tiny", "max_pool2d", (1, 2, 4, 4), kernel=2, stride=2)
    rows = bench.run([case, pool], repeats=1, progress=False, on="cuda")
    assert {(r["op"], r["impl"]) for r in rows} == {
        *((op, impl) for op in ("conv2d", "conv2d_backward")
          for impl in ("direct", "im2col", "auto")),
        ("max_pool2d", "fastconv"), ("max_pool2d_backward", "fastconv")}
    assert all(r["median_ms"] > 0 for r in rows)
    assert dict(machine.describe(machine.machine("cuda")))["gpu"].startswith("gpu Numba's CUDA")
    assert bench.sgemm_gflops(64, repeats=1, on="cuda") is None  # the simulator has no cuBLAS


def test_gemm_benchmark_checks_its_product():
    from fastconv import bench

    (row,) = bench.gemm(40, repeats=1)  # no cuBLAS in the simulator
    assert row["impl"] == "fastconv" and row["vs_cublas"] is None
    assert row["rel_error"] < 1e-6


def test_autotuning_on_cuda_is_keyed_by_the_gpu(tmp_path, monkeypatch):
    """algo="auto" with autotuning times the CUDA candidates once and keeps the winner under a
    key naming the device, the op and the GPU."""
    import json

    from fastconv import dispatch

    monkeypatch.setenv("FASTCONV_CACHE_DIR", str(tmp_path))
    dispatch.autotune(True)
    try:
        rng = np.random.default_rng(9)
        x, w = random(rng, (1, 2, 5, 5), np.float32), random(rng, (2, 2, 3, 3), np.float32)
        y = ops.conv2d(x, w, device="cuda")
    finally:
        dispatch.autotune(False)
    oracle.check({"y": y}, oracle.conv2d(x, w))
    entries = json.loads((tmp_path / "autotune.json").read_text())["entries"]
    ((key, winner),) = entries.items()
    assert key.startswith("cuda|conv2d|") and key.endswith("|float32|CUDA simulator")
    assert winner in ("direct", "im2col")


def test_info_lists_the_simulated_gpu(capsys):
    from fastconv import cli

    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "cuda: gpu Numba's CUDA simulator" in out and "  cuda: direct, im2col" in out


def test_a_gpu_that_does_not_exist_is_refused():
    x = np.ones((1, 1, 4, 4), np.float32)
    assert ops.max_pool2d(x, 2, device="cuda:0").shape == (1, 1, 2, 2)
    with pytest.raises(ValueError, match=r"device='cuda:3' but there are 1 GPU\(s\)"):
        ops.max_pool2d(x, 2, device="cuda:3")


def test_tensors_move_between_devices_and_do_not_mix():
    from fastconv import tensor

    t = tensor([[1.0, 2.0]], requires_grad=True)
    g = t.to("cuda")
    assert (t.device, g.device, g.requires_grad) == ("cpu", "cuda", True)
    assert g.to("cuda") is g and g.to("cpu").device == "cpu"
    np.testing.assert_array_equal(g.numpy(), t.numpy())
    assert (g * 2).device == "cuda"
    with pytest.raises(RuntimeError, match="tensors of one op must be on one device"):
        t + g
