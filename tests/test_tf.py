"""fastconv.tf against tf.nn's documented behaviour: conv2d, max_pool2d and avg_pool2d against
PyTorch in float64 over hypothesis-drawn shapes, spellings of strides/ksize/dilations, paddings,
groups, layouts and dtypes; TensorFlow's docstring examples and output sizes; and bad arguments
raising with the argument named. TensorFlow itself is not installed: its rules are written out
here, independently of fastconv's geometry."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import oracle
from fastconv import tf
from oracle import from_nchw, random, rel_error, to_nchw, tolerance

SETTINGS = settings(max_examples=30, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
LAYOUTS = ("NHWC", "NCHW")
SPATIAL = {"NHWC": (1, 2), "NCHW": (2, 3)}


def tf_pads(padding, size, k, stride, dilation=1):
    """(before, after) of one axis: SAME gives out = ceil(in / stride) and splits the total
    padding with the odd pixel after; VALID pads nothing; explicit pairs are taken as they are."""
    if padding == "VALID":
        return 0, 0
    if padding != "SAME":
        return tuple(padding)
    total = max((math.ceil(size / stride) - 1) * stride + (k - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def four(h, w, data_format, neutral=1):
    """A tf.nn 4-list: h and w on the spatial axes of data_format, ``neutral`` elsewhere."""
    values = [neutral] * 4
    values[SPATIAL[data_format][0]], values[SPATIAL[data_format][1]] = h, w
    return values


def spellings(h, w, data_format):
    """Every tf.nn spelling of an (h, w) stride, ksize or dilation."""
    forms = [[h, w], (h, w), four(h, w, data_format), tuple(four(h, w, data_format))]
    return forms + [h, [h], (h,)] if h == w else forms


def layout(n, c, h, w, data_format):
    """The shape of an (N, C, H, W) array in data_format."""
    return (n, h, w, c) if data_format == "NHWC" else (n, c, h, w)


def torch_nchw(a, data_format):
    return torch.from_numpy(np.ascontiguousarray(to_nchw(a, data_format), np.float64))


def _hw(padding, data_format):
    """The padding of the height and width axes: a word for both, or their pairs."""
    if isinstance(padding, str):
        return padding, padding
    h, w = SPATIAL[data_format]
    return padding[h], padding[w]


@st.composite
def shared(draw, data_format):
    """What conv2d and pooling cases share: batch, input and window sizes, dtype and seed."""
    h, w = draw(st.integers(1, 10)), draw(st.integers(1, 10))
    r, s = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    return dict(data_format=data_format, N=draw(st.integers(1, 2)), H=h, W=w, R=r, S=s,
                dtype=draw(st.sampled_from([np.float32, np.float64])),
                seed=draw(st.integers(0, 2**32 - 1)))


@st.composite
def conv_cases(draw):
    data_format = draw(st.sampled_from(LAYOUTS))
    case = draw(shared(data_format))
    groups = draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    # TensorFlow strides no atrous convolution: strides stay 1 when a dilation is above 1.
    sh, sw = (1, 1) if max(dh, dw) > 1 else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = draw(st.sampled_from(["SAME", "VALID", "explicit"]))
    if padding == "explicit":
        pads = [[draw(st.integers(0, 2)), draw(st.integers(0, 2))] for _ in range(2)]
        padding = four(*pads, data_format, neutral=[0, 0])
    pad_h, pad_w = _hw(padding, data_format)
    case.update(C=groups * draw(st.integers(1, 3)), K=groups * draw(st.integers(1, 3)),
                groups=groups, padding=padding,
                strides=draw(st.sampled_from(spellings(sh, sw, data_format))),
                dilations=draw(st.sampled_from([None] * (dh == dw == 1)
                                               + spellings(dh, dw, data_format))),
                pads=(tf_pads(pad_h, case["H"], case["R"], sh, dh),
                      tf_pads(pad_w, case["W"], case["S"], sw, dw)),
                stride=(sh, sw), dilation=(dh, dw))
    (top, bottom), (left, right) = case["pads"]
    assume(case["H"] + top + bottom > (case["R"] - 1) * dh
           and case["W"] + left + right > (case["S"] - 1) * dw)
    return case


def _input(case, rng):
    return random(rng, layout(*(case[a] for a in "NCHW"), case["data_format"]), case["dtype"])


@SETTINGS
@given(case=conv_cases())
def test_conv2d_matches_torch(case):
    rng = np.random.default_rng(case["seed"])
    x = _input(case, rng)
    filters = random(rng, (case["R"], case["S"], case["C"] // case["groups"], case["K"]),
                     case["dtype"])
    y = tf.conv2d(x, filters, case["strides"], case["padding"], case["data_format"],
                  case["dilations"])
    assert type(y) is np.ndarray and y.dtype == x.dtype
    # TensorFlow's filters are HWIO in either layout; fastconv.ops takes OIHW with NCHW. The
    # padding is TensorFlow's rule worked out here (tf_pads), not by fastconv.
    w = filters if case["data_format"] == "NHWC" else filters.transpose(3, 2, 0, 1)
    oracle.check({"y": y}, oracle.conv2d(x, w, stride=case["stride"], padding=case["pads"],
                                         dilation=case["dilation"], groups=case["groups"],
                                         data_format=case["data_format"]))


@st.composite
def pool_cases(draw):
    data_format = draw(st.sampled_from(LAYOUTS))
    case = draw(shared(data_format))
    op = draw(st.sampled_from(["max", "avg"]))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    padding = draw(st.sampled_from(["SAME", "VALID"] + ["explicit"] * (op == "max")))
    if padding == "explicit":  # TensorFlow's rule: each side smaller than the window
        pad_h = [draw(st.integers(0, case["R"] - 1)) for _ in range(2)]
        pad_w = [draw(st.integers(0, case["S"] - 1)) for _ in range(2)]
        padding = four(pad_h, pad_w, data_format, neutral=[0, 0])
    pad_h, pad_w = _hw(padding, data_format)
    case.update(op=op, C=draw(st.integers(1, 3)), padding=padding,
                ksize=draw(st.sampled_from(spellings(case["R"], case["S"], data_format))),
                strides=draw(st.sampled_from(spellings(sh, sw, data_format))),
                pads=(tf_pads(pad_h, case["H"], case["R"], sh),
                      tf_pads(pad_w, case["W"], case["S"], sw)),
                stride=(sh, sw))
    (top, bottom), (left, right) = case["pads"]
    assume(case["H"] + top + bottom >= case["R"] and case["W"] + left + right >= case["S"])
    return case


def _torch_pool(x, case):
    """max over the real cells (padding is -inf), or their sum over their count."""
    (top, bottom), (left, right) = case["pads"]
    window = dict(kernel_size=(case["R"], case["S"]), stride=case["stride"])
    sides = (left, right, top, bottom)
    if case["op"] == "max":
        return F.max_pool2d(F.pad(x, sides, value=-math.inf), **window)
    total = F.avg_pool2d(F.pad(x, sides), divisor_override=1, **window)
    return total / F.avg_pool2d(F.pad(torch.ones_like(x), sides), divisor_override=1, **window)


@SETTINGS
@given(case=pool_cases())
def test_pooling_matches_torch(case):
    x = _input(case, np.random.default_rng(case["seed"]))
    pool = tf.max_pool2d if case["op"] == "max" else tf.avg_pool2d
    y = pool(x, case["ksize"], case["strides"], case["padding"], case["data_format"])
    want = _torch_pool(torch_nchw(x, case["data_format"]), case)
    assert type(y) is np.ndarray and y.dtype == x.dtype
    assert rel_error(y, from_nchw(want.numpy(), case["data_format"])) < tolerance(case["dtype"])


@pytest.mark.parametrize("size,k,stride,dilation,padding,out", [
    (224, 7, 2, 1, "SAME", 112), (224, 7, 2, 1, "VALID", 109), (5, 3, 2, 1, "SAME", 3),
    (6, 3, 2, 1, "VALID", 2), (7, 3, 1, 2, "VALID", 3), (7, 3, 1, 2, "SAME", 7),
    (1, 4, 3, 1, "SAME", 1), (10, 4, 3, 1, "VALID", 3)])
@pytest.mark.parametrize("data_format", LAYOUTS)
def test_output_sizes_follow_tensorflow(size, k, stride, dilation, padding, out, data_format):
    """SAME: out = ceil(in / stride); VALID: out = ceil((in - (k - 1) * dilation) / stride)."""
    assert out == (math.ceil(size / stride) if padding == "SAME"
                   else math.ceil((size - (k - 1) * dilation) / stride))
    rng = np.random.default_rng(0)
    x, filters = random(rng, layout(1, 1, size, 3, data_format)), random(rng, (k, 1, 1, 2))
    y = tf.conv2d(x, filters, [stride, 1], padding, data_format, [dilation, 1])
    assert y.shape == layout(1, 2, out, 3, data_format)
    if dilation == 1:
        for pool in (tf.max_pool2d, tf.avg_pool2d):
            assert pool(x, [k, 1], [stride, 1], padding, data_format).shape == layout(
                1, 1, out, 3, data_format)


@pytest.mark.parametrize("data_format", LAYOUTS)
def test_7x7_stride2_same_on_224_pads_2_then_3(data_format):
    """TensorFlow's SAME puts the odd pixel after: (2, 3), not 3 and 3."""
    rng = np.random.default_rng(1)
    x, filters = random(rng, layout(1, 2, 224, 224, data_format)), random(rng, (7, 7, 2, 3))
    same = tf.conv2d(x, filters, 2, "SAME", data_format)
    explicit = tf.conv2d(x, filters, 2, four([2, 3], [2, 3], data_format, [0, 0]), data_format)
    assert same.shape == layout(1, 3, 112, 112, data_format)
    np.testing.assert_array_equal(same, explicit)


