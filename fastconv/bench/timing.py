"""Timing: a call's median and minimum after a warm-up call (host clock on the CPU, CUDA events
on the GPU), the benchmark's run over cases and implementations, and the GEMM against cuBLAS.

Timings never include the first call, which compiles the JIT kernels. A speed-up "vs numpy" or
"vs torch" is that baseline's median divided by the row's median, so above 1 means faster.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import threadpoolctl
from tqdm import tqdm

from .. import device, runtime
from ..implementations import conv2d
from ..kernels import cuda_simulated
from .cases import BASELINES, Case, directions, impls, inputs, runner, serves, work


@dataclass(frozen=True)
class Timing:
    """Seconds per call: the median and the minimum of ``repeats`` timed calls."""
    median: float
    min: float
    repeats: int


def measure(fn: Callable[[], object], repeats: int, warmup: int = 1, on: str = "cpu") -> Timing:
    """Time ``fn`` ``repeats`` times after ``warmup`` untimed calls (the first one compiles)."""
    for _ in range(warmup):
        fn()
    clock = _gpu_seconds if on == "cuda" and not cuda_simulated() else _host_seconds
    times = [clock(fn) for _ in range(repeats)]
    return Timing(statistics.median(times), min(times), repeats)


def _host_seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _gpu_seconds(fn) -> float:
    """The GPU time of the work ``fn`` queues, between CUDA events on CuPy's current stream
    (fastconv's stream; PyTorch's default stream is ordered with it)."""
    import cupy
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    fn()
    end.record()
    end.synchronize()
    return cupy.cuda.get_elapsed_time(start, end) / 1e3


# A VM guest hands the memory it frees back to its host (free page reporting), and touching it
# again faults on the host: on the 2-vCPU Zen 4 KVM guest a fresh 38 MB array filled by two
# threads took 38-56 ms a call in the first half second of a process that imported torch (its
# import frees much), 4.0-4.7 after (and from the first call once a GiB had been written:
# MobileNetV2's features.2.expand, an early row of benchmarks/other_layers.py, read 0.30x
# PyTorch at 38.6 ms against 4.3 steady).
SETTLE_BYTES = 1 << 30


def settle_memory(nbytes: int = SETTLE_BYTES) -> None:
    """Write ``nbytes`` of fresh memory once and free it, before timing, so that the first
    layers' calls find memory the host backs (2 s the first time on that guest, 0.1 s after)."""
    np.ones(nbytes // 4, np.float32)


# How long OpenBLAS's workers spin after a product before they sleep: 2^28 cycles by default
# (OPENBLAS_THREAD_TIMEOUT), ~0.1 s at 2.5 GHz.
BLAS_SPIN_SECONDS = 0.3


def sgemm_gflops(size: int = 4096, repeats: int = 3, on: str = "cpu") -> float | None:
    """The machine's float32 GEMM rate through NumPy's BLAS on fastconv's thread count, or on
    the GPU through cuBLAS (CuPy's matmul; None in the simulator, which has none): the best of
    ``repeats`` ``size``^3 products after a warm-up one. The roofline each conv row's "% SGEMM"
    is measured against."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size), np.float32) for _ in range(2))
    if on == "cuda":
        return None if cuda_simulated() else _cublas_gflops(a, b, repeats)
    out = np.empty_like(a)
    with threadpoolctl.threadpool_limits(runtime.get_num_threads(), user_api="blas"):
        np.matmul(a, b, out=out)
        best = min(_host_seconds(lambda: np.matmul(a, b, out=out)) for _ in range(repeats))
    # NumPy's BLAS runs on one thread beside fastconv's (runtime.set_num_threads): its workers
    # spin on after the products above, on the cores the timings that follow need
    time.sleep(BLAS_SPIN_SECONDS)
    return 2 * size ** 3 / best / 1e9


def _cublas_gflops(a, b, repeats):
    cupy = device.cuda_backend().xp
    a, b = cupy.asarray(a), cupy.asarray(b)
    out = cupy.empty_like(a)
    cupy.matmul(a, b, out=out)
    best = min(_gpu_seconds(lambda: cupy.matmul(a, b, out=out)) for _ in range(repeats))
    return 2 * a.shape[0] ** 3 / best / 1e9


def _host_arrays(result):
    """The arrays (or torch tensors) of a runner's result, on the host, in float64."""
    items = result if isinstance(result, tuple) else (result,)
    return [np.asarray(a.detach().cpu().numpy() if hasattr(a, "detach")
                       else device.to_device(a, "cpu"), np.float64) for a in items]


def _error(result, expected):
    """The largest norm-relative error of ``result``'s arrays against ``expected``'s."""
    return max(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-300)
               for got, want in zip(_host_arrays(result), _host_arrays(expected), strict=True))


COLUMNS = ("op", "shape", "dims", "impl", "dtype", "threads", "median_ms", "min_ms", "repeats",
           "gflops", "pct_sgemm", "gbps", "vs_numpy", "vs_torch", "rel_error")


