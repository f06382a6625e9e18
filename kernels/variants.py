"""Recompiled copies of a kernel: single-threaded twins of the parallel kernels, and variants
with other compile-time constants.

Waking Numba's thread pool costs tens of microseconds a call, more than the whole work of a
small call (a 1x1x8x8 convolution runs ~70x faster in one thread: benchmarks/results/cpu.md),
so each parallel kernel has a serial twin. A kernel whose register tile is sized by module
constants (kernels/conv_blocked.py) is compiled once per size, as LLVM keeps a tile in
registers only where every index into it is a constant.
"""

import types

from numba import njit


def variant(kernel, suffix, parallel=None, **constants):
    """``kernel`` (an ``@njit`` dispatcher) compiled again, ``parallel`` overriding its option
    and each of ``constants`` replacing the module global of that name, under its name +
    "_" + ``suffix``.

    The copy is renamed because Numba's on-disk cache tells entries apart by the function's
    name and bytecode, not by its options or globals: under the same name the variants'
    machine code would overwrite each other's cache.
    """
    f = kernel.py_func
    scope = {**f.__globals__, **constants} if constants else f.__globals__
    copy = types.FunctionType(f.__code__, scope, f"{f.__name__}_{suffix}", f.__defaults__,
                              f.__closure__)
    copy.__qualname__, copy.__module__, copy.__doc__ = (f"{f.__qualname__}_{suffix}",
                                                        f.__module__, f.__doc__)
    options = {k: v for k, v in kernel.targetoptions.items() if k != "nopython"}  # njit's own
    if parallel is not None:
        options["parallel"] = parallel
    return njit(**{**options, "cache": True})(copy)


def serial_twin(kernel):
    """``kernel`` compiled without parallelism: its prange loops run as plain loops in the
    calling thread."""
    return variant(kernel, "serial", parallel=False)