# tf.nn.max_pool2d's docstring: a 3x4 image, 2x2 windows, stride 2.
MAX_POOL_DOC = np.array([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]], np.float32)


@pytest.mark.parametrize("padding,want", [
    ("VALID", [[6, 8]]),
    ("SAME", [[6, 8], [10, 12]]),
    ([[0, 0], [1, 1], [1, 1], [0, 0]], [[1, 3, 4], [9, 11, 12]]),
    ([[0, 0], [0, 1], [1, 0], [0, 0]], [[5, 7], [9, 11]]),
], ids=["valid", "same", "explicit", "explicit-asymmetric"])
def test_max_pool2d_docstring_examples(padding, want):
    x = MAX_POOL_DOC[None, :, :, None]
    y = tf.max_pool2d(x, ksize=(2, 2), strides=(2, 2), padding=padding)
    np.testing.assert_array_equal(y[0, :, :, 0], np.array(want, np.float32))


def test_max_pool2d_takes_the_asymmetric_padding_tensorflow_takes():
    """[[0, 0], [0, 2], [0, 1], [0, 0]] around 3x3 windows: the padded cells never win, so the
    result is PyTorch's max over the input padded with -inf on those sides."""
    x = random(np.random.default_rng(8), (2, 7, 6, 3))
    y = tf.max_pool2d(x, 3, 2, [[0, 0], [0, 2], [0, 1], [0, 0]])
    want = F.max_pool2d(F.pad(torch_nchw(x, "NHWC"), (0, 1, 0, 2), value=-math.inf), 3, 2)
    assert y.shape == (2, 4, 3, 3)
    np.testing.assert_array_equal(y, want.numpy().transpose(0, 2, 3, 1))


