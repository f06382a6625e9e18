"""The activation epilogue every conv and batch norm kernel ends with, and its slope for their
backward: scalar code written once, compiled inline for the CPU here and for the GPU by
kernels/cuda_device.py (from ``activate.py_func``); and activate_run, the CPU kernels' pass of
it over a run of an array."""

import math

import numpy as np
from numba import njit

NONE, RELU, TANH, SIGMOID = 0, 1, 2, 3
CODES = {None: NONE, "relu": RELU, "tanh": TANH, "sigmoid": SIGMOID}


@njit(inline="always", cache=True)
def activate(v, code, dtype):
    """a(v) for an activation code (0 none, 1 relu, 2 tanh, 3 sigmoid), in ``dtype`` (the
    output array's): a bare literal is an int or a float64 in Numba, and would turn a float32
    epilogue into double-precision arithmetic. NaN in gives NaN out, as in PyTorch: every test
    below is false for NaN, which then takes the branch that returns an expression of it."""
    zero, one = dtype.type(0), dtype.type(1)
    if code == RELU:
        return zero if v <= zero else v
    if code == TANH:
        return math.tanh(v)
    if code == SIGMOID:
        # the exp of a non-positive argument only, so it cannot overflow
        if v >= zero:
            return one / (one + math.exp(-v))
        e = math.exp(v)
        return e / (one + e)
    return v


@njit(inline="always", cache=True)
def slope(y, code, dtype):
    """da/dv at the v where a(v) = ``y``, from the output alone (what a fused kernel keeps):
    1 or 0 for relu (0 at a NaN, as PyTorch's ``y > 0``), 1 - y^2 for tanh (as (1 - y)(1 + y):
    near saturation 1 - y*y cancels, and keeps or loses digits with whether the compiler fuses
    it into an FMA), y (1 - y) for sigmoid, 1 for none; in ``dtype``."""
    zero, one = dtype.type(0), dtype.type(1)
    if code == RELU:
        return one if y > zero else zero
    if code == TANH:
        return (one - y) * (one + y)
    if code == SIGMOID:
        return y * (one - y)
    return one


@njit(inline="always", cache=True)
def activate_run(a, first, count, step, code):
    """a[first + q * step] = activate(a[first + q * step], code) for q < ``count``: the code
    tested once, and each branch runs _run for one literal code with unsigned indices, so its
    loop has no branch on the code nor Numba's wraparound of a negative index, and a ReLU's
    loop vectorises. The code tested in the loop, signed indices, kept it scalar: a ReLU took
    5.0 ms of MobileNetV2's 8 x 576 x 14 x 14 depthwise layer's forward, whose multiply-adds
    took 0.46 (one Zen 4 thread); 0.9 M ReLUs in runs of 576, 0.46 ms so, 0.04 vectorised."""
    if code == RELU:
        _run(a, first, count, step, RELU)
    elif code == TANH:
        _run(a, first, count, step, TANH)
    elif code == SIGMOID:
        _run(a, first, count, step, SIGMOID)


@njit(inline="always", cache=True)
def _run(a, first, count, step, code):
    at, step_ = np.uint64(first), np.uint64(step)
    for q in range(np.uint64(count)):
        a[at + q * step_] = activate(a[at + q * step_], code, a.dtype)
