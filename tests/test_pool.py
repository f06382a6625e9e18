"""max_pool2d and avg_pool2d, forward and backward, against the float64 NumPy reference and
PyTorch (autograd for the gradients), over hypothesis-drawn shapes, windows, strides, paddings
(numbers, "same"/"valid"), ceil_mode, count_include_pad, layouts and dtypes; plus the semantics
ports get wrong: ceil_mode's dropped window, first-maximum ties, NaN winning."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import oracle
from fastconv import geometry, ops
from fastconv.implementations import driver
from oracle import from_nchw, random, rel_error, tie_free, to_nchw

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def paddings():
    small = st.integers(0, 2)
    return st.one_of(small, st.tuples(small, small),
                     st.tuples(st.tuples(small, small), st.tuples(small, small)),
                     st.sampled_from(["same", "valid", "SAME", "Valid", "sAmE", "VALID"]))


@st.composite
def pool_cases(draw, kinds=("max", "avg")):
    """A max or average pooling: the op's keyword arguments (a max pooling's with a dilation,
    an average's with count_include_pad and maybe a divisor_override), its geometry, dtype and
    seed."""
    kind = draw(st.sampled_from(kinds))
    kernel = draw(st.one_of(st.integers(1, 4), st.tuples(st.integers(1, 4), st.integers(1, 4))))
    stride = draw(st.one_of(st.none(), st.integers(1, 3),
                            st.tuples(st.integers(1, 3), st.integers(1, 3))))
    padding = draw(paddings())
    layout = draw(st.sampled_from(["NCHW", "NHWC"]))
    n, c, h, w = (draw(st.integers(1, 3)), draw(st.integers(1, 3)),
                  draw(st.integers(1, 9)), draw(st.integers(1, 9)))
    kwargs = dict(kernel_size=kernel, stride=stride, padding=padding,
                  ceil_mode=not isinstance(padding, str) and draw(st.booleans()),
                  data_format=layout)
    if kind == "max":
        kwargs["dilation"] = draw(st.one_of(st.integers(1, 3),
                                            st.tuples(st.integers(1, 3), st.integers(1, 3))))
    else:
        kwargs["count_include_pad"] = draw(st.booleans())
        kwargs["divisor_override"] = draw(st.one_of(st.none(), st.integers(1, 5)))
    x_shape = (n, c, h, w) if layout == "NCHW" else (n, h, w, c)
    try:
        g = geometry.pool_geometry(x_shape, kernel, stride, padding, kwargs["ceil_mode"], True,
                                   layout, kwargs.get("dilation", 1))
    except ValueError:
        assume(False)  # the window does not fit, or the padding breaks the framework's rule
    return dict(kind=kind, kwargs=kwargs, geometry=g, x_shape=x_shape,
                dtype=draw(st.sampled_from([np.float32, np.float64])),
                seed=draw(st.integers(0, 2**32 - 1)))


def _run(kind, kwargs, x, gy):
    """Forward and backward through the public ops."""
    if kind == "max":
        return ops.max_pool2d(x, **kwargs), ops.max_pool2d_backward(gy, x, **kwargs)
    return ops.avg_pool2d(x, **kwargs), ops.avg_pool2d_backward(gy, x.shape, **kwargs)


def _data(case):
    rng = np.random.default_rng(case["seed"])
    make = tie_free if case["kind"] == "max" else random
    return make(rng, case["x_shape"], case["dtype"]), random(rng, case["geometry"].y_shape,
                                                             case["dtype"])


@SETTINGS
@given(case=pool_cases(), parallel=st.booleans())
def test_matches_reference_and_torch(case, parallel, monkeypatch):
    """Forward and backward values, shapes and dtypes, on the parallel kernels or their serial
    twins (the tiny shapes would otherwise always take the serial ones); the inputs are left
    unchanged."""
    monkeypatch.setattr(driver, "SERIAL_WORK", 0 if parallel else 1 << 62)
    x, gy = _data(case)
    x_before, gy_before = x.copy(), gy.copy()
    y, gx = _run(case["kind"], case["kwargs"], x, gy)
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(gy, gy_before)
    assert y.shape == case["geometry"].y_shape and gx.shape == x.shape
    assert y.dtype == gx.dtype == x.dtype

    oracle.check({"y": y, "gx": gx}, oracle.pool2d(case["kind"], x, gy, **case["kwargs"]))


@settings(max_examples=15, deadline=None)
@given(case=pool_cases())
def test_non_contiguous_inputs_give_the_same_results(case):
    """Every other row of a taller array, and a transposed copy, equal the contiguous input."""
    kind = case["kind"]
    x, gy = _data(case)
    y, gx = _run(kind, case["kwargs"], x, gy)
    taller_x = np.repeat(x, 2, axis=1)
    taller_gy = np.repeat(gy, 2, axis=1)
    for x_view, gy_view in [(taller_x[:, ::2], taller_gy[:, ::2]),
                            (np.asfortranarray(x), np.asfortranarray(gy))]:
        y_view, gx_view = _run(kind, case["kwargs"], x_view, gy_view)
        np.testing.assert_array_equal(y_view, y)
        np.testing.assert_array_equal(gx_view, gx)


def test_ceil_mode_drops_a_window_starting_in_the_padding():
    """Size 5, k 2, s 2, p 1 gives 3 outputs, not 4 (pytorch#46929), with torch's values."""
    rng = np.random.default_rng(3)
    x = random(rng, (2, 3, 5, 5))
    xt = torch.from_numpy(x)
    y = ops.max_pool2d(x, 2, 2, 1, ceil_mode=True)
    assert y.shape == (2, 3, 3, 3)
    np.testing.assert_array_equal(y, F.max_pool2d(xt, 2, 2, 1, ceil_mode=True).numpy())
    for count_include_pad in (True, False):
        a = ops.avg_pool2d(x, 2, 2, 1, ceil_mode=True, count_include_pad=count_include_pad)
        want = F.avg_pool2d(xt, 2, 2, 1, ceil_mode=True, count_include_pad=count_include_pad)
        assert a.shape == (2, 3, 3, 3)
        assert rel_error(a, want.numpy()) < 1e-12


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_max_ties_go_to_the_first_maximum(layout):
    """Equal values in a window: the gradient goes to the first in row-major order, and
    overlapping windows that share that cell add up, as in PyTorch."""
    x = np.array([[1.0, 5.0, 5.0, 0.0],
                  [5.0, 5.0, 2.0, 0.0],
                  [0.0, 0.0, 0.0, 0.0]])[None, None]
    gy_shape = (1, 1, 2, 3)
    gy = np.arange(1.0, 7.0).reshape(gy_shape)
    if layout == "NHWC":
        x, gy = from_nchw(x, layout).copy(), from_nchw(gy, layout).copy()
    gx = to_nchw(ops.max_pool2d_backward(gy, x, 2, 1, data_format=layout), layout)
    expected = np.zeros((3, 4))
    expected[0, 1] = 1 + 2  # windows (0, 0) and (0, 1) tie at 5; both pick (0, 1)
    expected[0, 2] = 3      # window (0, 2): 5 at (0, 2) comes before anything else
    expected[1, 0] = 4      # window (1, 0): 5 at (1, 0) before 5 at (1, 1)
    expected[1, 1] = 5      # window (1, 1): 5 at (1, 1)
    expected[1, 2] = 6      # window (1, 2): 2 at (1, 2)
    np.testing.assert_array_equal(gx[0, 0], expected)
    xt = torch.from_numpy(np.ascontiguousarray(to_nchw(x, layout))).requires_grad_()
    F.max_pool2d(xt, 2, 1).backward(torch.from_numpy(np.ascontiguousarray(to_nchw(gy, layout))))
    np.testing.assert_array_equal(gx, xt.grad.numpy())


def test_max_nan_wins_and_takes_the_gradient():
    """A NaN beats every number in its window; with two NaNs the later one takes the gradient,
    as PyTorch's `val > maxval or isnan(val)` scan does."""
    x = np.array([[1.0, np.nan, 3.0, 4.0],
                  [2.0, 9.0, np.nan, np.nan]])[None, None]
    gy = np.array([[[[10.0, 20.0]]]])
    y = ops.max_pool2d(x, 2)
    assert np.isnan(y).all()
    gx = ops.max_pool2d_backward(gy, x, 2)
    xt = torch.from_numpy(x).requires_grad_()
    F.max_pool2d(xt, 2).backward(torch.from_numpy(gy))
    np.testing.assert_array_equal(gx, xt.grad.numpy())
    assert gx[0, 0, 0, 1] == 10 and gx[0, 0, 1, 3] == 20


def test_max_ignores_padding_even_when_every_real_cell_is_negative():
    """Padded cells are not zeros: an all-negative input keeps its (negative) maxima."""
    x = -1 - np.arange(16.0).reshape(1, 1, 4, 4)
    y = ops.max_pool2d(x, 3, 2, 1)
    np.testing.assert_array_equal(y, F.max_pool2d(torch.from_numpy(x), 3, 2, 1).numpy())
    assert (y < 0).all()


def test_same_padding_averages_real_cells_only():
    """TF SAME, in 5, k 3, s 2: 3 outputs, pads (1, 1); the corner window holds 4 real cells."""
    x = np.arange(25.0).reshape(1, 1, 5, 5)
    y = ops.avg_pool2d(x, 3, 2, "same", count_include_pad=True)
    assert y.shape == (1, 1, 3, 3)
    assert y[0, 0, 0, 0] == (0 + 1 + 5 + 6) / 4
    assert y[0, 0, 1, 1] == x[0, 0, 1:4, 1:4].mean()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(256, 6, 28, 28), (256, 16, 10, 10)], ids=["s2", "s4"])