def test_conv2d_docstring_example():
    """tf.nn.conv2d's docstring: a 5x5 image, a 2x2x1x2 kernel, VALID -> shape (1, 4, 4, 2)."""
    x = np.array([[2, 1, 2, 0, 1], [1, 3, 2, 2, 3], [1, 1, 3, 3, 0], [2, 2, 0, 1, 1],
                  [0, 0, 3, 1, 2]], np.float32)[None, :, :, None]
    kernel = np.array([[[[2, 0.1]], [[3, 0.2]]], [[[0, 0.3]], [[1, 0.4]]]], np.float32)
    y = tf.conv2d(x, kernel, strides=[1, 1, 1, 1], padding="VALID")
    assert y.shape == (1, 4, 4, 2)
    # output[0, i, j, k] = sum over di, dj of x[i + di, j + dj] * kernel[di, dj, 0, k]
    assert y[0, 0, 0, 0] == 2 * 2 + 1 * 3 + 1 * 0 + 3 * 1
    assert y[0, 3, 3, 1] == pytest.approx(1 * 0.1 + 1 * 0.2 + 1 * 0.3 + 2 * 0.4)


def test_avg_pool2d_same_divides_by_the_real_cells():
    x = np.arange(1, 10, dtype=np.float64).reshape(1, 3, 3, 1)
    y = tf.avg_pool2d(x, 2, 2, "SAME")  # pads (0, 1): the last row and column are alone
    np.testing.assert_allclose(y[0, :, :, 0], [[3, 4.5], [7.5, 9]])


