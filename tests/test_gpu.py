"""The CUDA backend on a real GPU: every op and algorithm (cuBLAS included) on CuPy arrays
against the float64 NumPy reference, over hypothesis-drawn cases; the table of refusals on CuPy
arrays (PyTorch's OpInfo samples on CUDA tensors are tests/test_torch_ops.py's, marked gpu too);
arrays following their device;
CUDA torch tensors zero-copy; kernels ordered on the caller's stream; a LeNet-5 step on the GPU
against the CPU. Skipped, with the reason printed, where there is no GPU."""

import functools
import importlib.util

import numpy as np
import pytest
import test_validation as validation
from hypothesis import given, settings
from test_conv import _arrays, conv_cases
from test_validation import no_kernel_runs  # noqa: F401  (a fixture)

from fastconv import ops
from fastconv.kernels import cuda_simulated
from oracle import random, rel_error, tolerance


@functools.cache
def gpu_missing():
    """Why there is no GPU to test on, or None."""
    if cuda_simulated():
        return "the CUDA simulator is on (tests/cuda/test_sim.py covers it)"
    if importlib.util.find_spec("cupy") is None:
        return "CuPy is not installed (the cuda12/cuda13 extra)"
    import cupy
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError as err:
        return f"no CUDA GPU: {err}"
    return None if count else "no CUDA GPU"


MISSING = gpu_missing()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(MISSING is not None,
                                                  reason=f"needs a CUDA GPU: {MISSING}")]
GPU_SETTINGS = settings(max_examples=40, deadline=None)


def _cupy():
    import cupy
    return cupy


def _host(a):
    return _cupy().asnumpy(a)


def test_every_algorithm_is_listed():
    assert set(ops.algorithms("cuda")) == {"direct", "im2col", "cublas"}


@GPU_SETTINGS
@given(conv_cases())
def test_conv2d_forward_and_backward_on_cupy(case):
    cp = _cupy()
    x, w, b, gy = _arrays(case)
    kw, dtype = case["kwargs"], case["dtype"]
    x64, w64, b64, gy64 = (a.astype(np.float64) for a in (x, w, b, gy))
    want = {"y": ops.conv2d(x64, w64, b64, activation="relu", algo="reference", **kw),
            "gx": ops.conv2d_backward_input(gy64, w64, x.shape, algo="reference", **kw),
            "gw": ops.conv2d_backward_weight(gy64, x64, w.shape, algo="reference", **kw)}
    x_d, w_d, b_d, gy_d = (cp.asarray(a) for a in (x, w, b, gy))
    for algo in ops.algorithms("cuda"):
        got = {"y": ops.conv2d(x_d, w_d, b_d, activation="relu", algo=algo, **kw),
               "gx": ops.conv2d_backward_input(gy_d, w_d, x.shape, algo=algo, **kw),
               "gw": ops.conv2d_backward_weight(gy_d, x_d, w.shape, algo=algo, **kw)}
        for name, array in got.items():
            assert isinstance(array, cp.ndarray) and array.dtype == dtype
            assert rel_error(_host(array), want[name]) < tolerance(dtype), (algo, name)


def test_pooling_on_cupy():
    cp = _cupy()
    rng = np.random.default_rng(1)
    x = random(rng, (4, 3, 9, 8), np.float32)
    for op, extra in (("max_pool2d", {}), ("avg_pool2d", dict(count_include_pad=False))):
        window = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, **extra)
        want = getattr(ops, op)(x.astype(np.float64), **window)
        got = getattr(ops, op)(cp.asarray(x), **window)
        assert rel_error(_host(got), want) < 1e-6


def test_bad_input_is_refused_on_cupy(no_kernel_runs):  # noqa: F811  (the fixture)
    """tests/test_validation.py's table of refusals, every array of each call on the GPU."""
    cp = _cupy()
    for row in validation._cases():
        op, bad, exc, pattern = row.values
        args = {**validation.VALID[op], **bad}
        with pytest.raises(exc, match=pattern):
            getattr(ops, op)(**{k: cp.asarray(v) if isinstance(v, np.ndarray) else v
                                for k, v in args.items()})
    assert no_kernel_runs == []


def test_host_and_device_arrays_do_not_mix():
    cp = _cupy()
    x = np.ones((1, 1, 4, 4), np.float32)
    with pytest.raises(TypeError, match="x on cpu, w on cuda"):
        ops.conv2d(x, cp.ones((1, 1, 3, 3), np.float32))
    with pytest.raises(TypeError, match="device='cuda' but x is on the host"):
        ops.conv2d(x, x[:, :, :3, :3].copy(), device="cuda")


def test_cuda_torch_tensors_are_taken_zero_copy():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("this PyTorch build has no CUDA")
    x, w = torch.randn(2, 3, 8, 8, device="cuda"), torch.randn(4, 3, 3, 3, device="cuda")
    y = ops.conv2d(x, w, padding=1)
    torch.backends.cudnn.allow_tf32 = False
    want = torch.nn.functional.conv2d(x, w, padding=1)
    assert rel_error(_host(y), want.cpu().numpy()) < 1e-5


def test_kernels_queue_on_the_current_stream():
    cp = _cupy()
    rng = np.random.default_rng(2)
    x, w = random(rng, (8, 16, 32, 32), np.float32), random(rng, (16, 16, 3, 3), np.float32)
    want = ops.conv2d(x, w, padding=1)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        x_d = cp.asarray(x)  # queued on the stream: the conv must run after the copy
        y = ops.conv2d(x_d, cp.asarray(w), padding=1, algo="direct")
    stream.synchronize()
    assert rel_error(_host(y), want) < 1e-5


def test_lenet5_step_on_the_gpu_matches_the_cpu():
    from fastconv import models, nn, tensor
    from fastconv.nn import functional as F

    rng = np.random.default_rng(3)
    x, labels = random(rng, (16, 1, 32, 32), np.float32), rng.integers(0, 10, 16)
    grads = {}
    for where in ("cpu", "cuda"):
        nn.manual_seed(0)
        model = models.LeNet5().to(where)
        F.cross_entropy(model(tensor(x, device=where)), labels).backward()
        grads[where] = {n: p.grad.numpy() for n, p in model.named_parameters()}
    for name, g in grads["cpu"].items():
        assert rel_error(grads["cuda"][name], g) < 1e-4, name


def test_converted_model_on_cuda_tensors_matches_torch():
    """fastconv.torch on CUDA tensors: DLPack both ways, kernels on torch's current stream."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("this PyTorch build has no CUDA")
    import fastconv.torch as ft

    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.MaxPool2d(2), torch.nn.Conv2d(8, 4, 3),
                              torch.nn.AvgPool2d(2)).cuda()
    fast = ft.convert(net)
    x = torch.randn(4, 3, 16, 16, device="cuda", requires_grad=True)
    with torch.cuda.stream(torch.cuda.Stream()):  # a side stream: the kernels must follow it
        y_fast, y_torch = fast(x), net(x)
        g_fast = torch.autograd.grad(y_fast.sum(), [x, *fast.parameters()])
        g_torch = torch.autograd.grad(y_torch.sum(), [x, *net.parameters()])
    torch.cuda.synchronize()
    assert y_fast.is_cuda
    torch.testing.assert_close(y_fast, y_torch, rtol=1e-4, atol=1e-4)
    for a, b in zip(g_fast, g_torch, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
