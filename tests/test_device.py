"""Where a call runs (fastconv.device): device arguments, arrays on the host or a GPU, and the
errors when the CUDA backend or its packages are missing. Runs without a GPU: GPU arrays are
stand-ins offering the interfaces a CuPy array or a CUDA torch tensor offers."""

import importlib.util

import numpy as np
import pytest

from fastconv import device, ops, tensor


class GpuArray:
    """What fastconv sees of a CuPy array: __cuda_array_interface__."""
    __cuda_array_interface__ = {"shape": (1, 1, 4, 4), "typestr": "<f4", "version": 3}


class DLPackGpuArray:
    """What fastconv sees of a CUDA torch tensor: a DLPack capsule on device type 2 (CUDA)."""
    def __dlpack_device__(self):
        return (2, 0)


@pytest.fixture
def no_cuda_packages(monkeypatch):
    """A machine with neither numba-cuda nor CuPy."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("numba_cuda", "cupy") else real(name, *a))


def test_where_arrays_live():
    assert device.where(np.ones(2)) == "cpu"
    assert device.where(GpuArray()) == "cuda"
    assert device.where(DLPackGpuArray()) == "cuda"
    assert device.where([1.0]) is None


@pytest.mark.parametrize("given,parsed", [(None, "cpu"), ("cpu", "cpu")])
def test_parse(given, parsed):
    assert device.parse(given) == parsed


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "cuda:-1", 0, "CPU"])
def test_bad_device_names(bad):
    with pytest.raises(ValueError, match=r"device must be None, 'cpu' or 'cuda\[:N\]'"):
        device.parse(bad)


def test_missing_cuda_packages_are_named(no_cuda_packages):
    x, w = np.ones((1, 1, 4, 4), np.float32), np.ones((1, 1, 3, 3), np.float32)
    with pytest.raises(RuntimeError, match="CUDA backend needs numba-cuda and cupy.*cuda12"):
        ops.conv2d(x, w, device="cuda")
    with pytest.raises(RuntimeError, match="CUDA backend needs numba-cuda and cupy"):
        ops.algorithms("cuda")
    with pytest.raises(RuntimeError, match="CUDA backend needs numba-cuda and cupy"):
        tensor([1.0]).to("cuda:0")


def test_gpu_arrays_go_to_the_cuda_backend(no_cuda_packages):
    """device=None follows a GPU array (here to the missing backend's error)."""
    with pytest.raises(RuntimeError, match="CUDA backend needs"):
        ops.max_pool2d(GpuArray(), 2)


def test_mixing_host_and_gpu_arrays_says_which_is_where():
    with pytest.raises(TypeError, match="all be on the host or all on the GPU, got x on cpu, "
                                        "w on cuda"):
        ops.conv2d(np.ones((1, 1, 4, 4), np.float32), DLPackGpuArray())


def test_gpu_array_with_device_cpu_is_refused():
    with pytest.raises(TypeError, match="device='cpu' but gy is on the GPU"):
        ops.avg_pool2d_backward(GpuArray(), (1, 1, 8, 8), 2, device="cpu")


def test_non_arrays_are_refused():
    with pytest.raises(TypeError, match="x must be a NumPy or CuPy array .*got str"):
        ops.max_pool2d("x", 2)