@pytest.mark.parametrize("data_format", LAYOUTS)
def test_every_spelling_gives_the_same_result(data_format):
    """strides, ksize and dilations as an int, 1, 2 or 4 ints; None dilations; explicit
    padding as lists or tuples."""
    rng = np.random.default_rng(2)
    x, filters = random(rng, layout(2, 4, 9, 9, data_format)), random(rng, (3, 3, 2, 4))
    pads = four([1, 0], [2, 1], data_format, [0, 0])

    def conv(strides=1, dilations=None, padding="SAME"):
        return tf.conv2d(x, filters, strides, padding, data_format, dilations)

    for form in spellings(2, 2, data_format):
        np.testing.assert_array_equal(conv(strides=form), conv(strides=[2, 2]))
        np.testing.assert_array_equal(conv(dilations=form), conv(dilations=[2, 2]))
        for pool in (tf.max_pool2d, tf.avg_pool2d):
            np.testing.assert_array_equal(pool(x, form, form, "VALID", data_format),
                                          pool(x, [2, 2], [2, 2], "VALID", data_format))
    np.testing.assert_array_equal(conv(dilations=None), conv(dilations=1))
    np.testing.assert_array_equal(conv(padding=pads), conv(padding=tuple(map(tuple, pads))))
    np.testing.assert_array_equal(conv(strides=four(1, 2, data_format)), conv(strides=(1, 2)))


@pytest.mark.parametrize("data_format", LAYOUTS)
def test_inputs_are_not_modified(data_format):
    rng = np.random.default_rng(3)
    x, filters = random(rng, layout(2, 4, 7, 7, data_format)), random(rng, (3, 3, 2, 6))
    x_copy, filters_copy = x.copy(), filters.copy()
    tf.conv2d(x, filters, 1, "SAME", data_format)
    tf.max_pool2d(x, 3, 2, "SAME", data_format)
    tf.avg_pool2d(x, 3, 2, "SAME", data_format)
    np.testing.assert_array_equal(x, x_copy)
    np.testing.assert_array_equal(filters, filters_copy)


def _rand(*shape):
    return random(np.random.default_rng(6), shape)


def _conv(**change):
    rng = np.random.default_rng(4)
    args = dict(input=random(rng, (1, 6, 6, 4)), filters=random(rng, (3, 3, 2, 4)), strides=1,
                padding="SAME")
    return tf.conv2d(**{**args, **change})


def _pool(pool, **change):
    args = dict(input=random(np.random.default_rng(5), (1, 6, 6, 4)), ksize=2, strides=2,
                padding="VALID")
    return pool(**{**args, **change})


