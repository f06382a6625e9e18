"""conv_transpose2d forward and backward on every CPU algorithm against PyTorch's float64
conv_transpose2d (autograd for the gradients) and fastconv's float64 reference algorithm, over
hypothesis-drawn shapes, strides, paddings (asymmetric too), output paddings, dilations, groups,
layouts, activations and dtypes; the layers against PyTorch's; the argument checks."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_nonfinite import NONFINITE, _poison

import oracle
from fastconv import geometry, nn, ops, tensor
from fastconv.implementations import driver
from oracle import from_nchw, random, rel_error, to_nchw, tolerance

ACTIVATIONS = {None: lambda t: t, "relu": torch.relu, "tanh": torch.tanh,
               "sigmoid": torch.sigmoid}


@st.composite
def cases(draw):
    groups = draw(st.integers(1, 2))
    c_in, c_out = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    r, s = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    output_padding = tuple(draw(st.integers(0, max(a, b) - 1)) for a, b in
                           zip(stride, dilation, strict=True))
    padding = draw(st.integers(0, 2))
    layout = draw(st.sampled_from(["NCHW", "NHWC"]))
    n, h, w = draw(st.integers(0, 2)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
    x_shape = (n, c_in, h, w)
    w_shape = (c_in, c_out // groups, r, s)
    kwargs = dict(stride=stride, padding=padding, output_padding=output_padding,
                  groups=groups, dilation=dilation)
    try:
        geometry.conv_transpose_geometry(x_shape, w_shape, **kwargs, data_format="NCHW")
    except ValueError:
        assume(False)  # the padding eats the whole output
    return dict(x_shape=x_shape, w_shape=w_shape, kwargs=kwargs, layout=layout,
                activation=draw(st.sampled_from(list(ACTIVATIONS))),
                dtype=draw(st.sampled_from([np.float32, np.float64])),
                seed=draw(st.integers(0, 2**32 - 1)))


def _torch(case, x, w, b, gy):
    """PyTorch's output (after the activation) and the gradients of x, w and b for gy taken as
    the gradient before the activation, as the ops take it; NCHW, float64."""
    xt, wt, bt = (torch.from_numpy(np.float64(a)).requires_grad_() for a in (x, w, b))
    z = F.conv_transpose2d(xt, wt, bt, **case["kwargs"])
    y = ACTIVATIONS[case["activation"]](z)
    z.backward(torch.from_numpy(np.float64(gy)))
    return y.detach().numpy(), xt.grad.numpy(), wt.grad.numpy(), bt.grad.numpy()


def _filters(w, layout):
    return w if layout == "NCHW" else np.ascontiguousarray(w.transpose(2, 3, 1, 0))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=cases(), algo=st.sampled_from(["auto", "direct", "blocked", "im2col"]),
       parallel=st.booleans())
def test_matches_torch_and_the_reference(case, algo, parallel, monkeypatch):
    monkeypatch.setattr(driver, "SERIAL_WORK", 0 if parallel else 1 << 62)
    rng = np.random.default_rng(case["seed"])
    dtype, layout = case["dtype"], case["layout"]
    x, w = random(rng, case["x_shape"], dtype), random(rng, case["w_shape"], dtype)
    b = random(rng, case["w_shape"][1] * case["kwargs"]["groups"], dtype)
    args = dict(case["kwargs"], data_format=layout)
    xl, wl = from_nchw(x, layout).copy(), _filters(w, layout)
    before = xl.copy(), wl.copy()
    y = ops.conv_transpose2d(xl, wl, b, activation=case["activation"], algo=algo, **args)
    gy = random(rng, y.shape, dtype)
    gx, gw, gb = ops.conv_transpose2d_backward(gy, xl, wl, algo=algo, **args)
    np.testing.assert_array_equal(xl, before[0])
    np.testing.assert_array_equal(wl, before[1])
    assert y.dtype == gx.dtype == gw.dtype == dtype and gx.shape == xl.shape
    want_y, want_gx, want_gw, want_gb = _torch(case, x, w, b, to_nchw(gy, layout))
    reference = ops.conv_transpose2d(np.float64(xl), np.float64(wl), np.float64(b),
                                     activation=case["activation"], algo="reference", **args)
    if layout == "NHWC":
        want_gw = want_gw.transpose(2, 3, 1, 0)
    for got, want in ((to_nchw(y, layout), want_y), (reference, y), (to_nchw(gx, layout),
                      want_gx), (gw, want_gw), (gb, want_gb)):
        assert rel_error(got, want) < tolerance(dtype)


def test_layers_match_pytorch_and_fuse_an_activation():
    torch.manual_seed(0)
    theirs = torch.nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2)
    ours = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2)
    assert ours.weight.shape == tuple(theirs.weight.shape) == (4, 3, 3, 3)
    bound = 1 / np.sqrt(3 * 9)
    assert np.abs(ours.weight.numpy()).max() <= bound and np.abs(ours.bias.numpy()).max() <= bound
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    x = np.random.default_rng(1).standard_normal((2, 4, 5, 5)).astype(np.float32)
    xf, xt = tensor(x, requires_grad=True), torch.from_numpy(x).requires_grad_()
    model = nn.Sequential(ours, nn.ReLU())
    y, yt = model(xf), torch.relu(theirs(xt))
    assert y.shape == (2, 6, 10, 10)
    y.sum().backward(), yt.sum().backward()
    assert rel_error(y.numpy(), yt.detach().numpy()) < 1e-5
    assert rel_error(xf.grad.numpy(), xt.grad.numpy()) < 1e-5
    assert rel_error(ours.weight.grad.numpy(), theirs.weight.grad.numpy()) < 1e-5


@pytest.mark.parametrize("kwargs, message", [
    (dict(stride=2, output_padding=2), r"output_padding \(2, 2\) must be smaller than the stride"),
    (dict(padding="same"), "padding must be numbers"),
    (dict(padding=4), "give no output"),
])
def test_bad_arguments_are_named(kwargs, message):
    x, w = np.ones((1, 2, 3, 3)), np.ones((2, 1, 3, 3))
    with pytest.raises(ValueError, match=message):
        ops.conv_transpose2d(x, w, **kwargs)


def test_weights_for_another_input_are_refused():
    with pytest.raises(ValueError, match=r"w \(3, 1, 3, 3\) is for 3 input channels but x"):
        ops.conv_transpose2d(np.ones((1, 2, 3, 3)), np.ones((3, 1, 3, 3)))


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("size, stride, padding", [(7, 2, "SAME"), (8, 2, "SAME"), (6, 3, "SAME"),
                                                   (7, 2, "VALID"), (8, 2, "VALID")])
def test_tensorflow_conv2d_transpose_splits_the_padding_as_tensorflow(layout, size, stride,
                                                                       padding):
    """output_shape decides the padding: SAME's odd pixel goes after (bottom/right), which a
    symmetric PyTorch padding cannot say: PyTorch's unpadded output, cropped by that split."""
    from fastconv import tf

    rng = np.random.default_rng(5)
    filters = random(rng, (3, 3, 2, 4))  # (R, S, C_out, C_in)
    out_nchw = (2, 2, size, size)
    top = 0
    if padding == "SAME":
        top = geometry.same_padding(size, 3, stride, 1)[0]
        h = -(-size // stride)
    else:
        h = (size - 3) // stride + 1
    x = random(rng, (2, 4, h, h))
    y = tf.conv2d_transpose(from_nchw(x, layout).copy(), filters,
                            out_nchw if layout == "NCHW" else (2, size, size, 2), stride,
                            padding, data_format=layout)
    full = F.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(
        filters.transpose(3, 2, 0, 1).copy()), stride=stride).numpy()
    room = max(top + size - full.shape[2], 0)
    full = np.pad(full, ((0, 0), (0, 0), (0, room), (0, room)))
    want = full[:, :, top:top + size, top:top + size]
    assert rel_error(to_nchw(y, layout), want) < 1e-12