def test_lenet_pools_match_torch(shape, dtype):
    """LeNet's 2x2 stride-2 pools (the kernels' unrolled path) at full size, against torch."""
    rng = np.random.default_rng(4)
    x = tie_free(rng, shape, dtype)
    gy = random(rng, shape[:2] + (shape[2] // 2, shape[3] // 2), dtype)
    for kind in ("max", "avg"):
        y, gx = _run(kind, dict(kernel_size=2), x, gy)
        oracle.check({"y": y, "gx": gx}, oracle.pool2d(kind, x, gy, kernel_size=2))


@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_2x2_stride_2_on_odd_sizes(layout, ceil_mode):
    """Odd sizes around the kernels' unrolled 2x2 path: a leftover row and column that no window
    covers (gradient zero), or with ceil_mode a clipped last window."""
    rng = np.random.default_rng(5)
    x = from_nchw(tie_free(rng, (2, 3, 5, 7)), layout).copy()
    for kind in ("max", "avg"):
        kwargs = dict(kernel_size=2, ceil_mode=ceil_mode, data_format=layout)
        gy = random(rng, ops.max_pool2d(x, **kwargs).shape)
        y, gx = _run(kind, kwargs, x, gy)
        oracle.check({"y": y, "gx": gx}, oracle.pool2d(kind, x, gy, **kwargs))


# --- max pooling's indices ---------------------------------------------------------------------

@SETTINGS
@given(case=pool_cases(kinds=("max",)), parallel=st.booleans(), ties=st.booleans())
def test_max_pool_indices_are_pytorchs_and_the_backward_through_them_agrees(case, parallel,
                                                                              ties, monkeypatch):
    """return_indices gives PyTorch's indices (h * W + w in the plane, int64, in y's layout),
    ties and all; the backward through them equals the one that recomputes the windows, with x
    given as an array or as its shape."""
    monkeypatch.setattr(driver, "SERIAL_WORK", 0 if parallel else 1 << 62)
    x, gy = _data(case)
    if ties:
        x = np.round(x * 2) / 2  # few distinct values
    kwargs = case["kwargs"]
    y, indices = ops.max_pool2d(x, **kwargs, return_indices=True)
    assert indices.dtype == np.int64 and indices.shape == y.shape
    np.testing.assert_array_equal(y, ops.max_pool2d(x, **kwargs))
    g = case["geometry"]
    top, _, left, _ = g.padding
    if not (isinstance(kwargs["padding"], str) or geometry.per_side(kwargs["padding"])):
        layout = kwargs["data_format"]  # PyTorch's own padding: its indices to compare
        _, want = F.max_pool2d(torch.from_numpy(np.ascontiguousarray(to_nchw(x, layout))),
                               g.kernel, g.stride, (top, left), g.dilation,
                               ceil_mode=kwargs["ceil_mode"], return_indices=True)
        np.testing.assert_array_equal(to_nchw(indices, layout), want.numpy())
    recomputed = ops.max_pool2d_backward(gy, x, **kwargs)
    for x_or_shape in (x, x.shape):
        through = ops.max_pool2d_backward(gy, x_or_shape, **kwargs, indices=indices)
        np.testing.assert_allclose(through, recomputed, rtol=1e-6, atol=1e-6)


def test_max_pool_indices_are_checked():
    x = random(np.random.default_rng(7), (1, 2, 4, 4))
    y, indices = ops.max_pool2d(x, 2, return_indices=True)
    before = indices.copy()
    with pytest.raises(TypeError, match="indices must be an integer array, got float64"):
        ops.max_pool2d_backward(y, x, 2, indices=indices.astype(np.float64))
    with pytest.raises(ValueError, match=r"indices has shape \(1, 2, 1, 2\) but max_pool2d"):
        ops.max_pool2d_backward(y, x, 2, indices=indices[:, :, :1])
    for bad in (-1, 16):
        wrong = indices.copy()
        wrong[0, 1, 1, 1] = bad
        with pytest.raises(ValueError, match=r"indices must lie in \[0, H\*W = 16\)"):
            ops.max_pool2d_backward(y, x, 2, indices=wrong)
    with pytest.raises(TypeError, match="indices must be a NumPy or CuPy array"):
        ops.max_pool2d_backward(y, x, 2, indices=before.tolist())
    int32 = ops.max_pool2d_backward(y, x.shape, 2, indices=before.astype(np.int32))
    np.testing.assert_array_equal(int32, ops.max_pool2d_backward(y, x, 2))
    np.testing.assert_array_equal(indices, before)  # never modified


@SETTINGS
@given(shape=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 12),
                       st.integers(1, 12)),
       output_size=st.one_of(st.integers(1, 8), st.tuples(st.one_of(st.none(), st.integers(1, 8)),
                                                           st.integers(1, 8))),
       layout=st.sampled_from(["NCHW", "NHWC"]), dtype=st.sampled_from([np.float32, np.float64]),
       parallel=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_adaptive_avg_pool2d_matches_reference_and_torch(shape, output_size, layout, dtype,
                                                         parallel, seed, monkeypatch):
    """Outputs smaller than, equal to and larger than the input (windows that overlap, and
    windows of one cell repeated), global pooling, None keeping an axis; both layouts."""
    monkeypatch.setattr(driver, "SERIAL_WORK", 0 if parallel else 1 << 62)
    rng = np.random.default_rng(seed)
    x = from_nchw(random(rng, shape, dtype), layout).copy()
    y = ops.adaptive_avg_pool2d(x, output_size, data_format=layout)
    gy = random(rng, y.shape, dtype)
    gx = ops.adaptive_avg_pool2d_backward(gy, x.shape, data_format=layout)
    assert y.dtype == gx.dtype == x.dtype and gx.shape == x.shape
    oracle.check({"y": y, "gx": gx}, oracle.adaptive_avg_pool2d(x, output_size, gy, layout))


def test_adaptive_windows_are_pytorchs():
    """Size 5 to 3: windows [0, 2), [1, 4), [3, 5), overlapping at cells 1 and 3."""
    x = np.arange(5.0)[None, None, None]
    np.testing.assert_allclose(ops.adaptive_avg_pool2d(x, (1, 3))[0, 0, 0],
                               [0.5, 2.0, 3.5])


@pytest.mark.parametrize("output_size, error, message", [
    (0, ValueError, "output_size must be positive, got 0"),
    ((2, -1), ValueError, "output_size must be positive"),
    ((2, 2, 2), TypeError, "output_size must be an int or a pair"),
    (1.5, TypeError, "output_size must be an int or a pair"),
])
def test_adaptive_output_size_is_checked(output_size, error, message):
    with pytest.raises(error, match=message):
        ops.adaptive_avg_pool2d(np.ones((1, 1, 4, 4)), output_size)
