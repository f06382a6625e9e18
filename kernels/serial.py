"""Single-threaded twins of the parallel kernels, for calls too small to pay for the threads.

Waking Numba's thread pool costs tens of microseconds a call, more than the whole work of a
small call (a 1x1x8x8 convolution runs ~70x faster in one thread: benchmarks/results/cpu.md).
"""

import types

from numba import njit


def serial_twin(kernel):
    """``kernel`` (an ``@njit(parallel=True)`` dispatcher) compiled without parallelism: its
    prange loops run as plain loops in the calling thread.

    The twin compiles a renamed copy of the function: Numba's on-disk cache tells entries apart
    by the function's name and bytecode, not by its options, so under the same name the serial
    and the parallel machine code would overwrite each other's cache.
    """
    f = kernel.py_func
    copy = types.FunctionType(f.__code__, f.__globals__, f.__name__ + "_serial", f.__defaults__,
                              f.__closure__)
    copy.__qualname__, copy.__module__, copy.__doc__ = (f.__qualname__ + "_serial",
                                                        f.__module__, f.__doc__)
    options = {k: v for k, v in kernel.targetoptions.items() if k != "nopython"}  # njit's own
    return njit(**{**options, "parallel": False}, cache=True)(copy)
