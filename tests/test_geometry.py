"""Shape arithmetic against independent oracles: PyTorch's output shapes and TensorFlow's
documented SAME rule (hand-computed), plus the geometry objects' shape properties."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fastconv.geometry import (
    ConvGeometry,
    PoolGeometry,
    activation,
    conv_geometry,
    layout,
    pair,
    pool_geometry,
    same_padding,
)

SWEEP = settings(max_examples=150, deadline=None)
small = st.integers(1, 12)


def _nhwc(shape):
    n, c, h, w = shape
    return (n, h, w, c)


def _hwio(shape):
    k, c, r, s = shape
    return (r, s, c, k)


# --- convolution ------------------------------------------------------------------------------

@st.composite
def convolutions(draw):
    groups = draw(st.integers(1, 3))
    return dict(
        x=(draw(st.integers(1, 2)), groups * draw(st.integers(1, 2)), draw(small), draw(small)),
        w=(groups * draw(st.integers(1, 2)), None, draw(st.integers(1, 5)),
           draw(st.integers(1, 5))),
        groups=groups,
        stride=(draw(st.integers(1, 4)), draw(st.integers(1, 4))),
        dilation=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        padding=(draw(st.integers(0, 4)), draw(st.integers(0, 4))),
    )


def _torch_conv_shape(x, w, stride, padding, dilation, groups):
    """PyTorch's output shape, or None where PyTorch refuses the geometry."""
    try:
        return tuple(F.conv2d(torch.zeros(x), torch.zeros(w), None, stride, padding, dilation,
                              groups).shape)
    except RuntimeError:
        return None


