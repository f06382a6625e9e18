"""The activation epilogue every conv kernel ends with, as one inlined device function."""

import math

from numba import njit

NONE, RELU, TANH, SIGMOID = 0, 1, 2, 3
CODES = {None: NONE, "relu": RELU, "tanh": TANH, "sigmoid": SIGMOID}


@njit(inline="always", cache=True)
def activate(v, code):
    """a(v) for an activation code; the caller's store casts back to its dtype."""
    if code == RELU:
        return v if v > 0 else v * 0
    if code == TANH:
        return math.tanh(v)
    if code == SIGMOID:
        # the exp of a negative argument only, so it cannot overflow
        if v >= 0:
            return 1 / (1 + math.exp(-v))
        e = math.exp(v)
        return e / (1 + e)
    return v