def run(chosen: list[Case], dtype=np.float32, repeats: int = 10, numpy_repeats: int = 3,
        progress: bool = True, on: str = "cpu", sgemm: float | None = None,
        numpy: bool = True, only=None) -> list[dict]:
    """Benchmark every case forward and backward with every implementation on device ``on``;
    one row (a dict with the keys :data:`COLUMNS`) per op, case and implementation.

    The implementations of an op are timed in turn, one call each per round (so a busy
    neighbour slows them alike), after a warm-up call whose result is checked against
    PyTorch's (``rel_error``, where PyTorch runs). ``numpy_repeats`` applies to the slow NumPy
    baseline, left out when not ``numpy``; ``only`` (names) keeps those implementations alone
    (a pooling op's is "fastconv"). ``sgemm`` (GFLOP/s, :func:`sgemm_gflops`) gives
    each conv row its "% SGEMM". A tqdm bar on stderr shows progress."""
    dtype = np.dtype(dtype)
    clock = _gpu_seconds if on == "cuda" and not cuda_simulated() else _host_seconds
    def timed(op):
        return [i for i in impls(op, on, numpy)
                if only is None or i in only or (i == "fastconv" and "auto" in only)]
    total = sum(len(timed(op)) for case in chosen for op in directions(case))
    rows = []
    with tqdm(total=total, desc="fastconv bench", unit="run", disable=not progress) as bar:
        for case in chosen:
            arrays = inputs(case, dtype, on)
            for op in directions(case):
                bar.set_postfix_str(f"{op} {case.name}")
                calls = {impl: runner(case, op, impl, arrays, on) for impl in timed(op)
                         if serves(case, op, impl, on)}
                if not calls:  # --impls left none of this op's implementations
                    continue
                results = {impl: fn() for impl, fn in calls.items()}  # compiles, outside timing
                wanted = {impl: numpy_repeats if impl == "numpy" else repeats for impl in calls}
                times = {impl: [] for impl in calls}
                for round_ in range(max(wanted.values())):
                    for impl, fn in calls.items():
                        if round_ < wanted[impl]:
                            times[impl].append(clock(fn))
                bar.update(len(calls))
                flops, nbytes = work(case, op, arrays)
                timings = {impl: Timing(statistics.median(t), min(t), len(t))
                           for impl, t in times.items()}
                for impl, t in timings.items():
                    vs = {b: timings[b].median / t.median if b in timings and b != impl else None
                          for b in BASELINES}
                    gflops = flops / t.median / 1e9 if flops else None
                    rows.append({
                        "op": op, "shape": case.name, "dims": case.dims, "impl": impl,
                        "dtype": dtype.name, "threads": runtime.get_num_threads(),
                        "median_ms": t.median * 1e3, "min_ms": t.min * 1e3,
                        "repeats": t.repeats, "gflops": gflops,
                        "pct_sgemm": 100 * gflops / sgemm if gflops and sgemm else None,
                        "gbps": nbytes / t.median / 1e9 if nbytes else None,
                        "vs_numpy": vs["numpy"], "vs_torch": vs["torch"],
                        "rel_error": (_error(results[impl], results["torch"])
                                      if "torch" in results and impl != "torch" else None)})
    return rows


def gemm(size: int, dtype=np.float32, repeats: int = 10) -> list[dict]:
    """fastconv's tiled GEMM kernel against cuBLAS (CuPy's matmul, absent in the simulator) on
    ``size`` x ``size`` x ``size``: one row per implementation with its median time, GFLOP/s,
    its error against a float64 product and its speed relative to cuBLAS (> 1: faster)."""
    cuda = device.cuda_backend()
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((1, size, size)).astype(dtype) for _ in range(2))
    want = a[0].astype(np.float64) @ b[0]
    a_dev, b_dev = (device.to_device(m, "cuda") for m in (a, b))
    out = cuda.xp.empty((1, size, size), dtype)
    runs = {"fastconv": lambda: conv2d.gemm(a_dev, b_dev, out=out)}
    if not cuda_simulated():
        runs["cublas"] = lambda: cuda.xp.matmul(a_dev, b_dev, out=out)
    rows = []
    for impl, fn in runs.items():
        timing = measure(fn, repeats, on="cuda")
        got = device.to_device(out, "cpu")[0]
        rows.append({"impl": impl, "size": size, "dtype": np.dtype(dtype).name,
                     "median_ms": timing.median * 1e3, "min_ms": timing.min * 1e3,
                     "gflops": 2 * size ** 3 / timing.median / 1e9,
                     "rel_error": float(np.linalg.norm(got - want) / np.linalg.norm(want))})
    for row in rows:
        cublas = next((r for r in rows if r["impl"] == "cublas"), None)
        row["vs_cublas"] = cublas["median_ms"] / row["median_ms"] if cublas else None
    return rows