@SWEEP
@given(convolutions(), st.sampled_from(["NCHW", "NHWC"]))
def test_conv_shapes_match_torch(case, data_format):
    x, groups = case["x"], case["groups"]
    w = (case["w"][0], x[1] // groups, *case["w"][2:])
    args = (case["stride"], case["padding"], case["dilation"], groups)
    expected = _torch_conv_shape(x, w, *args)
    xs, ws = (x, w) if data_format == "NCHW" else (_nhwc(x), _hwio(w))
    if expected is None:
        with pytest.raises(ValueError, match="larger than"):
            conv_geometry(xs, ws, case["stride"], case["padding"], case["dilation"], groups,
                          data_format)
        return
    g = conv_geometry(xs, ws, case["stride"], case["padding"], case["dilation"], groups,
                      data_format)
    assert g.y_shape == (expected if data_format == "NCHW" else _nhwc(expected))
    ph, pw = case["padding"]
    assert g.padding == (ph, ph, pw, pw)


@SWEEP
@given(small, small, st.integers(1, 5), st.integers(1, 3), st.integers(1, 3),
       st.tuples(*[st.integers(0, 3)] * 4))
def test_asymmetric_conv_padding_matches_torch_pad_then_conv(h, w, k, stride, dilation, pads):
    top, bottom, left, right = pads
    assume((k - 1) * dilation + 1 <= min(h + top + bottom, w + left + right))
    padded = F.pad(torch.zeros(1, 1, h, w), (left, right, top, bottom))
    expected = F.conv2d(padded, torch.zeros(1, 1, k, k), None, stride, 0, dilation).shape
    g = conv_geometry((1, 1, h, w), (1, 1, k, k), stride, ((top, bottom), (left, right)),
                      dilation, 1, "NCHW")
    assert g.y_shape == tuple(expected)
    assert g.padding == pads


# in, kernel, stride, dilation -> out, (before, after): TensorFlow's SAME, worked by hand from
# total = max((ceil(in / stride) - 1) * stride + (kernel - 1) * dilation + 1 - in, 0), the odd
# pixel after.
TF_SAME = [
    (224, 7, 2, 1, 112, (2, 3)),  # ResNet's stem: not (3, 3)
    (224, 3, 2, 1, 112, (0, 1)),
    (112, 1, 2, 1, 56, (0, 0)),   # total would be -1
    (5, 3, 2, 1, 3, (1, 1)),      # stride 2, odd input
    (7, 3, 2, 1, 4, (1, 1)),
    (6, 3, 2, 1, 3, (0, 1)),      # stride 2, even input
    (8, 3, 2, 1, 4, (0, 1)),
    (8, 4, 2, 1, 4, (1, 1)),
    (10, 4, 1, 1, 10, (1, 2)),    # even kernel, stride 1
    (9, 3, 3, 1, 3, (0, 0)),
    (4, 2, 4, 1, 1, (0, 0)),      # stride > kernel: total would be -2
    (1, 3, 2, 1, 1, (1, 1)),
    (10, 3, 1, 2, 10, (2, 2)),    # dilation 2
    (6, 3, 1, 2, 6, (2, 2)),
    (5, 3, 2, 2, 3, (2, 2)),
    (7, 2, 2, 2, 4, (1, 1)),
    (8, 3, 2, 2, 4, (1, 2)),
    (9, 3, 1, 3, 9, (3, 3)),
]


@pytest.mark.parametrize("size, k, stride, dilation, out, pads", TF_SAME)
@pytest.mark.parametrize("word", ["same", "SAME"])
def test_conv_same_follows_tensorflow(size, k, stride, dilation, out, pads, word):
    assert same_padding(size, k, stride, dilation) == pads
    g = conv_geometry((1, 1, size, 3), (1, 1, k, 1), (stride, 1), word, (dilation, 1), 1, "NCHW")
    assert (g.OH, g.padding[:2]) == (out, pads)
    assert (g.OW, g.padding[2:]) == (3, (0, 0))
    gt = conv_geometry((1, 3, size, 1), (1, k, 1, 1), (1, stride), word, (1, dilation), 1, "NHWC")
    assert (gt.OW, gt.padding[2:]) == (out, pads)


@SWEEP
@given(small, st.integers(1, 5), st.integers(1, 4), st.integers(1, 3))
def test_conv_same_and_valid_sizes(size, k, stride, dilation):
    extent = (k - 1) * dilation + 1
    g = conv_geometry((1, 1, size, size), (1, 1, k, k), stride, "same", dilation, 1, "NCHW")
    assert g.OH == g.OW == math.ceil(size / stride)
    top, bottom, left, right = g.padding
    assert (top, bottom) == (left, right) and bottom - top in (0, 1)
    assert (g.OH - 1) * stride + extent <= size + top + bottom  # the last window fits
    if extent <= size:
        v = conv_geometry((1, 1, size, size), (1, 1, k, k), stride, "Valid", dilation, 1, "NCHW")
        assert (v.OH, v.padding) == ((size - extent) // stride + 1, (0, 0, 0, 0))
    else:
        with pytest.raises(ValueError, match="larger than"):
            conv_geometry((1, 1, size, size), (1, 1, k, k), stride, "valid", dilation, 1, "NCHW")


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
def test_torch_same_rule_agrees_at_stride_one():
    """PyTorch's padding="same" (stride 1 only) keeps the size, as the TF rule does."""
    for k, d in [(2, 1), (3, 1), (4, 2), (5, 3)]:
        out = F.conv2d(torch.zeros(1, 1, 9, 9), torch.zeros(1, 1, k, k), padding="same",
                       dilation=d).shape[2:]
        g = conv_geometry((1, 1, 9, 9), (1, 1, k, k), 1, "same", d, 1, "NCHW")
        assert (g.OH, g.OW) == tuple(out)
        assert g.padding[:2] == ((k - 1) * d // 2, (k - 1) * d - (k - 1) * d // 2)


# --- pooling ----------------------------------------------------------------------------------

def _torch_pool_shape(size, k, s, p, ceil_mode, dilation=1):
    """PyTorch's pooled (OH, OW), or None where PyTorch refuses the geometry."""
    try:
        return tuple(F.max_pool2d(torch.zeros(1, 1, *size), k, s, p, dilation,
                                  ceil_mode=ceil_mode).shape[2:])
    except RuntimeError:
        return None


def _torch_has_a_tapless_window(case):
    """Whether PyTorch's max pooling of finite input gives -inf somewhere: a window whose
    dilated taps all miss the input."""
    y = F.max_pool2d(torch.zeros(1, 1, *case["size"]), case["k"], case["s"], case["p"],
                     case["d"], ceil_mode=case["ceil_mode"])
    return bool(torch.isinf(y).any())


@st.composite
def poolings(draw):
    k = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    return dict(size=(draw(small), draw(small)), k=k,
                s=(draw(st.integers(1, 4)), draw(st.integers(1, 4))),
                p=tuple(draw(st.integers(0, kk // 2)) for kk in k),
                d=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
                ceil_mode=draw(st.booleans()))


@SWEEP
@given(poolings(), st.sampled_from(["NCHW", "NHWC"]))
def test_pool_shapes_match_torch(case, data_format):
    h, w = case["size"]
    x_shape = (2, 3, h, w) if data_format == "NCHW" else (2, h, w, 3)
    args = (case["k"], case["s"], case["p"], case["ceil_mode"], True, data_format, case["d"])
    expected = _torch_pool_shape(case["size"], case["k"], case["s"], case["p"],
                                 case["ceil_mode"], case["d"])
    if expected is None:
        with pytest.raises(ValueError, match="larger than"):
            pool_geometry(x_shape, *args)
        return
    if _torch_has_a_tapless_window(case):  # PyTorch: -inf, and an index outside the plane
        with pytest.raises(ValueError, match="has no tap on the input"):
            pool_geometry(x_shape, *args)
        return
    g = pool_geometry(x_shape, *args)
    assert (g.OH, g.OW) == expected
    assert g.y_shape == ((2, 3, *expected) if data_format == "NCHW" else (2, *expected, 3))
    (ph, pw) = case["p"]
    assert g.padding == (ph, ph, pw, pw) and g.count_padding


# size, kernel, stride, padding, ceil_mode -> out (the PyTorch values; pytorch#46929)
TORCH_POOL = [
    (5, 2, 2, 1, True, 3),   # not 4: the 4th window would start in the right padding
    (5, 2, 2, 1, False, 3),
    (5, 2, 2, 0, True, 3),
    (5, 2, 2, 0, False, 2),
    (6, 3, 2, 1, True, 4),
    (6, 3, 2, 0, True, 3),
    (7, 3, 3, 1, True, 3),
    (4, 4, 4, 2, True, 2),
    (1, 1, 1, 0, False, 1),
    (112, 3, 2, 1, False, 56),
]


@pytest.mark.parametrize("size, k, s, p, ceil_mode, out", TORCH_POOL)
def test_pool_size_table(size, k, s, p, ceil_mode, out):
    assert _torch_pool_shape((size, size), k, s, p, ceil_mode) == (out, out)  # the table is right
    g = pool_geometry((1, 1, size, size), k, s, p, ceil_mode, True, "NCHW")
    assert (g.OH, g.OW) == (out, out)


@pytest.mark.parametrize("size, k, s, p", [(1, 2, 2, 0), (2, 3, 2, 0), (1, 4, 4, 1)])
def test_ceil_mode_keeps_a_window_larger_than_the_padded_input(size, k, s, p):
    """PyTorch keeps one partial window here, and refuses it without ceil_mode."""
    assert _torch_pool_shape((size, size), k, s, p, True) == (1, 1)
    assert _torch_pool_shape((size, size), k, s, p, False) is None
    g = pool_geometry((1, 1, size, size), k, s, p, True, True, "NCHW")
    assert (g.OH, g.OW) == (1, 1) and g.y_shape == (1, 1, 1, 1)
    with pytest.raises(ValueError, match="larger than"):
        pool_geometry((1, 1, size, size), k, s, p, False, True, "NCHW")


@SWEEP
@given(small, small, st.integers(1, 5), st.integers(1, 5), st.integers(1, 4), st.integers(1, 4),
       st.sampled_from(["same", "SAME", "valid", "Valid"]), st.booleans())
def test_pool_same_and_valid_sizes(h, w, kh, kw, sh, sw, word, strided):
    stride = (sh, sw) if strided else None
    sh, sw = (sh, sw) if strided else (kh, kw)
    if word.lower() == "valid" and (kh > h or kw > w):
        with pytest.raises(ValueError, match="larger than"):
            pool_geometry((1, 1, h, w), (kh, kw), stride, word, False, True, "NCHW")
        return
    g = pool_geometry((1, 1, h, w), (kh, kw), stride, word, False, True, "NCHW")
    assert g.stride == (sh, sw) and g.kernel == (kh, kw)
    assert not g.count_padding  # TensorFlow never counts padded cells
    if word.lower() == "same":
        assert (g.OH, g.OW) == (math.ceil(h / sh), math.ceil(w / sw))
        assert g.padding == same_padding(h, kh, sh, 1) + same_padding(w, kw, sw, 1)
    else:
        assert (g.OH, g.OW) == ((h - kh) // sh + 1, (w - kw) // sw + 1)
        assert g.padding == (0, 0, 0, 0)


@SWEEP
@given(small, st.integers(1, 4), st.integers(1, 3), st.integers(0, 3), st.integers(0, 3))
def test_pool_explicit_padding_per_side_is_tensorflows(size, k, s, before, after):
    """((top, bottom), (left, right)): TensorFlow's output size, floor((in + before + after -
    k) / s) + 1, each side smaller than the window (else a ValueError naming the padding)."""
    pads = ((before, after), (0, 0))
    if max(before, after) >= k:
        with pytest.raises(ValueError, match=r"padding \(\(.*\)\) must be smaller than "
                                             r"kernel_size"):
            pool_geometry((1, 1, size, 4), (k, 1), s, pads, False, True, "NCHW")
        return
    out = (size + before + after - k) // s + 1
    if out < 1:
        with pytest.raises(ValueError, match="larger than"):
            pool_geometry((1, 1, size, 4), (k, 1), s, pads, False, True, "NCHW")
        return
    g = pool_geometry((1, 1, size, 4), (k, 1), s, pads, False, True, "NCHW")
    assert g.OH == out and g.padding == (before, after, 0, 0)


@pytest.mark.parametrize("call, error, message", [
    (lambda: pool_geometry((1, 1, 8, 8), 3, 1, ((0, 1), (1, 0)), True, True, "NCHW"),
     ValueError, r"ceil_mode needs PyTorch's symmetric padding"),
    (lambda: pool_geometry((1, 1, 8, 8), 3, 1, 2, False, True, "NCHW"),
     ValueError, r"padding \(2, 2\) must be at most half of kernel_size \(3, 3\)"),
    (lambda: pool_geometry((1, 1, 8, 8), 3, 1, 1, False, True, "NCHW", 0),
     ValueError, r"dilation must be >= 1, got 0"),
    (lambda: pool_geometry((1, 1, 8, 8), 3, 1, 1, False, True, "NCHW", 1, 0),
     ValueError, r"divisor_override must not be zero"),
    (lambda: pool_geometry((1, 1, 8, 8), 3, 1, 1, False, True, "NCHW", 1, 2.0),
     TypeError, r"divisor_override must be an int, got 2.0"),
    (lambda: pool_geometry((1, 1, 4, 4), 3, 1, 0, False, True, "NCHW", 2),
     ValueError, r"kernel_size \(3, 3\) dilated by \(2, 2\) is larger than the padded"),
    (lambda: pool_geometry((1, 1, 1, 1), 2, None, 1, False, True, "NCHW", 2),
     ValueError, r"window 0 along the height of x \(1, 1, 1, 1\) .* has no tap on the input"),
    (lambda: pool_geometry((1, 1, 9, 1), (1, 2), 1, "same", False, True, "NCHW", (1, 3)),
     ValueError, r"window 0 along the width .* has no tap on the input"),
], ids=["ceil_mode with per-side padding", "padding above half", "dilation 0",
        "divisor_override 0", "divisor_override float", "dilated window too large",
        "a window between the taps (PyTorch: -inf and an index outside the plane)",
        "the same with 'same' padding"])
def test_pool_geometry_refuses_naming_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_pool_stride_defaults_to_kernel_and_count_include_pad_is_kept():
    g = pool_geometry((1, 1, 9, 8), (3, 2), None, 1, False, False, "NCHW")
    assert g.stride == (3, 2) and not g.count_padding
    assert pool_geometry((1, 1, 9, 8), 3, None, 1, False, True, "NCHW").count_padding


# --- shape properties in both layouts --------------------------------------------------------

@SWEEP
@given(convolutions())
def test_conv_geometry_shape_properties(case):
    x, groups = case["x"], case["groups"]
    w = (case["w"][0], x[1] // groups, *case["w"][2:])
    args = (case["stride"], case["padding"], case["dilation"], groups)
    assume(_torch_conv_shape(x, w, *args) is not None)
    g = conv_geometry(x, w, *args, "NCHW")
    gt = conv_geometry(_nhwc(x), _hwio(w), *args, "NHWC")
    assert isinstance(g, ConvGeometry) and (g.layout, gt.layout) == ("NCHW", "NHWC")
    assert (g.N, g.C, g.H, g.W, g.K, g.R, g.S) == (*x, w[0], *w[2:])
    assert (g.x_shape, g.w_shape, g.y_shape) == (x, w, (x[0], w[0], g.OH, g.OW))
    assert (gt.x_shape, gt.w_shape, gt.y_shape) == (_nhwc(x), _hwio(w), _nhwc(g.y_shape))
    fields = ("N", "C", "H", "W", "K", "R", "S", "OH", "OW", "stride", "dilation", "padding")
    assert all(getattr(g, f) == getattr(gt, f) for f in fields)  # NCHW terms in both layouts
    assert g.key() != gt.key()


def test_pool_geometry_shape_properties():
    g = pool_geometry((2, 3, 7, 6), (3, 2), (2, 2), (1, 0), True, True, "NCHW")
    gt = pool_geometry((2, 7, 6, 3), (3, 2), (2, 2), (1, 0), True, True, "nhwc")
    assert isinstance(g, PoolGeometry) and (g.layout, gt.layout) == ("NCHW", "NHWC")
    assert (g.N, g.C, g.H, g.W, g.OH, g.OW) == (gt.N, gt.C, gt.H, gt.W, gt.OH, gt.OW)
    assert (g.N, g.C, g.H, g.W, g.OH, g.OW) == (2, 3, 7, 6, 4, 3)
    assert (g.x_shape, g.y_shape) == ((2, 3, 7, 6), (2, 3, 4, 3))
    assert (gt.x_shape, gt.y_shape) == ((2, 7, 6, 3), (2, 4, 3, 3))
    assert g.key() != gt.key()


# --- argument normalisation -------------------------------------------------------------------

@pytest.mark.parametrize("value, minimum, expected", [
    (2, 1, (2, 2)),
    ((2, 3), 1, (2, 3)),
    ([4, 5], 1, (4, 5)),
    (0, 0, (0, 0)),
    ((0, 1), 0, (0, 1)),
    (np.int64(7), 1, (7, 7)),
    ((np.int32(1), 2), 1, (1, 2)),
])
def test_pair_expands(value, minimum, expected):
    got = pair(value, "arg", minimum)
    assert got == expected and all(type(v) is int for v in got)


@pytest.mark.parametrize("value, minimum, exc", [
    (0, 1, ValueError),
    (-1, 0, ValueError),
    ((1, 0), 1, ValueError),
    ((0, -1), 0, ValueError),
    (True, 1, TypeError),
    ((1, False), 0, TypeError),
    (1.0, 1, TypeError),
    ((1, 2.5), 1, TypeError),
    ((1,), 1, TypeError),
    ((1, 2, 3), 1, TypeError),
    ("ab", 1, TypeError),
    (None, 1, TypeError),
    (((1, 1), (1, 1)), 0, TypeError),
])
def test_pair_refuses(value, minimum, exc):
    with pytest.raises(exc, match="^my_arg must be"):
        pair(value, "my_arg", minimum)


@pytest.mark.parametrize("word, expected", [
    ("NCHW", "NCHW"), ("nchw", "NCHW"), ("Nhwc", "NHWC"), ("NHWC", "NHWC")])
def test_layout_is_case_insensitive(word, expected):
    assert layout(word) == expected


@pytest.mark.parametrize("word", ["CHWN", "", None, 0, "NCHW "])
def test_layout_refuses(word):
    with pytest.raises(ValueError, match="data_format"):
        layout(word)


@pytest.mark.parametrize("word, expected", [
    (None, None), ("relu", "relu"), ("ReLU", "relu"), ("TANH", "tanh"), ("Sigmoid", "sigmoid")])
def test_activation_is_case_insensitive(word, expected):
    assert activation(word) == expected


@pytest.mark.parametrize("word", ["gelu", "", 0])
def test_activation_refuses(word):
    with pytest.raises(ValueError, match="activation"):
        activation(word)
