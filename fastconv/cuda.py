"""The CUDA runtime under fastconv's GPU implementations: the array module, the stream kernels
launch on, moving arrays to and from the GPU, choosing a GPU and describing it.

Imported on the first call that runs on the GPU (by :mod:`fastconv.device`, and lazily by the
implementations), never by ``import fastconv``. Arrays are CuPy arrays; under Numba's CUDA
simulator they are NumPy arrays and the same kernels run in the simulator. Every kernel is
launched on CuPy's current stream, so work queued by CuPy, PyTorch (through an external stream)
and fastconv stays in order.
"""

import contextlib
import functools

import numpy as np

from .kernels import cuda_simulated
from .kernels.cuda_device import cuda

SIMULATED = cuda_simulated()
if SIMULATED:
    xp = np
else:
    import cupy as xp


def check_available() -> None:
    if not SIMULATED and not cuda.is_available():
        raise RuntimeError("device='cuda' but no CUDA GPU is visible (numba.cuda.is_available() "
                           "is False: check the driver and CUDA_VISIBLE_DEVICES)")


def device_id() -> int:
    """The current GPU's index (0 in the simulator)."""
    return 0 if SIMULATED else xp.cuda.Device().id


def select(index: int) -> None:
    """Make GPU ``index`` current for CuPy and Numba (nothing to do when it already is)."""
    if index == device_id():
        return
    count = 1 if SIMULATED else xp.cuda.runtime.getDeviceCount()
    if index >= count:
        raise ValueError(f"device='cuda:{index}' but there are {count} GPU(s)")
    xp.cuda.Device(index).use()
    cuda.select_device(index)


def info() -> dict:
    """The GPU and the versions the backend runs with, for ``fastconv info`` and benchmarks."""
    import numba_cuda

    if SIMULATED:
        return {"gpu": "Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1)",
                "numba-cuda": numba_cuda.__version__}
    runtime = xp.cuda.runtime

    def version(v):
        return f"{v // 1000}.{v % 1000 // 10}"
    return {"gpu": gpu_name(), "driver": version(runtime.driverGetVersion()),
            "cuda": version(runtime.runtimeGetVersion()), "numba-cuda": numba_cuda.__version__,
            "cupy": xp.__version__}


def gpu_name() -> str:
    """The GPU's name, which keys autotuning on the GPU."""
    if SIMULATED:
        return "CUDA simulator"
    return xp.cuda.runtime.getDeviceProperties(device_id())["name"].decode()


def adopt(array):
    """A GPU array (CuPy's, or any with a CUDA DLPack capsule or __cuda_array_interface__) as a
    CuPy array, zero-copy: DLPack first, since unlike __cuda_array_interface__ it costs no host
    synchronisation."""
    if SIMULATED or isinstance(array, xp.ndarray):
        return np.asarray(array) if SIMULATED else array
    return xp.from_dlpack(array) if hasattr(array, "__dlpack__") else xp.asarray(array)


def from_host(array):
    """A copy of a host array on the current GPU."""
    return np.asarray(array) if SIMULATED else xp.asarray(array)


def to_host(array):
    return np.asarray(array) if SIMULATED else xp.asnumpy(array)


@functools.cache
def _external_stream(pointer):
    return cuda.default_stream() if pointer == 0 else cuda.external_stream(pointer)


def stream():
    """Numba's handle on CuPy's current stream (made once per stream)."""
    return 0 if SIMULATED else _external_stream(xp.cuda.get_current_stream().ptr)


def use_stream(pointer):
    """A context in which CuPy's current stream, and so fastconv's, is the CUDA stream at
    ``pointer`` (say, ``torch.cuda.current_stream().cuda_stream``)."""
    if SIMULATED:
        return contextlib.nullcontext()
    external = getattr(xp.cuda.Stream, "from_external", None)  # CuPy 14; ExternalStream before
    return external(_StreamPointer(pointer)) if external else xp.cuda.ExternalStream(pointer)


class _StreamPointer:
    """A raw ``cudaStream_t`` in the CUDA stream protocol, which CuPy 14's
    ``Stream.from_external`` takes in place of the bare integer."""

    def __init__(self, pointer):
        self.pointer = pointer

    def __cuda_stream__(self):
        return 0, self.pointer  # (the protocol's version, the handle)
