"""Every CUDA kernel in Numba's CUDA simulator, on tiny shapes, against fastconv's float64 NumPy
reference. The simulator must be switched on before numba is first imported, so this module runs
in its own process (tests/test_cuda_suite.py starts it with NUMBA_ENABLE_CUDASIM=1); a launch
costs about a second, so the cases are few and small, and each covers several features."""

import os

import numpy as np
import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    pytest.skip("runs in its own simulator process, see tests/test_cuda_suite.py",
                allow_module_level=True)
pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")

from fastconv import geometry  # noqa: E402
from fastconv.dispatch import implementations  # noqa: E402
from fastconv.kernels import cuda_conv, cuda_pool  # noqa: E402
from fastconv.kernels.activation import CODES  # noqa: E402
from oracle import random, rel_error, tolerance  # noqa: E402

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
POOL_CASES = [
    ((1, 2, 7, 6), 3, 2, 1, True, True, np.float32),
    ((2, 1, 5, 5), 2, 2, 0, False, True, np.float64),
    ((1, 2, 6, 7), (2, 3), (1, 2), 1, False, False, np.float64),
]


def _ids(cases):
    return [f"x{c[0]}-" + "-".join(str(a) for a in c[1:-1]) + f"-{np.dtype(c[-1])}"
            for c in cases]


def _poisoned(shape, dtype):
    """Every cell a kernel must write starts as NaN."""
    return np.full(shape, np.nan, dtype)


def _reference(op, *args):
    """fastconv's float64 NumPy baseline of ``op``."""
    return implementations(op, "cpu")["reference"](*args)


def _close(got, want, dtype):
    assert not np.isnan(got).any(), "a cell was left unwritten"
    assert rel_error(got, want) < tolerance(dtype)


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
    x64, w64, b64, gy64 = (a.astype(np.float64) for a in (x, w, b, gy))

    want = _reference("conv2d", g, x64, w64, b64, activation)
    assert cuda_conv.tile_fits(g.OH, g.OW, g.R, g.S, *g.stride, *g.dilation, block)
    for tiled in (True, False):
        y = _poisoned(g.y_shape, dtype)
        cuda_conv.launch_conv2d_forward(x, w, b, y, *_taps(g), CODES[activation], block=block,
                                        tiled=tiled)
        _close(y, want, dtype)

    gx = _poisoned(g.x_shape, dtype)
    cuda_conv.launch_conv2d_backward_input(gy, w, gx, *_taps(g), block=block)
    _close(gx, _reference("conv2d_backward_input", g, gy64, w64), dtype)

    gw = _poisoned(g.w_shape, dtype)
    cuda_conv.launch_conv2d_backward_weight(gy, x, gw, *_taps(g), block=block)
    _close(gw, _reference("conv2d_backward_weight", g, gy64, x64), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv2d_backward_bias(dtype):
    gy = random(np.random.default_rng(1), (2, 5, 3, 4), dtype)
    gb = _poisoned(5, dtype)
    cuda_conv.launch_conv2d_backward_bias(gy, gb, block=(2, 2))
    _close(gb, _reference("conv2d_backward_bias", gy.astype(np.float64), "NCHW"), dtype)


def _pool_case(case, seed, ties=False):
    x_shape, kernel, stride, padding, ceil_mode, count_pad, dtype = case
    p = geometry.pool_geometry(x_shape, kernel, stride, padding, ceil_mode, count_pad, "NCHW")
    rng = np.random.default_rng(seed)
    if ties:  # few distinct values: the first maximum in row-major order must win
        x = rng.integers(0, 3, x_shape).astype(dtype)
    else:  # a shuffled linspace: no ties
        x = rng.permutation(np.linspace(-1, 1, int(np.prod(x_shape)))).reshape(x_shape)
        x = x.astype(dtype)
    gy = random(rng, p.y_shape, dtype)
    return p, x, gy, x.astype(np.float64), gy.astype(np.float64)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("case", POOL_CASES[:2], ids=_ids(POOL_CASES[:2]))
def test_max_pool2d(case, ties):
    p, x, gy, x64, gy64 = _pool_case(case, seed=2, ties=ties)
    dtype, (pt, _, pl, _) = x.dtype, p.padding
    y = _poisoned(p.y_shape, dtype)
    cuda_pool.launch_max_pool2d_forward(x, y, *p.kernel, *p.stride, pt, pl, block=BLOCK)
    _close(y, _reference("max_pool2d", p, x64), dtype)
    gx = _poisoned(p.x_shape, dtype)
    cuda_pool.launch_max_pool2d_backward(gy, x, gx, *p.kernel, *p.stride, pt, pl, block=BLOCK)
    _close(gx, _reference("max_pool2d_backward", p, gy64, x64), dtype)


def test_max_pool2d_nan_wins():
    p, x, _, _, _ = _pool_case(POOL_CASES[1], seed=3)
    x[0, 0, 1, 1] = np.nan
    x64 = x.astype(np.float64)
    y = _poisoned(p.y_shape, x.dtype)
    cuda_pool.launch_max_pool2d_forward(x, y, *p.kernel, *p.stride, 0, 0, block=BLOCK)
    want = _reference("max_pool2d", p, x64)
    assert np.isnan(y[0, 0, 0, 0]) and np.isnan(want[0, 0, 0, 0])
    np.testing.assert_array_equal(np.isnan(y), np.isnan(want))
    np.testing.assert_allclose(y[~np.isnan(y)], want[~np.isnan(want)])


@pytest.mark.parametrize("case", [POOL_CASES[0], POOL_CASES[2]],
                         ids=_ids([POOL_CASES[0], POOL_CASES[2]]))
def test_avg_pool2d(case):
    p, x, gy, x64, gy64 = _pool_case(case, seed=4)
    dtype = x.dtype
    args = (*p.kernel, *p.stride, *p.padding, p.count_padding)
    y = _poisoned(p.y_shape, dtype)
    cuda_pool.launch_avg_pool2d_forward(x, y, *args, block=BLOCK)
    _close(y, _reference("avg_pool2d", p, x64), dtype)
    gx = _poisoned(p.x_shape, dtype)
    cuda_pool.launch_avg_pool2d_backward(gy, gx, *args, block=BLOCK)
    _close(gx, _reference("avg_pool2d_backward", p, gy64), dtype)
