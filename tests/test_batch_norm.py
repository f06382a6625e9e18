"""batch_norm2d forward and backward against the float64 NumPy reference and PyTorch, over
hypothesis-drawn shapes, layouts, dtypes, modes (training or evaluation, affine or not, running
buffers or none) and momenta; the semantics ports get wrong (the unbiased running variance, a
large mean in float32, momentum=None, an empty batch) and the argument checks."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import oracle
from fastconv import nn, ops, tensor
from fastconv.implementations import driver
from oracle import from_nchw, random, rel_error, to_nchw

BUFFERS = ("running_mean", "running_var")


@st.composite
def batch_norm_cases(draw):
    layout = draw(st.sampled_from(["NCHW", "NHWC"]))
    n, c, h, w = (draw(st.integers(1, 4)), draw(st.integers(1, 5)), draw(st.integers(1, 6)),
                  draw(st.integers(1, 6)))
    training = draw(st.booleans())
    if training and n * h * w < 4:
        n = 4  # with 2 values a channel's gx is 0 up to eps: all cancellation, no digits left
    return dict(shape=(n, c, h, w) if layout == "NCHW" else (n, h, w, c), channels=c,
                layout=layout, training=training, affine=draw(st.booleans()),
                buffers=not training or draw(st.booleans()),
                momentum=draw(st.sampled_from([0.0, 0.1, 0.5, 1.0])),
                eps=draw(st.sampled_from([1e-5, 1e-3])),
                offset=draw(st.sampled_from([0.0, 100.0])),  # a mean far from 0
                activation=draw(st.sampled_from([None, "relu", "tanh", "sigmoid"])),
                dtype=draw(st.sampled_from([np.float32, np.float64])),
                seed=draw(st.integers(0, 2**32 - 1)))


def _arrays(case):
    rng = np.random.default_rng(case["seed"])
    dtype, c = case["dtype"], case["channels"]
    x = (random(rng, case["shape"]) * 3 + case["offset"]).astype(dtype)
    arrays = dict(x=x, gy=random(rng, case["shape"], dtype))
    if case["affine"]:
        arrays.update(weight=random(rng, c, dtype), bias=random(rng, c, dtype))
    if case["buffers"]:
        arrays.update(running_mean=random(rng, c, dtype),
                      running_var=(rng.random(c) + 0.5).astype(dtype))
    return arrays


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=batch_norm_cases(), parallel=st.booleans())
@example(case=dict(shape=(1, 1, 1, 1), channels=1, layout="NCHW", training=False, affine=True,
                   buffers=True, momentum=0.0, eps=1e-5, offset=100.0, activation="tanh",
                   dtype=np.float64, seed=67), parallel=False)  # tanh saturated: 1 - y^2 ~ 1e-10
@example(case=dict(shape=(4, 3, 1, 1), channels=3, layout="NCHW", training=True, affine=False,
                   buffers=False, momentum=0.0, eps=1e-5, offset=100.0, activation=None,
                   dtype=np.float32, seed=1), parallel=False)  # gx with the mean rounded
@example(case=dict(shape=(4, 1, 4, 6), channels=1, layout="NCHW", training=True, affine=True,
                   buffers=False, momentum=0.0, eps=1e-5, offset=0.0, activation="sigmoid",
                   dtype=np.float32, seed=7758), parallel=False)  # gbias: a cancelling sum
def test_matches_reference_and_torch(case, parallel, monkeypatch):
    """y, the updated running buffers and every gradient, with each activation fused, on the
    parallel kernels or their serial twins; x, gy, weight and bias are left unchanged."""
    monkeypatch.setattr(driver, "SERIAL_WORK", 0 if parallel else 1 << 62)
    a = _arrays(case)
    before = {name: v.copy() for name, v in a.items()}
    mode = dict(training=case["training"], momentum=case["momentum"], eps=case["eps"],
                activation=case["activation"], data_format=case["layout"])
    inputs = {k: before[k] for k in before if k != "gy"}
    expected = oracle.batch_norm2d(**inputs, **mode)
    y, mean, invstd = ops.batch_norm2d(a["x"], a.get("weight"), a.get("bias"),
                                       a.get("running_mean"), a.get("running_var"), **mode)
    # The gradients: the activation's slope read from y as the kernel reads it (a saturated
    # tanh's 1 - y^2 keeps no digits of a rounded y, in PyTorch's float32 as in fastconv), then
    # batch norm's backward, by the oracles
    slope = oracle.SLOPES[case["activation"]](np.float64(y))
    expected_grads = oracle.batch_norm2d(**inputs, **dict(mode, activation=None),
                                         gy=np.float64(before["gy"]) * slope)
    gx, gweight, gbias = ops.batch_norm2d_backward(a["gy"], a["x"], a.get("weight"), mean,
                                                   invstd, case["training"], y,
                                                   case["activation"],
                                                   data_format=case["layout"])
    for name, value in a.items():
        if name not in BUFFERS:
            np.testing.assert_array_equal(value, before[name])
    assert y.shape == gx.shape == a["x"].shape and y.dtype == gx.dtype == a["x"].dtype
    assert mean.shape == invstd.shape == gweight.shape == gbias.shape == (case["channels"],)
    got = {"y": y, **{name: a[name] for name in BUFFERS if name in a}}
    # y = (x - mean) * invstd * weight + bias with the mean rounded to x's dtype: a cell is off
    # by up to an ulp of the mean times invstd * weight, whatever the norm of y (PyTorch's
    # float32 rounds its mean too), which the norm-relative bound misses when the data sit far
    # from zero (offset 100) and a ReLU leaves few cells
    rounded_mean = (np.finfo(y.dtype).eps * np.abs(np.float64(mean)) * np.float64(invstd)
                    * np.abs(np.float64(a.get("weight", 1.0)))).max() * np.sqrt(y.size)
    _check(got, expected, floors={"y": rounded_mean})
    # gx takes the same rounded mean in x - mean, times the slope of gx in it: invstd * weight
    # times the batch's mean of gy * xhat (gweight / count), which the norm-relative bound
    # misses alike (4 cells a channel, offset 100: 3.0e-5 against a bound of 2.5e-5)
    count = y.size // case["channels"]
    rounded_gx = (np.finfo(y.dtype).eps * np.abs(np.float64(mean)) * np.float64(invstd) ** 2
                  * np.abs(np.float64(a.get("weight", 1.0)))
                  * np.abs(expected_grads["reference"]["gweight"]) / count).max() * np.sqrt(y.size)
    # gbias sums gy * slope, each product rounded to the dtype first (as PyTorch's float32
    # rounds them too): where the sum cancels, those roundings are its whole error, up to eps
    # times a channel's sum of |gy * slope| (a sigmoid, 96 cells: gbias 1.4e-3 off by 1.6e-7,
    # exactly the float32 products' rounding, against a norm-relative bound of 1.4e-8)
    rounded_products = (np.finfo(y.dtype).eps
                        * oracle.slope_magnitudes(before["gy"], slope, case["layout"])
                        if case["activation"] else 0.0)
    _check({"gx": gx, "gbias": gbias}, expected_grads,
           floors={"gx": rounded_gx if case["training"] else 0.0, "gbias": rounded_products})
    for source, want in expected_grads.items():
        assert rel_error(gweight, want["gweight"]) <= _gweight_tolerance(case, a, want), source


def _check(got, expected, floors=None):
    """oracle.check's norm-relative rule, with a floor at the dtype's smallest normal number a
    cell: a saturated sigmoid's e^-100 is a float32 subnormal, which has no relative precision
    (PyTorch's float32 rounds it the same); ``floors`` adds absolute floors by name."""
    for name, array in got.items():
        floor = np.finfo(array.dtype).tiny * np.sqrt(array.size) + (floors or {}).get(name, 0)
        for source, want in expected.items():
            diff = np.linalg.norm(np.float64(array) - want[name])
            bound = oracle.tolerance(array.dtype) * np.linalg.norm(want[name]) + floor
            assert diff <= bound, f"{name} against {source}: {diff:.2e} > {bound:.2e}"


def _gweight_tolerance(case, a, want):
    """The dtype's tolerance, widened by the conditioning of gweight = sum gy * (x - mean) *
    invstd on the saved mean, which is rounded to x's dtype (as PyTorch's is): half an ulp of
    |mean| moves it by that times invstd * sum gy, large against a small gweight when the mean
    is far from 0 (PyTorch's float32 gweight errs as much)."""
    scale = max(np.linalg.norm(want["gweight"]), np.finfo(np.float64).tiny)  # as rel_error's
    # the floor of _check: a subnormal float32 gweight has no relative precision
    tolerance = oracle.tolerance(case["dtype"]) + np.finfo(case["dtype"]).tiny * np.sqrt(
        case["channels"]) / scale
    if case["dtype"] != np.float32:
        return tolerance
    x = np.float64(oracle.to_nchw(a["x"], case["layout"]))
    if not case["training"] and "running_mean" in a:
        # gweight = sum gy * (x - running_mean) * invstd: each term rounded to float32 as PyTorch's
        # are, so the sum errs by an ulp of sum |term|, large against a small gweight when x sits
        # far from the running mean (x ~ 100, a running mean ~ 0)
        gy = np.float64(oracle.to_nchw(a["gy"], case["layout"]))
        mean, var = np.float64(a["running_mean"]), np.float64(a["running_var"])
        xhat = (x - mean[:, None, None]) / np.sqrt(var[:, None, None] + case["eps"])
        terms = np.abs(gy * xhat).sum(axis=(0, 2, 3))
        return tolerance + 2.0**-23 * np.linalg.norm(terms) / scale
    if not case["training"]:
        return tolerance
    mean, std = x.mean(axis=(0, 2, 3)), x.std(axis=(0, 2, 3))
    drift = 2.0**-24 * np.abs(mean) / np.sqrt(std**2 + case["eps"]) * np.abs(want["gbias"])
    return tolerance + 2 * np.linalg.norm(drift) / scale


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layout=st.sampled_from(["NCHW", "NHWC"]), training=st.booleans(),
       activation=st.sampled_from([None, "relu", "tanh", "sigmoid"]),
       dtype=st.sampled_from([np.float32, np.float64]), parallel=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_a_residual_joins_before_the_activation(layout, training, activation, dtype, parallel,
                                                seed, monkeypatch):
    """a(bn(x) + residual) and its four gradients (x, weight, bias, residual) in the same
    kernels, against PyTorch's autograd in float64 and the float64 reference."""
    monkeypatch.setattr(driver, "SERIAL_WORK", 0 if parallel else 1 << 62)
    rng = np.random.default_rng(seed)
    shape = (3, 4, 5, 2) if layout == "NCHW" else (3, 5, 2, 4)
    x, residual, gy = (random(rng, shape, dtype) for _ in range(3))
    weight, bias = random(rng, 4, dtype), random(rng, 4, dtype)
    running = [random(rng, 4, dtype), (rng.random(4) + 0.5).astype(dtype)]
    inputs = [a.copy() for a in (x, residual, gy, weight, bias)]
    their_running = [torch.tensor(np.float64(a)) for a in running]
    mode = dict(training=training, momentum=0.1, eps=1e-5, activation=activation,
                data_format=layout)
    y, mean, invstd = ops.batch_norm2d(x, weight, bias, *running, residual=residual, **mode)
    grads = ops.batch_norm2d_backward(gy, x, weight, mean, invstd, training, y, activation,
                                      data_format=layout, residual=True)
    for before, after in zip(inputs, (x, residual, gy, weight, bias), strict=True):
        np.testing.assert_array_equal(before, after)

    leaves = [torch.tensor(to_nchw(np.float64(a), layout), requires_grad=True)
              for a in (x, residual)]
    leaves += [torch.tensor(np.float64(a), requires_grad=True) for a in (weight, bias)]
    xt, rt, wt, bt = leaves
    zt = torch.nn.functional.batch_norm(xt, *their_running, wt, bt, training, 0.1, 1e-5) + rt
    yt = zt if activation is None else getattr(torch, activation)(zt)
    yt.backward(torch.tensor(to_nchw(np.float64(gy), layout)))
    want = {"y": from_nchw(yt.detach().numpy(), layout),
            "running_mean": their_running[0].numpy(), "running_var": their_running[1].numpy(),
            "gx": from_nchw(xt.grad.numpy(), layout), "gweight": wt.grad.numpy(),
            "gbias": bt.grad.numpy(), "gresidual": from_nchw(rt.grad.numpy(), layout)}
    got = dict(zip(("gx", "gweight", "gbias", "gresidual"), grads, strict=True), y=y,
               running_mean=running[0], running_var=running[1])
    oracle.check(got, {"torch": want})


def test_float32_statistics_keep_their_digits():
    """A channel of a million values around 1000 with spread 0.01: float32 sums of x and x^2
    lose the variance altogether; float64 statistics keep it (PyTorch's CPU kernels do too)."""
    rng = np.random.default_rng(1)
    x = (1000 + 0.01 * rng.standard_normal((16, 2, 256, 256))).astype(np.float32)
    y, mean, invstd = ops.batch_norm2d(x, training=True, eps=0.0)
    want = x.astype(np.float64)
    assert rel_error(mean, want.mean(axis=(0, 2, 3))) < 1e-7
    assert rel_error(1 / np.float64(invstd) ** 2, want.var(axis=(0, 2, 3))) < 1e-5
    np.testing.assert_allclose(y.std(axis=(0, 2, 3), dtype=np.float64), 1, rtol=1e-4)


def test_running_variance_is_unbiased_and_momentum_none_is_a_cumulative_average():
    """nn.BatchNorm2d(momentum=None) averages every batch's statistics equally, as PyTorch."""
    rng = np.random.default_rng(2)
    ours, theirs = nn.BatchNorm2d(3, momentum=None), torch.nn.BatchNorm2d(3, momentum=None)
    for _ in range(3):
        x = random(rng, (4, 3, 5, 5), np.float32)
        ours(tensor(x)), theirs(torch.from_numpy(x))
    for name in BUFFERS:
        np.testing.assert_allclose(getattr(ours, name).numpy(),
                                   getattr(theirs, name).numpy(), rtol=1e-6)
    assert ours.num_batches_tracked.item() == 3


def test_an_empty_batch_gives_empty_outputs_and_zero_gradients():
    """As PyTorch: nothing measured, the running buffers untouched, zeros for weight and
    bias."""
    x = np.empty((0, 3, 4, 4), np.float32)
    running = np.zeros(3, np.float32), np.ones(3, np.float32)
    w, b = np.ones(3, np.float32), np.zeros(3, np.float32)
    y, mean, invstd = ops.batch_norm2d(x, w, b, *running, training=True)
    assert y.shape == x.shape and np.isnan(mean).all() and np.isnan(invstd).all()
    np.testing.assert_array_equal(running[0], 0)
    np.testing.assert_array_equal(running[1], 1)
    gx, gw, gb = ops.batch_norm2d_backward(x, x, w, mean, invstd)
    assert gx.shape == x.shape and not gw.any() and not gb.any() and gw.shape == (3,)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_evaluation_uses_the_running_statistics(layout):
    rng = np.random.default_rng(3)
    x = random(rng, (2, 3, 4, 5))
    rm, rv = random(rng, 3), rng.random(3) + 0.5
    y, mean, invstd = ops.batch_norm2d(from_nchw(x, layout).copy(), None, None, rm, rv,
                                       data_format=layout)
    want = (x - rm[:, None, None]) / np.sqrt(rv[:, None, None] + 1e-5)
    assert rel_error(to_nchw(y, layout), want) < 1e-12
    np.testing.assert_array_equal(mean, rm)


@pytest.mark.parametrize("call, message", [
    (lambda x, c: ops.batch_norm2d(x, np.ones(c + 1, np.float32), training=True),
     r"weight has shape \(4,\) but x \(2, 3, 4, 4\) \(NCHW\) with 3 channels"),
    (lambda x, c: ops.batch_norm2d(x[0], training=True), "x must be 4-D NCHW, got shape"),
    (lambda x, c: ops.batch_norm2d(x), "training=False.*running_mean and running_var"),
    (lambda x, c: ops.batch_norm2d(x, training=True, momentum=1.5), r"momentum must lie in"),
    (lambda x, c: ops.batch_norm2d(x[:1, :, :1, :1], training=True), "more than 1 value"),
    (lambda x, c: ops.batch_norm2d(x, None, None, np.zeros(c, np.float32), None, True),
     "go together"),
    (lambda x, c: ops.batch_norm2d(x, None, None, np.zeros(2 * c, np.float32)[::2],
                                   np.ones(c, np.float32), True), "C-contiguous"),
    (lambda x, c: ops.batch_norm2d_backward(x, x, None, None, None), "save_mean"),
    (lambda x, c: ops.batch_norm2d_backward(x, x, None, x[0, 0, 0, :3], x[0, 0, 0, :3],
                                            activation="relu"), "needs the forward's output y"),
    (lambda x, c: ops.batch_norm2d(x, training=True, activation="gelu"), "activation must be"),
])
def test_bad_arguments_are_named(call, message):
    x = np.ones((2, 3, 4, 4), np.float32)
    with pytest.raises(ValueError, match=message):
        call(x, 3)