BAD = {
    "stride on the batch axis": (lambda: _conv(strides=[2, 1, 1, 1]), ValueError,
                                 r"strides must be 1 on the batch and channel axes of NHWC"),
    "stride on the NCHW channel axis": (
        lambda: _conv(input=_rand(1, 4, 6, 6), strides=[1, 2, 1, 1],
                      data_format="NCHW"),
        ValueError, r"strides must be 1 on the batch and channel axes of NCHW, got \[1, 2, 1, 1\]"),
    "3 strides": (lambda: _conv(strides=[1, 2, 2]), ValueError,
                  r"strides must be an int or a list of 1, 2 or 4 ints, got \[1, 2, 2\] "
                  r"of length 3"),
    "zero stride": (lambda: _conv(strides=0), ValueError, r"strides must be >= 1"),
    "float stride": (lambda: _conv(strides=1.5), TypeError, r"strides must be an int"),
    "lowercase same": (lambda: _conv(padding="same"), ValueError,
                       r"padding must be 'SAME' or 'VALID' \(uppercase, as in TensorFlow\).*"
                       r"got 'same'"),
    "padding word": (lambda: _conv(padding="EXPLICIT"), ValueError, r"got 'EXPLICIT'"),
    "lowercase layout": (lambda: _conv(data_format="nhwc"), ValueError,
                         r"data_format must be 'NHWC' or 'NCHW' \(uppercase"),
    "batch padding": (lambda: _conv(padding=[[1, 0], [1, 1], [1, 1], [0, 0]]), ValueError,
                      r"padding must be \[0, 0\] on the batch and channel axes of NHWC"),
    "channel padding": (lambda: _conv(padding=[[0, 0], [1, 1], [1, 1], [0, 1]]), ValueError,
                        r"padding must be \[0, 0\] on the batch and channel axes"),
    "2 pairs": (lambda: _conv(padding=[[1, 1], [1, 1]]), ValueError,
                r"or 4 pairs \[\[0, 0\], \[top, bottom\], \[left, right\], \[0, 0\]\]"),
    "negative padding": (lambda: _conv(padding=[[0, 0], [-1, 1], [1, 1], [0, 0]]), ValueError,
                         r"padding must be >= 0"),
    "dilation with stride": (lambda: _conv(strides=2, dilations=2), ValueError,
                             r"dilations 2 above 1 need strides of 1, as in TensorFlow; "
                             r"got strides 2"),
    "dilation on the batch axis": (lambda: _conv(dilations=[2, 1, 1, 1]), ValueError,
                                   r"dilations must be 1 on the batch and channel axes"),
    "channels not divisible": (lambda: _conv(filters=_rand(3, 3, 3, 4)), ValueError,
                               r"input has 4 channels, not a multiple of the filters' "
                               r"in_channels 3"),
    "out_channels not divisible by groups": (lambda: _conv(filters=_rand(3, 3, 2, 3)),
                                             ValueError, r"groups=2 must divide"),
    "3-D filters": (lambda: _conv(filters=_rand(3, 3, 4)), ValueError,
                    r"filters must be 4-D HWIO"),
    "3-D input": (lambda: _pool(tf.max_pool2d, input=_rand(6, 6, 4)), ValueError,
                  r"input must be 4-D NHWC, got shape \(6, 6, 4\)"),
    "list input": (lambda: _conv(input=[[1.0]]), TypeError, r"input must be an array, got list"),
    "ksize on the channel axis": (lambda: _pool(tf.max_pool2d, ksize=[1, 2, 2, 2]), ValueError,
                                  r"ksize must be 1 on the batch and channel axes of NHWC"),
    "pool lowercase valid": (lambda: _pool(tf.avg_pool2d, padding="valid"), ValueError,
                             r"got 'valid'"),
    "avg_pool2d explicit padding": (
        lambda: _pool(tf.avg_pool2d, padding=[[0, 0], [1, 1], [1, 1], [0, 0]]), ValueError,
        r"padding must be 'SAME' or 'VALID' \(uppercase, as in TensorFlow\), got"),
    "max-pool padding as large as the window": (
        lambda: _pool(tf.max_pool2d, padding=[[0, 0], [0, 3], [0, 0], [0, 0]]), ValueError,
        r"padding \(\(0, 3\), \(0, 0\)\) must be smaller than kernel_size \(2, 2\) on every "
        r"side"),
}


@pytest.mark.parametrize("name", BAD)
def test_bad_arguments_raise_naming_them(name):
    call, error, message = BAD[name]
    with pytest.raises(error, match=message):
        call()


def test_empty_spatial_or_channel_axes_give_tensorflows_shapes():
    """TensorFlow's Conv2D returns an empty output when there is nothing to compute and zeros
    when only the input is empty (conv_ops.cc); its windowed sizes decide the shapes."""
    w = np.ones((3, 3, 3, 4), np.float32)
    y = tf.conv2d(np.empty((2, 0, 5, 3), np.float32), w, 2, "SAME")
    assert y.shape == (2, 0, 3, 4)
    y = tf.conv2d(np.empty((2, 5, 5, 0), np.float32), w, 1, "VALID")
    assert y.shape == (2, 3, 3, 4) and y.dtype == np.float32 and not y.any()
    y = tf.conv2d(np.empty((1, 0, 6, 5), np.float64), w, 1, [[0, 0], [0, 0], [2, 2], [1, 1]],
                  data_format="NCHW")
    assert y.shape == (1, 4, 8, 5) and not y.any()  # 6 + 2 + 2 - 3 + 1, 5 + 1 + 1 - 3 + 1
    with pytest.raises(ValueError, match="Computed output size would be negative"):
        tf.conv2d(np.empty((2, 0, 5, 3), np.float32), w, 1, "VALID")
    assert tf.max_pool2d(np.empty((1, 0, 4, 3), np.float32), 2, 2, "SAME").shape == (1, 0, 2, 3)
    assert tf.avg_pool2d(np.empty((1, 4, 4, 0), np.float32), 2, 2, "VALID").shape == (1, 2, 2, 0)
    assert tf.max_pool2d(np.empty((1, 0, 4, 4), np.float32), 3, 1, "SAME",
                         data_format="NCHW").shape == (1, 0, 4, 4)