def test_tensorflow_conv2d_transpose_refuses_a_shape_that_does_not_fit():
    from fastconv import tf

    with pytest.raises(ValueError, match=r"output_shape \(1, 9, 9, 2\) does not fit input"):
        tf.conv2d_transpose(np.ones((1, 4, 4, 3)), np.ones((3, 3, 2, 3)), (1, 9, 9, 2), 1,
                            "SAME")


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=cases(), algo=st.sampled_from(["auto", "direct", "blocked", "im2col"]),
       poisoned=st.sampled_from(["x", "w", "b", "gy"]), parallel=st.booleans(),
       data=st.data())
def test_nan_and_inf_propagate_as_in_pytorch(case, algo, poisoned, parallel, data,
                                             monkeypatch):
    """tests/test_nonfinite.py's rule: a NaN or an infinity in x, w, b or gy reaches every cell
    of y, gx, gw and gb whose sum holds it, as in PyTorch. The direct kernels skip padded
    cells, which PyTorch multiplies (its 0 * inf is NaN): there the weaker rule, non-finite
    only where PyTorch is."""
    monkeypatch.setattr(driver, "SERIAL_WORK", 0 if parallel else 1 << 62)
    rng = np.random.default_rng(case["seed"])
    dtype, layout = case["dtype"], case["layout"]
    arrays = dict(x=random(rng, case["x_shape"], dtype), w=random(rng, case["w_shape"], dtype),
                  b=random(rng, case["w_shape"][1] * case["kwargs"]["groups"], dtype))
    y_shape = geometry.conv_transpose_geometry(case["x_shape"], case["w_shape"],
                                               **case["kwargs"], data_format="NCHW").y_shape
    arrays["gy"] = random(rng, y_shape, dtype)
    if arrays[poisoned].size:
        arrays[poisoned] = _poison(arrays[poisoned], data.draw, NONFINITE)
    x, w, b, gy = arrays["x"], arrays["w"], arrays["b"], arrays["gy"]
    args = dict(case["kwargs"], data_format=layout, algo=algo)
    y = ops.conv_transpose2d(from_nchw(x, layout).copy(), _filters(w, layout), b, **args)
    gx, gw, gb = ops.conv_transpose2d_backward(from_nchw(gy, layout).copy(),
                                               from_nchw(x, layout).copy(),
                                               _filters(w, layout), **args)
    with np.errstate(invalid="ignore", over="ignore"):
        want_y, want_gx, want_gw, want_gb = _torch(dict(case, activation=None), x, w, b, gy)
    got = {"y": to_nchw(y, layout), "gx": to_nchw(gx, layout),
           "gw": gw if layout == "NCHW" else gw.transpose(3, 2, 0, 1), "gb": gb}
    expected = {"torch": dict(y=want_y, gx=want_gx, gw=want_gw, gb=want_gb)}
    oracle.check_nonfinite(got, expected, exact=algo not in ("direct", "auto"))
