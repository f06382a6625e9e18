"""NaN and Inf propagate as in PyTorch: a non-finite input, weight, bias or incoming gradient
reaches every output cell whose window or sum contains it, on every op, algorithm, activation,
layout, dtype and CPU path (the parallel kernels and their serial twins); the CUDA kernels are
held to the same rule in the simulator (tests/cuda/test_sim.py).

One documented exception: a kernel that skips the padded cells of a window (the direct
kernels, but NCHW's stride-1 forward, which computes over a zero-padded copy) does not
multiply them, so where PyTorch multiplies such a 0 by a non-finite weight (forward) or
gradient (backward weight) and gets NaN, it may stay finite. There the rule checked is the
weaker one: non-finite only where PyTorch is.

Winograd (algo="winograd", which test_conv's ALGOS leaves out: it serves 3x3 stride-1 layers
only) is held to the same rule: its transforms would spread a non-finite value over a tile,
so a call whose transformed filters or input tiles are not all finite is computed by the
blocked kernels (fastconv/implementations/winograd.py).
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_conv import ALGOS, _arrays, conv_cases
from test_conv_depthwise import arrays as depthwise_arrays
from test_conv_depthwise import depthwise_cases
from test_pool import _data, _run, pool_cases
from test_winograd import TILE_SIDES, winograd_cases

import oracle
from fastconv import ops
from fastconv.implementations import driver, winograd

SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def _poison(a, draw, values):
    """``a`` with a few cells (drawn) set to drawn non-finite values."""
    a = a.copy()
    flat = a.reshape(-1)
    for _ in range(draw(st.integers(1, 3))):
        flat[draw(st.integers(0, flat.size - 1))] = draw(st.sampled_from(values))
    return a


NONFINITE = [np.nan, np.inf, -np.inf]


@SETTINGS
@given(case=conv_cases(), algo=st.sampled_from(ALGOS),
       activation=st.sampled_from([None, "relu", "tanh", "sigmoid"]),
       poisoned=st.sampled_from(["x", "w", "b"]), parallel=st.booleans(), data=st.data())
def test_conv2d_forward(case, algo, activation, poisoned, parallel, data, monkeypatch):
    monkeypatch.setattr(driver, "SERIAL_WORK", 0 if parallel else 1 << 62)
    x, w, b, _ = _arrays(case)
    arrays = dict(x=x, w=w, b=b)
    arrays[poisoned] = _poison(arrays[poisoned], data.draw, NONFINITE)
    y = ops.conv2d(**arrays, activation=activation, algo=algo, **case["kwargs"])
    g = case["geometry"]
    skips_padding = poisoned == "w" and algo == "direct" and any(g.padding) and not (
        g.layout == "NCHW" and g.stride == (1, 1))
    oracle.check_nonfinite({"y": y}, oracle.conv2d(**arrays, activation=activation,
                                                   **case["kwargs"]), exact=not skips_padding)


@SETTINGS
@given(case=conv_cases(), algo=st.sampled_from(ALGOS),
       poisoned=st.sampled_from(["x", "w", "gy"]), parallel=st.booleans(), data=st.data())
def test_conv2d_backward(case, algo, poisoned, parallel, data, monkeypatch):
    monkeypatch.setattr(driver, "SERIAL_WORK", 0 if parallel else 1 << 62)
    x, w, _, gy = _arrays(case)
    arrays = dict(x=x, w=w, gy=gy)
    arrays[poisoned] = _poison(arrays[poisoned], data.draw, NONFINITE)
    x, w, gy, kwargs = arrays["x"], arrays["w"], arrays["gy"], case["kwargs"]
    got = {"gx": ops.conv2d_backward_input(gy, w, x.shape, algo=algo, **kwargs),
           "gw": ops.conv2d_backward_weight(gy, x, w.shape, algo=algo, **kwargs),
           "gb": ops.conv2d_backward_bias(gy, data_format=kwargs["data_format"])}
    expected = oracle.conv2d(x, w, gy=gy, **kwargs)
    skips_padding = poisoned == "gy" and algo == "direct" and any(case["geometry"].padding)
    oracle.check_nonfinite({"gw": got.pop("gw")}, expected, exact=not skips_padding)
    oracle.check_nonfinite(got, expected)


@SETTINGS
@given(case=pool_cases(), poisoned=st.sampled_from(["x", "gy"]), parallel=st.booleans(),
       data=st.data())
def test_pooling(case, poisoned, parallel, data, monkeypatch):
    """Max pooling draws NaN and +inf only: a -inf cell ties with PyTorch's -inf padding (the
    form "same" and per-side padding take there), and which tie wins is not about
    propagation."""
    monkeypatch.setattr(driver, "SERIAL_WORK", 0 if parallel else 1 << 62)
    kind = case["kind"]
    x, gy = _data(case)
    values = [np.nan, np.inf] if kind == "max" else NONFINITE
    if poisoned == "x":
        x = _poison(x, data.draw, values)
    else:
        gy = _poison(gy, data.draw, NONFINITE)
    y, gx = _run(kind, case["kwargs"], x, gy)
    oracle.check_nonfinite({"y": y, "gx": gx}, oracle.pool2d(kind, x, gy, **case["kwargs"]))



@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("algo", ALGOS)
def test_an_infinite_filter_value_in_the_input_gradient(algo, stride):
    """The kernels that compute the input gradient as a convolution of the zero-spread output
    gradient (blocked, and direct at stride 1) would meet that infinity with the spread's
    zeros, NaN where PyTorch has an infinity or a number: such filters take another path.
    A fixed case, the infinity in a corner tap so that it reaches the padded border."""
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 4, 7, 7)), rng.standard_normal((6, 4, 3, 3))
    w[1, 2, 0, 0] = np.inf
    gy = rng.standard_normal((2, 6) + ((7 - 1) // stride + 1,) * 2)
    gx = ops.conv2d_backward_input(gy, w, x.shape, stride=stride, padding=1, algo=algo)
    expected = oracle.conv2d(x, w, gy=gy, stride=stride, padding=1)
    assert np.isinf(expected["torch"]["gx"]).any()
    oracle.check_nonfinite({"gx": gx}, expected)


@SETTINGS
@given(case=winograd_cases(), tile=TILE_SIDES,
       activation=st.sampled_from([None, "relu", "tanh", "sigmoid"]),
       poisoned=st.sampled_from(["x", "w", "b"]), parallel=st.booleans(), data=st.data())
def test_winograd_forward(case, tile, activation, poisoned, parallel, data, monkeypatch):
    monkeypatch.setattr(driver, "SERIAL_WORK", 0 if parallel else 1 << 62)
    monkeypatch.setattr(winograd, "TILE", tile)
    g, kwargs, a = case
    arrays = dict(x=a["x"], w=a["w"], b=a["b"])
    arrays[poisoned] = _poison(arrays[poisoned], data.draw, NONFINITE)
    y = ops.conv2d(**arrays, activation=activation, algo="winograd", **kwargs)
    oracle.check_nonfinite({"y": y}, oracle.conv2d(**arrays, activation=activation, **kwargs))


@SETTINGS
@given(case=winograd_cases(), tile=TILE_SIDES, poisoned=st.sampled_from(["w", "gy"]),
       parallel=st.booleans(), data=st.data())
def test_winograd_backward_input(case, tile, poisoned, parallel, data, monkeypatch):
    monkeypatch.setattr(driver, "SERIAL_WORK", 0 if parallel else 1 << 62)
    monkeypatch.setattr(winograd, "TILE", tile)
    g, kwargs, a = case
    arrays = dict(x=a["x"], w=a["w"], gy=a["gy"])
    arrays[poisoned] = _poison(arrays[poisoned], data.draw, NONFINITE)
    gx = ops.conv2d_backward_input(arrays["gy"], arrays["w"], g.x_shape, algo="winograd",
                                   **kwargs)
    oracle.check_nonfinite({"gx": gx}, oracle.conv2d(**arrays, **kwargs))


@SETTINGS
@given(case=depthwise_cases(), activation=st.sampled_from([None, "relu", "tanh", "sigmoid"]),
       poisoned=st.sampled_from(["x", "w", "b", "gy"]), parallel=st.booleans(),
       data=st.data())
def test_depthwise(case, activation, poisoned, parallel, data, monkeypatch):
    """algo="depthwise" (test_conv's ALGOS leaves it out: it serves depthwise layers only)
    multiplies the padding's zeros as PyTorch does, so its pattern is exactly PyTorch's; a
    non-finite filter sends the input gradient to the direct kernels (the padded gradient's
    zeros would meet it)."""
    monkeypatch.setattr(driver, "SERIAL_WORK", 0 if parallel else 1 << 62)
    x, w, b, gy = depthwise_arrays(case)
    arrays = dict(x=x, w=w, b=b, gy=gy)
    arrays[poisoned] = _poison(arrays[poisoned], data.draw, NONFINITE)
    x, w, b, gy, kwargs = (*arrays.values(), case["kwargs"])
    y = ops.conv2d(x, w, b, activation=activation, algo="depthwise", **kwargs)
    oracle.check_nonfinite({"y": y}, oracle.conv2d(x, w, b, activation=activation, **kwargs))
    got = {"gx": ops.conv2d_backward_input(gy, w, x.shape, algo="depthwise", **kwargs),
           "gw": ops.conv2d_backward_weight(gy, x, w.shape, algo="depthwise", **kwargs)}
    oracle.check_nonfinite(got, oracle.conv2d(x, w, gy=gy, **kwargs))
