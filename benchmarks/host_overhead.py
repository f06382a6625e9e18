"""Host time of a small call: what fastconv spends in Python around a kernel (the argument
checks, the algorithm's choice, the output's allocation, the launch), per op, on shapes so
small that the kernel itself costs next to nothing.

    python benchmarks/host_overhead.py [--device cpu|cuda] [--calls 2000] [--repeats 5]

Each op is called ``--calls`` times in a row and the best of ``--repeats`` such runs is kept,
after a warm-up call (JIT compilation stays out). On a GPU the calls only queue their kernels
(a tiny kernel runs in microseconds, asynchronously), so the time per call is the host's; the
queue is drained before each clock stops and counted too, so a GPU slower than the host would
show. "of which checks" is the same call with the kernel replaced by a no-op: the host's own
cost beyond the launch. Issue 17's target: a small conv's host time <= 20 us on a GPU.

With ``--evict MB`` (CPU) each call is also timed alone after MB of memory has been read, as a
layer's own data passes through the caches between one layer's call and the next: the host code
and its data are then fetched anew, and on a 2-vCPU Xeon guest a small call took 3-8x its hot
time so. Those columns show the median of --calls calls.
"""

import argparse
import contextlib
import os
import time

import numpy as np

from fastconv import device as devices
from fastconv import ops, registry

# (op, arguments builder): one small call each, the arrays made by ``make(shape)`` on the device
CALLS = {
    "conv2d 1x4x8x8, 4@3x3": lambda make: (ops.conv2d, (make((1, 4, 8, 8)), make((4, 4, 3, 3))),
                                           dict(padding=1)),
    "conv2d_backward_input": lambda make: (ops.conv2d_backward_input,
                                           (make((1, 4, 8, 8)), make((4, 4, 3, 3)),
                                            (1, 4, 8, 8)), dict(padding=1)),
    "conv2d_backward_weight": lambda make: (ops.conv2d_backward_weight,
                                            (make((1, 4, 8, 8)), make((1, 4, 8, 8)),
                                             (4, 4, 3, 3)), dict(padding=1)),
    # a 1x1 layer through im2col's product (gemm_short_unfetched: 16 rows, 192 columns),
    # small enough for the CUDA simulator's Python kernels (gpu_check.sh --smoke: ~5 s a call)
    "conv2d 1x8x12x16, 16@1x1": lambda make: (ops.conv2d, (make((1, 8, 12, 16)),
                                                           make((16, 8, 1, 1))), {}),
    "max_pool2d 1x4x8x8, 2x2": lambda make: (ops.max_pool2d, (make((1, 4, 8, 8)), 2), {}),
    "softmax_cross_entropy 8x10": lambda make: (ops.softmax_cross_entropy,
                                                (make((8, 10)), np.arange(8) % 10), {}),
}


def _synchronize(device):
    if device == "cuda" and not devices.cuda_backend().SIMULATED:
        import cupy
        cupy.cuda.get_current_stream().synchronize()


def time_call(function, args, kwargs, device, calls, repeats):
    """Seconds a call, the best of ``repeats`` runs of ``calls`` calls, the queue drained."""
    function(*args, **kwargs, device=device)
    _synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            function(*args, **kwargs, device=device)
        _synchronize(device)
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def time_evicted(function, args, kwargs, device, calls, evict_bytes):
    """Seconds a call, the median of ``calls`` calls each made after reading ``evict_bytes``."""
    passing = np.ones(evict_bytes // 4, np.float32)
    function(*args, **kwargs, device=device)
    times = []
    for _ in range(calls):
        passing.sum()
        start = time.perf_counter()
        function(*args, **kwargs, device=device)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


@contextlib.contextmanager
def no_kernels(device):
    """Every implementation of ``device`` answering without running: what is left of a call is
    the ops layer's checks and the dispatch."""
    saved = {key: dict(impls) for key, impls in registry._implementations.items()
             if key[1] == device}
    for key, impls in saved.items():
        registry._implementations[key] = {algo: (lambda *a, **k: None) for algo in impls}
    try:
        yield
    finally:
        registry._implementations.update(saved)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="where the calls run (default: cpu)")
    parser.add_argument("--calls", type=int, default=2000,
                        help="calls in a timed run (default: 2000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs (default: 5)")
    parser.add_argument("--evict", type=float, default=0, metavar="MB",
                        help="also time each call after reading MB of memory, the caches "
                             "holding a layer's data rather than the host's code (CPU; default: "
                             "0, off)")
    args = parser.parse_args()
    if args.evict and args.device != "cpu":
        parser.error("--evict times the CPU's calls only")
    evict_bytes = int(args.evict * 1e6)
    rng = np.random.default_rng(0)

    def make(shape):
        return devices.to_device(rng.standard_normal(shape).astype(np.float32), args.device)
    simulated = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
    print(f"host time of a small call, device={args.device}"
          f"{' (the CUDA simulator: its kernels are slow Python)' if simulated else ''}, best "
          f"of {args.repeats} runs of {args.calls} calls")
    evicted = f" | after {args.evict:g} MB read | of which checks" if evict_bytes else ""
    print(f"| call | us a call | of which checks and dispatch{evicted} |")
    print("|---|--:|--:|" + "--:|--:|" * bool(evict_bytes))
    for name, build in CALLS.items():
        function, call_args, kwargs = build(make)
        times = [time_call(function, call_args, kwargs, args.device, args.calls, args.repeats)]
        with no_kernels(args.device):
            times.append(time_call(function, call_args, kwargs, args.device, args.calls,
                                   args.repeats))
        if evict_bytes:
            times.append(time_evicted(function, call_args, kwargs, args.device, args.calls,
                                      evict_bytes))
            with no_kernels(args.device):
                times.append(time_evicted(function, call_args, kwargs, args.device, args.calls,
                                          evict_bytes))
        print(f"| {name} | " + " | ".join(f"{t * 1e6:.1f}" for t in times) + " |")


if __name__ == "__main__":
    main()
