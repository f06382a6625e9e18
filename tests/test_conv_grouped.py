"""algo="grouped" (the CPU's rotated accumulators for NHWC layers of 2, 4 or 8 channels a group,
kernels/conv_grouped.py) against the float64 NumPy reference and PyTorch, forward, input and
weight gradients, over hypothesis-drawn layers: each served group width, a vector's worth of
groups and more, any window, stride, dilation and padding, both dtypes, serial and parallel;
its non-finite values; the layers it refuses; and that algo="auto" takes it."""

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_conv import _threads, paddings
from test_conv_depthwise import arrays, layer_case

import oracle
from fastconv import geometry, ops, registry
from fastconv.implementations import conv2d, grouped
from fastconv.kernels import VECTOR_LANES, conv_grouped

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
SERVED = grouped.SERVED


@st.composite
def grouped_cases(draw, stride_one=False, dtypes=(np.float32, np.float64)):
    """An NHWC layer of d input and d output channels a group (d each width the kernel serves),
    C one to three vectors of channels; rows from 1 pixel to several tiles wide, any window,
    stride (1 where ``stride_one``: the input gradient's), dilation and padding."""
    d = draw(st.sampled_from(SERVED))
    c = VECTOR_LANES * draw(st.integers(1, 3))
    n, h, w = draw(st.integers(1, 3)), draw(st.integers(1, 9)), draw(st.integers(1, 30))
    r, s = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    pair = st.one_of(st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3)))
    kwargs = dict(stride=1 if stride_one else draw(pair), padding=draw(paddings()),
                  dilation=draw(st.one_of(st.integers(1, 2),
                                          st.tuples(st.integers(1, 2), st.integers(1, 2)))),
                  groups=c // d, data_format="NHWC")
    return layer_case(draw, (n, h, w, c), (r, s, d, c), kwargs, dtypes)


@SETTINGS
@given(case=grouped_cases(), activation=st.sampled_from([None, "relu", "tanh", "sigmoid"]),
       with_bias=st.booleans(), parallel=st.booleans())
def test_forward_matches_reference_and_torch(case, activation, with_bias, parallel,
                                             monkeypatch, cpu_calls):
    _threads(monkeypatch, parallel)
    x, w, b, _ = arrays(case)
    b = b if with_bias else None
    before, ran = [a.copy() for a in (x, w, b) if a is not None], len(cpu_calls)
    y = ops.conv2d(x, w, b, activation=activation, algo="grouped", **case["kwargs"])
    assert y.dtype == x.dtype and y.shape == case["geometry"].y_shape
    assert [kernel.py_func.__name__ for kernel, _ in cpu_calls[ran:]] == ["grouped_nhwc_rows"]
    oracle.check({"y": y}, oracle.conv2d(x, w, b, activation=activation, **case["kwargs"]))
    for old, new in zip(before, [a for a in (x, w, b) if a is not None], strict=True):
        np.testing.assert_array_equal(old, new)


@SETTINGS
@given(case=grouped_cases(stride_one=True), parallel=st.booleans())
def test_input_gradient_matches_reference_and_torch_autograd(case, parallel, monkeypatch,
                                                             cpu_calls):
    _threads(monkeypatch, parallel)
    x, w, _, gy = arrays(case)
    before, ran = [a.copy() for a in (w, gy)], len(cpu_calls)
    gx = ops.conv2d_backward_input(gy, w, x.shape, algo="grouped", **case["kwargs"])
    assert gx.dtype == x.dtype and gx.shape == x.shape
    assert [kernel.py_func.__name__ for kernel, _ in cpu_calls[ran:]] == ["grouped_nhwc_rows"]
    oracle.check({"gx": gx}, oracle.conv2d(x, w, gy=gy, **case["kwargs"]))
    for old, new in zip(before, (w, gy), strict=True):
        np.testing.assert_array_equal(old, new)


@SETTINGS
@given(case=grouped_cases(), parallel=st.booleans())
def test_weight_gradient_matches_reference_and_torch_autograd(case, parallel, monkeypatch,
                                                              cpu_calls):
    """Windows 1 or 3 wide (kernels.conv_grouped.WEIGHT_WIDTHS; others are refused), any
    height, stride, dilation and padding: the rotated sums of each image and block, put back
    in the filters' places."""
    assume(case["w_shape"][1] in conv_grouped.WEIGHT_WIDTHS)
    _threads(monkeypatch, parallel)
    x, w, _, gy = arrays(case)
    before, ran = [a.copy() for a in (x, gy)], len(cpu_calls)
    gw = ops.conv2d_backward_weight(gy, x, w.shape, algo="grouped", **case["kwargs"])
    assert gw.dtype == x.dtype and gw.shape == w.shape
    assert [kernel.py_func.__name__ for kernel, _ in cpu_calls[ran:]] == [
        "grouped_nhwc_weight_rows"]
    oracle.check({"gw": gw}, oracle.conv2d(x, w, gy=gy, **case["kwargs"]))
    for old, new in zip(before, (x, gy), strict=True):
        np.testing.assert_array_equal(old, new)


@pytest.mark.parametrize("d", SERVED)
def test_each_output_channel_reads_its_own_groups_channels(d):
    """One filter tap at a time set to 1 (the rest 0) on an input whose channel c holds c + 1:
    each output channel k must read exactly input channel (k's group's first) + that tap's
    input channel, which a rotation the wrong way round (or by the wrong group) would move."""
    c = 2 * VECTOR_LANES
    x = np.broadcast_to(np.arange(1, c + 1, dtype=np.float32), (1, 1, 1, c)).copy()
    for i in range(d):
        for k in range(c):
            w = np.zeros((1, 1, d, c), np.float32)
            w[0, 0, i, k] = 1
            y = ops.conv2d(x, w, groups=c // d, data_format="NHWC", algo="grouped")
            want = np.zeros(c, np.float32)
            want[k] = k - k % d + i + 1
            np.testing.assert_array_equal(y[0, 0, 0], want)


@SETTINGS
@given(case=grouped_cases(dtypes=(np.float32,)),
       activation=st.sampled_from([None, "relu", "sigmoid"]),
       poisoned=st.sampled_from(["x", "w", "b", "gy"]), parallel=st.booleans(),
       data=st.data())
def test_nonfinite_values(case, activation, poisoned, parallel, data, monkeypatch):
    """A NaN or an Inf reaches every output its window or sum holds. The forward skips the
    padding's taps (tests/test_nonfinite.py's exception: where PyTorch multiplies a padded 0
    by an infinite filter value and gets NaN, y may stay finite, and is non-finite only where
    PyTorch's is); the input gradient reads no padding and matches PyTorch's pattern
    exactly; the weight gradient, which multiplies no padding either, is held to the weaker
    rule."""
    _threads(monkeypatch, parallel)
    x, w, b, gy = arrays(case)
    named = dict(x=x, w=w, b=b, gy=gy)
    flat = named[poisoned].reshape(-1)
    for _ in range(data.draw(st.integers(1, 3))):
        flat[data.draw(st.integers(0, flat.size - 1))] = data.draw(
            st.sampled_from([np.nan, np.inf, -np.inf]))
    kwargs = case["kwargs"]
    y = ops.conv2d(x, w, b, activation=activation, algo="grouped", **kwargs)
    with np.errstate(invalid="ignore"):  # the float64 reference's own inf - inf
        want = oracle.conv2d(x, w, b, activation=activation, **kwargs)
    oracle.check_nonfinite({"y": y}, want, exact=False)
    with np.errstate(invalid="ignore"):
        want = oracle.conv2d(x, w, gy=gy, **kwargs)
    if case["geometry"].stride == (1, 1):
        gx = ops.conv2d_backward_input(gy, w, x.shape, algo="grouped", **kwargs)
        oracle.check_nonfinite({"gx": gx}, want)
    if case["w_shape"][1] in conv_grouped.WEIGHT_WIDTHS:
        gw = ops.conv2d_backward_weight(gy, x, w.shape, algo="grouped", **kwargs)
        oracle.check_nonfinite({"gw": gw}, want, exact=False)


SERVES = f"NHWC layers of {', '.join(map(str, SERVED))} input"
V = VECTOR_LANES
REFUSED = [
    ("NCHW", (2, 32, 8, 8), (32, 4, 3, 3), 8, 1, "NHWC layers"),
    ("NHWC", (2, 8, 8, 32), (3, 3, 16, 32), 2, 1, SERVES),
    ("NHWC", (2, 8, 8, 32), (3, 3, 4, 16), 8, 1, SERVES),  # 4 in, 2 out
    ("NHWC", (2, 8, 8, 2 * V), (3, 3, V, 2 * V), 2, 1, SERVES),  # a group a whole vector
    ("NHWC", (2, 8, 8, 12), (3, 3, 4, 12), 3, 1, "whole vectors"),
    ("NHWC", (2, 8, 8, 32), (3, 3, 4, 32), 8, 2, "stride-1 layers"),
    ("NHWC", (2, 8, 8, 32), (5, 5, 4, 32), 8, 1, "windows 1 or 3 wide"),
]


@pytest.mark.parametrize("layout, x_shape, w_shape, groups, stride, says", REFUSED)
def test_refuses_other_layers_by_name(layout, x_shape, w_shape, groups, stride, says):
    """Where the kernel cannot run, algo="grouped" is a ValueError saying why, naming the
    layer: NCHW, other group widths (a group of a whole vector's channels among them: AVX2's
    8, which blocked's tiles run faster), input and output channels a group unequal, channels not
    whole vectors (AVX-512's 16; AVX2's 8 takes 12 as neither), the input gradient of a
    strided layer and the weight gradient of a window 5 wide (their forwards run)."""
    g = geometry.conv_geometry(x_shape, w_shape, stride, 1, 1, groups, layout)
    op = ("conv2d_backward_input" if stride > 1 else "conv2d_backward_weight" if "windows" in says
          else "conv2d")
    why = registry.refusal(op, "cpu", "grouped", g)
    assert why is not None and says in why and str(g.w_shape) in why
    if op != "conv2d":
        assert registry.refusal("conv2d", "cpu", "grouped", g) is None
    x, w, gy = (np.ones(shape, np.float32) for shape in (x_shape, w_shape, g.y_shape))
    kwargs = dict(stride=stride, padding=1, groups=groups, data_format=layout, algo="grouped")
    with pytest.raises(ValueError, match="algo='grouped'"):
        if op == "conv2d_backward_input":
            ops.conv2d_backward_input(gy, w, x_shape, **kwargs)
        elif op == "conv2d_backward_weight":
            ops.conv2d_backward_weight(gy, x, w_shape, **kwargs)
        else:
            ops.conv2d(x, w, **kwargs)


def test_auto_takes_it_for_every_op_it_serves():
    """algo="auto" runs an NHWC layer of 4 channels a group (ResNeXt's) on "grouped" for its
    forward, its weight gradient and, at stride 1, its input gradient; a strided layer's input
    gradient and a 5-wide window's weight gradient on the fitted rule's algorithm."""
    def layer(stride=1, window=3):
        return geometry.conv_geometry((8, 56, 56, 128), (window, window, 4, 128), stride, 1, 1,
                                      32, "NHWC")
    for op in registry.CONV_OPS:
        assert conv2d.choose_cpu(op, layer()) == "grouped"
    assert conv2d.choose_cpu("conv2d", layer(stride=2)) == "grouped"
    assert conv2d.choose_cpu("conv2d_backward_weight", layer(stride=2)) == "grouped"
    assert conv2d.choose_cpu("conv2d_backward_input", layer(stride=2)) != "grouped"
    assert conv2d.choose_cpu("conv2d_backward_weight", layer(window=5)) != "grouped"
