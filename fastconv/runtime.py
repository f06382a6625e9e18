"""What fastconv runs on: the CPU's name, its SIMD, the threads and the BLAS in use."""

import contextlib
import ctypes
import os
import platform
import threading
import warnings
from functools import cache
from pathlib import Path

# Numba's OpenMP workers wait for the next parallel kernel by spinning a little (GNU OpenMP's
# GOMP_SPINCOUNT, in spins: 10,000 is ~0.1-0.3 ms here), then sleep. Waking a sleeping worker
# costs 50-100 us on a virtual machine, more than half of a small kernel: with workers that
# slept at once (OMP_WAIT_POLICY=PASSIVE) a LeNet-5 training step ran no faster on two threads
# than on one. Spinning is safe because fastconv's products run their BLAS on these same
# threads (kernels/gemm.py): no second pool of workers spins beside them. Longer spins gain a
# few % more on fastconv's own steps but cost PyTorch's small ops run in the same process (its
# Adam step: 0.9 ms at 10,000 spins, 5.4 ms at 100,000). It must be set before the OpenMP
# runtime starts; a user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT is left as it is. Measured:
# benchmarks/results/train.md, "One pool of threads".
SPIN_COUNT = 10_000
_USER_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY") or os.environ.get("GOMP_SPINCOUNT")
if _USER_WAIT_POLICY is None:
    os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)

import numba  # noqa: E402
import numpy as np  # noqa: E402
import threadpoolctl  # noqa: E402


def _openmp_already_loaded() -> bool:
    """Whether another library (PyTorch, imported first) has started an OpenMP runtime."""
    try:
        with open("/proc/self/maps") as maps:
            return any("libgomp" in line or "libiomp" in line for line in maps)
    except OSError:
        return False


# That runtime read its wait policy before we could set it, and Numba's OpenMP layer would
# share it (a LeNet-5 training step ran several times slower with torch imported first). Numba's
# own workqueue layer has no spinning workers; it aborts on concurrent launches from
# several threads, which KERNEL_LOCK prevents.
if "NUMBA_THREADING_LAYER" not in os.environ and _openmp_already_loaded():
    numba.config.THREADING_LAYER = "workqueue"
    # Its workers still spin after each of that library's own parallel ops, on the cores the
    # next kernel needs (benchmarks/results/torch_adapter.md).
    if _USER_WAIT_POLICY is None:
        warnings.warn("fastconv was imported after a library that started OpenMP (PyTorch?), "
                      "whose threads now spin between its ops and slow fastconv's kernels "
                      "several times over; import fastconv first "
                      "or set OMP_WAIT_POLICY=PASSIVE", RuntimeWarning, stacklevel=2)

else:
    # Start Numba's OpenMP runtime now, under the spin count above: a library imported later
    # (PyTorch) then shares it rather than loading its own copy of libgomp at its first op,
    # whose workers would spin on the same cores as these (a 1x1 convolution ran 10x slower,
    # fastconv's and torch's alike, in a process that imported torch before fastconv's first
    # parallel kernel).
    numba.get_num_threads()

# glibc's malloc serves an array over its mmap threshold (128 KiB at start, raised by each freed
# mapping) with fresh pages and trims freed memory at the heap's top back to the OS, so a training
# step's megabyte-sized activations and gradients page-fault anew on every step (a tenth of a
# LeNet-5 step: benchmarks/results/train.md). Holding the two thresholds where glibc's own
# adaptation tops out (32 MiB, and twice that to trim) keeps such arrays in a reused heap: 0
# faults. The cost is that up to the peak heap stays with the process, as PyTorch's caching
# allocator keeps GPU memory. FASTCONV_MALLOC=0, or the user's own MALLOC_* or GLIBC_TUNABLES
# setting, leaves malloc alone.
MMAP_THRESHOLD_BYTES = 32 << 20
TRIM_THRESHOLD_BYTES = 2 * MMAP_THRESHOLD_BYTES
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


_LIBC = ctypes.CDLL(None) if platform.libc_ver()[0] == "glibc" else None


def _tune_malloc() -> bool:
    """Set glibc's thresholds (see above); False where they were left as they were."""
    chosen = [k for k in os.environ if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES"]
    if os.environ.get("FASTCONV_MALLOC") == "0" or chosen or _LIBC is None:
        return False
    return bool(_LIBC.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
                and _LIBC.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))


MALLOC_TUNED = _tune_malloc()


# An array a kernel writes (a layer's output) is asked of glibc as PyTorch asks for its
# tensors, posix_memalign on a cache line, not as NumPy's np.empty of 64 bytes more to align
# inside: in a process where both allocate (fastconv under PyTorch, or the bench timing the
# two in turn), PyTorch's output took the hole fastconv's last one left, its own hole was then
# 64 bytes short, and every fastconv output of a 14.4 MB layer was placed at the heap's top and
# page-faulted anew (462-3528 faults, 2.5-40 ms a call where the layer runs in 1.3-1.6;
# benchmarks/results/cpu-suite-2026-12-07-intel.md). Where malloc is left alone
# (FASTCONV_MALLOC=0), so is this.
if MALLOC_TUNED:
    _LIBC.posix_memalign.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t,
                                     ctypes.c_size_t]
    _LIBC.free.argtypes = [ctypes.c_void_p]


