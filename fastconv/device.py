"""Where a call runs: the ``device=`` argument, where its arrays live, and the CUDA backend.

A NumPy array lives on the host ("cpu"); a CuPy array, or any object offering
``__cuda_array_interface__`` or a CUDA DLPack capsule (a CUDA torch tensor), lives on the GPU
("cuda"). ``device=None`` follows the arrays; mixing host and device arrays in one call is a
TypeError saying which is where. The CUDA runtime (:mod:`fastconv.cuda`) is imported on the
first call that asks for it, so ``import fastconv`` needs neither numba-cuda, CuPy nor a GPU.
Under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) device="cuda" runs the CUDA kernels
in the simulator on NumPy arrays, which there stand in for device arrays.
"""

import importlib.util

import numpy as np

from . import runtime
from .kernels import cuda_simulated

__all__ = ["parse", "resolve", "where", "cuda_backend", "array_module", "to_device", "name"]

_KDL_CUDA = (2, 13)  # DLPack device types of CUDA and CUDA-managed memory


def parse(device) -> str:
    """"cpu" or "cuda" for a ``device=`` argument: None, "cpu", "cuda" (the current GPU) or
    "cuda:N" (which makes GPU N the current one, as ``cupy.cuda.Device(N).use()`` does)."""
    if device is None or device == "cpu":
        return "cpu"
    if isinstance(device, str) and device.partition(":")[0] == "cuda":
        index = device.partition(":")[2]
        if index and not index.isdigit():
            raise ValueError(f"device must be None, 'cpu' or 'cuda[:N]', got {device!r}")
        backend = cuda_backend()
        if index:
            backend.select(int(index))
        return "cuda"
    raise ValueError(f"device must be None, 'cpu' or 'cuda[:N]', got {device!r}")


def where(array):
    """"cpu" for a NumPy array, "cuda" for a GPU array, None for anything else."""
    if isinstance(array, np.ndarray):
        return "cpu"
    if hasattr(array, "__cuda_array_interface__"):
        return "cuda"
    dlpack_device = getattr(array, "__dlpack_device__", None)
    if dlpack_device is not None and dlpack_device()[0] in _KDL_CUDA:
        return "cuda"
    return None


def resolve(device, **arrays) -> str:
    """The device of a call on ``arrays`` (name -> array or None), given its ``device=``."""
    places = {name: where(a) for name, a in arrays.items() if a is not None}
    for name, place in places.items():
        if place is None:
            raise TypeError(f"{name} must be a NumPy or CuPy array (or a CUDA array such as a "
                            f"torch tensor), got {type(arrays[name]).__name__}")
    if device is None and len(set(places.values())) > 1:
        raise TypeError("arguments must all be on the host or all on the GPU, got "
                        + ", ".join(f"{n} on {p}" for n, p in places.items()))
    device = parse(device if device is not None else next(iter(places.values()), "cpu"))
    wrong = {n: p for n, p in places.items() if p != device}
    if wrong and not (device == "cuda" and cuda_simulated()):
        listed = ", ".join(f"{n} is on {'the host' if p == 'cpu' else 'the GPU'}"
                           for n, p in wrong.items())
        raise TypeError(f"device={device!r} but {listed}: move it first (cupy.asarray on the "
                        "host copies to the GPU, cupy.asnumpy back)")
    return device


def cuda_backend():
    """The CUDA runtime (:mod:`fastconv.cuda`), or a RuntimeError saying exactly what is
    missing."""
    if _loaded:  # looked up on every GPU call: the checks below cost ~80 us
        return _loaded[0]
    missing = [package for package, module in (("numba-cuda", "numba_cuda"), ("cupy", "cupy"))
               if importlib.util.find_spec(module) is None
               and not (package == "cupy" and cuda_simulated())]
    if missing:
        raise RuntimeError(f"the CUDA backend needs {' and '.join(missing)}, which is not "
                           "installed: install fastconv's 'cuda12' or 'cuda13' extra "
                           "(pip install 'fastconv[cuda12]')")
    from . import cuda  # not at the top: it imports numba-cuda, and CuPy on a real GPU
    cuda.check_available()
    _loaded.append(cuda)
    return cuda


_loaded = []  # the CUDA runtime, once it has loaded


def array_module(device: str):
    """NumPy for the host, the CUDA backend's array module (CuPy, or NumPy when simulated)."""
    return np if device == "cpu" else cuda_backend().xp


def to_device(array, device: str):
    """``array`` on ``device``: itself when already there, else a copy (host <-> GPU)."""
    on_gpu = where(array) == "cuda"
    if device == "cpu":
        return cuda_backend().to_host(array) if on_gpu else array
    return cuda_backend().adopt(array) if on_gpu else cuda_backend().from_host(array)


def name(device: str) -> str:
    """The hardware in autotuning keys: the CPU model and its thread count, or the GPU's name."""
    if device == "cpu":
        return f"{runtime.cpu_name()} x{runtime.get_num_threads()}"
    return cuda_backend().gpu_name()
