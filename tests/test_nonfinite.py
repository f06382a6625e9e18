"""NaN and Inf propagate as in PyTorch: a non-finite input, weight, bias or incoming gradient
reaches every output cell whose window or sum contains it, on every op, algorithm, activation,
layout, dtype and CPU path (the parallel kernels and their serial twins); the CUDA kernels are
held to the same rule in the simulator (tests/cuda/test_sim.py).

One documented exception: a kernel that skips the padded cells of a window (the direct
kernels, but NCHW's stride-1 forward, which computes over a zero-padded copy) does not
multiply them, so where PyTorch multiplies such a 0 by a non-finite weight (forward) or
gradient (backward weight) and gets NaN, it may stay finite. There the rule checked is the
weaker one: non-finite only where PyTorch is."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_conv import ALGOS, _arrays, conv_cases
from test_pool import _data, _run, pool_cases

import oracle
from fastconv import ops
from fastconv.implementations import driver

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