class _AlignedBlock:
    """``nbytes`` from posix_memalign, viewed by NumPy through the array interface (it is the
    arrays' ``base``) and freed when the last array viewing it goes, never earlier."""
    __slots__ = ("__array_interface__", "_address", "__weakref__")
    # held by the class, alive at interpreter exit, where module globals may be gone
    _memalign, _free = (_LIBC.posix_memalign, _LIBC.free) if MALLOC_TUNED else (None, None)

    def __init__(self, nbytes, alignment):
        address = ctypes.c_void_p()
        if self._memalign(ctypes.byref(address), alignment, max(nbytes, 1)):
            raise MemoryError(f"posix_memalign of {nbytes} bytes failed")
        self._address = address.value
        self.__array_interface__ = {"data": (self._address, False), "shape": (nbytes,),
                                    "typestr": "|u1", "version": 3}

    def __del__(self):
        self._free(self._address)


def aligned_bytes(nbytes, alignment):
    """A uint8 array of ``nbytes`` starting on a multiple of ``alignment`` (a power of two, of
    pointer size or more) from posix_memalign; None where malloc is left as it was."""
    return np.asarray(_AlignedBlock(nbytes, alignment)) if MALLOC_TUNED else None


def malloc() -> str:
    """How the C heap under NumPy's arrays is set up, for ``fastconv info`` and bench headers."""
    if MALLOC_TUNED:
        return (f"glibc, mmap threshold {MMAP_THRESHOLD_BYTES >> 20} MiB, trim threshold "
                f"{TRIM_THRESHOLD_BYTES >> 20} MiB (set by fastconv; FASTCONV_MALLOC=0 leaves it)")
    return f"{platform.libc_ver()[0] or 'unknown libc'}, left as the process set it"


def cache_dir():
    """Where fastconv keeps what it can rebuild (compiled kernels, autotuning choices):
    ``$FASTCONV_CACHE_DIR``, default ``~/.cache/fastconv``."""
    return Path(os.environ.get("FASTCONV_CACHE_DIR") or Path.home() / ".cache" / "fastconv")


KERNEL_LOCK = threading.RLock()  # one kernel call at a time: each already uses every core
_threads = None  # set_num_threads' count, for every thread (Numba's own count is per thread)


@contextlib.contextmanager
def kernels():
    """Where every kernel call runs: under KERNEL_LOCK, on set_num_threads' count whichever
    thread calls."""
    with KERNEL_LOCK:
        if _threads is not None and numba.get_num_threads() != _threads:
            numba.set_num_threads(_threads)
        yield

SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni")


@cache
def _cpuinfo() -> dict:
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return info


def cpu_name() -> str:
    """The CPU's model name, and its family and model numbers where /proc/cpuinfo has them: a
    virtual machine's name may hide the generation ("AMD EPYC" is Zen 4 as family 25, Zen 5 as
    family 26), and results are only comparable within one."""
    info = _cpuinfo()
    name = info.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in info and "model" in info:
        return f"{name} (family {info['cpu family']} model {info['model']})"
    return name


def intel_cpu() -> bool:
    """Whether /proc/cpuinfo names Intel as the CPU's vendor (False where it names none)."""
    return _cpuinfo().get("vendor_id") == "GenuineIntel"


def simd_flags() -> list[str]:
    flags = set(_cpuinfo().get("flags", "").split())
    return [f for f in SIMD_FLAGS if f in flags]


def blas() -> list[dict]:
    """The BLAS libraries NumPy and SciPy loaded, as threadpoolctl reports them."""
    import numpy  # noqa: F401  (loads NumPy's BLAS so threadpoolctl sees it)
    import scipy.linalg  # noqa: F401
    return [{k: lib.get(k) for k in ("internal_api", "version", "num_threads", "architecture",
                                     "filepath")}
            for lib in threadpoolctl.threadpool_info() if lib.get("user_api") == "blas"]


@cache
def _blas_libraries() -> list:
    """threadpoolctl's controllers of every BLAS library loaded (NumPy's, SciPy's)."""
    import numpy  # noqa: F401  (loads the libraries, so threadpoolctl finds them)
    import scipy.linalg.cython_blas  # noqa: F401
    return threadpoolctl.ThreadpoolController().select(user_api="blas").lib_controllers


def pin_blas() -> None:
    """Keep every BLAS library on one thread: fastconv's products call BLAS inside its own
    threads, a block a call (kernels/gemm.py), and a BLAS threading on its own would spin a
    second pool of workers beside them (see :func:`set_num_threads`). Each product re-checks."""
    for lib in _blas_libraries():
        if lib.num_threads != 1:
            lib.set_num_threads(1)


def set_num_threads(n: int) -> None:
    """Use ``n`` threads in fastconv's kernels and products, whichever thread calls them.

    Every BLAS library loaded (NumPy's, which fastconv's products call; SciPy's) is set to one
    thread, as on import and by each product: fastconv's products split over its own threads
    already, and a BLAS threading on its own keeps its workers spinning for ~0.1 s after each
    product, on the cores where fastconv's spin between kernels; while both spin, each kernel
    waits out the other's time slices (a LeNet-5 convolution went from 0.6 ms to 3-9 ms,
    PyTorch's alike, for ~20 calls after NumPy's threaded norm). For large products of your
    own, raise NumPy's around them: ``with threadpoolctl.threadpool_limits(n,
    user_api="blas"): ...`` (a fastconv call inside such a block sets it back to one).
    """
    limit = numba.config.NUMBA_NUM_THREADS
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= limit:
        raise ValueError(f"n must be an int in 1..{limit} (NUMBA_NUM_THREADS), got {n!r}")
    global _threads
    _threads = n
    numba.set_num_threads(n)
    pin_blas()


def get_num_threads() -> int:
    return numba.get_num_threads()


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


pin_blas()  # one pool of threads from the start (see set_num_threads)
